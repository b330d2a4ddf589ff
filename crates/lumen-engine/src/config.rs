//! Model configuration: the runtime [`LlamaConfig`], and how it is read from a
//! Hugging Face `config.json` or from GGUF metadata.
//!
//! Two `config.json` styles exist for Llama 3.x: Meta's checkpoints put
//! `rope_theta` and `rope_scaling` at the top level; transformers 5 writes a
//! single `rope_parameters` object holding both. Both are accepted.

use std::path::Path;

use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// How rotary position frequencies are adjusted for long context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor` (linear interpolation).
    Linear {
        /// The interpolation factor.
        factor: f32,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Scale applied to low frequencies.
        factor: f32,
        /// Wavelengths longer than `original / low_freq_factor` are scaled fully.
        low_freq_factor: f32,
        /// Wavelengths shorter than `original / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
    /// Per-frequency divisors, as stored in a GGUF `rope_freqs.weight` tensor
    /// (llama.cpp precomputes Llama 3 scaling this way).
    FreqFactors(Vec<f32>),
}

/// RoPE settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// The base θ.
    pub theta: f32,
    /// Long-context scaling.
    pub scaling: RopeScaling,
    /// Whether rotation pairs are adjacent elements (llama.cpp / GGUF layout,
    /// whose converter permutes Q and K) rather than the two halves of each
    /// head (Hugging Face layout).
    pub interleaved: bool,
}

/// The runtime configuration of a Llama-architecture text model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Rows of the embedding table.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_kv_heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// RMSNorm ε.
    pub rms_norm_eps: f64,
    /// Rotary embedding settings.
    pub rope: RopeConfig,
    /// The longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the embedding table.
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Checks that the numbers are consistent, so that a corrupt config fails
    /// here with a message rather than deep in a matmul.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Err(EngineError::invalid(path, reason));
        let dims = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in dims {
            if v == 0 || v > 1 << 24 {
                return bad(format!("{name} = {v} is out of range"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "{} query heads are not a multiple of {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} is odd", self.head_dim));
        }
        if !(self.rope.theta.is_finite() && self.rope.theta > 0.0) {
            return bad(format!("rope theta {} is invalid", self.rope.theta));
        }
        if let RopeScaling::FreqFactors(f) = &self.rope.scaling
            && f.len() != self.head_dim / 2
        {
            return bad(format!(
                "rope_freqs has {} entries, expected head_dim / 2 = {}",
                f.len(),
                self.head_dim / 2
            ));
        }
        Ok(())
    }

    /// Reads the configuration from GGUF metadata (`llama.*` keys).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.get_str("general.architecture").unwrap_or("(none)");
        if arch != "llama" {
            return Err(EngineError::UnsupportedArchitecture {
                path: gguf.path().to_path_buf(),
                architecture: arch.to_string(),
            });
        }
        let need = |key: &str| -> Result<usize> {
            let full = format!("llama.{key}");
            gguf.get_u64(&full)?
                .map(|v| v as usize)
                .ok_or_else(|| gguf.invalid(format!("metadata `{full}` is missing")))
        };
        let hidden_size = need("embedding_length")?;
        let num_heads = need("attention.head_count")?;
        let num_kv_heads = gguf
            .get_u64("llama.attention.head_count_kv")?
            .map_or(num_heads, |v| v as usize);
        let head_dim = match gguf.get_u64("llama.attention.key_length")? {
            Some(v) => v as usize,
            None => hidden_size / num_heads.max(1),
        };
        let vocab_size = match gguf.get_u64("llama.vocab_size")? {
            Some(v) => v as usize,
            None => gguf
                .get("tokenizer.ggml.tokens")
                .and_then(|t| t.as_array())
                .map(<[_]>::len)
                .or_else(|| gguf.tensor("token_embd.weight").map(|t| t.dims[0]))
                .ok_or_else(|| gguf.invalid("cannot tell the vocabulary size"))?,
        };
        let scaling = match gguf.get_str("llama.rope.scaling.type") {
            Some("linear") => RopeScaling::Linear {
                factor: gguf.get_f64("llama.rope.scaling.factor")?.unwrap_or(1.0) as f32,
            },
            Some("none") | None => RopeScaling::None,
            // "yarn" and others are not used by Llama 3.x; refuse rather than
            // silently computing something else.
            Some(other) => {
                return Err(gguf.invalid(format!("unsupported rope scaling type `{other}`")));
            }
        };
        Ok(Self {
            vocab_size,
            hidden_size,
            intermediate_size: need("feed_forward_length")?,
            num_layers: need("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: gguf
                .get_f64("llama.attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
            rope: RopeConfig {
                theta: gguf.get_f64("llama.rope.freq_base")?.unwrap_or(10_000.0) as f32,
                scaling,
                interleaved: true,
            },
            max_position_embeddings: need("context_length")?,
            tie_word_embeddings: gguf.tensor("output.weight").is_none(),
        })
    }
}

/// `config.json` of a Hugging Face Llama checkpoint, as found in the wild.
#[derive(Debug, Clone, Deserialize)]
pub struct HfLlamaConfig {
    /// e.g. `["LlamaForCausalLM"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// e.g. `"llama"`.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads; defaults to the query head count.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Head width; defaults to hidden / heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm ε.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Meta style: RoPE base at the top level.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Meta style: scaling at the top level.
    #[serde(default)]
    pub rope_scaling: Option<HfRopeParameters>,
    /// transformers 5 style: base and scaling together.
    #[serde(default)]
    pub rope_parameters: Option<HfRopeParameters>,
    /// Trained context length.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding table.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Beginning-of-text id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// One or several end ids.
    #[serde(default)]
    pub eos_token_id: Option<OneOrMany>,
}

/// A RoPE parameter block (`rope_scaling` or `rope_parameters`).
#[derive(Debug, Clone, Deserialize)]
pub struct HfRopeParameters {
    /// `"llama3"`, `"linear"`, `"default"`...
    #[serde(alias = "type", default)]
    pub rope_type: Option<String>,
    /// Base θ (only in `rope_parameters`).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Scaling factor.
    #[serde(default)]
    pub factor: Option<f64>,
    /// Llama 3 low-frequency factor.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// Llama 3 high-frequency factor.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// Llama 3 original context.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// A JSON field that is either one id or a list of ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl OneOrMany {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

fn default_rms_eps() -> f64 {
    1e-5
}

fn default_max_pos() -> usize {
    4096
}

impl HfLlamaConfig {
    /// Parses `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| EngineError::invalid(path, format!("config.json: {e}")))?;
        let is_llama = cfg.model_type.as_deref() == Some("llama")
            || cfg.architectures.iter().any(|a| a == "LlamaForCausalLM");
        if !is_llama {
            let architecture = cfg
                .architectures
                .first()
                .cloned()
                .or(cfg.model_type.clone())
                .unwrap_or_else(|| "(none)".into());
            return Err(EngineError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                architecture,
            });
        }
        Ok(cfg)
    }

    /// The runtime configuration.
    pub fn to_config(&self, path: &Path) -> Result<LlamaConfig> {
        let params = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let theta = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0);
        let scaling = match params {
            None => RopeScaling::None,
            Some(p) => rope_scaling(p).map_err(|r| EngineError::invalid(path, r))?,
        };
        let cfg = LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope: RopeConfig {
                theta: theta as f32,
                scaling,
                interleaved: false,
            },
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }
}

fn rope_scaling(p: &HfRopeParameters) -> std::result::Result<RopeScaling, String> {
    let ty = p.rope_type.as_deref().unwrap_or("default");
    let factor = || p.factor.ok_or(format!("rope type `{ty}` needs `factor`"));
    Ok(match ty {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: factor()? as f32,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()? as f32,
            low_freq_factor: p.low_freq_factor.unwrap_or(1.0) as f32,
            high_freq_factor: p.high_freq_factor.unwrap_or(4.0) as f32,
            original_max_position_embeddings: p
                .original_max_position_embeddings
                .ok_or("llama3 rope scaling needs `original_max_position_embeddings`")?,
        },
        other => return Err(format!("unsupported rope scaling type `{other}`")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> HfLlamaConfig {
        serde_json::from_str(json).expect("valid json")
    }

    const BASE: &str = r#""architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":128256,
        "hidden_size":2048,"intermediate_size":8192,"num_hidden_layers":16,"num_attention_heads":32,
        "num_key_value_heads":8,"max_position_embeddings":131072,"tie_word_embeddings":true"#;

    #[test]
    fn meta_and_transformers5_styles_agree() {
        let meta = parse(&format!(
            r#"{{{BASE},"rope_theta":500000.0,"rope_scaling":{{"factor":32.0,"high_freq_factor":4.0,
            "low_freq_factor":1.0,"original_max_position_embeddings":8192,"rope_type":"llama3"}}}}"#
        ));
        let tf5 = parse(&format!(
            r#"{{{BASE},"rope_parameters":{{"rope_theta":500000.0,"factor":32.0,"high_freq_factor":4.0,
            "low_freq_factor":1.0,"original_max_position_embeddings":8192,"rope_type":"llama3"}}}}"#
        ));
        let p = Path::new("config.json");
        let a = meta.to_config(p).expect("meta");
        let b = tf5.to_config(p).expect("tf5");
        assert_eq!(a, b);
        assert_eq!(a.head_dim, 64);
        assert_eq!(a.rope.theta, 500000.0);
        assert!(matches!(
            a.rope.scaling,
            RopeScaling::Llama3 {
                original_max_position_embeddings: 8192,
                ..
            }
        ));
    }

    #[test]
    fn old_type_key_is_accepted() {
        let c = parse(&format!(
            r#"{{{BASE},"rope_scaling":{{"type":"linear","factor":2.0}}}}"#
        ));
        let cfg = c.to_config(Path::new("c")).expect("linear");
        assert_eq!(cfg.rope.scaling, RopeScaling::Linear { factor: 2.0 });
    }

    #[test]
    fn rejects_inconsistent_heads() {
        let base = BASE.replace(r#""num_key_value_heads":8"#, r#""num_key_value_heads":7"#);
        let c = parse(&format!("{{{base}}}"));
        let err = c.to_config(Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("not a multiple"), "{err}");
    }

    #[test]
    fn rejects_unknown_rope_type() {
        let c = parse(&format!(
            r#"{{{BASE},"rope_scaling":{{"rope_type":"yarn","factor":2.0}}}}"#
        ));
        assert!(c.to_config(Path::new("c")).is_err());
    }
}
