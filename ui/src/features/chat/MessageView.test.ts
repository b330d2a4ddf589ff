import { render, screen } from "@testing-library/svelte";
import { describe, expect, it } from "vitest";
import MessageView from "./MessageView.svelte";
import type { Message } from "../../lib/types";

function message(content: string, extra: Partial<Message> = {}): Message {
  return {
    id: 1,
    conversation_id: 1,
    parent_id: null,
    role: "assistant",
    content,
    status: "complete",
    error: null,
    model: null,
    stats: { prompt_tokens: 5, completion_tokens: 20, ttft_ms: 250, decode_tok_s: 31.4 },
    created_at: 0,
    ...extra,
  };
}

describe("MessageView", () => {
  it("renders code with a copy button and the reply's speed", () => {
    render(MessageView, { message: message("Try:\n\n```rust\nfn main() {}\n```") });
    expect(screen.getByRole("button", { name: "Copy code" })).toBeTruthy();
    expect(screen.getByText(/31\.4 tok\/s/)).toBeTruthy();
  });

  it("never renders markup from the model", () => {
    const { container } = render(MessageView, { message: message('<img src="https://evil.example/x.png"><script>alert(1)</script>') });
    expect(container.querySelector("img")).toBeNull();
    expect(container.querySelector("script")).toBeNull();
  });
});
