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
use crate::qmm::{FusedMatMul, InterleavedMatMul};
use crate::quant::{CompactMatMul, RowFill, quantize_qtensor, quantize_rows};
use crate::sampling::SplitMix64;

/// A linear layer without bias: f32 in, f32 out, whatever the weight type.
#[derive(Debug, Clone)]
pub enum Linear {
    /// candle's matmul (dense, or quantized with candle's kernels).
    Candle(QMatMul),
    /// Lumen's kernel for Q4_1 / Q5_1 (see [`crate::kernels`]).
    Type1(Type1MatMul),
    /// Quantized blocks without candle's repacking (see [`crate::quant`]).
    Compact(CompactMatMul),
    /// Lumen's SIMD kernels (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K; see
    /// [`crate::qmm`]).
    Interleaved(InterleavedMatMul),
}

impl Linear {
    /// A layer for a quantized weight, choosing the kernel: Lumen's
    /// interleaved SIMD kernels where they cover the type, else
    /// [`Linear::packed`]'s choice.
    pub fn quantized(q: Arc<QTensor>) -> Result<Self> {
        match InterleavedMatMul::new(&q) {
            Some(op) => Ok(Self::Interleaved(op)),
            None => Self::packed(q),
        }
    }

    /// A layer for a quantized weight that sees large batches: candle's
    /// repacking kernels (AMX where the CPU has it), or Lumen's own for
    /// Q4_1 / Q5_1, which candle computes without SIMD.
    pub fn packed(q: Arc<QTensor>) -> Result<Self> {
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
            Self::Compact(op) => x.contiguous()?.apply_op1_no_bwd(op)?,
            Self::Interleaved(op) => x.contiguous()?.apply_op1_no_bwd(op)?,
        })
    }
}

/// Linear layers that read the same input (a layer's Q, K and V
/// projections; its gate and up projections), computed in one pass when
/// Lumen's interleaved kernels hold them all: the input is quantized once
/// and one parallel region covers every output, instead of one per layer.
#[derive(Debug, Clone)]
pub enum Parallel {
    /// One matmul over all the layers' weights.
    Fused(FusedMatMul),
    /// The layers one by one.
    Separate(Vec<Linear>),
}

impl Parallel {
    /// Groups `layers` (all with the same input width).
    pub fn new(layers: Vec<Linear>) -> Self {
        let ops: Option<Vec<&InterleavedMatMul>> = layers
            .iter()
            .map(|l| match l {
                Linear::Interleaved(op) => Some(op),
                _ => None,
            })
            .collect();
        match ops.and_then(|ops| FusedMatMul::new(&ops)) {
            Some(fused) => Self::Fused(fused),
            None => Self::Separate(layers),
        }
    }

    /// `silu(x · Gᵀ) · (x · Uᵀ)` for a gate and an up projection `[G, U]`
    /// (a Llama MLP's first half). Fused weights compute it without holding
    /// either product.
    pub fn swiglu(&self, x: &Tensor) -> Result<Tensor> {
        if let Self::Fused(op) = self
            && let Some(op) = op.swiglu()
        {
            return Ok(x.contiguous()?.apply_op1_no_bwd(&op)?);
        }
        let [gate, up] = <[Tensor; 2]>::try_from(self.forward(x)?)
            .map_err(|_| EngineError::InvalidArgument("two projections expected".into()))?;
        crate::swiglu::swiglu(&gate, &up)
    }

    /// Each layer's `x · Wᵀ`, in order.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let op = match self {
            Self::Fused(op) => op,
            Self::Separate(layers) => return layers.iter().map(|l| l.forward(x)).collect(),
        };
        let out = x.contiguous()?.apply_op1_no_bwd(op)?;
        let last = out.rank() - 1;
        let mut at = 0;
        op.widths()
            .map(|n| {
                let part = out.narrow(last, at, n)?;
                at += n;
                Ok(part)
            })
            .collect()
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
    /// Rows in Lumen's interleaved layout, shared with the output layer's
    /// weight when the two are tied.
    Interleaved(InterleavedMatMul),
}

impl EmbeddingTable {
    /// Rows for `ids` (a 1-D u32 tensor), as f32 `(len, hidden)`.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Quantized(q) => q.embedding(ids)?,
            Self::Dense(t) => t.index_select(ids, 0)?.to_dtype(DType::F32)?,
            Self::Interleaved(op) => {
                let (vocab, hidden) = op.dims();
                let ids = ids.to_vec1::<u32>()?;
                let mut rows = Vec::with_capacity(ids.len() * hidden);
                for id in &ids {
                    let row = op.row(*id as usize).ok_or_else(|| {
                        EngineError::InvalidArgument(format!(
                            "token id {id} is outside the vocabulary of {vocab}"
                        ))
                    })?;
                    rows.extend(row);
                }
                Tensor::from_vec(rows, (ids.len(), hidden), &Device::Cpu)?
            }
        })
    }

    /// The table and the same weights as the output projection (tied
    /// embeddings), sharing storage: a table in the interleaved layout
    /// (which [`WeightSource::embedding`] gives wherever Lumen's kernels
    /// cover the type) serves both; `dequantize` gives the output layer an
    /// f32 copy instead (see [`WeightSource::Gguf`]).
    pub fn tied(self, dequantize: bool) -> Result<(Self, Linear)> {
        Ok(match self {
            Self::Quantized(q) if dequantize => {
                let output = Linear::Candle(QMatMul::Tensor(q.dequantize(&q.device())?));
                (Self::Quantized(q), output)
            }
            // Not a type the interleaved kernels take (the source would
            // have repacked it, see `WeightSource::embedding`).
            Self::Quantized(q) => {
                let output = Linear::packed(q.clone())?;
                (Self::Quantized(q), output)
            }
            Self::Dense(t) => {
                let output = Linear::Candle(QMatMul::Tensor(t.clone()));
                (Self::Dense(t), output)
            }
            Self::Interleaved(op) => (Self::Interleaved(op.clone()), Linear::Interleaved(op)),
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
    /// Random weights made on request, of whatever shape the model asks
    /// for: for benchmarks and shape checks of models too large to ship
    /// (see [`WeightSource::synthetic`]).
    Synthetic {
        /// Shown where a path would be.
        label: PathBuf,
        /// Prefix of the text model's tensors.
        prefix: String,
        /// Seed of the generator.
        seed: u64,
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

    /// Random weights: norm weights are 1, biases 0, one-element gates
    /// 0.5 (tanh ≈ 0.46, so gated paths contribute), everything else
    /// uniform with standard deviation 0.02 (transformers' initializer
    /// range), rounded to bf16 like a real checkpoint. Each row comes from
    /// its own seeded generator, so a tensor is the same however it is
    /// chunked and whether or not it is quantized.
    pub fn synthetic(label: &str, prefix: &str, seed: u64, options: DenseOptions) -> Self {
        Self::Synthetic {
            label: PathBuf::from(label),
            prefix: prefix.to_string(),
            seed,
            options,
        }
    }

    /// The file or folder the weights come from.
    pub fn path(&self) -> &Path {
        match self {
            Self::Gguf { file, .. } => file.path(),
            Self::Safetensors { path, .. } => path,
            Self::Synthetic { label, .. } => label,
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
            Self::Synthetic { .. } => true,
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
                if let Some(op) = self.interleaved(name, shape, device)? {
                    return Ok(Linear::Interleaved(op));
                }
                let q = self.qtensor(name, &[shape.0, shape.1], device)?;
                if *dequantize {
                    Ok(Linear::Candle(QMatMul::Tensor(q.dequantize(device)?)))
                } else {
                    Linear::quantized(Arc::new(q))
                }
            }
            Self::Safetensors { prefix, .. } | Self::Synthetic { prefix, .. } => {
                self.linear_by_key(&name.hf(prefix), shape, device)
            }
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

    /// A linear layer's weight from a dense (safetensors or synthetic)
    /// source by its full name, quantized at load when the options ask for
    /// it and its rows fit the quantization block (otherwise kept dense).
    /// On the CPU a quantized layer computes from its compact blocks with
    /// Lumen's kernels (candle's for types they lack), never widened: candle's
    /// repacking kernels took two to three times the memory, and without
    /// AMX were slower (the 11B's cross-attention keys and values of a
    /// 4-tile image: 2.3–2.7 s with them, 1.4 s without).
    pub fn linear_by_key(
        &self,
        key: &str,
        shape: (usize, usize),
        device: &Device,
    ) -> Result<Linear> {
        let options = self.dense_options(key)?;
        let (rows, cols) = shape;
        match options.quantize {
            Some(q) if cols.is_multiple_of(q.block_size()) && device.is_cpu() => {
                let fill = self.row_fill(key, &[rows, cols])?;
                if InterleavedMatMul::computes(q, cols) || q == GgmlDType::Q5_1 {
                    Linear::quantized(Arc::new(quantize_qtensor(q, rows, cols, &*fill)?))
                } else {
                    let blocks = quantize_rows(q, rows, cols, &*fill)?;
                    Ok(Linear::Compact(CompactMatMul::new(blocks, rows, cols)?))
                }
            }
            Some(q) if cols.is_multiple_of(q.block_size()) => {
                let t = self.dense_by_key(key, &[rows, cols], device)?;
                Linear::packed(Arc::new(QTensor::quantize(&t, q)?))
            }
            _ => {
                let t = self.dense_by_key(key, &[rows, cols], device)?;
                Ok(Linear::Candle(QMatMul::Tensor(t.to_dtype(options.dtype)?)))
            }
        }
    }

    /// Whether dense weights are quantized at load (never for GGUF, whose
    /// weights come quantized or not as stored).
    pub fn quantizes(&self) -> bool {
        match self {
            Self::Safetensors { options, .. } | Self::Synthetic { options, .. } => {
                options.quantize.is_some()
            }
            Self::Gguf { .. } => false,
        }
    }

    fn dense_options(&self, key: &str) -> Result<DenseOptions> {
        match self {
            Self::Safetensors { options, .. } | Self::Synthetic { options, .. } => Ok(*options),
            Self::Gguf { .. } => Err(EngineError::bad_tensor(
                self.path(),
                key,
                "GGUF files hold no such tensor",
            )),
        }
    }

    /// The named tensor of a safetensors source, checked to be `shape`.
    fn checked_view<'a>(
        &self,
        files: &'a MmapedSafetensors,
        key: &str,
        shape: &[usize],
    ) -> Result<safetensors::tensor::TensorView<'a>> {
        let view = files
            .get(key)
            .map_err(|_| EngineError::bad_tensor(self.path(), key, "missing"))?;
        if view.shape() != shape {
            return Err(EngineError::bad_tensor(
                self.path(),
                key,
                format!("shape {:?}, expected {shape:?}", view.shape()),
            ));
        }
        Ok(view)
    }

    /// Reads rows of a dense source's matrix as f32, for chunked
    /// quantization: from the memory map (no copy of the whole tensor) or
    /// from the generator.
    fn row_fill(&self, key: &str, shape: &[usize]) -> Result<Box<RowFill<'_>>> {
        let cols: usize = shape.iter().skip(1).product();
        match self {
            Self::Safetensors { files, .. } => {
                let view = self.checked_view(files, key, shape)?;
                let width = match view.dtype() {
                    safetensors::Dtype::F32 => 4,
                    safetensors::Dtype::F16 | safetensors::Dtype::BF16 => 2,
                    other => {
                        return Err(EngineError::bad_tensor(
                            self.path(),
                            key,
                            format!("dtype {other:?} is not a float type"),
                        ));
                    }
                };
                let dtype = view.dtype();
                let data = view.data();
                Ok(Box::new(
                    move |rows: std::ops::Range<usize>, out: &mut [f32]| {
                        let bytes = &data[rows.start * cols * width..rows.end * cols * width];
                        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(width)) {
                            *o = match dtype {
                                safetensors::Dtype::F32 => {
                                    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
                                }
                                safetensors::Dtype::F16 => {
                                    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
                                }
                                _ => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                            };
                        }
                        Ok(())
                    },
                ))
            }
            Self::Synthetic { seed, .. } => {
                let init = SyntheticInit::for_tensor(key, shape);
                let seed = *seed ^ fnv1a(key);
                Ok(Box::new(
                    move |rows: std::ops::Range<usize>, out: &mut [f32]| {
                        for (r, row) in rows.zip(out.chunks_exact_mut(cols)) {
                            init.fill_row(seed, r, row);
                            for x in row.iter_mut() {
                                *x = half::bf16::from_f32(*x).to_f32();
                            }
                        }
                        Ok(())
                    },
                ))
            }
            Self::Gguf { .. } => Err(EngineError::bad_tensor(
                self.path(),
                key,
                "GGUF files hold no such tensor",
            )),
        }
    }

    /// A 1-D norm weight, always f32 (norms are computed in f32).
    pub fn vector(&self, name: TensorName, len: usize, device: &Device) -> Result<Tensor> {
        let t = match self {
            Self::Gguf { .. } => self.qtensor(name, &[len], device)?.dequantize(device)?,
            Self::Safetensors { .. } | Self::Synthetic { .. } => {
                self.dense(name, &[len], device)?
            }
        };
        Ok(t.to_dtype(DType::F32)?)
    }

    /// The embedding table, kept quantized for GGUF and when dense weights
    /// are quantized at load — in the interleaved layout where Lumen's
    /// kernels cover its type (so that the decoding pass reads its rows
    /// from slices, tied to the output layer or not), as it is otherwise;
    /// rows are dequantized on lookup, so there is no f32 copy of the
    /// table — and dense otherwise.
    pub fn embedding(
        &self,
        name: TensorName,
        shape: (usize, usize),
        device: &Device,
    ) -> Result<EmbeddingTable> {
        match self {
            Self::Gguf { .. } => match self.interleaved(name, shape, device)? {
                Some(op) => Ok(EmbeddingTable::Interleaved(op)),
                None => Ok(EmbeddingTable::Quantized(Arc::new(self.qtensor(
                    name,
                    &[shape.0, shape.1],
                    device,
                )?))),
            },
            Self::Safetensors {
                options, prefix, ..
            }
            | Self::Synthetic {
                options, prefix, ..
            } => {
                match options.quantize {
                    // Quantized rows like a GGUF table (no f32 copy: 2 GB for
                    // the 11B vision model).
                    Some(q) if shape.1.is_multiple_of(q.block_size()) && device.is_cpu() => {
                        let key = name.hf(prefix);
                        let fill = self.row_fill(&key, &[shape.0, shape.1])?;
                        let table = quantize_qtensor(q, shape.0, shape.1, &*fill)?;
                        Ok(match InterleavedMatMul::new(&table) {
                            Some(op) => EmbeddingTable::Interleaved(op),
                            None => EmbeddingTable::Quantized(Arc::new(table)),
                        })
                    }
                    _ => {
                        let t = self.dense(name, &[shape.0, shape.1], device)?;
                        Ok(EmbeddingTable::Dense(t.to_dtype(options.dtype)?))
                    }
                }
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

    /// A GGUF tensor's entry and type, checked against the shape the model
    /// expects.
    fn gguf_tensor<'a>(
        g: &'a GgufFile,
        key: &str,
        shape: &[usize],
    ) -> Result<(&'a crate::gguf::TensorInfo, GgmlDType)> {
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
        Ok((info, g.dtype_of(info)?))
    }

    /// A GGUF weight repacked for Lumen's interleaved kernels straight from
    /// the file's mapping, its pages dropped as the repacking reads them
    /// (no quantized copy in between, so loading never holds a large
    /// tensor twice); `None` when those kernels do not take it (other
    /// types, devices, or f32 copies asked for), and the caller reads a
    /// [`QTensor`] instead.
    fn interleaved(
        &self,
        name: TensorName,
        shape: (usize, usize),
        device: &Device,
    ) -> Result<Option<InterleavedMatMul>> {
        let Self::Gguf {
            file: g,
            dequantize: false,
        } = self
        else {
            return Ok(None);
        };
        let key = name.gguf();
        let (info, dtype) = Self::gguf_tensor(g, &key, &[shape.0, shape.1])?;
        if !device.is_cpu() || !InterleavedMatMul::computes(dtype, shape.1) {
            return Ok(None);
        }
        let op = InterleavedMatMul::from_ggml(
            dtype,
            shape.0,
            shape.1,
            g.tensor_bytes(info),
            &mut |read| g.release_start(info, read),
        );
        match op {
            Some(op) => Ok(Some(op)),
            None => Err(EngineError::bad_tensor(
                g.path(),
                &key,
                format!(
                    "{} bytes are not a {dtype:?} matrix of {shape:?}",
                    info.size
                ),
            )),
        }
    }

    fn qtensor_by_key(&self, key: &str, shape: &[usize], device: &Device) -> Result<QTensor> {
        let Self::Gguf { file: g, .. } = self else {
            unreachable!("qtensor is only called on GGUF sources")
        };
        let (info, dtype) = Self::gguf_tensor(g, key, shape)?;
        let bytes = g.tensor_bytes(info);
        // candle reinterprets the bytes as blocks: they must be aligned for
        // the block type (GGUF aligns data to ≥ 8 bytes, checked at parse).
        if bytes.as_ptr().align_offset(8) != 0 {
            return Err(EngineError::bad_tensor(g.path(), key, "data is misaligned"));
        }
        let q = qtensor_from_ggml(dtype, bytes, info.dims.clone(), device)?;
        g.release(info);
        Ok(q)
    }

    fn dense(&self, name: TensorName, shape: &[usize], device: &Device) -> Result<Tensor> {
        let (Self::Safetensors { prefix, .. } | Self::Synthetic { prefix, .. }) = self else {
            unreachable!("dense is only called on dense sources")
        };
        self.dense_by_key(&name.hf(prefix), shape, device)
    }

    /// A float tensor of a safetensors source by its full name, checked to
    /// be `shape` (for models beyond the Llama text stack, e.g. the vision
    /// encoder). In its stored dtype.
    pub fn dense_by_key(&self, key: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        if let Self::Synthetic { .. } = self {
            // bf16, as Meta's checkpoints store their weights.
            let rows = shape.first().copied().unwrap_or(1);
            let cols = shape.iter().skip(1).product::<usize>();
            let mut values = vec![0f32; rows * cols];
            self.row_fill(key, &[rows, cols])?(0..rows, &mut values)?;
            let values: Vec<half::bf16> = values.into_iter().map(half::bf16::from_f32).collect();
            return Ok(Tensor::from_vec(values, shape, device)?);
        }
        let Self::Safetensors { files, .. } = self else {
            return Err(EngineError::bad_tensor(
                self.path(),
                key,
                "GGUF files hold no such tensor",
            ));
        };
        self.checked_view(files, key, shape)?;
        let key = key.to_string();
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

/// How [`WeightSource::Synthetic`] initializes a tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SyntheticInit {
    Constant(f32),
    /// Uniform in `[-a, a]`.
    Uniform(f32),
}

impl SyntheticInit {
    fn for_tensor(key: &str, shape: &[usize]) -> Self {
        let rank1 = shape.len() == 1 || shape.iter().skip(1).product::<usize>() == 1;
        if shape.iter().product::<usize>() == 1 {
            Self::Constant(0.5) // a tanh gate
        } else if key.ends_with(".bias") {
            Self::Constant(0.0)
        } else if rank1 && key.contains("norm") {
            Self::Constant(1.0)
        } else {
            Self::Uniform(0.02 * 3f32.sqrt())
        }
    }

    fn fill_row(self, seed: u64, row: usize, out: &mut [f32]) {
        match self {
            Self::Constant(c) => out.fill(c),
            Self::Uniform(a) => {
                let mut rng = SplitMix64(seed ^ (row as u64).wrapping_mul(0xA24B_AED4_963E_E407));
                for o in out {
                    // 24 random bits → [-a, a).
                    *o = ((rng.next_u64() >> 40) as f32 / (1u32 << 23) as f32 - 1.0) * a;
                }
            }
        }
    }
}

/// FNV-1a, to give every tensor its own random stream.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In-situ quantization reads rows straight from the memory map, for
    /// every float dtype a checkpoint may hold, and gets the same blocks as
    /// quantizing the whole tensor read the usual way.
    #[test]
    fn quantizes_rows_from_the_memory_map() {
        let dev = Device::Cpu;
        let (rows, cols) = (70, 64);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1013) as f32 / 500.0 - 1.0)
            .collect();
        let base = Tensor::from_vec(values, (rows, cols), &dev).expect("tensor");
        let dir = tempfile::tempdir().expect("tmp");
        let tensors: HashMap<String, Tensor> = [DType::F32, DType::F16, DType::BF16]
            .into_iter()
            .map(|dt| (format!("w.{dt:?}"), base.to_dtype(dt).expect("cast")))
            .collect();
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors"))
            .expect("save");
        let options = DenseOptions {
            dtype: DType::F32,
            quantize: Some(GgmlDType::Q8_0),
        };
        let source = WeightSource::safetensors_dir(dir.path(), "", options).expect("open");
        let x = base.narrow(0, 0, 3).expect("x");
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let key = format!("w.{dt:?}");
            let dense = source
                .dense_by_key(&key, &[rows, cols], &dev)
                .and_then(|t| Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?))
                .expect("dense");
            let fill = |r: std::ops::Range<usize>, out: &mut [f32]| {
                out.copy_from_slice(&dense[r.start * cols..r.end * cols]);
                Ok(())
            };
            let want = InterleavedMatMul::new(
                &quantize_qtensor(GgmlDType::Q8_0, rows, cols, &fill).expect("quantize"),
            )
            .expect("op");
            let got = source
                .linear_by_key(&key, (rows, cols), &dev)
                .expect("linear");
            assert!(matches!(got, Linear::Interleaved(_)), "{dt:?}");
            let a = got.forward(&x).expect("forward");
            let b = x.apply_op1_no_bwd(&want).expect("forward");
            let diff = (a - b)
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                .expect("diff");
            assert_eq!(diff, 0.0, "{dt:?}");
        }
        // The wrong shape is refused by name.
        let err = source
            .linear_by_key("w.F32", (cols, rows), &dev)
            .expect_err("shape");
        assert!(err.to_string().contains("w.F32"), "{err}");
    }

    #[test]
    fn synthetic_init_by_role() {
        assert_eq!(
            SyntheticInit::for_tensor("layers.0.cross_attn_attn_gate", &[1]),
            SyntheticInit::Constant(0.5)
        );
        assert_eq!(
            SyntheticInit::for_tensor("mlp.fc1.bias", &[128]),
            SyntheticInit::Constant(0.0)
        );
        assert_eq!(
            SyntheticInit::for_tensor("layers.0.input_layernorm.weight", &[64]),
            SyntheticInit::Constant(1.0)
        );
        assert!(matches!(
            SyntheticInit::for_tensor("class_embedding", &[64]),
            SyntheticInit::Uniform(_)
        ));
        let mut row = vec![0f32; 10_000];
        SyntheticInit::Uniform(0.02 * 3f32.sqrt()).fill_row(1, 0, &mut row);
        let var = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
        assert!((var.sqrt() - 0.02).abs() < 0.001, "std {}", var.sqrt());
    }
}
