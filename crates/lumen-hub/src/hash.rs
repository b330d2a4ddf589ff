//! The hashes the Hub lists: SHA-256 for LFS files (model weights), the git
//! blob SHA-1 for small files kept in git (configs, tokenizers). Both are
//! computed while the bytes arrive, so a download is never read twice.
//!
//! The digests are ring's (OpenSSL's assembly, with SHA extensions and AVX2
//! where the CPU has them): on CPUs without SHA extensions, SHA-256 bounds
//! the speed of a verified download, and ring's is about twice as fast as
//! a portable implementation.

use ring::digest;

/// The hash a file must have.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "algorithm", content = "hex", rename_all = "snake_case")]
pub enum FileHash {
    /// SHA-256 of the contents (LFS files); 64 lowercase hex digits.
    Sha256(String),
    /// Git's blob id: SHA-1 of `blob <len>\0` + contents; 40 hex digits.
    GitSha1(String),
}

impl FileHash {
    /// The hex digest, which is also the file's blob name in the cache.
    pub fn hex(&self) -> &str {
        match self {
            Self::Sha256(h) | Self::GitSha1(h) => h,
        }
    }

    /// `sha256` or `git sha1`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Sha256(_) => "sha256",
            Self::GitSha1(_) => "git sha1",
        }
    }

    /// A hasher for a file of `size` bytes.
    pub fn hasher(&self, size: u64) -> Hasher {
        match self {
            Self::Sha256(_) => Hasher(digest::Context::new(&digest::SHA256)),
            Self::GitSha1(_) => {
                let mut h = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
                h.update(format!("blob {size}\0").as_bytes());
                Hasher(h)
            }
        }
    }
}

/// A running hash (for git blob ids, the header is already fed).
#[derive(Clone)]
pub struct Hasher(digest::Context);

impl Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The lowercase hex digest.
    pub fn finish(self) -> String {
        hex(self.0.finish().as_ref())
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let h = FileHash::GitSha1("ce013625030ba8dba906f756967f9e9ca394464a".into());
        let mut hasher = h.hasher(6);
        hasher.update(b"hello\n");
        assert_eq!(hasher.finish(), h.hex());
        // `printf 'test' | sha256sum`
        let h = FileHash::Sha256(
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        );
        let mut hasher = h.hasher(4);
        hasher.update(b"te");
        hasher.update(b"st");
        assert_eq!(hasher.finish(), h.hex());
    }
}
