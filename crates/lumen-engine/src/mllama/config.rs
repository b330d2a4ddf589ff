//! `config.json` of a Llama 3.2 Vision checkpoint
//! (`MllamaForConditionalGeneration`): a Llama 3.1 text config with
//! cross-attention layer positions, and a vision encoder config.

use std::path::Path;

use serde::Deserialize;

use crate::config::{HfLlamaConfig, LlamaConfig};
use crate::error::{EngineError, Result};

/// The vision encoder's settings, as in `vision_config`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    /// Width of the encoder.
    pub hidden_size: usize,
    /// Attention heads.
    pub attention_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Local (per-tile) encoder layers.
    pub num_hidden_layers: usize,
    /// Gated global encoder layers.
    pub num_global_layers: usize,
    /// Local layers whose outputs are concatenated to the final state.
    pub intermediate_layers_indices: Vec<usize>,
    /// Tile side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Most tiles per image.
    pub max_num_tiles: usize,
    /// LayerNorm ε of the encoder layers.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Input channels.
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    /// `hidden_size × (1 + intermediate layers)`.
    pub vision_output_dim: usize,
    /// Tile grids, `[rows, cols]`.
    #[serde(default)]
    pub supported_aspect_ratios: Vec<(usize, usize)>,
}

fn default_norm_eps() -> f64 {
    1e-5
}

fn default_channels() -> usize {
    3
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    model_type: Option<String>,
    text_config: serde_json::Value,
    vision_config: VisionConfig,
    image_token_index: u32,
}

#[derive(Debug, Deserialize)]
struct RawTextExtras {
    cross_attention_layers: Vec<usize>,
}

/// A Llama 3.2 Vision model's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MllamaConfig {
    /// The text decoder (a Llama 3.1 model with extra embedding rows).
    pub text: LlamaConfig,
    /// Decoder layers that are cross-attention layers.
    pub cross_attention_layers: Vec<usize>,
    /// The vision encoder.
    pub vision: VisionConfig,
    /// Id of `<|image|>` (128256 in Meta's checkpoints: one past the text
    /// vocabulary; the embedding table has 8 extra rows).
    pub image_token_index: u32,
}

impl MllamaConfig {
    /// Reads and checks `config.json` (Meta's `rope_theta` + `rope_scaling`
    /// style or transformers 5's `rope_parameters`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// The configuration of `meta-llama/Llama-3.2-11B-Vision-Instruct`
    /// (its `config.json`, kept in the source), for synthetic benchmarks.
    pub fn llama32_11b_vision() -> Result<Self> {
        const JSON: &str = include_str!("configs/llama-3.2-11b-vision.json");
        Self::from_json(JSON, Path::new("llama-3.2-11b-vision.json"))
    }

    /// Parameters of the checkpoint: the vision encoder, projector and
    /// decoder (embedding rows included).
    pub fn parameter_count(&self) -> usize {
        let v = &self.vision;
        let (h, m) = (v.hidden_size, v.intermediate_size);
        let patches = self.patches_per_tile();
        let ratio_rows = self.aspect_ratio_count() + 1;
        let layer = 4 * h * h + 2 * h * m + m + h + 4 * h;
        let vision = (v.num_hidden_layers + v.num_global_layers) * layer
            + 2 * v.num_global_layers // attention and MLP gates
            + v.num_channels * v.patch_size * v.patch_size * h // patch convolution
            + h // class token
            + patches * h + 1 // gated positional embedding
            + ratio_rows * v.max_num_tiles * patches * h // tile positional embedding
            + 2 * (ratio_rows * v.max_num_tiles * h + 1) // pre/post tile embeddings
            + 4 * h; // LayerNorms before and after
        let t = &self.text;
        let (th, hd) = (t.hidden_size, t.head_dim);
        let attn = th * (t.num_heads * hd) * 2 + th * (t.num_kv_heads * hd) * 2;
        let mlp = 3 * th * t.intermediate_size;
        let cross = self.cross_attention_layers.len();
        let text = t.num_layers * (attn + mlp + 2 * th)
            + cross * (2 * hd + 2)
            + (t.vocab_size + 8) * th
            + t.vocab_size * th
            + th;
        vision + v.vision_output_dim * th + th + text
    }

    /// Parses and checks a `config.json` text; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| EngineError::invalid(path, reason);
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| bad(format!("config.json: {e}")))?;
        if raw.model_type.as_deref().is_some_and(|t| t != "mllama") {
            return Err(EngineError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                architecture: raw.model_type.unwrap_or_default(),
            });
        }
        let hf: HfLlamaConfig = serde_json::from_value(raw.text_config.clone())
            .map_err(|e| bad(format!("text_config: {e}")))?;
        let extras: RawTextExtras = serde_json::from_value(raw.text_config)
            .map_err(|e| bad(format!("text_config: {e}")))?;
        let cfg = Self {
            text: hf.to_config(path)?,
            cross_attention_layers: extras.cross_attention_layers,
            vision: raw.vision_config,
            image_token_index: raw.image_token_index,
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Tile grids the checkpoint has embeddings for.
    pub fn aspect_ratio_count(&self) -> usize {
        if self.vision.supported_aspect_ratios.is_empty() {
            crate::mllama::image_processor::supported_aspect_ratios(self.vision.max_num_tiles).len()
        } else {
            self.vision.supported_aspect_ratios.len()
        }
    }

    /// Patches per tile plus the class token.
    pub fn patches_per_tile(&self) -> usize {
        let side = self.vision.image_size / self.vision.patch_size;
        side * side + 1
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let v = &self.vision;
        if v.hidden_size == 0
            || v.attention_heads == 0
            || !v.hidden_size.is_multiple_of(v.attention_heads)
        {
            return Err(format!(
                "vision hidden_size {} is not a multiple of {} heads",
                v.hidden_size, v.attention_heads
            ));
        }
        if v.patch_size == 0 || v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "vision image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if let Some(i) = v
            .intermediate_layers_indices
            .iter()
            .find(|i| **i >= v.num_hidden_layers)
        {
            return Err(format!(
                "intermediate layer {i} does not exist ({} layers)",
                v.num_hidden_layers
            ));
        }
        if v.vision_output_dim != v.hidden_size * (1 + v.intermediate_layers_indices.len()) {
            return Err(format!(
                "vision_output_dim {} ≠ hidden_size × (1 + intermediate layers)",
                v.vision_output_dim
            ));
        }
        if v.max_num_tiles == 0 || v.max_num_tiles > 64 {
            return Err(format!("max_num_tiles {} is out of range", v.max_num_tiles));
        }
        if let Some(l) = self
            .cross_attention_layers
            .iter()
            .find(|l| **l >= self.text.num_layers)
        {
            return Err(format!(
                "cross-attention layer {l} does not exist ({} layers)",
                self.text.num_layers
            ));
        }
        if self.image_token_index as usize >= self.text.vocab_size + 8 {
            return Err(format!(
                "image_token_index {} is outside the embedding table",
                self.image_token_index
            ));
        }
        Ok(())
    }
}
