//! Drives Lumen's desktop app the way a user would, for the end-to-end
//! tests and `lumen bench app`: a virtual display (Xvfb), tauri-driver
//! (which starts the app under WebKitWebDriver), and a small W3C WebDriver
//! client over HTTP.
//!
//! Linux only (WebKitWebDriver). Needs `Xvfb`, `WebKitWebDriver` (Debian:
//! webkit2gtk-driver), `tauri-driver` (`cargo install tauri-driver`), and
//! for screenshots `xwd` (x11-apps) and netpbm; `scripts/setup.sh`
//! installs them.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let driver = lumen_e2e::Driver::start(&[("LUMEN_DATA_DIR", "/tmp/data".into())])?;
//! let app = lumen_e2e::Session::launch(&driver, "target/debug/lumen-app".as_ref())?;
//! app.wait_for("the app", std::time::Duration::from_secs(60), || {
//!     Ok(app.js("return document.querySelector('.app') !== null")?.as_bool() == Some(true))
//! })?;
//! app.quit()?;
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Stores a conversation titled `title` of (question, answer) turns, each
/// following the previous, in the history in `data_dir` (what the app opens
/// with `LUMEN_DATA_DIR`): a long history without a model to write it.
pub fn store_conversation(data_dir: &Path, title: &str, turns: &[(String, String)]) -> Result<()> {
    use lumen_store::{NewConversation, Role, Store};
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let store = Store::open(data_dir).await?;
            let chat = store
                .create_conversation(&NewConversation::titled(title))
                .await?;
            let mut parent = None;
            for (question, answer) in turns {
                let asked = store
                    .add_message(chat, parent, Role::User, question)
                    .await?;
                let answered = store
                    .add_message(chat, Some(asked), Role::Assistant, answer)
                    .await?;
                parent = Some(answered);
            }
            store.close().await;
            Ok(())
        })
}

/// A free TCP port on loopback.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A program from `~/.cargo/bin` or the `PATH`.
pub fn tool(name: &str) -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("HOME") {
        let cargo_bin = PathBuf::from(home).join(".cargo/bin").join(name);
        if cargo_bin.is_file() {
            return Ok(cargo_bin);
        }
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is missing: run scripts/setup.sh"))
}

/// A child process that is killed, with everything it started, when
/// dropped (tauri-driver starts WebKitWebDriver, which ignores SIGTERM and
/// would otherwise outlive it and keep its port).
#[derive(Debug)]
pub struct Guard(Child);

impl Guard {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        Ok(Self(cmd.process_group(0).spawn().with_context(|| {
            format!("cannot start {:?}", cmd.get_program())
        })?))
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Its standard output, if piped (once).
    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.0.stdout.take()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A virtual X display.
#[derive(Debug)]
pub struct Display {
    _xvfb: Guard,
    /// Its name, for `DISPLAY`.
    pub name: String,
}

impl Display {
    /// Starts Xvfb on a free display number (1280×900, 24-bit).
    pub fn start() -> Result<Self> {
        let number = 90 + free_port()? % 400;
        let name = format!(":{number}");
        let xvfb = Guard::spawn(
            Command::new(tool("Xvfb")?)
                .args([
                    name.as_str(),
                    "-screen",
                    "0",
                    "1280x900x24",
                    "-nolisten",
                    "tcp",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{number}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("Xvfb did not start on {name}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { _xvfb: xvfb, name })
    }
}

/// A display and a tauri-driver whose app sees `env`.
#[derive(Debug)]
pub struct Driver {
    display: Display,
    _driver: Guard,
    port: u16,
}

impl Driver {
    /// Starts Xvfb and tauri-driver; apps it launches get `env` on top of
    /// this process's environment.
    pub fn start(env: &[(&str, OsString)]) -> Result<Self> {
        let display = Display::start()?;
        let port = free_port()?;
        // Its WebKitWebDriver gets a free port too (the default, 4445, may
        // be taken by another run).
        let native_port = free_port()?;
        let mut cmd = Command::new(tool("tauri-driver")?);
        cmd.args(["--port", &port.to_string()])
            .args(["--native-port", &native_port.to_string()])
            .env("DISPLAY", &display.name)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut driver = Guard::spawn(&mut cmd)?;
        // Keep its log flowing (and visible when a test fails).
        if let Some(err) = driver.0.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("tauri-driver: {line}");
                }
            });
        }
        // Both listening: tauri-driver, and the WebKitWebDriver it starts
        // and forwards to (a session asked for before the latter listens
        // gets its connection closed, which a CI run met with five apps
        // starting at once on two cores).
        let deadline = Instant::now() + Duration::from_secs(30);
        for (p, what) in [(port, "tauri-driver"), (native_port, "WebKitWebDriver")] {
            while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
                if Instant::now() > deadline {
                    bail!("{what} did not start");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(Self {
            display,
            _driver: driver,
            port,
        })
    }

    /// The display's name.
    pub fn display(&self) -> &str {
        &self.display.name
    }
}

/// One WebDriver session: the app running.
pub struct Session<'a> {
    driver: &'a Driver,
    http: reqwest::blocking::Client,
    id: String,
}

impl<'a> Session<'a> {
    /// Starts the app at `application` and waits for its window.
    pub fn launch(driver: &'a Driver, application: &Path) -> Result<Self> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()?;
        let mut session = Self {
            driver,
            http,
            id: String::new(),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {"tauri:options": {
            "application": application
        }}}});
        let v = session.call("POST", "/session", Some(caps))?;
        session.id = v["sessionId"]
            .as_str()
            .context("WebDriver gave no session id")?
            .to_string();
        // Asynchronous scripts may wait for a whole reply.
        session.call(
            "POST",
            &session.at("/timeouts"),
            Some(json!({"script": 300_000})),
        )?;
        Ok(session)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.driver.port);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or(json!({}))),
        };
        let resp = req.send().with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .with_context(|| format!("{method} {path}: not JSON"))?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {v}");
        }
        Ok(v["value"].clone())
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.id)
    }

    /// Runs `script` (a function body; `return` gives the value).
    pub fn js(&self, script: &str) -> Result<Value> {
        self.js_with(script, &[])
    }

    /// Runs `script` with `arguments`.
    pub fn js_with(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.call(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Runs `script`, which calls `arguments[arguments.length - 1]` with
    /// its result when done.
    pub fn js_async(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.call(
            "POST",
            &self.at("/execute/async"),
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The text `script` returns ("" for anything else).
    pub fn text(&self, script: &str) -> Result<String> {
        Ok(self.js(script)?.as_str().unwrap_or_default().to_string())
    }

    /// Whether an element matches `css`.
    pub fn exists(&self, css: &str) -> Result<bool> {
        Ok(self
            .js_with(
                "return document.querySelector(arguments[0]) !== null",
                &[json!(css)],
            )?
            .as_bool()
            .unwrap_or(false))
    }

    /// The first element matching `css`.
    pub fn find(&self, css: &str) -> Result<String> {
        let v = self.call(
            "POST",
            &self.at("/element"),
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(v[ELEMENT]
            .as_str()
            .with_context(|| format!("no element {css}"))?
            .to_string())
    }

    /// Types `text` into the element matching `css` (for a file input:
    /// the file's path).
    pub fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let e = self.find(css)?;
        self.call(
            "POST",
            &self.at(&format!("/element/{e}/value")),
            Some(json!({ "text": text })),
        )?;
        Ok(())
    }

    /// Moves the mouse onto the element matching `css`, rests there (so
    /// that what shows on hover shows), and clicks: what a user does with
    /// controls that appear on hover.
    pub fn hover_click(&self, css: &str) -> Result<()> {
        let e = self.find(css)?;
        let origin = json!({ ELEMENT: e });
        self.call(
            "POST",
            &self.at("/actions"),
            Some(json!({"actions": [{
                "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
                "actions": [
                    {"type": "pointerMove", "origin": origin, "x": 0, "y": 0, "duration": 100},
                    {"type": "pause", "duration": 250},
                    {"type": "pointerDown", "button": 0},
                    {"type": "pointerUp", "button": 0}
                ]
            }]})),
        )?;
        self.call("DELETE", &self.at("/actions"), None)?;
        Ok(())
    }

    /// Empties the text field matching `css`.
    pub fn clear(&self, css: &str) -> Result<()> {
        let e = self.find(css)?;
        self.call("POST", &self.at(&format!("/element/{e}/clear")), None)?;
        Ok(())
    }

    /// Clicks the element matching `css`.
    pub fn click(&self, css: &str) -> Result<()> {
        let e = self.find(css)?;
        self.call("POST", &self.at(&format!("/element/{e}/click")), None)?;
        Ok(())
    }

    /// Waits until `ok` says yes, polling every 100 ms.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut ok: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !ok()? {
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Waits until an element matches `css`.
    pub fn wait_for_element(&self, css: &str, timeout: Duration) -> Result<()> {
        self.wait_for(css, timeout, || self.exists(css))
    }

    /// Saves a PNG screenshot of the display: the pixels the X server
    /// shows (`xwd`, converted with netpbm), which is what a user sees.
    /// WebKitWebDriver's own screenshot waits for WebKit to paint again,
    /// which a still page does not do when accelerated compositing is off
    /// (as Lumen sets it): it hung there.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let out = std::fs::File::create(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let status = Command::new("sh")
            .args([
                "-c",
                "xwd -root -silent -display \"$0\" | xwdtopnm 2>/dev/null | pnmtopng",
            ])
            .arg(self.driver.display())
            .stdout(out)
            .status()
            .context("cannot run xwd (x11-apps) and netpbm")?;
        if !status.success() {
            bail!("the screenshot failed: xwd | xwdtopnm | pnmtopng exited with {status}");
        }
        Ok(())
    }

    /// Ends the session (the app quits).
    pub fn quit(self) -> Result<()> {
        self.call("DELETE", &self.at(""), None)?;
        Ok(())
    }
}
