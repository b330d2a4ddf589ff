//! The Hugging Face cache layout, as `huggingface_hub` writes it:
//!
//! ```text
//! <cache>/models--<owner>--<name>/
//!     blobs/<sha256 or git sha1>            file contents, named by hash
//!     blobs/<hash>.incomplete               a download in progress
//!     refs/<revision>                       the commit a branch or tag points to
//!     snapshots/<commit>/<path>             links to ../../blobs/<hash>
//! ```
//!
//! The cache root is `HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`, so
//! models other tools downloaded are found, and theirs find Lumen's.

use std::path::{Path, PathBuf};

use crate::names::{RepoFile, RepoId, Revision};

/// A non-empty environment variable as a path.
pub(crate) fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Hugging Face's own folder, as `huggingface_hub` finds it: `HF_HOME`,
/// else `XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub(crate) fn hf_home() -> Option<PathBuf> {
    env_path("HF_HOME")
        .or_else(|| env_path("XDG_CACHE_HOME").map(|c| c.join("huggingface")))
        .or_else(|| {
            env_path("HOME")
                .or_else(|| env_path("USERPROFILE"))
                .map(|h| h.join(".cache/huggingface"))
        })
}

/// A Hugging Face cache folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    root: PathBuf,
}

/// Whether `s` names a blob: a SHA-256 (LFS files) or git SHA-1 (others),
/// lowercase hex.
pub fn is_blob_name(s: &str) -> bool {
    (s.len() == 64 || s.len() == 40) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl HubCache {
    /// The cache at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache the environment chooses (see the module docs); `None`
    /// without any of those variables or a home folder.
    pub fn from_env() -> Option<Self> {
        let root = env_path("HF_HUB_CACHE").or_else(|| hf_home().map(|h| h.join("hub")))?;
        Some(Self::new(root))
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `models--owner--name`.
    pub fn repo_dir(&self, repo: &RepoId) -> PathBuf {
        self.root.join(repo.cache_folder())
    }

    /// A blob's path; `None` when `hash` is not a blob name (it came from
    /// the network: never trust it as a path).
    pub fn blob(&self, repo: &RepoId, hash: &str) -> Option<PathBuf> {
        is_blob_name(hash).then(|| self.repo_dir(repo).join("blobs").join(hash))
    }

    /// Where a blob is downloaded before it is complete.
    pub fn incomplete_blob(&self, repo: &RepoId, hash: &str) -> Option<PathBuf> {
        is_blob_name(hash).then(|| {
            self.repo_dir(repo)
                .join("blobs")
                .join(format!("{hash}.incomplete"))
        })
    }

    /// A snapshot folder; `None` unless `commit` is a full commit hash.
    pub fn snapshot_dir(&self, repo: &RepoId, commit: &str) -> Option<PathBuf> {
        (commit.len() == 40 && is_blob_name(commit))
            .then(|| self.repo_dir(repo).join("snapshots").join(commit))
    }

    /// A file of a snapshot.
    pub fn snapshot_file(&self, repo: &RepoId, commit: &str, file: &RepoFile) -> Option<PathBuf> {
        let mut p = self.snapshot_dir(repo, commit)?;
        p.extend(file.parts());
        Some(p)
    }

    /// The commit a branch or tag points to, if recorded (and well formed).
    pub fn read_ref(&self, repo: &RepoId, rev: &Revision) -> Option<String> {
        if rev.is_commit() {
            return Some(rev.as_str().to_string());
        }
        let mut p = self.repo_dir(repo).join("refs");
        p.extend(rev.as_str().split('/'));
        let commit = std::fs::read_to_string(p).ok()?.trim().to_string();
        (commit.len() == 40 && is_blob_name(&commit)).then_some(commit)
    }

    /// Records that `rev` points to `commit`.
    pub fn write_ref(&self, repo: &RepoId, rev: &Revision, commit: &str) -> std::io::Result<()> {
        if commit.len() != 40 || !is_blob_name(commit) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("`{}` is not a commit hash", commit.escape_debug()),
            ));
        }
        let mut p = self.repo_dir(repo).join("refs");
        p.extend(rev.as_str().split('/'));
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(p, commit)
    }

    /// Makes a snapshot's file point at a blob: a relative symbolic link
    /// where the system has them (as `huggingface_hub` does), else a copy.
    pub fn link(
        &self,
        repo: &RepoId,
        commit: &str,
        file: &RepoFile,
        hash: &str,
    ) -> std::io::Result<PathBuf> {
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
        let target = self
            .snapshot_file(repo, commit, file)
            .ok_or_else(|| invalid("bad commit"))?;
        let blob = self
            .blob(repo, hash)
            .ok_or_else(|| invalid("bad blob name"))?;
        if !blob.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not downloaded", blob.display()),
            ));
        }
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
            // A folder on the way that is a link out of the repository
            // (planted, or left by a broken tool) must not take the file
            // elsewhere.
            let inside = std::fs::canonicalize(dir)?
                .starts_with(std::fs::canonicalize(self.repo_dir(repo))?);
            if !inside {
                return Err(invalid(
                    "a folder of the snapshot links outside the repository",
                ));
            }
        }
        if std::fs::symlink_metadata(&target).is_ok() {
            std::fs::remove_file(&target)?;
        }
        #[cfg(unix)]
        {
            // From snapshots/<commit>/<dirs...>/name back up to the repo folder.
            let depth = file.parts().count() + 1;
            let mut rel = PathBuf::new();
            for _ in 0..depth {
                rel.push("..");
            }
            rel.push("blobs");
            rel.push(hash);
            std::os::unix::fs::symlink(rel, &target)?;
        }
        #[cfg(not(unix))]
        {
            std::fs::copy(&blob, &target)?;
        }
        Ok(target)
    }

    /// Repositories present in the cache.
    pub fn repos(&self) -> Vec<RepoId> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<RepoId> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| {
                let rest = n.strip_prefix("models--")?;
                let (owner, name) = rest.split_once("--")?;
                RepoId::parse(&format!("{owner}/{name}")).ok()
            })
            .collect();
        out.sort();
        out
    }

    /// The snapshot commits of a repository.
    pub fn snapshots(&self, repo: &RepoId) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.repo_dir(repo).join("snapshots")) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.len() == 40 && is_blob_name(n))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    const SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn layout_matches_huggingface_hub() {
        let dir = tempfile::tempdir().expect("tmp");
        let cache = HubCache::new(dir.path());
        let repo = RepoId::parse("bartowski/Llama-3.2-1B-Instruct-GGUF").expect("repo");
        let file = RepoFile::parse("sub/Llama-3.2-1B-Instruct-Q4_K_M.gguf").expect("file");
        let blob = cache.blob(&repo, SHA256).expect("blob");
        assert!(blob.ends_with(format!(
            "models--bartowski--Llama-3.2-1B-Instruct-GGUF/blobs/{SHA256}"
        )));
        std::fs::create_dir_all(blob.parent().expect("dir")).expect("mkdir");
        std::fs::write(&blob, b"gguf").expect("write");
        let linked = cache.link(&repo, COMMIT, &file, SHA256).expect("link");
        assert_eq!(std::fs::read(&linked).expect("read through link"), b"gguf");
        #[cfg(unix)]
        assert_eq!(
            std::fs::read_link(&linked).expect("symlink"),
            Path::new("../../../blobs").join(SHA256)
        );
        let main = Revision::parse("main").expect("rev");
        cache.write_ref(&repo, &main, COMMIT).expect("ref");
        assert_eq!(cache.read_ref(&repo, &main).as_deref(), Some(COMMIT));
        assert_eq!(cache.repos(), vec![repo.clone()]);
        assert_eq!(cache.snapshots(&repo), vec![COMMIT.to_string()]);
    }

    #[test]
    fn names_from_the_network_never_become_paths_unchecked() {
        let cache = HubCache::new("/cache");
        let repo = RepoId::parse("a/b").expect("repo");
        for bad in ["../../etc/passwd", "ABCDEF", "", "g".repeat(64).as_str()] {
            assert!(cache.blob(&repo, bad).is_none(), "{bad}");
            assert!(cache.snapshot_dir(&repo, bad).is_none(), "{bad}");
        }
        assert!(
            cache.snapshot_dir(&repo, SHA256).is_none(),
            "a commit has 40 digits"
        );
        assert!(
            cache
                .write_ref(&repo, &Revision::parse("main").expect("rev"), "../x")
                .is_err()
        );
        // A snapshot folder that links outside the repository is refused.
        #[cfg(unix)]
        {
            let dir = tempfile::tempdir().expect("tmp");
            let outside = tempfile::tempdir().expect("tmp");
            let cache = HubCache::new(dir.path());
            let blob = cache.blob(&repo, SHA256).expect("blob");
            std::fs::create_dir_all(blob.parent().expect("dir")).expect("mkdir");
            std::fs::write(&blob, b"x").expect("write");
            let snap = cache.snapshot_dir(&repo, COMMIT).expect("snap");
            std::fs::create_dir_all(&snap).expect("mkdir");
            std::os::unix::fs::symlink(outside.path(), snap.join("sub")).expect("plant");
            let file = RepoFile::parse("sub/model.gguf").expect("file");
            let err = cache
                .link(&repo, COMMIT, &file, SHA256)
                .expect_err("escape");
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
            assert!(
                std::fs::read_dir(outside.path())
                    .expect("ls")
                    .next()
                    .is_none()
            );
        }
        // Linking a blob that was never downloaded is an error, not a
        // dangling link.
        let dir = tempfile::tempdir().expect("tmp");
        let cache = HubCache::new(dir.path());
        let file = RepoFile::parse("model.gguf").expect("file");
        let err = cache
            .link(&repo, COMMIT, &file, SHA256)
            .expect_err("no blob");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
