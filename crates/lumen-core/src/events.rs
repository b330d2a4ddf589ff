//! What the core tells the UI as it happens. Serialized with a `type` tag;
//! the desktop app forwards each as a Tauri event.

use lumen_store::{ConversationId, MessageId, MessageStats};
use serde::Serialize;

use crate::error::CoreError;

/// An event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CoreEvent {
    /// A user message was stored and its reply begun.
    ReplyStarted {
        /// The conversation.
        conversation_id: ConversationId,
        /// The user's message.
        user_message_id: MessageId,
        /// The reply being written.
        reply_message_id: MessageId,
    },
    /// The model is loading (before the first reply that needs it).
    ModelLoading {
        /// The conversation whose reply is waiting for it.
        conversation_id: ConversationId,
        /// The model, as named by the user.
        model: String,
        /// Steps done.
        done: usize,
        /// Steps in all.
        total: usize,
    },
    /// More text of a reply.
    Token {
        /// The conversation.
        conversation_id: ConversationId,
        /// The reply.
        message_id: MessageId,
        /// Where `text` starts in the reply, in UTF-16 code units (the
        /// positions of a JavaScript string): a screen that joins a reply
        /// under way places later pieces exactly after what was stored.
        offset: usize,
        /// The new text.
        text: String,
    },
    /// A reply ended (completely, at a limit, or stopped by the user).
    ReplyFinished {
        /// The conversation.
        conversation_id: ConversationId,
        /// The reply.
        message_id: MessageId,
        /// Tokens and timings.
        stats: MessageStats,
        /// `eos`, `stop_string`, `max_tokens`, `cancelled`, `context_full`.
        stop_reason: String,
    },
    /// A download's progress or end.
    Download {
        /// The download ([`crate::Core::start_download`]'s id).
        id: u64,
        /// What happened.
        event: lumen_hub::DownloadEvent,
    },
    /// A reply failed; what was written so far is kept.
    ReplyFailed {
        /// The conversation.
        conversation_id: ConversationId,
        /// The reply.
        message_id: MessageId,
        /// Why.
        error: CoreError,
    },
}

/// Files dragged over the window, for the drop overlay (the desktop app
/// sends these as `lumen://drop`; dropped paths are what Rust may read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DropEvent {
    /// Files are over the window.
    Enter {
        /// Their paths.
        paths: Vec<std::path::PathBuf>,
    },
    /// They left without being dropped.
    Leave,
    /// They were dropped.
    Drop {
        /// Their paths.
        paths: Vec<std::path::PathBuf>,
    },
}
