//! `lumen models`: the catalogue, downloads and installed models.
//!
//! ```text
//! lumen models list [--installed] [--json]
//! lumen models info MODEL [--revision R] [--json]
//! lumen models pull MODEL [--revision R] [--json]
//! lumen models rm MODEL
//! lumen models import PATH
//! lumen models login | logout
//! ```
//!
//! MODEL is a catalogue id (`llama-3.2-3b-instruct`, optionally
//! `:VARIANT` such as `:q8_0`) or a Hugging Face repository
//! (`owner/name`, optionally `:FILE`). Downloads go to the Hugging Face
//! cache (`HF_HUB_CACHE` / `HF_HOME`), from `HF_ENDPOINT` or the public Hub.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lumen_hub::catalogue::{DEFAULT_CONTEXT, Fit, system_memory};
use lumen_hub::token::TokenSource;
use lumen_hub::{
    Catalogue, DownloadEvent, DownloadOptions, Downloader, HubCache, HubClient, Library, Target,
    human_bytes,
};

/// `lumen models ...`
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// The catalogue, with memory needs and what is installed.
    List {
        /// Only the installed models.
        #[arg(long)]
        installed: bool,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A model's files, sizes and licence (asks the Hub) and whether it fits.
    Info(RemoteArgs),
    /// Download a model (resumes a partial download; Ctrl-C pauses).
    Pull(RemoteArgs),
    /// Delete a downloaded model (owner/name[:file]) or forget an import.
    Rm {
        /// owner/name[:file] or local/name.
        model: String,
    },
    /// Use a local GGUF file or model folder (recorded, not copied).
    Import {
        /// The file or folder.
        path: PathBuf,
    },
    /// Store a Hugging Face token (for gated repositories) in the system keyring.
    Login {
        /// Read the token from stdin instead of prompting.
        #[arg(long)]
        token_stdin: bool,
    },
    /// Remove the stored Hugging Face token.
    Logout,
}

/// A model on the Hub, and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// Catalogue id[:variant], or owner/name[:file].
    model: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Hub options.
    #[command(flatten)]
    hub: HubArgs,
    /// JSON output (for `pull`: the progress events, one per line).
    #[arg(long)]
    json: bool,
}

/// Where and how to download.
#[derive(Debug, Clone, Args)]
pub struct HubArgs {
    /// The Hub (or a mirror).
    #[arg(long, env = "HF_ENDPOINT", default_value = lumen_hub::api::DEFAULT_ENDPOINT)]
    endpoint: String,
    /// Seconds without data before reconnecting.
    #[arg(long, default_value_t = 30)]
    stall_timeout: u64,
}

/// Runs a `models` command.
pub fn main(cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::List { installed, json } => list(installed, json),
        ModelsCommand::Info(args) => runtime()?.block_on(info(&args)),
        ModelsCommand::Pull(args) => runtime()?.block_on(pull(&args)),
        ModelsCommand::Rm { model } => {
            let freed = library()?.remove(&model)?;
            eprintln!("removed {model} ({} freed)", human_bytes(freed));
            Ok(())
        }
        ModelsCommand::Import { path } => {
            let m = library()?.import(&path)?;
            eprintln!(
                "imported {} as {} ({}); use it with --model {}",
                m.path.display(),
                m.id,
                human_bytes(m.size),
                m.id
            );
            Ok(())
        }
        ModelsCommand::Login { token_stdin } => login(token_stdin),
        ModelsCommand::Logout => {
            if lumen_hub::token::delete()? {
                eprintln!("the Hugging Face token was removed from the system keyring");
            } else {
                eprintln!("no Hugging Face token was stored");
            }
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn cache() -> Result<HubCache> {
    HubCache::from_env().context("no cache folder: set HF_HUB_CACHE or HOME")
}

/// The installed models (Hugging Face cache + Lumen's imports).
pub fn library() -> Result<Library> {
    let imports = lumen_store::data_dir()?.join("imported-models.json");
    Ok(Library::new(cache()?, imports))
}

/// Resolves `--model`: an existing path as is; otherwise an installed
/// model's id (`owner/name[:file]`, `local/name`).
pub fn resolve_model(arg: &std::path::Path) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let Some(spec) = arg
        .to_str()
        .filter(|s| s.contains('/') && !s.starts_with(['/', '.']))
    else {
        bail!("{} does not exist", arg.display());
    };
    library()?
        .resolve(spec)
        .with_context(|| format!("{spec} is neither a file nor an installed model"))
}

fn client(hub: &HubArgs) -> Result<HubClient> {
    let token = lumen_hub::token::load().map(|(t, _)| t);
    Ok(HubClient::new(&hub.endpoint, token)?)
}

fn target(spec: &str, revision: &str) -> Result<Target> {
    Ok(Catalogue::builtin()?.target(spec, revision)?)
}

fn list(installed_only: bool, json: bool) -> Result<()> {
    let lib = library()?;
    let installed = lib.installed();
    if installed_only {
        if json {
            println!("{}", serde_json::to_string_pretty(&installed)?);
            return Ok(());
        }
        if installed.is_empty() {
            eprintln!("no models installed: `lumen models list` shows the catalogue");
            return Ok(());
        }
        for m in &installed {
            let files = if m.gguf_files.is_empty() {
                String::new()
            } else {
                format!("  [{}]", m.gguf_files.join(", "))
            };
            println!(
                "{:<52} {:>9}  {}{files}",
                m.id,
                human_bytes(m.size),
                m.path.display()
            );
        }
        return Ok(());
    }
    let catalogue = Catalogue::builtin()?;
    let (total, available) = system_memory();
    let is_installed = |repo: &str| installed.iter().any(|m| m.id.eq_ignore_ascii_case(repo));
    if json {
        let rows: Vec<serde_json::Value> = catalogue
            .models
            .iter()
            .map(|m| {
                let variants: Vec<serde_json::Value> = m
                    .variants
                    .iter()
                    .map(|v| {
                        let e = m.memory(v, DEFAULT_CONTEXT, None);
                        serde_json::json!({
                            "variant": v, "memory": e, "memory_total": e.total(),
                            "fit": e.fit(total, available), "installed": is_installed(&v.repo),
                        })
                    })
                    .collect();
                serde_json::json!({ "model": m, "variants": variants })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "This machine: {} memory, {} free. Memory estimates at {DEFAULT_CONTEXT} tokens of context.\n",
        human_bytes(total),
        human_bytes(available)
    );
    for m in &catalogue.models {
        let caps: Vec<String> = m
            .capabilities
            .iter()
            .map(|c| format!("{c:?}").to_lowercase())
            .collect();
        println!("{}  ({})  — {}", m.name, caps.join(", "), m.summary);
        for v in &m.variants {
            let e = m.memory(v, DEFAULT_CONTEXT, None);
            let fit = match e.fit(total, available) {
                Fit::Comfortable => "fits",
                Fit::Tight => "tight",
                Fit::TooLarge => "too large",
            };
            let mut notes = Vec::new();
            if v.gated {
                notes.push("gated".to_string());
            }
            if let Some(q) = &v.load_quant {
                notes.push(format!("quantized to {q} at load"));
            }
            if is_installed(&v.repo) {
                notes.push("installed".into());
            }
            println!(
                "  {:<34} {:<7} ~{:>8} {:<9} {}",
                format!("{}:{}", m.id, v.id),
                v.quant,
                human_bytes(e.total()),
                fit,
                notes.join(", ")
            );
        }
        println!();
    }
    println!(
        "Pull one with `lumen models pull MODEL:VARIANT`, or any repository with `lumen models pull owner/name[:file]`."
    );
    Ok(())
}

async fn info(args: &RemoteArgs) -> Result<()> {
    let t = target(&args.model, &args.revision)?;
    let client = client(&args.hub)?;
    let json = args.json;
    let info = client
        .repo_info(&t.request.repo, &t.request.revision)
        .await?;
    let files = lumen_hub::download::select_files(&info, &t.request.files).ok();
    let catalogue = Catalogue::builtin()?;
    let estimate = t.catalogue.as_ref().and_then(|(m, v)| {
        let m = catalogue.model(m)?;
        let v = m.variant(v)?;
        let bytes = files.as_ref().map(|f| f.iter().map(|f| f.size).sum());
        Some(m.memory(v, DEFAULT_CONTEXT, bytes))
    });
    let (total, available) = system_memory();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "info": info,
                "selected": files,
                "memory": estimate,
                "fit": estimate.map(|e| e.fit(total, available)),
            }))?
        );
        return Ok(());
    }
    println!("{} at {}", info.repo, info.commit);
    if let Some(l) = &info.license {
        println!("licence: {l}");
    }
    if info.gated {
        println!(
            "gated: accept the licence at {} and add a token (`lumen models login`)",
            client.page(&info.repo)
        );
    }
    for f in &info.files {
        let mark = if files
            .as_ref()
            .is_some_and(|s| s.iter().any(|x| x.path == f.path))
        {
            "*"
        } else {
            " "
        };
        println!("{mark} {:>9}  {}", human_bytes(f.size), f.path);
    }
    if let Some(files) = &files {
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        println!(
            "* pulled by default: {} in {} files",
            human_bytes(bytes),
            files.len()
        );
    }
    if let Some(e) = estimate {
        println!(
            "memory: ~{} (weights {}, KV cache {} at {} tokens); this machine: {:?}",
            human_bytes(e.total()),
            human_bytes(e.weights),
            human_bytes(e.kv_cache),
            e.context,
            e.fit(total, available)
        );
    }
    Ok(())
}

async fn pull(args: &RemoteArgs) -> Result<()> {
    let (hub, json) = (&args.hub, args.json);
    let t = target(&args.model, &args.revision)?;
    let options = DownloadOptions {
        stall_timeout: Duration::from_secs(hub.stall_timeout.max(1)),
        ..DownloadOptions::default()
    };
    let downloader = Downloader::new(client(hub)?, cache()?, options);
    let plan = downloader.plan(&t.request).await?;
    if !json {
        eprintln!(
            "{} at {}: {} in {} file(s){}",
            plan.info.repo,
            &plan.info.commit[..12],
            human_bytes(plan.total()),
            plan.files.len(),
            if plan.present > 0 {
                format!(", {} already here", human_bytes(plan.present))
            } else {
                String::new()
            }
        );
    }
    let handle = downloader.start(plan);
    let mut events = handle.subscribe();
    let mut bar = Bar::new(json);
    let mut interrupted = false;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => {
                    bar.show(&ev);
                    if matches!(ev, DownloadEvent::Finished { .. } | DownloadEvent::Failed { .. } | DownloadEvent::Cancelled) {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                handle.pause();
                bar.finish_line();
                eprintln!("paused: run the same command again to continue where it stopped");
                break;
            }
        }
    }
    if interrupted {
        // Leave the partial file for next time.
        return Ok(());
    }
    let pulled = handle.finish().await?;
    bar.finish_line();
    if !json {
        eprintln!("done: {}", pulled.snapshot.display());
        eprintln!("run it with: lumen chat --model {}", model_spec(&pulled));
    }
    Ok(())
}

/// How to name a pulled model on `--model`.
fn model_spec(p: &lumen_hub::Pulled) -> String {
    let ggufs: Vec<&PathBuf> = p
        .files
        .iter()
        .filter(|f| {
            f.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    match ggufs.as_slice() {
        [one] => {
            let rel = one.strip_prefix(&p.snapshot).unwrap_or(one);
            format!("{}:{}", p.repo, rel.display())
        }
        _ => p.repo.to_string(),
    }
}

/// The progress display: a line redrawn in place on a terminal, a line
/// every few seconds otherwise, or JSON lines.
struct Bar {
    json: bool,
    tty: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Bar {
    fn new(json: bool) -> Self {
        Self {
            json,
            tty: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, ev: &DownloadEvent) {
        if self.json {
            if let Ok(line) = serde_json::to_string(ev) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            return;
        }
        match ev {
            DownloadEvent::Progress {
                done,
                total,
                bytes_per_s,
                eta_s,
            } => {
                let every = if self.tty {
                    Duration::from_millis(200)
                } else {
                    Duration::from_secs(5)
                };
                if self.last.is_some_and(|t| t.elapsed() < every) && done < total {
                    return;
                }
                self.last = Some(Instant::now());
                let pct = if *total == 0 {
                    100.0
                } else {
                    *done as f64 * 100.0 / *total as f64
                };
                let eta = eta_s
                    .filter(|_| *bytes_per_s > 0.0)
                    .map(|s| format!(", {} left", clock(s)))
                    .unwrap_or_default();
                let line = format!(
                    "{} / {} ({pct:.0}%), {}/s{eta}",
                    human_bytes(*done),
                    human_bytes(*total),
                    human_bytes(*bytes_per_s as u64)
                );
                if self.tty {
                    eprint!("\r\x1b[2K{line}");
                    self.drawn = true;
                } else {
                    eprintln!("{line}");
                }
            }
            DownloadEvent::Verifying { file, bytes } => {
                self.finish_line();
                eprintln!(
                    "checking the {} already downloaded of {file}",
                    human_bytes(*bytes)
                );
            }
            DownloadEvent::Retrying {
                file,
                attempt,
                delay_ms,
                reason,
            } => {
                self.finish_line();
                eprintln!(
                    "{file}: {reason}; retrying in {:.1} s (attempt {})",
                    *delay_ms as f64 / 1000.0,
                    attempt + 1
                );
            }
            _ => {}
        }
    }

    fn finish_line(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

fn clock(s: f64) -> String {
    let s = s.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

fn login(token_stdin: bool) -> Result<()> {
    let secret = if token_stdin || !std::io::stdin().is_terminal() {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .context("cannot read the token from stdin")?;
        s
    } else {
        eprintln!("Create a read token at https://huggingface.co/settings/tokens");
        rpassword::prompt_password("Hugging Face token (hidden): ")
            .context("cannot read the token")?
    };
    let token = lumen_hub::Token::parse(&secret)?;
    lumen_hub::token::save(&token)?;
    eprintln!("saved in the system keyring");
    if let Some((_, TokenSource::Environment)) = lumen_hub::token::load() {
        eprintln!("note: HF_TOKEN is set in the environment and takes precedence");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lumen_engine::mllama::config::MllamaConfig;
    use lumen_hub::Catalogue;

    /// The vision models' parameter counts in the catalogue are the
    /// engine's count of their architecture: the 11B from Meta's
    /// config.json, the 90B from the same with the 90B's text model
    /// (hidden 8192, 100 layers of which every fifth from the fourth is
    /// cross-attention, 28672 intermediate, 64 heads).
    #[test]
    fn vision_parameter_counts_match_the_engine() {
        let cat = Catalogue::builtin().expect("catalogue");
        let count = |id: &str| cat.model(id).expect(id).architecture.parameters;
        let eleven = MllamaConfig::llama32_11b_vision().expect("11b");
        assert_eq!(
            count("llama-3.2-11b-vision-instruct"),
            eleven.parameter_count() as u64
        );
        let mut json: serde_json::Value = serde_json::from_str(include_str!(
            "../../lumen-engine/src/mllama/configs/llama-3.2-11b-vision.json"
        ))
        .expect("json");
        let text = &mut json["text_config"];
        text["hidden_size"] = 8192.into();
        text["intermediate_size"] = 28_672.into();
        text["num_attention_heads"] = 64.into();
        text["num_hidden_layers"] = 100.into();
        text["cross_attention_layers"] = (0..20).map(|i| 3 + 5 * i).collect::<Vec<u64>>().into();
        let ninety = MllamaConfig::from_json(&json.to_string(), std::path::Path::new("90b.json"))
            .expect("90b");
        assert_eq!(
            count("llama-3.2-90b-vision-instruct"),
            ninety.parameter_count() as u64
        );
    }
}
