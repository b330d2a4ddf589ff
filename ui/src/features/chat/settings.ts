// The conversation settings form: text fields in, checked ChatSettings out.
// An empty field is null: the model's own recommendation.

import type { ChatSettings } from "../../lib/types";

export type SettingsField = keyof ChatSettings;
export type SettingsForm = Record<SettingsField, string>;
export type SettingsErrors = Partial<Record<SettingsField, string>>;

export const DEFAULT_SETTINGS: ChatSettings = {
  temperature: null,
  top_p: null,
  top_k: null,
  max_tokens: null,
  seed: null,
};

type Rule = { label: string; integer: boolean; min: number; max: number; message: string };

export const RULES: Record<SettingsField, Rule> = {
  temperature: { label: "Temperature", integer: false, min: 0, max: 2, message: "a number from 0 to 2" },
  top_p: { label: "Top p", integer: false, min: 0, max: 1, message: "a number from 0 to 1" },
  top_k: { label: "Top k", integer: true, min: 0, max: 1_000_000, message: "a whole number, 0 or more (0 = off)" },
  max_tokens: { label: "Max tokens", integer: true, min: 1, max: 1_000_000, message: "a whole number, 1 or more" },
  seed: { label: "Seed", integer: true, min: 0, max: 4_294_967_295, message: "a whole number from 0 to 4294967295" },
};

export const FIELDS = Object.keys(RULES) as SettingsField[];

export function toForm(s: ChatSettings | null | undefined): SettingsForm {
  const form = {} as SettingsForm;
  for (const f of FIELDS) {
    const v = s?.[f];
    form[f] = v === null || v === undefined ? "" : String(v);
  }
  return form;
}

/** One field: null when empty, a number, or an error message. */
export function parseField(field: SettingsField, text: string): { value: number | null } | { error: string } {
  const t = text.trim();
  if (t === "") return { value: null };
  const rule = RULES[field];
  const shape = rule.integer ? /^\d+$/ : /^(\d+(\.\d*)?|\.\d+)$/;
  const value = Number(t);
  if (!shape.test(t) || !Number.isFinite(value) || value < rule.min || value > rule.max) {
    return { error: `${rule.label} must be ${rule.message}` };
  }
  return { value };
}

/** The whole form: the settings, or null with the errors by field. */
export function parseForm(form: SettingsForm): { settings: ChatSettings | null; errors: SettingsErrors } {
  const settings = { ...DEFAULT_SETTINGS };
  const errors: SettingsErrors = {};
  for (const f of FIELDS) {
    const r = parseField(f, form[f] ?? "");
    if ("error" in r) errors[f] = r.error;
    else settings[f] = r.value;
  }
  return { settings: Object.keys(errors).length ? null : settings, errors };
}

export function sameSettings(a: ChatSettings, b: ChatSettings): boolean {
  return FIELDS.every((f) => (a[f] ?? null) === (b[f] ?? null));
}
