// The shapes the Rust side sends (lumen-core, lumen-store, lumen-hub).
// To be replaced by bindings generated from the Rust types.

export type ConversationId = number;
export type MessageId = number;

export interface CoreErrorT {
  code: string;
  message: string;
}

export interface Conversation {
  id: ConversationId;
  title: string;
  model: string | null;
  system_prompt: string | null;
  created_at: number;
  updated_at: number;
  pinned: boolean;
  archived: boolean;
}

export interface MessageStats {
  prompt_tokens: number | null;
  completion_tokens: number | null;
  ttft_ms: number | null;
  decode_tok_s: number | null;
}

export interface Message {
  id: MessageId;
  conversation_id: ConversationId;
  parent_id: MessageId | null;
  role: "system" | "user" | "assistant" | "tool";
  content: string;
  status: "complete" | "streaming" | "cancelled" | "error";
  error: string | null;
  model: string | null;
  stats: MessageStats;
  created_at: number;
}

export type ImageInput = { kind: "path"; path: string } | { kind: "bytes"; data: number[] };

export interface SendRequest {
  conversation: ConversationId | null;
  model: string;
  text: string;
  images: ImageInput[];
  system_prompt: string | null;
  settings: Record<string, unknown>;
}

export interface ReplyStarted {
  conversation_id: ConversationId;
  user_message_id: MessageId;
  reply_message_id: MessageId;
}

export type DownloadEvent =
  | { kind: "started"; repo: string; commit: string; files: [string, number][]; total: number }
  | { kind: "progress"; done: number; total: number; bytes_per_s: number; eta_s: number | null }
  | { kind: "verifying"; file: string; bytes: number }
  | { kind: "retrying"; file: string; attempt: number; delay_ms: number; reason: string }
  | { kind: "file_done"; file: string }
  | { kind: "paused" }
  | { kind: "resumed" }
  | { kind: "finished"; snapshot: string }
  | { kind: "failed"; code: string; message: string }
  | { kind: "cancelled" };

export type CoreEvent =
  | { type: "reply_started"; conversation_id: ConversationId; user_message_id: MessageId; reply_message_id: MessageId }
  | { type: "model_loading"; model: string; done: number; total: number }
  | { type: "token"; conversation_id: ConversationId; message_id: MessageId; text: string }
  | { type: "reply_finished"; conversation_id: ConversationId; message_id: MessageId; stats: MessageStats; stop_reason: string }
  | { type: "download"; id: number; event: DownloadEvent }
  | { type: "reply_failed"; conversation_id: ConversationId; message_id: MessageId; error: CoreErrorT };

export interface SearchHit {
  conversation_id: ConversationId;
  message_id: MessageId | null;
  conversation_title: string;
  snippet: string;
  highlights: [number, number][];
}

export interface MemoryEstimate {
  weights: number;
  kv_cache: number;
  overhead: number;
  context: number;
}

export interface VariantStatus {
  variant: { id: string; quant: string; format: string; repo: string; gated: boolean };
  spec: string;
  memory: MemoryEstimate;
  fit: "comfortable" | "tight" | "too_large";
  installed: boolean;
}

export interface CatalogueEntry {
  model: { id: string; name: string; summary: string; capabilities: string[]; license: string; recommended: boolean };
  variants: VariantStatus[];
}

export interface InstalledModel {
  id: string;
  path: string;
  kind: "gguf" | "safetensors";
  gguf_files: string[];
  size: number;
  imported: boolean;
}

export type DropEvent = { kind: "enter"; paths: string[] } | { kind: "leave" } | { kind: "drop"; paths: string[] };
