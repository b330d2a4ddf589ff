// Markdown for model output, which is untrusted: every character is
// HTML-escaped first, and only a fixed set of tags is produced from the
// escaped text (paragraphs, line breaks, headings, lists, emphasis, inline
// code, fenced code blocks). No raw HTML, no links or images are rendered,
// so nothing loads from the network and no script can run.

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

function inline(escaped: string): string {
  return escaped
    .replace(/`([^`\n]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^*])\*([^*\n]+)\*/g, "$1<em>$2</em>");
}

export interface Block {
  kind: "code" | "html";
  /** For code: the language tag (escaped) and the raw code. */
  lang?: string;
  code?: string;
  /** For html: safe markup. */
  html?: string;
}

/** Splits a reply into code blocks (shown with a copy button) and safe HTML. */
export function renderBlocks(src: string): Block[] {
  const blocks: Block[] = [];
  const lines = src.replace(/\r\n?/g, "\n").split("\n");
  let text: string[] = [];
  const flush = () => {
    if (text.length) blocks.push({ kind: "html", html: renderText(text) });
    text = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const fence = /^```\s*([\w+-]*)\s*$/.exec(lines[i]);
    if (!fence) {
      text.push(lines[i]);
      continue;
    }
    flush();
    const code: string[] = [];
    i++;
    while (i < lines.length && !/^```\s*$/.test(lines[i])) code.push(lines[i++]);
    blocks.push({ kind: "code", lang: escapeHtml(fence[1] ?? ""), code: code.join("\n") });
  }
  flush();
  return blocks;
}

function renderText(lines: string[]): string {
  const out: string[] = [];
  let list: "ul" | "ol" | null = null;
  let para: string[] = [];
  const endPara = () => {
    if (para.length) out.push(`<p>${para.join("<br>")}</p>`);
    para = [];
  };
  const endList = () => {
    if (list) out.push(`</${list}>`);
    list = null;
  };
  for (const raw of lines) {
    const line = escapeHtml(raw);
    const heading = /^(#{1,4})\s+(.*)$/.exec(line);
    const bullet = /^\s*[-*]\s+(.*)$/.exec(line);
    const numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
    if (heading) {
      endPara();
      endList();
      const level = heading[1].length + 2;
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
    } else if (bullet || numbered) {
      endPara();
      const want = bullet ? "ul" : "ol";
      if (list !== want) {
        endList();
        out.push(`<${want}>`);
        list = want;
      }
      out.push(`<li>${inline((bullet ?? numbered)![1])}</li>`);
    } else if (line.trim() === "") {
      endPara();
      endList();
    } else {
      endList();
      para.push(inline(line));
    }
  }
  endPara();
  endList();
  return out.join("");
}
