import { describe, expect, it } from "vitest";
import { baseName, blobToInput, bytesToBase64, clipboardImages, formatSize, looksLikeImage } from "./images";

/** A plain, independent base64 encoder to check against (three bytes to four characters). */
function reference(bytes: Uint8Array): string {
  const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    out += abc[(n >> 18) & 63] + abc[(n >> 12) & 63];
    out += i + 1 < bytes.length ? abc[(n >> 6) & 63] : "=";
    out += i + 2 < bytes.length ? abc[n & 63] : "=";
  }
  return out;
}

describe("bytesToBase64", () => {
  it("matches a reference encoder for every length around the slice boundaries", async () => {
    for (const n of [0, 1, 2, 3, 4, 5, 24575, 24576, 24577, 49153]) {
      const bytes = new Uint8Array(n).map((_, i) => (i * 131 + 7) & 0xff);
      expect(await bytesToBase64(bytes), `length ${n}`).toBe(reference(bytes));
    }
  });

  it("converts a large image without blocking: it yields between slices", async () => {
    const bytes = new Uint8Array(3 << 20).map((_, i) => i & 0xff);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    const out = await bytesToBase64(bytes);
    clearInterval(timer);
    expect(out).toBe(reference(bytes));
    expect(ticks).toBeGreaterThan(0);
  });

  it("reads files into bytes inputs", async () => {
    const input = await blobToInput(new Blob([new Uint8Array([137, 80, 78, 71])], { type: "image/png" }));
    expect(input).toEqual({ kind: "bytes", base64: "iVBORw==" });
  });
});

describe("helpers", () => {
  it("finds pasted images, names paths and sizes", () => {
    const png = new File([new Uint8Array([1])], "a.png", { type: "image/png" });
    const text = new File(["x"], "a.txt", { type: "text/plain" });
    const data = { items: [], files: [png, text] } as unknown as DataTransfer;
    expect(clipboardImages(data)).toEqual([png]);
    expect(clipboardImages(null)).toEqual([]);
    expect(baseName("C:\\Users\\me\\chart.png")).toBe("chart.png");
    expect(baseName("/home/me/invoice.jpeg")).toBe("invoice.jpeg");
    expect(looksLikeImage("/a/b.JPG")).toBe(true);
    expect(looksLikeImage("/a/b.pdf")).toBe(false);
    expect(formatSize(1_234_567)).toBe("1.2 MB");
    expect(formatSize(2048)).toBe("2 KB");
  });
});
