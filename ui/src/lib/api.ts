// The typed backend interface: every call the UI makes, in one place.
// Command names and argument names match src-tauri/src/commands.rs
// (Tauri maps camelCase arguments to the Rust snake_case ones).
import { invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";
import type {
  AppSettings,
  CatalogueEntry,
  ChatSettings,
  Conversation,
  ConversationId,
  ConversationView,
  CoreEvent,
  DownloadStatus,
  DropEvent,
  EditRequest,
  ImageInput,
  ImagePreview,
  LocalModel,
  RegenerateRequest,
  ReplyStarted,
  SearchFilters,
  SearchHit,
  SendRequest,
  SystemInfo,
  TokenStatus,
} from "./types";

export const api = {
  // Chat
  send: (request: SendRequest) => invoke<ReplyStarted>("send_message", { request }),
  regenerate: (request: RegenerateRequest) => invoke<ReplyStarted>("regenerate", { request }),
  edit: (request: EditRequest) => invoke<ReplyStarted>("edit_message", { request }),
  stop: (conversationId: ConversationId) => invoke<boolean>("stop_reply", { conversationId }),
  /** Checks an image (format, size, decodes) and returns its thumbnail: call when it is attached. */
  previewImage: (image: ImageInput) => invoke<ImagePreview>("preview_image", { image }),
  /** Opens the native file dialog for images; the paths picked are granted to Rust. */
  pickImages: () => invoke<string[]>("pick_images"),

  // History
  conversations: () => invoke<Conversation[]>("list_conversations"),
  open: (conversationId: ConversationId) => invoke<ConversationView>("open_conversation", { conversationId }),
  rename: (conversationId: ConversationId, title: string) =>
    invoke<void>("rename_conversation", { conversationId, title }),
  pin: (conversationId: ConversationId, pinned: boolean) => invoke<void>("set_pinned", { conversationId, pinned }),
  setConversationSettings: (conversationId: ConversationId, systemPrompt: string | null, settings: ChatSettings) =>
    invoke<void>("set_conversation_settings", { conversationId, systemPrompt, settings }),
  remove: (conversationId: ConversationId) => invoke<void>("delete_conversation", { conversationId }),
  search: (query: string, filters: SearchFilters | null = null, page = 0) =>
    invoke<SearchHit[]>("search_history", { query, filters, page }),

  // Models
  catalogue: () => invoke<CatalogueEntry[]>("catalogue"),
  installed: () => invoke<LocalModel[]>("installed_models"),
  download: (spec: string) => invoke<number>("start_download", { spec }),
  pause: (id: number) => invoke<void>("pause_download", { id }),
  resume: (id: number) => invoke<void>("resume_download", { id }),
  cancel: (id: number) => invoke<void>("cancel_download", { id }),
  downloads: () => invoke<DownloadStatus[]>("downloads"),
  deleteModel: (spec: string) => invoke<number>("delete_model", { spec }),
  /** Opens the native file dialog for a GGUF file; null when cancelled. */
  pickModelFile: () => invoke<string | null>("pick_model_file"),
  importModel: (path: string) => invoke<LocalModel>("import_model", { path }),
  tokenStatus: () => invoke<TokenStatus>("token_status"),
  setToken: (token: string) => invoke<TokenStatus>("set_token", { token }),
  clearToken: () => invoke<TokenStatus>("clear_token"),

  // Settings
  settings: () => invoke<AppSettings>("app_settings"),
  saveSettings: (settings: AppSettings) => invoke<AppSettings>("save_app_settings", { settings }),
  systemInfo: () => invoke<SystemInfo>("system_info"),
  /** Asks the user to confirm (a native dialog) and opens an http(s) address in the browser; whether it was opened. */
  openLink: (url: string) => invoke<boolean>("open_link", { url }),
  /** The first frame is on screen (for the start-up benchmark). */
  uiReady: () => invoke<void>("ui_ready"),
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

/** The code of an error from a command, or "" when it has none. */
export function errorCode(e: unknown): string {
  if (e && typeof e === "object" && "code" in e) return String((e as { code: unknown }).code);
  return "";
}
