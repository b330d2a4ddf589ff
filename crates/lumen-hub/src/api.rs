//! The Hugging Face Hub's HTTP API, the parts a downloader needs:
//!
//! - `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`: the
//!   commit a revision points to and every file with its size and hash;
//! - `GET {endpoint}/{repo}/resolve/{commit}/{path}`: the file, often by a
//!   redirect to a CDN, with `X-Repo-Commit`, `X-Linked-Etag` and
//!   `X-Linked-Size` on the Hub's own answer, and `Range` honoured.
//!
//! Everything in an answer is treated as hostile until checked: sizes are
//! bounded, hashes must look like hashes, file names must pass
//! [`RepoFile::parse`], and an answer body is read to at most
//! [`MAX_API_BODY`] bytes.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::cache::is_blob_name;
use crate::error::HubError;
use crate::hash::FileHash;
use crate::names::{RepoFile, RepoId, Revision};
use crate::token::Token;

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The most an API answer may weigh (the largest real repositories list a
/// few thousand files, well under this).
pub const MAX_API_BODY: usize = 16 << 20;

/// A client for one Hub endpoint.
#[derive(Clone)]
pub struct HubClient {
    endpoint: String,
    token: Option<Token>,
    http: reqwest::Client,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token)
            .finish()
    }
}

/// One file of a repository revision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RemoteFile {
    /// Path inside the repository.
    pub path: RepoFile,
    /// Size in bytes.
    pub size: u64,
    /// The hash its bytes must have.
    pub hash: FileHash,
}

/// A repository at one commit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RepoInfo {
    /// The repository.
    pub repo: RepoId,
    /// The full commit hash the revision points to.
    pub commit: String,
    /// Its files, sorted by path (unusable names left out).
    pub files: Vec<RemoteFile>,
    /// Whether the repository is gated (licence to accept first).
    pub gated: bool,
    /// The licence named in its model card, if any.
    pub license: Option<String>,
}

impl RepoInfo {
    /// The file at `path`.
    pub fn file(&self, path: &str) -> Option<&RemoteFile> {
        self.files.iter().find(|f| f.path.as_str() == path)
    }

    /// Bytes in all files.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

#[derive(Deserialize)]
struct ApiModel {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<ApiSibling>,
    #[serde(default)]
    gated: serde_json::Value,
    #[serde(rename = "cardData", default)]
    card: Option<ApiCard>,
}

#[derive(Deserialize)]
struct ApiCard {
    license: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ApiSibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<ApiLfs>,
}

#[derive(Deserialize)]
struct ApiLfs {
    sha256: String,
    size: u64,
}

/// The endpoint the environment chooses: `HF_ENDPOINT`, else the public Hub.
pub fn endpoint_from_env() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

impl HubClient {
    /// A client for `endpoint` (`https://huggingface.co` or a mirror),
    /// sending `token` when there is one. TLS certificates are always
    /// verified (the system's roots and Mozilla's).
    pub fn new(endpoint: &str, token: Option<Token>) -> Result<Self, HubError> {
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&endpoint).map_err(|e| HubError::InvalidResponse {
            url: endpoint.clone(),
            reason: format!("not a valid endpoint URL: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HubError::InvalidResponse {
                url: endpoint,
                reason: "the endpoint must be an http(s) URL".into(),
            });
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("lumen/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(20))
            // Redirects are followed by hand: the Hub's own answer carries
            // the headers, and the token must not travel to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| HubError::InvalidResponse {
                url: endpoint.clone(),
                reason: format!("cannot create an HTTP client: {e}"),
            })?;
        Ok(Self {
            endpoint,
            token,
            http,
        })
    }

    /// The endpoint, without a trailing slash.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether a token is sent.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The repository's page, where a gated licence is accepted.
    pub fn page(&self, repo: &RepoId) -> String {
        format!("{}/{repo}", self.endpoint)
    }

    /// The URL of a file at a commit.
    pub fn resolve_url(&self, repo: &RepoId, commit: &str, file: &RepoFile) -> String {
        let path: Vec<String> = file.parts().map(percent_encode).collect();
        format!(
            "{}/{repo}/resolve/{}/{}",
            self.endpoint,
            percent_encode(commit),
            path.join("/")
        )
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The `Authorization` header for a request to `url`: only to the
    /// endpoint's own host, never to a CDN it redirects to.
    pub(crate) fn auth_for(&self, url: &reqwest::Url) -> Option<HeaderValue> {
        let token = self.token.as_ref()?;
        let endpoint = reqwest::Url::parse(&self.endpoint).ok()?;
        if url.origin() != endpoint.origin() {
            return None;
        }
        let mut v = HeaderValue::from_str(&format!("Bearer {}", token.secret())).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// The commit `revision` points to and the files there.
    pub async fn repo_info(
        &self,
        repo: &RepoId,
        revision: &Revision,
    ) -> Result<RepoInfo, HubError> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}?blobs=true",
            self.endpoint,
            percent_encode(revision.as_str())
        );
        let resp = self
            .send_once(reqwest::Method::GET, &url, || {
                format!("the file list of `{repo}`")
            })
            .await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.status_error(
                repo,
                Some(revision),
                None,
                &url,
                status,
                resp.headers(),
            ));
        }
        let body =
            read_capped(resp, MAX_API_BODY)
                .await
                .map_err(|reason| HubError::InvalidResponse {
                    url: url.clone(),
                    reason,
                })?;
        parse_repo_info(repo, &body).map_err(|reason| HubError::InvalidResponse { url, reason })
    }

    /// Checks that `file` can be downloaded (for a gated repository: that
    /// its licence was accepted and the token is good), with a `HEAD` on
    /// the file, so a refusal comes before any download starts.
    pub async fn check_access(
        &self,
        repo: &RepoId,
        commit: &str,
        file: &RepoFile,
    ) -> Result<(), HubError> {
        let url = self.resolve_url(repo, commit, file);
        let resp = self
            .send_once(reqwest::Method::HEAD, &url, || {
                format!("`{file}` of `{repo}`")
            })
            .await?;
        let status = resp.status();
        if matches!(status.as_u16(), 401 | 403 | 404) {
            return Err(self.status_error(repo, None, Some(file), &url, status, resp.headers()));
        }
        Ok(())
    }

    /// One request to the Hub, with the token; no retries (the caller
    /// decides), no redirects followed.
    async fn send_once(
        &self,
        method: reqwest::Method,
        url: &str,
        what: impl FnOnce() -> String,
    ) -> Result<reqwest::Response, HubError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| HubError::InvalidResponse {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let mut req = self.http.request(method, parsed.clone());
        if let Some(auth) = self.auth_for(&parsed) {
            req = req.header(header::AUTHORIZATION, auth);
        }
        req.send().await.map_err(|e| HubError::Network {
            what: what(),
            attempts: 1,
            reason: error_chain(&e),
        })
    }

    /// Turns a failed status into the error a user can act on.
    pub(crate) fn status_error(
        &self,
        repo: &RepoId,
        revision: Option<&Revision>,
        file: Option<&RepoFile>,
        url: &str,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> HubError {
        let code = headers
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let message = headers
            .get("x-error-message")
            .and_then(|v| v.to_str().ok())
            .map(|m| m.chars().take(200).collect::<String>())
            .unwrap_or_default();
        match (status.as_u16(), code) {
            (_, "GatedRepo") | (403, _) => HubError::Gated {
                repo: repo.to_string(),
                page: self.page(repo),
                has_token: self.has_token(),
            },
            (401, "RepoNotFound") | (404, "RepoNotFound") => HubError::RepoNotFound {
                repo: repo.to_string(),
                endpoint: self.endpoint.clone(),
            },
            (401, _) if self.has_token() => HubError::BadToken {
                repo: repo.to_string(),
            },
            (401, _) => HubError::Gated {
                repo: repo.to_string(),
                page: self.page(repo),
                has_token: false,
            },
            (404, "RevisionNotFound") => HubError::RevisionNotFound {
                repo: repo.to_string(),
                revision: revision.map(|r| r.to_string()).unwrap_or_default(),
            },
            (404, "EntryNotFound") => HubError::FileNotFound {
                repo: repo.to_string(),
                file: file.map(|f| f.to_string()).unwrap_or_default(),
                choices: Vec::new(),
            },
            (404, _) if file.is_none() && revision.is_some_and(|r| r.as_str() != "main") => {
                HubError::RevisionNotFound {
                    repo: repo.to_string(),
                    revision: revision.map(|r| r.to_string()).unwrap_or_default(),
                }
            }
            (404, _) if file.is_none() => HubError::RepoNotFound {
                repo: repo.to_string(),
                endpoint: self.endpoint.clone(),
            },
            (s, _) => HubError::Http {
                status: s,
                url: url.to_string(),
                message,
            },
        }
    }
}

/// Reads a body, refusing more than `cap` bytes.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(format!("the answer is larger than {cap} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > cap {
            return Err(format!("the answer is larger than {cap} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Checks and converts the API's answer.
pub(crate) fn parse_repo_info(repo: &RepoId, body: &[u8]) -> Result<RepoInfo, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let model: ApiModel =
        serde_path_to_error::deserialize(de).map_err(|e| format!("malformed JSON: {e}"))?;
    let commit = model.sha.ok_or("no commit hash (`sha`)")?;
    if commit.len() != 40 || !is_blob_name(&commit) {
        return Err(format!("`{}` is not a commit hash", commit.escape_debug()));
    }
    let mut files = Vec::with_capacity(model.siblings.len());
    for s in model.siblings {
        let Ok(path) = RepoFile::parse(&s.rfilename) else {
            tracing::warn!(repo = %repo, file = %s.rfilename.escape_debug(), "ignoring an unusable file name");
            continue;
        };
        let (size, hash) = match (s.lfs, s.blob_id) {
            (Some(lfs), _) => {
                let sha = lfs.sha256.to_ascii_lowercase();
                if sha.len() != 64 || !is_blob_name(&sha) {
                    return Err(format!("`{path}` has a malformed sha256"));
                }
                (lfs.size, FileHash::Sha256(sha))
            }
            (None, Some(blob)) => {
                let blob = blob.to_ascii_lowercase();
                if blob.len() != 40 || !is_blob_name(&blob) {
                    return Err(format!("`{path}` has a malformed blob id"));
                }
                let size = s
                    .size
                    .ok_or_else(|| format!("`{path}` has no size (was `?blobs=true` honoured?)"))?;
                (size, FileHash::GitSha1(blob))
            }
            (None, None) => {
                return Err(format!(
                    "`{path}` has no hash (was `?blobs=true` honoured?)"
                ));
            }
        };
        files.push(RemoteFile { path, size, hash });
    }
    files.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
    files.dedup_by(|a, b| a.path == b.path);
    let gated = match model.gated {
        serde_json::Value::Bool(b) => b,
        serde_json::Value::String(s) => !s.is_empty(),
        _ => false,
    };
    let license = model
        .card
        .and_then(|c| c.license)
        .and_then(|l| match l {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Array(v) => v.first().and_then(|s| s.as_str()).map(String::from),
            _ => None,
        })
        .map(|s| s.chars().take(100).collect());
    Ok(RepoInfo {
        repo: repo.clone(),
        commit,
        files,
        gated,
        license,
    })
}

/// The error and its causes, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters kept).
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn repo() -> RepoId {
        RepoId::parse("owner/model").expect("repo")
    }

    #[test]
    fn parses_the_hub_answer_and_drops_unsafe_names() {
        let body = serde_json::json!({
            "id": "owner/model",
            "sha": COMMIT,
            "gated": "manual",
            "cardData": {"license": "llama3.2"},
            "siblings": [
                {"rfilename": "model.safetensors", "size": 10, "blobId": "a".repeat(40),
                 "lfs": {"sha256": "B".repeat(64), "size": 10, "pointerSize": 134}},
                {"rfilename": "config.json", "size": 3, "blobId": "c".repeat(40)},
                {"rfilename": "../../etc/passwd", "size": 3, "blobId": "d".repeat(40)},
                {"rfilename": "/abs", "size": 3, "blobId": "d".repeat(40)},
            ]
        });
        let info = parse_repo_info(&repo(), body.to_string().as_bytes()).expect("parse");
        assert_eq!(info.commit, COMMIT);
        assert!(info.gated);
        assert_eq!(info.license.as_deref(), Some("llama3.2"));
        let names: Vec<&str> = info.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["config.json", "model.safetensors"]);
        assert_eq!(info.files[1].hash, FileHash::Sha256("b".repeat(64)));
        assert_eq!(info.total_size(), 13);
    }

    #[test]
    fn hostile_answers_are_errors() {
        let cases = [
            ("", "malformed"),
            ("{", "malformed"),
            ("[]", "malformed"),
            (r#"{"siblings": []}"#, "no commit"),
            (r#"{"sha": "../../x", "siblings": []}"#, "not a commit"),
            (
                &format!(
                    r#"{{"sha": "{COMMIT}", "siblings": [{{"rfilename": "a", "size": -1, "blobId": "{}"}}]}}"#,
                    "a".repeat(40)
                ),
                "malformed",
            ),
            (
                &format!(
                    r#"{{"sha": "{COMMIT}", "siblings": [{{"rfilename": "a", "lfs": {{"sha256": "../x", "size": 1}}}}]}}"#
                ),
                "malformed sha256",
            ),
            (
                &format!(r#"{{"sha": "{COMMIT}", "siblings": [{{"rfilename": "a"}}]}}"#),
                "no hash",
            ),
        ];
        for (body, want) in cases {
            let err = parse_repo_info(&repo(), body.as_bytes()).expect_err(body);
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn urls_are_encoded_and_tokens_stay_home() {
        let client = HubClient::new("https://hub.example/", Some(Token::new("hf_secret".into())))
            .expect("client");
        let file = RepoFile::parse("sub dir/a+b.gguf").expect("file");
        assert_eq!(
            client.resolve_url(&repo(), COMMIT, &file),
            format!("https://hub.example/owner/model/resolve/{COMMIT}/sub%20dir/a%2Bb.gguf")
        );
        let home = reqwest::Url::parse("https://hub.example/x").expect("url");
        let cdn = reqwest::Url::parse("https://cdn.example/x").expect("url");
        assert!(client.auth_for(&home).is_some());
        assert!(client.auth_for(&cdn).is_none());
        assert!(!format!("{client:?}").contains("hf_secret"));
        assert!(HubClient::new("file:///etc", None).is_err());
        assert!(HubClient::new("not a url", None).is_err());
    }
}
