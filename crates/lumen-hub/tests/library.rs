//! The installed models: downloads in the shared cache and imports.

use std::time::Duration;

use lumen_hub::{
    DownloadOptions, Downloader, HubCache, HubClient, HubError, Library, ModelKind, PullRequest,
    RepoFile, RepoId,
};
use lumen_testhub::{HubFile, HubRepo, TestHub};

fn gguf(len: usize, fill: u8) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.resize(len, fill);
    v
}

async fn pull(d: &Downloader, repo: &str, files: &[&str]) {
    let req = PullRequest::parse(repo, "main", files).expect("request");
    d.pull(&req, |_| {}).await.expect("pull");
}

#[tokio::test]
async fn downloads_are_listed_resolved_and_removed() {
    let hub = TestHub::start().expect("server");
    hub.add_repo(HubRepo::new(
        "bartowski/Llama-3.2-1B-Instruct-GGUF",
        vec![
            HubFile::bytes("Llama-3.2-1B-Instruct-Q4_K_M.gguf", gguf(5000, 1)),
            HubFile::bytes("Llama-3.2-1B-Instruct-Q8_0.gguf", gguf(9000, 2)),
        ],
    ));
    hub.add_repo(HubRepo::new(
        "meta-llama/Llama-3.2-1B-Instruct",
        vec![
            HubFile::bytes("config.json", b"{}".to_vec()),
            HubFile::bytes("tokenizer.json", b"{}".to_vec()),
            HubFile::bytes("model.safetensors", vec![7; 3000]),
        ],
    ));
    let dir = tempfile::tempdir().expect("tmp");
    let cache = HubCache::new(dir.path().join("hub"));
    let options = DownloadOptions {
        backoff: Duration::from_millis(5),
        ..DownloadOptions::default()
    };
    let d = Downloader::new(
        HubClient::new(&hub.url(), None).expect("client"),
        cache.clone(),
        options,
    );
    let lib = Library::new(cache.clone(), dir.path().join("imports.json"));
    assert!(lib.installed().is_empty());

    pull(
        &d,
        "bartowski/Llama-3.2-1B-Instruct-GGUF",
        &["Llama-3.2-1B-Instruct-Q4_K_M.gguf"],
    )
    .await;
    pull(&d, "meta-llama/Llama-3.2-1B-Instruct", &[]).await;
    let installed = lib.installed();
    let ids: Vec<&str> = installed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "bartowski/Llama-3.2-1B-Instruct-GGUF",
            "meta-llama/Llama-3.2-1B-Instruct"
        ]
    );
    assert_eq!(installed[0].kind, ModelKind::Gguf);
    assert_eq!(installed[0].size, 5000);
    assert_eq!(installed[1].kind, ModelKind::Safetensors);

    let p = lib
        .resolve("bartowski/Llama-3.2-1B-Instruct-GGUF")
        .expect("one gguf");
    assert_eq!(std::fs::read(&p).expect("read"), gguf(5000, 1));
    let folder = lib
        .resolve("meta-llama/Llama-3.2-1B-Instruct")
        .expect("folder");
    assert!(folder.join("config.json").is_file());

    // A second quant makes the bare name ambiguous: a question, not a guess.
    pull(
        &d,
        "bartowski/Llama-3.2-1B-Instruct-GGUF",
        &["Llama-3.2-1B-Instruct-Q8_0.gguf"],
    )
    .await;
    assert!(matches!(
        lib.resolve("bartowski/Llama-3.2-1B-Instruct-GGUF"),
        Err(HubError::ChooseFile { .. })
    ));
    let q8 = lib
        .resolve("bartowski/Llama-3.2-1B-Instruct-GGUF:Llama-3.2-1B-Instruct-Q8_0.gguf")
        .expect("by file");
    assert_eq!(std::fs::read(&q8).expect("read").len(), 9000);

    // Removing one file frees its blob; removing the repo frees the rest.
    let freed = lib
        .remove("bartowski/Llama-3.2-1B-Instruct-GGUF:Llama-3.2-1B-Instruct-Q8_0.gguf")
        .expect("rm file");
    assert_eq!(freed, 9000);
    assert!(lib.resolve("bartowski/Llama-3.2-1B-Instruct-GGUF").is_ok());
    // config.json and tokenizer.json are both `{}`: one blob, linked twice.
    assert!(folder.join("tokenizer.json").is_file());
    assert_eq!(
        lib.remove("meta-llama/Llama-3.2-1B-Instruct").expect("rm"),
        3002
    );
    assert!(
        !cache
            .root()
            .join("models--meta-llama--Llama-3.2-1B-Instruct")
            .exists()
    );
    assert!(matches!(
        lib.resolve("meta-llama/Llama-3.2-1B-Instruct"),
        Err(HubError::NotInstalled(_))
    ));
    assert!(matches!(
        lib.remove("nobody/nothing"),
        Err(HubError::NotInstalled(_))
    ));
    assert!(matches!(lib.remove("../../etc"), Err(HubError::Name(_))));
}

#[tokio::test]
async fn interrupted_downloads_of_other_tools_are_not_offered() {
    // huggingface_hub links each file as it arrives: a sharded model with
    // a shard missing is not a model yet.
    let dir = tempfile::tempdir().expect("tmp");
    let cache = HubCache::new(dir.path());
    let repo = RepoId::parse("someone/sharded").expect("repo");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let blobs = cache.repo_dir(&repo).join("blobs");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let index = br#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
    for (name, bytes) in [
        ("config.json", b"{}".as_slice()),
        ("model.safetensors.index.json", index.as_slice()),
        ("model-00001-of-00002.safetensors", b"x".as_slice()),
    ] {
        let hash = format!("{:0>40}", name.len());
        std::fs::write(blobs.join(&hash), bytes).expect("blob");
        cache
            .link(&repo, commit, &RepoFile::parse(name).expect("file"), &hash)
            .expect("link");
    }
    let lib = Library::new(cache, dir.path().join("imports.json"));
    assert!(lib.installed().is_empty());
}

#[test]
fn imports_are_recorded_not_copied() {
    let dir = tempfile::tempdir().expect("tmp");
    let lib = Library::new(
        HubCache::new(dir.path().join("hub")),
        dir.path().join("data/imports.json"),
    );
    let file = dir.path().join("My Model (Q4).gguf");
    std::fs::write(&file, gguf(100, 0)).expect("write");
    let m = lib.import(&file).expect("import");
    assert_eq!(m.id, "local/My-Model--Q4");
    assert!(m.imported);
    // Importing the same file again is the same model.
    assert_eq!(lib.import(&file).expect("again").id, m.id);
    let folder = dir.path().join("Llama-3.2-1B-Instruct");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(folder.join("config.json"), "{}").expect("write");
    std::fs::write(folder.join("model.safetensors"), [0u8; 10]).expect("write");
    let f = lib.import(&folder).expect("folder");
    assert_eq!(f.kind, ModelKind::Safetensors);
    assert_eq!(lib.installed().len(), 2);
    assert_eq!(
        lib.resolve(&m.id).expect("resolve"),
        std::fs::canonicalize(&file).expect("canon")
    );

    // Bad imports are refused clearly and change nothing.
    let not_gguf = dir.path().join("notes.gguf");
    std::fs::write(&not_gguf, b"hello").expect("write");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    for bad in [
        not_gguf.as_path(),
        empty.as_path(),
        dir.path().join("missing.gguf").as_path(),
    ] {
        let e = lib.import(bad).expect_err("bad import");
        assert!(matches!(e, HubError::Import { .. }), "{e}");
    }
    assert_eq!(lib.installed().len(), 2);

    // Removing an import forgets it; the file stays.
    assert_eq!(lib.remove(&m.id).expect("rm"), 0);
    assert!(file.exists());
    assert_eq!(lib.installed().len(), 1);
    // A damaged record file is an empty list, not a crash.
    std::fs::write(dir.path().join("data/imports.json"), b"{garbage").expect("write");
    assert!(lib.installed().is_empty());
}
