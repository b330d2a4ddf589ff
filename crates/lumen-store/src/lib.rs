//! Lumen's chat history: conversations, messages and attachments in SQLite
//! (through sqlx, with SQLite's FTS5 full-text index), kept on the user's
//! machine.
//!
//! ```no_run
//! # async fn demo() -> lumen_store::Result<()> {
//! use lumen_store::{NewConversation, Role, Store};
//! let store = Store::open(&lumen_store::data_dir()?).await?;
//! let chat = store.create_conversation(&NewConversation::titled("Invoices")).await?;
//! store.add_message(chat, None, Role::User, "What is the total?").await?;
//! let hits = store.search("total", &Default::default(), 0).await?;
//! # Ok(()) }
//! ```
//!
//! - The schema lives in the repository's `migrations/` folder and is
//!   applied at [`Store::open`] (forward only).
//! - WAL journal, a busy timeout and a small connection pool: concurrent
//!   writers wait for each other instead of failing with "database is
//!   locked".
//! - An assistant reply is stored as `streaming` while it is generated
//!   ([`StreamingMessage`]: batched writes, not one per token); any reply
//!   still `streaming` when the store is next opened became `cancelled`.
//! - [`Store::search`] accepts whatever the user types (see [`search`]).

pub mod attachments;
mod error;
mod history;
pub mod markdown;
pub mod search;
pub mod transfer;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use attachments::{Attachment, AttachmentId, NewAttachment};
pub use error::{Result, StoreError};
pub use history::{
    Conversation, ConversationId, Message, MessageId, MessageStats, NewConversation, Role, Status,
    StreamingMessage,
};
pub use search::{SearchFilters, SearchHit};

/// The database file's name inside the data folder.
pub const DATABASE_FILE: &str = "history.sqlite3";

/// An open chat-history database. Cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the history in `dir`, applies pending
    /// migrations and marks replies left `streaming` by a previous run as
    /// `cancelled`.
    pub async fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let path = dir.join(DATABASE_FILE);
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // With sqlx 0.9, a statement that fails (a constraint violation,
            // say) leaves its connection inside a transaction: later reads
            // on it see an old snapshot and its next write fails with
            // SQLITE_BUSY_SNAPSHOT ("database is locked"). End any such
            // transaction before the connection is used again
            // (`failed_statements_leave_no_stale_connection` in the tests).
            .after_release(|conn, _| {
                Box::pin(async move {
                    if sqlx::query("ROLLBACK").execute(&mut *conn).await.is_ok() {
                        tracing::debug!(
                            "rolled back a transaction left open by a failed statement"
                        );
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        sqlx::migrate!("../../migrations").run(&pool).await?;
        let store = Self {
            pool,
            dir: dir.to_path_buf(),
        };
        let recovered = store.recover_interrupted().await?;
        if recovered > 0 {
            tracing::info!("{recovered} interrupted replies marked cancelled");
        }
        Ok(store)
    }

    /// The data folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The connection pool, for callers that need raw access (tests,
    /// maintenance).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection (pending writes are committed).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Lumen's data folder: `LUMEN_DATA_DIR` when set, else the platform's
/// convention (`~/.local/share/lumen` on Linux, `~/Library/Application
/// Support/app.lumen.Lumen` on macOS, `%APPDATA%\lumen\Lumen\data` on
/// Windows).
pub fn data_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("LUMEN_DATA_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    default_data_dir().ok_or_else(|| {
        StoreError::InvalidArgument(
            "no home folder found; set LUMEN_DATA_DIR to choose where history is kept".into(),
        )
    })
}

/// The platform's data folder (`~/.local/share/lumen` on Linux), whatever
/// `LUMEN_DATA_DIR` says; `None` without a home folder.
pub fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("app", "lumen", "Lumen").map(|d| d.data_dir().to_path_buf())
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
