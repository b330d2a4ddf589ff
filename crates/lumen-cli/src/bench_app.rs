//! `lumen bench app`: the desktop app's cold start to first paint, its
//! idle memory without a model, and the UI's frame times while a reply
//! streams. Linux, under a virtual display (Xvfb).
//!
//! - Start: the app is spawned directly (no driver in between) with a
//!   fresh data folder; the time runs until the UI's first frame, which
//!   the UI reports once it has painted (two animation frames after it
//!   mounted) and the app prints when `LUMEN_BENCH=1`.
//! - Memory: 3 s after that, resident (RSS) and proportional (PSS, shared
//!   pages split between processes) memory of the app and of the WebKit
//!   processes it started, from `/proc`.
//! - Frames: through tauri-driver (as the end-to-end tests drive it), a
//!   question to the starter model; in the page, the gaps between
//!   animation frames while the reply streams.
//! - Opening a long conversation: two stored conversations of
//!   [`LONG_TURNS`] exchanges each (markdown with lists, tables and code
//!   blocks) are opened in turn from the sidebar, through tauri-driver; the
//!   time runs from the click to the frame after the latest reply appeared
//!   with its code block.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use lumen_e2e::{Display, Driver, Guard, Session};
use serde_json::json;

/// `lumen bench app`.
#[derive(Debug, Args)]
pub struct AppBenchArgs {
    /// The app's binary (default: `lumen-app` next to this `lumen`).
    #[arg(long)]
    app: Option<PathBuf>,
    /// Starts to time.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The model that streams during the frame-time run (default: the
    /// starter model in the test assets). `none` skips that run.
    #[arg(long)]
    model: Option<String>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Resident and proportional memory of a process tree, bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    app_rss: u64,
    total_rss: u64,
    total_pss: u64,
    processes: usize,
}

/// Runs the benchmark.
pub fn main(args: AppBenchArgs) -> Result<()> {
    let app = match &args.app {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no folder for this binary")?
            .join("lumen-app"),
    };
    if !app.is_file() {
        bail!(
            "{} not found: build the app (`cargo build --release -p lumen-app`) or pass --app",
            app.display()
        );
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let display = Display::start()?;
    let mut starts = Vec::new();
    let mut memory = Memory::default();
    for run in 0..args.runs {
        let dir = tempfile::tempdir()?;
        let (ms, mem) = start_once(&app, &display.name, dir.path(), run == 0)?;
        if !args.json {
            eprintln!("start {}: {ms:.0} ms to first paint", run + 1);
        }
        starts.push(ms);
        if let Some(m) = mem {
            memory = m;
        }
    }
    drop(display);
    let opens = open_times(&app)?;
    let frames = match args.model.as_deref() {
        Some("none") => None,
        Some(m) => Some(frame_times(&app, m)?),
        None => Some(frame_times(&app, &starter_model()?)?),
    };
    let mut sorted = starts.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    if args.json {
        println!(
            "{}",
            json!({
                "first_start_ms": starts[0],
                "median_start_ms": median,
                "starts_ms": starts,
                "idle_app_rss_bytes": memory.app_rss,
                "idle_total_rss_bytes": memory.total_rss,
                "idle_total_pss_bytes": memory.total_pss,
                "idle_processes": memory.processes,
                "frames": frames.as_ref().map(Frames::json),
                "open_conversation": opens.json(),
            })
        );
        return Ok(());
    }
    println!("Lumen desktop app ({})", app.display());
    println!(
        "  cold start to first paint: first {:.0} ms, median {median:.0} ms of {} (target < 1500 ms)",
        starts[0],
        starts.len()
    );
    println!(
        "  idle memory, no model: app {:.0} MiB RSS; with its {} WebKit processes {:.0} MiB RSS, {:.0} MiB PSS (target < 200 MB)",
        mib(memory.app_rss),
        memory.processes.saturating_sub(1),
        mib(memory.total_rss),
        mib(memory.total_pss)
    );
    println!(
        "  opening a conversation of {} messages ({} characters): median {:.0} ms, slowest {:.0} ms of {} (the open_conversation command alone: {:.0} ms)",
        opens.messages, opens.chars, opens.median_ms, opens.max_ms, opens.count, opens.command_ms
    );
    if let Some(f) = frames {
        println!(
            "  frames while a reply streams ({} characters in {:.1} s, {} frames): median {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, worst {:.1} ms; {} over 50 ms",
            f.chars, f.seconds, f.count, f.p50, f.p95, f.p99, f.max, f.long
        );
        let worst: Vec<String> = f
            .worst
            .iter()
            .map(|(at, len)| format!("{len} ms at {:.1} s", *at as f64 / 1000.0))
            .collect();
        if !worst.is_empty() {
            println!("  longest frames: {}", worst.join(", "));
        }
    }
    Ok(())
}

/// One start: spawn → first paint; memory after 3 idle seconds when asked.
fn start_once(
    app: &Path,
    display: &str,
    dir: &Path,
    measure_memory: bool,
) -> Result<(f64, Option<Memory>)> {
    let started = Instant::now();
    let mut child = Guard::spawn(
        Command::new(app)
            .env("DISPLAY", display)
            .env("LUMEN_BENCH", "1")
            .env("LUMEN_DATA_DIR", dir.join("data"))
            .env("LUMEN_CONFIG_DIR", dir.join("config"))
            .env("HF_HUB_CACHE", dir.join("hub"))
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )?;
    let stdout = child.stdout().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("lumen-bench: first-paint") {
                let _ = tx.send(Instant::now());
            }
        }
    });
    let painted = rx
        .recv_timeout(Duration::from_secs(60))
        .context("the app did not report its first paint within 60 s")?;
    let ms = painted.duration_since(started).as_secs_f64() * 1000.0;
    let memory = if measure_memory {
        std::thread::sleep(Duration::from_secs(3));
        Some(tree_memory(child.id())?)
    } else {
        None
    };
    drop(child);
    Ok((ms, memory))
}

/// The memory of `root` and every process under it.
fn tree_memory(root: u32) -> Result<Memory> {
    let mut parents: HashMap<u32, u32> = HashMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        {
            parents.insert(pid, ppid);
        }
    }
    let in_tree = |mut pid: u32| {
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match parents.get(&pid) {
                Some(&p) if p != 0 => pid = p,
                _ => return false,
            }
        }
        false
    };
    let mut m = Memory::default();
    for &pid in parents.keys() {
        if !in_tree(pid) {
            continue;
        }
        let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        let field = |name: &str| {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        let rss = field("Rss:");
        m.total_rss += rss;
        m.total_pss += field("Pss:");
        m.processes += 1;
        if pid == root {
            m.app_rss = rss;
        }
    }
    Ok(m)
}

/// Frame gaps while a reply streams.
#[derive(Debug)]
struct Frames {
    count: usize,
    /// Characters of the reply.
    chars: usize,
    seconds: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    long: usize,
    /// The longest gaps: when they began (ms after the question was sent)
    /// and how long they were.
    worst: Vec<(u64, u64)>,
}

impl Frames {
    fn json(&self) -> serde_json::Value {
        json!({
            "count": self.count, "reply_chars": self.chars, "seconds": self.seconds,
            "p50_ms": self.p50, "p95_ms": self.p95, "p99_ms": self.p99,
            "max_ms": self.max, "over_50ms": self.long,
            "worst_at_ms": self.worst,
        })
    }
}

/// Exchanges in each conversation the opening benchmark stores.
const LONG_TURNS: usize = 60;
/// Times each of the two conversations is opened.
const OPENS: usize = 3;

/// Times to open a long stored conversation.
#[derive(Debug)]
struct Opens {
    messages: usize,
    chars: usize,
    count: usize,
    median_ms: f64,
    max_ms: f64,
    /// Median time of the `open_conversation` command alone, from the page.
    command_ms: f64,
}

impl Opens {
    fn json(&self) -> serde_json::Value {
        json!({
            "messages": self.messages, "chars": self.chars, "count": self.count,
            "median_ms": self.median_ms, "max_ms": self.max_ms,
            "command_median_ms": self.command_ms,
        })
    }
}

/// One stored reply of the opening benchmark: prose, a list, a table and
/// a code block, as a model's answers look.
fn long_reply(turn: usize) -> String {
    format!(
        "Here is **answer {turn}**, with the details you asked for.\n\n\
         1. The first point explains *why* the value is {turn}.\n\
         2. The second point cites `compute_{turn}()` and [the docs](https://example.com).\n\
         3. The third point sums it up.\n\n\
         | item | count | price |\n|---|---:|---:|\n| apples | {turn} | 1.20 |\n| pears | 7 | 0.80 |\n\n\
         ```rust\n\
         /// Sums the prices of a basket.\n\
         fn total(items: &[(u32, f64)]) -> f64 {{\n    \
             let mut sum = 0.0;\n    \
             for &(count, price) in items {{\n        \
                 sum += f64::from(count) * price; // turn {turn}\n    \
             }}\n    \
             sum\n\
         }}\n\
         ```\n\n\
         That comes to {turn}.20 in all; tell me if you want it broken down by day."
    )
}

/// Stores two long conversations, then opens them in turn from the
/// sidebar and times each opening (click to the frame after the last reply
/// was drawn).
fn open_times(app: &Path) -> Result<Opens> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let turns: Vec<(String, String)> = (0..LONG_TURNS)
        .map(|turn| {
            (
                format!("Question {turn}: what is the total for day {turn}?"),
                long_reply(turn),
            )
        })
        .collect();
    let chars = turns
        .iter()
        .map(|(q, a)| q.chars().count() + a.chars().count())
        .sum();
    for title in ["Long conversation A", "Long conversation B"] {
        lumen_e2e::store_conversation(&data, title, &turns)?;
    }
    let env: Vec<(&str, OsString)> = vec![
        ("LUMEN_DATA_DIR", data.into()),
        ("LUMEN_CONFIG_DIR", dir.path().join("config").into()),
        ("HF_HUB_CACHE", dir.path().join("hub").into()),
        ("HF_ENDPOINT", "http://127.0.0.1:9".into()),
    ];
    let driver = Driver::start(&env)?;
    let ui = Session::launch(&driver, app)?;
    ui.wait_for_element(".sidebar li .conversation-title", Duration::from_secs(120))?;
    let mut times = Vec::new();
    for i in 0..2 * OPENS {
        let title = if i % 2 == 0 { "A" } else { "B" };
        let ms = ui.js_async(
            "const [title, turns, done] = arguments;
             const button = Array.from(document.querySelectorAll('.sidebar li button.open'))
               .find(b => b.innerText.includes('Long conversation ' + title));
             if (!button) { done(-1); return; }
             const t0 = performance.now();
             button.click();
             function frame(now) {
               const replies = document.querySelectorAll('.message.assistant');
               const last = replies[replies.length - 1];
               // The latest reply drawn, with its code block (the chat
               // draws the latest messages first).
               if (last && last.innerText.includes('answer ' + (turns - 1)) && last.querySelector('.code')) {
                 requestAnimationFrame(() => done(performance.now() - t0));
               } else if (now - t0 > 60000) done(-2);
               else requestAnimationFrame(frame);
             }
             requestAnimationFrame(frame);",
            &[json!(title), json!(LONG_TURNS)],
        )?;
        match ms.as_f64() {
            Some(ms) if ms >= 0.0 => times.push(ms),
            _ => bail!("conversation {title} did not open ({ms})"),
        }
    }
    // The command alone, called from the page as the UI calls it: the
    // history read, the view built and sent as JSON, and parsed.
    let mut command = Vec::new();
    for _ in 0..2 * OPENS {
        let ms = ui.js_async(
            "const done = arguments[arguments.length - 1];
             const id = Number(document.querySelector('.sidebar li button.open').dataset.id);
             const t0 = performance.now();
             window.__TAURI_INTERNALS__.invoke('open_conversation', { conversationId: id })
               .then(() => done(performance.now() - t0), () => done(-1));",
            &[],
        )?;
        match ms.as_f64() {
            Some(ms) if ms >= 0.0 => command.push(ms),
            _ => bail!("open_conversation failed"),
        }
    }
    let _ = ui.quit();
    let max_ms = times.iter().copied().fold(0.0, f64::max);
    times.sort_by(f64::total_cmp);
    command.sort_by(f64::total_cmp);
    Ok(Opens {
        messages: 2 * LONG_TURNS,
        chars,
        count: times.len(),
        median_ms: times[times.len() / 2],
        max_ms,
        command_ms: command[command.len() / 2],
    })
}

/// The starter model from the test assets.
fn starter_model() -> Result<String> {
    let p = crate::bench::asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        .context("no starter model: pass --model FILE, or --model none")?;
    Ok(p.to_string_lossy().into_owned())
}

/// Asks a question through the UI and records the animation-frame gaps
/// while the reply streams.
fn frame_times(app: &Path, model: &str) -> Result<Frames> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    lumen_core::AppSettings {
        default_model: Some(model.to_string()),
        ..Default::default()
    }
    .save(&config.join("settings.json"))
    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let env: Vec<(&str, OsString)> = vec![
        ("LUMEN_DATA_DIR", dir.path().join("data").into()),
        ("LUMEN_CONFIG_DIR", config.into()),
        ("HF_HUB_CACHE", dir.path().join("hub").into()),
        ("HF_ENDPOINT", "http://127.0.0.1:9".into()),
    ];
    let driver = Driver::start(&env)?;
    let ui = Session::launch(&driver, app)?;
    let long = Duration::from_secs(120);
    ui.wait_for_element("textarea[aria-label=Message]", long)?;
    ui.type_into(
        "textarea[aria-label=Message]",
        "Write a short story about a lighthouse keeper and a storm.",
    )?;
    // Record from the click until the reply is no longer streaming.
    let recorded = ui.js_async(
        "const done = arguments[arguments.length - 1];
         const gaps = []; const long = []; let last = performance.now(); const t0 = last;
         let chars = 0; let seen = false;
         document.querySelector('button[aria-label=Send]').click();
         function frame(now) {
           gaps.push(now - last);
           if (now - last > 50) long.push([Math.round(last - t0), Math.round(now - last)]);
           last = now;
           const r = document.querySelectorAll('.message.assistant');
           const reply = r[r.length - 1];
           const streaming = reply && reply.dataset.status === 'streaming';
           if (streaming) { seen = true; chars = reply.innerText.length; }
           if ((seen && !streaming) || now - t0 > 240000) {
             done({gaps, long, seconds: (now - t0) / 1000, chars});
           } else requestAnimationFrame(frame);
         }
         requestAnimationFrame(frame);",
        &[],
    )?;
    let _ = ui.quit();
    let mut gaps: Vec<f64> = recorded["gaps"]
        .as_array()
        .context("no frame gaps")?
        .iter()
        .filter_map(|g| g.as_f64())
        .collect();
    if gaps.len() < 10 {
        bail!("only {} frames were recorded", gaps.len());
    }
    gaps.sort_by(f64::total_cmp);
    let pick = |q: f64| gaps[((gaps.len() - 1) as f64 * q).round() as usize];
    Ok(Frames {
        count: gaps.len(),
        chars: recorded["chars"].as_u64().unwrap_or(0) as usize,
        seconds: recorded["seconds"].as_f64().unwrap_or(0.0),
        p50: pick(0.5),
        p95: pick(0.95),
        p99: pick(0.99),
        max: gaps[gaps.len() - 1],
        long: gaps.iter().filter(|&&g| g > 50.0).count(),
        worst: {
            let mut w: Vec<(u64, u64)> = recorded["long"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p[0].as_u64()?, p[1].as_u64()?)))
                .collect();
            w.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
            w.truncate(5);
            w
        },
    })
}
