//! The engine's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
///
/// Errors about a file always name the file, so that a user who picked the
/// wrong download can tell which one it was.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The file or folder could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// The file is not a well-formed model file (truncated, corrupt, or lying
    /// about its own contents).
    #[error("{}: not a valid model file: {reason}", path.display())]
    InvalidModel {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The model is well-formed but is not a Llama-architecture model.
    #[error("{}: unsupported model architecture `{architecture}` (Lumen runs Llama-architecture models)", path.display())]
    UnsupportedArchitecture {
        /// The model file or folder.
        path: PathBuf,
        /// The architecture it declares.
        architecture: String,
    },

    /// A tensor uses a storage type the engine cannot compute with.
    #[error("{}: tensor `{tensor}` is stored as {dtype}, which Lumen does not support", path.display())]
    UnsupportedTensorType {
        /// The model file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The type's name as llama.cpp calls it.
        dtype: String,
    },

    /// A tensor the architecture needs is absent or has the wrong shape.
    #[error("{}: tensor `{tensor}`: {reason}", path.display())]
    BadTensor {
        /// The model file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong (missing, wrong shape, ...).
        reason: String,
    },

    /// The tokenizer could not be built or failed on some input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// An image could not be decoded or is unusable (corrupt, unsupported
    /// format, empty, or too large).
    #[error("image: {0}")]
    Image(String),

    /// The chat template failed to parse or to render.
    #[error("chat template: {0}")]
    Template(String),

    /// A prompt does not fit in the model's context window.
    #[error(
        "the prompt needs {needed} tokens but the context holds {limit}; shorten the conversation or start a new one"
    )]
    ContextOverflow {
        /// Tokens the prompt needs.
        needed: usize,
        /// The context length in tokens.
        limit: usize,
    },

    /// A caller passed something that makes no sense (an empty prompt, a
    /// token id outside the vocabulary, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The requested compute device is unavailable.
    #[error("device: {0}")]
    Device(String),

    /// An error from candle while computing.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, EngineError>;

impl EngineError {
    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::InvalidModel {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::BadTensor {
            path: path.into(),
            tensor: tensor.into(),
            reason: reason.into(),
        }
    }
}
