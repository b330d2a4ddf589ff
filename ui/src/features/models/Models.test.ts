import { cleanup, fireEvent, render, screen, waitFor, within } from "@testing-library/svelte";
import { afterEach, describe, expect, it, vi } from "vitest";
import Models from "./Models.svelte";
import { clearMocks, entry, fakeBackend, localModel, variant } from "./testing";
import type { DownloadStatus, LocalModel } from "../../lib/types";

afterEach(() => {
  cleanup();
  clearMocks();
});

const catalogue = [
  entry("llama-3.2-3b-instruct", "Llama 3.2 3B Instruct", [
    variant("llama-3.2-3b-instruct:q4_k_m", { quant: "Q4_K_M", gated: true }),
    variant("llama-3.2-3b-instruct:f16", { quant: "F16", fit: "too_large" }),
  ]),
];

function backend(extra: Record<string, unknown> = {}, installed: LocalModel[] = []) {
  return fakeBackend({
    catalogue: () => catalogue,
    installed_models: () => installed,
    downloads: (): DownloadStatus[] => [],
    token_status: { present: false, source: null },
    start_download: 7,
    pause_download: null,
    resume_download: null,
    cancel_download: null,
    ...extra,
  });
}

const progressOf = () => document.querySelector(".download progress") as HTMLProgressElement;

describe("Models page", () => {
  it("shows the catalogue with memory, fit and the gated marker", async () => {
    backend();
    render(Models, { model: "" });
    await screen.findByText("Llama 3.2 3B Instruct");
    expect(screen.getByText("Too large for this machine")).toBeTruthy();
    expect(screen.getByText("Fits comfortably")).toBeTruthy();
    expect(screen.getByText(/Needs a Hugging Face token and the licence accepted/)).toBeTruthy();
    // 2.0 weights + 0.4 KV + 0.3 overhead
    expect(screen.getAllByText("2.7 GB", { selector: "strong" })).toHaveLength(2);
    expect(screen.getAllByText(/2\.0 GB weights \+ 0\.4 GB KV cache at 8K tokens \+ 0\.3 GB overhead/)).toHaveLength(2);
  });

  it("starts a download and follows its progress events", async () => {
    const be = backend();
    render(Models, { model: "" });
    await fireEvent.click(await screen.findByRole("button", { name: "Download Llama 3.2 3B Instruct Q4_K_M" }));
    await waitFor(() => expect(progressOf()).toBeTruthy());
    expect(be.of("start_download")[0].args).toEqual({ spec: "llama-3.2-3b-instruct:q4_k_m" });

    await be.emit({ type: "download", id: 7, event: { kind: "started", repo: "o/r", commit: "c", files: [], total: 1000 } });
    await be.emit({ type: "download", id: 7, event: { kind: "progress", done: 250, total: 1000, bytes_per_s: 2_500_000, eta_s: 90 } });
    await waitFor(() => expect(progressOf().value).toBe(250));
    expect(progressOf().max).toBe(1000);
    const row = document.querySelector(".download") as HTMLElement;
    expect(row.textContent).toContain("2.5 MB/s");
    expect(row.textContent).toContain("1 min 30 s left");

    await be.emit({ type: "download", id: 7, event: { kind: "progress", done: 800, total: 1000, bytes_per_s: 1, eta_s: 1 } });
    await waitFor(() => expect(progressOf().value).toBe(800));
  });

  it("pauses, resumes and cancels", async () => {
    const be = backend();
    render(Models, { model: "" });
    await fireEvent.click(await screen.findByRole("button", { name: "Download Llama 3.2 3B Instruct Q4_K_M" }));
    const row = await waitFor(() => document.querySelector(".download") as HTMLElement);

    await fireEvent.click(within(row).getByRole("button", { name: "Pause" }));
    await waitFor(() => expect(be.of("pause_download")).toEqual([{ cmd: "pause_download", args: { id: 7 } }]));
    await be.emit({ type: "download", id: 7, event: { kind: "paused" } });
    await fireEvent.click(await within(row).findByRole("button", { name: "Resume" }));
    await waitFor(() => expect(be.of("resume_download")[0].args).toEqual({ id: 7 }));
    await be.emit({ type: "download", id: 7, event: { kind: "resumed" } });

    await fireEvent.click(await within(row).findByRole("button", { name: "Cancel" }));
    await waitFor(() => expect(be.of("cancel_download")[0].args).toEqual({ id: 7 }));
    await be.emit({ type: "download", id: 7, event: { kind: "cancelled" } });
    await waitFor(() => expect(document.querySelector(".download")).toBeNull());
  });

  it("shows a failure with its message and retries", async () => {
    let next = 7;
    const be = backend({ start_download: () => next++ });
    render(Models, { model: "" });
    await fireEvent.click(await screen.findByRole("button", { name: "Download Llama 3.2 3B Instruct Q4_K_M" }));
    await waitFor(() => expect(document.querySelector(".download")).toBeTruthy());
    await be.emit({ type: "download", id: 7, event: { kind: "failed", code: "gated", message: "Accept the licence first" } });
    await screen.findByText("Failed: Accept the licence first");
    await fireEvent.click(screen.getByRole("button", { name: "Retry" }));
    await waitFor(() => expect(be.of("start_download")).toHaveLength(2));
    await waitFor(() => expect(screen.queryByText(/Failed:/)).toBeNull());
    expect(document.querySelectorAll(".download")).toHaveLength(1);
  });

  it("restores downloads already running and refreshes when one finishes", async () => {
    let installed: LocalModel[] = [];
    const running: DownloadStatus = {
      id: 3,
      spec: "llama-3.2-3b-instruct:q4_k_m",
      last: { kind: "progress", done: 10, total: 100, bytes_per_s: 5, eta_s: 18 },
      active: true,
    };
    const be = backend({ downloads: () => [running], installed_models: () => installed });
    const onmodelschange = vi.fn();
    render(Models, { model: "", onmodelschange });
    await waitFor(() => expect(progressOf()?.value).toBe(10));
    expect(screen.getByText("Llama 3.2 3B Instruct · Q4_K_M")).toBeTruthy();

    installed = [localModel("owner/llama-3.2-3b-instruct-GGUF")];
    await be.emit({ type: "download", id: 3, event: { kind: "finished", snapshot: "/snap" } });
    await screen.findByText("owner/llama-3.2-3b-instruct-GGUF");
    expect(onmodelschange).toHaveBeenCalled();
    expect(screen.getByText("Installed", { selector: ".download .state" })).toBeTruthy();
    await fireEvent.click(within(document.querySelector(".download") as HTMLElement).getByRole("button", { name: "Use" }));
    await screen.findByText("Now using owner/llama-3.2-3b-instruct-GGUF.");
  });

  it("imports a model file, and does nothing when the dialog is cancelled", async () => {
    let picked: string | null = null;
    const be = backend({
      pick_model_file: () => picked,
      import_model: (a: Record<string, unknown>) => localModel("local/mine", { path: String(a.path), imported: true }),
    });
    const onmodelschange = vi.fn();
    render(Models, { model: "", onmodelschange });
    const button = await screen.findByRole("button", { name: "Import a model file…" });
    await fireEvent.click(button);
    await waitFor(() => expect(be.of("pick_model_file")).toHaveLength(1));
    expect(be.of("import_model")).toHaveLength(0);

    picked = "/home/me/mine.gguf";
    await fireEvent.click(button);
    await screen.findByText("Imported local/mine.");
    expect(be.of("import_model")[0].args).toEqual({ path: "/home/me/mine.gguf" });
    await waitFor(() => expect(onmodelschange).toHaveBeenCalledTimes(1));
  });

  it("shows an import error", async () => {
    backend({ pick_model_file: "/x.bin", import_model: () => Promise.reject({ code: "bad_model", message: "Not a GGUF file" }) });
    render(Models, { model: "" });
    await fireEvent.click(await screen.findByRole("button", { name: "Import a model file…" }));
    expect((await screen.findByRole("alert")).textContent).toBe("Not a GGUF file");
  });

  it("deletes an installed model only after confirmation and says what was freed", async () => {
    let installed = [localModel("owner/a"), localModel("owner/b")];
    const be = backend({
      delete_model: (a: Record<string, unknown>) => {
        installed = installed.filter((m) => m.id !== a.spec);
        return 2_019_000_000;
      },
      installed_models: () => installed,
    });
    render(Models, { model: "owner/a" });
    await fireEvent.click(await screen.findByRole("button", { name: "Delete owner/a" }));
    expect(be.of("delete_model")).toHaveLength(0);
    const confirm = screen.getByRole("group", { name: "Confirm deleting owner/a" });
    await fireEvent.click(within(confirm).getByRole("button", { name: "Keep" }));
    expect(screen.queryByRole("group")).toBeNull();

    await fireEvent.click(screen.getByRole("button", { name: "Delete owner/a" }));
    await fireEvent.click(within(screen.getByRole("group")).getByRole("button", { name: "Delete" }));
    await screen.findByText("Deleted owner/a: 2.0 GB freed.");
    expect(be.of("delete_model")[0].args).toEqual({ spec: "owner/a" });
    await waitFor(() => expect(screen.queryByText("owner/a")).toBeNull());
  });

  it("saves and removes the Hugging Face token without echoing it", async () => {
    const be = backend({
      set_token: () => ({ present: true, source: "keyring" }),
      clear_token: () => ({ present: false, source: null }),
    });
    render(Models, { model: "" });
    await screen.findByText(/No token set/);
    const field = screen.getByLabelText("Access token") as HTMLInputElement;
    expect(field.type).toBe("password");
    await fireEvent.input(field, { target: { value: " hf_secret123 " } });
    await fireEvent.click(screen.getByRole("button", { name: "Save token" }));
    await screen.findByText("A token is saved in this computer's keyring.");
    expect(be.of("set_token")[0].args).toEqual({ token: "hf_secret123" });
    expect(field.value).toBe("");
    expect(document.body.textContent).not.toContain("hf_secret123");

    await fireEvent.click(screen.getByRole("button", { name: "Remove token" }));
    await screen.findByText(/No token set/);
    expect(be.of("clear_token")).toHaveLength(1);
  });

  it("shows a token error", async () => {
    backend({ set_token: () => Promise.reject({ code: "invalid_token", message: "Hugging Face refused this token" }) });
    render(Models, { model: "" });
    await fireEvent.input(await screen.findByLabelText("Access token"), { target: { value: "hf_x" } });
    await fireEvent.click(screen.getByRole("button", { name: "Save token" }));
    expect((await screen.findByRole("alert")).textContent).toBe("Hugging Face refused this token");
  });
});
