//! The store's error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed an operation.
    #[error("history database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration could not be applied.
    #[error("history database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A file or folder could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The conversation, message or attachment does not exist.
    #[error("{what} {id} does not exist")]
    NotFound {
        /// What was looked for.
        what: &'static str,
        /// Its id.
        id: i64,
    },
    /// A caller passed something unusable.
    #[error("{0}")]
    InvalidArgument(String),
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The store's result type.
pub type Result<T> = std::result::Result<T, StoreError>;
