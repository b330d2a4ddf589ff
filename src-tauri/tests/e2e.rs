//! The real app, driven like a user would: under Xvfb, through tauri-driver
//! and WebKitWebDriver (W3C WebDriver, see `lumen-e2e`), with the real
//! engine (the SmolLM2 GGUF, and a tiny random-weight Llama 3.2 Vision
//! checkpoint), a real SQLite history in a temporary folder, and a real
//! HTTP server standing in for the Hugging Face Hub. Screenshots of each
//! screen are kept in `$CARGO_TARGET_DIR/e2e-screenshots/`.
//!
//! Needs `Xvfb`, `WebKitWebDriver` (Debian: webkit2gtk-driver) and
//! `tauri-driver`; scripts/setup.sh installs them.
#![cfg(target_os = "linux")]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use lumen_e2e::{Driver, Session};
use lumen_testhub::{HubFile, HubRepo, TestHub};
use serde_json::json;

/// The tests share two cores: one app at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const LONG: Duration = Duration::from_secs(180);
const SHORT: Duration = Duration::from_secs(30);

#[path = "../../tests/support/assets.rs"]
mod assets;
use assets::{dog, smollm2_path as smollm2, tiny_vision_model};

fn shot(app: &Session<'_>, name: &str) {
    // What changed in the page is on screen a frame or two later.
    app.js_async(
        "const done = arguments[arguments.length - 1];
         requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(done, 50)));",
        &[],
    )
    .expect("frames");
    let dir =
        PathBuf::from(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()))
            .join("e2e-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    app.screenshot(&dir.join(format!("{name}.png")))
        .expect("screenshot");
}

/// A data folder, a settings folder and a model cache for one test.
struct Profile {
    dir: tempfile::TempDir,
}

impl Profile {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tmp"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Sets the model new chats use (saved as the app saves its settings).
    fn default_model(&self, model: &Path) {
        lumen_core::AppSettings {
            default_model: Some(model.to_string_lossy().into_owned()),
            ..Default::default()
        }
        .save(&self.path("config/settings.json"))
        .expect("settings");
    }

    /// Stores a conversation titled `title` of (question, answer) turns in
    /// this profile's history.
    fn store_conversation(&self, title: &str, turns: &[(String, String)]) {
        lumen_e2e::store_conversation(&self.path("data"), title, turns).expect("history");
    }

    fn driver(&self, endpoint: &str) -> Driver {
        let env: Vec<(&str, OsString)> = vec![
            ("LUMEN_DATA_DIR", self.path("data").into()),
            ("LUMEN_CONFIG_DIR", self.path("config").into()),
            ("HF_HUB_CACHE", self.path("hub").into()),
            ("HF_ENDPOINT", endpoint.into()),
            ("HF_TOKEN", "".into()),
            ("LUMEN_E2E", "1".into()),
        ];
        Driver::start(&env).expect("driver")
    }
}

fn launch(driver: &Driver) -> Session<'_> {
    let app = Session::launch(driver, env!("CARGO_BIN_EXE_lumen-app").as_ref()).expect("launch");
    app.wait_for_element(".app", LONG).expect("the app");
    app
}

fn text(app: &Session<'_>, script: &str) -> String {
    app.text(script).expect("script")
}

fn count(app: &Session<'_>, css: &str) -> usize {
    app.js_with(
        "return document.querySelectorAll(arguments[0]).length",
        &[json!(css)],
    )
    .expect("count")
    .as_u64()
    .unwrap_or(0) as usize
}

/// Clicks the button whose text is `label` (inside `scope`).
fn click_text(app: &Session<'_>, scope: &str, label: &str) {
    let clicked = app
        .js_with(
            "const b = Array.from(document.querySelectorAll(arguments[0] + ' button'))
               .find(b => b.innerText.trim() === arguments[1]);
             if (b) b.click(); return !!b;",
            &[json!(scope), json!(label)],
        )
        .expect("click");
    assert_eq!(clicked, json!(true), "no `{label}` button in {scope}");
}

const LAST_REPLY: &str = "const m = document.querySelectorAll('.message.assistant'); \
     return m.length ? m[m.length - 1].innerText : '';";
const LAST_STATUS: &str = "const m = document.querySelectorAll('.message.assistant'); \
     return m.length ? m[m.length - 1].dataset.status : '';";

fn ask(app: &Session<'_>, question: &str) {
    app.wait_for_element("textarea[aria-label=Message]", LONG)
        .expect("composer");
    app.type_into("textarea[aria-label=Message]", question)
        .expect("type");
    app.click("button[aria-label=Send]").expect("send");
}

#[test]
fn first_run_chat_stop_restart_and_search() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let profile = Profile::new();
    let driver = profile.driver("http://127.0.0.1:9");

    // First run: nothing installed, nothing chosen: the welcome page.
    let app = launch(&driver);
    app.wait_for_element(".welcome", SHORT).expect("welcome");
    let welcome = text(&app, "return document.querySelector('.welcome').innerText");
    assert!(welcome.contains("Llama 3.2 3B Instruct"), "{welcome}");
    shot(&app, "01-welcome");
    app.quit().expect("quit");

    // With a model chosen: ask, and the streamed reply shows its speed.
    profile.default_model(&smollm2());
    let app = launch(&driver);
    ask(&app, "What is the capital of France?");
    app.wait_for_element(".message.assistant .stats", LONG)
        .expect("the reply");
    let reply = text(&app, LAST_REPLY);
    assert!(
        reply.contains("tok/s") && reply.contains("first token"),
        "{reply}"
    );
    assert!(reply.len() > 40, "{reply}");
    shot(&app, "02-reply");
    let titles = text(
        &app,
        "return Array.from(document.querySelectorAll('.sidebar li .conversation-title'))
           .map(e => e.innerText).join('|')",
    );
    assert_eq!(titles, "What is the capital of France?");

    // Regenerate: a second version of the reply, the first kept.
    app.click(".message.assistant button[aria-label='Regenerate reply']")
        .expect("regenerate");
    app.wait_for("the second version", LONG, || {
        Ok(text(
            &app,
            "return document.querySelector('.message.assistant .count')?.innerText ?? ''",
        ) == "2/2"
            && text(&app, LAST_STATUS) == "complete")
    })
    .expect("regenerated");
    // Edit and resend: a second version of the question, with its reply.
    app.wait_for("the edit button", SHORT, || {
        Ok(app
            .js("const b = document.querySelector(\".message.user button[aria-label='Edit message']\"); return !!b && !b.disabled;")?
            .as_bool()
            == Some(true))
    })
    .expect("edit enabled");
    app.hover_click(".message.user button[aria-label='Edit message']")
        .expect("edit");
    app.wait_for_element("textarea[aria-label='Edit message']", SHORT)
        .expect("editor");
    app.clear("textarea[aria-label='Edit message']")
        .expect("clear");
    app.type_into(
        "textarea[aria-label='Edit message']",
        "What is the capital of Italy?",
    )
    .expect("type");
    click_text(&app, ".message.user", "Save & send");
    app.wait_for("the edited question's reply", LONG, || {
        Ok(text(
            &app,
            "return document.querySelector('.message.user')?.innerText ?? ''",
        )
        .contains("Italy")
            && text(
                &app,
                "return document.querySelector('.message.user .count')?.innerText ?? ''",
            ) == "2/2"
            && text(&app, LAST_STATUS) == "complete")
    })
    .expect("edited");
    shot(&app, "02b-edited");
    // The first version is still there.
    app.click(".message.user button[aria-label='Previous version']")
        .expect("previous");
    app.wait_for("the first question again", SHORT, || {
        Ok(text(
            &app,
            "return document.querySelector('.message.user')?.innerText ?? ''",
        )
        .contains("France"))
    })
    .expect("first version");
    app.click(".message.user button[aria-label='Next version']")
        .expect("next");

    // Stop mid-answer: what was written stays, marked as stopped.
    ask(
        &app,
        "Write a long story about a lighthouse keeper and a storm.",
    );
    app.wait_for("a reply being written", LONG, || {
        Ok(text(&app, LAST_STATUS) == "streaming" && text(&app, LAST_REPLY).len() > 40)
    })
    .expect("streaming");
    app.click("button[aria-label='Stop reply']").expect("stop");
    app.wait_for("the stopped reply", SHORT, || {
        Ok(text(&app, LAST_STATUS) == "cancelled")
    })
    .expect("stopped");
    let stopped = text(&app, LAST_REPLY);
    assert!(stopped.len() > 40, "{stopped}");
    shot(&app, "03-stopped");
    app.quit().expect("quit");

    // Restart: the conversation is there, opens, and search finds it.
    let app = launch(&driver);
    app.wait_for("the history", LONG, || {
        Ok(text(
            &app,
            "return document.querySelector('.sidebar li .conversation-title')?.innerText ?? ''",
        ) == "What is the capital of France?")
    })
    .expect("history");
    app.click(".sidebar li button.open").expect("open");
    app.wait_for("the stored replies", LONG, || {
        Ok(count(&app, ".message.assistant") == 2)
    })
    .expect("stored");
    assert_eq!(text(&app, LAST_STATUS), "cancelled");
    app.type_into("input[type=search]", "capit")
        .expect("search");
    app.wait_for("a search hit", LONG, || {
        Ok(text(
            &app,
            "return document.querySelector('.hits')?.innerText ?? ''",
        )
        .contains("capital")
            && count(&app, ".hits mark") > 0)
    })
    .expect("hit");
    shot(&app, "04-search");
    // A result opens its conversation at the message, marked for a moment.
    app.js("Array.from(document.querySelectorAll('.sidebar button'))
           .find(b => b.innerText.includes('New chat')).click(); return true;")
        .expect("new chat");
    app.wait_for("an empty chat", SHORT, || Ok(count(&app, ".message") == 0))
        .expect("empty");
    if count(&app, ".hits .hit") == 0 {
        app.type_into("input[type=search]", "capit")
            .expect("search");
    }
    app.wait_for("a message hit", SHORT, || {
        Ok(count(&app, ".hits .hit .kind-message") > 0)
    })
    .expect("message hit");
    app.js(
        "document.querySelector('.hits .hit .kind-message').closest('.hit').click(); return true;",
    )
    .expect("open hit");
    app.wait_for("the message found", SHORT, || {
        Ok(count(&app, ".message.highlighted") == 1)
    })
    .expect("highlighted");

    // Settings: the dark theme applies at once and is kept.
    click_text(&app, "header", "Settings");
    app.wait_for_element("input[type=radio][value=dark]", SHORT)
        .expect("settings");
    app.click("input[type=radio][value=dark]").expect("dark");
    app.wait_for("the dark theme", SHORT, || {
        Ok(text(&app, "return document.documentElement.dataset.theme ?? ''") == "dark")
    })
    .expect("dark");
    shot(&app, "05-settings-dark");
    app.quit().expect("quit");
    let saved = std::fs::read_to_string(profile.path("config/settings.json")).expect("settings");
    assert!(saved.contains("\"theme\": \"dark\""), "{saved}");
}

#[test]
fn images_picked_and_dropped_are_answered_by_a_vision_model() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let profile = Profile::new();
    profile.default_model(&tiny_vision_model(profile.dir.path()));
    let driver = profile.driver("http://127.0.0.1:9");
    let app = launch(&driver);
    app.wait_for_element("textarea[aria-label=Message]", LONG)
        .expect("composer");
    let dog = dog();

    // The file input: the browser reads the bytes, Rust checks them.
    app.type_into(
        "input[type=file][aria-label='Attach image file']",
        &dog.to_string_lossy(),
    )
    .expect("attach");
    app.wait_for(
        "the thumbnail",
        SHORT,
        || Ok(count(&app, ".thumb img") == 1),
    )
    .expect("thumbnail");

    // A drop: the path goes to Rust, which reads it (the same code path a
    // file dropped on the window takes); a broken file is refused clearly.
    let broken = profile.path("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot an image").expect("write");
    let dropped = app
        .js_async(
            "const done = arguments[arguments.length - 1];
             window.__TAURI_INTERNALS__.invoke('e2e_drop', { paths: arguments[0] })
               .then(() => done('ok'), e => done(JSON.stringify(e)));",
            &[json!([dog, broken])],
        )
        .expect("drop");
    assert_eq!(dropped, json!("ok"));
    app.wait_for("the dropped image and the refusal", SHORT, || {
        Ok(count(&app, ".thumb img") == 2 && count(&app, ".thumb-error") == 1)
    })
    .expect("dropped");
    let refusal = text(
        &app,
        "return document.querySelector('.thumb-error').innerText",
    );
    assert!(refusal.contains("broken.png"), "{refusal}");
    shot(&app, "06-attached");
    app.click(".thumb-error button").expect("dismiss");

    ask(&app, "What is in these pictures?");
    app.wait_for_element(".message.assistant .stats", LONG)
        .expect("the vision reply");
    assert_eq!(count(&app, ".message.user .attachment img"), 2);
    assert_eq!(text(&app, LAST_STATUS), "complete");
    shot(&app, "07-vision-reply");
    app.quit().expect("quit");
}

#[test]
fn the_models_page_downloads_from_the_hub_with_pause_and_resume() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let hub = TestHub::start().expect("hub");
    let repo = "bartowski/Llama-3.2-1B-Instruct-GGUF";
    hub.add_repo(HubRepo::new(
        repo,
        vec![HubFile::from_disk("Llama-3.2-1B-Instruct-Q4_K_M.gguf", smollm2()).expect("file")],
    ));
    // Slow enough to watch: ~12 s for the ~90 MB file.
    hub.set_rate_limit(Some(8_000_000));
    let profile = Profile::new();
    profile.default_model(&smollm2());
    let driver = profile.driver(&hub.url());
    let app = launch(&driver);
    app.wait_for_element("header", LONG).expect("header");
    click_text(&app, "header", "Models");
    let download = "button[aria-label='Download Llama 3.2 1B Instruct Q4_K_M']";
    app.wait_for_element(download, LONG).expect("catalogue");
    app.click(download).expect("download");
    let progress = "const p = document.querySelector('.download progress'); \
                    return p && p.max > 0 ? p.value / p.max : 0;";
    app.wait_for("progress", LONG, || {
        Ok(app.js(progress)?.as_f64().unwrap_or(0.0) > 0.05)
    })
    .expect("progress");
    shot(&app, "08-downloading");
    click_text(&app, ".download", "Pause");
    app.wait_for_element(".download.state-paused", SHORT)
        .expect("paused");
    let at_pause = app.js(progress).expect("progress").as_f64().unwrap_or(0.0);
    assert!(at_pause < 1.0, "paused before the end");
    click_text(&app, ".download", "Resume");
    app.wait_for_element(".download.state-finished", LONG)
        .expect("finished");
    app.wait_for("the installed model", SHORT, || {
        Ok(text(
            &app,
            "return document.querySelector('.models')?.innerText ?? ''",
        )
        .contains(repo))
    })
    .expect("installed");
    shot(&app, "09-downloaded");
    app.quit().expect("quit");
    // The file arrived whole, verified, where other tools find it.
    let snapshot = profile
        .path("hub")
        .join("models--bartowski--Llama-3.2-1B-Instruct-GGUF/snapshots");
    let file = std::fs::read_dir(&snapshot)
        .expect("snapshot")
        .next()
        .expect("one")
        .expect("entry")
        .path()
        .join("Llama-3.2-1B-Instruct-Q4_K_M.gguf");
    assert_eq!(
        std::fs::metadata(&file).expect("file").len(),
        std::fs::metadata(smollm2()).expect("src").len()
    );
}

/// Opens the stored conversation titled `title` from the sidebar.
fn open_from_sidebar(app: &Session<'_>, title: &str) {
    app.wait_for_element(".sidebar li button.open", LONG)
        .expect("the conversation");
    app.click(&format!(".sidebar li button.open[title='{title}']"))
        .expect("open the conversation");
}

/// Whether the display shows a window titled `title` (native dialogs are
/// outside the page, where WebDriver cannot see them).
fn window_titled(display: &str, title: &str) -> bool {
    std::process::Command::new("xwininfo")
        .args(["-root", "-tree", "-display", display])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("\"{title}\"")))
        .unwrap_or(false)
}

#[test]
fn a_web_address_in_a_reply_opens_only_after_the_user_confirms() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let profile = Profile::new();
    // A stored conversation whose reply holds a link (no model needed).
    profile.store_conversation(
        "Links",
        &[(
            "Where are the docs?".into(),
            "See [the docs](https://example.com/docs) or javascript:alert(1).".into(),
        )],
    );
    let driver = profile.driver("http://127.0.0.1:9");
    let app = launch(&driver);
    open_from_sidebar(&app, "Links");
    app.wait_for_element(".message.assistant [role=link]", SHORT)
        .expect("a link in the reply");
    // Only the web address is a link.
    assert_eq!(count(&app, ".message.assistant [role=link]"), 1);
    assert!(!window_titled(driver.display(), "Open link"));
    app.click(".message.assistant [role=link]").expect("click");
    let deadline = std::time::Instant::now() + SHORT;
    while !window_titled(driver.display(), "Open link") {
        assert!(
            std::time::Instant::now() < deadline,
            "no confirmation dialog after clicking the link"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    shot(&app, "link-confirmation");
}

#[test]
fn a_long_conversation_opens_at_its_end_and_grows_upward_in_place() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let profile = Profile::new();
    let turns: Vec<(String, String)> = (0..60)
        .map(|i| {
            (
                format!("Question {i}"),
                format!("Answer {i}.\n\nA second paragraph, to give it height."),
            )
        })
        .collect();
    profile.store_conversation("Long", &turns);
    let driver = profile.driver("http://127.0.0.1:9");
    let app = launch(&driver);
    open_from_sidebar(&app, "Long");
    app.wait_for_element("button.earlier", SHORT)
        .expect("earlier messages held back");
    // The latest 40 messages are drawn, scrolled to the end.
    assert_eq!(count(&app, ".message"), 40);
    assert!(text(&app, LAST_REPLY).starts_with("Answer 59."));
    // Scrolling to the top draws the previous 40 above, and what was at the
    // top stays where it was on screen.
    let moved = app
        .js_async(
            "const done = arguments[arguments.length - 1];
             const list = document.querySelector('.messages');
             const first = document.querySelector('.message');
             const id = first.dataset.messageId;
             list.scrollTop = 0;
             const before = first.getBoundingClientRect().top;
             list.dispatchEvent(new Event('scroll'));
             const t0 = performance.now();
             (function wait() {
               if (document.querySelectorAll('.message').length >= 80) {
                 requestAnimationFrame(() => requestAnimationFrame(() => {
                   const same = document.querySelector(`[data-message-id=\"${id}\"]`);
                   done(Math.abs(same.getBoundingClientRect().top - before));
                 }));
               } else if (performance.now() - t0 > 10000) done(-1);
               else requestAnimationFrame(wait);
             })();",
            &[],
        )
        .expect("scroll up");
    let moved = moved.as_f64().expect("a distance");
    assert!(
        moved >= 0.0,
        "no earlier messages after scrolling to the top"
    );
    assert!(moved < 2.0, "the message at the top moved by {moved} px");
    assert_eq!(count(&app, ".message"), 80);
    shot(&app, "long-conversation");
}
