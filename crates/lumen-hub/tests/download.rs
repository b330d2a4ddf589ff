//! Downloads from a real HTTP server on loopback (`lumen-testhub`) that
//! speaks the Hub's endpoints and misbehaves on request. Every scenario
//! ends with a byte-identical, hash-verified file or a clear error.

use std::path::Path;
use std::time::Duration;

use lumen_hub::{
    DownloadEvent, DownloadOptions, Downloader, HubCache, HubClient, HubError, PullRequest, RepoId,
    Revision, Token,
};
use lumen_testhub::{Fault, HubFile, HubRepo, TestHub};

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn quick() -> DownloadOptions {
    DownloadOptions {
        stall_timeout: Duration::from_millis(400),
        max_attempts: 4,
        backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        parallel_files: 3,
        progress_interval: Duration::from_millis(1),
    }
}

struct Setup {
    hub: TestHub,
    dir: tempfile::TempDir,
    weights: Vec<u8>,
    config: Vec<u8>,
}

const REPO: &str = "meta-llama/Llama-3.2-1B-Instruct";
const WEIGHTS_LEN: usize = 3 << 20;

fn setup() -> Setup {
    let hub = TestHub::start().expect("server");
    let weights = noise(WEIGHTS_LEN, 7);
    let config = br#"{"architectures": ["LlamaForCausalLM"]}"#.to_vec();
    hub.add_repo(HubRepo::new(
        REPO,
        vec![
            HubFile::bytes("config.json", config.clone()),
            HubFile::bytes("model.safetensors", weights.clone()),
            HubFile::bytes("original/consolidated.00.pth", vec![1; 100]),
        ],
    ));
    Setup {
        hub,
        dir: tempfile::tempdir().expect("tmp"),
        weights,
        config,
    }
}

impl Setup {
    fn cache(&self) -> HubCache {
        HubCache::new(self.dir.path().join("hub"))
    }

    fn downloader(&self, token: Option<&str>, options: DownloadOptions) -> Downloader {
        let client =
            HubClient::new(&self.hub.url(), token.map(|t| Token::new(t.into()))).expect("client");
        Downloader::new(client, self.cache(), options)
    }
}

fn request(repo: &str, files: &[&str]) -> PullRequest {
    PullRequest::parse(repo, "main", files).expect("request")
}

fn weights_request() -> PullRequest {
    request(REPO, &["model.safetensors"])
}

/// Pulls and collects the events.
async fn pull(
    d: &Downloader,
    req: &PullRequest,
) -> (Result<lumen_hub::Pulled, HubError>, Vec<DownloadEvent>) {
    let mut events = Vec::new();
    let r = d.pull(req, |e| events.push(e.clone())).await;
    (r, events)
}

fn progress_never_goes_backwards(events: &[DownloadEvent]) -> u64 {
    let mut last = 0;
    for e in events {
        if let DownloadEvent::Progress { done, total, .. } = e {
            assert!(*done >= last, "progress went back from {last} to {done}");
            assert!(done <= total);
            last = *done;
        }
    }
    last
}

fn no_partials_left(cache_root: &Path) {
    for entry in walk(cache_root) {
        assert!(
            !entry.to_string_lossy().ends_with(".incomplete"),
            "left behind: {}",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn pulls_a_model_into_the_shared_cache_layout() {
    let s = setup();
    let d = s.downloader(None, quick());
    let (r, events) = pull(&d, &request(REPO, &[])).await;
    let pulled = r.expect("pull");
    // The model's files, not Meta's original/ checkpoint.
    let names: Vec<String> = pulled
        .files
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["config.json", "model.safetensors"]);
    assert_eq!(std::fs::read(&pulled.files[0]).expect("config"), s.config);
    assert_eq!(std::fs::read(&pulled.files[1]).expect("weights"), s.weights);
    // huggingface_hub's layout: refs/main, relative links into blobs/.
    let repo_dir = s
        .cache()
        .root()
        .join("models--meta-llama--Llama-3.2-1B-Instruct");
    let commit = std::fs::read_to_string(repo_dir.join("refs/main")).expect("ref");
    assert_eq!(commit, pulled.commit);
    assert_eq!(pulled.snapshot, repo_dir.join("snapshots").join(&commit));
    #[cfg(unix)]
    assert!(
        std::fs::read_link(&pulled.files[1])
            .expect("link")
            .starts_with("../../blobs")
    );
    let total = (WEIGHTS_LEN + s.config.len()) as u64;
    assert_eq!(progress_never_goes_backwards(&events), total);
    assert!(matches!(events.first(), Some(DownloadEvent::Started { total: t, .. }) if *t == total));
    assert!(matches!(
        events.last(),
        Some(DownloadEvent::Finished { .. })
    ));
    no_partials_left(s.cache().root());
    // The weights came from the CDN; the token (none here) never went there.
    let log = s.hub.log();
    assert!(log.iter().any(|l| l.cdn && l.path.contains("/cdn/")));

    // A second pull finds everything in place and asks only for the list.
    s.hub.clear_log();
    let (r, _) = pull(&d, &request(REPO, &[])).await;
    r.expect("again");
    let log = s.hub.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].path.starts_with("/api/models/"));
}

#[tokio::test]
async fn every_network_fault_ends_in_a_verified_file() {
    let s = setup();
    let d = s.downloader(None, quick());
    let third = (WEIGHTS_LEN / 3) as u64;
    // Random drop points, then every other kind of trouble, in one pull.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut random_offset = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % (third / 2)
    };
    let faults = vec![
        Fault::Drop {
            after: random_offset(),
        },
        Fault::Drop {
            after: random_offset(),
        },
        Fault::Status(500),
        Fault::Stall {
            after: random_offset(),
            duration: Duration::from_secs(2),
        },
        Fault::Status(503),
        Fault::Drop {
            after: random_offset(),
        },
        Fault::Status(429),
        Fault::WrongRange,
        Fault::Drop {
            after: random_offset(),
        },
        Fault::IgnoreRange,
    ];
    let n = faults.len();
    s.hub.push_faults(faults);
    let (r, events) = pull(&d, &weights_request()).await;
    let pulled = r.expect("pull despite faults");
    assert_eq!(std::fs::read(&pulled.files[0]).expect("read"), s.weights);
    assert_eq!(s.hub.pending_faults(), 0, "every fault was met");
    let retries = events
        .iter()
        .filter(|e| matches!(e, DownloadEvent::Retrying { .. }))
        .count();
    assert!(retries >= n - 1, "{retries} retries for {n} faults");
    assert!(
        events.iter().any(
            |e| matches!(e, DownloadEvent::Retrying { reason, .. } if reason.contains("stalled"))
        ),
        "the stall was noticed"
    );
    // Resumes asked for ranges.
    assert!(
        s.hub
            .log()
            .iter()
            .any(|l| l.range.as_deref().is_some_and(|r| r != "bytes=0-"))
    );
    progress_never_goes_backwards(&events);
    no_partials_left(s.cache().root());
}

#[tokio::test]
async fn a_416_or_a_redirect_loop_is_survived_or_reported() {
    let s = setup();
    let d = s.downloader(None, quick());
    s.hub
        .push_faults([Fault::Drop { after: 1000 }, Fault::RangeNotSatisfiable]);
    let (r, _) = pull(&d, &weights_request()).await;
    let pulled = r.expect("starts over after 416");
    assert_eq!(std::fs::read(&pulled.files[0]).expect("read"), s.weights);

    let s = setup();
    let d = s.downloader(None, quick());
    // Each fault is one answer: enough of them for an endless loop.
    s.hub
        .push_faults(std::iter::repeat_n(Fault::RedirectLoop, 20));
    let (r, events) = pull(&d, &weights_request()).await;
    let e = r.expect_err("redirect loop");
    assert!(e.to_string().contains("more than 10 redirects"), "{e}");
    assert!(
        matches!(events.last(), Some(DownloadEvent::Failed { code, .. }) if code == "invalid_response")
    );
}

#[tokio::test]
async fn wrong_bytes_are_caught_and_nothing_is_offered() {
    let s = setup();
    let d = s.downloader(None, quick());
    s.hub.push_faults([Fault::Corrupt { at: 123_457 }]);
    let (r, _) = pull(&d, &weights_request()).await;
    match r {
        Err(HubError::HashMismatch {
            file, algorithm, ..
        }) => {
            assert_eq!(file, "model.safetensors");
            assert_eq!(algorithm, "sha256");
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
    // Neither a blob nor a partial file nor a snapshot.
    let files = walk(s.cache().root());
    assert!(
        files
            .iter()
            .all(|p| !p.to_string_lossy().contains("/blobs/")),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .all(|p| !p.to_string_lossy().contains("/snapshots/"))
    );

    // Too many bytes is refused as it arrives.
    s.hub.push_faults([Fault::TooLong]);
    let (r, _) = pull(&d, &weights_request()).await;
    let e = r.expect_err("too long");
    assert!(e.to_string().contains("more than the"), "{e}");

    // The Hub's own answer naming another commit (the repository changed
    // since the listing) is refused, for LFS and git files alike.
    for file in ["model.safetensors", "config.json"] {
        // (What the last attempt left is complete, and would verify
        // without asking the Hub: start clean.)
        let _ = std::fs::remove_dir_all(s.cache().root());
        s.hub.push_faults([Fault::ForeignCommit]);
        let (r, _) = pull(&d, &request(REPO, &[file])).await;
        let e = r.expect_err("foreign commit");
        assert!(
            e.to_string()
                .contains(&format!("for commit {}", "f".repeat(40))),
            "{e}"
        );
    }

    // A small git file with wrong bytes fails its git blob id.
    s.hub.push_faults([Fault::Corrupt { at: 3 }]);
    let (r, _) = pull(&d, &request(REPO, &["config.json"])).await;
    assert!(
        matches!(
            r,
            Err(HubError::HashMismatch {
                algorithm: "git sha1",
                ..
            })
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_partial_file_is_rehashed_and_continued() {
    let s = setup();
    let d = s.downloader(None, quick());
    let info = d
        .client()
        .repo_info(
            &RepoId::parse(REPO).expect("repo"),
            &Revision::parse("main").expect("rev"),
        )
        .await
        .expect("info");
    let sha = info
        .file("model.safetensors")
        .expect("file")
        .hash
        .hex()
        .to_string();
    let repo = RepoId::parse(REPO).expect("repo");
    let partial = s.cache().incomplete_blob(&repo, &sha).expect("path");
    std::fs::create_dir_all(partial.parent().expect("dir")).expect("mkdir");

    // Good bytes from an earlier session: continued with a range.
    let half = WEIGHTS_LEN / 2;
    std::fs::write(&partial, &s.weights[..half]).expect("write");
    let (r, events) = pull(&d, &weights_request()).await;
    let pulled = r.expect("resume");
    assert_eq!(std::fs::read(&pulled.files[0]).expect("read"), s.weights);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, DownloadEvent::Verifying { bytes, .. } if *bytes == half as u64))
    );
    let ranges: Vec<_> = s
        .hub
        .log()
        .into_iter()
        .filter(|l| l.cdn)
        .map(|l| l.range)
        .collect();
    assert_eq!(ranges, [Some(format!("bytes={half}-"))]);

    // Damaged bytes from an earlier session: found by the hash, started over.
    std::fs::remove_dir_all(s.cache().root()).expect("clean");
    std::fs::create_dir_all(partial.parent().expect("dir")).expect("mkdir");
    let mut damaged = s.weights[..half].to_vec();
    damaged[1000] ^= 1;
    std::fs::write(&partial, &damaged).expect("write");
    s.hub.clear_log();
    let (r, events) = pull(&d, &weights_request()).await;
    let pulled = r.expect("starts over");
    assert_eq!(std::fs::read(&pulled.files[0]).expect("read"), s.weights);
    assert!(events.iter().any(
        |e| matches!(e, DownloadEvent::Retrying { reason, .. } if reason.contains("did not verify"))
    ));
    let cdn: Vec<_> = s.hub.log().into_iter().filter(|l| l.cdn).collect();
    assert_eq!(cdn.len(), 2);
    assert_eq!(
        cdn[1].range, None,
        "the second request is for the whole file"
    );
    progress_never_goes_backwards(&events);

    // A link planted where the partial file goes is replaced, never
    // written through.
    #[cfg(unix)]
    {
        std::fs::remove_dir_all(s.cache().root()).expect("clean");
        std::fs::create_dir_all(partial.parent().expect("dir")).expect("mkdir");
        let victim = s.dir.path().join("victim.txt");
        std::fs::write(&victim, b"precious").expect("write");
        std::os::unix::fs::symlink(&victim, &partial).expect("plant");
        let (r, _) = pull(&d, &weights_request()).await;
        assert_eq!(
            std::fs::read(&r.expect("pull").files[0]).expect("read"),
            s.weights
        );
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    }

    // Another process downloading the same file (holding its lock) is
    // not interfered with.
    {
        std::fs::remove_dir_all(s.cache().root()).expect("clean");
        std::fs::create_dir_all(partial.parent().expect("dir")).expect("mkdir");
        let other = std::fs::File::create(&partial).expect("create");
        assert!(fs4::fs_std::FileExt::try_lock_exclusive(&other).expect("lock"));
        let (r, _) = pull(&d, &weights_request()).await;
        assert!(matches!(r, Err(HubError::Busy { .. })), "{r:?}");
        drop(other);
        let (r, _) = pull(&d, &weights_request()).await;
        assert_eq!(
            std::fs::read(&r.expect("after the other one stopped").files[0]).expect("read"),
            s.weights
        );
    }

    // A partial longer than the file is discarded.
    std::fs::remove_dir_all(s.cache().root()).expect("clean");
    std::fs::create_dir_all(partial.parent().expect("dir")).expect("mkdir");
    std::fs::write(&partial, vec![0u8; WEIGHTS_LEN + 5]).expect("write");
    let (r, _) = pull(&d, &weights_request()).await;
    assert_eq!(
        std::fs::read(&r.expect("pull").files[0]).expect("read"),
        s.weights
    );
}

#[tokio::test]
async fn gated_repositories_say_what_to_do() {
    let s = setup();
    let gated = "meta-llama/Llama-3.2-11B-Vision-Instruct";
    s.hub.add_repo(
        HubRepo::new(
            gated,
            vec![HubFile::bytes("model.safetensors", noise(50_000, 3))],
        )
        .gated(),
    );
    s.hub.set_token(Some("hf_right"));
    let req = request(gated, &[]);

    let (r, _) = pull(&s.downloader(None, quick()), &req).await;
    match r {
        Err(
            e @ HubError::Gated {
                has_token: false, ..
            },
        ) => {
            let m = e.to_string();
            assert!(
                m.contains(&format!("accept its licence at {}/{gated}", s.hub.url())),
                "{m}"
            );
            assert!(m.contains("add a Hugging Face token"), "{m}");
        }
        other => panic!("expected gated, got {other:?}"),
    }
    let (r, _) = pull(&s.downloader(Some("hf_wrong"), quick()), &req).await;
    assert!(
        matches!(
            r,
            Err(HubError::Gated {
                has_token: true,
                ..
            })
        ),
        "{r:?}"
    );

    s.hub.clear_log();
    let (r, _) = pull(&s.downloader(Some("hf_right"), quick()), &req).await;
    r.expect("with the right token");
    let log = s.hub.log();
    assert!(
        log.iter()
            .filter(|l| !l.cdn)
            .all(|l| l.authorization.as_deref() == Some("Bearer hf_right"))
    );
    assert!(
        log.iter()
            .filter(|l| l.cdn)
            .all(|l| l.authorization.is_none()),
        "the token never goes to another host: {log:?}"
    );
}

#[tokio::test]
async fn unknown_repos_revisions_and_files_are_named() {
    let s = setup();
    let d = s.downloader(None, quick());
    let (r, _) = pull(&d, &request("nobody/nothing", &[])).await;
    assert!(matches!(r, Err(HubError::RepoNotFound { .. })), "{r:?}");
    let mut req = weights_request();
    req.revision = Revision::parse("v9").expect("rev");
    let (r, _) = pull(&d, &req).await;
    assert!(matches!(r, Err(HubError::RevisionNotFound { .. })), "{r:?}");
    let (r, _) = pull(&d, &request(REPO, &["model-q9.gguf"])).await;
    let e = r.expect_err("no such file");
    let m = e.to_string();
    assert!(
        m.contains("has no file `model-q9.gguf`") && m.contains("config.json"),
        "{m}"
    );

    // Several GGUF files and none chosen: a question, not a guess.
    s.hub.add_repo(HubRepo::new(
        "bartowski/Llama-3.2-1B-Instruct-GGUF",
        vec![
            HubFile::bytes("Llama-3.2-1B-Instruct-Q4_K_M.gguf", noise(1000, 1)),
            HubFile::bytes("Llama-3.2-1B-Instruct-Q8_0.gguf", noise(2000, 2)),
        ],
    ));
    let (r, _) = pull(&d, &request("bartowski/Llama-3.2-1B-Instruct-GGUF", &[])).await;
    match r {
        Err(HubError::ChooseFile { choices, .. }) => assert_eq!(choices.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn hostile_listings_are_refused_before_anything_is_written() {
    let s = setup();
    let d = s.downloader(None, quick());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"<html>".to_vec(), "malformed JSON"),
        (vec![b' '; 17 << 20], "larger than"),
        (br#"{"sha": "nothex", "siblings": []}"#.to_vec(), "not a commit hash"),
        (
            format!(
                r#"{{"sha": "{}", "siblings": [{{"rfilename": "model.safetensors", "size": 5, "lfs": {{"sha256": "{}", "size": 1000000000000000000}}}}]}}"#,
                "a".repeat(40),
                "b".repeat(64)
            )
            .into_bytes(),
            "not enough disk space",
        ),
    ];
    for (body, want) in cases {
        let mut repo = HubRepo::new("evil/model", vec![]);
        repo.api_override = Some(body);
        s.hub.add_repo(repo);
        let (r, _) = pull(&d, &request("evil/model", &["model.safetensors"])).await;
        let e = r.expect_err(want);
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
    // Unsafe names in a listing are dropped, never used as paths.
    let mut repo = HubRepo::new("evil/model", vec![]);
    repo.api_override = Some(
        format!(
            r#"{{"sha": "{}", "siblings": [{{"rfilename": "../../../escape.safetensors", "size": 1, "lfs": {{"sha256": "{}", "size": 1}}}}]}}"#,
            "a".repeat(40),
            "b".repeat(64)
        )
        .into_bytes(),
    );
    s.hub.add_repo(repo);
    let (r, _) = pull(&d, &request("evil/model", &[])).await;
    assert!(r.is_err());
    assert!(!s.dir.path().join("escape.safetensors").exists());
    assert!(
        walk(s.dir.path())
            .iter()
            .all(|p| !p.to_string_lossy().contains("escape"))
    );
}

#[tokio::test]
async fn pause_resume_and_cancel() {
    let s = setup();
    s.hub.set_rate_limit(Some(4 << 20));
    let d = s.downloader(None, quick());
    let plan = d.plan(&weights_request()).await.expect("plan");
    let handle = d.start(plan.clone());
    let mut rx = handle.subscribe();
    // Let some bytes arrive, then pause.
    loop {
        if let Ok(DownloadEvent::Progress { done, .. }) = rx.recv().await
            && done > 100_000
        {
            break;
        }
    }
    handle.pause();
    loop {
        if let Ok(DownloadEvent::Paused) = rx.recv().await {
            break;
        }
    }
    let repo = RepoId::parse(REPO).expect("repo");
    let sha = plan.files[0].hash.hex().to_string();
    let partial = s.cache().incomplete_blob(&repo, &sha).expect("path");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = std::fs::metadata(&partial).expect("partial kept").len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        std::fs::metadata(&partial).expect("partial").len(),
        held,
        "nothing arrives while paused"
    );
    assert!(held > 0 && held < WEIGHTS_LEN as u64);
    handle.resume();
    let pulled = handle.finish().await.expect("finishes after resume");
    assert_eq!(std::fs::read(&pulled.files[0]).expect("read"), s.weights);
    // The resumed download asked for the rest with a range.
    assert!(s.hub.log().iter().any(|l| l.range.is_some()));

    // Cancel deletes the partial file.
    std::fs::remove_dir_all(s.cache().root()).expect("clean");
    let plan = d.plan(&weights_request()).await.expect("plan");
    let handle = d.start(plan);
    let mut rx = handle.subscribe();
    loop {
        if let Ok(DownloadEvent::Progress { done, .. }) = rx.recv().await
            && done > 100_000
        {
            break;
        }
    }
    handle.cancel();
    let r = handle.finish().await;
    assert!(matches!(r, Err(HubError::Cancelled)), "{r:?}");
    assert!(!partial.exists(), "cancel removes the partial file");
    assert!(s.cache().blob(&repo, &sha).is_some_and(|b| !b.exists()));
}

#[tokio::test]
async fn several_files_at_once_with_one_progress() {
    let s = setup();
    let files: Vec<HubFile> = (0..5)
        .map(|i| {
            HubFile::bytes(
                &format!("model-0000{i}-of-00005.safetensors"),
                noise(400_000 + i * 1000, i as u64),
            )
        })
        .chain([HubFile::bytes(
            "model.safetensors.index.json",
            b"{}".to_vec(),
        )])
        .collect();
    s.hub.add_repo(HubRepo::new("owner/sharded", files));
    s.hub
        .push_faults([Fault::Drop { after: 5000 }, Fault::Drop { after: 10 }]);
    let d = s.downloader(None, quick());
    let (r, events) = pull(&d, &request("owner/sharded", &[])).await;
    let pulled = r.expect("pull");
    assert_eq!(pulled.files.len(), 6);
    for (i, f) in pulled.files.iter().take(5).enumerate() {
        assert_eq!(
            std::fs::read(f).expect("read"),
            noise(400_000 + i * 1000, i as u64)
        );
    }
    let total: u64 = (0..5).map(|i| 400_000 + i * 1000).sum::<u64>() + 2;
    assert_eq!(progress_never_goes_backwards(&events), total);
    let done = events
        .iter()
        .filter(|e| matches!(e, DownloadEvent::FileDone { .. }))
        .count();
    assert_eq!(done, 6);
}
