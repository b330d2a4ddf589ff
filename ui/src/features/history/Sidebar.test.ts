import { cleanup, fireEvent, render, screen, waitFor, within } from "@testing-library/svelte";
import { afterEach, describe, expect, it, vi } from "vitest";
import Sidebar from "./Sidebar.svelte";
import { clearMocks, conversation, deferred, fakeBackend } from "../models/testing";
import type { SearchHit } from "../../lib/types";

afterEach(() => {
  cleanup();
  clearMocks();
});

const enc = new TextEncoder();
/** A hit whose highlights mark `words` in `snippet` (UTF-8 byte ranges, as Rust sends them). */
function hit(conversation_id: number, snippet: string, words: string[], extra: Partial<SearchHit> = {}): SearchHit {
  return {
    kind: "message",
    conversation_id,
    message_id: conversation_id * 10,
    title: `Conversation ${conversation_id}`,
    snippet,
    highlights: words.map((w) => {
      const start = enc.encode(snippet.slice(0, snippet.indexOf(w))).length;
      return [start, start + enc.encode(w).length] as [number, number];
    }),
    score: 1,
    at: Date.now(),
    ...extra,
  };
}

const conversations = [
  conversation(1, "Old question"),
  conversation(2, "Pinned one", { pinned: true }),
  conversation(3, "Newest question", { model: "owner/seen-in-history" }),
];

function setup(handlers: Record<string, unknown> = {}, props: Partial<{ current: number | null }> = {}) {
  const be = fakeBackend({
    search_history: [],
    rename_conversation: null,
    set_pinned: null,
    delete_conversation: null,
    ...handlers,
  });
  const onopen = vi.fn();
  const onnew = vi.fn();
  const onchange = vi.fn();
  render(Sidebar, {
    conversations,
    current: props.current ?? null,
    models: ["owner/installed"],
    onopen,
    onnew,
    onchange,
  });
  return { be, onopen, onnew, onchange };
}

const titles = () =>
  Array.from(document.querySelectorAll(".sidebar li .conversation-title")).map((e) => e.textContent);
const search = () => screen.getByRole("combobox", { name: "Search history" }) as HTMLInputElement;

describe("Sidebar: the list", () => {
  it("shows pinned conversations first, then the newest", () => {
    setup({}, { current: 3 });
    expect(titles()).toEqual(["Pinned one", "Newest question", "Old question"]);
    const open = document.querySelectorAll<HTMLButtonElement>(".sidebar li button.open");
    expect(open).toHaveLength(3);
    expect(open[1].getAttribute("aria-current")).toBe("page");
    expect(open[0].getAttribute("aria-current")).toBeNull();
  });

  it("opens a conversation and starts a new chat", async () => {
    const { onopen, onnew } = setup();
    await fireEvent.click(document.querySelectorAll<HTMLButtonElement>(".sidebar li button.open")[2]);
    expect(onopen).toHaveBeenCalledWith(1, null);
    await fireEvent.click(screen.getByRole("button", { name: "New chat" }));
    expect(onnew).toHaveBeenCalled();
  });

  it("pins and unpins", async () => {
    const { be, onchange } = setup();
    await fireEvent.click(screen.getByRole("button", { name: "Pin “Old question”" }));
    await waitFor(() => expect(onchange).toHaveBeenCalledTimes(1));
    await fireEvent.click(screen.getByRole("button", { name: "Unpin “Pinned one”" }));
    await waitFor(() => expect(onchange).toHaveBeenCalledTimes(2));
    expect(be.of("set_pinned").map((c) => c.args)).toEqual([
      { conversationId: 1, pinned: true },
      { conversationId: 2, pinned: false },
    ]);
  });

  it("renames inline: Enter saves, Escape cancels", async () => {
    const { be, onchange } = setup();
    await fireEvent.click(screen.getByRole("button", { name: "Rename “Old question”" }));
    let field = screen.getByRole("textbox", { name: "New title for “Old question”" }) as HTMLInputElement;
    expect(document.activeElement).toBe(field);
    await fireEvent.input(field, { target: { value: "Not saved" } });
    await fireEvent.keyDown(field, { key: "Escape" });
    expect(screen.queryByRole("textbox", { name: /New title/ })).toBeNull();
    expect(be.of("rename_conversation")).toHaveLength(0);

    await fireEvent.click(screen.getByRole("button", { name: "Rename “Old question”" }));
    field = screen.getByRole("textbox", { name: "New title for “Old question”" }) as HTMLInputElement;
    expect(field.value).toBe("Old question");
    await fireEvent.input(field, { target: { value: "  Capital cities  " } });
    await fireEvent.keyDown(field, { key: "Enter" });
    await waitFor(() => expect(onchange).toHaveBeenCalled());
    expect(be.of("rename_conversation").map((c) => c.args)).toEqual([{ conversationId: 1, title: "Capital cities" }]);
  });

  it("shows a rename error inline", async () => {
    setup({ rename_conversation: () => Promise.reject({ code: "not_found", message: "no such conversation" }) });
    await fireEvent.click(screen.getByRole("button", { name: "Rename “Old question”" }));
    const field = screen.getByRole("textbox", { name: /New title/ });
    await fireEvent.input(field, { target: { value: "X" } });
    await fireEvent.keyDown(field, { key: "Enter" });
    expect((await screen.findByRole("alert")).textContent).toContain("no such conversation");
  });

  it("deletes only after confirmation; deleting the open one starts a new chat", async () => {
    const { be, onnew, onchange } = setup({}, { current: 3 });
    await fireEvent.click(screen.getByRole("button", { name: "Delete “Newest question”" }));
    expect(be.of("delete_conversation")).toHaveLength(0);
    const confirm = screen.getByRole("group", { name: "Confirm deleting “Newest question”" });
    expect(document.activeElement).toBe(within(confirm).getByRole("button", { name: "Cancel" }));
    await fireEvent.click(within(confirm).getByRole("button", { name: "Cancel" }));
    expect(screen.queryByRole("group", { name: /Confirm deleting/ })).toBeNull();
    await waitFor(() => expect(document.activeElement).toBe(screen.getByRole("button", { name: "Delete “Newest question”" })));
    expect(be.of("delete_conversation")).toHaveLength(0);

    await fireEvent.click(screen.getByRole("button", { name: "Delete “Newest question”" }));
    await fireEvent.click(within(screen.getByRole("group", { name: /Confirm deleting/ })).getByRole("button", { name: "Delete" }));
    await waitFor(() => expect(onchange).toHaveBeenCalled());
    expect(be.of("delete_conversation").map((c) => c.args)).toEqual([{ conversationId: 3 }]);
    expect(onnew).toHaveBeenCalled();
    // The focus goes to the next conversation.
    expect(document.activeElement?.querySelector(".conversation-title")?.textContent).toBe("Old question");
  });

  it("deleting another conversation keeps the open one", async () => {
    const { onnew, onchange } = setup({}, { current: 3 });
    await fireEvent.click(screen.getByRole("button", { name: "Delete “Old question”" }));
    await fireEvent.click(within(screen.getByRole("group")).getByRole("button", { name: "Delete" }));
    await waitFor(() => expect(onchange).toHaveBeenCalled());
    expect(onnew).not.toHaveBeenCalled();
  });
});

describe("Sidebar: search", () => {
  it("searches as you type and marks the matched words", async () => {
    const { be } = setup({
      search_history: () => [hit(3, "What is the capital of France? Le café", ["capital", "café"])],
    });
    await fireEvent.input(search(), { target: { value: "capit" } });
    const hits = await waitFor(() => {
      const el = document.querySelector(".hits .hit");
      expect(el).toBeTruthy();
      return el as HTMLElement;
    });
    expect(be.of("search_history").map((c) => c.args)).toEqual([{ query: "capit", filters: null, page: 0 }]);
    expect(Array.from(hits.querySelectorAll("mark")).map((m) => m.textContent)).toEqual(["capital", "café"]);
    expect(hits.textContent).toContain("Conversation 3");
    expect(hits.textContent).toContain("Message");
    // The list is replaced by the results.
    expect(titles()).toEqual([]);
  });

  it("passes the filters", async () => {
    const { be } = setup();
    await fireEvent.input(search(), { target: { value: "invoice" } });
    await waitFor(() => expect(be.of("search_history")).toHaveLength(1));
    await fireEvent.click(screen.getByRole("checkbox", { name: "Has an image" }));
    const model = screen.getByRole("combobox", { name: "Filter by model" }) as HTMLSelectElement;
    expect(Array.from(model.options).map((o) => o.value)).toEqual(["", "owner/installed", "owner/seen-in-history"]);
    await fireEvent.change(model, { target: { value: "owner/seen-in-history" } });
    await fireEvent.change(screen.getByRole("combobox", { name: "Filter by date" }), { target: { value: "today" } });
    await waitFor(() => {
      const last = be.of("search_history").at(-1)!.args;
      expect(last.query).toBe("invoice");
      expect(last.filters).toMatchObject({ has_image: true, model: "owner/seen-in-history", conversation: null, role: null });
      const since = (last.filters as { since: number }).since;
      const midnight = new Date();
      midnight.setHours(0, 0, 0, 0);
      expect(since).toBe(midnight.getTime());
    });
  });

  it("debounces: one search for a burst of keys", async () => {
    const { be } = setup();
    for (const q of ["c", "ca", "cap", "capi"]) await fireEvent.input(search(), { target: { value: q } });
    await waitFor(() => expect(be.of("search_history")).toHaveLength(1));
    await new Promise((r) => setTimeout(r, 200));
    expect(be.of("search_history").map((c) => c.args.query)).toEqual(["capi"]);
  });

  it("ignores a stale answer that arrives after a newer one", async () => {
    const slow = deferred<SearchHit[]>();
    setup({
      search_history: (a: Record<string, unknown>) =>
        a.query === "old" ? slow.promise : [hit(1, "the new result", ["new"])],
    });
    await fireEvent.input(search(), { target: { value: "old" } });
    await new Promise((r) => setTimeout(r, 160));
    await fireEvent.input(search(), { target: { value: "new" } });
    await waitFor(() => expect(document.querySelector(".hit")?.textContent).toContain("the new result"));
    slow.resolve([hit(2, "the old result", ["old"])]);
    await new Promise((r) => setTimeout(r, 20));
    expect(document.querySelectorAll(".hit")).toHaveLength(1);
    expect(document.querySelector(".hit")?.textContent).toContain("the new result");
  });

  it("shows the list again for an empty or blank query, without searching", async () => {
    const { be } = setup();
    await fireEvent.input(search(), { target: { value: "   " } });
    await new Promise((r) => setTimeout(r, 160));
    expect(be.of("search_history")).toHaveLength(0);
    expect(titles()).toHaveLength(3);
  });

  it("sends odd input as typed and shows errors inline", async () => {
    const { be } = setup({
      search_history: (a: Record<string, unknown>) =>
        a.query === "boom" ? Promise.reject({ code: "store", message: "database is locked" }) : [],
    });
    await fireEvent.input(search(), { target: { value: '"(* NEAR' } });
    await waitFor(() => expect(be.of("search_history").map((c) => c.args.query)).toEqual(['"(* NEAR']));
    await screen.findByText(/No matches for/);
    await fireEvent.input(search(), { target: { value: "boom" } });
    expect((await screen.findByRole("alert")).textContent).toContain("database is locked");
  });

  it("opens a result by click, or by arrow keys and Enter, with its message", async () => {
    const { onopen } = setup({
      search_history: [hit(1, "first", ["first"]), hit(2, "second", ["second"], { message_id: 77 })],
    });
    await fireEvent.input(search(), { target: { value: "s" } });
    const items = await waitFor(() => {
      const all = document.querySelectorAll<HTMLElement>(".hit");
      expect(all).toHaveLength(2);
      return all;
    });
    expect(search().getAttribute("aria-activedescendant")).toBe("hit-0");
    await fireEvent.keyDown(search(), { key: "ArrowDown" });
    expect(search().getAttribute("aria-activedescendant")).toBe("hit-1");
    expect(items[1].getAttribute("aria-selected")).toBe("true");
    await fireEvent.keyDown(search(), { key: "ArrowDown" });
    expect(search().getAttribute("aria-activedescendant")).toBe("hit-1");
    await fireEvent.keyDown(search(), { key: "Enter" });
    expect(onopen).toHaveBeenLastCalledWith(2, 77);
    await fireEvent.keyDown(search(), { key: "ArrowUp" });
    await fireEvent.keyDown(search(), { key: "Enter" });
    expect(onopen).toHaveBeenLastCalledWith(1, 10);
    await fireEvent.click(items[1]);
    expect(onopen).toHaveBeenLastCalledWith(2, 77);
  });

  it("loads more results page by page", async () => {
    const { be } = setup({
      search_history: (a: Record<string, unknown>) =>
        a.page === 0
          ? Array.from({ length: 20 }, (_, i) => hit(i + 1, `match ${i}`, ["match"]))
          : [hit(99, "last match", ["match"])],
    });
    await fireEvent.input(search(), { target: { value: "match" } });
    await fireEvent.click(await screen.findByRole("button", { name: "Load more" }));
    await waitFor(() => expect(document.querySelectorAll(".hit")).toHaveLength(21));
    expect(be.of("search_history").map((c) => c.args.page)).toEqual([0, 1]);
    expect(screen.queryByRole("button", { name: "Load more" })).toBeNull();
  });

  it("Escape clears the search", async () => {
    setup();
    await fireEvent.input(search(), { target: { value: "x" } });
    await fireEvent.keyDown(search(), { key: "Escape" });
    expect(search().value).toBe("");
    expect(titles()).toHaveLength(3);
  });
});
