//! The Hugging Face token, for gated and private repositories.
//!
//! Lumen keeps it in the OS keyring (macOS Keychain, Windows Credential
//! Manager, the Secret Service on Linux) and never writes it to a plain
//! file or a log: [`Token`]'s `Debug` hides it. Looked up in this order:
//! the `HF_TOKEN` environment variable, the keyring, then the token file
//! `huggingface-cli login` writes (`HF_TOKEN_PATH`, else `HF_HOME/token`,
//! else `~/.cache/huggingface/token`), read but never written, so a user
//! who already signed in with Hugging Face's tools is signed in here too.

use std::path::PathBuf;

use crate::error::HubError;

/// The keyring service name.
const SERVICE: &str = "lumen";
/// The keyring entry.
const ACCOUNT: &str = "huggingface-token";

/// A secret token. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum TokenSource {
    /// The `HF_TOKEN` environment variable.
    Environment,
    /// The OS keyring.
    Keyring,
    /// The token file of Hugging Face's own tools.
    HuggingFaceFile,
}

impl Token {
    /// Wraps a secret (trimmed).
    pub fn new(secret: String) -> Self {
        Self(secret.trim().to_string())
    }

    /// Checks that `secret` can be a token: one line of visible ASCII.
    pub fn parse(secret: &str) -> Result<Self, HubError> {
        let s = secret.trim();
        if s.is_empty() || s.len() > 1024 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(HubError::Keyring(
                "that is not a Hugging Face token (expected one line like hf_…)".into(),
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The secret, for the `Authorization` header only.
    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

fn entry() -> Result<keyring::Entry, HubError> {
    keyring::Entry::new(SERVICE, ACCOUNT).map_err(|e| HubError::Keyring(e.to_string()))
}

/// The token to use, and where it came from; `None` when signed out.
pub fn load() -> Option<(Token, TokenSource)> {
    if let Some(t) = std::env::var("HF_TOKEN")
        .ok()
        .and_then(|t| Token::parse(&t).ok())
    {
        return Some((t, TokenSource::Environment));
    }
    if let Some(t) = entry()
        .ok()
        .and_then(|e| e.get_password().ok())
        .and_then(|t| Token::parse(&t).ok())
    {
        return Some((t, TokenSource::Keyring));
    }
    let file = huggingface_token_file()?;
    let t = std::fs::read_to_string(file).ok()?;
    Token::parse(&t)
        .ok()
        .map(|t| (t, TokenSource::HuggingFaceFile))
}

/// Stores `token` in the OS keyring.
pub fn save(token: &Token) -> Result<(), HubError> {
    entry()?
        .set_password(token.secret())
        .map_err(|e| HubError::Keyring(e.to_string()))
}

/// Removes the token from the OS keyring (the environment variable and
/// Hugging Face's own file are the user's to change). `Ok(false)` when
/// there was none.
pub fn delete() -> Result<bool, HubError> {
    match entry()?.delete_credential() {
        Ok(()) => Ok(true),
        Err(keyring::Error::NoEntry) => Ok(false),
        Err(e) => Err(HubError::Keyring(e.to_string())),
    }
}

fn huggingface_token_file() -> Option<PathBuf> {
    crate::cache::env_path("HF_TOKEN_PATH")
        .or_else(|| crate::cache::hf_home().map(|h| h.join("token")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_printed() {
        let t = Token::parse("  hf_abcDEF123\n").expect("token");
        assert_eq!(t.secret(), "hf_abcDEF123");
        assert_eq!(format!("{t:?}"), "Token(<hidden>)");
        for bad in ["", "  ", "hf_a b", "hf_\u{7f}", "hf_é"] {
            assert!(Token::parse(bad).is_err(), "{bad:?}");
        }
    }
}
