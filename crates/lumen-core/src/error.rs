//! The one error type that crosses into the UI: a stable code and a
//! message a person can act on.

use serde::Serialize;

/// An error for the UI: `{code, message}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[error("{message}")]
pub struct CoreError {
    /// Stable, for the UI to branch on (`busy`, `model_not_found`, …).
    pub code: String,
    /// What happened and what to do.
    pub message: String,
}

impl CoreError {
    /// An error with a code and a message.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl From<lumen_store::StoreError> for CoreError {
    fn from(e: lumen_store::StoreError) -> Self {
        let code = match &e {
            lumen_store::StoreError::NotFound { .. } => "not_found",
            lumen_store::StoreError::InvalidArgument(_) => "invalid_argument",
            _ => "history",
        };
        Self::new(code, e.to_string())
    }
}

impl From<lumen_hub::HubError> for CoreError {
    fn from(e: lumen_hub::HubError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<lumen_engine::EngineError> for CoreError {
    fn from(e: lumen_engine::EngineError) -> Self {
        Self::new("engine", e.to_string())
    }
}

/// Results of core calls.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
