//! `lumen bench download`: download throughput on loopback, Lumen's
//! downloader against `curl` fetching the same file from the same server
//! (lumen-testhub's CDN listener), with CPU time, and what resuming costs.
//!
//! Lumen verifies the SHA-256 while downloading and curl does not, so a
//! third row times `curl | sha256sum`, the like-for-like pair. On a CPU
//! without SHA extensions SHA-256 runs at a few hundred MB/s per core, far
//! below loopback speed, and it bounds any verified download there; the
//! benchmark prints that bound too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use lumen_hub::{DownloadOptions, Downloader, HubCache, HubClient, PullRequest, RepoId};
use lumen_testhub::{Fault, HubFile, HubRepo, TestHub};
use serde_json::json;

/// `lumen bench download`.
#[derive(Debug, Args)]
pub struct DownloadBenchArgs {
    /// Size of the test file in MiB.
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// Where to put the files (default: a temporary folder, deleted
    /// afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

const REPO: &str = "bench/loopback";
const FILE: &str = "model.safetensors";

/// Wall and CPU seconds of one measured download.
#[derive(Debug, Clone, Copy)]
struct Timing {
    wall: f64,
    cpu: Option<f64>,
}

impl Timing {
    fn mb_s(&self, bytes: u64) -> f64 {
        bytes as f64 / self.wall / 1e6
    }
}

/// Runs the benchmark.
pub fn main(args: DownloadBenchArgs) -> Result<()> {
    if args.size_mib == 0 {
        bail!("--size-mib must be at least 1");
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let bytes = args.size_mib << 20;
    let source = dir.join("source.bin");
    eprintln!("writing a {} MiB test file…", args.size_mib);
    write_noise(&source, bytes)?;
    eprintln!("hashing it for the server's listing…");
    let file = HubFile::from_disk(FILE, &source)?;
    let sha = file.sha256.clone();
    let hub = TestHub::start()?;
    hub.add_repo(HubRepo::new(REPO, vec![file]));
    let url = hub.cdn_url(REPO, &sha);

    let sha_bound = sha256_speed()?;
    eprintln!("curl…");
    let curl_out = dir.join("curl.bin");
    // The server runs in this process: its CPU time while curl downloads
    // is what serving costs, to subtract from Lumen's below.
    let server0 = cpu_seconds();
    let curl = time_shell(&format!(
        "curl -sS --fail -o '{}' '{url}'",
        curl_out.display()
    ))?;
    let server_cpu = server0.zip(cpu_seconds()).map(|(a, b)| b - a);
    check_size(&curl_out, bytes)?;
    let _ = std::fs::remove_file(&curl_out);
    eprintln!("curl | sha256sum…");
    let piped = time_shell(&format!(
        "curl -sS --fail '{url}' | sha256sum > '{}'",
        dir.join("sum.txt").display()
    ))?;
    let sum = std::fs::read_to_string(dir.join("sum.txt")).unwrap_or_default();
    if !sum.starts_with(&sha) {
        bail!("curl | sha256sum gave a different hash: {sum}");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cache_dir = dir.join("hub");
    let downloader = Downloader::new(
        HubClient::new(&hub.url(), None)?,
        HubCache::new(&cache_dir),
        DownloadOptions::default(),
    );
    let request = PullRequest::parse(REPO, "main", &[FILE])?;
    let pull = |label: &str| -> Result<Timing> {
        eprintln!("{label}…");
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        runtime.block_on(downloader.pull(&request, |_| {}))?;
        let wall = t0.elapsed().as_secs_f64();
        Ok(Timing {
            wall,
            cpu: cpu0.zip(cpu_seconds()).map(|(a, b)| b - a),
        })
    };
    let fresh = |label: &str| -> Result<Timing> {
        let _ = std::fs::remove_dir_all(&cache_dir);
        pull(label)
    };
    let lumen = fresh("lumen")?;

    // Resume after a dropped connection at half way: same process, the
    // hash state is kept, so only a reconnect is added.
    hub.push_faults([Fault::Drop { after: bytes / 2 }]);
    let dropped = fresh("lumen, connection dropped at 50%")?;

    // Resume after a restart: half the file on disk, hashed again first.
    let _ = std::fs::remove_dir_all(&cache_dir);
    let repo = RepoId::parse(REPO)?;
    let cache = HubCache::new(&cache_dir);
    let partial = cache
        .incomplete_blob(&repo, &sha)
        .context("bad blob name")?;
    std::fs::create_dir_all(partial.parent().context("no parent")?)?;
    copy_prefix(&source, &partial, bytes / 2)?;
    let restarted = pull("lumen, restarted with 50% on disk")?;
    let _ = std::fs::remove_dir_all(&cache_dir);

    let report = json!({
        "bytes": bytes,
        "sha256_mb_s": sha_bound,
        "curl": timing_json(curl, bytes),
        "curl_sha256sum": timing_json(piped, bytes),
        "lumen": timing_json(lumen, bytes),
        "server_cpu_s": server_cpu,
        "lumen_vs_curl": lumen.mb_s(bytes) / curl.mb_s(bytes),
        "lumen_vs_curl_sha256sum": lumen.mb_s(bytes) / piped.mb_s(bytes),
        "resume_after_drop": timing_json(dropped, bytes),
        "resume_after_restart": timing_json(restarted, bytes),
        "resume_drop_overhead_s": dropped.wall - lumen.wall,
        "resume_restart_half_s": restarted.wall,
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    let row = |name: &str, t: Timing| {
        println!(
            "{name:<38} {:>8.0} MB/s {:>8.2} s wall {:>10}",
            t.mb_s(bytes),
            t.wall,
            t.cpu.map(|c| format!("{c:.2} s CPU")).unwrap_or_default()
        );
    };
    println!("loopback download of {} MiB", args.size_mib);
    row("curl (no verification)", curl);
    row("curl | sha256sum", piped);
    row("lumen (sha256 while downloading)", lumen);
    if let (Some(server), Some(cpu)) = (server_cpu, lumen.cpu) {
        println!(
            "{:<38} {:>8} {:>8} {:>10}",
            "  of which the client (server excluded)",
            "",
            "",
            format!("{:.2} s CPU", cpu - server)
        );
    }
    row("lumen, connection dropped at 50%", dropped);
    println!(
        "{:<38} {:>8} {:>8.2} s wall (half the file hashed from disk, half downloaded)",
        "lumen, restarted with 50% on disk", "", restarted.wall
    );
    println!(
        "lumen / curl: {:.0}%   lumen / (curl | sha256sum): {:.0}%   SHA-256 on one core here: {sha_bound:.0} MB/s",
        100.0 * lumen.mb_s(bytes) / curl.mb_s(bytes),
        100.0 * lumen.mb_s(bytes) / piped.mb_s(bytes)
    );
    Ok(())
}

fn timing_json(t: Timing, bytes: u64) -> serde_json::Value {
    json!({ "wall_s": t.wall, "cpu_s": t.cpu, "mb_s": t.mb_s(bytes) })
}

/// Pseudo-random bytes (incompressible), written in 1 MiB blocks.
fn write_noise(path: &Path, bytes: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn copy_prefix(from: &Path, to: &Path, n: u64) -> Result<()> {
    use std::io::Read;
    let mut src = std::fs::File::open(from)?.take(n);
    let mut dst = std::fs::File::create(to)?;
    std::io::copy(&mut src, &mut dst)?;
    Ok(())
}

fn check_size(path: &Path, bytes: u64) -> Result<()> {
    let got = std::fs::metadata(path)?.len();
    if got != bytes {
        bail!("{} has {got} bytes, expected {bytes}", path.display());
    }
    Ok(())
}

/// The speed of the downloader's SHA-256 on one core, MB/s (best of 3).
fn sha256_speed() -> Result<f64> {
    let block = vec![0x5au8; 1 << 20];
    let mut best = 0f64;
    for _ in 0..3 {
        let mut h = lumen_hub::FileHash::Sha256(String::new()).hasher(0);
        let t0 = Instant::now();
        for _ in 0..256 {
            h.update(&block);
        }
        std::hint::black_box(h.finish());
        best = best.max((256 * block.len()) as f64 / t0.elapsed().as_secs_f64() / 1e6);
    }
    Ok(best)
}

/// Times a shell pipeline with bash's `time` (wall, user + system CPU of
/// everything in it).
fn time_shell(pipeline: &str) -> Result<Timing> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("TIMEFORMAT='%R %U %S'; time ( {pipeline} )"))
        .output()
        .context("cannot run bash (and curl)")?;
    if !out.status.success() {
        bail!(
            "`{pipeline}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    let nums: Vec<f64> = last
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    match nums.as_slice() {
        [wall, user, sys] => Ok(Timing {
            wall: *wall,
            cpu: Some(user + sys),
        }),
        _ => bail!("cannot read the timing from `{last}`"),
    }
}

/// This process's CPU time (user + system), where /proc tells it.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Clock ticks: 100 per second on Linux.
    Some((utime + stime) / 100.0)
}
