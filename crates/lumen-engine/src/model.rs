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
use crate::llama::{KvCache, KvDtype, Llama, Logits, PREFILL_CHUNK, copy_logits};
use crate::mllama::config::MllamaConfig;
use crate::mllama::image_processor::ImageProcessorConfig;
use crate::mllama::text::{ImageContext, TextModel};
use crate::mllama::vision::VisionModel;
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
    /// Applications that let nobody choose should pass
    /// [`default_quantization`] for the path.
    pub quantize: Option<GgmlDType>,
    /// Compute with f32 copies of quantized GGUF weights instead of the
    /// quantized kernels (which also round activations to 8 bits). Slow and
    /// memory-hungry; for checking parity against dequantized references.
    pub dequantize: bool,
    /// How KV caches made by [`Model::new_cache`] store keys and values.
    pub kv_cache: KvDtype,
}

/// The on-disk format of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A llama.cpp GGUF file.
    Gguf,
    /// A Hugging Face folder with `config.json` and safetensors.
    Safetensors,
    /// Random weights made at load, for benchmarks.
    Synthetic,
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

/// The network of a model.
pub enum Decoder {
    /// A Llama text model.
    Llama(Box<Llama>),
    /// Llama 3.2 Vision: image encoder plus cross-attention decoder.
    Mllama(Box<VisionParts>),
}

/// The parts of a Llama 3.2 Vision model.
pub struct VisionParts {
    /// The configuration.
    pub config: MllamaConfig,
    /// Image encoder and projector.
    pub vision: VisionModel,
    /// Decoder with cross-attention layers.
    pub text: TextModel,
    /// How images are prepared.
    pub processor: ImageProcessorConfig,
    /// Where the weights live.
    pub device: candle_core::Device,
}

/// An image run through the vision encoder: the projected states every
/// cross-attention layer attends to. Encode once, reuse for every turn.
#[derive(Debug, Clone)]
pub struct EncodedImage {
    /// `(tiles, P + 1, text hidden)`.
    pub states: candle_core::Tensor,
    /// Tiles in use.
    pub num_tiles: usize,
    /// Identifies the image (hash of its pixels), to tell images apart.
    pub digest: u64,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Llama(l) => f.debug_tuple("Llama").field(l.config()).finish(),
            Self::Mllama(v) => f.debug_tuple("Mllama").field(&v.config).finish(),
        }
    }
}

/// A loaded model: immutable, shared between conversations with [`Arc`].
#[derive(Debug)]
pub struct Model {
    decoder: Decoder,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    info: ModelInfo,
    defaults: SamplingParams,
    kv_dtype: KvDtype,
    /// Last, so that it drops after the weights (see [`TrimOnDrop`]).
    _trim: TrimOnDrop,
}

/// Gives back what building a tokenizer went through (tens of megabytes of
/// temporary buffers for a 128K vocabulary) before the weights arrive, so
/// that they do not add to the peak of loading.
fn tokenizer_built() {
    crate::alloc::trim();
}

/// Releases the buffers [`crate::alloc`] keeps when a model is dropped,
/// after its weights went back to the pool.
#[derive(Debug, Default)]
struct TrimOnDrop;

impl Drop for TrimOnDrop {
    fn drop(&mut self) {
        crate::alloc::trim();
    }
}

impl Model {
    /// Loads the model at `path`: a `.gguf` file, a folder with
    /// `config.json`, or a folder holding exactly one `.gguf` file.
    pub fn load(
        path: &Path,
        options: &LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let model = Self::load_any(path, options, progress);
        if let Ok(m) = &model {
            crate::alloc::set_keep_limit(m.pool_bytes());
        }
        // What loading read and repacked through is not needed again.
        crate::alloc::trim();
        model
    }

    fn load_any(
        path: &Path,
        options: &LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?;
        if meta.is_file() {
            return Self::load_gguf(path, options, progress);
        }
        if path.join("config.json").is_file() {
            return if is_mllama(&path.join("config.json"))? {
                Self::load_mllama(path, options, progress)
            } else {
                Self::load_hf(path, options, progress)
            };
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
        let mut gguf = GgufFile::open(path)?;
        let cfg = LlamaConfig::from_gguf(&gguf)?;
        cfg.validate(path)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let template = chat_template(gguf.get_str("tokenizer.chat_template"), &tokenizer)?;
        // The tokenizer keeps what it needs of its arrays (parsed, about
        // 30 MB for a 128K vocabulary).
        for key in crate::tokenizer::GGUF_ARRAYS {
            gguf.remove(key);
        }
        tokenizer_built();
        let gguf = Arc::new(gguf);
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
            decoder: Decoder::Llama(Box::new(llama)),
            tokenizer,
            template,
            info,
            defaults: SamplingParams::default(),
            kv_dtype: options.kv_cache,
            _trim: TrimOnDrop,
        })
    }

    fn load_hf(
        dir: &Path,
        options: &LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let hf = HfLlamaConfig::from_file(&dir.join("config.json"))?;
        let cfg = hf.to_config(dir)?;
        let text = HfText::read(dir, hf.eos_token_id.as_ref())?;
        tokenizer_built();
        let selected = select_device(options.device);
        let dense = dense_options(options, &selected.device);
        let source = WeightSource::safetensors_dir(dir, "model.", dense)?;
        let llama = Llama::load(&source, &cfg, &selected.device, &mut |done, total| {
            progress(LoadProgress { done, total })
        })?;
        let info = hf_info(dir, options, dense, cfg.max_position_embeddings, selected);
        Ok(Self {
            decoder: Decoder::Llama(Box::new(llama)),
            tokenizer: text.tokenizer,
            template: text.template,
            info,
            defaults: text.defaults,
            kv_dtype: options.kv_cache,
            _trim: TrimOnDrop,
        })
    }

    /// A Llama 3.2 Vision folder (`MllamaForConditionalGeneration`).
    fn load_mllama(
        dir: &Path,
        options: &LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let config = MllamaConfig::from_file(&dir.join("config.json"))?;
        let text = HfText::read(dir, None)?;
        tokenizer_built();
        let processor_path = dir.join("preprocessor_config.json");
        let processor = if processor_path.is_file() {
            ImageProcessorConfig::from_file(&processor_path)?
        } else {
            ImageProcessorConfig::default()
        };
        if processor.tile_size != config.vision.image_size
            || processor.max_image_tiles != config.vision.max_num_tiles
        {
            return Err(EngineError::invalid(
                dir,
                "preprocessor_config.json disagrees with the vision config",
            ));
        }
        let selected = select_device(options.device);
        let dense = mllama_dense_options(options);
        let source = WeightSource::safetensors_dir(dir, "language_model.model.", dense)?;
        let info = hf_info(
            dir,
            options,
            dense,
            config.text.max_position_embeddings,
            selected.clone(),
        );
        Self::build_mllama(config, processor, text, &source, selected, info, progress)
            .map(|m| m.with_kv_cache(options.kv_cache))
    }

    /// A Llama 3.2 Vision model with `config`'s shapes and random weights
    /// made in memory at load ([`WeightSource::synthetic`]; nothing is
    /// stored), and the tokenizer of the Hugging Face folder `text_dir`. For
    /// benchmarks and shape checks of checkpoints that cannot be downloaded:
    /// with [`MllamaConfig::llama32_11b_vision`] it has the 11B's every
    /// tensor shape, so it measures the real model's memory and speed.
    pub fn synthetic_mllama(
        config: MllamaConfig,
        text_dir: &Path,
        options: &LoadOptions,
        seed: u64,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        // A vision model: the encoder's buffers want the pool's default.
        crate::alloc::set_keep_limit(crate::alloc::KEEP_LIMIT);
        let text = HfText::read(text_dir, None)?;
        let selected = select_device(options.device);
        let dense = mllama_dense_options(options);
        let label = format!(
            "synthetic mllama ({:.1}B parameters, random weights)",
            config.parameter_count() as f64 / 1e9
        );
        let source = WeightSource::synthetic(&label, "language_model.model.", seed, dense);
        let info = ModelInfo {
            name: label.clone(),
            path: PathBuf::from(&label),
            format: ModelFormat::Synthetic,
            weight_type: weight_type_name(options, dense),
            weight_bytes: 0,
            context_length: config.text.max_position_embeddings,
            device: device_name(&selected.device),
            device_note: selected.fallback_reason.clone(),
        };
        let processor = ImageProcessorConfig {
            tile_size: config.vision.image_size,
            max_image_tiles: config.vision.max_num_tiles,
            ..ImageProcessorConfig::default()
        };
        Self::build_mllama(config, processor, text, &source, selected, info, progress)
            .map(|m| m.with_kv_cache(options.kv_cache))
    }

    /// Makes [`Model::new_cache`] store keys and values as `dtype`.
    fn with_kv_cache(self, dtype: KvDtype) -> Self {
        Self {
            kv_dtype: dtype,
            ..self
        }
    }

    fn build_mllama(
        config: MllamaConfig,
        processor: ImageProcessorConfig,
        text: HfText,
        source: &WeightSource,
        selected: crate::device::SelectedDevice,
        info: ModelInfo,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let image = text.tokenizer.token_to_id("<|image|>");
        if image != Some(config.image_token_index) {
            return Err(EngineError::invalid(
                source.path(),
                format!(
                    "the tokenizer's <|image|> id is {image:?}, but the config says {}",
                    config.image_token_index
                ),
            ));
        }
        let total = config.vision.num_hidden_layers
            + config.vision.num_global_layers
            + config.text.num_layers;
        let mut done = 0;
        let mut on_layer = || {
            done += 1;
            progress(LoadProgress { done, total });
        };
        let vision = VisionModel::load(source, &config, &selected.device, &mut on_layer)?;
        let text_model = TextModel::load(source, &config, &selected.device, &mut on_layer)?;
        Ok(Self {
            decoder: Decoder::Mllama(Box::new(VisionParts {
                config,
                vision,
                text: text_model,
                processor,
                device: selected.device,
            })),
            tokenizer: text.tokenizer,
            template: text.template,
            info,
            defaults: text.defaults,
            kv_dtype: KvDtype::default(),
            _trim: TrimOnDrop,
        })
    }

    /// How many bytes of freed buffers the allocator's pool should keep
    /// for this model's forward passes (see [`crate::alloc`]): a text
    /// model's prompt chunk, with room to spare; the vision model's
    /// encoder takes the pool's whole default.
    fn pool_bytes(&self) -> usize {
        match &self.decoder {
            Decoder::Llama(l) => l.prefill_buffer_bytes(self.prefill_chunk()) * 5 / 4,
            Decoder::Mllama(_) => crate::alloc::KEEP_LIMIT,
        }
    }

    /// Prompt tokens per forward pass while prefilling (see
    /// [`Llama::prefill_chunk`]; vision models take [`PREFILL_CHUNK`]).
    pub fn prefill_chunk(&self) -> usize {
        match &self.decoder {
            Decoder::Llama(l) => l.prefill_chunk(self.info.weight_bytes),
            Decoder::Mllama(_) => PREFILL_CHUNK,
        }
    }

    /// The text network, for Llama text models.
    pub fn llama(&self) -> Option<&Llama> {
        match &self.decoder {
            Decoder::Llama(l) => Some(l),
            Decoder::Mllama(_) => None,
        }
    }

    /// The vision parts, for Llama 3.2 Vision models.
    pub fn vision(&self) -> Option<&VisionParts> {
        match &self.decoder {
            Decoder::Mllama(v) => Some(v),
            Decoder::Llama(_) => None,
        }
    }

    /// The `<|image|>` token id, for vision models.
    pub fn image_token(&self) -> Option<u32> {
        self.vision().map(|v| v.config.image_token_index)
    }

    /// Decodes, preprocesses and encodes an image file's bytes.
    pub fn encode_image(&self, bytes: &[u8]) -> Result<EncodedImage> {
        let v = self.vision_or_error()?;
        let image = crate::mllama::image_processor::decode_image(bytes)?;
        self.encode_processed(&crate::mllama::image_processor::preprocess(
            &image,
            &v.processor,
        ))
    }

    /// Encodes an already preprocessed image.
    pub fn encode_processed(
        &self,
        p: &crate::mllama::image_processor::ProcessedImage,
    ) -> Result<EncodedImage> {
        let v = self.vision_or_error()?;
        let t = v.processor.tile_size;
        let pixels = candle_core::Tensor::from_slice(
            &p.pixel_values,
            (v.processor.max_image_tiles, 3, t, t),
            &v.device,
        )?;
        let states =
            v.vision
                .cross_attention_states(&pixels, p.aspect_ratio_id, &p.aspect_ratio_mask)?;
        // FNV-1a over the pixel values: enough to tell images apart.
        let digest = p
            .pixel_values
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
                (h ^ u64::from(x.to_bits())).wrapping_mul(0x0100_0000_01b3)
            });
        Ok(EncodedImage {
            states,
            num_tiles: p.num_tiles,
            digest,
        })
    }

    /// The cross-attention context for a conversation's images, in order.
    pub fn image_context(&self, images: &[EncodedImage]) -> Result<ImageContext> {
        let v = self.vision_or_error()?;
        let parts: Vec<(candle_core::Tensor, usize)> = images
            .iter()
            .map(|i| (i.states.clone(), i.num_tiles))
            .collect();
        v.text.image_context(&parts, self.kv_dtype)
    }

    fn vision_or_error(&self) -> Result<&VisionParts> {
        self.vision().ok_or_else(|| {
            EngineError::InvalidArgument(format!(
                "{} is a text-only model and cannot look at images; choose a Llama 3.2 Vision model",
                self.info.name
            ))
        })
    }

    /// A fresh KV cache holding up to `max_len` tokens (capped at the
    /// model's trained context).
    pub fn new_cache(&self, max_len: usize) -> KvCache {
        match &self.decoder {
            Decoder::Llama(l) => l.new_cache(max_len, self.kv_dtype),
            Decoder::Mllama(v) => {
                let t = &v.config.text;
                KvCache::new(
                    t.num_layers,
                    max_len.min(t.max_position_embeddings),
                    self.kv_dtype,
                )
            }
        }
    }

    /// Runs text tokens after what `cache` holds (cross-attention layers of
    /// a vision model are skipped).
    pub fn forward_text(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits: Logits,
    ) -> Result<candle_core::Tensor> {
        self.forward(tokens, cache, None, logits)
    }

    /// Runs tokens with optional images: the image context and, per token,
    /// which images it attends to (see [`crate::mllama::masks`]).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        images: Option<(&ImageContext, &[Vec<bool>])>,
        logits: Logits,
    ) -> Result<candle_core::Tensor> {
        // The whole pass runs on a thread of rayon's pool, so each parallel
        // op splits work with the thread that issued it instead of waking
        // pool threads and putting this one to sleep until they finish
        // (a few microseconds per op, over a hundred ops per token).
        rayon::scope(|_| self.forward_in_pool(tokens, cache, images, logits))
    }

    /// Whether [`Model::forward_one_into`] takes the single-token pass for
    /// text (see [`Llama::forward_one_into`]).
    pub fn has_decode_pass(&self) -> bool {
        match &self.decoder {
            Decoder::Llama(l) => l.has_decode_pass(),
            Decoder::Mllama(v) => v.text.has_decode_pass(),
        }
    }

    /// Runs one token (the decoding step) and writes the next token's
    /// logits into `logits`, replacing its contents in the memory it has.
    /// Models whose weights allow it take the single-token pass, which
    /// allocates nothing after the first step ([`Llama::forward_one_into`];
    /// for vision models [`TextModel::forward_one_into`], when the token
    /// sees no image or one image); the rest take [`Model::forward`].
    pub fn forward_one_into(
        &self,
        token: u32,
        cache: &mut KvCache,
        images: Option<(&ImageContext, &[Vec<bool>])>,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        match (&self.decoder, images) {
            (Decoder::Llama(l), None) => rayon::scope(|_| {
                crate::awake::with_workers_awake(|| l.forward_one_into(token, cache, logits))
            }),
            (Decoder::Mllama(v), _) => rayon::scope(|_| {
                crate::awake::with_workers_awake(|| {
                    v.text.forward_one_into(token, cache, images, logits)
                })
            }),
            _ => copy_logits(
                &self.forward(&[token], cache, images, Logits::Last)?,
                logits,
            ),
        }
    }

    fn forward_in_pool(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        images: Option<(&ImageContext, &[Vec<bool>])>,
        logits: Logits,
    ) -> Result<candle_core::Tensor> {
        match &self.decoder {
            Decoder::Llama(l) => {
                if images.is_some() {
                    return Err(EngineError::InvalidArgument(format!(
                        "{} is a text-only model and cannot look at images; choose a Llama 3.2 Vision model",
                        self.info.name
                    )));
                }
                l.forward(tokens, cache, logits)
            }
            Decoder::Mllama(v) => v.text.forward(tokens, cache, images, logits),
        }
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

/// Whether `path` is a Llama 3.2 Vision model (a folder whose
/// `config.json` says `mllama`), without loading it. GGUF files and
/// anything unreadable are not.
pub fn is_vision_model(path: &Path) -> bool {
    let config = path.join("config.json");
    path.is_dir() && config.is_file() && is_mllama(&config).unwrap_or(false)
}

/// How the model at `path` is quantized at load when nobody chose: Q4_K for
/// Llama 3.2 Vision folders, whose bf16 safetensors would otherwise be held
/// in f32 (43 GB for the 11B; the catalogue sizes them at Q4_K); none for
/// anything else (GGUF files keep their own types, text safetensors their
/// dtype).
pub fn default_quantization(path: &Path) -> Option<GgmlDType> {
    is_vision_model(path).then_some(GgmlDType::Q4K)
}

/// Whether `config.json` describes a Llama 3.2 Vision model.
fn is_mllama(config: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(config).map_err(|e| EngineError::io(config, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::invalid(config, format!("config.json: {e}")))?;
    Ok(v.get("model_type").and_then(|t| t.as_str()) == Some("mllama"))
}

/// How dense weights are converted: f32 on the CPU unless asked otherwise.
fn dense_options(options: &LoadOptions, device: &candle_core::Device) -> DenseOptions {
    let dtype = options.dtype.unwrap_or(if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    });
    DenseOptions {
        dtype,
        quantize: options.quantize,
    }
}

/// Vision checkpoints compute in f32 (activations); `--quantize`
/// quantizes every linear layer, vision and text, whose rows fit the block.
fn mllama_dense_options(options: &LoadOptions) -> DenseOptions {
    DenseOptions {
        dtype: DType::F32,
        quantize: options.quantize,
    }
}

fn weight_type_name(options: &LoadOptions, dense: DenseOptions) -> String {
    match options.quantize.filter(|_| dense.quantize.is_some()) {
        Some(q) => format!("{q:?} (quantized at load)"),
        None => format!("{:?}", dense.dtype).to_uppercase(),
    }
}

fn hf_info(
    dir: &Path,
    options: &LoadOptions,
    dense: DenseOptions,
    context_length: usize,
    selected: crate::device::SelectedDevice,
) -> ModelInfo {
    let weight_type = weight_type_name(options, dense);
    ModelInfo {
        name: file_name(dir),
        path: dir.to_path_buf(),
        format: ModelFormat::Safetensors,
        weight_type,
        weight_bytes: dir_safetensors_bytes(dir),
        context_length,
        device: device_name(&selected.device),
        device_note: selected.fallback_reason,
    }
}

/// Tokenizer, chat template and sampling defaults of a Hugging Face folder.
struct HfText {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    defaults: SamplingParams,
}

impl HfText {
    fn read(dir: &Path, config_eos: Option<&OneOrMany>) -> Result<Self> {
        let tok_cfg = TokenizerConfig::read(dir)?;
        let gen_cfg = GenerationConfig::read(dir)?;
        let mut tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        let mut eos_ids: Vec<u32> = Vec::new();
        for ids in [config_eos, gen_cfg.eos_token_id.as_ref()]
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
        let mut defaults = SamplingParams::default();
        gen_cfg.apply(&mut defaults);
        Ok(Self {
            tokenizer,
            template,
            defaults,
        })
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
