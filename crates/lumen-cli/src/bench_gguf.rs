//! `lumen bench write-gguf`: random-weight GGUF files with the exact shapes
//! of Llama 3.2 1B or 3B (or 3.1 8B) and the real Llama 3 tokenizer in their metadata,
//! so that Lumen and llama.cpp (`lumen bench --llama-bench`) run the same
//! file. Weights are drawn from a fixed seed: the same arguments write the
//! same file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use lumen_engine::GgmlDType;
use lumen_engine::synthetic::{SyntheticSpec, Vocabulary, llama3_tokenizer, write_random_llama};

/// `lumen bench write-gguf`.
#[derive(Debug, Args)]
pub struct WriteGgufArgs {
    /// The shapes: llama-3.2-1b, llama-3.2-3b or llama-3.1-8b (untied output layer).
    #[arg(long, default_value = "llama-3.2-1b")]
    shape: String,
    /// Weight type: q4_k_m (llama.cpp's Q4_K/Q6_K mix), q4_0, q4_1, q8_0,
    /// q4_k, q5_k, q6_k, f16.
    #[arg(long = "type", default_value = "q4_0")]
    weight_type: String,
    /// The Llama 3 tokenizer folder (tokenizer.json, tokenizer_config.json;
    /// default: the one scripts/fetch-assets.sh caches).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Where to write the file.
    #[arg(long)]
    out: PathBuf,
}

/// The GGUF type a benchmark's `--type` names (q4_0, q4_1, q8_0, q4_k,
/// q5_k, q6_k, f16; any case).
pub fn weight_type(name: &str) -> Result<GgmlDType> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q8_0" => GgmlDType::Q8_0,
        "q4_k" => GgmlDType::Q4K,
        "q5_k" => GgmlDType::Q5K,
        "q6_k" => GgmlDType::Q6K,
        "f16" => GgmlDType::F16,
        other => bail!(
            "unknown weight type `{other}` (expected q4_0, q4_1, q8_0, q4_k, q5_k, q6_k or f16)"
        ),
    })
}

/// Writes the file.
pub fn main(args: WriteGgufArgs) -> Result<()> {
    let name = args.weight_type.to_ascii_lowercase();
    let q4_k_m = name == "q4_k_m";
    let ty = if q4_k_m {
        GgmlDType::Q4K
    } else {
        weight_type(&name)?
    };
    let spec = match args.shape.as_str() {
        "llama-3.2-1b" => SyntheticSpec::llama32_1b(ty),
        "llama-3.2-3b" => SyntheticSpec::llama32_3b(ty),
        "llama-3.1-8b" => SyntheticSpec::llama31_8b(ty),
        other => {
            bail!("unknown shape `{other}` (expected llama-3.2-1b, llama-3.2-3b or llama-3.1-8b)")
        }
    };
    let spec = if q4_k_m { spec.q4_k_m() } else { spec };
    let dir = match args.tokenizer {
        Some(d) => d,
        None => crate::bench::asset("llama31-tokenizer")?,
    };
    let meta = llama3_tokenizer(
        &dir.join("tokenizer.json"),
        Some(&dir.join("tokenizer_config.json")),
    )
    .with_context(|| format!("cannot read the tokenizer in {}", dir.display()))?;
    let started = Instant::now();
    eprintln!(
        "writing {} ({:?} weights, random) to {}",
        args.shape,
        ty,
        args.out.display()
    );
    write_random_llama(&args.out, &spec, Vocabulary::Metadata(meta))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let size = std::fs::metadata(&args.out)?.len();
    eprintln!(
        "wrote {:.2} GB in {:.1} s",
        size as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
