//! Attachments (images dropped into a chat): metadata in the database, the
//! bytes in a content-addressed folder beside it (`attachments/ab/abcd…`,
//! named by SHA-256), so an image attached twice is stored once. Files no
//! message refers to any more are deleted with the last conversation that
//! used them.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{ConversationId, MessageId, Result, Store, StoreError, now_ms};

/// Largest attachment accepted (bytes).
pub const MAX_ATTACHMENT_BYTES: usize = 64 << 20;

/// Unreferenced files younger than this are kept by garbage collection
/// (their row may be about to be inserted).
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Image types the app attaches.
pub const IMAGE_TYPES: [&str; 5] = [
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/gif",
    "image/bmp",
];

/// An attachment's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct AttachmentId(pub i64);

/// What to attach.
#[derive(Debug, Clone, Copy)]
pub struct NewAttachment<'a> {
    /// MIME type, one of [`IMAGE_TYPES`].
    pub mime: &'a str,
    /// Pixel size, when known.
    pub width: Option<u32>,
    /// Pixel size, when known.
    pub height: Option<u32>,
    /// The file's bytes.
    pub data: &'a [u8],
    /// A small preview image, if the caller made one.
    pub thumbnail: Option<&'a [u8]>,
    /// Searchable text: a description or OCR of the image.
    pub text: &'a str,
}

/// A stored attachment (without its bytes; see [`Store::attachment_data`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Its id.
    pub id: AttachmentId,
    /// The message it belongs to.
    pub message_id: MessageId,
    /// MIME type.
    pub mime: String,
    /// Pixel width.
    pub width: Option<u32>,
    /// Pixel height.
    pub height: Option<u32>,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Preview image.
    pub thumbnail: Option<Vec<u8>>,
    /// Searchable text.
    pub text: String,
    /// Created, Unix milliseconds.
    pub created_at: i64,
}

/// An [`Attachment`] from a row of the `attachments` table.
fn attachment_row(r: &sqlx::sqlite::SqliteRow) -> Result<Attachment> {
    Ok(Attachment {
        id: AttachmentId(r.try_get("id")?),
        message_id: MessageId(r.try_get("message_id")?),
        mime: r.try_get("mime")?,
        width: r.try_get("width")?,
        height: r.try_get("height")?,
        sha256: r.try_get("sha256")?,
        bytes: r.try_get::<i64, _>("bytes")?.max(0) as u64,
        thumbnail: r.try_get("thumbnail")?,
        text: r.try_get("text")?,
        created_at: r.try_get("created_at")?,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    fn attachments_dir(&self) -> PathBuf {
        self.dir().join("attachments")
    }

    fn blob_path(&self, sha256: &str) -> Result<PathBuf> {
        // Names come from our own hashes, or from the database: check them
        // before they become paths.
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::InvalidArgument(format!(
                "`{sha256}` is not a SHA-256"
            )));
        }
        Ok(self.attachments_dir().join(&sha256[..2]).join(sha256))
    }

    /// Writes `data` into the content-addressed folder unless it is already
    /// there; returns its SHA-256.
    pub(crate) fn store_blob(&self, data: &[u8]) -> Result<String> {
        let sha256 = hex(&Sha256::digest(data));
        let path = self.blob_path(&sha256)?;
        if !path.is_file() {
            write_atomically(&path, data)?;
        }
        Ok(sha256)
    }

    /// Attaches an image to a message; the bytes are written once per
    /// distinct content, and a row never points at a missing file.
    pub async fn add_attachment(
        &self,
        message: MessageId,
        new: &NewAttachment<'_>,
    ) -> Result<AttachmentId> {
        if !IMAGE_TYPES.contains(&new.mime) {
            return Err(StoreError::InvalidArgument(format!(
                "attachments of type `{}` are not supported (images: PNG, JPEG, WebP, GIF, BMP)",
                new.mime
            )));
        }
        if new.data.is_empty() || new.data.len() > MAX_ATTACHMENT_BYTES {
            return Err(StoreError::InvalidArgument(format!(
                "an attachment must have 1 byte to {} MB, not {} bytes",
                MAX_ATTACHMENT_BYTES >> 20,
                new.data.len()
            )));
        }
        let sha256 = hex(&Sha256::digest(new.data));
        // Row first (it checks the message exists), then the file, then
        // commit: a failure leaves neither a row without a file nor a file
        // without a row.
        // IMMEDIATE: take the write lock up front, so a busy database is
        // waited for (busy timeout) rather than failing on the upgrade.
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let exists = sqlx::query("SELECT 1 FROM messages WHERE id = ?")
            .bind(message.0)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !exists {
            tx.rollback().await?;
            return Err(StoreError::NotFound {
                what: "message",
                id: message.0,
            });
        }
        let id = sqlx::query(
            "INSERT INTO attachments (message_id, mime, width, height, sha256, bytes, thumbnail, text, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(message.0)
        .bind(new.mime)
        .bind(new.width)
        .bind(new.height)
        .bind(&sha256)
        .bind(new.data.len() as i64)
        .bind(new.thumbnail)
        .bind(new.text)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
        self.store_blob(new.data)?;
        tx.commit().await?;
        Ok(AttachmentId(id))
    }

    /// A message's attachments, in the order they were added.
    pub async fn attachments(&self, message: MessageId) -> Result<Vec<Attachment>> {
        let rows = sqlx::query(
            "SELECT id, message_id, mime, width, height, sha256, bytes, thumbnail, text, created_at
             FROM attachments WHERE message_id = ? ORDER BY id",
        )
        .bind(message.0)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(attachment_row).collect()
    }

    /// Every attachment of a conversation's messages, in the order they were
    /// added, in one query (opening a conversation needs them all).
    pub async fn conversation_attachments(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<Attachment>> {
        let rows = sqlx::query(
            "SELECT a.id, a.message_id, a.mime, a.width, a.height, a.sha256, a.bytes,
                    a.thumbnail, a.text, a.created_at
             FROM attachments a JOIN messages m ON m.id = a.message_id
             WHERE m.conversation_id = ? ORDER BY a.id",
        )
        .bind(conversation.0)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(attachment_row).collect()
    }

    /// An attachment's bytes, checked against its hash (a file damaged on
    /// disk is reported, not returned).
    pub async fn attachment_data(&self, attachment: &Attachment) -> Result<Vec<u8>> {
        let path = self.blob_path(&attachment.sha256)?;
        let data = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        if hex(&Sha256::digest(&data)) != attachment.sha256 {
            return Err(StoreError::InvalidArgument(format!(
                "{} is damaged: its contents no longer match their SHA-256",
                path.display()
            )));
        }
        Ok(data)
    }

    /// Sets an attachment's searchable text (a description or OCR).
    pub async fn set_attachment_text(&self, id: AttachmentId, text: &str) -> Result<()> {
        let done = sqlx::query("UPDATE attachments SET text = ? WHERE id = ?")
            .bind(text)
            .bind(id.0)
            .execute(self.pool())
            .await?;
        crate::history::found(&done, "attachment", id.0)?;
        Ok(())
    }

    /// Deletes attachment files that no attachment row refers to; returns
    /// how many. Runs after deletions; safe to run any time.
    pub async fn collect_garbage(&self) -> Result<usize> {
        let root = self.attachments_dir();
        if !root.is_dir() {
            return Ok(0);
        }
        let used: std::collections::HashSet<String> =
            sqlx::query("SELECT DISTINCT sha256 FROM attachments")
                .fetch_all(self.pool())
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>("sha256"))
                .collect::<std::result::Result<_, _>>()?;
        let mut removed = 0;
        for shard in std::fs::read_dir(&root).map_err(|e| StoreError::io(&root, e))? {
            let shard = shard.map_err(|e| StoreError::io(&root, e))?.path();
            if !shard.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&shard).map_err(|e| StoreError::io(&shard, e))? {
                let file = file.map_err(|e| StoreError::io(&shard, e))?.path();
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
                // A file written for an attachment whose row is not yet
                // inserted looks unused: leave young files alone. Leftover
                // temporary files are garbage too, once old.
                let young = std::fs::metadata(&file)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age < GRACE);
                if !used.contains(name) && !young {
                    std::fs::remove_file(&file).map_err(|e| StoreError::io(&file, e))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so the
/// file is either absent or complete.
fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| StoreError::InvalidArgument(format!("{} has no folder", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    // Unique per writer: two chats may attach the same image at once.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}-{n}.partial", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| StoreError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))
}
