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

mod fetch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use crate::api::{HubClient, RemoteFile, RepoInfo};
use crate::cache::HubCache;
use crate::error::HubError;
use crate::names::{NameError, RepoFile, RepoId, Revision};
use crate::progress::{Progress, ProgressSnapshot};
use fetch::fetch_file;

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
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
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

impl PullRequest {
    /// A request from names as typed: `owner/name`, a branch, tag or
    /// commit, and file paths in the repository, each checked.
    pub fn parse(repo: &str, revision: &str, files: &[&str]) -> Result<Self, NameError> {
        Ok(Self {
            repo: RepoId::parse(repo)?,
            revision: Revision::parse(revision)?,
            files: files
                .iter()
                .map(|f| RepoFile::parse(f))
                .collect::<Result<_, _>>()?,
        })
    }
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
        self.switch(Control::Run, Control::Pause, DownloadEvent::Paused);
    }

    /// Continues after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.switch(Control::Pause, Control::Run, DownloadEvent::Resumed);
    }

    /// `from` → `to`, announced (here, so that a quick pause and resume
    /// are both seen, not merged away).
    fn switch(&self, from: Control, to: Control, event: DownloadEvent) {
        let switched = self.control.send_if_modified(|c| {
            let yes = *c == from;
            if yes {
                *c = to;
            }
            yes
        });
        if switched && !self.task.is_finished() {
            let _ = self.events.send(event);
        }
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
        task_result(self.task.await)
    }
}

/// A download task's outcome, a panic or abort included.
fn task_result(
    joined: Result<Result<Pulled, HubError>, tokio::task::JoinError>,
) -> Result<Pulled, HubError> {
    match joined {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Err(HubError::Cancelled),
        Err(e) => Err(HubError::InvalidResponse {
            url: String::new(),
            reason: format!("the download task failed: {e}"),
        }),
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
        let mut handle = self.start(plan);
        let mut rx = handle.subscribe();
        let joined = loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) => on_event(&ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    // The handle holds a sender: never while it lives.
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                joined = &mut handle.task => break joined,
            }
        };
        // The job's last events were sent before it returned.
        while let Ok(ev) = rx.try_recv() {
            on_event(&ev);
        }
        task_result(joined)
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
