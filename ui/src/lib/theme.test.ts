import { afterEach, describe, expect, it, vi } from "vitest";
import { applyTheme, parseTheme, resolveTheme, setAppTheme } from "./theme";

/** A controllable prefers-color-scheme. */
function fakeSystem(dark: boolean) {
  const listeners = new Set<() => void>();
  const query = {
    matches: dark,
    addEventListener: (_: string, f: () => void) => listeners.add(f),
    removeEventListener: (_: string, f: () => void) => listeners.delete(f),
  };
  vi.stubGlobal("matchMedia", () => query);
  return {
    listeners,
    flip(to: boolean) {
      query.matches = to;
      listeners.forEach((f) => f());
    },
  };
}

afterEach(() => {
  vi.unstubAllGlobals();
  delete document.documentElement.dataset.theme;
});

describe("theme", () => {
  it("resolves system from the preference", () => {
    expect(resolveTheme("system", true)).toBe("dark");
    expect(resolveTheme("system", false)).toBe("light");
    expect(resolveTheme("light", true)).toBe("light");
    expect(resolveTheme("dark", false)).toBe("dark");
  });

  it("reads unknown values as system", () => {
    expect(parseTheme("dark")).toBe("dark");
    expect(parseTheme("sepia")).toBe("system");
    expect(parseTheme(undefined)).toBe("system");
  });

  it("applies a fixed theme and ignores the system", () => {
    const sys = fakeSystem(true);
    const root = document.createElement("html");
    applyTheme("light", root);
    expect(root.dataset.theme).toBe("light");
    expect(sys.listeners.size).toBe(0);
  });

  it("follows the system live, until stopped", () => {
    const sys = fakeSystem(false);
    const root = document.createElement("html");
    const stop = applyTheme("system", root);
    expect(root.dataset.theme).toBe("light");
    sys.flip(true);
    expect(root.dataset.theme).toBe("dark");
    stop();
    sys.flip(false);
    expect(root.dataset.theme).toBe("dark");
    expect(sys.listeners.size).toBe(0);
  });

  it("keeps one app theme: a new one stops following the system", () => {
    const sys = fakeSystem(true);
    setAppTheme("system");
    expect(document.documentElement.dataset.theme).toBe("dark");
    setAppTheme("light");
    sys.flip(true);
    expect(document.documentElement.dataset.theme).toBe("light");
    expect(sys.listeners.size).toBe(0);
  });

  it("works without matchMedia (light)", () => {
    vi.stubGlobal("matchMedia", undefined);
    const root = document.createElement("html");
    applyTheme("system", root)();
    expect(root.dataset.theme).toBe("light");
  });
});
