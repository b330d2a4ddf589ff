// Generated from the Rust types by crates/lumen-core/tests/bindings.rs: do not edit.
// Regenerate with `LUMEN_UPDATE_BINDINGS=1 cargo test -p lumen-core --test bindings`.

/**
 * A conversation's id.
 */
export type ConversationId = number;

/**
 * A message's id.
 */
export type MessageId = number;

/**
 * An attachment's id.
 */
export type AttachmentId = number;

/**
 * Who wrote a message.
 */
export type Role = "system" | "user" | "assistant" | "tool";

/**
 * Where a message is in its life.
 */
export type Status = "streaming" | "complete" | "cancelled" | "error";

/**
 * A stored conversation.
 */
export type Conversation = { 
/**
 * Its id.
 */
id: ConversationId, 
/**
 * Display title.
 */
title: string, 
/**
 * The model it is held with.
 */
model: string | null, 
/**
 * System prompt.
 */
system_prompt: string | null, 
/**
 * Sampling settings (a JSON object).
 */
settings: Record<string, unknown>, 
/**
 * Created, Unix milliseconds.
 */
created_at: number, 
/**
 * Last changed (a message added, renamed), Unix milliseconds.
 */
updated_at: number, 
/**
 * Shown first.
 */
pinned: boolean, 
/**
 * Hidden from the default list.
 */
archived: boolean, };

/**
 * Token counts and timings of a generated reply.
 */
export type MessageStats = { 
/**
 * Prompt tokens.
 */
prompt_tokens: number | null, 
/**
 * Generated tokens.
 */
completion_tokens: number | null, 
/**
 * Time to first token.
 */
ttft_ms: number | null, 
/**
 * Decoding speed.
 */
decode_tok_s: number | null, };

/**
 * A stored message.
 */
export type Message = { 
/**
 * Its id.
 */
id: MessageId, 
/**
 * Its conversation.
 */
conversation_id: ConversationId, 
/**
 * The message it follows (branches share a parent).
 */
parent_id: MessageId | null, 
/**
 * Who wrote it.
 */
role: Role, 
/**
 * Its text.
 */
content: string, 
/**
 * Where it is in its life.
 */
status: Status, 
/**
 * Why generation failed, for `Status::Error`.
 */
error: string | null, 
/**
 * The model that wrote it (assistant messages).
 */
model: string | null, 
/**
 * Token counts and timings (assistant messages).
 */
stats: MessageStats, 
/**
 * Created, Unix milliseconds.
 */
created_at: number, };

/**
 * Narrows a search.
 */
export type SearchFilters = { 
/**
 * Only this conversation.
 */
conversation: ConversationId | null, 
/**
 * Only messages by this role (excludes title matches).
 */
role: Role | null, 
/**
 * Only messages written by, or conversations held with, this model.
 */
model: string | null, 
/**
 * Created at or after (Unix milliseconds).
 */
since: number | null, 
/**
 * Created before (Unix milliseconds).
 */
until: number | null, 
/**
 * Only messages with (true) or without (false) an image.
 */
has_image: boolean | null, };

/**
 * Where a match was found.
 */
export type HitKind = "message" | "title" | "attachment";

/**
 * One search result.
 */
export type SearchHit = { 
/**
 * What matched.
 */
kind: HitKind, 
/**
 * The conversation.
 */
conversation_id: ConversationId, 
/**
 * The message (none for a title match).
 */
message_id: MessageId | null, 
/**
 * The conversation's title.
 */
title: string, 
/**
 * The matching passage.
 */
snippet: string, 
/**
 * Byte ranges of the matched words in `snippet`.
 */
highlights: Array<[number, number]>, 
/**
 * bm25 rank (lower is better).
 */
score: number, 
/**
 * When the message (or conversation) was created / last changed,
 * Unix milliseconds.
 */
at: number, };

/**
 * A capability.
 */
export type Capability = "text" | "vision" | "tools";

/**
 * Model shapes.
 */
export type Architecture = { 
/**
 * Exact parameter count.
 */
parameters: number, 
/**
 * Transformer layers.
 */
layers: number, 
/**
 * Key/value heads.
 */
kv_heads: number, 
/**
 * Head dimension.
 */
head_dim: number, 
/**
 * The longest context the model was trained for.
 */
max_context: number, 
/**
 * Has a vision encoder.
 */
vision: boolean, };

/**
 * File format.
 */
export type Format = "gguf" | "safetensors";

/**
 * Where one variant comes from.
 */
export type Variant = { 
/**
 * Id within the model, e.g. `q4_k_m`.
 */
id: string, 
/**
 * The weights' quantization as stored, e.g. `Q4_K_M`, `BF16`.
 */
quant: string, 
/**
 * GGUF or safetensors.
 */
format: Format, 
/**
 * The repository.
 */
repo: string, 
/**
 * Branch, tag or commit.
 */
revision: string, 
/**
 * The files (empty: the repository's model files).
 */
files: Array<string>, 
/**
 * Needs its licence accepted on the Hub and a token.
 */
gated: boolean, 
/**
 * The quantization Lumen applies at load (safetensors models too
 * big to run unquantized), which is what the memory estimate uses.
 */
load_quant: string | null, };

/**
 * A model and its variants.
 */
export type CatalogueModel = { 
/**
 * Stable id, e.g. `llama-3.2-3b-instruct`.
 */
id: string, 
/**
 * Display name.
 */
name: string, 
/**
 * `llama-3.2`, `llama-3.2-vision`, `llama-3.3`.
 */
family: string, 
/**
 * One line for the model list.
 */
summary: string, 
/**
 * What it can do.
 */
capabilities: Array<Capability>, 
/**
 * Licence id, as the Hub's model card names it.
 */
license: string, 
/**
 * Where the licence text is.
 */
license_url: string, 
/**
 * Shown first on the welcome page.
 */
recommended: boolean, 
/**
 * The shapes the memory estimate needs.
 */
architecture: Architecture, 
/**
 * Where to get it; the first is the default.
 */
variants: Array<Variant>, };

/**
 * Whether a model fits in this machine's memory.
 */
export type Fit = "comfortable" | "tight" | "too_large";

/**
 * The memory a variant needs, in bytes.
 */
export type MemoryEstimate = { 
/**
 * The weights as loaded.
 */
weights: number, 
/**
 * The KV cache at the context assumed.
 */
kv_cache: number, 
/**
 * Working memory.
 */
overhead: number, 
/**
 * The context assumed.
 */
context: number, };

/**
 * What a download reports, for a progress bar or the desktop app.
 */
export type DownloadEvent = { "kind": "started", 
/**
 * Repository.
 */
repo: string, 
/**
 * Commit.
 */
commit: string, 
/**
 * Files and sizes.
 */
files: Array<[string, number]>, 
/**
 * Bytes in all.
 */
total: number, } | { "kind": "progress", 
/**
 * Bytes done (never less than before).
 */
done: number, 
/**
 * Bytes in all.
 */
total: number, 
/**
 * Smoothed bytes per second.
 */
bytes_per_s: number, 
/**
 * Seconds left at that rate.
 */
eta_s: number | null, } | { "kind": "verifying", 
/**
 * The file.
 */
file: string, 
/**
 * Bytes already there.
 */
bytes: number, } | { "kind": "retrying", 
/**
 * The file.
 */
file: string, 
/**
 * Failures in a row so far.
 */
attempt: number, 
/**
 * Milliseconds until the next try.
 */
delay_ms: number, 
/**
 * What went wrong.
 */
reason: string, } | { "kind": "file_done", 
/**
 * The file.
 */
file: string, } | { "kind": "paused" } | { "kind": "resumed" } | { "kind": "finished", 
/**
 * The snapshot folder.
 */
snapshot: string, } | { "kind": "failed", 
/**
 * [`HubError::code`].
 */
code: string, 
/**
 * The message.
 */
message: string, } | { "kind": "cancelled" };

/**
 * What a model is stored as.
 */
export type ModelKind = "gguf" | "safetensors";

/**
 * A model on this machine.
 */
export type InstalledModel = { 
/**
 * `owner/name` (`local/<name>` for imports).
 */
id: string, 
/**
 * The snapshot folder, or the imported file or folder.
 */
path: string, 
/**
 * The commit, for downloads.
 */
commit: string | null, 
/**
 * GGUF or safetensors.
 */
kind: ModelKind, 
/**
 * The GGUF files (relative to `path`; empty for safetensors and for an
 * imported single file).
 */
gguf_files: Array<string>, 
/**
 * Bytes on disk.
 */
size: number, 
/**
 * Imported by the user rather than downloaded.
 */
imported: boolean, };

/**
 * Where a token came from.
 */
export type TokenSource = "environment" | "keyring" | "hugging_face_file";

/**
 * An error for the UI: `{code, message}`.
 */
export type CoreError = { 
/**
 * Stable, for the UI to branch on (`busy`, `model_not_found`, …).
 */
code: string, 
/**
 * What happened and what to do.
 */
message: string, };

/**
 * An event.
 */
export type CoreEvent = { "type": "reply_started", 
/**
 * The conversation.
 */
conversation_id: ConversationId, 
/**
 * The user's message.
 */
user_message_id: MessageId, 
/**
 * The reply being written.
 */
reply_message_id: MessageId, } | { "type": "model_loading", 
/**
 * The conversation whose reply is waiting for it.
 */
conversation_id: ConversationId, 
/**
 * The model, as named by the user.
 */
model: string, 
/**
 * Steps done.
 */
done: number, 
/**
 * Steps in all.
 */
total: number, } | { "type": "token", 
/**
 * The conversation.
 */
conversation_id: ConversationId, 
/**
 * The reply.
 */
message_id: MessageId, 
/**
 * Where `text` starts in the reply, in UTF-16 code units (the
 * positions of a JavaScript string): a screen that joins a reply
 * under way places later pieces exactly after what was stored.
 */
offset: number, 
/**
 * The new text.
 */
text: string, } | { "type": "reply_finished", 
/**
 * The conversation.
 */
conversation_id: ConversationId, 
/**
 * The reply.
 */
message_id: MessageId, 
/**
 * Tokens and timings.
 */
stats: MessageStats, 
/**
 * `eos`, `stop_string`, `max_tokens`, `cancelled`, `context_full`.
 */
stop_reason: string, } | { "type": "download", 
/**
 * The download ([`crate::Core::start_download`]'s id).
 */
id: number, 
/**
 * What happened.
 */
event: DownloadEvent, } | { "type": "reply_failed", 
/**
 * The conversation.
 */
conversation_id: ConversationId, 
/**
 * The reply.
 */
message_id: MessageId, 
/**
 * Why.
 */
error: CoreError, };

/**
 * Files dragged over the window, for the drop overlay (the desktop app
 * sends these as `lumen://drop`; dropped paths are what Rust may read).
 */
export type DropEvent = { "kind": "enter", 
/**
 * Their paths.
 */
paths: Array<string>, } | { "kind": "leave" } | { "kind": "drop", 
/**
 * Their paths.
 */
paths: Array<string>, };

/**
 * A conversation's sampling and length settings (stored as its
 * `settings` JSON; unset fields take the model's recommendations).
 */
export type ChatSettings = { 
/**
 * Softmax temperature; 0 for greedy.
 */
temperature: number | null, 
/**
 * Nucleus sampling.
 */
top_p: number | null, 
/**
 * Top-k sampling (0 = off).
 */
top_k: number | null, 
/**
 * Most tokens in a reply.
 */
max_tokens: number | null, 
/**
 * Random seed (same seed, same reply).
 */
seed: number | null, };

/**
 * An image as the UI hands it over.
 */
export type ImageInput = { "kind": "path", 
/**
 * Where it is.
 */
path: string, } | { "kind": "bytes", 
/**
 * The encoded image (PNG, JPEG, WebP, GIF, BMP), base64 in JSON
 * (a third larger, where an array of numbers would be four times).
 */
base64: string, };

/**
 * A checked image, for the composer: attached images are checked at
 * once, so a broken file is reported before anything is sent.
 */
export type ImagePreview = { 
/**
 * Its type (`image/png`, …).
 */
mime: string, 
/**
 * Pixel width.
 */
width: number, 
/**
 * Pixel height.
 */
height: number, 
/**
 * Its size, bytes.
 */
bytes: number, 
/**
 * A small JPEG, as a `data:` URL.
 */
thumbnail: string, };

/**
 * A message to send.
 */
export type SendRequest = { 
/**
 * The conversation; `None` starts a new one.
 */
conversation: ConversationId | null, 
/**
 * The message this one follows (the end of the thread on screen);
 * `None` continues after the conversation's newest message.
 */
parent: MessageId | null, 
/**
 * The model: a file or folder, or an installed model's id.
 */
model: string, 
/**
 * The user's text.
 */
text: string, 
/**
 * Images to ask about (a Llama 3.2 Vision model is needed).
 */
images: Array<ImageInput>, 
/**
 * For a new conversation: its system prompt.
 */
system_prompt: string | null, 
/**
 * For a new conversation: its settings.
 */
settings: ChatSettings, };

/**
 * Another reply to the question `reply` answered (kept beside it, as a
 * branch).
 */
export type RegenerateRequest = { 
/**
 * The reply to write again.
 */
reply: MessageId, 
/**
 * The model to write it with.
 */
model: string, };

/**
 * A new version of a question (kept beside the old one, as a branch, with
 * the same images), and its reply.
 */
export type EditRequest = { 
/**
 * The user message edited.
 */
message: MessageId, 
/**
 * Its new text.
 */
text: string, 
/**
 * The model to answer with.
 */
model: string, };

/**
 * What [`Core::send`] started.
 */
export type ReplyStarted = { 
/**
 * The conversation (new or given).
 */
conversation_id: ConversationId, 
/**
 * The user message answered.
 */
user_message_id: MessageId, 
/**
 * The reply being written.
 */
reply_message_id: MessageId, };

/**
 * An image attached to a message (its bytes stay in the history).
 */
export type AttachmentView = { 
/**
 * Its id.
 */
id: AttachmentId, 
/**
 * Its type.
 */
mime: string, 
/**
 * Pixel width.
 */
width: number | null, 
/**
 * Pixel height.
 */
height: number | null, 
/**
 * Size, bytes.
 */
bytes: number, 
/**
 * A small JPEG, as a `data:` URL.
 */
thumbnail: string | null, };

/**
 * A message with its attachments.
 */
export type MessageView = { 
/**
 * Its images.
 */
attachments: Array<AttachmentView>, 
/**
 * Its id.
 */
id: MessageId, 
/**
 * Its conversation.
 */
conversation_id: ConversationId, 
/**
 * The message it follows (branches share a parent).
 */
parent_id: MessageId | null, 
/**
 * Who wrote it.
 */
role: Role, 
/**
 * Its text.
 */
content: string, 
/**
 * Where it is in its life.
 */
status: Status, 
/**
 * Why generation failed, for `Status::Error`.
 */
error: string | null, 
/**
 * The model that wrote it (assistant messages).
 */
model: string | null, 
/**
 * Token counts and timings (assistant messages).
 */
stats: MessageStats, 
/**
 * Created, Unix milliseconds.
 */
created_at: number, };

/**
 * An open conversation: everything the chat screen shows.
 */
export type ConversationView = { 
/**
 * The conversation.
 */
conversation: Conversation, 
/**
 * Its sampling settings (unset = the model's recommendation).
 */
settings: ChatSettings, 
/**
 * Every message of every branch, oldest first. Messages sharing a
 * parent are branches: regenerated replies, edited questions.
 */
messages: Array<MessageView>, 
/**
 * The reply being written now, if any.
 */
replying: MessageId | null, };

/**
 * A catalogue model as the models page shows it.
 */
export type CatalogueEntry = { 
/**
 * The catalogue's entry.
 */
model: CatalogueModel, 
/**
 * Each variant with its memory need, fit and whether it is installed.
 */
variants: Array<VariantStatus>, };

/**
 * A variant's status on this machine.
 */
export type VariantStatus = { 
/**
 * The variant.
 */
variant: Variant, 
/**
 * `model-id:variant-id`, what [`Core::start_download`] takes.
 */
spec: string, 
/**
 * Memory needed at the default context.
 */
memory: MemoryEstimate, 
/**
 * Whether that fits this machine.
 */
fit: Fit, 
/**
 * Already downloaded.
 */
installed: boolean, };

/**
 * A download's state, for a list in the UI.
 */
export type DownloadStatus = { 
/**
 * Its id (in [`CoreEvent::Download`] too).
 */
id: number, 
/**
 * What was asked for.
 */
spec: string, 
/**
 * The latest event.
 */
last: DownloadEvent | null, 
/**
 * Still running (or paused).
 */
active: boolean, };

/**
 * An installed model as the app shows it.
 */
export type LocalModel = { 
/**
 * Whether it reads images (Llama 3.2 Vision).
 */
vision: boolean, 
/**
 * `owner/name` (`local/<name>` for imports).
 */
id: string, 
/**
 * The snapshot folder, or the imported file or folder.
 */
path: string, 
/**
 * The commit, for downloads.
 */
commit: string | null, 
/**
 * GGUF or safetensors.
 */
kind: ModelKind, 
/**
 * The GGUF files (relative to `path`; empty for safetensors and for an
 * imported single file).
 */
gguf_files: Array<string>, 
/**
 * Bytes on disk.
 */
size: number, 
/**
 * Imported by the user rather than downloaded.
 */
imported: boolean, };

/**
 * Whether a Hugging Face token is set, and where it comes from (never
 * the token itself).
 */
export type TokenStatus = { 
/**
 * A token is set.
 */
present: boolean, 
/**
 * Where it comes from: the environment wins over the keyring, which
 * wins over Hugging Face's own token file.
 */
source: TokenSource | null, };

/**
 * Light, dark, or as the system is.
 */
export type Theme = "system" | "light" | "dark";

/**
 * What the user chose on the settings page.
 */
export type AppSettings = { 
/**
 * The model new chats use (an installed model's id or a path).
 */
default_model: string | null, 
/**
 * The colour theme.
 */
theme: Theme, 
/**
 * `auto`, `cpu`, or a GPU this build supports (`cuda`, `metal`; see
 * [`SystemInfo::devices`]). Used for the next model loaded.
 */
device: string, 
/**
 * The data folder (history, attachments); `None` for the platform's.
 * Used from the next start; what is in the old folder stays there.
 */
data_dir: string | null, };

/**
 * Facts for the settings page's About block.
 */
export type SystemInfo = { 
/**
 * Lumen's version.
 */
version: string, 
/**
 * The devices this build can use, `auto` and `cpu` first.
 */
devices: Array<string>, 
/**
 * This machine's memory, bytes.
 */
total_memory: number, 
/**
 * The data folder in use now.
 */
data_dir: string, 
/**
 * The data folder when none is chosen.
 */
default_data_dir: string | null, 
/**
 * Where these settings are kept.
 */
settings_file: string, 
/**
 * Where downloaded models are (the Hugging Face cache).
 */
hub_cache: string, };
