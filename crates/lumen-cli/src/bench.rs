//! `lumen bench`: load time, resident memory, time to first token and
//! tokens per second, as a table on stderr or one JSON object on stdout.
//!
//! - Text models: a prompt of `--prompt-tokens` tokens, then
//!   `--gen-tokens` greedy tokens, ignoring end-of-sequence.
//! - Vision models: the same after an image (by default `pasta.jpeg` from
//!   Meta's `llama-models` package, 1280×1280, which fills 4 tiles). The
//!   time to first token covers decoding and preprocessing the image, the
//!   vision encoder, the cross-attention keys and values, and the prompt.
//! - `--synthetic llama-3.2-11b-vision` builds the 11B with random weights
//!   in memory (nothing downloaded or stored): the real model's shapes,
//!   memory and speed, not its answers.
//!
//! `--warmup` runs are done first and not reported. A model's first run
//! also pays one-time costs (candle repacks some quantized weights on first
//! use), so `--warmup 0 --runs 2` shows cold and warm figures.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use lumen_engine::mllama::config::MllamaConfig;
use lumen_engine::mllama::image_processor::{decode_image, preprocess};
use lumen_engine::{CancelToken, GenerateParams, Model, SamplingParams, Session};
use serde_json::json;

use crate::LoadArgs;
use crate::generate::{load_options, report_loaded};
use crate::llama_cpp::LlamaCpp;

/// `lumen bench`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    /// Benchmark something other than a model.
    #[command(subcommand)]
    target: Option<BenchTarget>,
    /// A .gguf file or a Hugging Face model folder.
    #[arg(long, short = 'm', required_unless_present = "synthetic")]
    model: Option<PathBuf>,
    /// Random weights with a real model's shapes, made in memory:
    /// `llama-3.2-11b-vision`.
    #[arg(long, conflicts_with = "model")]
    synthetic: Option<String>,
    /// Tokenizer folder for `--synthetic` (default: the Llama 3.2 Vision
    /// tokenizer that scripts/fetch-assets.sh caches).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
    /// Image for vision models (default: pasta.jpeg from the cached assets).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Prompt length in tokens (text models; a vision prompt is one
    /// question).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to generate (end-of-sequence is ignored).
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
    /// Unreported runs before the measured ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Measured runs (the report gives each and their mean).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// llama.cpp's `llama-bench` (from bench/build-llama-cpp.sh): run it
    /// on the same GGUF file with the same threads and lengths, once after
    /// each of Lumen's measured runs (so that both see the same memory
    /// bandwidth, which drifts on shared machines), and print Lumen's speed
    /// as a ratio of llama.cpp's: the median of the pairs' ratios.
    #[arg(long, value_name = "PATH")]
    llama_bench: Option<PathBuf>,
    /// Skip measuring the memory read bandwidth (and the decoding speed it
    /// allows), which reads 1 GiB a few times after the runs.
    #[arg(long)]
    no_bandwidth: bool,
}

/// What else `lumen bench` measures.
#[derive(Debug, clap::Subcommand)]
pub enum BenchTarget {
    /// The chat history at scale: open, insert, search, size.
    History(crate::bench_history::HistoryBenchArgs),
    /// Download throughput on loopback against curl, and resume costs.
    Download(crate::bench_download::DownloadBenchArgs),
    /// Writes a random-weight GGUF with Llama 3.2 1B/3B or 3.1 8B shapes and the real
    /// Llama 3 tokenizer (for side-by-side runs with llama.cpp).
    WriteGguf(crate::bench_gguf::WriteGgufArgs),
    /// How fast each quantized kernel streams a weight for one token, in
    /// GB/s on one thread and on all, against the memory read bandwidth.
    Kernels(crate::bench_kernels::KernelBenchArgs),
    /// The desktop app: cold start, idle memory, frame times while a reply
    /// streams (Linux, Xvfb).
    #[cfg(target_os = "linux")]
    App(crate::bench_app::AppBenchArgs),
}

/// One measured run.
#[derive(Debug, Clone, Default)]
struct Run {
    prompt_tokens: usize,
    image_tiles: Option<usize>,
    /// Decoding and preprocessing the image.
    preprocess: Duration,
    /// Vision encoder and projector.
    encode: Duration,
    /// Cross-attention keys and values of every cross-attention layer.
    cross_kv: Duration,
    /// The prompt's tokens, up to the first token's logits.
    prefill: Duration,
    decode: Duration,
    generated: usize,
    kv_cache_bytes: usize,
    /// Page faults (minor and major) from the start of the prompt to the
    /// first streamed text, and from there to the end (Linux).
    prefill_faults: Option<u64>,
    decode_faults: Option<u64>,
}

impl Run {
    fn ttft(&self) -> Duration {
        self.preprocess + self.encode + self.cross_kv + self.prefill
    }

    fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    fn decode_tok_s(&self) -> f64 {
        self.generated.saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }

    /// Page faults per generated token after the first.
    fn decode_faults_per_token(&self) -> Option<f64> {
        self.decode_faults
            .map(|f| f as f64 / self.generated.saturating_sub(1).max(1) as f64)
    }

    fn to_json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut v = json!({
            "prompt_tokens": self.prompt_tokens,
            "gen_tokens": self.generated,
            "ttft_ms": ms(self.ttft()),
            "prefill_ms": ms(self.prefill),
            "prefill_tok_s": self.prefill_tok_s(),
            "decode_tok_s": self.decode_tok_s(),
            "kv_cache_bytes": self.kv_cache_bytes,
            "prefill_page_faults": self.prefill_faults,
            "decode_page_faults_per_token": self.decode_faults_per_token(),
        });
        if let Some(tiles) = self.image_tiles {
            v["image"] = json!({
                "tiles": tiles,
                "preprocess_ms": ms(self.preprocess),
                "encode_ms": ms(self.encode),
                "cross_kv_ms": ms(self.cross_kv),
            });
        }
        v
    }
}

/// Runs the benchmark.
pub fn main(args: BenchArgs) -> Result<()> {
    match args.target {
        Some(BenchTarget::History(h)) => return crate::bench_history::main(h),
        Some(BenchTarget::Download(d)) => return crate::bench_download::main(d),
        Some(BenchTarget::WriteGguf(w)) => return crate::bench_gguf::main(w),
        Some(BenchTarget::Kernels(k)) => return crate::bench_kernels::main(k),
        #[cfg(target_os = "linux")]
        Some(BenchTarget::App(a)) => return crate::bench_app::main(a),
        None => {}
    }
    if args.runs == 0 || args.gen_tokens == 0 {
        bail!("--runs and --gen-tokens must be at least 1");
    }
    let path = args
        .model
        .as_deref()
        .map(crate::models::resolve_model)
        .transpose()?;
    // Unless `--quantize` says otherwise, the synthetic vision model is
    // quantized at load as a real vision folder would be.
    let default_quantization = match (&path, args.synthetic.as_deref()) {
        (Some(path), _) => lumen_engine::model::default_quantization(path),
        (None, Some("llama-3.2-11b-vision")) => Some(lumen_engine::GgmlDType::Q4K),
        _ => None,
    };
    let options = load_options(&args.load, default_quantization)?;
    // The process before any model: its binary's and libraries' pages, the
    // runtime's heap. The memory target counts it, as the operating system
    // does, but it weighs on a small model alone.
    let rss_before_load = memory().map(|m| m.rss);
    let started = Instant::now();
    let model = match (
        args.model.as_deref().zip(path.as_deref()),
        args.synthetic.as_deref(),
    ) {
        (Some((arg, path)), _) => Model::load(path, &options, &mut progress(arg.display())),
        (None, Some("llama-3.2-11b-vision")) => {
            let tokenizer = match &args.tokenizer {
                Some(dir) => dir.clone(),
                None => asset("llama32-vision-tokenizer")?,
            };
            Model::synthetic_mllama(
                MllamaConfig::llama32_11b_vision()?,
                &tokenizer,
                &options,
                0x11b,
                &mut progress("synthetic 11B (random weights)"),
            )
        }
        (None, Some(other)) => {
            bail!("unknown synthetic model `{other}` (known: llama-3.2-11b-vision)")
        }
        (None, None) => bail!("pass --model PATH or --synthetic NAME"),
    }
    .context("cannot load the model")?;
    let load_time = started.elapsed();
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    report_loaded(&model, load_time);
    let rss_after_load = memory().map(|m| m.rss);
    let model = Arc::new(model);

    let image = match (&args.image, model.vision().is_some()) {
        (Some(path), true) => Some(path.clone()),
        (None, true) => Some(asset("llama-models")?.join("pasta.jpeg")),
        (Some(_), false) => bail!("{} is a text-only model", model.info().name),
        (None, false) => None,
    };
    let prompt = match image {
        Some(_) => vision_prompt(&model)?,
        None => text_prompt(&model, args.prompt_tokens)?,
    };
    let threads = candle_core::utils::get_num_threads();
    // The model as one file (a GGUF), if it is one.
    let file = path.filter(|p| p.is_file());
    let llama_bench = match (&args.llama_bench, &args.model, &file) {
        (Some(bench), Some(_), Some(file)) => Some((bench, file)),
        (Some(_), Some(m), None) => bail!("--llama-bench needs a GGUF file, not {}", m.display()),
        (Some(_), None, _) => bail!("--llama-bench needs --model FILE.gguf"),
        _ => None,
    };
    let mut runs = Vec::with_capacity(args.runs);
    let mut pairs = Vec::with_capacity(args.runs);
    for i in 0..args.warmup + args.runs {
        let warm = i < args.warmup;
        let run = run_once(&model, &prompt, image.as_deref(), args.gen_tokens)?;
        if !args.json {
            eprintln!(
                "{} {}: {}",
                if warm { "warm-up" } else { "run" },
                if warm { i + 1 } else { i - args.warmup + 1 },
                describe(&run)
            );
        }
        if warm {
            continue;
        }
        if let Some((bench, file)) = llama_bench {
            let l = crate::llama_cpp::run(bench, file, threads, prompt.len(), args.gen_tokens, 1)?;
            let pair = Pair {
                llama_cpp: l,
                prefill_ratio: run.prefill_tok_s() / l.prefill_tok_s,
                decode_ratio: run.decode_tok_s() / l.decode_tok_s,
            };
            if !args.json {
                eprintln!(
                    "  llama.cpp right after: prefill {:.1} tok/s, decode {:.1} tok/s; Lumen {:.2}× and {:.2}×",
                    l.prefill_tok_s, l.decode_tok_s, pair.prefill_ratio, pair.decode_ratio
                );
            }
            pairs.push(pair);
        }
        runs.push(run);
    }
    let mem = memory();
    let mean = |f: &dyn Fn(&Run) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
    // After the runs (and the memory figures): it reads 1 GiB.
    let bandwidth = (!args.no_bandwidth)
        .then(|| crate::bandwidth::read_bandwidth(crate::bandwidth::DEFAULT_BYTES, threads, 3));
    // Decoding reads every weight once per token: for a GGUF file, its size.
    let weight_bytes = file
        .as_ref()
        .and_then(|p| p.metadata().ok())
        .map(|m| m.len());
    let bound = bandwidth
        .zip(weight_bytes)
        .map(|(b, w)| crate::bandwidth::decode_bound(b, w));
    // llama.cpp's speeds (means) and the pairs' median ratios.
    let llama_cpp = (!pairs.is_empty()).then(|| {
        let n = pairs.len() as f64;
        let mean = |f: fn(&LlamaCpp) -> f64| pairs.iter().map(|p| f(&p.llama_cpp)).sum::<f64>() / n;
        (
            LlamaCpp {
                prefill_tok_s: mean(|l| l.prefill_tok_s),
                decode_tok_s: mean(|l| l.decode_tok_s),
            },
            median(pairs.iter().map(|p| p.prefill_ratio)),
            median(pairs.iter().map(|p| p.decode_ratio)),
        )
    });
    let (prefill, decode) = (mean(&Run::prefill_tok_s), mean(&Run::decode_tok_s));
    // The memory target: peak resident memory, less the KV cache, against
    // the file's size.
    let kv_bytes = runs.iter().map(|r| r.kv_cache_bytes).max().unwrap_or(0) as u64;
    let peak_over_file = mem
        .zip(weight_bytes)
        .map(|(m, w)| m.peak.saturating_sub(kv_bytes) as f64 / w.max(1) as f64);
    // The same, less the process before loading: what the model itself adds.
    let added_over_file = mem
        .zip(rss_before_load)
        .zip(weight_bytes)
        .map(|((m, before), w)| {
            m.peak.saturating_sub(kv_bytes).saturating_sub(before) as f64 / w.max(1) as f64
        });
    // Which pass generated tokens take (see lumen_engine::decode).
    let decode_pass = if model.has_decode_pass() {
        "single-token"
    } else {
        "general"
    };
    let report = json!({
        "model": model.info().name,
        "weight_type": model.info().weight_type,
        "device": model.info().device,
        "threads": threads,
        "cpu_kernels": lumen_engine::qmm::cpu_kernels(),
        "cpu_prefetch": lumen_engine::qmm::cpu_prefetch(),
        "decode_pass": decode_pass,
        "load_ms": load_time.as_secs_f64() * 1e3,
        "rss_before_load_bytes": rss_before_load,
        "rss_after_load_bytes": rss_after_load,
        "peak_rss_bytes": mem.map(|m| m.peak),
        "kv_cache_bytes": kv_bytes,
        "peak_less_kv_over_file": peak_over_file,
        "peak_less_kv_and_start_over_file": added_over_file,
        "rss_bytes": mem.map(|m| m.rss),
        "rss_file_bytes": mem.map(|m| m.file),
        "prompt_tokens": prompt.len(),
        "gen_tokens": args.gen_tokens,
        "ttft_ms": mean(&|r| r.ttft().as_secs_f64() * 1e3),
        "prefill_tok_s": prefill,
        "decode_tok_s": decode,
        "runs": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
        "read_bandwidth_bytes_s": bandwidth,
        "weight_bytes": weight_bytes,
        "decode_bound_tok_s": bound,
        "llama_cpp": llama_cpp.map(|(l, prefill_ratio, decode_ratio)| json!({
            "prefill_tok_s": l.prefill_tok_s,
            "decode_tok_s": l.decode_tok_s,
            "prefill_ratio": prefill_ratio,
            "decode_ratio": decode_ratio,
            "pairs": pairs.iter().map(|p| json!({
                "prefill_tok_s": p.llama_cpp.prefill_tok_s,
                "decode_tok_s": p.llama_cpp.decode_tok_s,
                "prefill_ratio": p.prefill_ratio,
                "decode_ratio": p.decode_ratio,
            })).collect::<Vec<_>>(),
        })),
    });
    if args.json {
        println!("{report}");
    } else {
        let gb = |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.2} GB", b as f64 / 1e9));
        eprintln!(
            "load {:.1} s ({} CPU kernels, {}, {decode_pass} decoding pass); resident after load {}, peak {}, now {}",
            load_time.as_secs_f64(),
            lumen_engine::qmm::cpu_kernels(),
            lumen_engine::qmm::cpu_prefetch(),
            gb(rss_after_load),
            gb(mem.map(|m| m.peak)),
            gb(mem.map(|m| m.rss)),
        );
        if let Some(r) = peak_over_file {
            eprintln!(
                "peak less the KV cache ({:.1} MB): {r:.3}× the file",
                kv_bytes as f64 / 1e6
            );
        }
        if let Some(((r, before), m)) = added_over_file.zip(rss_before_load).zip(mem) {
            eprintln!(
                "  less the process before loading ({:.1} MB): {r:.3}× the file; resident in files' pages (the binary, libraries) now: {:.1} MB",
                before as f64 / 1e6,
                m.file as f64 / 1e6,
            );
        }
        if let Some(b) = bandwidth {
            eprint!(
                "memory read bandwidth ({threads} threads): {:.1} GB/s",
                b / 1e9
            );
            match bound {
                Some(t) => eprintln!(
                    "; decoding this file can reach at most {t:.1} tok/s (measured {decode:.1}, {:.0}% of it)",
                    100.0 * decode / t
                ),
                None => eprintln!(),
            }
        }
        if let Some((l, prefill_ratio, decode_ratio)) = llama_cpp {
            eprintln!(
                "llama.cpp, same file and threads, after each run: prefill {:.1} tok/s, decode {:.1} tok/s; Lumen {prefill_ratio:.2}× and {decode_ratio:.2}× (median of {} pairs)",
                l.prefill_tok_s,
                l.decode_tok_s,
                pairs.len(),
            );
        }
    }
    Ok(())
}

fn progress(what: impl std::fmt::Display) -> impl FnMut(lumen_engine::LoadProgress) {
    let show = std::io::stderr().is_terminal();
    move |p| {
        if show {
            eprint!("\rloading {what} {:>3}%", 100 * p.done / p.total.max(1));
        }
    }
}

fn run_once(
    model: &Arc<Model>,
    prompt: &[u32],
    image: Option<&Path>,
    gen_tokens: usize,
) -> Result<Run> {
    let mut run = Run {
        prompt_tokens: prompt.len(),
        ..Run::default()
    };
    let mut session = Session::new(model.clone(), Some(prompt.len() + gen_tokens + 1));
    if let Some(path) = image {
        let t = Instant::now();
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let vision = model.vision().context("not a vision model")?;
        let processed = preprocess(&decode_image(&bytes)?, &vision.processor);
        run.image_tiles = Some(processed.num_tiles);
        run.preprocess = t.elapsed();
        let t = Instant::now();
        let encoded = model.encode_processed(&processed)?;
        run.encode = t.elapsed();
        let t = Instant::now();
        session.set_images(vec![encoded])?;
        run.cross_kv = t.elapsed();
    }
    let params = GenerateParams {
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_tokens: gen_tokens,
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let before = page_faults();
    let mut first_text = None;
    let done = session.generate(prompt, &params, &CancelToken::new(), &mut |_| {
        if first_text.is_none() {
            first_text = page_faults();
        }
    })?;
    let after = page_faults();
    run.prefill_faults = before.zip(first_text).map(|(a, b)| b - a);
    run.decode_faults = first_text.zip(after).map(|(a, b)| b - a);
    run.prefill = done.prefill_time;
    run.decode = done.decode_time;
    run.generated = done.tokens.len();
    run.kv_cache_bytes = session.kv_cache_bytes();
    Ok(run)
}

fn describe(r: &Run) -> String {
    let mut s = String::new();
    if let Some(tiles) = r.image_tiles {
        s += &format!(
            "image {tiles} tiles: preprocess {:.0} ms, vision encoder {:.1} s, cross-attention K/V {:.1} s; ",
            r.preprocess.as_secs_f64() * 1e3,
            r.encode.as_secs_f64(),
            r.cross_kv.as_secs_f64()
        );
    }
    s += &format!(
        "prefill {} tokens {:.1} tok/s; time to first token {:.2} s; decode {:.2} tok/s",
        r.prompt_tokens,
        r.prefill_tok_s(),
        r.ttft().as_secs_f64(),
        r.decode_tok_s()
    );
    if let (Some(p), Some(d)) = (r.prefill_faults, r.decode_faults_per_token()) {
        s += &format!("; page faults: prefill {p}, decode {d:.1}/token");
    }
    s
}

/// A one-question prompt about an image, in Llama 3's chat format.
fn vision_prompt(model: &Model) -> Result<Vec<u32>> {
    let text = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>\
                What is in this image? Describe it in detail.<|eot_id|>\
                <|start_header_id|>assistant<|end_header_id|>\n\n";
    Ok(model.tokenizer().encode(text, false)?)
}

/// Exactly `n` tokens of ordinary prose (beginning-of-text first when the
/// tokenizer has one).
fn text_prompt(model: &Model, n: usize) -> Result<Vec<u32>> {
    if n == 0 {
        bail!("--prompt-tokens must be at least 1");
    }
    let tok = model.tokenizer();
    let mut ids: Vec<u32> = tok
        .bos_token()
        .and_then(|b| tok.token_to_id(b))
        .into_iter()
        .collect();
    let prose = "The history of the lighthouse is a story of stone, glass and fire. \
                 Keepers climbed the stairs each evening to trim the wicks, polish the \
                 lenses and watch the sea until morning. ";
    let chunk = tok.encode(prose, false)?;
    if chunk.is_empty() {
        bail!("the tokenizer produced no tokens");
    }
    while ids.len() < n {
        ids.extend(&chunk);
    }
    ids.truncate(n);
    Ok(ids)
}

/// A file or folder from the asset cache of `scripts/fetch-assets.sh`.
pub(crate) fn asset(name: &str) -> Result<PathBuf> {
    let root = match std::env::var_os("LUMEN_ASSETS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/lumen/assets"))
            .context("neither LUMEN_ASSETS_DIR nor HOME is set")?,
    };
    let path = root.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run scripts/fetch-assets.sh (or pass the path explicitly)",
            path.display()
        );
    }
    Ok(path)
}

/// Page faults of this process so far, minor and major (from
/// `/proc/self/stat`, Linux); `None` elsewhere.
fn page_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // `pid (comm) state ppid …`: minflt and majflt are the 10th and 12th
    // fields, the 8th and 10th after the command name.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let minor: u64 = rest.nth(7)?.parse().ok()?;
    let major: u64 = rest.nth(1)?.parse().ok()?;
    Some(minor + major)
}

/// Resident memory now and at its peak.
#[derive(Debug, Clone, Copy)]
struct Memory {
    /// Resident now.
    rss: u64,
    /// The most resident so far.
    peak: u64,
    /// Resident now in pages of files (the binary, libraries, mappings).
    file: u64,
}

/// One of Lumen's measured runs against llama.cpp's run right after it.
struct Pair {
    llama_cpp: LlamaCpp,
    prefill_ratio: f64,
    decode_ratio: f64,
}

/// The median of `values` (the mean of the middle two for an even count;
/// NaN for none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// From `/proc/self/status` (Linux); `None` elsewhere.
fn memory() -> Option<Memory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(Memory {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
        file: field("RssFile:")?,
    })
}
