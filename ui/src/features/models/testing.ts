// Test helpers (imported by *.test.ts only): a fake backend over mockIPC
// and builders for the contract's types.
import { clearMocks, mockIPC } from "@tauri-apps/api/mocks";
import { emit } from "@tauri-apps/api/event";
import type {
  AppSettings,
  CatalogueEntry,
  Conversation,
  CoreEvent,
  Fit,
  LocalModel,
  SystemInfo,
  VariantStatus,
} from "../../lib/types";

export type Call = { cmd: string; args: Record<string, unknown> };
export type Handler = (args: Record<string, unknown>) => unknown;

/**
 * Installs a fake backend: `handlers` answer commands by name (a thrown
 * value or a rejected promise is the command's error); every call is kept
 * in `calls`. Unknown commands fail like a missing Rust command would.
 */
export function fakeBackend(handlers: Record<string, Handler | unknown>) {
  const calls: Call[] = [];
  mockIPC(
    (cmd, payload) => {
      const args = (payload ?? {}) as Record<string, unknown>;
      calls.push({ cmd, args });
      if (!(cmd in handlers)) return Promise.reject({ code: "unknown_command", message: `no ${cmd} in this test` });
      const h = handlers[cmd];
      return typeof h === "function" ? (h as Handler)(args) : h;
    },
    { shouldMockEvents: true },
  );
  return {
    calls,
    /** The calls of one command. */
    of: (cmd: string) => calls.filter((c) => c.cmd === cmd),
    /** Sends a core event to the UI as Rust would. */
    emit: (e: CoreEvent) => emit("core://event", e),
  };
}

export { clearMocks };

export function variant(
  spec: string,
  opts: Partial<{ fit: Fit; installed: boolean; gated: boolean; quant: string; repo: string; weights: number }> = {},
): VariantStatus {
  const [, id = "q4"] = spec.split(":");
  return {
    variant: {
      id,
      quant: opts.quant ?? id.toUpperCase(),
      format: "gguf",
      repo: opts.repo ?? `owner/${spec.split(":")[0]}-GGUF`,
      revision: "main",
      files: [`${id}.gguf`],
      gated: opts.gated ?? false,
      load_quant: null,
    },
    spec,
    memory: { weights: opts.weights ?? 2_000_000_000, kv_cache: 400_000_000, overhead: 300_000_000, context: 8192 },
    fit: opts.fit ?? "comfortable",
    installed: opts.installed ?? false,
  };
}

export function entry(id: string, name: string, variants: VariantStatus[], vision = false): CatalogueEntry {
  return {
    model: {
      id,
      name,
      family: "llama",
      summary: `${name}, for tests.`,
      capabilities: vision ? ["text", "vision"] : ["text"],
      license: "Llama 3.2 Community License",
      license_url: "https://example.com/licence",
      recommended: id === "llama-3.2-3b-instruct",
      architecture: { parameters: 3e9, layers: 28, kv_heads: 8, head_dim: 128, max_context: 131072, vision },
      variants: variants.map((v) => v.variant),
    },
    variants,
  };
}

export function localModel(id: string, extra: Partial<LocalModel> = {}): LocalModel {
  return {
    id,
    path: `/models/${id}`,
    commit: "abc",
    kind: "gguf",
    gguf_files: ["model.gguf"],
    size: 2_019_000_000,
    imported: false,
    vision: false,
    ...extra,
  };
}

export function conversation(id: number, title: string, extra: Partial<Conversation> = {}): Conversation {
  return {
    id,
    title,
    model: null,
    system_prompt: null,
    settings: {},
    created_at: 1_700_000_000_000 + id,
    updated_at: 1_700_000_000_000 + id * 1000,
    pinned: false,
    archived: false,
    ...extra,
  };
}

export const settings = (extra: Partial<AppSettings> = {}): AppSettings => ({
  default_model: null,
  theme: "system",
  device: "cpu",
  data_dir: null,
  ...extra,
});

export const systemInfo = (extra: Partial<SystemInfo> = {}): SystemInfo => ({
  version: "0.1.0",
  devices: ["cpu", "cuda"],
  total_memory: 16e9,
  data_dir: "/home/me/.local/share/lumen",
  default_data_dir: "/home/me/.local/share/lumen",
  settings_file: "/home/me/.config/lumen/settings.json",
  hub_cache: "/home/me/.cache/huggingface/hub",
  ...extra,
});

/** A deferred promise, to hold a command's answer until the test releases it. */
export function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}
