//! `lumen models` against a real HTTP server on loopback that speaks the
//! Hub's endpoints (lumen-testhub), with the real SmolLM2 GGUF served as a
//! Hub repository: pull it, run it by its repo id, list it, delete it; a
//! download killed with SIGKILL resumes where it stopped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use lumen_testhub::{HubFile, HubRepo, TestHub};

mod common;
use common::{smollm2, text};

const SMOL_REPO: &str = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";
const SMOL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// A private world for one test: its own Hub cache, data folder and token
/// file, pointed at the test server.
struct World {
    dir: tempfile::TempDir,
    endpoint: String,
}

impl World {
    fn new(hub: &TestHub) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tmp"),
            endpoint: hub.url(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lumen"));
        c.args(args)
            .env("HF_ENDPOINT", &self.endpoint)
            .env("HF_HUB_CACHE", self.dir.path().join("hub"))
            .env("HF_TOKEN_PATH", self.dir.path().join("no-token"))
            .env("LUMEN_DATA_DIR", self.dir.path().join("data"))
            .env_remove("HF_TOKEN")
            .env_remove("HF_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn lumen(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run lumen")
    }

    fn blobs(&self, repo: &str) -> PathBuf {
        self.dir
            .path()
            .join("hub")
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("blobs")
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout)
}

/// The greedy answer of `model` to one question.
fn ask(w: &World, model: &str) -> String {
    ok(&w.lumen(&[
        "run",
        "--model",
        model,
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "What is the capital of France?",
    ]))
}

/// The greedy answer when the file is named by its path.
fn direct_answer(w: &World) -> String {
    let answer = ask(w, smollm2().to_str().expect("utf8"));
    assert!(!answer.trim().is_empty());
    answer
}

#[test]
fn pull_run_list_and_remove_a_model_by_its_repo_id() {
    let hub = TestHub::start().expect("server");
    hub.add_repo(HubRepo::new(
        SMOL_REPO,
        vec![
            HubFile::from_disk(SMOL_FILE, smollm2()).expect("gguf"),
            HubFile::bytes("README.md", b"# SmolLM2\n".to_vec()),
        ],
    ));
    let w = World::new(&hub);

    let info = ok(&w.lumen(&["models", "info", SMOL_REPO, "--json"]));
    let info: serde_json::Value = serde_json::from_str(&info).expect("json");
    assert_eq!(info["selected"][0]["path"], SMOL_FILE);

    let out = w.lumen(&["models", "pull", SMOL_REPO]);
    ok(&out);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("lumen chat --model {SMOL_REPO}:{SMOL_FILE}")),
        "{err}"
    );

    let answer = ask(&w, SMOL_REPO);
    assert_eq!(
        answer,
        direct_answer(&w),
        "the same model, found by its repo id"
    );

    let listed = ok(&w.lumen(&["models", "list", "--installed", "--json"]));
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed[0]["id"], SMOL_REPO);
    assert_eq!(listed[0]["gguf_files"][0], SMOL_FILE);

    let out = w.lumen(&["models", "rm", SMOL_REPO]);
    ok(&out);
    assert!(
        text(&out.stderr).contains("MB freed"),
        "{}",
        text(&out.stderr)
    );
    let out = w.lumen(&["run", "--model", SMOL_REPO, "hi"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not installed"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_imported_file_runs_by_its_local_name() {
    let hub = TestHub::start().expect("server");
    let w = World::new(&hub);
    let out = w.lumen(&["models", "import", smollm2().to_str().expect("utf8")]);
    ok(&out);
    assert!(text(&out.stderr).contains("local/SmolLM2-135M-Instruct.Q4_1"));
    let answer = ask(&w, "local/SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(
        answer,
        direct_answer(&w),
        "the same model, found by its local name"
    );
    let out = w.lumen(&["models", "import", "/definitely/not/here.gguf"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot import"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn gated_and_unknown_models_get_one_clear_line() {
    let hub = TestHub::start().expect("server");
    hub.add_repo(
        HubRepo::new(
            "meta-llama/Llama-3.2-1B-Instruct",
            vec![HubFile::bytes("model.safetensors", vec![0; 10])],
        )
        .gated(),
    );
    let w = World::new(&hub);
    let out = w.lumen(&["models", "pull", "llama-3.2-1b-instruct:bf16"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "accept its licence at {}/meta-llama/Llama-3.2-1B-Instruct",
            hub.url()
        )),
        "{err}"
    );
    let out = w.lumen(&["models", "pull", "llama-9"]);
    assert!(
        text(&out.stderr).contains("neither a catalogue model"),
        "{}",
        text(&out.stderr)
    );
    let out = w.lumen(&["models", "pull", "../../etc/passwd"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not valid"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_catalogue_lists_every_model_with_its_memory_need() {
    let hub = TestHub::start().expect("server");
    let w = World::new(&hub);
    let table = ok(&w.lumen(&["models", "list"]));
    for name in [
        "Llama 3.2 1B Instruct",
        "Llama 3.2 3B Instruct",
        "Llama 3.2 11B Vision Instruct",
        "Llama 3.2 90B Vision Instruct",
        "Llama 3.3 70B Instruct",
    ] {
        assert!(table.contains(name), "{name}\n{table}");
    }
    let json = ok(&w.lumen(&["models", "list", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&json).expect("json");
    let seventy = rows
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["model"]["id"] == "llama-3.3-70b-instruct")
        .expect("70b");
    let need = seventy["variants"][0]["memory_total"]
        .as_u64()
        .expect("bytes");
    assert!(need > 40_000_000_000, "{need}");
}

/// The downloader is killed (SIGKILL) mid-file and run again: it hashes
/// what is on disk, asks for the rest with a range, and ends with the
/// exact file.
#[test]
fn a_killed_download_resumes_where_it_stopped() {
    let hub = TestHub::start().expect("server");
    let w = World::new(&hub);
    let bytes: Vec<u8> = (0..8_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = HubFile::bytes("model.safetensors", bytes.clone());
    let sha = file.sha256.clone();
    hub.add_repo(HubRepo::new(
        "owner/big",
        vec![file, HubFile::bytes("config.json", b"{}".to_vec())],
    ));
    hub.set_rate_limit(Some(2_000_000));

    let mut child = w
        .command(&["models", "pull", "owner/big", "--json"])
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        let ev: serde_json::Value = serde_json::from_str(&line).expect("json event");
        if ev["kind"] == "progress" && ev["done"].as_u64().expect("done") > 3_000_000 {
            break;
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let partial = w.blobs("owner/big").join(format!("{sha}.incomplete"));
    let kept = std::fs::metadata(&partial)
        .expect("a partial file survives the kill")
        .len();
    assert!(kept > 0 && kept < bytes.len() as u64, "{kept}");
    assert!(!w.blobs("owner/big").join(&sha).exists());

    hub.set_rate_limit(None);
    hub.clear_log();
    let out = w.lumen(&["models", "pull", "owner/big", "--json"]);
    let events = ok(&out);
    assert!(events.contains(r#""kind":"verifying""#), "{events}");
    let ranges: Vec<String> = hub
        .log()
        .into_iter()
        .filter(|l| l.cdn)
        .filter_map(|l| l.range)
        .collect();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    let from: u64 = ranges[0]
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .expect("offset");
    assert!(
        from > 0 && from <= kept,
        "resumed at {from}, {kept} on disk"
    );
    let blob = w.blobs("owner/big").join(&sha);
    assert_eq!(std::fs::read(blob).expect("blob"), bytes);
    assert!(!partial.exists());
    assert!(Path::new(&w.dir.path().join("hub/models--owner--big/refs/main")).is_file());
}

/// The token goes into the system keyring (a real Secret Service:
/// gnome-keyring in a private D-Bus session), is used for a gated
/// download, never appears in a file, and is gone after logout.
#[cfg(target_os = "linux")]
#[test]
fn the_token_lives_in_the_system_keyring() {
    for tool in ["dbus-run-session", "gnome-keyring-daemon"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .expect("sh")
            .status
            .success();
        assert!(found, "{tool} is missing: run scripts/setup.sh");
    }
    let hub = TestHub::start().expect("server");
    let secret = "hf_KeyringTest0123456789";
    hub.set_token(Some(secret));
    hub.add_repo(
        HubRepo::new(
            "meta-llama/Gated",
            vec![HubFile::bytes("model.safetensors", vec![5; 1000])],
        )
        .gated(),
    );
    let w = World::new(&hub);
    let home = w.dir.path().join("home");
    std::fs::create_dir_all(home.join(".cache")).expect("mkdir");
    std::fs::create_dir_all(home.join(".local/share/keyrings")).expect("mkdir");
    let script = r#"
        set -e
        eval "$(printf 'lumen-test' | gnome-keyring-daemon --unlock --components=secrets)"
        printf '%s\n' "$SECRET" | "$LUMEN" models login --token-stdin
        "$LUMEN" models pull meta-llama/Gated
        "$LUMEN" models logout
        if "$LUMEN" models pull meta-llama/Gated:model.safetensors --revision main 2>err.txt; then
            echo "pulled without a token" >&2; exit 1
        fi
        true
    "#;
    let out = w
        .command(&[])
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &home)
        .env("SECRET", secret)
        .env("LUMEN", env!("CARGO_BIN_EXE_lumen"))
        .current_dir(w.dir.path())
        .output_of("dbus-run-session", &["--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(err.contains("saved in the system keyring"), "{err}");
    assert!(err.contains("removed from the system keyring"), "{err}");
    // The gated file arrived with the token; after logout it is refused again.
    assert!(
        w.blobs("meta-llama/Gated")
            .read_dir()
            .expect("blobs")
            .next()
            .is_some()
    );
    let refused = std::fs::read_to_string(w.dir.path().join("err.txt")).expect("err");
    assert!(refused.contains("is gated"), "{refused}");
    // The secret is in no file (the keyring's own file is encrypted).
    let mut stack = vec![w.dir.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        // The keyring daemon may still be removing its runtime folder as it
        // exits: a folder that is gone holds no secret.
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("ls {}: {e}", dir.display()),
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
                assert!(!found, "the token is in {}", p.display());
            }
        }
    }
}

/// Runs another program with a command's environment.
trait OutputOf {
    fn output_of(&mut self, program: &str, args: &[&str]) -> Output;
}

impl OutputOf for Command {
    fn output_of(&mut self, program: &str, args: &[&str]) -> Output {
        let mut c = Command::new(program);
        c.args(args);
        for (k, v) in self.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(dir) = self.get_current_dir() {
            c.current_dir(dir);
        }
        c.stdin(Stdio::null()).output().expect("run")
    }
}
