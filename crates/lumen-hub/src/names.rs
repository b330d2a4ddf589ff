//! Names that come from the network or the user and become paths:
//! checked before they touch the filesystem. No `..`, no absolute paths or
//! drive letters, no backslashes, no control characters, nothing empty.

use std::fmt;

/// A name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} `{value}` is not valid: {why}")]
pub struct NameError {
    /// What kind of name.
    pub what: &'static str,
    /// The name (control characters escaped).
    pub value: String,
    /// Why not.
    pub why: &'static str,
}

fn error(what: &'static str, value: &str, why: &'static str) -> NameError {
    NameError {
        what,
        value: value.escape_debug().to_string(),
        why,
    }
}

/// The characters the Hub allows in an owner or repository name.
fn hub_name_ok(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 96
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !part.starts_with(['.', '-'])
        && !part.ends_with('.')
        && !part.contains("..")
}

/// A Hugging Face model repository id, `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoId {
    owner: String,
    name: String,
}

impl RepoId {
    /// Checks and parses `owner/name`.
    pub fn parse(id: &str) -> Result<Self, NameError> {
        let bad = |why| error("repository id", id, why);
        let (owner, name) = id
            .split_once('/')
            .ok_or_else(|| bad("expected owner/name"))?;
        if !hub_name_ok(owner) || !hub_name_ok(name) {
            return Err(bad(
                "use letters, digits, '-', '_' and '.', not starting with '.' or '-'",
            ));
        }
        Ok(Self {
            owner: owner.into(),
            name: name.into(),
        })
    }

    /// `owner`.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// `name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cache folder's name: `models--owner--name`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}--{}", self.owner, self.name)
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// A branch, tag or commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Revision(String);

impl Revision {
    /// Checks a revision name; `refs/pr/N` is allowed (it is a file under
    /// `refs/` in the cache).
    pub fn parse(rev: &str) -> Result<Self, NameError> {
        let bad = |why| error("revision", rev, why);
        if rev.is_empty() || rev.len() > 255 {
            return Err(bad("empty or too long"));
        }
        for part in rev.split('/') {
            if part.is_empty() || part == "." || part == ".." {
                return Err(bad("empty, '.' or '..' path parts"));
            }
            if !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(bad("use letters, digits, '-', '_', '.' and '/'"));
            }
        }
        Ok(Self(rev.into()))
    }

    /// Whether this is a full commit hash (40 hex digits).
    pub fn is_commit(&self) -> bool {
        self.0.len() == 40 && self.0.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A file's path inside a repository, `/`-separated and relative.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoFile(String);

impl RepoFile {
    /// Checks a path from a repository listing or the user.
    pub fn parse(path: &str) -> Result<Self, NameError> {
        let bad = |why| error("file path", path, why);
        if path.is_empty() || path.len() > 1024 {
            return Err(bad("empty or too long"));
        }
        if path.starts_with('/') {
            return Err(bad("absolute paths are not allowed"));
        }
        if path.contains('\\') {
            return Err(bad("backslashes are not allowed"));
        }
        if path.chars().any(char::is_control) {
            return Err(bad("control characters are not allowed"));
        }
        let first = path.split('/').next().unwrap_or_default();
        if first.len() >= 2 && first.as_bytes()[1] == b':' {
            return Err(bad("drive letters are not allowed"));
        }
        for part in path.split('/') {
            if part.is_empty() || part == "." || part == ".." {
                return Err(bad("empty, '.' or '..' path parts are not allowed"));
            }
        }
        Ok(Self(path.into()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path's parts, for joining onto a folder.
    pub fn parts(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for RepoFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Names cross into JSON (events, the desktop app) as their text.
macro_rules! serialize_as_text {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_text!(RepoId, Revision, RepoFile);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        let r = RepoId::parse("meta-llama/Llama-3.2-11B-Vision-Instruct").expect("valid");
        assert_eq!(
            r.cache_folder(),
            "models--meta-llama--Llama-3.2-11B-Vision-Instruct"
        );
        assert_eq!(r.to_string(), "meta-llama/Llama-3.2-11B-Vision-Instruct");
        for bad in [
            "",
            "llama",
            "a/b/c",
            "../x",
            "a/..",
            "a/.hidden",
            "/abs",
            "a/",
            "a b/c",
            "a/b\0",
            "a/b\\c",
            "C:/x",
            "a/-x",
            "a/x.",
        ] {
            assert!(RepoId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn revisions() {
        assert!(Revision::parse("main").is_ok());
        assert!(Revision::parse("refs/pr/12").is_ok());
        let c = Revision::parse("0123456789abcdef0123456789abcdef01234567").expect("commit");
        assert!(c.is_commit());
        for bad in ["", "../main", "a//b", "main/..", "x y", "/main", "a\\b"] {
            assert!(Revision::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_paths() {
        let f = RepoFile::parse("original/params.json").expect("valid");
        assert_eq!(f.parts().collect::<Vec<_>>(), ["original", "params.json"]);
        assert!(RepoFile::parse("Llama-3.2-1B-Instruct-Q4_K_M.gguf").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "C:/Windows",
            "c:evil",
            "a\\..\\b",
            "a\nb",
            "a/\u{7f}",
        ] {
            let err = RepoFile::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("file path"), "{err}");
        }
    }
}
