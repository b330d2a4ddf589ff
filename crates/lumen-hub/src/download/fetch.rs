//! One file: resume, request, receive, verify (see the steps in the
//! parent module's documentation).

use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header;
use tokio::sync::{mpsc, watch};

use super::{Control, DownloadEvent, DownloadOptions, Shared};
use crate::api::{RemoteFile, error_chain};
use crate::error::HubError;
use crate::hash::{FileHash, Hasher};

/// The partial file, its hash so far and its length.
struct Partial {
    file: std::fs::File,
    hasher: Hasher,
    len: u64,
    /// Some bytes were on disk before this session (not seen arriving).
    from_disk: bool,
}

/// How one attempt ended, when it did not finish the file.
enum Attempt {
    /// Give up with this error.
    Fatal(HubError),
    /// Try again after a backoff (or the server's `Retry-After`).
    Retry(String, Option<Duration>),
    /// Paused: wait, then continue.
    Paused,
}

pub(super) async fn fetch_file(
    shared: &Shared,
    index: usize,
    file: &RemoteFile,
    mut control: watch::Receiver<Control>,
) -> Result<(), HubError> {
    let repo = &shared.repo;
    let hex = file.hash.hex();
    let bad_name = || HubError::InvalidResponse {
        url: String::new(),
        reason: format!("`{hex}` is not a blob name"),
    };
    let blob = shared.cache.blob(repo, hex).ok_or_else(bad_name)?;
    if std::fs::metadata(&blob).is_ok_and(|m| m.is_file() && m.len() == file.size) {
        shared.report(index, file.size, true);
        shared.emit(DownloadEvent::FileDone {
            file: file.path.to_string(),
        });
        return Ok(());
    }
    let partial_path = shared
        .cache
        .incomplete_blob(repo, hex)
        .ok_or_else(bad_name)?;
    if let Some(dir) = partial_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
    }

    let mut partial = None;
    let mut failures = 0u32;
    let mut restarted_after_mismatch = false;
    loop {
        if *control.borrow() == Control::Cancel {
            return Err(HubError::Cancelled);
        }
        if *control.borrow() == Control::Pause {
            wait_while_paused(&mut control).await?;
        }
        let p = match partial.take() {
            Some(p) => p,
            None => {
                let p = open_partial(shared, &partial_path, file).await?;
                shared.report(index, p.len, false);
                p
            }
        };
        let before = p.len;
        let (back, outcome) = if p.len == file.size {
            (Some(p), None)
        } else {
            attempt(shared, index, file, p, &mut control).await
        };
        match outcome {
            None => {
                // All bytes are in: check them.
                let Some(p) = back else {
                    continue;
                };
                let from_disk = p.from_disk;
                let Partial {
                    file: f, hasher, ..
                } = p;
                f.sync_all().map_err(|e| HubError::io(&partial_path, e))?;
                drop(f);
                let actual = hasher.finish();
                if actual == hex {
                    std::fs::rename(&partial_path, &blob).map_err(|e| HubError::io(&blob, e))?;
                    shared.report(index, file.size, true);
                    shared.emit(DownloadEvent::FileDone {
                        file: file.path.to_string(),
                    });
                    return Ok(());
                }
                let _ = std::fs::remove_file(&partial_path);
                if from_disk && !restarted_after_mismatch {
                    // The bytes from before may have been damaged: start over once.
                    restarted_after_mismatch = true;
                    shared.report(index, 0, false);
                    shared.emit(DownloadEvent::Retrying {
                        file: file.path.to_string(),
                        attempt: 1,
                        delay_ms: 0,
                        reason: "the partial file from before did not verify; starting over".into(),
                    });
                    continue;
                }
                return Err(HubError::HashMismatch {
                    file: file.path.to_string(),
                    algorithm: file.hash.algorithm(),
                    expected: hex.to_string(),
                    actual,
                });
            }
            Some(Attempt::Fatal(e)) => return Err(e),
            Some(Attempt::Paused) => partial = back,
            Some(Attempt::Retry(reason, retry_after)) => {
                let progressed = back.as_ref().is_some_and(|p| p.len > before);
                if progressed {
                    failures = 0;
                }
                failures += 1;
                if failures >= shared.options.max_attempts {
                    return Err(HubError::Network {
                        what: format!("`{}`", file.path),
                        attempts: failures,
                        reason,
                    });
                }
                // A connection that was delivering and broke is remade at
                // once; failures in a row back off.
                let delay = match retry_after {
                    Some(d) => d,
                    None if progressed => Duration::ZERO,
                    None => backoff(&shared.options, failures),
                }
                .min(shared.options.max_backoff);
                shared.emit(DownloadEvent::Retrying {
                    file: file.path.to_string(),
                    attempt: failures,
                    delay_ms: delay.as_millis() as u64,
                    reason,
                });
                partial = back;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = wait_for(&mut control, Control::Cancel) => return Err(HubError::Cancelled),
                }
            }
        }
    }
}

/// Waits until the control leaves `Pause`; `Err(Cancelled)` on cancel.
async fn wait_while_paused(control: &mut watch::Receiver<Control>) -> Result<(), HubError> {
    loop {
        match *control.borrow_and_update() {
            Control::Run => return Ok(()),
            Control::Cancel => return Err(HubError::Cancelled),
            Control::Pause => {}
        }
        if control.changed().await.is_err() {
            return Err(HubError::Cancelled);
        }
    }
}

/// Resolves when the control becomes `want` (or its sender is gone).
async fn wait_for(control: &mut watch::Receiver<Control>, want: Control) {
    let _ = control.wait_for(|c| *c == want).await;
}

fn backoff(options: &DownloadOptions, failures: u32) -> Duration {
    let base = options
        .backoff
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let base = base.min(options.max_backoff);
    // Jitter from the clock's low bits: enough to spread out retries.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// Opens (or creates) the partial file and hashes the bytes already in it.
async fn open_partial(
    shared: &Shared,
    path: &Path,
    file: &RemoteFile,
) -> Result<Partial, HubError> {
    let path_buf = path.to_path_buf();
    let size = file.size;
    let existing = std::fs::symlink_metadata(path)
        .map(|m| m.len())
        .unwrap_or(0);
    if existing > 0 && existing <= size {
        shared.emit(DownloadEvent::Verifying {
            file: file.path.to_string(),
            bytes: existing,
        });
    }
    let mut hasher = file.hash.hasher(size);
    let display_name = file.path.to_string();
    tokio::task::spawn_blocking(move || -> Result<Partial, HubError> {
        let io = |e| HubError::io(&path_buf, e);
        // Never write through a link planted where the partial file goes.
        if std::fs::symlink_metadata(&path_buf).is_ok_and(|m| !m.is_file()) {
            std::fs::remove_file(&path_buf).map_err(io)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path_buf)
            .map_err(io)?;
        // One downloader per file: another process continuing the same
        // partial file would interleave bytes. The lock goes with the
        // handle (and with the process, if it is killed).
        if !fs4::fs_std::FileExt::try_lock_exclusive(&f).map_err(io)? {
            return Err(HubError::Busy { file: display_name });
        }
        let mut len = f.metadata().map_err(io)?.len();
        if len > size {
            // Longer than the file can be: not ours to continue.
            f.set_len(0).map_err(io)?;
            len = 0;
        }
        let mut buf = vec![0u8; 1 << 20];
        let mut read = 0u64;
        while read < len {
            let want = (len - read).min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want]).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            read += n as u64;
        }
        if read < len {
            f.set_len(read).map_err(io)?;
        }
        f.seek(std::io::SeekFrom::Start(read)).map_err(io)?;
        Ok(Partial {
            file: f,
            hasher,
            len: read,
            from_disk: read > 0,
        })
    })
    .await
    .map_err(|e| HubError::io(path, std::io::Error::other(e.to_string())))?
}

/// Empties the partial file to start over.
fn restart(p: &mut Partial, file: &RemoteFile) -> std::io::Result<()> {
    p.file.set_len(0)?;
    p.file.seek(std::io::SeekFrom::Start(0))?;
    p.hasher = file.hash.hasher(file.size);
    p.len = 0;
    p.from_disk = false;
    Ok(())
}

/// One request: continues `p` as far as it gets. Gives back the partial
/// file (`None` if it must be reopened) and how the attempt ended (`None`
/// when the file has all its bytes).
async fn attempt(
    shared: &Shared,
    index: usize,
    file: &RemoteFile,
    mut p: Partial,
    control: &mut watch::Receiver<Control>,
) -> (Option<Partial>, Option<Attempt>) {
    let url = shared
        .client
        .resolve_url(&shared.repo, &shared.commit, &file.path);
    let offset = p.len;
    let stall = shared.options.stall_timeout;
    let resp = tokio::select! {
        r = tokio::time::timeout(stall, open(shared, file, &url, offset)) => match r {
            Ok(Ok(resp)) => resp,
            Ok(Err(a)) => return (Some(p), Some(a)),
            Err(_) => return (Some(p), Some(Attempt::Retry(format!("no answer in {stall:?}"), None))),
        },
        a = control_change(control) => return (Some(p), Some(a)),
    };
    let io_fatal = |e| Some(Attempt::Fatal(HubError::io(&url, e)));
    match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            let range = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range);
            let expected = |(start, total): (u64, Option<u64>)| {
                start == offset && total.is_none_or(|t| t == file.size)
            };
            if !range.is_some_and(expected) {
                // Not the range asked for: start over cleanly.
                return start_over(p, file, &url, "the server answered another range");
            }
        }
        StatusCode::OK => {
            if let Some(n) = resp.content_length()
                && n != file.size
            {
                let reason = format!(
                    "the server sends {n} bytes for `{}`, the Hub lists {}",
                    file.path, file.size
                );
                return (
                    Some(p),
                    Some(Attempt::Fatal(HubError::InvalidResponse { url, reason })),
                );
            }
            if offset > 0 {
                // The range was ignored: the whole file comes again.
                if let Err(e) = restart(&mut p, file) {
                    return (None, io_fatal(e));
                }
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            return start_over(
                p,
                file,
                &url,
                "the server refused the range (HTTP 416); starting over",
            );
        }
        s if s == StatusCode::TOO_MANY_REQUESTS
            || s == StatusCode::REQUEST_TIMEOUT
            || s.is_server_error() =>
        {
            let after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return (
                Some(p),
                Some(Attempt::Retry(format!("HTTP {}", s.as_u16()), after)),
            );
        }
        s => {
            let e = shared.client.status_error(
                &shared.repo,
                None,
                Some(&file.path),
                &url,
                s,
                resp.headers(),
            );
            return (Some(p), Some(Attempt::Fatal(e)));
        }
    }
    stream_body(shared, index, file, p, resp, control).await
}

/// Empties the partial file and asks for a retry from the start.
fn start_over(
    mut p: Partial,
    file: &RemoteFile,
    url: &str,
    reason: &str,
) -> (Option<Partial>, Option<Attempt>) {
    match restart(&mut p, file) {
        Ok(()) => (Some(p), Some(Attempt::Retry(reason.into(), None))),
        Err(e) => (None, Some(Attempt::Fatal(HubError::io(url, e)))),
    }
}

/// What a change of control means for a running attempt.
async fn control_change(control: &mut watch::Receiver<Control>) -> Attempt {
    loop {
        if control.changed().await.is_err() {
            return Attempt::Fatal(HubError::Cancelled);
        }
        match *control.borrow_and_update() {
            Control::Pause => return Attempt::Paused,
            Control::Cancel => return Attempt::Fatal(HubError::Cancelled),
            Control::Run => {}
        }
    }
}

/// Sends the request, following redirects by hand (at most 10): the Hub's
/// own answer must agree with the listing, the token goes only to the
/// Hub, and https never turns into http.
async fn open(
    shared: &Shared,
    file: &RemoteFile,
    url: &str,
    offset: u64,
) -> Result<reqwest::Response, Attempt> {
    let fatal = |reason: String| {
        Attempt::Fatal(HubError::InvalidResponse {
            url: url.to_string(),
            reason,
        })
    };
    let mut current = reqwest::Url::parse(url).map_err(|e| fatal(e.to_string()))?;
    for hop in 0..=10 {
        let mut req = shared.client.http().get(current.clone());
        if offset > 0 {
            req = req.header(header::RANGE, format!("bytes={offset}-"));
        }
        if let Some(auth) = shared.client.auth_for(&current) {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Attempt::Retry(error_chain(&e), None))?;
        if hop == 0 {
            check_linked(&resp, file, &shared.commit).map_err(fatal)?;
        }
        if !resp.status().is_redirection() {
            return Ok(resp);
        }
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| fatal("a redirect without a location".into()))?;
        let next = current
            .join(location)
            .map_err(|e| fatal(format!("a redirect to a bad URL: {e}")))?;
        if !matches!(next.scheme(), "http" | "https")
            || (current.scheme() == "https" && next.scheme() != "https")
        {
            return Err(fatal(format!(
                "refusing a redirect from {} to {}",
                current.scheme(),
                next.scheme()
            )));
        }
        current = next;
    }
    Err(fatal("more than 10 redirects".into()))
}

/// The Hub's own answer must agree with the listing: `X-Repo-Commit` is
/// the commit asked for, `X-Linked-Size` / `X-Linked-Etag` (LFS files) or
/// `ETag` (git files, answered directly) are the listed size and hash. If
/// not, the repository changed under us, or the answer is forged.
fn check_linked(resp: &reqwest::Response, file: &RemoteFile, commit: &str) -> Result<(), String> {
    let h = resp.headers();
    let text = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    let unquote = |v: &str| {
        v.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string()
    };
    if let Some(c) = text("x-repo-commit")
        && !c.trim().eq_ignore_ascii_case(commit)
    {
        return Err(format!(
            "the Hub answered `{}` for commit {}, not {commit}",
            file.path,
            c.escape_debug()
        ));
    }
    if let (FileHash::GitSha1(oid), Some(etag), true) =
        (&file.hash, text("etag"), resp.status().is_success())
        && !unquote(etag).eq_ignore_ascii_case(oid)
    {
        return Err(format!(
            "the Hub says `{}` is git blob {}, its listing said {oid}",
            file.path,
            unquote(etag).escape_debug()
        ));
    }
    if let Some(size) = text("x-linked-size")
        && size.trim().parse::<u64>().ok() != Some(file.size)
    {
        return Err(format!(
            "the Hub says `{}` has {} bytes, its listing said {}",
            file.path,
            size.escape_debug(),
            file.size
        ));
    }
    if let (FileHash::Sha256(sha), Some(etag)) = (&file.hash, text("x-linked-etag")) {
        let etag = unquote(etag);
        if !etag.eq_ignore_ascii_case(sha) {
            return Err(format!(
                "the Hub says `{}` has sha256 {}, its listing said {sha}",
                file.path,
                etag.escape_debug()
            ));
        }
    }
    Ok(())
}

/// `bytes START-END/TOTAL` → `(START, TOTAL)` (`None` for `*`).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

/// Receives the body. The bytes are hashed on one blocking thread and
/// written on another, fed through bounded channels, so receiving, hashing
/// and writing overlap (the hash is the slowest of the three on CPUs
/// without SHA extensions).
async fn stream_body(
    shared: &Shared,
    index: usize,
    file: &RemoteFile,
    p: Partial,
    mut resp: reqwest::Response,
    control: &mut watch::Receiver<Control>,
) -> (Option<Partial>, Option<Attempt>) {
    let Partial {
        file: handle,
        hasher,
        len: base,
        from_disk,
    } = p;
    let (write_tx, write_rx) = mpsc::channel::<Bytes>(64);
    let (hash_tx, hash_rx) = mpsc::channel::<Bytes>(64);
    let writer = tokio::task::spawn_blocking(move || write_chunks(handle, write_rx));
    let hashing = tokio::task::spawn_blocking(move || hash_chunks(hasher, hash_rx));
    let stall = shared.options.stall_timeout;
    let mut received = 0u64;
    let outcome: Option<Attempt> = loop {
        let next = tokio::select! {
            r = tokio::time::timeout(stall, resp.chunk()) => r,
            a = control_change(control) => break Some(a),
        };
        match next {
            Err(_) => {
                break Some(Attempt::Retry(
                    format!("no data for {stall:?} (stalled)"),
                    None,
                ));
            }
            Ok(Err(e)) => break Some(Attempt::Retry(error_chain(&e), None)),
            Ok(Ok(None)) => break None,
            Ok(Ok(Some(chunk))) => {
                received += chunk.len() as u64;
                if base + received > file.size {
                    break Some(Attempt::Fatal(HubError::InvalidResponse {
                        url: resp.url().to_string(),
                        reason: format!(
                            "the server sent more than the {} bytes of `{}`",
                            file.size, file.path
                        ),
                    }));
                }
                // A closed channel means that thread failed; its error
                // comes back below.
                if write_tx.send(chunk.clone()).await.is_err() || hash_tx.send(chunk).await.is_err()
                {
                    break None;
                }
                shared.report(index, base + received, false);
            }
        }
    };
    drop((write_tx, hash_tx, resp));
    let thread_failed = |e: tokio::task::JoinError| {
        HubError::io(
            format!("`{}` (partial download)", file.path),
            std::io::Error::other(e.to_string()),
        )
    };
    let (handle, written, result) = match writer.await {
        Ok(w) => w,
        Err(e) => return (None, Some(Attempt::Fatal(thread_failed(e)))),
    };
    let hasher = match hashing.await {
        Ok(h) => h,
        Err(e) => return (None, Some(Attempt::Fatal(thread_failed(e)))),
    };
    let p = Partial {
        file: handle,
        hasher,
        len: base + written,
        from_disk,
    };
    if let Err(e) = result {
        // The hash may be ahead of the file: reopen (and rehash) next time.
        let e = HubError::io(format!("`{}` (partial download)", file.path), e);
        return (None, Some(Attempt::Fatal(e)));
    }
    match outcome {
        Some(a) => (Some(p), Some(a)),
        None if p.len < file.size => (
            Some(p),
            Some(Attempt::Retry("the connection closed early".into(), None)),
        ),
        None => (Some(p), None),
    }
}

/// Writes chunks until the channel closes; flushes at the end. Returns the
/// file, the bytes written and whether all went well.
fn write_chunks(
    mut file: std::fs::File,
    mut rx: mpsc::Receiver<Bytes>,
) -> (std::fs::File, u64, std::io::Result<()>) {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
    let mut written = 0u64;
    let mut result = Ok(());
    while let Some(chunk) = rx.blocking_recv() {
        if let Err(e) = out.write_all(&chunk) {
            result = Err(e);
            break;
        }
        written += chunk.len() as u64;
    }
    let result = result.and_then(|()| out.flush());
    drop(out);
    (file, written, result)
}

/// Hashes chunks until the channel closes.
fn hash_chunks(mut hasher: Hasher, mut rx: mpsc::Receiver<Bytes>) -> Hasher {
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
    }
    hasher
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 10-19/20"), Some((10, Some(20))));
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        for bad in [
            "",
            "bytes",
            "bytes 5-4/9",
            "items 0-1/2",
            "bytes a-b/c",
            "bytes 0-1/x",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let o = DownloadOptions {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..DownloadOptions::default()
        };
        let d = |n| backoff(&o, n).as_millis();
        assert!((100..=125).contains(&d(1)));
        assert!((200..=250).contains(&d(2)));
        assert!((800..=1000).contains(&d(4)));
        assert!((1000..=1250).contains(&d(30)));
    }
}
