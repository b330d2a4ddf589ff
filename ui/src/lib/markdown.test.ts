import { describe, expect, it } from "vitest";
import { escapeHtml, renderBlocks } from "./markdown";
import { highlight, knownLanguage } from "./highlight";

const html = (src: string) =>
  renderBlocks(src)
    .map((b) => (b.kind === "html" ? b.html : `[code:${b.lang}]${b.code}`))
    .join("");

/** Everything a block list would put into the page (code highlighted as the app does). */
const page = (src: string) =>
  renderBlocks(src)
    .map((b) => (b.kind === "html" ? b.html! : `<pre>${highlight(b.code!, b.lang!).html}</pre>`))
    .join("");

/** The tags and attributes in some HTML, parsed by the DOM as the app's {@html} would. */
function parse(markup: string) {
  const root = document.createElement("div");
  root.innerHTML = markup;
  const all = Array.from(root.querySelectorAll("*"));
  return {
    tags: new Set(all.map((e) => e.tagName.toLowerCase())),
    attributes: all.flatMap((e) => Array.from(e.attributes).map((a) => `${a.name}=${a.value}`)),
  };
}

const ALLOWED_TAGS = new Set([
  "p", "br", "h3", "h4", "h5", "h6", "hr", "ul", "ol", "li", "strong", "em", "del", "code", "span",
  "blockquote", "div", "table", "thead", "tbody", "tr", "th", "td", "pre",
]);

const HOSTILE = [
  "<script>alert(1)</script>",
  '<img src="https://evil.example/x.png" onerror="alert(1)">',
  "**<b onclick=alert(1)>bold</b>**",
  "`<iframe src=//evil>`",
  "# <svg onload=alert(1)>",
  "- <a href=javascript:alert(1)>x</a>",
  "[click me](javascript:alert(1))",
  "[x](https://evil.example/\" onmouseover=\"alert(1))",
  "![tracker](https://evil.example/pixel.png)",
  "> <style>body{display:none}</style>",
  "| a | <img src=x onerror=alert(1)> |\n|---|---|\n| <script>x</script> | b |",
  "```html\n<script>alert(1)</script><img src=x onerror=alert(1)>\n```",
  "```\n<img src=x onerror=alert(1)>\n```",
  "```js\nconst x = '<img src=x onerror=alert(1)>'", // unterminated, as while streaming
  "```\"><img src=x onerror=alert(1)>\ncode\n```",
  "~~~<script>\n</script>\n~~~",
  "1. x\n   ```xml\n   <svg onload=alert(1)></svg>\n   ```",
  "&lt;script&gt; stays text, &amp; is not unescaped",
  "<https://evil.example>",
  "javascript:alert(1)",
  "\u0000<script>alert(1)</script>\u00000\u0000",
];

describe("markdown for untrusted model output", () => {
  it("never produces active or loading markup, whatever the model writes", () => {
    for (const src of HOSTILE) {
      const out = page(src);
      const { tags, attributes } = parse(out);
      for (const tag of tags) expect(ALLOWED_TAGS.has(tag), `<${tag}> from ${JSON.stringify(src)}: ${out}`).toBe(true);
      for (const attribute of attributes) {
        // Links carry their (parsed, so unescaped) http(s) address as data
        // only: no handler, no href, no quotes breaking out of it.
        expect(attribute, `${attribute} from ${JSON.stringify(src)}`).toMatch(
          /^(class=[\w -]+|start=\d+|role=link|tabindex=0|(data-href=|title=Open )https?:\/\/[^\s"<>]*)$/,
        );
      }
      expect(out).not.toMatch(/<(script|img|iframe|svg|a|b|style)\b/i);
    }
  });

  it("shows links as text with their address, never as anchors; web addresses can be opened", () => {
    const link = (url: string, shown: string) =>
      `<span class="md-url md-link" role="link" tabindex="0" data-href="${url}" title="Open ${url}">${shown}</span>`;
    expect(html("See [the docs](https://example.com/a_b_c) now")).toBe(
      `<p>See the docs ${link("https://example.com/a_b_c", "(https://example.com/a_b_c)")} now</p>`,
    );
    expect(html("[https://x.org](https://x.org)")).toBe(`<p>${link("https://x.org", "https://x.org")}</p>`);
    expect(html("![a chart](https://evil.example/c.png)")).toBe('<p><span class="md-image">[image: a chart]</span></p>');
    // Underscores in bare addresses are not emphasis.
    expect(html("go to https://example.com/_x_/y")).toBe(
      `<p>go to ${link("https://example.com/_x_/y", "https://example.com/_x_/y")}</p>`,
    );
    // Other schemes stay text, with nothing to open.
    expect(html("[click](javascript:alert(1))")).not.toContain("data-href");
    expect(html("[notes](file:///etc/passwd)")).toBe('<p>notes <span class="md-url">(file:///etc/passwd)</span></p>');
    // A quote in an address cannot leave the attribute.
    const { attributes } = parse(html('[x](https://evil.example/"onmouseover="alert(1))'));
    expect(attributes.filter((a) => a.startsWith("onmouseover"))).toEqual([]);
  });

  it("renders the common constructs", () => {
    expect(html("**bold** and *it* and `x<y`")).toBe(
      "<p><strong>bold</strong> and <em>it</em> and <code>x&lt;y</code></p>",
    );
    expect(html("# Title\n- a\n- b\n\n1. one")).toBe(
      "<h3>Title</h3><ul><li>a</li><li>b</li></ul><ol><li>one</li></ol>",
    );
    expect(html("~~gone~~ __strong__ _it_ snake_case_name 2*3*4")).toBe(
      "<p><del>gone</del> <strong>strong</strong> <em>it</em> snake_case_name 2*3*4</p>",
    );
    expect(html("line one\nline two\n\n---\n\nafter")).toBe("<p>line one<br>line two</p><hr><p>after</p>");
    expect(html("> quoted **bold**\n> more\n\nout")).toBe(
      "<blockquote><p>quoted <strong>bold</strong><br>more</p></blockquote><p>out</p>",
    );
    // Nothing inside inline code is markup.
    expect(html("`a **b** [c](d)`")).toBe("<p><code>a **b** [c](d)</code></p>");
  });

  it("nests lists and keeps the numbering of a list split by a code block", () => {
    expect(html("- a\n  - b\n  - c\n- d")).toBe("<ul><li>a<ul><li>b</li><li>c</li></ul></li><li>d</li></ul>");
    expect(html("1. one\n\n2. two\n   more")).toBe("<ol><li>one</li><li>two<br>more</li></ol>");
    const blocks = renderBlocks("1. Install:\n   ```bash\n   npm i\n   ```\n2. Run");
    expect(blocks.map((b) => b.kind)).toEqual(["html", "code", "html"]);
    expect(blocks[1]).toMatchObject({ lang: "bash", code: "npm i", open: false });
    expect(blocks[2].html).toBe('<ol start="2"><li>Run</li></ol>');
  });

  it("renders tables with alignment", () => {
    expect(html("| Name | Size |\n|:-----|-----:|\n| a | 1 |\n| b | 2 |")).toBe(
      '<div class="table"><table><thead><tr><th>Name</th><th class="al-r">Size</th></tr></thead>' +
        '<tbody><tr><td>a</td><td class="al-r">1</td></tr><tr><td>b</td><td class="al-r">2</td></tr></tbody></table></div>',
    );
    // A pipe in a sentence followed by a rule is not a table.
    expect(html("a | b\n---")).toBe("<p>a | b</p><hr>");
  });

  it("keeps code blocks raw for display as text, with their language", () => {
    const blocks = renderBlocks("Intro\n```rust\nfn main() { println!(\"<hi>\"); }\n```\nAfter");
    expect(blocks.map((b) => b.kind)).toEqual(["html", "code", "html"]);
    expect(blocks[1].lang).toBe("rust");
    expect(blocks[1].code).toBe('fn main() { println!("<hi>"); }');
    // Info strings after the language, tildes, longer fences holding shorter ones.
    expect(renderBlocks("```python title=x.py\npass\n```")[0]).toMatchObject({ lang: "python", code: "pass" });
    expect(renderBlocks("~~~\na\n~~~")[0]).toMatchObject({ kind: "code", code: "a", open: false });
    expect(renderBlocks("````md\n```js\nx\n```\n````")[0]).toMatchObject({ lang: "md", code: "```js\nx\n```" });
  });

  it("copes with unfinished streams", () => {
    expect(renderBlocks("```py\nprint(1)").map((b) => b.kind)).toEqual(["code"]);
    expect(renderBlocks("```py\nprint(1)")[0].open).toBe(true);
    expect(renderBlocks("```")[0]).toMatchObject({ kind: "code", code: "", open: true });
    expect(html("**half")).toBe("<p>**half</p>");
    expect(html("[half a link](https://exa")).toBe(
      '<p>[half a link](<span class="md-url md-link" role="link" tabindex="0" data-href="https://exa" title="Open https://exa">https://exa</span></p>',
    );
    // An address ends at an escaped quote, keeps its query's ampersands.
    expect(html('"https://x.org/a?b=1&c=2"')).toContain('data-href="https://x.org/a?b=1&amp;c=2"');
    // A table shows as soon as its header and the start of its rule are in.
    expect(html("| a | b |\n|--")).toContain("<th>a</th><th>b</th>");
    expect(html("| a | b |")).toBe("<p>| a | b |</p>");
    expect(escapeHtml(`&<>"'`)).toBe("&amp;&lt;&gt;&quot;&#39;");
  });
});

describe("highlight", () => {
  it("highlights known languages and escapes the code", () => {
    const rust = highlight('fn main() { let s = "<b>"; }', "rust");
    expect(rust.language).toBe("Rust");
    expect(rust.html).toContain('<span class="hljs-keyword">fn</span>');
    expect(rust.html).toContain("&lt;b&gt;");
    for (const lang of ["py", "ts", "sh", "html", "yml", "toml", "c++", "golang", "sql", "json", "md", "css", "java", "c"]) {
      expect(knownLanguage(lang), lang).toBe(true);
    }
    expect(knownLanguage("brainfuck")).toBe(false);
  });

  it("never lets markup through, in any language or none", () => {
    const evil = `<script>alert(1)</script><img src=x onerror="alert(1)"> "' & </code></pre><a href="javascript:x">`;
    for (const lang of ["html", "xml", "javascript", "markdown", "", "unknown", "bash"]) {
      for (const guess of [true, false]) {
        const { tags, attributes } = parse(highlight(evil, lang, guess).html);
        expect([...tags].filter((t) => t !== "span"), lang).toEqual([]);
        for (const a of attributes) expect(a).toMatch(/^class=(hljs|language)-[\w-]+( [\w-]+)*$/);
      }
    }
  });

  it("falls back to plain text for unknown languages, and guesses only when allowed", () => {
    expect(highlight("a < b", "nope")).toEqual({ html: "a &lt; b", language: null });
    const python = "def greet(name):\n    print(f'hello {name}')\n    return None\n\nclass A:\n    pass\n";
    expect(highlight(python, "").language).toBe("Python");
    expect(highlight(python, "", false)).toEqual({ html: escapeHtml(python), language: null });
  });
});
