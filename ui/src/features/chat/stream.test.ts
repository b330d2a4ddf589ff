import { describe, expect, it } from "vitest";
import { LiveReplies, mergeStream } from "./stream";

describe("mergeStream", () => {
  it("joins the stored start of a reply with the tokens seen since, without repeating the overlap", () => {
    expect(mergeStream("The capital of", " of France is")).toBe("The capital of France is");
    expect(mergeStream("The capital", " of France")).toBe("The capital of France");
    expect(mergeStream("", "Hello")).toBe("Hello");
    expect(mergeStream("Hello", "")).toBe("Hello");
    // The whole received text already stored.
    expect(mergeStream("abc def", "def")).toBe("abc def");
    // The longest overlap wins in repetitive text.
    expect(mergeStream("la la la", "la la la la")).toBe("la la la la");
  });
});

describe("LiveReplies", () => {
  it("follows a reply from its start, whatever was stored", () => {
    const live = new LiveReplies();
    live.start(7);
    live.push(7, "Hel");
    live.push(7, "lo");
    expect(live.text(7)).toBe("Hello");
    expect(live.resume(7, "He")).toBe("Hello");
    live.end(7);
    expect(live.text(7)).toBeUndefined();
    expect(live.hasEnded(7)).toBe(true);
    // Late tokens of an ended reply are ignored.
    live.push(7, "!");
    expect(live.text(7)).toBeUndefined();
  });

  it("joins a reply met midway with its stored text, then keeps appending", () => {
    const live = new LiveReplies();
    live.push(3, "world, ");
    live.push(3, "how");
    expect(live.resume(3, "Hello world, ")).toBe("Hello world, how");
    live.push(3, " are you");
    expect(live.text(3)).toBe("Hello world, how are you");
    // A second opening does not merge again.
    expect(live.resume(3, "Hello world, how are")).toBe("Hello world, how are you");
  });

  it("places tokens met midway by their offsets, where guessing the overlap fails", () => {
    // The reply so far is "ha ha ha "; the screen joined after "ha " and the
    // history had stored "ha ha ": the longest overlap would drop a "ha ".
    expect(mergeStream("ha ha ", "ha ha ha")).toBe("ha ha ha");
    const live = new LiveReplies();
    live.push(5, "ha ha ", 3);
    live.push(5, "ha", 9);
    expect(live.resume(5, "ha ha ")).toBe("ha ha ha ha");
    // Offsets count UTF-16 units, as JavaScript strings do.
    const emoji = new LiveReplies();
    emoji.push(6, "b", 3);
    expect(emoji.resume(6, "😀ab")).toBe("😀ab");
    // A stored text that does not reach the first token seen: guessed.
    const gap = new LiveReplies();
    gap.push(7, "world", 20);
    expect(gap.resume(7, "Hello ")).toBe("Hello world");
  });
});
