// Light, dark, or the system's choice, applied as `data-theme` on <html>
// (app.css reads it). "system" follows prefers-color-scheme live.
import type { Theme } from "./types";

export type Resolved = "light" | "dark";

const QUERY = "(prefers-color-scheme: dark)";

export function resolveTheme(theme: Theme, prefersDark: boolean): Resolved {
  if (theme === "light" || theme === "dark") return theme;
  return prefersDark ? "dark" : "light";
}

/** A theme from the settings file, read defensively (unknown → system). */
export function parseTheme(value: unknown): Theme {
  return value === "light" || value === "dark" ? value : "system";
}

function darkQuery(): MediaQueryList | null {
  return typeof window !== "undefined" && typeof window.matchMedia === "function" ? window.matchMedia(QUERY) : null;
}

/**
 * Applies `theme` to `root` now and, for "system", whenever the system
 * switches. Returns a function that stops following the system.
 */
export function applyTheme(theme: Theme, root: HTMLElement = document.documentElement): () => void {
  const query = darkQuery();
  const set = () => {
    const resolved = resolveTheme(theme, query?.matches ?? false);
    root.dataset.theme = resolved;
    root.style.colorScheme = resolved;
  };
  set();
  if (theme !== "system" || !query) return () => {};
  query.addEventListener("change", set);
  return () => query.removeEventListener("change", set);
}

let stop: () => void = () => {};

/** The one theme of the app: each call replaces the previous one. */
export function setAppTheme(theme: Theme): void {
  stop();
  stop = applyTheme(theme);
}
