import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/svelte";
import { afterEach, describe, expect, it, vi } from "vitest";
import { clearMocks, conversation, entry, fakeBackend, localModel, settings, variant } from "./features/models/testing";
import type { AppSettings, Conversation, LocalModel } from "./lib/types";

// The chat screen belongs to its own feature (and its own tests): here it is a
// stand-in that shows which props the shell gives it.
const chat = vi.hoisted(() => ({ props: null as Record<string, unknown> | null }));
vi.mock("./features/chat/Chat.svelte", () => ({
  default: (anchor: Node, props: Record<string, unknown>) => {
    chat.props = props;
    const el = document.createElement("section");
    el.className = "chat-stub";
    anchor.parentNode?.insertBefore(el, anchor);
  },
}));

import App from "./App.svelte";

afterEach(() => {
  cleanup();
  clearMocks();
  chat.props = null;
  document.body.innerHTML = "";
});

function setup(
  opts: { settings?: AppSettings; installed?: LocalModel[]; conversations?: Conversation[] } = {},
  extra: Record<string, unknown> = {},
) {
  let installed = opts.installed ?? [];
  const be = fakeBackend({
    app_settings: opts.settings ?? settings(),
    installed_models: () => installed,
    list_conversations: opts.conversations ?? [],
    catalogue: [entry("llama-3.2-3b-instruct", "Llama 3.2 3B Instruct", [variant("llama-3.2-3b-instruct:q4_k_m")])],
    downloads: [],
    token_status: { present: false, source: null },
    search_history: [],
    ...extra,
  });
  render(App);
  return {
    be,
    setInstalled: (m: LocalModel[]) => (installed = m),
  };
}

const picker = () => screen.getByRole("combobox", { name: "Model" }) as HTMLSelectElement;

describe("App shell", () => {
  it("shows the welcome page on a first run", async () => {
    setup();
    await waitFor(() => expect(document.querySelector(".welcome")).toBeTruthy());
    expect(await screen.findByText("Llama 3.2 3B Instruct")).toBeTruthy();
    expect(document.querySelector(".chat-stub")).toBeNull();
  });

  it("opens the chat with the default model from the settings", async () => {
    setup({
      settings: settings({ default_model: "owner/b" }),
      installed: [localModel("owner/a"), localModel("owner/b", { vision: true })],
    });
    await waitFor(() => expect(chat.props).not.toBeNull());
    expect(document.querySelector(".welcome")).toBeNull();
    expect(chat.props!.model).toBe("owner/b");
    expect(picker().value).toBe("owner/b");
    expect(Array.from(picker().options).map((o) => o.textContent)).toEqual(["owner/a", "owner/b · vision"]);
  });

  it("starts with the first installed model when no default is set", async () => {
    setup({ installed: [localModel("owner/a"), localModel("owner/b")] });
    await waitFor(() => expect(chat.props?.model).toBe("owner/a"));
  });

  it("shows a default model that is a path as an option too", async () => {
    setup({ settings: settings({ default_model: "/models/x.gguf" }) });
    await waitFor(() => expect(picker().value).toBe("/models/x.gguf"));
    expect(document.querySelector(".welcome")).toBeNull();
  });

  it("switches pages with the header buttons", async () => {
    setup({ installed: [localModel("owner/a")], conversations: [conversation(1, "Hello")] }, { app_settings: settings(), system_info: {
      version: "0.1.0", devices: ["cpu"], total_memory: 1, data_dir: "/d", default_data_dir: "/d", settings_file: "/s", hub_cache: "/h",
    } });
    await waitFor(() => expect(chat.props).not.toBeNull());
    await fireEvent.click(screen.getByRole("button", { name: "Models" }));
    expect(await screen.findByRole("heading", { name: "Models", level: 1 })).toBeTruthy();
    expect(screen.getByRole("button", { name: "Models" }).getAttribute("aria-current")).toBe("page");
    await fireEvent.click(screen.getByRole("button", { name: "Settings" }));
    expect(await screen.findByRole("heading", { name: "Settings", level: 1 })).toBeTruthy();
    await fireEvent.click(screen.getByRole("button", { name: "Chat" }));
    await waitFor(() => expect(document.querySelector(".chat-stub")).toBeTruthy());
  });

  it("opens a conversation from the sidebar, and a search hit with its message", async () => {
    setup(
      { installed: [localModel("owner/a")], conversations: [conversation(1, "Hello"), conversation(2, "Other")] },
      {
        search_history: [
          { kind: "message", conversation_id: 1, message_id: 42, title: "Hello", snippet: "hi", highlights: [], score: 1, at: 0 },
        ],
      },
    );
    await waitFor(() => expect(chat.props).not.toBeNull());
    await fireEvent.click(document.querySelectorAll<HTMLButtonElement>(".sidebar li button.open")[0]);
    expect(chat.props!.conversation).toBe(2);
    expect(chat.props!.focusMessage).toBeNull();

    await fireEvent.input(screen.getByRole("combobox", { name: "Search history" }), { target: { value: "hi" } });
    const hit = await waitFor(() => {
      const el = document.querySelector<HTMLElement>(".hit");
      if (!el) throw new Error("no hit yet");
      return el;
    });
    await fireEvent.click(hit);
    await waitFor(() => expect(chat.props!.focusMessage).toBe(42));
    expect(chat.props!.conversation).toBe(1);
  });

  it("focuses the search with Ctrl+K from anywhere", async () => {
    setup({ installed: [localModel("owner/a")] });
    await waitFor(() => expect(chat.props).not.toBeNull());
    await fireEvent.keyDown(window, { key: "k", ctrlKey: true });
    expect(document.activeElement).toBe(screen.getByRole("combobox", { name: "Search history" }));
  });

  it("refreshes the installed models when a download finishes", async () => {
    const { be, setInstalled } = setup({ installed: [localModel("owner/a")] });
    await waitFor(() => expect(picker().options).toHaveLength(1));
    setInstalled([localModel("owner/a"), localModel("owner/new")]);
    await be.emit({ type: "download", id: 1, event: { kind: "finished", snapshot: "/s" } });
    await waitFor(() => expect(picker().options).toHaveLength(2));
  });

  it("falls back on another model when the current one is deleted", async () => {
    let installed = [localModel("owner/a"), localModel("owner/b")];
    setup(
      { settings: settings({ default_model: "owner/a" }) },
      {
        installed_models: () => installed,
        delete_model: () => {
          installed = [localModel("owner/b")];
          return 1000;
        },
      },
    );
    await waitFor(() => expect(picker().value).toBe("owner/a"));
    await fireEvent.click(screen.getByRole("button", { name: "Models" }));
    await fireEvent.click(await screen.findByRole("button", { name: "Delete owner/a" }));
    await fireEvent.click(screen.getByRole("button", { name: "Delete" }));
    await waitFor(() => expect(picker().value).toBe("owner/b"));
    expect(Array.from(picker().options).map((o) => o.value)).toEqual(["owner/b"]);
  });

  it("lets the chat switch the model", async () => {
    setup({ installed: [localModel("owner/a"), localModel("owner/b")] });
    await waitFor(() => expect(chat.props).not.toBeNull());
    (chat.props!.onmodel as (id: string) => void)("owner/b");
    await waitFor(() => expect(picker().value).toBe("owner/b"));
  });

  it("applies the theme from the settings", async () => {
    setup({ settings: settings({ theme: "dark" }), installed: [localModel("owner/a")] });
    await waitFor(() => expect(document.documentElement.dataset.theme).toBe("dark"));
  });
});
