// How numbers, durations and dates read in the UI. Sizes use decimal units
// (1 GB = 10^9 bytes), like the memory estimates from the backend.

const UNITS = ["B", "KB", "MB", "GB", "TB"];

/** 0 B, 512 B, 1.5 KB, 12 MB, 4.2 GB (one decimal below 10, none above). */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return "—";
  let unit = 0;
  let v = n;
  while (v >= 1000 && unit < UNITS.length - 1) {
    v /= 1000;
    unit++;
  }
  if (unit === 0) return `${Math.round(v)} B`;
  // 9.96 would round to "10.0": show it without the decimal.
  const text = v < 9.95 ? v.toFixed(1) : Math.round(v).toString();
  if (text === "1000" && unit < UNITS.length - 1) return `1.0 ${UNITS[unit + 1]}`;
  return `${text} ${UNITS[unit]}`;
}

/** Always in gigabytes, one decimal: memory estimates compare best that way. */
export function formatGB(n: number): string {
  if (!Number.isFinite(n) || n < 0) return "—";
  return `${(n / 1e9).toFixed(1)} GB`;
}

/** 0 B/s, 3.4 MB/s. */
export function formatSpeed(bytesPerS: number): string {
  if (!Number.isFinite(bytesPerS) || bytesPerS < 0) return "—";
  return `${formatBytes(bytesPerS)}/s`;
}

/** A time span for an ETA: "45 s", "3 min 20 s", "2 h 5 min"; "" when unknown. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) {
    const m = Math.floor(s / 60);
    const rest = s % 60;
    return rest ? `${m} min ${rest} s` : `${m} min`;
  }
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return m ? `${h} h ${m} min` : `${h} h`;
}

/** A token count for a context length: 8K, 128K, 2,048. */
export function formatTokens(n: number): string {
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024}K`;
  return n.toLocaleString("en-US");
}

function startOfDay(t: Date): number {
  return new Date(t.getFullYear(), t.getMonth(), t.getDate()).getTime();
}

const DAY = 86_400_000;

/**
 * A date in a list: the time today, "Yesterday", the weekday within a week,
 * the day and month this year, else the full date.
 */
export function formatDate(ms: number, now: number = Date.now(), locale?: string): string {
  if (!Number.isFinite(ms)) return "";
  const date = new Date(ms);
  const today = startOfDay(new Date(now));
  const day = startOfDay(date);
  if (day === today) return date.toLocaleTimeString(locale, { hour: "2-digit", minute: "2-digit" });
  if (day === startOfDay(new Date(today - 1))) return "Yesterday";
  if (day < today && day > today - 7 * DAY) return date.toLocaleDateString(locale, { weekday: "long" });
  if (date.getFullYear() === new Date(now).getFullYear())
    return date.toLocaleDateString(locale, { day: "numeric", month: "short" });
  return date.toLocaleDateString(locale, { day: "numeric", month: "short", year: "numeric" });
}

/** A full date and time, for a tooltip. */
export function formatDateTime(ms: number, locale?: string): string {
  if (!Number.isFinite(ms)) return "";
  return new Date(ms).toLocaleString(locale, { dateStyle: "medium", timeStyle: "short" });
}

export type DateRange = "any" | "today" | "week" | "month";

/** The `since` of a search filter (Unix ms, inclusive) for a date range; null for any. */
export function sinceFor(range: DateRange, now: number = Date.now()): number | null {
  switch (range) {
    case "today":
      return startOfDay(new Date(now));
    case "week":
      return now - 7 * DAY;
    case "month":
      return now - 30 * DAY;
    default:
      return null;
  }
}
