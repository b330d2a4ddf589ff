import { describe, expect, it } from "vitest";
import { segments, toStringRanges } from "./snippet";

/** The byte range of `word` in `s` as the backend computes it. */
function bytes(s: string, word: string): [number, number] {
  const enc = new TextEncoder();
  const start = enc.encode(s.slice(0, s.indexOf(word))).length;
  return [start, start + enc.encode(word).length];
}

const marked = (s: string, h: Array<[number, number]>) =>
  segments(s, h)
    .map((p) => (p.mark ? `[${p.text}]` : p.text))
    .join("");

describe("search snippet highlights", () => {
  it("marks ASCII words", () => {
    const s = "What is the capital of France?";
    expect(marked(s, [bytes(s, "capital"), bytes(s, "France")])).toBe("What is the [capital] of [France]?");
  });

  it("converts byte offsets after accented letters", () => {
    const s = "Le café est fermé à midi";
    expect(marked(s, [bytes(s, "fermé"), bytes(s, "midi")])).toBe("Le café est [fermé] à [midi]");
    expect(marked(s, [bytes(s, "café")])).toBe("Le [café] est fermé à midi");
  });

  it("converts byte offsets after emoji (surrogate pairs, 4 UTF-8 bytes)", () => {
    const s = "🦙🦙 llamas 👍 are great";
    expect(marked(s, [bytes(s, "llamas"), bytes(s, "great")])).toBe("🦙🦙 [llamas] 👍 are [great]");
    expect(marked(s, [bytes(s, "👍")])).toBe("🦙🦙 llamas [👍] are great");
  });

  it("converts byte offsets in CJK text", () => {
    const s = "東京の天気は晴れです";
    expect(marked(s, [bytes(s, "天気")])).toBe("東京の[天気]は晴れです");
    expect(marked(s, [bytes(s, "です")])).toBe("東京の天気は晴れ[です]");
  });

  it("marks a character whole when a range splits it", () => {
    const s = "a é b";
    // "é" is bytes 2..4; a range ending inside it or starting inside it covers it.
    expect(marked(s, [[2, 3]])).toBe("a [é] b");
    expect(marked(s, [[3, 4]])).toBe("a [é] b");
    const e = "x🦙y";
    expect(marked(e, [[2, 3]])).toBe("x[🦙]y");
  });

  it("merges overlapping and adjacent ranges, in any order", () => {
    const s = "abcdefghij";
    expect(marked(s, [[5, 8], [1, 3], [2, 6]])).toBe("a[bcdefgh]ij");
    expect(marked(s, [[0, 2], [2, 4]])).toBe("[abcd]efghij");
    expect(toStringRanges(s, [[5, 8], [1, 3], [2, 6]])).toEqual([[1, 8]]);
  });

  it("clamps or drops ranges out of bounds, reversed, empty or malformed", () => {
    const s = "hello";
    expect(marked(s, [[3, 99]])).toBe("hel[lo]");
    expect(marked(s, [[-4, 2]])).toBe("[he]llo");
    expect(marked(s, [[10, 20], [4, 2], [3, 3], [NaN, 2]])).toBe("hello");
    expect(marked(s, [[1, 2, 3] as unknown as [number, number], [] as unknown as [number, number]])).toBe("h[e]llo");
  });

  it("gives the text back unchanged when joined", () => {
    for (const s of ["", "plain", "é🦙東", "🦙"]) {
      expect(segments(s, [[1, 5]]).map((p) => p.text).join("")).toBe(s);
    }
    expect(segments("", [])).toEqual([{ text: "", mark: false }]);
  });
});
