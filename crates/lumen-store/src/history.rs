//! Conversations and messages: create, list, rename, pin, delete, and
//! assistant replies written while they stream.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{Result, Store, StoreError, now_ms};

/// A conversation's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ConversationId(pub i64);

/// A message's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct MessageId(pub i64);

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

impl Role {
    /// The name stored in the database and used in exports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }

    /// Parses a stored or imported role name.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "system" => Self::System,
            "user" => Self::User,
            "assistant" => Self::Assistant,
            "tool" => Self::Tool,
            other => {
                return Err(StoreError::InvalidArgument(format!(
                    "unknown role `{other}` (expected system, user, assistant or tool)"
                )));
            }
        })
    }
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum Status {
    /// Being generated.
    Streaming,
    /// Finished normally.
    Complete,
    /// Stopped early (by the user, or the app ended mid-reply).
    Cancelled,
    /// Generation failed; see the message's `error`.
    Error,
}

impl Status {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Streaming => "streaming",
            Self::Complete => "complete",
            Self::Cancelled => "cancelled",
            Self::Error => "error",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "streaming" => Self::Streaming,
            "complete" => Self::Complete,
            "cancelled" => Self::Cancelled,
            "error" => Self::Error,
            other => {
                return Err(StoreError::InvalidArgument(format!(
                    "unknown message status `{other}`"
                )));
            }
        })
    }
}

/// What a new conversation starts with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewConversation {
    /// Display title.
    pub title: String,
    /// The model it is held with.
    pub model: Option<String>,
    /// System prompt.
    pub system_prompt: Option<String>,
    /// Sampling settings (a JSON object; `{}` for the model's defaults).
    pub settings: serde_json::Value,
}

impl NewConversation {
    /// A conversation with just a title.
    pub fn titled(title: &str) -> Self {
        Self {
            title: title.to_string(),
            settings: serde_json::json!({}),
            ..Self::default()
        }
    }
}

/// A stored conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Conversation {
    /// Its id.
    pub id: ConversationId,
    /// Display title.
    pub title: String,
    /// The model it is held with.
    pub model: Option<String>,
    /// System prompt.
    pub system_prompt: Option<String>,
    /// Sampling settings (a JSON object).
    #[cfg_attr(feature = "ts", ts(type = "Record<string, unknown>"))]
    pub settings: serde_json::Value,
    /// Created, Unix milliseconds.
    pub created_at: i64,
    /// Last changed (a message added, renamed), Unix milliseconds.
    pub updated_at: i64,
    /// Shown first.
    pub pinned: bool,
    /// Hidden from the default list.
    pub archived: bool,
}

/// Token counts and timings of a generated reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct MessageStats {
    /// Prompt tokens.
    pub prompt_tokens: Option<i64>,
    /// Generated tokens.
    pub completion_tokens: Option<i64>,
    /// Time to first token.
    pub ttft_ms: Option<f64>,
    /// Decoding speed.
    pub decode_tok_s: Option<f64>,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Message {
    /// Its id.
    pub id: MessageId,
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// The message it follows (branches share a parent).
    pub parent_id: Option<MessageId>,
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// Where it is in its life.
    pub status: Status,
    /// Why generation failed, for `Status::Error`.
    pub error: Option<String>,
    /// The model that wrote it (assistant messages).
    pub model: Option<String>,
    /// Token counts and timings (assistant messages).
    pub stats: MessageStats,
    /// Created, Unix milliseconds.
    pub created_at: i64,
}

/// `NotFound` when a statement about one row changed none.
pub(crate) fn found(
    done: &sqlx::sqlite::SqliteQueryResult,
    what: &'static str,
    id: i64,
) -> Result<()> {
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound { what, id });
    }
    Ok(())
}

// Column lists as macros: sqlx takes only static SQL (no format!).
macro_rules! conversation_columns {
    () => {
        "id, title, model, system_prompt, settings, created_at, updated_at, pinned, archived"
    };
}

macro_rules! message_columns {
    () => {
        "id, conversation_id, parent_id, role, content, status, error, model, \
         prompt_tokens, completion_tokens, ttft_ms, decode_tok_s, created_at"
    };
}

fn conversation_from(row: &SqliteRow) -> Result<Conversation> {
    let settings: String = row.try_get("settings")?;
    Ok(Conversation {
        id: ConversationId(row.try_get("id")?),
        title: row.try_get("title")?,
        model: row.try_get("model")?,
        system_prompt: row.try_get("system_prompt")?,
        // Written by us as JSON; an unreadable value means defaults.
        settings: serde_json::from_str(&settings).unwrap_or_else(|_| serde_json::json!({})),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        pinned: row.try_get("pinned")?,
        archived: row.try_get("archived")?,
    })
}

fn message_from(row: &SqliteRow) -> Result<Message> {
    Ok(Message {
        id: MessageId(row.try_get("id")?),
        conversation_id: ConversationId(row.try_get("conversation_id")?),
        parent_id: row.try_get::<Option<i64>, _>("parent_id")?.map(MessageId),
        role: Role::parse(row.try_get("role")?)?,
        content: row.try_get("content")?,
        status: Status::parse(row.try_get("status")?)?,
        error: row.try_get("error")?,
        model: row.try_get("model")?,
        stats: MessageStats {
            prompt_tokens: row.try_get("prompt_tokens")?,
            completion_tokens: row.try_get("completion_tokens")?,
            ttft_ms: row.try_get("ttft_ms")?,
            decode_tok_s: row.try_get("decode_tok_s")?,
        },
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Starts a conversation.
    pub async fn create_conversation(&self, new: &NewConversation) -> Result<ConversationId> {
        if !new.settings.is_object() && !new.settings.is_null() {
            return Err(StoreError::InvalidArgument(
                "conversation settings must be a JSON object".into(),
            ));
        }
        let settings = match &new.settings {
            serde_json::Value::Null => "{}".to_string(),
            v => v.to_string(),
        };
        let now = now_ms();
        let id = sqlx::query(
            "INSERT INTO conversations (title, model, system_prompt, settings, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&new.title)
        .bind(&new.model)
        .bind(&new.system_prompt)
        .bind(settings)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?
        .last_insert_rowid();
        Ok(ConversationId(id))
    }

    /// One conversation.
    pub async fn conversation(&self, id: ConversationId) -> Result<Conversation> {
        let row = sqlx::query(concat!(
            "SELECT ",
            conversation_columns!(),
            " FROM conversations WHERE id = ?"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound {
            what: "conversation",
            id: id.0,
        })?;
        conversation_from(&row)
    }

    /// Conversations, pinned first, then most recently changed.
    pub async fn list_conversations(&self, include_archived: bool) -> Result<Vec<Conversation>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            conversation_columns!(),
            " FROM conversations WHERE archived = 0 OR ?
              ORDER BY pinned DESC, updated_at DESC, id DESC"
        ))
        .bind(include_archived)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(conversation_from).collect()
    }

    /// Renames a conversation.
    pub async fn rename_conversation(&self, id: ConversationId, title: &str) -> Result<()> {
        self.update_conversation(
            id,
            "UPDATE conversations SET title = ?, updated_at = ? WHERE id = ?",
            title,
        )
        .await
    }

    /// Pins or unpins a conversation.
    pub async fn set_pinned(&self, id: ConversationId, pinned: bool) -> Result<()> {
        self.update_conversation(
            id,
            "UPDATE conversations SET pinned = ?, updated_at = ? WHERE id = ?",
            pinned,
        )
        .await
    }

    /// Changes a conversation's system prompt (`None` for none) and
    /// sampling settings (a JSON object). Not an activity: the
    /// conversation keeps its place in the list.
    pub async fn set_conversation_settings(
        &self,
        id: ConversationId,
        system_prompt: Option<&str>,
        settings: &serde_json::Value,
    ) -> Result<()> {
        if !settings.is_object() {
            return Err(StoreError::InvalidArgument(
                "conversation settings must be a JSON object".into(),
            ));
        }
        let done =
            sqlx::query("UPDATE conversations SET system_prompt = ?, settings = ? WHERE id = ?")
                .bind(system_prompt)
                .bind(settings.to_string())
                .bind(id.0)
                .execute(&self.pool)
                .await?;
        found(&done, "conversation", id.0)?;
        Ok(())
    }

    /// Archives or restores a conversation.
    pub async fn set_archived(&self, id: ConversationId, archived: bool) -> Result<()> {
        self.update_conversation(
            id,
            "UPDATE conversations SET archived = ?, updated_at = ? WHERE id = ?",
            archived,
        )
        .await
    }

    /// Runs `sql` (`UPDATE conversations SET x = ?, updated_at = ? WHERE
    /// id = ?`) for one conversation.
    async fn update_conversation<T>(
        &self,
        id: ConversationId,
        sql: &'static str,
        value: T,
    ) -> Result<()>
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + Send,
    {
        let done = sqlx::query(sql)
            .bind(value)
            .bind(now_ms())
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        found(&done, "conversation", id.0)?;
        Ok(())
    }

    /// Deletes a conversation with its messages, their attachments and
    /// their search-index entries.
    pub async fn delete_conversation(&self, id: ConversationId) -> Result<()> {
        let done = sqlx::query("DELETE FROM conversations WHERE id = ?")
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        found(&done, "conversation", id.0)?;
        self.collect_garbage().await?;
        Ok(())
    }

    /// Adds a complete message.
    pub async fn add_message(
        &self,
        conversation: ConversationId,
        parent: Option<MessageId>,
        role: Role,
        content: &str,
    ) -> Result<MessageId> {
        self.insert_message(conversation, parent, role, content, Status::Complete, None)
            .await
    }

    async fn insert_message(
        &self,
        conversation: ConversationId,
        parent: Option<MessageId>,
        role: Role,
        content: &str,
        status: Status,
        model: Option<&str>,
    ) -> Result<MessageId> {
        let now = now_ms();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let touched = sqlx::query("UPDATE conversations SET updated_at = ? WHERE id = ?")
            .bind(now)
            .bind(conversation.0)
            .execute(&mut *tx)
            .await?;
        if touched.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::NotFound {
                what: "conversation",
                id: conversation.0,
            });
        }
        let id = sqlx::query(
            "INSERT INTO messages (conversation_id, parent_id, role, content, status, model, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(conversation.0)
        .bind(parent.map(|p| p.0))
        .bind(role.as_str())
        .bind(content)
        .bind(status.as_str())
        .bind(model)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
        tx.commit().await?;
        Ok(MessageId(id))
    }

    /// A conversation's messages, oldest first (every branch).
    pub async fn messages(&self, conversation: ConversationId) -> Result<Vec<Message>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE conversation_id = ? ORDER BY id"
        ))
        .bind(conversation.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(message_from).collect()
    }

    /// One message.
    pub async fn message(&self, id: MessageId) -> Result<Message> {
        let row = sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE id = ?"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound {
            what: "message",
            id: id.0,
        })?;
        message_from(&row)
    }

    /// Starts an assistant reply that is written as it streams.
    pub async fn begin_reply(
        &self,
        conversation: ConversationId,
        parent: Option<MessageId>,
        model: Option<&str>,
    ) -> Result<StreamingMessage> {
        let id = self
            .insert_message(
                conversation,
                parent,
                Role::Assistant,
                "",
                Status::Streaming,
                model,
            )
            .await?;
        Ok(StreamingMessage {
            store: self.clone(),
            id,
            text: String::new(),
            flushed: 0,
            last_flush: Instant::now(),
        })
    }

    /// Marks replies left `streaming` (the app ended mid-reply) as
    /// `cancelled`; returns how many.
    pub(crate) async fn recover_interrupted(&self) -> Result<u64> {
        Ok(
            sqlx::query("UPDATE messages SET status = 'cancelled' WHERE status = 'streaming'")
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}

/// How often a streaming reply's text is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// An assistant reply being generated: text is kept in memory and written
/// every [`FLUSH_INTERVAL`], so a crash loses at most that much; the
/// message is indexed for search once it is finished, cancelled or failed.
#[derive(Debug)]
pub struct StreamingMessage {
    store: Store,
    id: MessageId,
    text: String,
    flushed: usize,
    last_flush: Instant,
}

impl StreamingMessage {
    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Appends a piece of the reply; writes when the last write is older
    /// than [`FLUSH_INTERVAL`].
    pub async fn push(&mut self, piece: &str) -> Result<()> {
        self.text.push_str(piece);
        if self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the text so far now.
    pub async fn flush(&mut self) -> Result<()> {
        if self.flushed != self.text.len() {
            sqlx::query("UPDATE messages SET content = ? WHERE id = ?")
                .bind(&self.text)
                .bind(self.id.0)
                .execute(&self.store.pool)
                .await?;
            self.flushed = self.text.len();
        }
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Finishes the reply with its statistics.
    pub async fn finish(self, stats: MessageStats) -> Result<MessageId> {
        self.end(Status::Complete, None, stats).await
    }

    /// Ends the reply early, keeping what was generated.
    pub async fn cancel(self) -> Result<MessageId> {
        self.end(Status::Cancelled, None, MessageStats::default())
            .await
    }

    /// Ends the reply with an error, keeping what was generated.
    pub async fn fail(self, error: &str) -> Result<MessageId> {
        self.end(Status::Error, Some(error), MessageStats::default())
            .await
    }

    async fn end(self, status: Status, error: Option<&str>, s: MessageStats) -> Result<MessageId> {
        sqlx::query(
            "UPDATE messages SET content = ?, status = ?, error = ?, prompt_tokens = ?,
                 completion_tokens = ?, ttft_ms = ?, decode_tok_s = ?
             WHERE id = ?",
        )
        .bind(&self.text)
        .bind(status.as_str())
        .bind(error)
        .bind(s.prompt_tokens)
        .bind(s.completion_tokens)
        .bind(s.ttft_ms)
        .bind(s.decode_tok_s)
        .bind(self.id.0)
        .execute(&self.store.pool)
        .await?;
        Ok(self.id)
    }
}
