import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/svelte";
import { afterEach, describe, expect, it, vi } from "vitest";
import Settings from "./Settings.svelte";
import { clearMocks, fakeBackend, localModel, settings, systemInfo } from "../models/testing";
import type { AppSettings } from "../../lib/types";

afterEach(() => {
  cleanup();
  clearMocks();
});

function setup(initial: AppSettings = settings({ default_model: "owner/b", device: "cpu" }), extra: Record<string, unknown> = {}) {
  const be = fakeBackend({
    app_settings: initial,
    system_info: systemInfo(),
    installed_models: [localModel("owner/a"), localModel("owner/b", { vision: true })],
    save_app_settings: (a: Record<string, unknown>) => a.settings,
    ...extra,
  });
  const onsaved = vi.fn();
  const ontheme = vi.fn();
  render(Settings, { onsaved, ontheme });
  return { be, onsaved, ontheme };
}

describe("Settings page", () => {
  it("loads the settings and the system's facts", async () => {
    setup();
    const model = (await screen.findByLabelText("Default model")) as HTMLSelectElement;
    await waitFor(() => expect(model.value).toBe("owner/b"));
    expect(Array.from(model.options).map((o) => o.textContent)).toEqual([
      "The first installed model",
      "owner/a",
      "owner/b (vision)",
    ]);
    const device = screen.getByLabelText("Run models on") as HTMLSelectElement;
    expect(Array.from(device.options).map((o) => o.value)).toEqual(["cpu", "cuda"]);
    expect((screen.getByRole("radio", { name: "System" }) as HTMLInputElement).checked).toBe(true);
    expect((screen.getByLabelText("Data folder") as HTMLInputElement).placeholder).toBe("/home/me/.local/share/lumen");
    expect(screen.getByText("Used from the next start", { exact: false })).toBeTruthy();
    expect(screen.getByText("Lumen 0.1.0")).toBeTruthy();
    expect(screen.getByText("/home/me/.config/lumen/settings.json")).toBeTruthy();
    expect(screen.getByText("/home/me/.cache/huggingface/hub")).toBeTruthy();
  });

  it("saves the form and says so", async () => {
    const { be, onsaved } = setup();
    const model = (await screen.findByLabelText("Default model")) as HTMLSelectElement;
    await waitFor(() => expect(model.value).toBe("owner/b"));
    const save = screen.getByRole("button", { name: "Save" }) as HTMLButtonElement;
    expect(save.disabled).toBe(true);
    await fireEvent.change(model, { target: { value: "owner/a" } });
    await fireEvent.change(screen.getByLabelText("Run models on"), { target: { value: "cuda" } });
    await fireEvent.input(screen.getByLabelText("Data folder"), { target: { value: "  /data/lumen " } });
    expect(save.disabled).toBe(false);
    await fireEvent.click(save);
    await screen.findByText("Settings saved.");
    const expected = { default_model: "owner/a", device: "cuda", theme: "system", data_dir: "/data/lumen" };
    expect(be.of("save_app_settings").map((c) => c.args)).toEqual([{ settings: expected }]);
    expect(onsaved).toHaveBeenCalledWith(expected);
    expect(save.disabled).toBe(true);
  });

  it("clears the default model and the data folder to null", async () => {
    const { be } = setup(settings({ default_model: "owner/a", data_dir: "/x" }));
    const model = (await screen.findByLabelText("Default model")) as HTMLSelectElement;
    await waitFor(() => expect(model.value).toBe("owner/a"));
    await fireEvent.change(model, { target: { value: "" } });
    await fireEvent.input(screen.getByLabelText("Data folder"), { target: { value: "   " } });
    await fireEvent.click(screen.getByRole("button", { name: "Save" }));
    await waitFor(() => expect(be.of("save_app_settings")).toHaveLength(1));
    expect(be.of("save_app_settings")[0].args.settings).toMatchObject({ default_model: null, data_dir: null });
  });

  it("applies and saves a theme at once", async () => {
    const { be, ontheme } = setup();
    await waitFor(() => expect((screen.getByLabelText("Default model") as HTMLSelectElement).value).toBe("owner/b"));
    await fireEvent.click(screen.getByRole("radio", { name: "Dark" }));
    expect(ontheme).toHaveBeenCalledWith("dark");
    await screen.findByText("Theme saved.");
    expect(be.of("save_app_settings")[0].args.settings).toMatchObject({ theme: "dark", default_model: "owner/b" });
  });

  it("shows a save error", async () => {
    setup(undefined, { save_app_settings: () => Promise.reject({ code: "io", message: "read-only file system" }) });
    await waitFor(() => expect((screen.getByLabelText("Default model") as HTMLSelectElement).value).toBe("owner/b"));
    await fireEvent.change(screen.getByLabelText("Default model"), { target: { value: "owner/a" } });
    await fireEvent.click(screen.getByRole("button", { name: "Save" }));
    expect((await screen.findByRole("alert")).textContent).toContain("read-only file system");
  });

  it("keeps a default model that is not installed as an option", async () => {
    setup(settings({ default_model: "/models/mine.gguf" }));
    const model = (await screen.findByLabelText("Default model")) as HTMLSelectElement;
    await waitFor(() => expect(model.value).toBe("/models/mine.gguf"));
    expect(model.selectedOptions[0].textContent).toBe("/models/mine.gguf (not installed)");
  });
});
