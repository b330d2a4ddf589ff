import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/svelte";
import { afterEach, describe, expect, it, vi } from "vitest";
import Welcome from "./Welcome.svelte";
import { clearMocks, entry, fakeBackend, localModel, variant } from "../models/testing";
import type { Fit, LocalModel } from "../../lib/types";

afterEach(() => {
  cleanup();
  clearMocks();
});

function catalogue(visionFit: Fit) {
  return [
    entry("llama-3.2-1b-instruct", "Llama 3.2 1B Instruct", [variant("llama-3.2-1b-instruct:q8_0")]),
    entry("llama-3.2-3b-instruct", "Llama 3.2 3B Instruct", [
      variant("llama-3.2-3b-instruct:f16", { fit: "too_large", weights: 6.4e9 }),
      variant("llama-3.2-3b-instruct:q4_k_m", { fit: "tight", repo: "bartowski/Llama-3.2-3B-Instruct-GGUF" }),
      variant("llama-3.2-3b-instruct:q8_0", { fit: "comfortable" }),
    ]),
    entry(
      "llama-3.2-11b-vision-instruct",
      "Llama 3.2 11B Vision Instruct",
      [variant("llama-3.2-11b-vision-instruct:q4", { fit: visionFit, weights: 6e9 })],
      true,
    ),
  ];
}

function setup(visionFit: Fit = "too_large", extra: Record<string, unknown> = {}) {
  const be = fakeBackend({
    catalogue: catalogue(visionFit),
    downloads: [],
    start_download: 5,
    installed_models: [],
    ...extra,
  });
  const onready = vi.fn();
  const onskip = vi.fn();
  const { container } = render(Welcome, { onready, onskip });
  return { be, onready, onskip, container };
}

describe("Welcome page", () => {
  it("recommends Llama 3.2 3B, hiding the 11B Vision when it does not fit", async () => {
    const { container } = setup("too_large");
    expect(container.querySelector(".welcome")).toBeTruthy();
    await screen.findByText("Llama 3.2 3B Instruct");
    expect(screen.queryByText("Llama 3.2 11B Vision Instruct")).toBeNull();
    expect(screen.queryByText("Llama 3.2 1B Instruct")).toBeNull();
    expect(screen.getByText("Tight fit")).toBeTruthy();
  });

  it("offers the 11B Vision when one of its variants fits", async () => {
    setup("comfortable");
    await screen.findByText("Llama 3.2 11B Vision Instruct");
    expect(screen.getByRole("button", { name: "Download Llama 3.2 11B Vision Instruct" })).toBeTruthy();
  });

  it("downloads the first variant that fits in one click, then opens the chat with it", async () => {
    let installed: LocalModel[] = [];
    const { be, onready } = setup("too_large", { installed_models: () => installed });
    await fireEvent.click(await screen.findByRole("button", { name: "Download Llama 3.2 3B Instruct" }));
    await waitFor(() => expect(be.of("start_download")).toHaveLength(1));
    expect(be.of("start_download")[0].args).toEqual({ spec: "llama-3.2-3b-instruct:q4_k_m" });

    await be.emit({ type: "download", id: 5, event: { kind: "progress", done: 300, total: 1200, bytes_per_s: 1e6, eta_s: 1 } });
    await waitFor(() => expect((document.querySelector(".download progress") as HTMLProgressElement)?.value).toBe(300));
    expect(screen.getByRole("button", { name: "Pause" })).toBeTruthy();

    installed = [localModel("bartowski/Llama-3.2-3B-Instruct-GGUF")];
    await be.emit({ type: "download", id: 5, event: { kind: "finished", snapshot: "/s" } });
    await waitFor(() => expect(onready).toHaveBeenCalledWith("bartowski/Llama-3.2-3B-Instruct-GGUF"));
  });

  it("shows a failed download with Retry", async () => {
    let id = 5;
    const { be } = setup("too_large", { start_download: () => id++ });
    await fireEvent.click(await screen.findByRole("button", { name: "Download Llama 3.2 3B Instruct" }));
    await waitFor(() => expect(document.querySelector(".download")).toBeTruthy());
    await be.emit({ type: "download", id: 5, event: { kind: "failed", code: "network", message: "No connection" } });
    await screen.findByText("Failed: No connection");
    await fireEvent.click(screen.getByRole("button", { name: "Retry" }));
    await waitFor(() => expect(be.of("start_download")).toHaveLength(2));
  });

  it("uses a model file on this computer", async () => {
    const { be, onready } = setup("too_large", {
      pick_model_file: "/home/me/llama.gguf",
      import_model: () => localModel("local/llama", { imported: true }),
    });
    await fireEvent.click(await screen.findByRole("button", { name: "Use a model file on this computer" }));
    await waitFor(() => expect(onready).toHaveBeenCalledWith("local/llama"));
    expect(be.of("import_model")[0].args).toEqual({ path: "/home/me/llama.gguf" });
  });

  it("skips to the models page", async () => {
    const { onskip } = setup();
    await fireEvent.click(screen.getByRole("link", { name: "Skip: see all models" }));
    expect(onskip).toHaveBeenCalled();
  });

  it("says so when even the 3B is too large", async () => {
    setup("too_large", {
      catalogue: [entry("llama-3.2-3b-instruct", "Llama 3.2 3B Instruct", [variant("llama-3.2-3b-instruct:f16", { fit: "too_large" })])],
    });
    await screen.findByText(/may be too large for this computer's memory/);
    expect(screen.queryByRole("button", { name: /^Download/ })).toBeNull();
  });
});
