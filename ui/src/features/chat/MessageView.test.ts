import { cleanup, fireEvent, render, screen } from "@testing-library/svelte";
import { clearMocks, mockIPC } from "@tauri-apps/api/mocks";
import { afterEach, describe, expect, it, vi } from "vitest";
import MessageView from "./MessageView.svelte";
import type { MessageView as MessageData } from "../../lib/types";

function message(content: string, extra: Partial<MessageData> = {}): MessageData {
  return {
    id: 1,
    conversation_id: 1,
    parent_id: null,
    role: "assistant",
    content,
    status: "complete",
    error: null,
    model: "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    stats: { prompt_tokens: 5, completion_tokens: 20, ttft_ms: 250, decode_tok_s: 31.4 },
    created_at: 0,
    attachments: [],
    ...extra,
  };
}

afterEach(() => {
  cleanup();
  vi.restoreAllMocks();
});

describe("MessageView", () => {
  it("renders highlighted code with its language and a copy button, and the reply's speed", async () => {
    const writeText = vi.fn(() => Promise.resolve());
    Object.defineProperty(navigator, "clipboard", { value: { writeText }, configurable: true });
    const { container } = render(MessageView, { message: message("Try:\n\n```rust\nfn main() {}\n```") });
    expect(container.querySelector(".code .lang")?.textContent).toBe("rust");
    expect(container.querySelector('.code code .hljs-keyword')?.textContent).toBe("fn");
    await fireEvent.click(screen.getByRole("button", { name: "Copy code" }));
    expect(writeText).toHaveBeenCalledWith("fn main() {}");
    expect(await screen.findByText("Copied")).toBeTruthy();
    expect(container.querySelector(".message .stats")?.textContent).toBe("31.4 tok/s · first token 0.25 s · 20 tokens");
    expect(screen.getByText("SmolLM2-135M-Instruct.Q4_1.gguf")).toBeTruthy();
    await fireEvent.click(screen.getByRole("button", { name: "Copy message" }));
    expect(writeText).toHaveBeenLastCalledWith("Try:\n\n```rust\nfn main() {}\n```");
  });

  it("never renders markup from the model", () => {
    const hostile = [
      '<img src="https://evil.example/x.png"><script>alert(1)</script>',
      "[x](javascript:alert(1)) ![y](https://evil.example/t.png)",
      "```html\n<img src=x onerror=alert(1)><script>alert(2)</script>\n```",
      "```js\n</code></pre><img src=x onerror=alert(1)>", // unterminated, as while streaming
    ].join("\n\n");
    const { container } = render(MessageView, { message: message(hostile), streaming: true, content: hostile });
    expect(container.querySelector("img, script, a, iframe")).toBeNull();
    for (const el of Array.from(container.querySelectorAll("*"))) {
      for (const attr of Array.from(el.attributes)) expect(attr.name).not.toMatch(/^on|^href$|^src$/);
    }
    expect(container.textContent).toContain("<script>alert(2)</script>");
  });

  it("shows a user's images and text as typed (no markdown)", () => {
    const { container } = render(MessageView, {
      message: message("**not bold** <b>x</b>", {
        role: "user",
        attachments: [{ id: 3, mime: "image/png", width: 800, height: 600, bytes: 1000, thumbnail: "data:image/jpeg;base64,AA" }],
      }),
    });
    expect(container.querySelector(".message.user .attachment img")?.getAttribute("src")).toBe("data:image/jpeg;base64,AA");
    expect(container.querySelector(".user-text")?.textContent).toBe("**not bold** <b>x</b>");
    expect(container.querySelector("strong, b")).toBeNull();
    expect(container.querySelector(".stats")).toBeNull();
  });

  it("switches versions and shows stopped and failed replies", async () => {
    const onbranch = vi.fn();
    const { rerender } = render(MessageView, {
      message: message("Paris.", { status: "cancelled", stats: { prompt_tokens: null, completion_tokens: null, ttft_ms: null, decode_tok_s: null } }),
      branch: { index: 0, total: 3 },
      onbranch,
    });
    expect(screen.getByText("Stopped.")).toBeTruthy();
    expect(screen.getByLabelText("Version 1 of 3").textContent).toBe("1/3");
    expect((screen.getByRole("button", { name: "Previous version" }) as HTMLButtonElement).disabled).toBe(true);
    await fireEvent.click(screen.getByRole("button", { name: "Next version" }));
    expect(onbranch).toHaveBeenCalledWith(1);
    await rerender({ message: message("", { status: "error", error: "the model file is corrupt" }), branch: null });
    expect(screen.getByText("the model file is corrupt")).toBeTruthy();
    expect(screen.queryByRole("group", { name: "Versions" })).toBeNull();
  });

  it("keeps the editor open when sending the edit fails, and Esc cancels it", async () => {
    let ok = false;
    const onedit = vi.fn(async () => ok);
    const esc = vi.fn();
    const listener = (e: KeyboardEvent) => e.key === "Escape" && esc();
    window.addEventListener("keydown", listener);
    render(MessageView, { message: message("Old question", { role: "user" }), onedit });
    await fireEvent.click(screen.getByRole("button", { name: "Edit message" }));
    const editor = screen.getByRole("textbox", { name: "Edit message" });
    await fireEvent.input(editor, { target: { value: "  New question " } });
    await fireEvent.click(screen.getByRole("button", { name: "Save & send" }));
    expect(onedit).toHaveBeenCalledWith("New question");
    expect(screen.getByRole("textbox", { name: "Edit message" })).toBeTruthy();
    ok = true;
    await fireEvent.keyDown(editor, { key: "Enter", ctrlKey: true });
    expect(onedit).toHaveBeenCalledTimes(2);
    expect(screen.queryByRole("textbox", { name: "Edit message" })).toBeNull();
    await fireEvent.click(screen.getByRole("button", { name: "Edit message" }));
    await fireEvent.keyDown(screen.getByRole("textbox", { name: "Edit message" }), { key: "Escape" });
    expect(screen.queryByRole("textbox", { name: "Edit message" })).toBeNull();
    // The Esc went no further (it would stop a reply).
    expect(esc).not.toHaveBeenCalled();
    window.removeEventListener("keydown", listener);
  });

  it("shows the model loading, then a typing indicator, while a reply has no text", async () => {
    const { rerender } = render(MessageView, {
      message: message("", { status: "streaming" }),
      streaming: true,
      content: "",
      status: "Loading model… 40%",
    });
    expect(screen.getByText("Loading model… 40%")).toBeTruthy();
    await rerender({ status: "" });
    expect(screen.getByLabelText("Writing")).toBeTruthy();
    expect(screen.queryByRole("button", { name: "Regenerate reply" })).toBeNull();
  });
  it("opens a web address from a reply through Rust, by click or Enter", async () => {
    const opened: unknown[] = [];
    mockIPC((cmd, args) => {
      if (cmd === "open_link") opened.push((args as { url: string }).url);
      return true;
    });
    const { container } = render(MessageView, { message: message("See [the docs](https://example.com/docs).") });
    const link = container.querySelector<HTMLElement>('[role="link"]');
    expect(link?.textContent).toBe("(https://example.com/docs)");
    await fireEvent.click(link!);
    await fireEvent.keyDown(link!, { key: "Enter" });
    // Clicking elsewhere in the reply opens nothing.
    await fireEvent.click(container.querySelector(".markdown p")!);
    await Promise.resolve();
    expect(opened).toEqual(["https://example.com/docs", "https://example.com/docs"]);
    clearMocks();
  });
});
