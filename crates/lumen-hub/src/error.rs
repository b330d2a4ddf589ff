//! What can go wrong, in words a user can act on.

use std::path::PathBuf;

use crate::names::NameError;

/// A download manager error. Every variant's message says what happened
/// and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The repository is gated and the request was not allowed.
    #[error(
        "`{repo}` is gated: accept its licence at {page} (signed in to Hugging Face){}",
        if *has_token { ", and check that your token can read gated repositories; approval can take a while" }
        else { ", then add a Hugging Face token (`lumen models login`)" }
    )]
    Gated {
        /// The repository.
        repo: String,
        /// Its page on the Hub, where the licence is accepted.
        page: String,
        /// Whether a token was sent.
        has_token: bool,
    },
    /// The token was refused.
    #[error(
        "the Hub refused the Hugging Face token for `{repo}` (invalid or expired): add a new one with `lumen models login`"
    )]
    BadToken {
        /// The repository asked for.
        repo: String,
    },
    /// No such repository (or a private one without access).
    #[error(
        "`{repo}` was not found on {endpoint} (check the spelling; private repositories need a token)"
    )]
    RepoNotFound {
        /// The repository.
        repo: String,
        /// The Hub asked.
        endpoint: String,
    },
    /// No such branch, tag or commit.
    #[error("`{repo}` has no revision `{revision}`")]
    RevisionNotFound {
        /// The repository.
        repo: String,
        /// The revision asked for.
        revision: String,
    },
    /// No such file in the repository.
    #[error("`{repo}` has no file `{file}`{}", choices_hint(choices))]
    FileNotFound {
        /// The repository.
        repo: String,
        /// The file asked for.
        file: String,
        /// Files that could be meant.
        choices: Vec<String>,
    },
    /// Several model files and none chosen.
    #[error(
        "`{repo}` has several model files; choose one as `{repo}:FILE`:{}",
        list(choices)
    )]
    ChooseFile {
        /// The repository.
        repo: String,
        /// The model files.
        choices: Vec<String>,
    },
    /// An HTTP status with no better explanation.
    #[error("{url} answered HTTP {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Http {
        /// The status code.
        status: u16,
        /// The URL asked.
        url: String,
        /// The server's explanation, if short and given.
        message: String,
    },
    /// The network failed and retrying did not help.
    #[error("downloading {what} failed after {attempts} attempts: {reason}")]
    Network {
        /// What was being fetched.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// The Hub's answer made no sense (malformed, hostile or truncated).
    #[error("unexpected answer from {url}: {reason}")]
    InvalidResponse {
        /// The URL asked.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The downloaded bytes are not the file the Hub listed.
    #[error(
        "`{file}` is corrupt: its {algorithm} is {actual}, the Hub lists {expected}; the partial download was deleted, try again"
    )]
    HashMismatch {
        /// The file.
        file: String,
        /// `sha256` or `git sha1`.
        algorithm: &'static str,
        /// The hash the Hub lists.
        expected: String,
        /// The hash of what arrived.
        actual: String,
    },
    /// Not enough disk space to start.
    #[error(
        "not enough disk space in {}: the download needs {} more, {} is free",
        path.display(), human_bytes(*needed), human_bytes(*free)
    )]
    NoSpace {
        /// The folder downloads go to.
        path: PathBuf,
        /// Bytes still to download.
        needed: u64,
        /// Bytes free there.
        free: u64,
    },
    /// A repository, revision or file name that cannot be used.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A model file or folder that cannot be imported.
    #[error("cannot import {}: {reason}", path.display())]
    Import {
        /// What was offered.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// A model name that is neither in the catalogue nor a repository id.
    #[error("`{name}` is neither a catalogue model nor a Hugging Face repository (owner/name); the catalogue has: {}", known.join(", "))]
    UnknownModel {
        /// The name given.
        name: String,
        /// What could be meant.
        known: Vec<String>,
    },
    /// No installed model by that name.
    #[error(
        "`{0}` is not installed (see `lumen models list --installed`, or `lumen models pull {0}`)"
    )]
    NotInstalled(String),
    /// The OS keyring could not be used.
    #[error(
        "the system keyring is unavailable ({0}); set the HF_TOKEN environment variable instead"
    )]
    Keyring(String),
    /// Another process is downloading the same file.
    #[error(
        "`{file}` is being downloaded by another program (another Lumen window or `lumen models pull`); wait for it to finish or stop it"
    )]
    Busy {
        /// The file.
        file: String,
    },
    /// The download was cancelled.
    #[error("the download was cancelled")]
    Cancelled,
}

impl HubError {
    /// A stable code for the desktop app's `{code, message}` errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Gated { .. } => "gated",
            Self::BadToken { .. } => "bad_token",
            Self::RepoNotFound { .. } => "repo_not_found",
            Self::RevisionNotFound { .. } => "revision_not_found",
            Self::FileNotFound { .. } => "file_not_found",
            Self::ChooseFile { .. } => "choose_file",
            Self::Http { .. } => "http",
            Self::Network { .. } => "network",
            Self::InvalidResponse { .. } => "invalid_response",
            Self::HashMismatch { .. } => "hash_mismatch",
            Self::NoSpace { .. } => "no_space",
            Self::Name(_) => "invalid_name",
            Self::Io { .. } => "io",
            Self::Import { .. } => "import",
            Self::UnknownModel { .. } => "unknown_model",
            Self::NotInstalled(_) => "not_installed",
            Self::Keyring(_) => "keyring",
            Self::Busy { .. } => "busy",
            Self::Cancelled => "cancelled",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

fn list(items: &[String]) -> String {
    items.iter().map(|c| format!("\n  {c}")).collect()
}

fn choices_hint(choices: &[String]) -> String {
    if choices.is_empty() {
        String::new()
    } else {
        format!("; it has:{}", list(choices))
    }
}

/// `1.5 GB`, `820 MB`, `12 kB`, `7 B` (decimal units, as disks are sold).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    if v < 10.0 {
        format!("{v:.2} {unit}")
    } else if v < 100.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(7), "7 B");
        assert_eq!(human_bytes(12_345), "12.3 kB");
        assert_eq!(human_bytes(807_694_464), "808 MB");
        assert_eq!(human_bytes(42_520_000_000), "42.5 GB");
        assert_eq!(human_bytes(1_500_000_000), "1.50 GB");
    }

    #[test]
    fn gated_message_says_what_to_do() {
        let e = HubError::Gated {
            repo: "meta-llama/Llama-3.2-1B-Instruct".into(),
            page: "https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct".into(),
            has_token: false,
        };
        let m = e.to_string();
        assert!(
            m.contains(
                "accept its licence at https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct"
            ),
            "{m}"
        );
        assert!(m.contains("lumen models login"), "{m}");
        assert_eq!(e.code(), "gated");
    }
}
