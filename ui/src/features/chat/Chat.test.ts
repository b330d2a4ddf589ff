import { cleanup, fireEvent, render, screen, waitFor, within } from "@testing-library/svelte";
import { emit } from "@tauri-apps/api/event";
import { clearMocks, mockIPC } from "@tauri-apps/api/mocks";
import { afterEach, describe, expect, it, onTestFinished, vi } from "vitest";
import type {
  ConversationView,
  CoreEvent,
  DropEvent,
  ImagePreview,
  LocalModel,
  MessageView,
  ReplyStarted,
} from "../../lib/types";
import Chat from "./Chat.svelte";

// ---- A fake backend -------------------------------------------------------

type Handler = (args: Record<string, unknown>) => unknown;
type Call = { cmd: string; args: Record<string, unknown> };

function backend(handlers: Record<string, Handler>) {
  const calls: Call[] = [];
  mockIPC(
    (cmd, args) => {
      const a = (args ?? {}) as Record<string, unknown>;
      calls.push({ cmd, args: a });
      const handler = handlers[cmd];
      if (!handler) throw { code: "unexpected", message: `no fake for ${cmd}` };
      return handler(a);
    },
    { shouldMockEvents: true },
  );
  return {
    calls,
    of: (cmd: string) => calls.filter((c) => c.cmd === cmd).map((c) => c.args),
  };
}

const core = (e: CoreEvent) => emit("core://event", e);
const drop = (e: DropEvent) => emit("lumen://drop", e);
/** Lets pending promises (listeners being registered, requests) settle. */
const settle = () => new Promise((r) => setTimeout(r, 0));

const NO_STATS = { prompt_tokens: null, completion_tokens: null, ttft_ms: null, decode_tok_s: null };
const DEFAULTS = { temperature: null, top_p: null, top_k: null, max_tokens: null, seed: null };

function msg(
  id: number,
  parent_id: number | null,
  role: "user" | "assistant",
  content: string,
  extra: Partial<MessageView> = {},
): MessageView {
  return {
    id,
    conversation_id: 1,
    parent_id,
    role,
    content,
    status: "complete",
    error: null,
    model: role === "assistant" ? "llama" : null,
    stats: NO_STATS,
    created_at: id * 1000,
    attachments: [],
    ...extra,
  };
}

function view(messages: MessageView[], replying: number | null = null): ConversationView {
  return {
    conversation: {
      id: 1,
      title: "Capitals",
      model: "llama",
      system_prompt: null,
      settings: {},
      created_at: 0,
      updated_at: 0,
      pinned: false,
      archived: false,
    },
    settings: { ...DEFAULTS },
    messages,
    replying,
  };
}

const PREVIEW: ImagePreview = {
  mime: "image/png",
  width: 800,
  height: 600,
  bytes: 1234,
  thumbnail: "data:image/jpeg;base64,AAAA",
};

function localModel(id: string, vision: boolean): LocalModel {
  return { id, path: `/models/${id}`, commit: null, kind: "gguf", gguf_files: [], size: 1, imported: false, vision };
}

function setup(props: { conversation?: number | null; model?: string; focusMessage?: number | null } = {}) {
  const onchange = vi.fn();
  const onmodel = vi.fn();
  const result = render(Chat, {
    conversation: props.conversation ?? null,
    model: props.model ?? "llama",
    focusMessage: props.focusMessage ?? null,
    onchange,
    onmodel,
  });
  return { ...result, onchange, onmodel };
}

const textbox = () => screen.getByRole("textbox", { name: "Message" }) as HTMLTextAreaElement;
const messages = () => Array.from(document.querySelectorAll<HTMLElement>(".message"));
const texts = () => messages().map((m) => (m.querySelector(".markdown, .user-text")?.textContent ?? "").trim());

async function type(text: string) {
  await fireEvent.input(textbox(), { target: { value: text } });
}

function chooseFiles(files: File[]) {
  const input = screen.getByLabelText("Attach image file") as HTMLInputElement;
  Object.defineProperty(input, "files", { value: files, configurable: true });
  return fireEvent.change(input);
}

const png = (name = "chart.png", bytes = [137, 80, 78, 71]) => new File([new Uint8Array(bytes)], name, { type: "image/png" });

afterEach(() => {
  cleanup();
  clearMocks();
  vi.restoreAllMocks();
});

// A conversation with branches: 1 Q ─ 2 A ─ 3 Q2 ─ 4 A2, and 5 (A regenerated later).
const BRANCHED = [
  msg(1, null, "user", "What is the capital of France?"),
  msg(2, 1, "assistant", "Paris."),
  msg(3, 2, "user", "And of Italy?"),
  msg(4, 3, "assistant", "Rome."),
  msg(5, 1, "assistant", "The capital of France is Paris."),
];

// ---- Tests ----------------------------------------------------------------

describe("Chat: sending and streaming", () => {
  it("starts a new conversation, streams the reply into it and shows its speed", async () => {
    const started: ReplyStarted = { conversation_id: 1, user_message_id: 1, reply_message_id: 2 };
    let stored = view([msg(1, null, "user", "Capital of France?"), msg(2, 1, "assistant", "", { status: "streaming" })], 2);
    const be = backend({
      send_message: () => started,
      open_conversation: () => stored,
      stop_reply: () => true,
    });
    const { onchange } = setup();
    await settle();
    expect(screen.getByText("Ask anything")).toBeTruthy();

    await type("  Capital of France?  ");
    await fireEvent.keyDown(textbox(), { key: "Enter" });
    await waitFor(() => expect(be.of("send_message")).toHaveLength(1));
    expect(be.of("send_message")[0]).toEqual({
      request: {
        conversation: null,
        parent: null,
        model: "llama",
        text: "Capital of France?",
        images: [],
        system_prompt: null,
        settings: DEFAULTS,
      },
    });
    await waitFor(() => expect(be.of("open_conversation")).toEqual([{ conversationId: 1 }]));
    expect(onchange).toHaveBeenCalled();
    expect(textbox().value).toBe("");

    // The reply streams in; the Send button is the Stop button meanwhile.
    await core({ type: "reply_started", conversation_id: 1, user_message_id: 1, reply_message_id: 2 });
    await core({ type: "token", conversation_id: 1, message_id: 2, offset: 0, text: "The capital " });
    await core({ type: "token", conversation_id: 1, message_id: 2, offset: 12, text: "is **Paris**." });
    // Another conversation's tokens do not land here.
    await core({ type: "token", conversation_id: 9, message_id: 99, offset: 0, text: "noise" });
    await waitFor(() => expect(texts()).toEqual(["Capital of France?", "The capital is Paris."]));
    expect(document.querySelector(".message.assistant strong")?.textContent).toBe("Paris");
    expect(document.querySelector(".message.assistant")?.getAttribute("data-status")).toBe("streaming");
    expect(screen.getByRole("button", { name: "Stop reply" })).toBeTruthy();
    expect(screen.queryByRole("button", { name: "Send" })).toBeNull();

    // Finished: the stored reply with its statistics.
    const stats = { prompt_tokens: 12, completion_tokens: 20, ttft_ms: 250, decode_tok_s: 31.4 };
    stored = view([msg(1, null, "user", "Capital of France?"), msg(2, 1, "assistant", "The capital is **Paris**.", { stats })]);
    onchange.mockClear();
    await core({ type: "reply_finished", conversation_id: 1, message_id: 2, stats, stop_reason: "eos" });
    await waitFor(() => expect(document.querySelector(".message.assistant .stats")?.textContent).toContain("31.4 tok/s"));
    expect(document.querySelector(".message.assistant .stats")?.textContent).toMatch(/31\.4 tok\/s · first token 0\.25 s/);
    expect(document.querySelector(".message.assistant")?.getAttribute("data-status")).toBe("complete");
    expect(onchange).toHaveBeenCalled();
    expect(screen.getByRole("button", { name: "Send" })).toBeTruthy();
    expect(be.of("open_conversation").length).toBeGreaterThanOrEqual(2);
  });

  it("re-renders only the message being written while tokens arrive", async () => {
    backend({
      open_conversation: () =>
        view([...BRANCHED.slice(0, 4), msg(6, 4, "user", "And Spain?"), msg(7, 6, "assistant", "", { status: "streaming" })], 7),
    });
    setup({ conversation: 1 });
    await waitFor(() => expect(messages()).toHaveLength(6));
    await settle();
    const earlier = messages().slice(0, 5);
    const observer = new MutationObserver(() => {});
    for (const el of earlier) observer.observe(el, { subtree: true, childList: true, characterData: true, attributes: true });
    let offset = 0;
    for (const piece of ["Ma", "drid", " is", " the", " capital."]) {
      await core({ type: "token", conversation_id: 1, message_id: 7, offset, text: piece });
      offset += piece.length;
    }
    await waitFor(() => expect(texts()[5]).toBe("Madrid is the capital."));
    expect(observer.takeRecords()).toEqual([]);
    observer.disconnect();
    expect(messages().slice(0, 5)).toEqual(earlier);
  });

  it("joins a reply that was already being written when the conversation opened", async () => {
    backend({
      open_conversation: () => view([msg(1, null, "user", "Hi"), msg(2, 1, "assistant", "Hello the", { status: "streaming" })], 2),
    });
    setup({ conversation: 1 });
    await waitFor(() => expect(texts()[1]).toBe("Hello the"));
    await settle();
    await core({ type: "token", conversation_id: 1, message_id: 2, offset: 9, text: "re!" });
    await waitFor(() => expect(texts()[1]).toBe("Hello there!"));
  });

  it("shows the model loading while a reply has no text yet", async () => {
    backend({ open_conversation: () => view([msg(1, null, "user", "Hi"), msg(2, 1, "assistant", "", { status: "streaming" })], 2) });
    setup({ conversation: 1 });
    await waitFor(() => expect(messages()).toHaveLength(2));
    await settle();
    // Another conversation's model load is not shown here.
    await core({ type: "model_loading", conversation_id: 9, model: "/models/Other.gguf", done: 10, total: 100 });
    await core({ type: "model_loading", conversation_id: 1, model: "/models/Llama-3.2-3B.gguf", done: 42, total: 100 });
    await waitFor(() => expect(screen.getByText("Loading Llama-3.2-3B.gguf… 42%")).toBeTruthy());
    expect(screen.queryByText(/Other\.gguf/)).toBeNull();
    await core({ type: "model_loading", conversation_id: 9, model: "/models/Other.gguf", done: 20, total: 100 });
    expect(screen.getByText("Loading Llama-3.2-3B.gguf… 42%")).toBeTruthy();
    await core({ type: "token", conversation_id: 1, message_id: 2, offset: 0, text: "Hey" });
    await waitFor(() => expect(screen.queryByText(/Loading/)).toBeNull());
  });

  it("shows a failed reply's error on the message", async () => {
    let stored = view([msg(1, null, "user", "Hi"), msg(2, 1, "assistant", "", { status: "streaming" })], 2);
    backend({ open_conversation: () => stored });
    const { onchange } = setup({ conversation: 1 });
    await waitFor(() => expect(messages()).toHaveLength(2));
    await settle();
    stored = view([msg(1, null, "user", "Hi"), msg(2, 1, "assistant", "", { status: "error", error: "out of memory" })]);
    await core({
      type: "reply_failed",
      conversation_id: 1,
      message_id: 2,
      error: { code: "engine", message: "out of memory" },
    });
    await waitFor(() => expect(document.querySelector(".message.assistant")?.getAttribute("data-status")).toBe("error"));
    expect(within(document.querySelector<HTMLElement>(".message.assistant")!).getByText("out of memory")).toBeTruthy();
    expect(onchange).toHaveBeenCalled();
    expect(screen.getByRole("button", { name: "Send" })).toBeTruthy();
  });

  it("keeps the draft and shows other send errors", async () => {
    backend({ send_message: () => Promise.reject({ code: "model_not_found", message: "`llama` is not installed" }) });
    setup();
    await settle();
    await type("Hello");
    await fireEvent.click(screen.getByRole("button", { name: "Send" }));
    expect((await screen.findByRole("alert")).textContent).toContain("`llama` is not installed");
    expect(textbox().value).toBe("Hello");
  });

  it("Shift+Enter does not send; nothing is sent without a model", async () => {
    const be = backend({});
    setup({ model: "" });
    await settle();
    await type("Hello");
    await fireEvent.keyDown(textbox(), { key: "Enter", shiftKey: true });
    await fireEvent.keyDown(textbox(), { key: "Enter" });
    await settle();
    expect(be.of("send_message")).toEqual([]);
    expect((screen.getByRole("button", { name: "Send" }) as HTMLButtonElement).disabled).toBe(true);
    expect(screen.getByText(/Choose a model/)).toBeTruthy();
  });
});

describe("Chat: stop, regenerate, edit", () => {
  it("stops the reply with the Stop button and with Esc", async () => {
    const be = backend({
      open_conversation: () => view([msg(1, null, "user", "Hi"), msg(2, 1, "assistant", "Hel", { status: "streaming" })], 2),
      stop_reply: () => true,
    });
    setup({ conversation: 1 });
    await fireEvent.click(await screen.findByRole("button", { name: "Stop reply" }));
    expect(be.of("stop_reply")).toEqual([{ conversationId: 1 }]);
    await fireEvent.keyDown(textbox(), { key: "Escape" });
    expect(be.of("stop_reply")).toEqual([{ conversationId: 1 }, { conversationId: 1 }]);
    // Esc in a field outside the chat (the sidebar's search) is left to it.
    const search = document.body.appendChild(document.createElement("input"));
    await fireEvent.keyDown(search, { key: "Escape" });
    expect(be.of("stop_reply")).toHaveLength(2);
    search.remove();
  });

  it("regenerates a reply as a new branch and shows it", async () => {
    let stored = view(BRANCHED.slice(0, 4));
    const be = backend({
      open_conversation: () => stored,
      regenerate: () => ({ conversation_id: 1, user_message_id: 3, reply_message_id: 6 }),
    });
    setup({ conversation: 1 });
    await waitFor(() => expect(texts()).toEqual(["What is the capital of France?", "Paris.", "And of Italy?", "Rome."]));
    const buttons = screen.getAllByRole("button", { name: "Regenerate reply" });
    expect(buttons).toHaveLength(2);
    stored = view([...BRANCHED.slice(0, 4), msg(6, 3, "assistant", "", { status: "streaming" })], 6);
    await fireEvent.click(buttons[1]);
    await waitFor(() => expect(be.of("regenerate")).toEqual([{ request: { reply: 4, model: "llama" } }]));
    // The new reply is shown (2nd of 2 versions), being written.
    await waitFor(() => expect(messages().map((m) => m.dataset.messageId)).toEqual(["1", "2", "3", "6"]));
    expect(screen.getByLabelText("Version 2 of 2")).toBeTruthy();
    expect(screen.getByRole("button", { name: "Stop reply" })).toBeTruthy();
  });

  it("edits a question inline and sends it as a new version", async () => {
    let stored = view(BRANCHED.slice(0, 4));
    const be = backend({
      open_conversation: () => stored,
      edit_message: () => ({ conversation_id: 1, user_message_id: 6, reply_message_id: 7 }),
    });
    setup({ conversation: 1, model: "llama-big" });
    await waitFor(() => expect(messages()).toHaveLength(4));
    await fireEvent.click(screen.getAllByRole("button", { name: "Edit message" })[1]);
    const editor = screen.getByRole("textbox", { name: "Edit message" }) as HTMLTextAreaElement;
    expect(editor.value).toBe("And of Italy?");
    // Cancel leaves everything as it was.
    await fireEvent.click(screen.getByRole("button", { name: "Cancel" }));
    expect(screen.queryByRole("textbox", { name: "Edit message" })).toBeNull();
    await fireEvent.click(screen.getAllByRole("button", { name: "Edit message" })[1]);
    await fireEvent.input(screen.getByRole("textbox", { name: "Edit message" }), { target: { value: "And of Spain?" } });
    stored = view([...BRANCHED.slice(0, 4), msg(6, 2, "user", "And of Spain?"), msg(7, 6, "assistant", "", { status: "streaming" })], 7);
    await fireEvent.click(screen.getByRole("button", { name: "Save & send" }));
    await waitFor(() =>
      expect(be.of("edit_message")).toEqual([{ request: { message: 3, text: "And of Spain?", model: "llama-big" } }]),
    );
    await waitFor(() => expect(texts().slice(0, 3)).toEqual(["What is the capital of France?", "Paris.", "And of Spain?"]));
    expect(screen.getByLabelText("Version 2 of 2")).toBeTruthy();
  });
});

describe("Chat: branches", () => {
  it("shows the newest thread, switches versions and sends after the thread on screen", async () => {
    const be = backend({
      open_conversation: () => view(BRANCHED),
      send_message: () => ({ conversation_id: 1, user_message_id: 8, reply_message_id: 9 }),
    });
    setup({ conversation: 1 });
    // The newest message (5, a regenerated answer) and its thread.
    await waitFor(() => expect(texts()).toEqual(["What is the capital of France?", "The capital of France is Paris."]));
    expect(screen.getByLabelText("Version 2 of 2")).toBeTruthy();

    await fireEvent.click(screen.getByRole("button", { name: "Previous version" }));
    expect(texts()).toEqual(["What is the capital of France?", "Paris.", "And of Italy?", "Rome."]);
    expect(screen.getByLabelText("Version 1 of 2")).toBeTruthy();

    await type("And of Spain?");
    await fireEvent.click(screen.getByRole("button", { name: "Send" }));
    await waitFor(() => expect(be.of("send_message")).toHaveLength(1));
    expect(be.of("send_message")[0]).toMatchObject({ request: { conversation: 1, parent: 4, text: "And of Spain?" } });

    // Back to the other version: the next message follows it.
    await fireEvent.click(screen.getByRole("button", { name: "Next version" }));
    expect(texts()).toEqual(["What is the capital of France?", "The capital of France is Paris."]);
  });

  it("shows the branch of a search result, scrolled to and marked", async () => {
    const scrolled = vi.fn();
    Element.prototype.scrollIntoView = scrolled;
    onTestFinished(() => {
      delete (Element.prototype as Partial<Element>).scrollIntoView;
    });
    backend({ open_conversation: () => view(BRANCHED) });
    setup({ conversation: 1, focusMessage: 3 });
    await waitFor(() => expect(texts()).toEqual(["What is the capital of France?", "Paris.", "And of Italy?", "Rome."]));
    const hit = document.querySelector<HTMLElement>('[data-message-id="3"]')!;
    expect(hit.classList.contains("highlighted")).toBe(true);
    await waitFor(() => expect(scrolled).toHaveBeenCalled());
    expect(scrolled.mock.contexts[0]).toBe(hit);
  });
});

describe("Chat: long conversations", () => {
  /** 60 exchanges: 120 messages, ids 1..120, each following the previous. */
  const LONG = Array.from({ length: 120 }, (_, i) =>
    msg(i + 1, i === 0 ? null : i, i % 2 === 0 ? "user" : "assistant", `message ${i + 1}`),
  );

  it("opens with the latest messages and adds earlier ones a window at a time", async () => {
    backend({ open_conversation: () => view(LONG) });
    setup({ conversation: 1 });
    await waitFor(() => expect(messages()).toHaveLength(40));
    expect(texts()[0]).toBe("message 81");
    expect(texts()[39]).toBe("message 120");
    await fireEvent.click(screen.getByRole("button", { name: "Show earlier messages (80)" }));
    await waitFor(() => expect(messages()).toHaveLength(80));
    expect(texts()[0]).toBe("message 41");
    await fireEvent.click(screen.getByRole("button", { name: "Show earlier messages (40)" }));
    await waitFor(() => expect(messages()).toHaveLength(120));
    expect(screen.queryByRole("button", { name: /Show earlier messages/ })).toBeNull();
  });

  it("draws a search result's message even when it is early in the conversation", async () => {
    Element.prototype.scrollIntoView = vi.fn();
    onTestFinished(() => {
      delete (Element.prototype as Partial<Element>).scrollIntoView;
    });
    backend({ open_conversation: () => view(LONG) });
    setup({ conversation: 1, focusMessage: 5 });
    await waitFor(() => expect(document.querySelector('[data-message-id="5"]')).not.toBeNull());
    expect(document.querySelector<HTMLElement>('[data-message-id="5"]')!.classList.contains("highlighted")).toBe(true);
  });
});

describe("Chat: images", () => {
  it("checks a chosen file at once, shows its thumbnail and sends it as bytes", async () => {
    const be = backend({
      preview_image: () => PREVIEW,
      send_message: () => ({ conversation_id: 1, user_message_id: 1, reply_message_id: 2 }),
      open_conversation: () => view([msg(1, null, "user", "What does it show?")]),
    });
    setup();
    await settle();
    await chooseFiles([png()]);
    await waitFor(() => expect(document.querySelector(".thumb img")).toBeTruthy());
    expect(be.of("preview_image")).toEqual([{ image: { kind: "bytes", base64: "iVBORw==" } }]);
    expect(document.querySelector<HTMLImageElement>(".thumb img")!.src).toBe(PREVIEW.thumbnail);

    // Removing it, adding it again.
    await fireEvent.click(screen.getByRole("button", { name: "Remove chart.png" }));
    expect(document.querySelector(".thumb")).toBeNull();
    await chooseFiles([png()]);
    await waitFor(() => expect(document.querySelector(".thumb img")).toBeTruthy());

    await type("What does it show?");
    await fireEvent.click(screen.getByRole("button", { name: "Send" }));
    await waitFor(() => expect(be.of("send_message")).toHaveLength(1));
    expect(be.of("send_message")[0]).toMatchObject({
      request: { text: "What does it show?", images: [{ kind: "bytes", base64: "iVBORw==" }] },
    });
    await waitFor(() => expect(document.querySelector(".thumb")).toBeNull());
  });

  it("shows a clear error for a bad file and does not send it", async () => {
    const be = backend({
      preview_image: (args) => {
        const image = args.image as { base64: string };
        if (image.base64 === "iVBORw==") return PREVIEW;
        return Promise.reject({ code: "bad_image", message: "the pasted image is not a PNG, JPEG, WebP, GIF or BMP image" });
      },
      send_message: () => ({ conversation_id: 1, user_message_id: 1, reply_message_id: 2 }),
      open_conversation: () => view([]),
    });
    setup();
    await settle();
    const huge = png("huge.png");
    Object.defineProperty(huge, "size", { value: 70_000_000 });
    await chooseFiles([png("notes.png", [1, 2, 3]), png("good.png"), huge]);
    await waitFor(() => expect(document.querySelectorAll(".thumb-error")).toHaveLength(2));
    const errors = Array.from(document.querySelectorAll(".thumb-error")).map((e) => e.textContent);
    expect(errors).toContainEqual(expect.stringContaining("notes.png: the pasted image is not a PNG"));
    expect(errors).toContainEqual(expect.stringContaining("huge.png is 70.0 MB; images up to 67.1 MB can be attached"));
    // The too-large file was never read nor sent for checking.
    await waitFor(() => expect(be.of("preview_image")).toHaveLength(2));
    await waitFor(() => expect(document.querySelectorAll(".thumb img")).toHaveLength(1));

    await fireEvent.click(screen.getByRole("button", { name: "Send" }));
    await waitFor(() => expect(be.of("send_message")).toHaveLength(1));
    expect((be.of("send_message")[0].request as { images: unknown[] }).images).toEqual([{ kind: "bytes", base64: "iVBORw==" }]);
  });

  it("attaches through the native picker, falling back to the file input", async () => {
    let native = true;
    const be = backend({
      pick_images: () => (native ? ["/home/me/invoice.jpg"] : Promise.reject({ code: "unsupported", message: "no dialog" })),
      preview_image: () => PREVIEW,
    });
    const click = vi.spyOn(HTMLInputElement.prototype, "click").mockImplementation(() => {});
    setup();
    await settle();
    await fireEvent.click(screen.getByRole("button", { name: "Attach images" }));
    await waitFor(() => expect(be.of("preview_image")).toEqual([{ image: { kind: "path", path: "/home/me/invoice.jpg" } }]));
    await waitFor(() => expect(screen.getByAltText("invoice.jpg")).toBeTruthy());
    expect(click).not.toHaveBeenCalled();
    native = false;
    await fireEvent.click(screen.getByRole("button", { name: "Attach images" }));
    await waitFor(() => expect(click).toHaveBeenCalled());
  });

  it("pastes an image from the clipboard", async () => {
    const be = backend({ preview_image: () => PREVIEW });
    setup();
    await settle();
    const file = png("image.png");
    await fireEvent.paste(textbox(), {
      clipboardData: {
        items: [{ kind: "file", type: "image/png", getAsFile: () => file }],
        files: [file],
        getData: () => "",
      },
    });
    await waitFor(() => expect(be.of("preview_image")).toEqual([{ image: { kind: "bytes", base64: "iVBORw==" } }]));
    await waitFor(() => expect(screen.getByAltText("Pasted image")).toBeTruthy());
  });

  it("shows where dropped images go, then attaches them by path", async () => {
    const be = backend({
      preview_image: () => PREVIEW,
      send_message: () => ({ conversation_id: 1, user_message_id: 1, reply_message_id: 2 }),
      open_conversation: () => view([]),
    });
    setup();
    await settle();
    await drop({ kind: "enter", paths: ["/tmp/a.png", "/tmp/b.webp"] });
    expect(await screen.findByText("Drop to attach 2 images")).toBeTruthy();
    await drop({ kind: "leave" });
    await waitFor(() => expect(screen.queryByText("Drop to attach 2 images")).toBeNull());
    await drop({ kind: "enter", paths: ["/tmp/report.pdf"] });
    expect(await screen.findByText("Only images can be attached")).toBeTruthy();
    await drop({ kind: "drop", paths: ["/tmp/a.png"] });
    await waitFor(() => expect(screen.queryByText("Only images can be attached")).toBeNull());
    await waitFor(() => expect(document.querySelector(".thumb img")).toBeTruthy());
    await fireEvent.click(screen.getByRole("button", { name: "Send" }));
    await waitFor(() => expect(be.of("send_message")).toHaveLength(1));
    expect(be.of("send_message")[0]).toMatchObject({ request: { text: "", images: [{ kind: "path", path: "/tmp/a.png" }] } });
  });

  it("offers the installed vision model when a text-only model is asked about an image, keeping the message", async () => {
    const be = backend({
      preview_image: () => PREVIEW,
      send_message: (args) => {
        const request = args.request as { model: string };
        if (request.model === "llama-text")
          return Promise.reject({ code: "needs_vision", message: "`llama-text` reads text only: switch to llama-vision" });
        return { conversation_id: 1, user_message_id: 1, reply_message_id: 2 };
      },
      installed_models: () => [localModel("llama-text", false), localModel("llama-vision", true)],
      open_conversation: () => view([msg(1, null, "user", "Total of this invoice?")]),
    });
    const { onmodel } = setup({ model: "llama-text" });
    await settle();
    await chooseFiles([png("invoice.png")]);
    await waitFor(() => expect(document.querySelector(".thumb img")).toBeTruthy());
    await type("Total of this invoice?");
    await fireEvent.click(screen.getByRole("button", { name: "Send" }));

    const offer = await screen.findByRole("button", { name: "Switch to llama-vision" });
    expect(screen.getByRole("alert").textContent).toContain("llama-text reads text only.");
    // Nothing was dropped.
    expect(textbox().value).toBe("Total of this invoice?");
    expect(document.querySelectorAll(".thumb img")).toHaveLength(1);
    expect(screen.queryByRole("button", { name: "Switch to llama-text" })).toBeNull();

    await fireEvent.click(offer);
    expect(onmodel).toHaveBeenCalledWith("llama-vision");
    await waitFor(() => expect(be.of("send_message")).toHaveLength(2));
    expect(be.of("send_message")[1]).toMatchObject({
      request: { model: "llama-vision", text: "Total of this invoice?", images: [{ kind: "bytes", base64: "iVBORw==" }] },
    });
    await waitFor(() => expect(textbox().value).toBe(""));
  });
});

describe("Chat: conversation settings", () => {
  it("checks the values and sends them with a new chat", async () => {
    const created = view([msg(1, null, "user", "Bonjour")]);
    created.settings = { ...DEFAULTS, temperature: 0.4, seed: 7 };
    created.conversation.system_prompt = "Answer in French.";
    const be = backend({
      send_message: () => ({ conversation_id: 1, user_message_id: 1, reply_message_id: 2 }),
      open_conversation: () => created,
    });
    setup();
    await settle();
    await fireEvent.click(screen.getByRole("button", { name: "Conversation settings" }));
    await fireEvent.input(screen.getByLabelText("System prompt"), { target: { value: "Answer in French." } });
    const temperature = screen.getByLabelText("Temperature") as HTMLInputElement;
    await fireEvent.input(temperature, { target: { value: "3" } });
    expect(screen.getByText("Temperature must be a number from 0 to 2")).toBeTruthy();
    expect(temperature.getAttribute("aria-invalid")).toBe("true");
    await fireEvent.input(temperature, { target: { value: "0.4" } });
    expect(screen.queryByText("Temperature must be a number from 0 to 2")).toBeNull();
    await fireEvent.input(screen.getByLabelText("Seed"), { target: { value: "7" } });

    await type("Bonjour");
    await fireEvent.click(screen.getByRole("button", { name: "Send" }));
    await waitFor(() => expect(be.of("send_message")).toHaveLength(1));
    expect(be.of("send_message")[0]).toMatchObject({
      request: { system_prompt: "Answer in French.", settings: { ...DEFAULTS, temperature: 0.4, seed: 7 } },
    });
    // The panel now shows the new conversation's settings, saved with Save.
    await waitFor(() => expect(screen.getByRole("button", { name: "Save" })).toBeTruthy());
    expect((screen.getByLabelText("Temperature") as HTMLInputElement).value).toBe("0.4");
    expect((screen.getByLabelText("System prompt") as HTMLTextAreaElement).value).toBe("Answer in French.");
  });

  it("saves an existing conversation's settings", async () => {
    const be = backend({ open_conversation: () => view(BRANCHED.slice(0, 2)), set_conversation_settings: () => null });
    setup({ conversation: 1 });
    await waitFor(() => expect(messages()).toHaveLength(2));
    await fireEvent.click(screen.getByRole("button", { name: "Conversation settings" }));
    const save = screen.getByRole("button", { name: "Save" }) as HTMLButtonElement;
    expect(save.disabled).toBe(true);
    await fireEvent.input(screen.getByLabelText("Top k"), { target: { value: "4.5" } });
    expect(screen.getByText(/Top k must be a whole number/)).toBeTruthy();
    expect(save.disabled).toBe(true);
    await fireEvent.input(screen.getByLabelText("Top k"), { target: { value: "40" } });
    await fireEvent.click(save);
    await waitFor(() => expect(be.of("set_conversation_settings")).toHaveLength(1));
    expect(be.of("set_conversation_settings")[0]).toEqual({
      conversationId: 1,
      systemPrompt: null,
      settings: { ...DEFAULTS, top_k: 40 },
    });
    expect(await screen.findByText(/Saved/)).toBeTruthy();
  });
});
