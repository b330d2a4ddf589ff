//! Downloading a repository's files into the cache: resumable, verified,
//! retried, pausable.
//!
//! One file, start to finish:
//!
//! 1. A complete blob of the right size is already there: nothing to do
//!    (another tool, or an earlier download, fetched it).
//! 2. A partial `<hash>.incomplete` is there: its bytes are read and
//!    hashed — not trusted blindly — and the download continues after
//!    them with `Range: bytes=N-`.
//! 3. The bytes are hashed as they arrive, on a second thread that also
//!    writes them, so the network, the hash and the disk overlap and the
//!    file is never read twice.
//! 4. A dropped connection, an HTTP 5xx/429 or a stall (no bytes for
//!    [`DownloadOptions::stall_timeout`]) reconnects after a backoff and
//!    continues where it stopped; a server that ignores the range or
//!    answers 416 makes it start over. Only failures in a row count
//!    towards [`DownloadOptions::max_attempts`], and a connection that
//!    was delivering bytes is remade at once.
//! 5. At the end the hash must be the Hub's (SHA-256 for LFS files, the git
//!    blob id for others). A mismatch deletes the partial file: if some of
//!    its bytes came from an earlier session it starts over once, else it
//!    is an error. A match renames it into place atomically, so nothing
//!    half-written is ever offered as a model.
//!
//! A whole pull checks the disk space first, downloads a few files at
//! once with one overall [`Progress`], and links the snapshot (and writes
//! the branch's ref) only when every file is in.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header;
use tokio::sync::{broadcast, mpsc, watch};

use crate::api::{HubClient, RemoteFile, RepoInfo, error_chain};
use crate::cache::HubCache;
use crate::error::HubError;
use crate::hash::{FileHash, Hasher};
use crate::names::{RepoFile, RepoId, Revision};
use crate::progress::{Progress, ProgressSnapshot};

/// How downloads behave.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// No bytes for this long and the connection is dropped and remade.
    pub stall_timeout: Duration,
    /// Failures in a row (without a byte of progress in between) before
    /// giving up.
    pub max_attempts: u32,
    /// The first retry's delay; each further one doubles, up to
    /// `max_backoff`, with up to 25% jitter.
    pub backoff: Duration,
    /// The longest delay between retries.
    pub max_backoff: Duration,
    /// Files downloaded at the same time.
    pub parallel_files: usize,
    /// The least time between two progress events.
    pub progress_interval: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            stall_timeout: Duration::from_secs(30),
            max_attempts: 8,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            parallel_files: 3,
            progress_interval: Duration::from_millis(100),
        }
    }
}

/// What a running download is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Download.
    Run,
    /// Hold: connections closed, partial files kept.
    Pause,
    /// Stop and delete the partial files.
    Cancel,
}

/// What a download reports, for a progress bar or the desktop app.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DownloadEvent {
    /// The files to fetch; `present` bytes were already on disk.
    Started {
        /// Repository.
        repo: String,
        /// Commit.
        commit: String,
        /// Files and sizes.
        files: Vec<(String, u64)>,
        /// Bytes in all.
        total: u64,
    },
    /// Overall progress (at most every `progress_interval`).
    Progress {
        /// Bytes done (never less than before).
        done: u64,
        /// Bytes in all.
        total: u64,
        /// Smoothed bytes per second.
        bytes_per_s: f64,
        /// Seconds left at that rate.
        eta_s: Option<f64>,
    },
    /// A partial file from before is being read to continue its hash.
    Verifying {
        /// The file.
        file: String,
        /// Bytes already there.
        bytes: u64,
    },
    /// A file failed and will be tried again.
    Retrying {
        /// The file.
        file: String,
        /// Failures in a row so far.
        attempt: u32,
        /// Milliseconds until the next try.
        delay_ms: u64,
        /// What went wrong.
        reason: String,
    },
    /// A file is complete and verified.
    FileDone {
        /// The file.
        file: String,
    },
    /// Paused.
    Paused,
    /// Running again.
    Resumed,
    /// Every file is in; the model is at `snapshot`.
    Finished {
        /// The snapshot folder.
        snapshot: PathBuf,
    },
    /// Stopped with an error (partial files kept, so it can resume).
    Failed {
        /// [`HubError::code`].
        code: String,
        /// The message.
        message: String,
    },
    /// Cancelled; partial files deleted.
    Cancelled,
}

impl DownloadEvent {
    fn progress(s: ProgressSnapshot) -> Self {
        Self::Progress {
            done: s.done,
            total: s.total,
            bytes_per_s: s.bytes_per_s,
            eta_s: s.eta.map(|d| d.as_secs_f64()),
        }
    }
}

/// What to pull: a repository at a revision, and which files.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// The repository.
    pub repo: RepoId,
    /// Branch, tag or commit.
    pub revision: Revision,
    /// The files; empty means the model's files (see [`select_files`]).
    pub files: Vec<RepoFile>,
}

/// A checked pull, ready to start.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The repository at its commit.
    pub info: RepoInfo,
    /// The revision asked for (its ref is written at the end).
    pub revision: Revision,
    /// The files to fetch.
    pub files: Vec<RemoteFile>,
    /// Bytes already on disk (complete blobs and partial files).
    pub present: u64,
}

impl Plan {
    /// Bytes in the selected files.
    pub fn total(&self) -> u64 {
        self.blobs().iter().map(|f| f.size).sum()
    }

    /// The files with distinct contents: identical files (two configs that
    /// are both `{}`) share one blob, downloaded once.
    pub fn blobs(&self) -> Vec<RemoteFile> {
        let mut seen = std::collections::HashSet::new();
        self.files
            .iter()
            .filter(|f| seen.insert(f.hash.hex().to_string()))
            .cloned()
            .collect()
    }

    /// Bytes still to download.
    pub fn needed(&self) -> u64 {
        self.total().saturating_sub(self.present)
    }
}

/// A finished pull.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pulled {
    /// The repository.
    pub repo: RepoId,
    /// The commit.
    pub commit: String,
    /// The snapshot folder.
    pub snapshot: PathBuf,
    /// The files in it.
    pub files: Vec<PathBuf>,
}

/// Chooses the files that make a model when none are named: the one GGUF
/// file (several is a question for the user), else the safetensors model —
/// weights, index, configs, tokenizer and chat template at the top level
/// (not Meta's `original/` checkpoint, which duplicates the weights).
pub fn select_files(info: &RepoInfo, wanted: &[RepoFile]) -> Result<Vec<RemoteFile>, HubError> {
    let repo = info.repo.to_string();
    let ggufs: Vec<&RemoteFile> = info
        .files
        .iter()
        .filter(|f| f.path.as_str().to_ascii_lowercase().ends_with(".gguf"))
        .collect();
    if !wanted.is_empty() {
        return wanted
            .iter()
            .map(|w| {
                info.file(w.as_str())
                    .cloned()
                    .ok_or_else(|| HubError::FileNotFound {
                        repo: repo.clone(),
                        file: w.to_string(),
                        choices: if ggufs.is_empty() {
                            info.files
                                .iter()
                                .map(|f| f.path.to_string())
                                .take(40)
                                .collect()
                        } else {
                            ggufs.iter().map(|f| f.path.to_string()).collect()
                        },
                    })
            })
            .collect();
    }
    match ggufs.as_slice() {
        [one] => return Ok(vec![(*one).clone()]),
        [] => {}
        many => {
            return Err(HubError::ChooseFile {
                repo,
                choices: many.iter().map(|f| f.path.to_string()).collect(),
            });
        }
    }
    let top_level = |f: &&RemoteFile| !f.path.as_str().contains('/');
    let has_weights = info
        .files
        .iter()
        .filter(top_level)
        .any(|f| f.path.as_str().ends_with(".safetensors"));
    if !has_weights {
        return Err(HubError::FileNotFound {
            repo,
            file: "model weights (.gguf or .safetensors)".into(),
            choices: info
                .files
                .iter()
                .map(|f| f.path.to_string())
                .take(40)
                .collect(),
        });
    }
    Ok(info
        .files
        .iter()
        .filter(top_level)
        .filter(|f| {
            let p = f.path.as_str();
            p.ends_with(".safetensors")
                || p.ends_with(".json")
                || p.ends_with(".jinja")
                || p == "tokenizer.model"
        })
        .cloned()
        .collect())
}

/// Downloads into a cache.
#[derive(Debug, Clone)]
pub struct Downloader {
    client: HubClient,
    cache: HubCache,
    options: DownloadOptions,
}

/// A running download: control it, watch it, wait for it.
#[derive(Debug)]
pub struct DownloadHandle {
    control: watch::Sender<Control>,
    events: broadcast::Sender<DownloadEvent>,
    /// Made before the job started, for the first subscriber.
    first: Mutex<Option<broadcast::Receiver<DownloadEvent>>>,
    task: tokio::task::JoinHandle<Result<Pulled, HubError>>,
}

impl DownloadHandle {
    /// Pauses: connections close, partial files stay.
    pub fn pause(&self) {
        self.control.send_replace(Control::Pause);
    }

    /// Continues after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.control.send_if_modified(|c| {
            let paused = *c == Control::Pause;
            if paused {
                *c = Control::Run;
            }
            paused
        });
    }

    /// Stops and deletes the partial files.
    pub fn cancel(&self) {
        self.control.send_replace(Control::Cancel);
    }

    /// Events: the first subscriber gets every event from the start,
    /// later ones the events from when they subscribe.
    pub fn subscribe(&self) -> broadcast::Receiver<DownloadEvent> {
        self.first
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .unwrap_or_else(|| self.events.subscribe())
    }

    /// Whether it has stopped (finished, failed or cancelled).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the end.
    pub async fn finish(self) -> Result<Pulled, HubError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => Err(HubError::Cancelled),
            Err(e) => Err(HubError::InvalidResponse {
                url: String::new(),
                reason: format!("the download task failed: {e}"),
            }),
        }
    }
}

impl Downloader {
    /// A downloader from `client` into `cache`.
    pub fn new(client: HubClient, cache: HubCache, options: DownloadOptions) -> Self {
        Self {
            client,
            cache,
            options,
        }
    }

    /// The client.
    pub fn client(&self) -> &HubClient {
        &self.client
    }

    /// The cache.
    pub fn cache(&self) -> &HubCache {
        &self.cache
    }

    /// Asks the Hub what `request` means, chooses the files and checks the
    /// disk space.
    pub async fn plan(&self, request: &PullRequest) -> Result<Plan, HubError> {
        let info = self
            .client
            .repo_info(&request.repo, &request.revision)
            .await?;
        let files = select_files(&info, &request.files)?;
        if info.gated
            && let Some(first) = files.first()
        {
            self.client
                .check_access(&info.repo, &info.commit, &first.path)
                .await?;
        }
        let mut plan = Plan {
            info,
            revision: request.revision.clone(),
            files,
            present: 0,
        };
        plan.present = plan
            .blobs()
            .iter()
            .map(|f| self.bytes_present(&plan.info.repo, f))
            .sum();
        self.check_space(plan.needed())?;
        Ok(plan)
    }

    /// Bytes of `file` already on disk.
    fn bytes_present(&self, repo: &RepoId, file: &RemoteFile) -> u64 {
        let len = |p: Option<PathBuf>| p.and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len());
        match len(self.cache.blob(repo, file.hash.hex())) {
            Some(n) if n == file.size => n,
            _ => len(self.cache.incomplete_blob(repo, file.hash.hex()))
                .filter(|&n| n <= file.size)
                .unwrap_or(0),
        }
    }

    /// Refuses to start without room for `needed` more bytes.
    fn check_space(&self, needed: u64) -> Result<(), HubError> {
        let root = self.cache.root();
        std::fs::create_dir_all(root).map_err(|e| HubError::io(root, e))?;
        let free = fs4::available_space(root).map_err(|e| HubError::io(root, e))?;
        if needed > free {
            return Err(HubError::NoSpace {
                path: root.to_path_buf(),
                needed,
                free,
            });
        }
        Ok(())
    }

    /// Starts downloading `plan` on the Tokio runtime.
    pub fn start(&self, plan: Plan) -> DownloadHandle {
        let (control, control_rx) = watch::channel(Control::Run);
        let (events, first) = broadcast::channel(1024);
        let job = Job {
            downloader: self.clone(),
            plan,
            control: control_rx,
            events: events.clone(),
        };
        let task = tokio::spawn(job.run());
        DownloadHandle {
            control,
            events,
            first: Mutex::new(Some(first)),
            task,
        }
    }

    /// Plans and downloads, reporting events to `on_event`, until done.
    pub async fn pull(
        &self,
        request: &PullRequest,
        mut on_event: impl FnMut(&DownloadEvent),
    ) -> Result<Pulled, HubError> {
        let plan = self.plan(request).await?;
        let handle = self.start(plan);
        let mut rx = handle.subscribe();
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) => on_event(&ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = wait_finished(&handle) => {
                    while let Ok(ev) = rx.try_recv() { on_event(&ev); }
                    break;
                }
            }
        }
        handle.finish().await
    }
}

async fn wait_finished(handle: &DownloadHandle) {
    while !handle.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One pull in progress.
struct Job {
    downloader: Downloader,
    plan: Plan,
    control: watch::Receiver<Control>,
    events: broadcast::Sender<DownloadEvent>,
}

/// Shared by a job's file tasks.
struct Shared {
    client: HubClient,
    cache: HubCache,
    repo: RepoId,
    commit: String,
    options: DownloadOptions,
    events: broadcast::Sender<DownloadEvent>,
    progress: Mutex<(Progress, Option<Instant>)>,
}

impl Shared {
    fn emit(&self, ev: DownloadEvent) {
        // No subscriber is fine.
        let _ = self.events.send(ev);
    }

    /// File `i` has `done` bytes; emits progress at most every interval
    /// (and always when `force`).
    fn report(&self, i: usize, done: u64, force: bool) {
        let now = Instant::now();
        let ev = {
            let Ok(mut guard) = self.progress.lock() else {
                return;
            };
            let (progress, last) = &mut *guard;
            let snap = progress.update(i, done, now);
            let due = last.is_none_or(|t| now.duration_since(t) >= self.options.progress_interval);
            if !(due || force) {
                return;
            }
            *last = Some(now);
            DownloadEvent::progress(snap)
        };
        self.emit(ev);
    }
}

impl Job {
    async fn run(self) -> Result<Pulled, HubError> {
        let events = self.events.clone();
        let files = self.plan.files.clone();
        let cache = self.downloader.cache.clone();
        let repo = self.plan.info.repo.clone();
        let result = self.download_all().await;
        match &result {
            Ok(p) => {
                let _ = events.send(DownloadEvent::Finished {
                    snapshot: p.snapshot.clone(),
                });
            }
            Err(HubError::Cancelled) => {
                for f in &files {
                    if let Some(p) = cache.incomplete_blob(&repo, f.hash.hex()) {
                        let _ = std::fs::remove_file(p);
                    }
                }
                let _ = events.send(DownloadEvent::Cancelled);
            }
            Err(e) => {
                let _ = events.send(DownloadEvent::Failed {
                    code: e.code().into(),
                    message: e.to_string(),
                });
            }
        }
        result
    }

    async fn download_all(self) -> Result<Pulled, HubError> {
        let Job {
            downloader,
            plan,
            control,
            events,
        } = self;
        let repo = plan.info.repo.clone();
        let commit = plan.info.commit.clone();
        let blobs = plan.blobs();
        let sizes: Vec<u64> = blobs.iter().map(|f| f.size).collect();
        let shared = Arc::new(Shared {
            client: downloader.client.clone(),
            cache: downloader.cache.clone(),
            repo: repo.clone(),
            commit: commit.clone(),
            options: downloader.options.clone(),
            events: events.clone(),
            progress: Mutex::new((Progress::new(&sizes), None)),
        });
        shared.emit(DownloadEvent::Started {
            repo: repo.to_string(),
            commit: commit.clone(),
            files: plan
                .files
                .iter()
                .map(|f| (f.path.to_string(), f.size))
                .collect(),
            total: plan.total(),
        });

        // Announce pauses once for the whole job.
        let watcher = {
            let mut control = control.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut last = *control.borrow();
                while control.changed().await.is_ok() {
                    let now = *control.borrow();
                    match (last, now) {
                        (Control::Run, Control::Pause) => shared.emit(DownloadEvent::Paused),
                        (Control::Pause, Control::Run) => shared.emit(DownloadEvent::Resumed),
                        _ => {}
                    }
                    last = now;
                }
            })
        };

        let limit = Arc::new(tokio::sync::Semaphore::new(
            downloader.options.parallel_files.max(1),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, file) in blobs.into_iter().enumerate() {
            let shared = shared.clone();
            let limit = limit.clone();
            let control = control.clone();
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                fetch_file(&shared, i, &file, control).await.map(|()| file)
            });
        }
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            let outcome = joined.unwrap_or_else(|e| {
                Err(HubError::InvalidResponse {
                    url: String::new(),
                    reason: format!("a download task failed: {e}"),
                })
            });
            if let Err(e) = outcome {
                // The first real error wins over the cancellations it causes.
                if failure.is_none() || matches!(failure, Some(HubError::Cancelled)) {
                    failure = Some(e);
                }
                tasks.abort_all();
            }
        }
        watcher.abort();
        if let Some(e) = failure {
            return Err(e);
        }
        if *control.borrow() == Control::Cancel {
            return Err(HubError::Cancelled);
        }

        // Every file is in: publish the snapshot.
        let cache = &downloader.cache;
        let mut linked = Vec::with_capacity(plan.files.len());
        for f in &plan.files {
            let p = cache
                .link(&repo, &commit, &f.path, f.hash.hex())
                .map_err(|e| HubError::io(cache.repo_dir(&repo), e))?;
            linked.push(p);
        }
        if !plan.revision.is_commit() {
            cache
                .write_ref(&repo, &plan.revision, &commit)
                .map_err(|e| HubError::io(cache.repo_dir(&repo), e))?;
        }
        let snapshot =
            cache
                .snapshot_dir(&repo, &commit)
                .ok_or_else(|| HubError::InvalidResponse {
                    url: String::new(),
                    reason: "bad commit".into(),
                })?;
        Ok(Pulled {
            repo,
            commit,
            snapshot,
            files: linked,
        })
    }
}

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

async fn fetch_file(
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
