// Markdown for model output, which is untrusted: every character is
// HTML-escaped first, and only a fixed set of tags with fixed attributes is
// produced from the escaped text (paragraphs, line breaks, headings, lists,
// block quotes, tables, rules, emphasis, inline code; fenced code blocks are
// returned raw, to be shown as text or highlighted by lib/highlight.ts).
// No raw HTML, no anchors and no images are ever produced: a link shows its
// text and its address (an http(s) address can be clicked: Rust opens it in
// the browser after the user confirms), an image its description, so nothing
// loads from the network, nothing navigates the app away and no script runs.
// Works on unfinished text (a reply being streamed): an unclosed fence is a
// code block up to the end, unclosed emphasis stays as typed.

const ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
};

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

export interface Block {
  kind: "code" | "html";
  /** For code: the language tag (escaped; letters, digits and + # . _ - only). */
  lang?: string;
  /** For code: the raw code (to be escaped by whoever shows it). */
  code?: string;
  /** For code: the fence is not closed yet (a reply still being written). */
  open?: boolean;
  /** For html: safe markup. */
  html?: string;
}

// An opening fence: up to 3 spaces... or more inside list items, then ``` or ~~~ and an info string.
const FENCE = /^(\s*)(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/;

/** Splits a reply into code blocks (shown with a copy button) and safe HTML. */
export function renderBlocks(src: string): Block[] {
  const blocks: Block[] = [];
  // NUL is the placeholder mark used by `inline`; it has no business in text.
  const lines = src.replace(/\r\n?/g, "\n").replace(/\0/g, "\uFFFD").split("\n");
  let text: string[] = [];
  const flush = () => {
    if (text.some((l) => l.trim() !== "")) blocks.push({ kind: "html", html: renderText(text) });
    text = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const fence = FENCE.exec(lines[i]);
    if (!fence) {
      text.push(lines[i]);
      continue;
    }
    flush();
    const indent = columns(fence[1]);
    const marker = fence[2];
    const close = new RegExp(`^\\s*${marker[0] === "`" ? "`" : "~"}{${marker.length},}\\s*$`);
    const code: string[] = [];
    let open = true;
    for (i++; i < lines.length; i++) {
      if (close.test(lines[i])) {
        open = false;
        break;
      }
      code.push(dedent(lines[i], indent));
    }
    const lang = fence[3].replace(/[^\w+#.-]/g, "").slice(0, 32);
    blocks.push({ kind: "code", lang: escapeHtml(lang), code: code.join("\n"), open });
  }
  flush();
  return blocks;
}

/** The width of leading whitespace (a tab counts 4). */
function columns(ws: string): number {
  let n = 0;
  for (const c of ws) n += c === "\t" ? 4 - (n % 4) : 1;
  return n;
}

/** Removes up to `n` columns of leading whitespace. */
function dedent(line: string, n: number): string {
  let i = 0;
  let col = 0;
  while (i < line.length && col < n && (line[i] === " " || line[i] === "\t")) {
    col += line[i] === "\t" ? 4 - (col % 4) : 1;
    i++;
  }
  return line.slice(i);
}

const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^\s{0,3}&gt;\s?(.*)$/;
const TABLE_RULE = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

/** Safe HTML for lines of text (no code fences among them). */
function renderText(raw: string[]): string {
  const lines = raw.map(escapeHtml);
  const out: string[] = [];
  let para: string[] = [];
  const list = new ListBuilder(out);
  let blank = false;
  const endPara = () => {
    if (para.length) out.push(`<p>${para.join("<br>")}</p>`);
    para = [];
  };
  const endAll = () => {
    endPara();
    list.close();
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.trim() === "") {
      endPara();
      blank = true;
      continue;
    }
    const wasBlank = blank;
    blank = false;
    const heading = HEADING.exec(line);
    if (heading) {
      endAll();
      const level = Math.min(6, heading[1].length + 2);
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
      continue;
    }
    if (RULE.test(line)) {
      endAll();
      out.push("<hr>");
      continue;
    }
    if (QUOTE.test(line)) {
      endAll();
      const inner: string[] = [];
      // The quoted lines, unescaped again for the recursive call (which escapes).
      while (i < lines.length && QUOTE.test(lines[i])) inner.push(unescapeHtml(QUOTE.exec(lines[i++])![1]));
      i--;
      out.push(`<blockquote>${renderText(inner)}</blockquote>`);
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1]) && lines[i + 1].includes("|")) {
      endAll();
      const rows: string[] = [line];
      const rule = lines[i + 1];
      for (i += 2; i < lines.length && lines[i].includes("|") && lines[i].trim() !== ""; i++) rows.push(lines[i]);
      i--;
      out.push(table(rows, rule));
      continue;
    }
    const item = ITEM.exec(line);
    if (item) {
      endPara();
      const marker = item[2];
      const ordered = /\d/.test(marker);
      list.item(columns(item[1]), ordered ? "ol" : "ul", ordered ? parseInt(marker, 10) : 1, inline(item[3]));
      continue;
    }
    if (list.isOpen && (!wasBlank || /^\s/.test(line))) {
      // A continuation of the list item (lazy, or indented after a blank line).
      list.append(inline(line.trim()), wasBlank);
      continue;
    }
    list.close();
    para.push(inline(line));
  }
  endAll();
  return out.join("");
}

/** Nested lists from items and their indentation. */
class ListBuilder {
  private stack: { type: "ul" | "ol"; indent: number }[] = [];
  constructor(private out: string[]) {}

  get isOpen(): boolean {
    return this.stack.length > 0;
  }

  item(indent: number, type: "ul" | "ol", start: number, html: string) {
    const s = this.stack;
    while (s.length > 1 && indent < s[s.length - 1].indent) this.pop();
    const top = s[s.length - 1];
    if (top && indent <= top.indent && top.type !== type) this.pop();
    const now = s[s.length - 1];
    if (now && indent <= now.indent) {
      this.out.push("</li>");
    } else {
      this.out.push(type === "ol" && start !== 1 ? `<ol start="${start}">` : `<${type}>`);
      s.push({ type, indent });
    }
    this.out.push(`<li>${html}`);
  }

  append(html: string, paragraph: boolean) {
    this.out.push(paragraph ? `<br><br>${html}` : `<br>${html}`);
  }

  close() {
    while (this.stack.length) this.pop();
  }

  private pop() {
    this.out.push(`</li></${this.stack.pop()!.type}>`);
  }
}

function splitRow(row: string): string[] {
  let r = row.trim().replace(/\\\|/g, "\0p");
  if (r.startsWith("|")) r = r.slice(1);
  if (r.endsWith("|")) r = r.slice(0, -1);
  return r.split("|").map((c) => c.replace(/\0p/g, "|").trim());
}

function table(rows: string[], rule: string): string {
  const align = splitRow(rule).map((c) =>
    c.startsWith(":") && c.endsWith(":") ? ' class="al-c"' : c.endsWith(":") ? ' class="al-r"' : "",
  );
  const cells = (row: string, tag: "th" | "td") =>
    splitRow(row)
      .map((c, i) => `<${tag}${align[i] ?? ""}>${inline(c)}</${tag}>`)
      .join("");
  const body = rows.slice(1).map((r) => `<tr>${cells(r, "td")}</tr>`).join("");
  return `<div class="table"><table><thead><tr>${cells(rows[0], "th")}</tr></thead>${body ? `<tbody>${body}</tbody>` : ""}</table></div>`;
}

const UNESCAPES: Record<string, string> = { "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'" };

function unescapeHtml(s: string): string {
  return s.replace(/&(amp|lt|gt|quot|#39);/g, (e) => UNESCAPES[e]);
}

/**
 * An address shown as text (`shown`, escaped); for http and https, also a
 * keyboard-focusable element carrying the address in `data-href`, which
 * Markdown.svelte hands to Rust to open (after the user confirms in a native
 * dialog). `url` is escaped text, so it is safe inside the quoted attribute.
 */
function webLink(url: string, shown: string): string {
  // Escaped text: `&amp;` is an ampersand; any other entity (a quote, an
  // angle bracket) means this is not a plain address.
  if (!/^https?:\/\/(?:[^\s<>&]|&amp;)+$/i.test(url)) return `<span class="md-url">${shown}</span>`;
  return `<span class="md-url md-link" role="link" tabindex="0" data-href="${url}" title="Open ${url}">${shown}</span>`;
}

/** Inline markup on escaped text: code, emphasis, and links/images as plain text. */
function inline(escaped: string): string {
  const held: string[] = [];
  const hold = (html: string) => `\0${held.push(html) - 1}\0`;
  let s = escaped
    // Code spans first: nothing inside them is markup.
    .replace(/(`+)(?!`)(.+?)(?<!`)\1(?!`)/g, (_, _ticks, code: string) => hold(`<code>${code.replace(/^ (.+) $/, "$1")}</code>`))
    // Images are never loaded: their description is shown.
    .replace(/!\[([^\]\n]*)\]\(([^)\s]*)(?:\s+[^)]*)?\)/g, (_, alt: string) =>
      hold(`<span class="md-image">[image${alt ? `: ${alt}` : ""}]</span>`),
    )
    // Links are never anchors: the words and, where they differ, the address,
    // which (http and https only) asks Rust to open it after the user
    // confirms (see webLink).
    .replace(/\[([^\]\n]+)\]\(([^)\s]+)(?:\s+[^)]*)?\)/g, (_, label: string, url: string) =>
      label === url ? hold(webLink(url, url)) : `${label} ${hold(webLink(url, `(${url})`))}`,
    )
    // Bare addresses are held so that their underscores are not emphasis.
    // (The text is escaped: an address may hold `&amp;` but ends at any other
    // entity, such as the `&quot;` of an HTML attribute around it.)
    .replace(/\bhttps?:\/\/(?:[^\s<>&]|&amp;)*[^\s<>.,;:!?)'"&]/g, (url) => hold(webLink(url, url)));
  s = s
    .replace(/\*\*(?=\S)([^\n]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([^\n]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>")
    .replace(/~~(?=\S)([^\n]*?\S)~~/g, "<del>$1</del>");
  // Held pieces may hold others (a link's address); restore until none is left.
  for (let n = 0; n < 3 && s.includes("\0"); n++) s = s.replace(/\0(\d+)\0/g, (_, i: string) => held[Number(i)] ?? "");
  return s;
}
