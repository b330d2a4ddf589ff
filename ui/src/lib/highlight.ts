// Syntax highlighting of fenced code in replies (highlight.js core with a set
// of common languages, to keep the bundle small). highlight.js escapes the
// code it is given and adds only <span class="hljs-…"> around pieces of it,
// so its output is safe to insert as HTML; unknown languages fall back to
// plain escaped text.

import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import c from "highlight.js/lib/languages/c";
import cpp from "highlight.js/lib/languages/cpp";
import css from "highlight.js/lib/languages/css";
import diff from "highlight.js/lib/languages/diff";
import go from "highlight.js/lib/languages/go";
import ini from "highlight.js/lib/languages/ini";
import java from "highlight.js/lib/languages/java";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import markdown from "highlight.js/lib/languages/markdown";
import python from "highlight.js/lib/languages/python";
import rust from "highlight.js/lib/languages/rust";
import shell from "highlight.js/lib/languages/shell";
import sql from "highlight.js/lib/languages/sql";
import typescript from "highlight.js/lib/languages/typescript";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";
import { escapeHtml } from "./markdown";

const LANGUAGES = {
  bash,
  c,
  cpp,
  css,
  diff,
  go,
  ini,
  java,
  javascript,
  json,
  markdown,
  python,
  rust,
  shell,
  sql,
  typescript,
  xml,
  yaml,
};
for (const [name, language] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, language);
// Names models write that the languages above do not already know.
hljs.registerAliases(["sh", "zsh", "shellscript"], { languageName: "bash" });
hljs.registerAliases(["console", "terminal"], { languageName: "shell" });
hljs.registerAliases(["toml"], { languageName: "ini" });
hljs.registerAliases(["jsonc", "json5"], { languageName: "json" });
hljs.registerAliases(["vue", "svelte"], { languageName: "xml" });

/** Languages tried when a fence names none (small, distinct, common). */
const AUTO = ["python", "javascript", "typescript", "rust", "bash", "json", "c", "cpp", "go", "java", "sql", "xml", "css", "yaml"];
/** Longer code without a language is not guessed (guessing tries every language). */
const AUTO_LIMIT = 20_000;

export type Highlighted = {
  /** Safe HTML: the escaped code with highlight spans. */
  html: string;
  /** The language used, as highlight.js names it ("Rust", "C++"), or null for plain text. */
  language: string | null;
};

const cache = new Map<string, Highlighted>();
const CACHE_SIZE = 200;

/** Whether `lang` (as written after a fence) is a language this build highlights. */
export function knownLanguage(lang: string): boolean {
  return lang !== "" && hljs.getLanguage(lang.toLowerCase()) !== undefined;
}

/**
 * Highlights `code` as `lang`; with no language, guesses one when `guess`
 * (not while a block is still being streamed: guessing is the slow path).
 */
export function highlight(code: string, lang: string, guess = true): Highlighted {
  const key = `${lang}\u0001${guess ? 1 : 0}\u0001${code}`;
  const hit = cache.get(key);
  if (hit) return hit;
  const result = compute(code, lang.toLowerCase(), guess);
  if (cache.size >= CACHE_SIZE) cache.delete(cache.keys().next().value!);
  cache.set(key, result);
  return result;
}

function compute(code: string, lang: string, guess: boolean): Highlighted {
  try {
    if (lang && hljs.getLanguage(lang)) {
      const name = hljs.getLanguage(lang)?.name ?? lang;
      return { html: hljs.highlight(code, { language: lang, ignoreIllegals: true }).value, language: name };
    }
    if (!lang && guess && code.length <= AUTO_LIMIT && code.trim()) {
      const auto = hljs.highlightAuto(code, AUTO);
      if (auto.language && auto.relevance >= 5)
        return { html: auto.value, language: hljs.getLanguage(auto.language)?.name ?? auto.language };
    }
  } catch {
    // A grammar that throws on odd input: show the text plainly.
  }
  return { html: escapeHtml(code), language: null };
}
