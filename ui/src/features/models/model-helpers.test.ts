import { describe, expect, it } from "vitest";
import { firstFitting, modelForVariant, specLabel, tokenText } from "./model-helpers";
import { apply, describe as describeRow, type DownloadRow } from "./downloads.svelte";
import { entry, localModel, variant } from "./testing";
import type { TokenStatus } from "../../lib/types";

describe("models helpers", () => {
  const v = variant("llama-3.2-3b-instruct:q4_k_m", { repo: "bartowski/Llama-3.2-3B-Instruct-GGUF", quant: "Q4_K_M" });

  it("uses the installed id for a variant whose repository holds one model file, else the spec", () => {
    expect(modelForVariant(v, [localModel("bartowski/llama-3.2-3b-instruct-gguf")])).toBe("bartowski/llama-3.2-3b-instruct-gguf");
    expect(modelForVariant(v, [localModel("bartowski/Llama-3.2-3B-Instruct-GGUF", { gguf_files: ["a.gguf", "b.gguf"] })])).toBe(
      "llama-3.2-3b-instruct:q4_k_m",
    );
    expect(modelForVariant(v, [])).toBe("llama-3.2-3b-instruct:q4_k_m");
  });

  it("names a spec after its catalogue entry", () => {
    const cat = [entry("llama-3.2-3b-instruct", "Llama 3.2 3B Instruct", [v])];
    expect(specLabel("llama-3.2-3b-instruct:q4_k_m", cat)).toBe("Llama 3.2 3B Instruct · Q4_K_M");
    expect(specLabel("owner/other", cat)).toBe("owner/other");
  });

  it("finds the first variant that is not too large", () => {
    const big = variant("m:f16", { fit: "too_large" });
    const tight = variant("m:q8", { fit: "tight" });
    expect(firstFitting(entry("m", "M", [big, tight]))?.spec).toBe("m:q8");
    expect(firstFitting(entry("m", "M", [big]))).toBeUndefined();
    expect(firstFitting(undefined)).toBeUndefined();
  });

  it("prefers a variant that needs no token (an ungated mirror) among those that fit", () => {
    const meta = variant("m:bf16", { gated: true });
    const mirror = variant("m:bf16-mirror");
    const hugeMirror = variant("m:f32-mirror", { fit: "too_large" });
    expect(firstFitting(entry("m", "M", [meta, hugeMirror, mirror]))?.spec).toBe("m:bf16-mirror");
    expect(firstFitting(entry("m", "M", [meta, hugeMirror]))?.spec).toBe("m:bf16");
  });

  it("says where the token comes from, for both names of Hugging Face's token file", () => {
    expect(tokenText({ present: false, source: null })).toMatch(/No token set/);
    expect(tokenText({ present: true, source: "keyring" })).toMatch(/keyring/);
    expect(tokenText({ present: true, source: "environment" })).toMatch(/HF_TOKEN/);
    expect(tokenText({ present: true, source: "hugging_face_file" })).toMatch(/Hugging Face's own tools/);
  });
});

describe("download rows", () => {
  const row = (): DownloadRow => ({
    id: 1,
    spec: "",
    state: "starting",
    done: 0,
    total: 0,
    speed: 0,
    eta: null,
    detail: "",
    code: "",
    error: "",
  });

  it("follows a download from start to finish", () => {
    const r = row();
    apply(r, { kind: "started", repo: "o/r", commit: "c", files: [["a", 10]], total: 10 });
    expect([r.state, r.spec, r.total]).toEqual(["downloading", "o/r", 10]);
    apply(r, { kind: "progress", done: 4, total: 10, bytes_per_s: 2, eta_s: 3 });
    expect([r.done, r.speed, r.eta]).toEqual([4, 2, 3]);
    apply(r, { kind: "verifying", file: "a", bytes: 4 });
    expect(describeRow(r)).toBe("Checking the part already downloaded…");
    apply(r, { kind: "retrying", file: "a", attempt: 2, delay_ms: 500, reason: "connection reset" });
    expect(describeRow(r)).toBe("Connection trouble, retrying: connection reset");
    apply(r, { kind: "finished", snapshot: "/s" });
    expect([r.state, r.done, r.total]).toEqual(["finished", 10, 10]);
  });

  it("stays paused when a late progress event arrives", () => {
    const r = row();
    apply(r, { kind: "paused" });
    apply(r, { kind: "progress", done: 5, total: 10, bytes_per_s: 1, eta_s: 5 });
    expect(r.state).toBe("paused");
    expect(r.done).toBe(5);
    apply(r, { kind: "resumed" });
    expect(r.state).toBe("downloading");
  });

  it("keeps a failure's message and code", () => {
    const r = row();
    apply(r, { kind: "failed", code: "gated", message: "Accept the licence" });
    expect([r.state, r.code, describeRow(r)]).toEqual(["failed", "gated", "Failed: Accept the licence"]);
  });
});
