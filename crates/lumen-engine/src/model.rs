//! Loading a model — weights, tokenizer, chat template and defaults — from a
//! GGUF file or a Hugging Face model folder.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType;
use candle_core::quantized::GgmlDType;
use serde::Deserialize;

use crate::config::{HfLlamaConfig, LlamaConfig, OneOrMany};
use crate::device::{DeviceRequest, select_device};
use crate::error::{EngineError, Result};
use crate::gguf::{GgufFile, ggml_type_name};
use crate::llama::Llama;
use crate::sampling::SamplingParams;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use crate::weights::{DenseOptions, WeightSource};

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Where to compute.
    pub device: DeviceRequest,
    /// Compute dtype for dense (safetensors) weights: f32 by default on the
    /// CPU (bf16 matmuls are widened to f32 there anyway).
    pub dtype: Option<DType>,
    /// Quantize dense weights at load (Q8_0, Q4_K, ...). Ignored for GGUF.
    pub quantize: Option<GgmlDType>,
    /// Compute with f32 copies of quantized GGUF weights instead of the
    /// quantized kernels (which also round activations to 8 bits). Slow and
    /// memory-hungry; for checking parity against dequantized references.
    pub dequantize: bool,
}

/// The on-disk format of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A llama.cpp GGUF file.
    Gguf,
    /// A Hugging Face folder with `config.json` and safetensors.
    Safetensors,
}

/// Facts about a loaded model, for display.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// A display name (`general.name`, or the file/folder name).
    pub name: String,
    /// The file or folder loaded.
    pub path: PathBuf,
    /// Its format.
    pub format: ModelFormat,
    /// The most common weight type, e.g. `Q4_K` or `BF16`.
    pub weight_type: String,
    /// Bytes of weight data.
    pub weight_bytes: usize,
    /// The model's trained context length.
    pub context_length: usize,
    /// The device used.
    pub device: String,
    /// Set when a GPU was requested but the CPU is used.
    pub device_note: Option<String>,
}

/// Load progress for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct LoadProgress {
    /// Steps done.
    pub done: usize,
    /// Steps in all.
    pub total: usize,
}

/// A loaded model: immutable, shared between conversations with [`Arc`].
#[derive(Debug)]
pub struct Model {
    llama: Llama,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    info: ModelInfo,
    defaults: SamplingParams,
}

impl Model {
    /// Loads the model at `path`: a `.gguf` file, a folder with
    /// `config.json`, or a folder holding exactly one `.gguf` file.
    pub fn load(
        path: &Path,
        options: &LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?;
        if meta.is_file() {
            return Self::load_gguf(path, options, progress);
        }
        if path.join("config.json").is_file() {
            return Self::load_hf(path, options, progress);
        }
        let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| EngineError::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
            })
            .collect();
        match ggufs.as_slice() {
            [one] => Self::load_gguf(one, options, progress),
            [] => Err(EngineError::invalid(
                path,
                "the folder has neither config.json nor a .gguf file",
            )),
            _ => Err(EngineError::invalid(
                path,
                "the folder holds several .gguf files; pass the one to load",
            )),
        }
    }

    fn load_gguf(
        path: &Path,
        options: &LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        check_magic(path)?;
        let gguf = Arc::new(GgufFile::open(path)?);
        let cfg = LlamaConfig::from_gguf(&gguf)?;
        cfg.validate(path)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let template = chat_template(gguf.get_str("tokenizer.chat_template"), &tokenizer)?;
        let selected = select_device(options.device);
        let source = WeightSource::Gguf {
            file: gguf.clone(),
            dequantize: options.dequantize,
        };
        let llama = Llama::load(&source, &cfg, &selected.device, &mut |done, total| {
            progress(LoadProgress { done, total })
        })?;
        let info = ModelInfo {
            name: gguf
                .get_str("general.name")
                .map(str::to_string)
                .unwrap_or_else(|| file_name(path)),
            path: path.to_path_buf(),
            format: ModelFormat::Gguf,
            weight_type: dominant_gguf_type(&gguf),
            weight_bytes: gguf.tensor_data_size(),
            context_length: cfg.max_position_embeddings,
            device: device_name(&selected.device),
            device_note: selected.fallback_reason,
        };
        Ok(Self {
            llama,
            tokenizer,
            template,
            info,
            defaults: SamplingParams::default(),
        })
    }

    fn load_hf(
        dir: &Path,
        options: &LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let hf = HfLlamaConfig::from_file(&dir.join("config.json"))?;
        let cfg = hf.to_config(dir)?;
        let tok_cfg = TokenizerConfig::read(dir)?;
        let gen_cfg = GenerationConfig::read(dir)?;
        let mut tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        let mut eos_ids: Vec<u32> = Vec::new();
        for ids in [&hf.eos_token_id, &gen_cfg.eos_token_id]
            .into_iter()
            .flatten()
        {
            eos_ids.extend(ids.to_vec());
        }
        if let Some(id) = tok_cfg
            .eos_token
            .as_deref()
            .and_then(|t| tokenizer.token_to_id(t))
        {
            eos_ids.push(id);
        }
        tokenizer.set_special(
            tok_cfg.bos_token.clone(),
            tok_cfg.eos_token.clone(),
            eos_ids,
        );
        let template = chat_template(tok_cfg.chat_template(dir)?.as_deref(), &tokenizer)?;
        let selected = select_device(options.device);
        let dtype = options.dtype.unwrap_or(if selected.device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        });
        let source = WeightSource::safetensors_dir(
            dir,
            "model.",
            DenseOptions {
                dtype,
                quantize: options.quantize,
            },
        )?;
        let llama = Llama::load(&source, &cfg, &selected.device, &mut |done, total| {
            progress(LoadProgress { done, total })
        })?;
        let weight_type = match options.quantize {
            Some(q) => format!("{q:?} (quantized at load)"),
            None => format!("{dtype:?}").to_uppercase(),
        };
        let weight_bytes = dir_safetensors_bytes(dir);
        let mut defaults = SamplingParams::default();
        gen_cfg.apply(&mut defaults);
        let info = ModelInfo {
            name: file_name(dir),
            path: dir.to_path_buf(),
            format: ModelFormat::Safetensors,
            weight_type,
            weight_bytes,
            context_length: cfg.max_position_embeddings,
            device: device_name(&selected.device),
            device_note: selected.fallback_reason,
        };
        Ok(Self {
            llama,
            tokenizer,
            template,
            info,
            defaults,
        })
    }

    /// The network.
    pub fn llama(&self) -> &Llama {
        &self.llama
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Facts for display.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The sampling settings the model's authors recommend
    /// (`generation_config.json`), else Llama 3's defaults.
    pub fn default_sampling(&self) -> &SamplingParams {
        &self.defaults
    }
}

/// The model's own chat template, or the built-in Llama 3 one.
fn chat_template(source: Option<&str>, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
    match source {
        Some(src) => ChatTemplate::new(
            src,
            tokenizer.bos_token().unwrap_or_default(),
            tokenizer.eos_token().unwrap_or_default(),
        ),
        None => ChatTemplate::llama3_fallback(),
    }
}

/// Fails early, with a clear message, on files that are not GGUF at all
/// (a safetensors file, an HTML error page saved as `.gguf`, ...).
fn check_magic(path: &Path) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| EngineError::io(path, e))?;
    if n < 4 || &magic != b"GGUF" {
        return Err(EngineError::invalid(
            path,
            "not a GGUF file (a model is either a .gguf file or a folder with config.json)",
        ));
    }
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn device_name(d: &candle_core::Device) -> String {
    match d {
        candle_core::Device::Cpu => "cpu".into(),
        candle_core::Device::Cuda(_) => "cuda".into(),
        candle_core::Device::Metal(_) => "metal".into(),
    }
}

/// The type holding most of a GGUF file's bytes.
fn dominant_gguf_type(g: &GgufFile) -> String {
    let mut by_type: std::collections::BTreeMap<u32, usize> = Default::default();
    for t in g.tensors() {
        *by_type.entry(t.ggml_type).or_default() += t.size;
    }
    by_type
        .into_iter()
        .max_by_key(|(_, bytes)| *bytes)
        .map(|(t, _)| ggml_type_name(t))
        .unwrap_or_default()
}

fn dir_safetensors_bytes(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len() as usize)
                .sum()
        })
        .unwrap_or(0)
}

/// The parts of `tokenizer_config.json` the engine uses.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default, deserialize_with = "token_text")]
    bos_token: Option<String>,
    #[serde(default, deserialize_with = "token_text")]
    eos_token: Option<String>,
    #[serde(default)]
    chat_template: Option<serde_json::Value>,
}

/// A special token in `tokenizer_config.json`: a string, or an object with
/// `content`.
fn token_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    })
}

impl TokenizerConfig {
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        if !path.is_file() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| EngineError::invalid(&path, e.to_string()))
    }

    /// The default chat template: `chat_template.jinja` (newer transformers),
    /// else `chat_template` as a string or as a list of named templates.
    fn chat_template(&self, dir: &Path) -> Result<Option<String>> {
        let file = dir.join("chat_template.jinja");
        if file.is_file() {
            return std::fs::read_to_string(&file)
                .map(Some)
                .map_err(|e| EngineError::io(&file, e));
        }
        Ok(match &self.chat_template {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or(list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        })
    }
}

/// The parts of `generation_config.json` the engine uses.
#[derive(Debug, Default, Deserialize)]
struct GenerationConfig {
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    do_sample: Option<bool>,
}

impl GenerationConfig {
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.is_file() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| EngineError::invalid(&path, e.to_string()))
    }

    fn apply(&self, p: &mut SamplingParams) {
        if self.do_sample == Some(false) {
            p.temperature = 0.0;
            return;
        }
        if let Some(t) = self.temperature {
            p.temperature = t;
        }
        if let Some(t) = self.top_p {
            p.top_p = t;
        }
        if let Some(k) = self.top_k {
            p.top_k = k;
        }
    }
}
