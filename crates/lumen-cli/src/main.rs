//! `lumen`: run Llama models from the command line.
//!
//! ```text
//! lumen run --model PATH "question"     one answer, streamed to stdout
//! lumen chat --model PATH               interactive multi-turn chat
//! lumen history list|show ID|export [--format md|json] [--out FILE] [ID]|import FILE|rm ID
//! lumen search QUERY [--json] [--limit N]
//! lumen models list [--installed] | info M | pull M | rm M | import PATH | login | logout
//! lumen bench --model PATH [--image FILE] [--json]
//! lumen bench --synthetic llama-3.2-11b-vision --quantize q4_k
//! lumen debug tokenize --model PATH TEXT
//! lumen debug logits --model PATH --ids 1,2,3 --out logits.safetensors
//! ```
//!
//! Progress and statistics go to stderr, the model's words to stdout, so
//! `lumen run ... > answer.txt` captures just the answer.

mod bandwidth;
mod bench;
#[cfg(target_os = "linux")]
mod bench_app;
mod bench_download;
mod bench_gguf;
mod bench_history;
mod bench_kernels;
mod debug;
mod generate;
mod history;
mod llama_cpp;
mod models;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Lumen: Llama 3.2 on your own machine, offline.
#[derive(Debug, Parser)]
#[command(name = "lumen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Compute threads (default: one per core; `RAYON_NUM_THREADS` too).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

/// Sets the number of compute threads before any thread pool starts.
#[allow(unsafe_code)]
fn set_threads(n: Option<u16>) {
    // SAFETY: called from `main` right after parsing the arguments, before
    // any other thread exists that could read or write the environment.
    unsafe { lumen_engine::device::set_compute_threads(n.map(usize::from)) };
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Answer one prompt, streaming the reply to stdout.
    Run(generate::RunArgs),
    /// An interactive multi-turn chat on stdin/stdout.
    Chat(generate::ChatArgs),
    /// The chat history: list, show, export, import, delete.
    #[command(subcommand)]
    History(history::HistoryCommand),
    /// Search everything in the chat history.
    Search(history::SearchArgs),
    /// The model catalogue, downloads and installed models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Measure load time, memory, time to first token and tokens/s.
    Bench(bench::BenchArgs),
    /// Tools for checking the engine against reference implementations.
    #[command(subcommand)]
    Debug(debug::DebugCommand),
}

/// Options shared by every command that loads a model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A .gguf file, a Hugging Face model folder (config.json + safetensors),
    /// or an installed model's id (owner/name[:file], local/name).
    #[arg(long, short = 'm', env = "LUMEN_MODEL")]
    pub model: PathBuf,
    /// Device, dtype and quantization.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// How to load a model.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Compute device: auto, cpu, cuda[:N], metal[:N].
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Compute dtype for safetensors weights: f32, f16, bf16.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Quantize safetensors weights while loading: q8_0, q6_k, q5_k, q4_k,
    /// q4_0, or none (default: q4_k for Llama 3.2 Vision, none otherwise).
    #[arg(long)]
    pub quantize: Option<String>,
    /// Compute with f32 copies of GGUF weights (exact parity with
    /// dequantized references; slow).
    #[arg(long)]
    pub dequantize: bool,
    /// How the KV cache stores keys and values: f16 (half the memory) or
    /// f32 (exact; for parity checks).
    #[arg(long, default_value = "f16")]
    pub kv_cache: String,
}

/// Large buffers are recycled instead of returned to the system after every
/// operation (see [`lumen_engine::alloc`]).
#[global_allocator]
static ALLOC: lumen_engine::alloc::Recycler = lumen_engine::alloc::Recycler;

fn main() -> ExitCode {
    lumen_core::init_logging();
    let cli = Cli::parse();
    set_threads(cli.threads);
    let result = match cli.command {
        Command::Run(args) => generate::run(args),
        Command::Chat(args) => generate::chat(args),
        Command::History(cmd) => history::main(cmd),
        Command::Search(args) => history::search(args),
        Command::Models(cmd) => models::main(cmd),
        Command::Bench(args) => bench::main(args),
        Command::Debug(cmd) => debug::main(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line: the error and its causes.
            let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("lumen: error: {}", causes.join(": "));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    /// clap's own consistency checks over every command and argument.
    #[test]
    fn the_argument_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    /// The global `--threads` reaches every command, `bench kernels` too
    /// (which once declared a `--threads` of another type and panicked
    /// while parsing it).
    #[test]
    fn threads_is_global() {
        for args in [
            &["lumen", "bench", "kernels", "--threads", "1"][..],
            &["lumen", "--threads", "1", "bench", "kernels"],
            &["lumen", "bench", "--model", "m.gguf", "--threads", "1"],
            &["lumen", "search", "word", "--threads", "1"],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            assert_eq!(cli.threads, Some(1), "{args:?}");
        }
        assert!(Cli::try_parse_from(["lumen", "bench", "kernels", "--threads", "0"]).is_err());
    }
}
