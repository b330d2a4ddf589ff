//! `lumen run` and `lumen chat`.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use lumen_engine::model::EncodedImage;
use lumen_engine::{
    CancelToken, Chat, Completion, DType, DeviceRequest, GenerateParams, GgmlDType, KvDtype,
    LoadOptions, Model, SamplingParams, Session, StopReason,
};

use crate::{LoadArgs, ModelArgs};

/// Sampling and length options.
#[derive(Debug, Clone, Args)]
pub struct GenArgs {
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature; 0 for greedy. Default: the model's recommendation.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling threshold.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Drop tokens below this fraction of the best token's probability.
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Penalty for recently used tokens (1 = off).
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    /// Random seed (same seed, same output).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// Stop when the reply contains this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Context window in tokens (default: the model's).
    #[arg(long)]
    pub context: Option<usize>,
    /// Print speed figures to stderr after each reply.
    #[arg(long)]
    pub stats: bool,
}

/// `lumen run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    gen_args: GenArgs,
    /// An image to ask about (repeatable; needs a Llama 3.2 Vision model).
    #[arg(long)]
    image: Vec<std::path::PathBuf>,
    /// The prompt ("-" reads it from stdin).
    prompt: String,
}

/// `lumen chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    gen_args: GenArgs,
}

/// Loads a model, with progress on stderr.
pub fn load_model(args: &ModelArgs) -> Result<Arc<Model>> {
    let path = crate::models::resolve_model(&args.model)?;
    let options = load_options(&args.load, lumen_engine::model::default_quantization(&path))?;
    let show = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let model = Model::load(&path, &options, &mut |p| {
        if show {
            eprint!(
                "\rloading {} {:>3}%",
                args.model.display(),
                100 * p.done / p.total.max(1)
            );
        }
    })
    .with_context(|| format!("cannot load {}", path.display()))?;
    if show {
        eprint!("\r\x1b[2K");
    }
    report_loaded(&model, started.elapsed());
    Ok(Arc::new(model))
}

/// One line on stderr about a loaded model.
pub fn report_loaded(model: &Model, took: std::time::Duration) {
    let info = model.info();
    if let Some(note) = &info.device_note {
        eprintln!("lumen: {note}");
    }
    eprintln!(
        "lumen: {} ({}, {:.0} MB) on {} in {:.1} s",
        info.name,
        info.weight_type,
        info.weight_bytes as f64 / 1e6,
        info.device,
        took.as_secs_f64()
    );
}

/// The engine's load options from the command line; `default_quantization`
/// applies when `--quantize` is not given (see
/// [`lumen_engine::model::default_quantization`]).
pub fn load_options(
    args: &LoadArgs,
    default_quantization: Option<GgmlDType>,
) -> Result<LoadOptions> {
    let device: DeviceRequest = args.device.parse()?;
    let dtype = match args.dtype.as_deref() {
        None => None,
        Some("f32") => Some(DType::F32),
        Some("f16") => Some(DType::F16),
        Some("bf16") => Some(DType::BF16),
        Some(other) => bail!("unknown dtype `{other}` (expected f32, f16 or bf16)"),
    };
    let quantize = match args
        .quantize
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => default_quantization,
        Some("none") => None,
        Some("q8_0") => Some(GgmlDType::Q8_0),
        Some("q6_k") => Some(GgmlDType::Q6K),
        Some("q5_k") => Some(GgmlDType::Q5K),
        Some("q4_k") => Some(GgmlDType::Q4K),
        Some("q4_0") => Some(GgmlDType::Q4_0),
        Some(other) => {
            bail!("unknown quantization `{other}` (expected q8_0, q6_k, q5_k, q4_k, q4_0 or none)")
        }
    };
    let kv_cache = match args.kv_cache.to_ascii_lowercase().as_str() {
        "f16" => KvDtype::F16,
        "f32" => KvDtype::F32,
        other => bail!("unknown KV cache type `{other}` (expected f16 or f32)"),
    };
    Ok(LoadOptions {
        device,
        dtype,
        quantize,
        dequantize: args.dequantize,
        kv_cache,
    })
}

impl GenArgs {
    fn params(&self, model: &Model) -> GenerateParams {
        let d = model.default_sampling();
        GenerateParams {
            sampling: SamplingParams {
                temperature: self.temperature.unwrap_or(d.temperature),
                top_p: self.top_p.unwrap_or(d.top_p),
                top_k: self.top_k.unwrap_or(d.top_k),
                min_p: self.min_p.unwrap_or(d.min_p),
                repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
                seed: self.seed.unwrap_or(d.seed),
                ..d.clone()
            },
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            ignore_eos: false,
        }
    }
}

/// Reads and encodes image files for a vision model.
fn encode_images(model: &Model, paths: &[std::path::PathBuf]) -> Result<Vec<EncodedImage>> {
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            model
                .encode_image(&bytes)
                .with_context(|| format!("{}", p.display()))
        })
        .collect()
}

/// Streams one reply to stdout and reports how it ended.
fn stream_reply(
    chat: &mut Chat,
    prompt: &str,
    images: Vec<EncodedImage>,
    args: &GenArgs,
    cancel: &CancelToken,
) -> Result<Completion> {
    let params = args.params(chat.session().model());
    let mut stdout = std::io::stdout();
    let mut write_err = None;
    let completion = chat.send_with_images(prompt, images, &params, cancel, &mut |piece| {
        if write_err.is_none()
            && let Err(e) = stdout
                .write_all(piece.as_bytes())
                .and_then(|_| stdout.flush())
        {
            write_err = Some(e);
        }
    })?;
    if let Some(e) = write_err {
        return Err(e).context("writing to stdout");
    }
    writeln!(stdout)?;
    match completion.stop_reason {
        StopReason::MaxTokens => {
            eprintln!("lumen: [stopped at --max-tokens {}]", params.max_tokens)
        }
        StopReason::ContextFull => {
            eprintln!("lumen: [the context window is full; start a new chat]")
        }
        StopReason::Cancelled => eprintln!("lumen: [stopped]"),
        StopReason::Eos | StopReason::StopString => {}
    }
    if args.stats {
        eprintln!(
            "lumen: prompt {} tokens ({} reused) at {:.1} tok/s, first token after {:.0} ms; {} tokens at {:.1} tok/s",
            completion.prompt_tokens,
            completion.cached_tokens,
            completion.prefill_tok_s(),
            completion.prefill_time.as_secs_f64() * 1e3,
            completion.tokens.len(),
            completion.decode_tok_s()
        );
    }
    Ok(completion)
}

/// `lumen run`.
pub fn run(args: RunArgs) -> Result<()> {
    let prompt = if args.prompt == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the prompt from stdin")?
    } else {
        args.prompt.clone()
    };
    if prompt.trim().is_empty() {
        bail!("the prompt is empty");
    }
    let model = load_model(&args.model)?;
    let images = encode_images(&model, &args.image)?;
    let mut chat = Chat::new(
        Session::new(model, args.gen_args.context),
        args.gen_args.system.as_deref(),
    );
    let cancel = cancel_on_ctrl_c()?;
    stream_reply(&mut chat, &prompt, images, &args.gen_args, &cancel)?;
    Ok(())
}

/// `lumen chat`: one line per user turn; Ctrl-C stops the current reply,
/// Ctrl-D (end of input) or `/exit` quits, `/reset` starts over,
/// `/image PATH` attaches an image to the next message.
pub fn chat(args: ChatArgs) -> Result<()> {
    let model = load_model(&args.model)?;
    let system = args.gen_args.system.clone();
    let new_chat = |model: Arc<Model>| {
        Chat::new(
            Session::new(model, args.gen_args.context),
            system.as_deref(),
        )
    };
    let mut chat = new_chat(model.clone());
    let cancel = cancel_on_ctrl_c()?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "lumen: type a message and press Enter; /reset starts over, /exit or Ctrl-D quits, Ctrl-C stops a reply"
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut pending_images = Vec::new();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                chat = new_chat(model.clone());
                eprintln!("lumen: new conversation");
                continue;
            }
            text if text.starts_with("/image ") => {
                let path = std::path::PathBuf::from(text.trim_start_matches("/image ").trim());
                match encode_images(&model, std::slice::from_ref(&path)) {
                    Ok(mut img) => {
                        pending_images.append(&mut img);
                        eprintln!("lumen: {} attached to your next message", path.display());
                    }
                    Err(e) => eprintln!("lumen: error: {e:#}"),
                }
            }
            text => {
                cancel.reset();
                let images = std::mem::take(&mut pending_images);
                if let Err(e) = stream_reply(&mut chat, text, images, &args.gen_args, &cancel) {
                    // Keep the session alive: report and let the user go on.
                    eprintln!("lumen: error: {e:#}");
                }
            }
        }
    }
    Ok(())
}

/// A cancel token that Ctrl-C trips (a second Ctrl-C while idle exits).
fn cancel_on_ctrl_c() -> Result<CancelToken> {
    let token = CancelToken::new();
    let t = token.clone();
    ctrlc::set_handler(move || {
        if t.is_cancelled() {
            std::process::exit(130);
        }
        t.cancel();
    })
    .context("installing the Ctrl-C handler")?;
    Ok(token)
}
