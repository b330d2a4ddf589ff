import { describe, expect, it } from "vitest";
import { escapeHtml, renderBlocks } from "./markdown";

const html = (src: string) =>
  renderBlocks(src)
    .map((b) => (b.kind === "html" ? b.html : `[code:${b.lang}]${b.code}`))
    .join("");

describe("markdown for untrusted model output", () => {
  it("never passes HTML through", () => {
    const evil = [
      "<script>alert(1)</script>",
      '<img src="https://evil.example/x.png" onerror="alert(1)">',
      "**<b onclick=alert(1)>bold</b>**",
      "`<iframe src=//evil>`",
      "# <svg onload=alert(1)>",
      "- <a href=javascript:alert(1)>x</a>",
    ];
    for (const src of evil) {
      const out = html(src);
      expect(out).not.toMatch(/<(script|img|iframe|svg|a|b)\b/i);
      expect(out).not.toMatch(/<[^>]*\son\w+\s*=/i);
    }
  });

  it("renders the common constructs", () => {
    expect(html("**bold** and *it* and `x<y`")).toBe(
      "<p><strong>bold</strong> and <em>it</em> and <code>x&lt;y</code></p>",
    );
    expect(html("# Title\n- a\n- b\n\n1. one")).toBe(
      "<h3>Title</h3><ul><li>a</li><li>b</li></ul><ol><li>one</li></ol>",
    );
  });

  it("keeps code blocks raw for display as text, with their language", () => {
    const blocks = renderBlocks("Intro\n```rust\nfn main() { println!(\"<hi>\"); }\n```\nAfter");
    expect(blocks.map((b) => b.kind)).toEqual(["html", "code", "html"]);
    expect(blocks[1].lang).toBe("rust");
    expect(blocks[1].code).toBe('fn main() { println!("<hi>"); }');
  });

  it("copes with unfinished streams", () => {
    expect(renderBlocks("```py\nprint(1)").map((b) => b.kind)).toEqual(["code"]);
    expect(html("**half")).toBe("<p>**half</p>");
    expect(escapeHtml(`&<>"'`)).toBe("&amp;&lt;&gt;&quot;&#39;");
  });
});
