//! The real app, driven like a user would: under Xvfb, through tauri-driver
//! and WebKitWebDriver (W3C WebDriver), with the real engine (SmolLM2 GGUF)
//! and a real SQLite history in a temporary data folder. Screenshots of
//! each step are kept in `$CARGO_TARGET_DIR/e2e-screenshots/`.
//!
//! Needs `Xvfb`, `WebKitWebDriver` (Debian: webkit2gtk-driver) and
//! `tauri-driver` (`cargo install tauri-driver`); scripts/setup.sh
//! installs them.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn assets() -> PathBuf {
    std::env::var_os("LUMEN_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/lumen/assets")
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

fn tool(name: &str) -> PathBuf {
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME"));
    let cargo_bin = home.join(".cargo/bin").join(name);
    if cargo_bin.is_file() {
        return cargo_bin;
    }
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .expect("sh");
    assert!(
        found.status.success(),
        "{name} is missing: run scripts/setup.sh"
    );
    PathBuf::from(String::from_utf8_lossy(&found.stdout).trim())
}

/// Kills the child, and everything it started, when dropped (tauri-driver
/// starts WebKitWebDriver, which would otherwise outlive it and keep its
/// port).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // The child leads its own process group (see `spawn_group`);
        // WebKitWebDriver ignores SIGTERM.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` as the leader of a new process group.
fn spawn_group(cmd: &mut Command) -> Child {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0).spawn().expect("spawn")
}

/// A display, a driver, and the environment the app sees.
struct Harness {
    _xvfb: Guard,
    _driver: Guard,
    port: u16,
    shots: PathBuf,
}

impl Harness {
    fn start(data: &Path) -> Self {
        let display = format!(":{}", 90 + free_port() % 400);
        let xvfb = spawn_group(
            Command::new(tool("Xvfb"))
                .args([
                    display.as_str(),
                    "-screen",
                    "0",
                    "1280x900x24",
                    "-nolisten",
                    "tcp",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        std::thread::sleep(Duration::from_millis(800));
        let port = free_port();
        // Its WebKitWebDriver gets a free port too (the default, 4445, may
        // be taken by another run).
        let native_port = free_port();
        let mut driver = spawn_group(
            Command::new(tool("tauri-driver"))
                .args(["--port", &port.to_string()])
                .args(["--native-port", &native_port.to_string()])
                .env("DISPLAY", &display)
                .env("LUMEN_DATA_DIR", data.join("data"))
                .env("HF_HUB_CACHE", data.join("hub"))
                .env("HF_ENDPOINT", "http://127.0.0.1:9")
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        // Keep its log flowing (and visible when a test fails).
        if let Some(err) = driver.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("tauri-driver: {line}");
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tauri-driver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let shots =
            PathBuf::from(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()))
                .join("e2e-screenshots");
        std::fs::create_dir_all(&shots).expect("screenshots dir");
        Self {
            _xvfb: Guard(xvfb),
            _driver: Guard(driver),
            port,
            shots,
        }
    }
}

/// One WebDriver session: the app running.
struct App<'a> {
    h: &'a Harness,
    http: reqwest::blocking::Client,
    session: String,
}

impl<'a> App<'a> {
    fn launch(h: &'a Harness) -> Self {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        let mut app = Self {
            h,
            http,
            session: String::new(),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {"tauri:options": {
            "application": env!("CARGO_BIN_EXE_lumen-app")
        }}}});
        let v = app.call("POST", "/session", Some(caps));
        app.session = v["sessionId"].as_str().expect("session id").to_string();
        app.wait_for("the app", || {
            app.js("return document.querySelector('.app') !== null")
                .as_bool()
                .unwrap_or(false)
        });
        app
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.h.port);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or(json!({}))),
        };
        let resp = req.send().expect("webdriver");
        let status = resp.status();
        let v: Value = resp.json().expect("webdriver json");
        assert!(status.is_success(), "{method} {path}: {v}");
        v["value"].clone()
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            &self.s("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().expect("element").to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call(
            "POST",
            &self.s(&format!("/element/{e}/value")),
            Some(json!({ "text": text })),
        );
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &self.s(&format!("/element/{e}/click")), None);
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn text(&self, script: &str) -> String {
        self.js(script).as_str().unwrap_or_default().to_string()
    }

    fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let png = self.call("GET", &self.s("/screenshot"), None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("png");
        std::fs::write(self.h.shots.join(format!("{name}.png")), bytes).expect("screenshot");
    }

    fn quit(self) {
        self.call("DELETE", &self.s(""), None);
    }
}

const LAST_REPLY: &str = "const m = document.querySelectorAll('.message.assistant'); \
     return m.length ? m[m.length - 1].innerText : '';";

#[test]
fn ask_restart_and_find_it_again() {
    let model = assets().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        model.is_file(),
        "{} missing: run scripts/fetch-assets.sh",
        model.display()
    );
    let dir = tempfile::tempdir().expect("tmp");
    let h = Harness::start(dir.path());

    let app = App::launch(&h);
    app.screenshot("01-first-start");
    app.js(&format!(
        "localStorage.setItem('lumen.model', {}); location.reload(); return true;",
        json!(model.to_string_lossy())
    ));
    app.wait_for("the chat", || {
        app.js("return document.querySelector('textarea') !== null")
            .as_bool()
            .unwrap_or(false)
    });
    app.type_into("textarea", "What is the capital of France?");
    app.click(".composer button");
    // The reply streams in, then shows its speed.
    app.wait_for("the reply", || {
        app.js("return document.querySelector('.message.assistant .stats') !== null")
            .as_bool()
            .unwrap_or(false)
    });
    let reply = app.text(LAST_REPLY);
    assert!(reply.contains("tok/s"), "{reply}");
    assert!(reply.len() > "tok/s".len() + 20, "{reply}");
    app.screenshot("02-reply");
    let titles = app.text(
        "return Array.from(document.querySelectorAll('.sidebar li')).map(e => e.innerText).join('|')",
    );
    assert_eq!(titles, "What is the capital of France?");
    app.quit();

    // Restart: the conversation is there, and search finds it.
    let app = App::launch(&h);
    app.wait_for("the history", || {
        app.text("return document.querySelector('.sidebar li')?.innerText ?? ''")
            == "What is the capital of France?"
    });
    app.click(".sidebar li button");
    app.wait_for("the stored reply", || !app.text(LAST_REPLY).is_empty());
    app.type_into("input[type=search]", "capit");
    app.wait_for("a search hit", || {
        app.text("return document.querySelector('.hits')?.innerText ?? ''")
            .contains("capital")
    });
    app.screenshot("03-search");
    app.quit();
}
