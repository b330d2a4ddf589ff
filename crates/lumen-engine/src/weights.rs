//! Where weights come from: a GGUF file or a folder of safetensors.
//!
//! The model asks for tensors by [`TensorName`]; each source maps that to its
//! own naming scheme (`blk.0.attn_q.weight` in GGUF,
//! `model.layers.0.self_attn.q_proj.weight` in Hugging Face checkpoints) and
//! checks the shape before anything is computed with it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, ggml_file::qtensor_from_ggml};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kernels::Type1MatMul;

/// A linear layer without bias: f32 in, f32 out, whatever the weight type.
#[derive(Debug, Clone)]
pub enum Linear {
    /// candle's matmul (dense, or quantized with candle's kernels).
    Candle(QMatMul),
    /// Lumen's kernel for Q4_1 / Q5_1 (see [`crate::kernels`]).
    Type1(Type1MatMul),
}

impl Linear {
    /// A layer for a quantized weight, choosing the kernel.
    pub fn quantized(q: Arc<QTensor>) -> Result<Self> {
        Ok(match Type1MatMul::new(q.clone()) {
            Some(op) => Self::Type1(op),
            None => Self::Candle(QMatMul::from_arc(q)?),
        })
    }

    /// `x · Wᵀ`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        use candle_core::Module;
        Ok(match self {
            Self::Candle(m @ QMatMul::Tensor(w)) if w.dtype() != DType::F32 => {
                m.forward(&x.to_dtype(w.dtype())?)?.to_dtype(DType::F32)?
            }
            // Quantized kernels need contiguous input (a no-op when it is).
            Self::Candle(m @ QMatMul::QTensor(_)) => m.forward(&x.contiguous()?)?,
            Self::Candle(m) => m.forward(x)?,
            Self::Type1(op) => x.contiguous()?.apply_op1_no_bwd(op)?,
        })
    }
}

/// A tensor of a Llama text model, independent of file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorName {
    /// `(vocab, hidden)`
    TokenEmbedding,
    /// `(hidden)`
    OutputNorm,
    /// `(vocab, hidden)`; absent when tied to the embedding.
    Output,
    /// `(hidden)`
    AttnNorm(usize),
    /// `(heads * head_dim, hidden)`
    AttnQ(usize),
    /// `(kv_heads * head_dim, hidden)`
    AttnK(usize),
    /// `(kv_heads * head_dim, hidden)`
    AttnV(usize),
    /// `(hidden, heads * head_dim)`
    AttnOutput(usize),
    /// `(hidden)`
    FfnNorm(usize),
    /// `(intermediate, hidden)`
    FfnGate(usize),
    /// `(intermediate, hidden)`
    FfnUp(usize),
    /// `(hidden, intermediate)`
    FfnDown(usize),
}

impl TensorName {
    /// The name llama.cpp gives this tensor.
    pub fn gguf(self) -> String {
        match self {
            Self::TokenEmbedding => "token_embd.weight".into(),
            Self::OutputNorm => "output_norm.weight".into(),
            Self::Output => "output.weight".into(),
            Self::AttnNorm(i) => format!("blk.{i}.attn_norm.weight"),
            Self::AttnQ(i) => format!("blk.{i}.attn_q.weight"),
            Self::AttnK(i) => format!("blk.{i}.attn_k.weight"),
            Self::AttnV(i) => format!("blk.{i}.attn_v.weight"),
            Self::AttnOutput(i) => format!("blk.{i}.attn_output.weight"),
            Self::FfnNorm(i) => format!("blk.{i}.ffn_norm.weight"),
            Self::FfnGate(i) => format!("blk.{i}.ffn_gate.weight"),
            Self::FfnUp(i) => format!("blk.{i}.ffn_up.weight"),
            Self::FfnDown(i) => format!("blk.{i}.ffn_down.weight"),
        }
    }

    /// The name transformers gives this tensor, under `prefix` (`model.` for
    /// `LlamaForCausalLM`).
    pub fn hf(self, prefix: &str) -> String {
        let layer = |i: usize, rest: &str| format!("{prefix}layers.{i}.{rest}.weight");
        match self {
            Self::TokenEmbedding => format!("{prefix}embed_tokens.weight"),
            Self::OutputNorm => format!("{prefix}norm.weight"),
            Self::Output => "lm_head.weight".into(),
            Self::AttnNorm(i) => layer(i, "input_layernorm"),
            Self::AttnQ(i) => layer(i, "self_attn.q_proj"),
            Self::AttnK(i) => layer(i, "self_attn.k_proj"),
            Self::AttnV(i) => layer(i, "self_attn.v_proj"),
            Self::AttnOutput(i) => layer(i, "self_attn.o_proj"),
            Self::FfnNorm(i) => layer(i, "post_attention_layernorm"),
            Self::FfnGate(i) => layer(i, "mlp.gate_proj"),
            Self::FfnUp(i) => layer(i, "mlp.up_proj"),
            Self::FfnDown(i) => layer(i, "mlp.down_proj"),
        }
    }
}

/// How dense (safetensors) weights are turned into compute weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseOptions {
    /// The dtype matmuls run in.
    pub dtype: DType,
    /// Quantize linear layers at load time (in situ), e.g. to Q8_0 or Q4_K.
    pub quantize: Option<GgmlDType>,
}

/// The token embedding table.
#[derive(Debug, Clone)]
pub enum EmbeddingTable {
    /// Quantized rows (GGUF), dequantized on lookup.
    Quantized(Arc<QTensor>),
    /// A dense `(vocab, hidden)` matrix.
    Dense(Tensor),
}

impl EmbeddingTable {
    /// Rows for `ids` (a 1-D u32 tensor), as f32 `(len, hidden)`.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Quantized(q) => q.embedding(ids)?,
            Self::Dense(t) => t.index_select(ids, 0)?.to_dtype(DType::F32)?,
        })
    }

    /// The same table as an output projection (tied embeddings). The dense
    /// case shares storage with the table; `dequantize` gives an f32 copy of
    /// a quantized one (see [`WeightSource::Gguf`]).
    pub fn to_linear(&self, dequantize: bool) -> Result<Linear> {
        Ok(match self {
            Self::Quantized(q) if dequantize => {
                Linear::Candle(QMatMul::Tensor(q.dequantize(&q.device())?))
            }
            Self::Quantized(q) => Linear::quantized(q.clone())?,
            Self::Dense(t) => Linear::Candle(QMatMul::Tensor(t.clone())),
        })
    }
}

/// A source of model weights.
pub enum WeightSource {
    /// A GGUF file.
    Gguf {
        /// The parsed file.
        file: Arc<GgufFile>,
        /// Use f32 copies of the weights instead of quantized matmuls.
        dequantize: bool,
    },
    /// One or more safetensors files.
    Safetensors {
        /// The memory-mapped files.
        files: MmapedSafetensors,
        /// The folder (for error messages).
        path: PathBuf,
        /// Prefix of the text model's tensors (`model.`).
        prefix: String,
        /// Conversion settings.
        options: DenseOptions,
    },
}

impl WeightSource {
    /// Opens the safetensors of a Hugging Face model folder: either
    /// `model.safetensors` or the shards listed in `model.safetensors.index.json`.
    pub fn safetensors_dir(dir: &Path, prefix: &str, options: DenseOptions) -> Result<Self> {
        let files = safetensors_files(dir)?;
        for f in &files {
            // MmapedSafetensors reports errors without the file name.
            std::fs::metadata(f).map_err(|e| EngineError::io(f, e))?;
        }
        // SAFETY (inside candle): read-only maps; see `GgufFile::open`.
        #[allow(unsafe_code)]
        let mapped = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| EngineError::invalid(dir, format!("safetensors: {e}")))?;
        Ok(Self::Safetensors {
            files: mapped,
            path: dir.to_path_buf(),
            prefix: prefix.to_string(),
            options,
        })
    }

    /// The file or folder the weights come from.
    pub fn path(&self) -> &Path {
        match self {
            Self::Gguf { file, .. } => file.path(),
            Self::Safetensors { path, .. } => path,
        }
    }

    /// Whether quantized weights are computed as f32 copies.
    pub fn dequantizes(&self) -> bool {
        matches!(
            self,
            Self::Gguf {
                dequantize: true,
                ..
            }
        )
    }

    /// Whether the source has this tensor.
    pub fn contains(&self, name: TensorName) -> bool {
        match self {
            Self::Gguf { file, .. } => file.tensor(&name.gguf()).is_some(),
            Self::Safetensors { files, prefix, .. } => files.get(&name.hf(prefix)).is_ok(),
        }
    }

    /// A weight matrix for a linear layer, checked to be `shape`.
    pub fn linear(
        &self,
        name: TensorName,
        shape: (usize, usize),
        device: &Device,
    ) -> Result<Linear> {
        match self {
            Self::Gguf { dequantize, .. } => {
                let q = self.qtensor(name, &[shape.0, shape.1], device)?;
                if *dequantize {
                    Ok(Linear::Candle(QMatMul::Tensor(q.dequantize(device)?)))
                } else {
                    Linear::quantized(Arc::new(q))
                }
            }
            Self::Safetensors { prefix, .. } => self.linear_by_key(&name.hf(prefix), shape, device),
        }
    }

    /// `tanh` of a one-element gate parameter (mllama's gated layers).
    pub fn tanh_gate(&self, key: &str, device: &Device) -> Result<f64> {
        let g = self
            .dense_by_key(key, &[1], device)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?[0];
        Ok(f64::from(g).tanh())
    }

    /// A linear layer's weight from a safetensors source by its full name,
    /// quantized at load when the options ask for it and its rows fit the
    /// quantization block (otherwise kept dense).
    pub fn linear_by_key(
        &self,
        key: &str,
        shape: (usize, usize),
        device: &Device,
    ) -> Result<Linear> {
        let Self::Safetensors { options, .. } = self else {
            return Err(EngineError::bad_tensor(
                self.path(),
                key,
                "GGUF files hold no such tensor",
            ));
        };
        let t = self.dense_by_key(key, &[shape.0, shape.1], device)?;
        match options.quantize {
            Some(q) if shape.1.is_multiple_of(q.block_size()) => {
                Linear::quantized(Arc::new(QTensor::quantize(&t, q)?))
            }
            _ => Ok(Linear::Candle(QMatMul::Tensor(t.to_dtype(options.dtype)?))),
        }
    }

    /// A 1-D norm weight, always f32 (norms are computed in f32).
    pub fn vector(&self, name: TensorName, len: usize, device: &Device) -> Result<Tensor> {
        let t = match self {
            Self::Gguf { .. } => self.qtensor(name, &[len], device)?.dequantize(device)?,
            Self::Safetensors { .. } => self.dense(name, &[len], device)?,
        };
        Ok(t.to_dtype(DType::F32)?)
    }

    /// The embedding table, kept quantized for GGUF (rows are dequantized on
    /// lookup, so there is no f32 copy of the table), dense otherwise.
    pub fn embedding(
        &self,
        name: TensorName,
        shape: (usize, usize),
        device: &Device,
    ) -> Result<EmbeddingTable> {
        match self {
            Self::Gguf { .. } => Ok(EmbeddingTable::Quantized(Arc::new(self.qtensor(
                name,
                &[shape.0, shape.1],
                device,
            )?))),
            Self::Safetensors { options, .. } => {
                let t = self.dense(name, &[shape.0, shape.1], device)?;
                Ok(EmbeddingTable::Dense(t.to_dtype(options.dtype)?))
            }
        }
    }

    /// llama.cpp's `rope_freqs.weight` (Llama 3 RoPE scaling as per-frequency
    /// divisors), when the source is a GGUF file that has it.
    pub fn rope_freqs(&self, len: usize) -> Result<Option<Vec<f32>>> {
        match self {
            Self::Gguf { file, .. } if file.tensor("rope_freqs.weight").is_some() => {
                let q = self.qtensor_by_key("rope_freqs.weight", &[len], &Device::Cpu)?;
                Ok(Some(
                    q.dequantize(&Device::Cpu)?
                        .to_dtype(DType::F32)?
                        .to_vec1()?,
                ))
            }
            _ => Ok(None),
        }
    }

    fn qtensor(&self, name: TensorName, shape: &[usize], device: &Device) -> Result<QTensor> {
        self.qtensor_by_key(&name.gguf(), shape, device)
    }

    fn qtensor_by_key(&self, key: &str, shape: &[usize], device: &Device) -> Result<QTensor> {
        let Self::Gguf { file: g, .. } = self else {
            unreachable!("qtensor is only called on GGUF sources")
        };
        let info = g
            .tensor(key)
            .ok_or_else(|| EngineError::bad_tensor(g.path(), key, "missing"))?;
        if info.dims != shape {
            return Err(EngineError::bad_tensor(
                g.path(),
                key,
                format!("shape {:?}, expected {:?}", info.dims, shape),
            ));
        }
        let dtype = g.dtype_of(info)?;
        let bytes = g.tensor_bytes(info);
        // candle reinterprets the bytes as blocks: they must be aligned for
        // the block type (GGUF aligns data to ≥ 8 bytes, checked at parse).
        if bytes.as_ptr().align_offset(8) != 0 {
            return Err(EngineError::bad_tensor(g.path(), key, "data is misaligned"));
        }
        Ok(qtensor_from_ggml(dtype, bytes, info.dims.clone(), device)?)
    }

    fn dense(&self, name: TensorName, shape: &[usize], device: &Device) -> Result<Tensor> {
        let Self::Safetensors { prefix, .. } = self else {
            unreachable!("dense is only called on safetensors sources")
        };
        self.dense_by_key(&name.hf(prefix), shape, device)
    }

    /// A float tensor of a safetensors source by its full name, checked to
    /// be `shape` (for models beyond the Llama text stack, e.g. the vision
    /// encoder). In its stored dtype.
    pub fn dense_by_key(&self, key: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let Self::Safetensors { files, .. } = self else {
            return Err(EngineError::bad_tensor(
                self.path(),
                key,
                "GGUF files hold no such tensor",
            ));
        };
        let key = key.to_string();
        let view = files
            .get(&key)
            .map_err(|_| EngineError::bad_tensor(self.path(), &key, "missing"))?;
        if view.shape() != shape {
            return Err(EngineError::bad_tensor(
                self.path(),
                &key,
                format!("shape {:?}, expected {:?}", view.shape(), shape),
            ));
        }
        let t = files
            .load(&key, device)
            .map_err(|e| EngineError::bad_tensor(self.path(), &key, e.to_string()))?;
        match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 => Ok(t),
            other => Err(EngineError::bad_tensor(
                self.path(),
                &key,
                format!("dtype {other:?} is not a float type"),
            )),
        }
    }
}

/// The safetensors files of a model folder.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index_path).map_err(|e| EngineError::io(&index_path, e))?;
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let index: Index = serde_json::from_str(&text)
        .map_err(|e| EngineError::invalid(&index_path, format!("bad index: {e}")))?;
    let mut names: Vec<&String> = index.weight_map.values().collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            // Shard names come from a downloaded file: keep them inside the folder.
            let p = Path::new(n);
            if p.components().count() != 1 || !n.ends_with(".safetensors") {
                return Err(EngineError::invalid(
                    &index_path,
                    format!("bad shard name `{n}`"),
                ));
            }
            Ok(dir.join(p))
        })
        .collect()
}
