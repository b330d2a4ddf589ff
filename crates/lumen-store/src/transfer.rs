//! Export to JSON and Markdown, and import from JSON.
//!
//! The JSON format (documented in `docs/history-format.md`):
//!
//! ```json
//! {"format": "lumen-history", "version": 1,
//!  "conversations": [{"title": "...", "model": "...", "system_prompt": "...",
//!    "settings": {}, "created_at": "2026-11-28T14:00:00Z", "pinned": false, "archived": false,
//!    "messages": [{"role": "user", "content": "...", "created_at": "...",
//!      "parent": null, "status": "complete", "model": null,
//!      "attachments": [{"mime": "image/png", "data_base64": "...", "width": 640,
//!                       "height": 480, "text": ""}]}]}]}
//! ```
//!
//! Import ignores unknown fields, defaults missing optional ones, and
//! rejects invalid input with the path of the first bad field
//! (`conversations[0].messages[3].role: ...`), importing nothing.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::attachments::{IMAGE_TYPES, MAX_ATTACHMENT_BYTES};
use crate::{ConversationId, MessageId, NewConversation, Result, Role, Status, Store, StoreError};

/// The `format` field of an export.
pub const FORMAT: &str = "lumen-history";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// A whole export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Export {
    /// Always [`FORMAT`].
    #[serde(default = "format_name")]
    pub format: String,
    /// [`VERSION`].
    #[serde(default = "version")]
    pub version: u32,
    /// The conversations.
    pub conversations: Vec<ExportConversation>,
}

fn format_name() -> String {
    FORMAT.into()
}

fn version() -> u32 {
    VERSION
}

/// One exported conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportConversation {
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Model.
    #[serde(default)]
    pub model: Option<String>,
    /// System prompt.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Sampling settings.
    #[serde(default = "empty_object")]
    pub settings: serde_json::Value,
    /// RFC 3339.
    pub created_at: String,
    /// Pinned.
    #[serde(default)]
    pub pinned: bool,
    /// Archived.
    #[serde(default)]
    pub archived: bool,
    /// Messages in order.
    #[serde(default)]
    pub messages: Vec<ExportMessage>,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// One exported message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text.
    #[serde(default)]
    pub content: String,
    /// RFC 3339.
    pub created_at: String,
    /// Index of the message it follows, in this conversation's list.
    #[serde(default)]
    pub parent: Option<usize>,
    /// `complete`, `cancelled` or `error` (default `complete`).
    #[serde(default)]
    pub status: Option<String>,
    /// Model that wrote it.
    #[serde(default)]
    pub model: Option<String>,
    /// Attached images.
    #[serde(default)]
    pub attachments: Vec<ExportAttachment>,
}

/// One exported attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportAttachment {
    /// MIME type.
    pub mime: String,
    /// The bytes, standard base64.
    pub data_base64: String,
    /// Pixel width.
    #[serde(default)]
    pub width: Option<u32>,
    /// Pixel height.
    #[serde(default)]
    pub height: Option<u32>,
    /// Searchable text.
    #[serde(default)]
    pub text: String,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A validated conversation, ready to insert.
struct Checked {
    conversation: NewConversation,
    created_at: i64,
    pinned: bool,
    archived: bool,
    messages: Vec<CheckedMessage>,
}

struct CheckedMessage {
    role: Role,
    content: String,
    created_at: i64,
    parent: Option<usize>,
    status: Status,
    model: Option<String>,
    attachments: Vec<CheckedAttachment>,
}

struct CheckedAttachment {
    mime: String,
    data: Vec<u8>,
    width: Option<u32>,
    height: Option<u32>,
    text: String,
}

fn check(export: &Export) -> Result<Vec<Checked>> {
    let bad = |path: String, why: String| StoreError::InvalidArgument(format!("{path}: {why}"));
    if export.format != FORMAT {
        return Err(bad("format".into(), format!("expected \"{FORMAT}\"")));
    }
    if export.version != VERSION {
        return Err(bad(
            "version".into(),
            format!(
                "version {} is not supported (this build reads {VERSION})",
                export.version
            ),
        ));
    }
    let time = |path: String, s: &str| -> Result<i64> {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| bad(path, format!("`{s}` is not an RFC 3339 time ({e})")))
    };
    let mut out = Vec::with_capacity(export.conversations.len());
    for (i, c) in export.conversations.iter().enumerate() {
        let at = format!("conversations[{i}]");
        if !c.settings.is_object() {
            return Err(bad(format!("{at}.settings"), "must be an object".into()));
        }
        let mut messages = Vec::with_capacity(c.messages.len());
        for (j, m) in c.messages.iter().enumerate() {
            let at = format!("{at}.messages[{j}]");
            let role =
                Role::parse(&m.role).map_err(|e| bad(format!("{at}.role"), e.to_string()))?;
            let status = match m.status.as_deref() {
                None | Some("complete") => Status::Complete,
                Some("cancelled") | Some("streaming") => Status::Cancelled,
                Some("error") => Status::Error,
                Some(other) => {
                    return Err(bad(
                        format!("{at}.status"),
                        format!("unknown status `{other}`"),
                    ));
                }
            };
            if let Some(p) = m.parent
                && p >= j
            {
                return Err(bad(
                    format!("{at}.parent"),
                    format!("{p} is not an earlier message"),
                ));
            }
            let mut attachments = Vec::with_capacity(m.attachments.len());
            for (k, a) in m.attachments.iter().enumerate() {
                let at = format!("{at}.attachments[{k}]");
                if !IMAGE_TYPES.contains(&a.mime.as_str()) {
                    return Err(bad(
                        format!("{at}.mime"),
                        format!("`{}` is not a supported image type", a.mime),
                    ));
                }
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&a.data_base64)
                    .map_err(|e| bad(format!("{at}.data_base64"), e.to_string()))?;
                if data.is_empty() || data.len() > MAX_ATTACHMENT_BYTES {
                    return Err(bad(
                        format!("{at}.data_base64"),
                        format!("{} bytes", data.len()),
                    ));
                }
                attachments.push(CheckedAttachment {
                    mime: a.mime.clone(),
                    data,
                    width: a.width,
                    height: a.height,
                    text: a.text.clone(),
                });
            }
            messages.push(CheckedMessage {
                role,
                content: m.content.clone(),
                created_at: time(format!("{at}.created_at"), &m.created_at)?,
                parent: m.parent,
                status,
                model: m.model.clone(),
                attachments,
            });
        }
        out.push(Checked {
            conversation: NewConversation {
                title: c.title.clone(),
                model: c.model.clone(),
                system_prompt: c.system_prompt.clone(),
                settings: c.settings.clone(),
            },
            created_at: time(format!("{at}.created_at"), &c.created_at)?,
            pinned: c.pinned,
            archived: c.archived,
            messages,
        });
    }
    Ok(out)
}

impl Store {
    /// Exports the given conversations (all when `None`), oldest first.
    pub async fn export(&self, ids: Option<&[ConversationId]>) -> Result<Export> {
        for id in ids.unwrap_or_default() {
            self.conversation(*id).await?; // NotFound for an unknown id
        }
        let mut list = self.list_conversations(true).await?;
        list.sort_by_key(|c| (c.created_at, c.id));
        let mut conversations = Vec::new();
        for c in list {
            if ids.is_some_and(|ids| !ids.contains(&c.id)) {
                continue;
            }
            let messages = self.messages(c.id).await?;
            let index: std::collections::HashMap<MessageId, usize> = messages
                .iter()
                .enumerate()
                .map(|(i, m)| (m.id, i))
                .collect();
            let mut out = Vec::with_capacity(messages.len());
            for m in &messages {
                let mut attachments = Vec::new();
                for a in self.attachments(m.id).await? {
                    let data = self.attachment_data(&a).await?;
                    attachments.push(ExportAttachment {
                        mime: a.mime,
                        data_base64: base64::engine::general_purpose::STANDARD.encode(data),
                        width: a.width,
                        height: a.height,
                        text: a.text,
                    });
                }
                out.push(ExportMessage {
                    role: m.role.as_str().into(),
                    content: m.content.clone(),
                    created_at: rfc3339(m.created_at),
                    parent: m.parent_id.and_then(|p| index.get(&p).copied()),
                    status: Some(m.status.as_str().into()),
                    model: m.model.clone(),
                    attachments,
                });
            }
            conversations.push(ExportConversation {
                title: c.title,
                model: c.model,
                system_prompt: c.system_prompt,
                settings: c.settings,
                created_at: rfc3339(c.created_at),
                pinned: c.pinned,
                archived: c.archived,
                messages: out,
            });
        }
        Ok(Export {
            format: FORMAT.into(),
            version: VERSION,
            conversations,
        })
    }

    /// Imports an export given as JSON text: all of it, or (on any error)
    /// nothing. Returns the new conversations' ids.
    pub async fn import_json(&self, json: &str) -> Result<Vec<ConversationId>> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| StoreError::InvalidArgument(format!("not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(StoreError::InvalidArgument(
                "not a Lumen history export (expected a JSON object)".into(),
            ));
        }
        let export: Export = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            StoreError::InvalidArgument(format!("{path}: {}", e.inner()))
        })?;
        self.import(&export).await
    }

    /// Imports an export: all of it, or (on any error) nothing. Returns the
    /// new conversations' ids.
    pub async fn import(&self, export: &Export) -> Result<Vec<ConversationId>> {
        let checked = check(export)?;
        // One transaction: an error anywhere imports nothing (files written
        // for it are collected as garbage later).
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let mut ids = Vec::with_capacity(checked.len());
        for c in &checked {
            let settings = c.conversation.settings.to_string();
            let cid = sqlx::query(
                "INSERT INTO conversations (title, model, system_prompt, settings, created_at, updated_at, pinned, archived)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&c.conversation.title)
            .bind(&c.conversation.model)
            .bind(&c.conversation.system_prompt)
            .bind(settings)
            .bind(c.created_at)
            .bind(c.messages.iter().map(|m| m.created_at).max().unwrap_or(c.created_at))
            .bind(c.pinned)
            .bind(c.archived)
            .execute(&mut *tx)
            .await?
            .last_insert_rowid();
            let mut mids: Vec<i64> = Vec::with_capacity(c.messages.len());
            for m in &c.messages {
                let mid = sqlx::query(
                    "INSERT INTO messages (conversation_id, parent_id, role, content, status, model, created_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(cid)
                .bind(m.parent.and_then(|p| mids.get(p).copied()))
                .bind(m.role.as_str())
                .bind(&m.content)
                .bind(m.status.as_str())
                .bind(&m.model)
                .bind(m.created_at)
                .execute(&mut *tx)
                .await?
                .last_insert_rowid();
                mids.push(mid);
                for a in &m.attachments {
                    let sha = self.store_blob(&a.data)?;
                    sqlx::query(
                        "INSERT INTO attachments (message_id, mime, width, height, sha256, bytes, text, created_at)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(mid)
                    .bind(&a.mime)
                    .bind(a.width)
                    .bind(a.height)
                    .bind(&sha)
                    .bind(a.data.len() as i64)
                    .bind(&a.text)
                    .bind(m.created_at)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            ids.push(ConversationId(cid));
        }
        tx.commit().await?;
        Ok(ids)
    }
}
