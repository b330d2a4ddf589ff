import { describe, expect, it } from "vitest";
import { parseForm, toForm, DEFAULT_SETTINGS } from "./settings";

const form = (over: Record<string, string> = {}) => ({ ...toForm(DEFAULT_SETTINGS), ...over });

describe("conversation settings form", () => {
  it("reads empty fields as the model's default and numbers as numbers", () => {
    expect(parseForm(form())).toEqual({ settings: DEFAULT_SETTINGS, errors: {} });
    expect(parseForm(form({ temperature: "0.7", top_p: ".9", top_k: "40", max_tokens: "512", seed: " 42 " })).settings).toEqual({
      temperature: 0.7,
      top_p: 0.9,
      top_k: 40,
      max_tokens: 512,
      seed: 42,
    });
    expect(parseForm(form({ temperature: "0", top_k: "0" })).settings).toMatchObject({ temperature: 0, top_k: 0 });
  });

  it("explains each bad value", () => {
    const { settings, errors } = parseForm(
      form({ temperature: "2.5", top_p: "-0.1", top_k: "1.5", max_tokens: "0", seed: "abc" }),
    );
    expect(settings).toBeNull();
    expect(errors).toEqual({
      temperature: "Temperature must be a number from 0 to 2",
      top_p: "Top p must be a number from 0 to 1",
      top_k: "Top k must be a whole number, 0 or more (0 = off)",
      max_tokens: "Max tokens must be a whole number, 1 or more",
      seed: "Seed must be a whole number from 0 to 4294967295",
    });
    expect(parseForm(form({ temperature: "1e3" })).errors.temperature).toBeDefined();
    expect(parseForm(form({ seed: "99999999999999999999" })).errors.seed).toBeDefined();
  });

  it("round-trips stored settings", () => {
    const s = { temperature: 1.2, top_p: null, top_k: 10, max_tokens: null, seed: 7 };
    expect(parseForm(toForm(s)).settings).toEqual(s);
  });
});
