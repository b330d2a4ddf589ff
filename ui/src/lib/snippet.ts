// Search snippets: the backend marks the matched words with UTF-8 BYTE
// ranges; a JS string is indexed in UTF-16 code units, so the ranges are
// converted here before anything is sliced. Ranges from the wire are not
// trusted: out of bounds, reversed, overlapping, or splitting a character
// all give a sensible highlight (a split character is marked whole).

export type Segment = { text: string; mark: boolean };

/** UTF-8 length of a code point (a lone surrogate is written as U+FFFD: 3 bytes). */
function utf8Len(cp: number): number {
  if (cp < 0x80) return 1;
  if (cp < 0x800) return 2;
  if (cp < 0x10000) return 3;
  return 4;
}

/**
 * The character boundaries of `s`: `bytes[k]` is the UTF-8 offset and
 * `units[k]` the UTF-16 index of the k-th boundary (both start at 0 and end
 * at the string's length).
 */
function boundaries(s: string): { bytes: number[]; units: number[] } {
  const bytes = [0];
  const units = [0];
  let b = 0;
  let u = 0;
  while (u < s.length) {
    const cp = s.codePointAt(u)!;
    b += utf8Len(cp);
    u += cp > 0xffff ? 2 : 1;
    bytes.push(b);
    units.push(u);
  }
  return { bytes, units };
}

/** Index of the last boundary whose byte offset is <= b. */
function floorBoundary(bytes: number[], b: number): number {
  let lo = 0;
  let hi = bytes.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (bytes[mid] <= b) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** Index of the first boundary whose byte offset is >= b. */
function ceilBoundary(bytes: number[], b: number): number {
  let lo = 0;
  let hi = bytes.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (bytes[mid] >= b) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/**
 * Converts UTF-8 byte ranges into sorted, merged, non-empty UTF-16 ranges of
 * `s` ([start, end), end exclusive). Invalid ranges (non-numbers, reversed,
 * empty, entirely outside the text) are dropped; partly outside ones are clamped.
 */
export function toStringRanges(s: string, highlights: ReadonlyArray<readonly [number, number]>): Array<[number, number]> {
  const { bytes, units } = boundaries(s);
  const total = bytes[bytes.length - 1];
  const ranges: Array<[number, number]> = [];
  for (const range of highlights) {
    if (!Array.isArray(range) || range.length < 2) continue;
    let [start, end] = range;
    if (typeof start !== "number" || typeof end !== "number" || Number.isNaN(start) || Number.isNaN(end)) continue;
    start = Math.max(0, Math.floor(start));
    end = Math.min(total, Math.ceil(end));
    if (start >= end) continue;
    const from = units[floorBoundary(bytes, start)];
    const to = units[ceilBoundary(bytes, end)];
    if (from < to) ranges.push([from, to]);
  }
  ranges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const merged: Array<[number, number]> = [];
  for (const r of ranges) {
    const last = merged[merged.length - 1];
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else merged.push([r[0], r[1]]);
  }
  return merged;
}

/** `s` cut into plain and marked pieces, in order; joined they give `s` back. */
export function segments(s: string, highlights: ReadonlyArray<readonly [number, number]>): Segment[] {
  const out: Segment[] = [];
  let at = 0;
  for (const [from, to] of toStringRanges(s, highlights)) {
    if (from > at) out.push({ text: s.slice(at, from), mark: false });
    out.push({ text: s.slice(from, to), mark: true });
    at = to;
  }
  if (at < s.length || out.length === 0) out.push({ text: s.slice(at), mark: false });
  return out;
}
