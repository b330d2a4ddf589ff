// The typed backend interface: every call the UI makes, in one place.
import { invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";
import type {
  CatalogueEntry,
  Conversation,
  ConversationId,
  CoreEvent,
  DropEvent,
  InstalledModel,
  Message,
  ReplyStarted,
  SearchHit,
  SendRequest,
} from "./types";

export const api = {
  send: (request: SendRequest) => invoke<ReplyStarted>("send_message", { request }),
  stop: (conversationId: ConversationId) => invoke<boolean>("stop_reply", { conversationId }),
  conversations: () => invoke<Conversation[]>("list_conversations"),
  messages: (conversationId: ConversationId) => invoke<Message[]>("get_messages", { conversationId }),
  rename: (conversationId: ConversationId, title: string) =>
    invoke<void>("rename_conversation", { conversationId, title }),
  remove: (conversationId: ConversationId) => invoke<void>("delete_conversation", { conversationId }),
  search: (query: string) => invoke<SearchHit[]>("search_history", { query }),
  catalogue: () => invoke<CatalogueEntry[]>("catalogue"),
  installed: () => invoke<InstalledModel[]>("installed_models"),
  download: (spec: string) => invoke<number>("start_download", { spec }),
  pause: (id: number) => invoke<void>("pause_download", { id }),
  resume: (id: number) => invoke<void>("resume_download", { id }),
  cancel: (id: number) => invoke<void>("cancel_download", { id }),
};

export function onCoreEvent(handler: (e: CoreEvent) => void): Promise<UnlistenFn> {
  return listen<CoreEvent>("core://event", (e) => handler(e.payload));
}

export function onDrop(handler: (e: DropEvent) => void): Promise<UnlistenFn> {
  return listen<DropEvent>("lumen://drop", (e) => handler(e.payload));
}

/** The message of an error from a command (`{code, message}` or anything else). */
export function errorText(e: unknown): string {
  if (e && typeof e === "object" && "message" in e) return String((e as { message: unknown }).message);
  return String(e);
}
