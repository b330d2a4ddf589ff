//! A local stand-in for the Hugging Face Hub, for download tests and
//! benchmarks: a real HTTP/1.1 server on loopback that speaks the
//! endpoints Lumen uses, and misbehaves on request.
//!
//! - `GET /api/models/{repo}/revision/{rev}?blobs=true`: the file list with
//!   sizes, git blob ids and LFS SHA-256s, as the Hub answers it;
//! - `GET|HEAD /{repo}/resolve/{rev}/{path}`: small files served directly
//!   (`ETag` = git blob id), LFS files redirected to a second listener —
//!   a different origin, like the Hub's CDN — after headers
//!   `X-Repo-Commit`, `X-Linked-Etag` and `X-Linked-Size`;
//! - the CDN serves `Range: bytes=N-` with 206 / `Content-Range`, and 416
//!   past the end;
//! - gated repositories list their files to anyone but answer `resolve` with
//!   401 without a token and 403 with a wrong
//!   one (`X-Error-Code: GatedRepo`), unknown ones 404 `RepoNotFound`.
//!
//! Faults ([`Fault`]) are queued and each is spent on the next file
//! request: a connection dropped after N bytes, a stall, a flipped byte,
//! an error status, an ignored or wrong range, too many bytes, endless
//! redirects. Every request is logged ([`Logged`]) for assertions.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha1::Digest as _;

/// A misbehaviour for one file request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection after this many body bytes.
    Drop {
        /// Body bytes sent first.
        after: u64,
    },
    /// Send nothing for a while after this many body bytes, then go on.
    Stall {
        /// Body bytes sent first.
        after: u64,
        /// How long to stall.
        duration: Duration,
    },
    /// Flip the bits of the byte at this offset of the file.
    Corrupt {
        /// File offset.
        at: u64,
    },
    /// Answer this status with an empty body (e.g. 500, 503, 429).
    Status(u16),
    /// Answer 200 with the whole file, ignoring `Range`.
    IgnoreRange,
    /// Answer 206 for a range starting elsewhere.
    WrongRange,
    /// Send a few bytes more than the file has (no `Content-Length`).
    TooLong,
    /// Redirect to the same URL, forever.
    RedirectLoop,
    /// Answer 416 whatever the range.
    RangeNotSatisfiable,
    /// The Hub's `resolve` answer names another commit (and, for LFS
    /// files, another size and hash): the repository changed under the
    /// client, or the answer is forged. Spent by `resolve`, not the CDN.
    ForeignCommit,
}

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// `GET` or `HEAD`.
    pub method: String,
    /// The path (with query).
    pub path: String,
    /// Whether it reached the CDN listener.
    pub cdn: bool,
    /// The `Range` header.
    pub range: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
}

/// A file in a test repository.
#[derive(Debug, Clone)]
pub struct HubFile {
    /// Path in the repository.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex (listed for LFS files).
    pub sha256: String,
    /// Git blob id, hex.
    pub git_sha1: String,
    /// Stored in LFS (redirected to the CDN, listed with its SHA-256).
    pub lfs: bool,
    content: Content,
}

#[derive(Debug, Clone)]
enum Content {
    Bytes(Arc<[u8]>),
    File(PathBuf),
}

impl HubFile {
    /// A file with these bytes; LFS when it is a weights file or larger
    /// than 10 MB (as the Hub's defaults).
    pub fn bytes(path: &str, bytes: Vec<u8>) -> Self {
        let lfs = is_lfs_name(path) || bytes.len() > 10_000_000;
        let sha256 = hex(&sha2::Sha256::digest(&bytes));
        let mut git = sha1::Sha1::new();
        git.update(format!("blob {}\0", bytes.len()).as_bytes());
        git.update(&bytes);
        Self {
            path: path.into(),
            size: bytes.len() as u64,
            sha256,
            git_sha1: hex(&git.finalize()),
            lfs,
            content: Content::Bytes(Arc::from(bytes)),
        }
    }

    /// A file on disk, served from there (for files too big for memory),
    /// always in LFS; its hashes are computed now.
    pub fn from_disk(path: &str, file: impl Into<PathBuf>) -> std::io::Result<Self> {
        let file = file.into();
        let mut f = std::fs::File::open(&file)?;
        let size = f.metadata()?.len();
        let mut sha = sha2::Sha256::new();
        let mut git = sha1::Sha1::new();
        git.update(format!("blob {size}\0").as_bytes());
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            git.update(&buf[..n]);
        }
        Ok(Self {
            path: path.into(),
            size,
            sha256: hex(&sha.finalize()),
            git_sha1: hex(&git.finalize()),
            lfs: true,
            content: Content::File(file),
        })
    }
}

fn is_lfs_name(path: &str) -> bool {
    [".safetensors", ".gguf", ".bin", ".pth", ".pt", ".onnx"]
        .iter()
        .any(|ext| path.ends_with(ext))
}

/// A repository.
#[derive(Debug, Clone)]
pub struct HubRepo {
    /// `owner/name`.
    pub id: String,
    /// The commit `main` points to (40 hex digits).
    pub commit: String,
    /// Its files.
    pub files: Vec<HubFile>,
    /// Gated: needs the server's token.
    pub gated: bool,
    /// An API answer to send instead of the real one (hostile-input tests).
    pub api_override: Option<Vec<u8>>,
}

impl HubRepo {
    /// A public repository at a commit derived from its id.
    pub fn new(id: &str, files: Vec<HubFile>) -> Self {
        let commit = hex(&sha1::Sha1::digest(id.as_bytes()));
        Self {
            id: id.into(),
            commit,
            files,
            gated: false,
            api_override: None,
        }
    }

    /// The same, gated.
    pub fn gated(mut self) -> Self {
        self.gated = true;
        self
    }
}

#[derive(Default)]
struct State {
    repos: HashMap<String, HubRepo>,
    faults: VecDeque<Fault>,
    log: Vec<Logged>,
    token: Option<String>,
    rate_limit: Option<u64>,
}

/// The running server; stops when dropped.
pub struct TestHub {
    hub: SocketAddr,
    cdn: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl TestHub {
    /// Starts on two loopback ports (the Hub and its CDN).
    pub fn start() -> std::io::Result<Self> {
        let hub_listener = TcpListener::bind("127.0.0.1:0")?;
        let cdn_listener = TcpListener::bind("127.0.0.1:0")?;
        let hub = hub_listener.local_addr()?;
        let cdn = cdn_listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        for (listener, is_cdn) in [(hub_listener, false), (cdn_listener, true)] {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    let server = Server { state, hub, cdn };
                    std::thread::spawn(move || server.serve(conn, is_cdn));
                }
            });
        }
        Ok(Self {
            hub,
            cdn,
            state,
            stop,
        })
    }

    /// The Hub's URL, e.g. `http://127.0.0.1:41234` (use as `HF_ENDPOINT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.hub)
    }

    /// The CDN URL of an LFS file (what `curl` fetches in the benchmark).
    pub fn cdn_url(&self, repo: &str, sha256: &str) -> String {
        format!("http://{}/cdn/{repo}/{sha256}", self.cdn)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or replaces) a repository.
    pub fn add_repo(&self, repo: HubRepo) {
        self.lock().repos.insert(repo.id.clone(), repo);
    }

    /// The token gated repositories accept.
    pub fn set_token(&self, token: Option<&str>) {
        self.lock().token = token.map(String::from);
    }

    /// Limits file bodies to about this many bytes per second.
    pub fn set_rate_limit(&self, bytes_per_s: Option<u64>) {
        self.lock().rate_limit = bytes_per_s;
    }

    /// Queues faults for the next file requests, one each.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().faults.extend(faults);
    }

    /// Faults not yet spent.
    pub fn pending_faults(&self) -> usize {
        self.lock().faults.len()
    }

    /// Requests so far.
    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// Forgets the requests so far.
    pub fn clear_log(&self) {
        self.lock().log.clear();
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loops.
        let _ = TcpStream::connect(self.hub);
        let _ = TcpStream::connect(self.cdn);
    }
}

struct Server {
    state: Arc<Mutex<State>>,
    hub: SocketAddr,
    cdn: SocketAddr,
}

struct Request {
    method: String,
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

/// An answer's status line and headers.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
        }
    }

    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut s = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("Connection: close\r\n\r\n");
        out.write_all(s.as_bytes())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut range = None;
    let mut authorization = None;
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => authorization = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    Some(Request {
        method,
        path,
        range,
        authorization,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Server {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serve(&self, mut conn: TcpStream, is_cdn: bool) {
        let _ = conn.set_nodelay(true);
        let Some(req) = read_request(&conn) else {
            return;
        };
        self.lock().log.push(Logged {
            method: req.method.clone(),
            path: req.path.clone(),
            cdn: is_cdn,
            range: req.range.clone(),
            authorization: req.authorization.clone(),
        });
        // A failed write means the client went away: nothing to do.
        let _ = self.answer(&mut conn, &req, is_cdn);
        let _ = conn.flush();
    }

    fn answer(&self, conn: &mut TcpStream, req: &Request, is_cdn: bool) -> std::io::Result<()> {
        let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
        let segments: Option<Vec<String>> = path
            .trim_start_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let Some(segments) = segments else {
            return Head::new(400).write(conn);
        };
        let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (is_cdn, seg.as_slice()) {
            (true, ["cdn", owner, name, sha]) => {
                let file = self
                    .lock()
                    .repos
                    .get(&format!("{owner}/{name}"))
                    .and_then(|r| r.files.iter().find(|f| f.sha256 == *sha).cloned());
                match file {
                    Some(f) => self.send_file(conn, req, &f, Vec::new()),
                    None => Head::new(404).write(conn),
                }
            }
            (false, ["api", "models", owner, name, "revision", rev]) => {
                let repo = format!("{owner}/{name}");
                self.api(conn, req, &repo, rev, query.contains("blobs=true"))
            }
            (false, [owner, name, "resolve", rev, file @ ..]) if !file.is_empty() => {
                let repo = format!("{owner}/{name}");
                self.resolve(conn, req, &repo, rev, &file.join("/"))
            }
            _ => Head::new(404).write(conn),
        }
    }

    /// The repository at `rev` if the request may see it, else the error
    /// answer. Gated repositories' listings are public (as on the Hub);
    /// their files are not (`gate`).
    fn repo_at(&self, req: &Request, id: &str, rev: &str, gate: bool) -> Result<HubRepo, Head> {
        let repo = self.repo_for(req, id, gate)?;
        if rev != "main" && rev != repo.commit {
            return Err(Head::new(404).header("X-Error-Code", "RevisionNotFound"));
        }
        Ok(repo)
    }

    /// The repository if the request may see it, else the error answer.
    fn repo_for(&self, req: &Request, id: &str, gate: bool) -> Result<HubRepo, Head> {
        let state = self.lock();
        let Some(repo) = state.repos.get(id) else {
            return Err(Head::new(404)
                .header("X-Error-Code", "RepoNotFound")
                .header("X-Error-Message", "Repository not found"));
        };
        if repo.gated && gate {
            let want = state.token.as_ref().map(|t| format!("Bearer {t}"));
            match (&req.authorization, want) {
                (Some(got), Some(want)) if *got == want => {}
                (None, _) => {
                    return Err(Head::new(401)
                        .header("X-Error-Code", "GatedRepo")
                        .header("X-Error-Message", "Access to this model is restricted"));
                }
                _ => {
                    return Err(Head::new(403)
                        .header("X-Error-Code", "GatedRepo")
                        .header("X-Error-Message", "Access to this model is restricted"));
                }
            }
        }
        Ok(repo.clone())
    }

    fn api(
        &self,
        conn: &mut TcpStream,
        req: &Request,
        id: &str,
        rev: &str,
        blobs: bool,
    ) -> std::io::Result<()> {
        let repo = match self.repo_at(req, id, rev, false) {
            Ok(r) => r,
            Err(head) => return head.write(conn),
        };
        let body = match &repo.api_override {
            Some(b) => b.clone(),
            None => {
                let siblings: Vec<serde_json::Value> = repo
                    .files
                    .iter()
                    .map(|f| {
                        let mut v = serde_json::json!({ "rfilename": f.path });
                        if blobs {
                            v["size"] = f.size.into();
                            v["blobId"] = f.git_sha1.clone().into();
                            if f.lfs {
                                v["lfs"] = serde_json::json!({
                                    "sha256": f.sha256, "size": f.size, "pointerSize": 134
                                });
                            }
                        }
                        v
                    })
                    .collect();
                serde_json::json!({
                    "_id": "0",
                    "id": repo.id,
                    "sha": repo.commit,
                    "private": false,
                    "gated": if repo.gated { serde_json::json!("manual") } else { serde_json::json!(false) },
                    "cardData": { "license": "llama3.2" },
                    "siblings": siblings,
                })
                .to_string()
                .into_bytes()
            }
        };
        Head::new(200)
            .header("Content-Type", "application/json")
            .header("Content-Length", body.len().to_string())
            .write(conn)?;
        if req.method != "HEAD" {
            conn.write_all(&body)?;
        }
        Ok(())
    }

    fn resolve(
        &self,
        conn: &mut TcpStream,
        req: &Request,
        id: &str,
        rev: &str,
        path: &str,
    ) -> std::io::Result<()> {
        let repo = match self.repo_at(req, id, rev, true) {
            Ok(r) => r,
            Err(head) => return head.write(conn),
        };
        let Some(file) = repo.files.iter().find(|f| f.path == path) else {
            return Head::new(404)
                .header("X-Error-Code", "EntryNotFound")
                .write(conn);
        };
        let foreign = {
            let mut state = self.lock();
            let spend = state.faults.front() == Some(&Fault::ForeignCommit);
            if spend {
                state.faults.pop_front();
            }
            spend
        };
        let (commit, sha, size) = if foreign {
            ("f".repeat(40), "e".repeat(64), file.size + 1)
        } else {
            (repo.commit.clone(), file.sha256.clone(), file.size)
        };
        let common = vec![
            ("X-Repo-Commit".to_string(), commit),
            ("ETag".to_string(), format!("\"{}\"", file.git_sha1)),
        ];
        if file.lfs {
            let mut head = Head::new(302)
                .header(
                    "Location",
                    format!("http://{}/cdn/{}/{}", self.cdn, repo.id, file.sha256),
                )
                .header("X-Linked-Etag", format!("\"{sha}\""))
                .header("X-Linked-Size", size.to_string())
                .header("Content-Length", "0");
            head.headers.extend(common);
            return head.write(conn);
        }
        self.send_file(conn, req, file, common)
    }

    /// Sends a file (or part of it), spending the next fault.
    fn send_file(
        &self,
        conn: &mut TcpStream,
        req: &Request,
        file: &HubFile,
        extra: Vec<(String, String)>,
    ) -> std::io::Result<()> {
        let (fault, rate) = {
            let mut s = self.lock();
            (s.faults.pop_front(), s.rate_limit)
        };
        let size = file.size;
        let requested = req.range.as_deref().and_then(parse_range);
        let mut start = 0;
        let mut status = 200;
        match (&fault, requested) {
            (Some(Fault::Status(code)), _) => {
                return Head::new(*code)
                    .header("Content-Length", "0")
                    .header("Retry-After", "0")
                    .write(conn);
            }
            (Some(Fault::RedirectLoop), _) => {
                let here = if req.path.starts_with("/cdn/") {
                    format!("http://{}{}", self.cdn, req.path)
                } else {
                    format!("http://{}{}", self.hub, req.path)
                };
                return Head::new(302)
                    .header("Location", here)
                    .header("Content-Length", "0")
                    .write(conn);
            }
            (Some(Fault::RangeNotSatisfiable), _) => {
                return Head::new(416)
                    .header("Content-Range", format!("bytes */{size}"))
                    .header("Content-Length", "0")
                    .write(conn);
            }
            (Some(Fault::IgnoreRange), _) | (_, None) => {}
            (_, Some(from)) if from >= size => {
                return Head::new(416)
                    .header("Content-Range", format!("bytes */{size}"))
                    .header("Content-Length", "0")
                    .write(conn);
            }
            (_, Some(from)) => {
                start = from;
                status = 206;
            }
        }
        if fault == Some(Fault::WrongRange) {
            start = start.saturating_sub(1).min(size / 2);
            status = 206;
        }
        let mut head = Head::new(status);
        head.headers.extend(extra);
        if status == 206 {
            head = head.header(
                "Content-Range",
                format!("bytes {start}-{}/{size}", size.saturating_sub(1)),
            );
        }
        if fault != Some(Fault::TooLong) {
            head = head.header("Content-Length", (size - start).to_string());
        }
        head = head.header("Accept-Ranges", "bytes");
        head.write(conn)?;
        if req.method == "HEAD" {
            return Ok(());
        }
        self.send_body(conn, file, start, fault, rate)
    }

    fn send_body(
        &self,
        conn: &mut TcpStream,
        file: &HubFile,
        start: u64,
        fault: Option<Fault>,
        rate: Option<u64>,
    ) -> std::io::Result<()> {
        let mut reader: Box<dyn Read> = match &file.content {
            Content::Bytes(b) => {
                let mut c = std::io::Cursor::new(b.clone());
                c.set_position(start);
                Box::new(c)
            }
            Content::File(p) => {
                let mut f = std::fs::File::open(p)?;
                f.seek(std::io::SeekFrom::Start(start))?;
                Box::new(f)
            }
        };
        const CHUNK: usize = 256 << 10;
        let chunk = match rate {
            Some(r) => ((r / 20).max(1) as usize).min(CHUNK),
            None => CHUNK,
        };
        let mut buf = vec![0u8; chunk];
        let mut pos = start;
        let mut sent = 0u64;
        let mut stalled = false;
        loop {
            let mut want = chunk;
            match &fault {
                Some(Fault::Drop { after }) => {
                    if sent >= *after {
                        // Close without the rest.
                        return conn.shutdown(std::net::Shutdown::Both);
                    }
                    want = want.min((after - sent) as usize);
                }
                Some(Fault::Stall { after, duration }) if !stalled => {
                    if sent >= *after {
                        conn.flush()?;
                        std::thread::sleep(*duration);
                        stalled = true;
                    } else {
                        want = want.min((after - sent) as usize);
                    }
                }
                _ => {}
            }
            let n = reader.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            if let Some(Fault::Corrupt { at }) = &fault
                && (pos..pos + n as u64).contains(at)
            {
                buf[(at - pos) as usize] ^= 0xff;
            }
            conn.write_all(&buf[..n])?;
            pos += n as u64;
            sent += n as u64;
            if let Some(r) = rate {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
            }
        }
        if fault == Some(Fault::TooLong) {
            conn.write_all(b"extra bytes")?;
        }
        Ok(())
    }
}

/// `bytes=N-` or `bytes=N-M` → N.
fn parse_range(v: &str) -> Option<u64> {
    let (start, _) = v.trim().strip_prefix("bytes=")?.split_once('-')?;
    start.trim().parse().ok()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
