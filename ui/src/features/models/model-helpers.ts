// Shared by the models page, the welcome page and the shell.
import { api } from "../../lib/api";
import type { CatalogueEntry, Fit, LocalModel, TokenStatus, VariantStatus } from "../../lib/types";

export const FIT_TEXT: Record<Fit, string> = {
  comfortable: "Fits comfortably",
  tight: "Tight fit",
  too_large: "Too large for this machine",
};

export const GATED_TEXT = "Needs a Hugging Face token and the licence accepted";

/**
 * What to use as the current model for an installed catalogue variant: the
 * installed model's id when its repository is installed with a single model
 * file (a clean name in the picker), else the variant's spec (which picks
 * the exact file).
 */
export function modelForVariant(v: VariantStatus, installed: LocalModel[]): string {
  const repo = v.variant.repo.toLowerCase();
  const m = installed.find((m) => m.id.toLowerCase() === repo);
  if (m && m.gguf_files.length <= 1) return m.id;
  return v.spec;
}

/** "Llama 3.2 3B Instruct · Q4_K_M" for a spec from the catalogue, else the spec. */
export function specLabel(spec: string, catalogue: CatalogueEntry[]): string {
  for (const entry of catalogue)
    for (const v of entry.variants) if (v.spec === spec) return `${entry.model.name} · ${v.variant.quant}`;
  return spec;
}

/** Bytes a variant needs in memory (weights + KV cache at its context + overhead). */
export const memoryTotal = (v: VariantStatus) => v.memory.weights + v.memory.kv_cache + v.memory.overhead;

/** The first variant of a catalogue model that is not too large, if any. */
/**
 * The variant to recommend: the first that fits this machine, preferring
 * one that downloads without a Hugging Face token (an ungated mirror).
 */
export function firstFitting(entry: CatalogueEntry | undefined): VariantStatus | undefined {
  const fitting = entry?.variants.filter((v) => v.fit !== "too_large") ?? [];
  return fitting.find((v) => !v.variant.gated) ?? fitting[0];
}

export function tokenText(status: TokenStatus | null): string {
  if (!status) return "";
  if (!status.present) return "No token set: gated models (Llama) cannot be downloaded yet.";
  switch (status.source) {
    case "keyring":
      return "A token is saved in this computer's keyring.";
    case "environment":
      return "Using the token from the HF_TOKEN environment variable (it wins over a saved one).";
    case "hugging_face_file":
      return "Using the token saved by Hugging Face's own tools (hf auth login).";
    default:
      return "A token is set.";
  }
}

/** Calls a Tauri unlisten function, ignoring a backend that is already gone. */
export function release(unlisten: (() => void) | null | undefined): void {
  if (!unlisten) return;
  try {
    const r = unlisten() as unknown;
    if (r instanceof Promise) r.catch(() => {});
  } catch {
    // Nothing to release.
  }
}

/** Asks for a model file (the native dialog) and imports it; null when the dialog is cancelled. */
export async function importModelFile(): Promise<LocalModel | null> {
  const path = await api.pickModelFile();
  return path === null ? null : api.importModel(path);
}
