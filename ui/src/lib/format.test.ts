import { describe, expect, it } from "vitest";
import { formatBytes, formatDate, formatDuration, formatGB, formatSpeed, formatTokens, sinceFor } from "./format";

describe("formatBytes", () => {
  it("uses decimal units with one decimal below 10", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(999)).toBe("999 B");
    expect(formatBytes(1500)).toBe("1.5 KB");
    expect(formatBytes(12_345_678)).toBe("12 MB");
    expect(formatBytes(4_200_000_000)).toBe("4.2 GB");
    expect(formatBytes(9_960_000)).toBe("10 MB");
    expect(formatBytes(999_999)).toBe("1.0 MB");
  });
  it("says nothing useful about nonsense", () => {
    expect(formatBytes(-1)).toBe("—");
    expect(formatBytes(NaN)).toBe("—");
  });
});

describe("formatGB / formatSpeed / formatTokens", () => {
  it("formats", () => {
    expect(formatGB(2_019_000_000)).toBe("2.0 GB");
    expect(formatGB(123_000_000)).toBe("0.1 GB");
    expect(formatSpeed(3_400_000)).toBe("3.4 MB/s");
    expect(formatTokens(8192)).toBe("8K");
    expect(formatTokens(131072)).toBe("128K");
    expect(formatTokens(2000)).toBe("2,000");
  });
});

describe("formatDuration", () => {
  it("reads naturally", () => {
    expect(formatDuration(0)).toBe("0 s");
    expect(formatDuration(44.6)).toBe("45 s");
    expect(formatDuration(200)).toBe("3 min 20 s");
    expect(formatDuration(180)).toBe("3 min");
    expect(formatDuration(7500)).toBe("2 h 5 min");
    expect(formatDuration(7200)).toBe("2 h");
  });
  it("is empty when unknown", () => {
    expect(formatDuration(null)).toBe("");
    expect(formatDuration(undefined)).toBe("");
    expect(formatDuration(Infinity)).toBe("");
    expect(formatDuration(-3)).toBe("");
  });
});

describe("formatDate", () => {
  const now = new Date(2025, 4, 15, 16, 30).getTime(); // Thursday 15 May 2025
  it("shows the time today", () => {
    expect(formatDate(new Date(2025, 4, 15, 9, 5).getTime(), now, "en-GB")).toBe("09:05");
  });
  it("says yesterday, then the weekday within a week", () => {
    expect(formatDate(new Date(2025, 4, 14, 23, 59).getTime(), now, "en-GB")).toBe("Yesterday");
    expect(formatDate(new Date(2025, 4, 12, 8).getTime(), now, "en-GB")).toBe("Monday");
  });
  it("shows day and month this year, and the year before", () => {
    expect(formatDate(new Date(2025, 0, 3).getTime(), now, "en-GB")).toBe("3 Jan");
    expect(formatDate(new Date(2023, 10, 20).getTime(), now, "en-GB")).toBe("20 Nov 2023");
  });
});

describe("sinceFor", () => {
  const now = new Date(2025, 4, 15, 16, 30).getTime();
  it("turns a date range into a lower bound", () => {
    expect(sinceFor("any", now)).toBeNull();
    expect(sinceFor("today", now)).toBe(new Date(2025, 4, 15).getTime());
    expect(sinceFor("week", now)).toBe(now - 7 * 86_400_000);
    expect(sinceFor("month", now)).toBe(now - 30 * 86_400_000);
  });
});
