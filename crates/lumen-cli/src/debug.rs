//! `lumen debug`: parity tools. Their interfaces are fixed: the golden tests
//! and the reference scripts depend on them.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use lumen_engine::llama::Logits;

use crate::ModelArgs;
use crate::generate::load_model;

/// `lumen debug ...`
#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Print the token ids of TEXT, comma-separated on one line. Special-token
    /// text (`<|eot_id|>`) is parsed; no BOS is added unless --add-special.
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        /// Apply the tokenizer's post-processor (e.g. prepend BOS).
        #[arg(long)]
        add_special: bool,
        /// The text.
        text: String,
    },
    /// Run one forward pass over --ids and write the logits of every position
    /// as one f32 tensor `logits` of shape [seq_len, vocab] in a safetensors file.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// Token ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<u32>,
        /// Where to write the safetensors file.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs a debug command.
pub fn main(cmd: DebugCommand) -> Result<()> {
    match cmd {
        DebugCommand::Tokenize {
            model,
            add_special,
            text,
        } => {
            let model = load_model(&model)?;
            let ids = model.tokenizer().encode(&text, add_special)?;
            let line: Vec<String> = ids.iter().map(u32::to_string).collect();
            println!("{}", line.join(","));
            Ok(())
        }
        DebugCommand::Logits { model, ids, out } => {
            if ids.is_empty() {
                bail!("--ids is empty");
            }
            let model = load_model(&model)?;
            let mut cache = model.new_cache(ids.len() + 1);
            let logits = model.forward_text(&ids, &mut cache, Logits::All)?;
            let logits = logits.to_dtype(candle_core::DType::F32)?;
            let tensors: HashMap<String, candle_core::Tensor> =
                [("logits".to_string(), logits)].into();
            candle_core::safetensors::save(&tensors, &out)
                .with_context(|| format!("writing {}", out.display()))?;
            Ok(())
        }
    }
}
