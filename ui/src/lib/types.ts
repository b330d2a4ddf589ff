// The shapes the Rust side sends (lumen-core, lumen-store, lumen-hub).
// TEMPORARY: hand-written to the contract below; `bindings.ts`, generated
// from the Rust types by a lumen-core test, replaces these declarations
// (same names), and this file then only re-exports it plus UI-only types.

export type ConversationId = number;
export type MessageId = number;
export type AttachmentId = number;

/** Every command's error: a stable code and a message a person can act on. */
export type CoreError = { code: string; message: string };

export type Role = "system" | "user" | "assistant" | "tool";
export type Status = "streaming" | "complete" | "cancelled" | "error";

export type Conversation = {
  id: ConversationId;
  title: string;
  model: string | null;
  system_prompt: string | null;
  settings: Record<string, unknown>;
  created_at: number;
  updated_at: number;
  pinned: boolean;
  archived: boolean;
};

export type MessageStats = {
  prompt_tokens: number | null;
  completion_tokens: number | null;
  ttft_ms: number | null;
  decode_tok_s: number | null;
};

export type Message = {
  id: MessageId;
  conversation_id: ConversationId;
  /** The message it follows; messages sharing a parent are branches (regenerated replies, edited questions). */
  parent_id: MessageId | null;
  role: Role;
  content: string;
  status: Status;
  error: string | null;
  model: string | null;
  stats: MessageStats;
  created_at: number;
};

/** An image attached to a message (its bytes stay in Rust). */
export type AttachmentView = {
  id: AttachmentId;
  mime: string;
  width: number | null;
  height: number | null;
  bytes: number;
  /** A small JPEG as a `data:` URL. */
  thumbnail: string | null;
};

/** A message with its attachments (every branch of the conversation). */
export type MessageView = Message & { attachments: Array<AttachmentView> };

/** A conversation's sampling settings; null = the model's recommendation. */
export type ChatSettings = {
  temperature: number | null;
  top_p: number | null;
  top_k: number | null;
  max_tokens: number | null;
  seed: number | null;
};

/** An open conversation: everything the chat screen shows. */
export type ConversationView = {
  conversation: Conversation;
  settings: ChatSettings;
  /** Every message of every branch, oldest first. */
  messages: Array<MessageView>;
  /** The reply being written now, if any. */
  replying: MessageId | null;
};

/** An image handed to Rust: a path the user dropped or picked, or pasted bytes (base64). */
export type ImageInput = { kind: "path"; path: string } | { kind: "bytes"; base64: string };

/** A checked image, for the composer. */
export type ImagePreview = {
  mime: string;
  width: number;
  height: number;
  bytes: number;
  /** A small JPEG as a `data:` URL. */
  thumbnail: string;
};

export type SendRequest = {
  /** null starts a new conversation. */
  conversation: ConversationId | null;
  /** The message this one follows (the end of the thread on screen); null = after the newest message. */
  parent: MessageId | null;
  model: string;
  text: string;
  images: Array<ImageInput>;
  /** For a new conversation. */
  system_prompt: string | null;
  /** For a new conversation. */
  settings: ChatSettings;
};

/** A new reply to the same question as `reply` (a sibling branch). */
export type RegenerateRequest = { reply: MessageId; model: string };

/** A new version of user message `message` (a sibling branch, same images), and its reply. */
export type EditRequest = { message: MessageId; text: string; model: string };

export type ReplyStarted = {
  conversation_id: ConversationId;
  user_message_id: MessageId;
  reply_message_id: MessageId;
};

export type DownloadEvent =
  | { kind: "started"; repo: string; commit: string; files: Array<[string, number]>; total: number }
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
  | { type: "reply_failed"; conversation_id: ConversationId; message_id: MessageId; error: CoreError };

export type SearchFilters = {
  conversation: ConversationId | null;
  role: Role | null;
  model: string | null;
  /** Unix milliseconds, inclusive. */
  since: number | null;
  /** Unix milliseconds, exclusive. */
  until: number | null;
  has_image: boolean | null;
};

export type HitKind = "message" | "title" | "attachment";

export type SearchHit = {
  kind: HitKind;
  conversation_id: ConversationId;
  message_id: MessageId | null;
  title: string;
  snippet: string;
  /** UTF-8 BYTE ranges of the matched words in `snippet` (convert before slicing a JS string). */
  highlights: Array<[number, number]>;
  score: number;
  at: number;
};

export type Capability = "text" | "vision" | "tools";
export type Format = "gguf" | "safetensors";
export type Fit = "comfortable" | "tight" | "too_large";

export type MemoryEstimate = { weights: number; kv_cache: number; overhead: number; context: number };

export type Variant = {
  id: string;
  quant: string;
  format: Format;
  repo: string;
  revision: string;
  files: Array<string>;
  gated: boolean;
  load_quant: string | null;
};

export type CatalogueModel = {
  id: string;
  name: string;
  family: string;
  summary: string;
  capabilities: Array<Capability>;
  license: string;
  license_url: string;
  recommended: boolean;
  architecture: { parameters: number; layers: number; kv_heads: number; head_dim: number; max_context: number; vision: boolean };
  variants: Array<Variant>;
};

export type VariantStatus = {
  variant: Variant;
  /** What to pass to start_download / the model picker. */
  spec: string;
  memory: MemoryEstimate;
  fit: Fit;
  installed: boolean;
};

export type CatalogueEntry = { model: CatalogueModel; variants: Array<VariantStatus> };

export type DownloadStatus = { id: number; spec: string; last: DownloadEvent | null; active: boolean };

export type ModelKind = "gguf" | "safetensors";

export type InstalledModel = {
  id: string;
  path: string;
  commit: string | null;
  kind: ModelKind;
  gguf_files: Array<string>;
  size: number;
  imported: boolean;
};

/** An installed model as the app shows it. */
export type LocalModel = InstalledModel & {
  /** Whether it reads images (Llama 3.2 Vision). */
  vision: boolean;
};

export type Theme = "system" | "light" | "dark";

/** The app's settings (a JSON file in the config folder). */
export type AppSettings = {
  /** The model new chats use. */
  default_model: string | null;
  theme: Theme;
  /** "cpu", or a GPU this build supports ("cuda", "metal"); see SystemInfo.devices. */
  device: string;
  /** The data folder (history, attachments); null = the platform default. Used from the next start. */
  data_dir: string | null;
};

export type SystemInfo = {
  version: string;
  /** Devices this build can use, "cpu" first. */
  devices: Array<string>;
  total_memory: number;
  /** The data folder in use now. */
  data_dir: string;
  default_data_dir: string;
  settings_file: string;
  hub_cache: string;
};

/** Whether a Hugging Face token is set, and where it comes from. */
export type TokenStatus = { present: boolean; source: "keyring" | "environment" | "hf_cli" | null };

/** Files dragged over the window (paths are granted to Rust when dropped). */
export type DropEvent = { kind: "enter"; paths: Array<string> } | { kind: "leave" } | { kind: "drop"; paths: Array<string> };
