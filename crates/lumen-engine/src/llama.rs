//! The Llama 3.x text model (also Llama 2, SmolLM and other Llama-architecture
//! checkpoints), for GGUF and Hugging Face weights alike.
//!
//! Reference: transformers' `models/llama/modeling_llama.py`. candle ships two
//! Llama implementations (`llama.rs` for safetensors, `quantized_llama.rs` for
//! GGUF), but the GGUF one ignores `rope_freqs.weight` (so Llama 3.1+ GGUFs
//! come out subtly wrong) and neither can rewind its KV cache to reuse a shared
//! prefix across turns. This one does both, with one code path for both
//! formats: every linear layer is a [`Linear`], which holds a quantized
//! matrix (computed by Lumen's own kernels where it has them, see
//! [`crate::qmm`], else by candle's) or a dense one.
//!
//! Activations, norms and softmax are f32; the KV cache is f16 on the CPU
//! by default ([`KvDtype`]), widened on the fly by the attention kernels.

use candle_core::{DType, Device, Tensor};

use crate::config::{LlamaConfig, RopeScaling};
use crate::decode_attention::DecodeAttention;
use crate::error::{EngineError, Result};
use crate::f16::{StoreRows, Widen};
use crate::prefill_attention::{Mask, PrefillAttention};
use crate::residual::residual;
use crate::rope::Rope;
use crate::softmax::MaskedSoftmax;
use crate::weights::{EmbeddingTable, Linear, Parallel, TensorName, WeightSource};

/// Prompt tokens are processed in chunks of at most this many (see
/// [`Llama::prefill_chunk`]), so that a chunk's buffers stay bounded
/// however long the prompt, and cancellation is checked between chunks.
pub const PREFILL_CHUNK: usize = 512;

/// The most a prompt chunk's buffers may take, as a share of the weights'
/// bytes, before [`Llama::prefill_chunk`] halves the chunk.
const CHUNK_SHARE: f64 = 0.05;

// ---------------------------------------------------------------------------
// KV cache
// ---------------------------------------------------------------------------

/// Keys and values of every layer for the tokens processed so far.
///
/// Storage grows by doubling up to the context limit and is written in place;
/// [`KvCache::truncate`] rewinds it (the data past the new length is simply
/// overwritten later), which is how a follow-up turn reuses the prefix it
/// shares with the previous one.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
    capacity: usize,
    max_len: usize,
    dtype: KvDtype,
    scratch: Option<Box<crate::decode::Scratch>>,
}

/// How a [`KvCache`] stores keys and values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// IEEE half precision on the CPU (f32 on other devices): half the
    /// memory of f32 and half the bytes read per decoded token at depth,
    /// for a rounding of each cached value to 11 significant bits
    /// (llama.cpp's default too).
    #[default]
    F16,
    /// f32: the keys and values exactly as computed; for checking parity
    /// with f32 references.
    F32,
}

impl KvCache {
    /// An empty cache for `num_layers` layers holding at most `max_len`
    /// tokens, stored as `dtype`.
    pub fn new(num_layers: usize, max_len: usize, dtype: KvDtype) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
            capacity: 0,
            max_len,
            dtype,
            scratch: None,
        }
    }

    /// Tokens currently cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most tokens this cache can hold (the context length).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Forgets everything after the first `len` tokens.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes of memory held by the cache storage.
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| l.kv.elem_count() * l.kv.dtype().size_in_bytes())
            .sum()
    }

    /// Records that `n` more tokens were written by every layer.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Makes room for `extra` more tokens, growing the storage if needed.
    pub(crate) fn reserve(&mut self, extra: usize) -> Result<()> {
        let needed = self.len + extra;
        if needed > self.max_len {
            return Err(EngineError::ContextOverflow {
                needed,
                limit: self.max_len,
            });
        }
        if needed > self.capacity {
            let new_cap = needed.max(self.capacity * 2).max(256).min(self.max_len);
            // The storage it had is a size no one asks for again: each
            // layer's goes back to the system as soon as it is copied,
            // rather than into the allocator's pool (which would hold up to
            // its limit of old storage on top of the new: a 1B model's
            // 4096-token prompt peaked 150 MB higher), and the pool's
            // activation buffers go back first.
            crate::alloc::trim();
            for layer in self.layers.iter_mut().flatten() {
                *layer = LayerKv::new(grow(&layer.kv, new_cap + PAD_ROWS, self.len)?)?;
                crate::alloc::trim_pool();
            }
            self.capacity = new_cap;
        }
        Ok(())
    }

    /// Writes `k` and `v` `(1, kv_heads, seq, head_dim)` for `layer` at the
    /// current position and returns views of all cached keys and values.
    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, kv_heads, seq, head_dim) = k.dims4()?;
        if b != 1 {
            return Err(EngineError::InvalidArgument(format!(
                "the KV cache holds one sequence, not {b}"
            )));
        }
        let at = self.len;
        let layer = self.storage(layer, kv_heads, head_dim, k.device())?;
        let (kc, vc) = (layer.kv.narrow(0, 0, 1)?, layer.kv.narrow(0, 1, 1)?);
        if kc.dtype() == DType::F16 {
            let store = StoreRows { at };
            kc.inplace_op2(&k.contiguous()?, &store)?;
            vc.inplace_op2(&v.contiguous()?, &store)?;
        } else {
            kc.slice_set(&k.contiguous()?, 2, at)?;
            vc.slice_set(&v.contiguous()?, 2, at)?;
        }
        let total = at + seq;
        Ok((kc.narrow(2, 0, total)?, vc.narrow(2, 0, total)?))
    }
}

/// Unused rows after each head's in a layer's storage, so that a head's
/// keys and its values (one plane of `kv_heads` heads apart) do not lie a
/// power of two apart: with the planes exactly 4 MiB apart, a 1B model's
/// 4096-token prompt ran at 267–277 tok/s against 276–285 with the rows
/// (`lumen bench`, four runs each; likely memory bank conflicts between the
/// key and value streams).
const PAD_ROWS: usize = 16;

/// One layer's keys and values: `(2, kv_heads, capacity + PAD_ROWS,
/// head_dim)`, keys then values.
#[derive(Debug, Clone)]
pub(crate) struct LayerKv {
    pub(crate) kv: Tensor,
    /// A view of one element of `kv`: an in-place operation on it gets the
    /// whole storage (candle hands an in-place operation its operand's
    /// storage, whatever the view), and candle checks a one-element view
    /// for overlapping writes without allocating, which the decoding step
    /// relies on (see [`crate::decode`]).
    pub(crate) handle: Tensor,
}

impl LayerKv {
    fn new(kv: Tensor) -> Result<Self> {
        let mut handle = kv.clone();
        for dim in 0..kv.rank() {
            handle = handle.narrow(dim, 0, 1)?;
        }
        Ok(Self { kv, handle })
    }
}

impl KvCache {
    /// `layer`'s keys and values (made, zeroed, on first use): f16 on the
    /// CPU when the cache is [`KvDtype::F16`], else f32.
    pub(crate) fn storage(
        &mut self,
        layer: usize,
        kv_heads: usize,
        head_dim: usize,
        device: &Device,
    ) -> Result<&LayerKv> {
        let half = self.dtype == KvDtype::F16 && device.is_cpu();
        let capacity = self.capacity;
        let slot = self.layers.get_mut(layer).ok_or_else(|| {
            EngineError::InvalidArgument(format!("the KV cache has no layer {layer}"))
        })?;
        let kv = match slot.take() {
            Some(kv) => kv,
            None => {
                let dtype = if half { DType::F16 } else { DType::F32 };
                let shape = (2, kv_heads, capacity + PAD_ROWS, head_dim);
                LayerKv::new(Tensor::zeros(shape, dtype, device)?)?
            }
        };
        Ok(slot.insert(kv))
    }

    /// The buffers of [`crate::decode`]'s single-token pass, made on first
    /// use and kept with the conversation.
    pub(crate) fn decode_scratch(&mut self) -> &mut Option<Box<crate::decode::Scratch>> {
        &mut self.scratch
    }
}

/// A copy of `t` with room for `cap` positions along dim 2, keeping the first
/// `keep`.
fn grow(t: &Tensor, cap: usize, keep: usize) -> Result<Tensor> {
    let (b, h, _, d) = t.dims4()?;
    let out = Tensor::zeros((b, h, cap, d), t.dtype(), t.device())?;
    if keep > 0 {
        out.slice_set(&t.narrow(2, 0, keep)?.contiguous()?, 2, 0)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn load(
        w: &WeightSource,
        name: TensorName,
        cfg: &LlamaConfig,
        dev: &Device,
    ) -> Result<Self> {
        Ok(Self {
            weight: w.vector(name, cfg.hidden_size, dev)?,
            eps: cfg.rms_norm_eps as f32,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }

    /// The weights as f32, when they live on the CPU.
    pub(crate) fn weights(&self) -> Option<Vec<f32>> {
        if !self.weight.device().is_cpu() {
            return None;
        }
        self.weight.to_dtype(DType::F32).ok()?.to_vec1().ok()
    }
}

#[derive(Debug, Clone)]
struct Attention {
    /// q `(heads * head_dim, hidden)`, k and v `(kv_heads * head_dim, hidden)`.
    qkv: Parallel,
    o: Linear, // (hidden, heads * head_dim)
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &WeightSource, i: usize, cfg: &LlamaConfig, dev: &Device) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let q_out = cfg.num_heads * hd;
        let kv_out = cfg.num_kv_heads * hd;
        Ok(Self {
            qkv: Parallel::new(vec![
                w.linear(TensorName::AttnQ(i), (q_out, h), dev)?,
                w.linear(TensorName::AttnK(i), (kv_out, h), dev)?,
                w.linear(TensorName::AttnV(i), (kv_out, h), dev)?,
            ]),
            o: w.linear(TensorName::AttnOutput(i), (h, q_out), dev)?,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: hd,
        })
    }

    /// `x` is `(1, seq, hidden)`; `pos` holds the rotary tables and the
    /// causal mask for these positions.
    fn forward(
        &self,
        x: &Tensor,
        pos: &Positions,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let (hd, nh, nkv) = (self.head_dim, self.num_heads, self.num_kv_heads);
        // Project and split heads: (1, heads, seq, head_dim).
        let [q, k, v] = <[Tensor; 3]>::try_from(self.qkv.forward(x)?)
            .map_err(|_| EngineError::InvalidArgument("three projections expected".into()))?;
        let q = pos.rope.heads(&q, nh, &pos.cos, &pos.sin)?;
        let k = pos.rope.heads(&k, nkv, &pos.cos, &pos.sin)?;
        let v = split_heads(&v, nkv, hd)?;
        let (k, v) = cache.append(layer, &k, &v)?;
        let out = causal_attention(&q, &k, &v, pos)?;
        self.o.forward(&out)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    /// gate and up, `(intermediate, hidden)` each.
    gate_up: Parallel,
    down: Linear, // (hidden, intermediate)
}

impl Mlp {
    /// The gate/up pair and the down projection (for the single-token
    /// pass).
    pub(crate) fn parts(&self) -> (&Parallel, &Linear) {
        (&self.gate_up, &self.down)
    }

    pub(crate) fn load(
        w: &WeightSource,
        i: usize,
        cfg: &LlamaConfig,
        dev: &Device,
    ) -> Result<Self> {
        let (h, m) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_up: Parallel::new(vec![
                w.linear(TensorName::FfnGate(i), (m, h), dev)?,
                w.linear(TensorName::FfnUp(i), (m, h), dev)?,
            ]),
            down: w.linear(TensorName::FfnDown(i), (h, m), dev)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // down(silu(gate(x)) * up(x))
        self.down.forward(&self.gate_up.swiglu(x)?)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    /// The parts the single-token pass reads.
    pub(crate) fn parts(&self) -> crate::decode::LayerParts<'_> {
        crate::decode::LayerParts {
            attn_norm: &self.attn_norm,
            qkv: &self.attn.qkv,
            o: &self.attn.o,
            ffn_norm: &self.ffn_norm,
            gate_up: &self.mlp.gate_up,
            down: &self.mlp.down,
        }
    }

    pub(crate) fn load(
        w: &WeightSource,
        i: usize,
        cfg: &LlamaConfig,
        dev: &Device,
    ) -> Result<Self> {
        Ok(Self {
            attn_norm: RmsNorm::load(w, TensorName::AttnNorm(i), cfg, dev)?,
            attn: Attention::load(w, i, cfg, dev)?,
            ffn_norm: RmsNorm::load(w, TensorName::FfnNorm(i), cfg, dev)?,
            mlp: Mlp::load(w, i, cfg, dev)?,
        })
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        pos: &Positions,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        // h = x + attn(norm(x)); out = h + mlp(norm(h)), each sum in the
        // output projection's buffer.
        let attn = self
            .attn
            .forward(&self.attn_norm.forward(x)?, pos, cache, layer)?;
        let h = residual(x, attn)?;
        residual(&h, self.mlp.forward(&self.ffn_norm.forward(&h)?)?)
    }
}

/// Rotary tables and causal mask for one forward call.
pub(crate) struct Positions<'a> {
    pub(crate) rope: &'a Rope,
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    /// The first position and how many follow.
    start: usize,
    seq: usize,
    device: Device,
    /// The causal mask, made when an attention without the fused kernel
    /// first asks for it (the fused kernel needs none: a 512-token chunk's
    /// mask after 3584 tokens is 8 MB, a new size for every chunk).
    mask: std::cell::OnceCell<Tensor>,
}

// ---------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------

/// Which positions [`Llama::forward`] returns logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position: `(vocab)`. What generation needs.
    Last,
    /// Every position: `(seq, vocab)`. What parity tests need.
    All,
}

/// The weights of a Llama text model. Immutable and shareable: all per-
/// conversation state lives in a [`KvCache`].
#[derive(Debug)]
pub struct Llama {
    cfg: LlamaConfig,
    embed: EmbeddingTable,
    blocks: Vec<Block>,
    norm: RmsNorm,
    output: Linear,
    rope: Rope,
    device: Device,
    /// The single-token pass, where every weight allows it.
    decode: Option<crate::decode::Plan>,
}

impl Llama {
    /// Loads the weights from `w`, calling `progress(done, total)` after each
    /// block.
    pub fn load(
        w: &WeightSource,
        cfg: &LlamaConfig,
        device: &Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let mut cfg = cfg.clone();
        // llama.cpp stores Llama 3 RoPE scaling as per-frequency divisors.
        if let Some(factors) = w.rope_freqs(cfg.head_dim / 2)? {
            cfg.rope.scaling = RopeScaling::FreqFactors(factors);
        }
        cfg.validate(w.path())?;
        let shape = (cfg.vocab_size, cfg.hidden_size);
        let mut embed = w.embedding(TensorName::TokenEmbedding, shape, device)?;
        let total = cfg.num_layers + 1;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            blocks.push(Block::load(w, i, &cfg, device)?);
            progress(i + 1, total);
        }
        let output = if w.contains(TensorName::Output) {
            w.linear(TensorName::Output, shape, device)?
        } else {
            let (table, output) = embed.tied(w.dequantizes())?;
            embed = table;
            output
        };
        let norm = RmsNorm::load(w, TensorName::OutputNorm, &cfg, device)?;
        let rope = Rope::new(&cfg.rope, cfg.head_dim);
        let parts = blocks.iter().map(|b| crate::decode::Parts::Own(b.parts()));
        let decode = crate::decode::Plan::new(&cfg, parts, &embed, &norm, &output, &rope);
        progress(total, total);
        Ok(Self {
            rope,
            cfg,
            embed,
            blocks,
            norm,
            output,
            device: device.clone(),
            decode,
        })
    }

    /// Whether [`Llama::forward_one_into`] takes the single-token pass
    /// (`decode.rs`) rather than the general one.
    pub fn has_decode_pass(&self) -> bool {
        self.decode.is_some()
    }

    /// Runs one token after what `cache` holds and writes the next token's
    /// logits into `logits` (replacing its contents, in the memory it has):
    /// the decoding step. Takes the single-token pass where the model
    /// allows it (then nothing is allocated after the first step, unless
    /// the cache grows), else [`Llama::forward`].
    pub fn forward_one_into(
        &self,
        token: u32,
        cache: &mut KvCache,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        match &self.decode {
            Some(plan) => plan.step(token, cache, None, logits),
            None => copy_logits(&self.forward(&[token], cache, Logits::Last)?, logits),
        }
    }

    /// Bytes of the buffers one layer allocates for a prompt chunk of
    /// `tokens` tokens, roughly: eight hidden-sized f32 tensors (norms,
    /// projections, rotated heads, attention), the MLP's SwiGLU output and
    /// its 8-bit copy for the down projection (1B at 512 tokens: 54 MB;
    /// 8B: 104 MB).
    pub(crate) fn prefill_buffer_bytes(&self, tokens: usize) -> usize {
        let (h, i) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        tokens * (std::mem::size_of::<f32>() * (8 * h + i) + i)
    }

    /// Tokens per prompt chunk for this model, whose weights take
    /// `weight_bytes`: [`PREFILL_CHUNK`], or half that where a full chunk's
    /// buffers would exceed 5% of the weights — small models, whose memory
    /// they would raise most (1B Q4_0, 4096-token prompt: peak less the KV
    /// cache 1.134× the file with 512, 1.099× with 256, prefill 2% slower;
    /// 3B and up keep 512).
    pub fn prefill_chunk(&self, weight_bytes: usize) -> usize {
        let full = self.prefill_buffer_bytes(PREFILL_CHUNK) as f64;
        if full > CHUNK_SHARE * weight_bytes as f64 {
            PREFILL_CHUNK / 2
        } else {
            PREFILL_CHUNK
        }
    }

    /// The configuration (with RoPE scaling resolved).
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh cache for one conversation holding up to `max_len` tokens.
    pub fn new_cache(&self, max_len: usize, dtype: KvDtype) -> KvCache {
        KvCache::new(
            self.cfg.num_layers,
            max_len.min(self.cfg.max_position_embeddings),
            dtype,
        )
    }

    /// Runs `tokens` through the model after what `cache` already holds and
    /// returns f32 logits. The caller chunks long prompts (see
    /// [`Llama::prefill_chunk`]); this processes `tokens` in one pass.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, logits: Logits) -> Result<Tensor> {
        let seq = tokens.len();
        check_tokens(tokens, self.cfg.vocab_size)?;
        cache.reserve(seq)?;
        let start = cache.len();
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.lookup(&ids)?.unsqueeze(0)?; // (1, seq, hidden)
        let pos = Positions::new(&self.rope, start, seq, &self.device)?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, &pos, cache, i)?;
        }
        cache.advance(seq);
        output_logits(&x, &self.norm, &self.output, logits)
    }
}

/// One position's logits `(vocab)` into `logits`, replacing its contents.
pub(crate) fn copy_logits(out: &Tensor, logits: &mut Vec<f32>) -> Result<()> {
    logits.clear();
    logits.extend_from_slice(&out.to_vec1::<f32>()?);
    Ok(())
}

/// `(b, seq, n * hd)` → `(b, n, seq, hd)`, contiguous.
pub(crate) fn split_heads(t: &Tensor, n: usize, hd: usize) -> Result<Tensor> {
    let (b, seq, _) = t.dims3()?;
    Ok(t.reshape((b, seq, n, hd))?.transpose(1, 2)?.contiguous()?)
}

/// Scaled dot-product attention of `q` `(b, heads, seq, hd)` over `k`, `v`
/// `(b, kv_heads, kv_len, hd)`, with an optional additive `mask`
/// `(seq, kv_len)`; returns `(b, seq, heads * hd)`.
///
/// Grouped-query attention without copying K/V: the query heads that share
/// a KV head are folded into the row dimension, `(b, kv_heads, rep * seq, hd)`.
///
/// Keys and values may be f16 (on the CPU): they are widened once per call.
///
/// Long queries run in row blocks so that the score matrix stays within
/// [`SCORE_BUDGET`] values (a 4-tile image is 6432 vision tokens: 2.6 GB of
/// scores at once otherwise); softmax is per row, so the result is the same.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    attention_in_blocks(q, k, v, mask, SCORE_BUDGET, false)
}

/// [`attention`] for the queries at positions `pos`, the last of the keys'
/// positions, under the causal mask: the fused kernel on the CPU where it
/// applies, else row blocks that each read only the keys their last row may
/// see, skipping the masked corner.
pub(crate) fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pos: &Positions,
) -> Result<Tensor> {
    let (b, _, seq, hd) = q.dims4()?;
    if seq > 1
        && b == 1
        && q.device().is_cpu()
        && PrefillAttention::supports(hd)
        && seq == pos.seq
        && k.dim(2)? == pos.start + pos.seq
    {
        // The fused kernel reads the cache in place, f16 or f32, and
        // computes nothing above the diagonal.
        return PrefillAttention::attend(q, k, v, Mask::Causal);
    }
    attention_in_blocks(q, k, v, pos.mask()?, SCORE_BUDGET, true)
}

fn attention_in_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    budget: usize,
    causal: bool,
) -> Result<Tensor> {
    let (b, nh, seq, _) = q.dims4()?;
    let kv_len = k.dim(2)?;
    if b == 1 && seq == 1 && mask.is_none() && q.device().is_cpu() {
        return decode_attention(q, k, v);
    }
    // An f16 cache is widened once for all row blocks.
    let (k, v) = &if k.dtype() == DType::F16 && k.device().is_cpu() {
        (k.apply_op1_no_bwd(&Widen)?, v.apply_op1_no_bwd(&Widen)?)
    } else {
        (k.clone(), v.clone())
    };
    let rows = (budget / (b * nh * kv_len).max(1)).max(1);
    if seq <= rows {
        return attention_block(q, k, v, mask);
    }
    let mut blocks = Vec::with_capacity(seq.div_ceil(rows));
    for start in (0..seq).step_by(rows) {
        let n = rows.min(seq - start);
        // Keys this block's rows may attend to: all, or (causal) up to the
        // position of its last row.
        let keys = if causal {
            (kv_len + start + n).saturating_sub(seq).min(kv_len)
        } else {
            kv_len
        };
        let mask = mask
            .map(|m| -> Result<Tensor> {
                let r = m.rank();
                // The mask's query dimension, unless it is broadcast.
                let m = if r >= 2 && m.dim(r - 2)? == seq {
                    m.narrow(r - 2, start, n)?
                } else {
                    m.clone()
                };
                Ok(if keys < kv_len {
                    m.narrow(r - 1, 0, keys)?
                } else {
                    m
                })
            })
            .transpose()?;
        let (k, v) = if keys < kv_len {
            (k.narrow(2, 0, keys)?, v.narrow(2, 0, keys)?)
        } else {
            (k.clone(), v.clone())
        };
        blocks.push(attention_block(
            &q.narrow(2, start, n)?,
            &k,
            &v,
            mask.as_ref(),
        )?);
    }
    Ok(Tensor::cat(&blocks, 1)?)
}

/// Most attention scores computed at once (32 MB of f32: the largest block
/// glibc's allocator still recycles instead of mapping and faulting in
/// fresh pages for every block; also small enough for the causal skip to
/// matter).
const SCORE_BUDGET: usize = 8 << 20;

/// One new token's attention on the CPU: the fused kernel reads the cache
/// (f32 or f16) once, in place.
pub(crate) fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, nh, seq, hd) = q.dims4()?;
    let op = DecodeAttention {
        scale: (hd as f32).powf(-0.5),
    };
    let out = q.contiguous()?.apply_op3_no_bwd(k, v, &op)?;
    Ok(out.reshape((b, seq, nh * hd))?)
}

fn attention_block(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, nh, seq, hd) = q.dims4()?;
    let scale = (hd as f64).powf(-0.5);
    let (nkv, kv_len) = (k.dim(1)?, k.dim(2)?);
    let rep = nh / nkv;
    let q = q.reshape((b, nkv, rep * seq, hd))?;
    let scores = q.matmul(&k.t()?)?; // (b, kv_heads, rep * seq, kv_len)
    let fused = MaskedSoftmax {
        seq,
        scale: scale as f32,
    };
    let probs = match mask {
        _ if !scores.device().is_cpu() => {
            let scores = (scores * scale)?;
            let scores = match mask {
                None => scores,
                Some(mask) => scores
                    .reshape((b, nkv, rep, seq, kv_len))?
                    .broadcast_add(mask)?
                    .reshape((b, nkv, rep * seq, kv_len))?,
            };
            candle_nn::ops::softmax_last_dim(&scores)?
        }
        None => {
            scores.inplace_op1(&fused)?;
            scores
        }
        Some(mask) => {
            // Masks are `(seq, kv_len)`, possibly with leading 1s.
            let mask = mask.reshape((seq, kv_len))?.contiguous()?;
            scores.inplace_op2(&mask, &fused)?;
            scores
        }
    };
    // The cache views are strided per head, which the matmul reads as is.
    let out = probs.matmul(v)?; // (b, kv_heads, rep * seq, hd)
    Ok(out
        .reshape((b, nh, seq, hd))?
        .transpose(1, 2)?
        .reshape((b, seq, nh * hd))?)
}

impl<'a> Positions<'a> {
    /// Rotary tables (and, when asked for, the causal mask) for `seq`
    /// tokens after `start`.
    pub(crate) fn new(rope: &'a Rope, start: usize, seq: usize, device: &Device) -> Result<Self> {
        let (cos, sin) = rope.cos_sin(start, seq, device)?;
        Ok(Self {
            rope,
            cos,
            sin,
            start,
            seq,
            device: device.clone(),
            mask: std::cell::OnceCell::new(),
        })
    }

    /// The causal mask `(seq, start + seq)` ([`causal_mask`]), made once;
    /// `None` for one token, which may attend every key.
    pub(crate) fn mask(&self) -> Result<Option<&Tensor>> {
        if self.seq <= 1 {
            return Ok(None);
        }
        if self.mask.get().is_none() {
            let mask = causal_mask(self.seq, self.start, &self.device)?;
            // Set just now if unset (a forward pass runs on one thread).
            let _ = self.mask.set(mask);
        }
        Ok(self.mask.get())
    }
}

/// Rejects an empty call or ids outside an embedding table of `rows`.
pub(crate) fn check_tokens(tokens: &[u32], rows: usize) -> Result<()> {
    if tokens.is_empty() {
        return Err(EngineError::InvalidArgument("no tokens to process".into()));
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= rows) {
        return Err(EngineError::InvalidArgument(format!(
            "token id {bad} is outside the vocabulary of {rows} tokens"
        )));
    }
    Ok(())
}

/// Final norm and output projection of `x` `(1, seq, hidden)`: `(vocab)`
/// for the last position or `(seq, vocab)` for all.
pub(crate) fn output_logits(
    x: &Tensor,
    norm: &RmsNorm,
    output: &Linear,
    logits: Logits,
) -> Result<Tensor> {
    let seq = x.dim(1)?;
    let x = match logits {
        Logits::Last => x.narrow(1, seq - 1, 1)?,
        Logits::All => x.clone(),
    };
    let out = output.forward(&norm.forward(&x)?)?.squeeze(0)?;
    Ok(match logits {
        Logits::Last => out.squeeze(0)?,
        Logits::All => out,
    })
}

/// `(seq, start + seq)`: 0 where query `i` may attend key `j`, -inf after it.
pub(crate) fn causal_mask(seq: usize, start: usize, device: &Device) -> Result<Tensor> {
    let kv_len = start + seq;
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| {
            (0..kv_len).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (seq, kv_len), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: (usize, usize, usize, usize), step: f64) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        Tensor::arange(0u32, n as u32, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| ((t * step)?.sin()?).reshape(shape))
            .expect("ramp")
    }

    /// Each appended step reads back exactly (f16: as rounded) through the
    /// returned views, across two growths of the storage and after a
    /// rewind; f16 storage is half of f32's (both with [`PAD_ROWS`] per
    /// head).
    #[test]
    fn the_cache_keeps_what_it_was_given_across_growth_and_rewinds() {
        let (nkv, hd, max_len) = (2, 8, 1000);
        let stored = |t: &Tensor, dtype: KvDtype| match dtype {
            KvDtype::F32 => t.clone(),
            KvDtype::F16 => t
                .to_dtype(DType::F16)
                .and_then(|t| t.to_dtype(DType::F32))
                .expect("round"),
        };
        let diff = |a: &Tensor, b: &Tensor| {
            (a.to_dtype(DType::F32).expect("f32") - b)
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                .expect("diff")
        };
        let mut bytes = Vec::new();
        for dtype in [KvDtype::F32, KvDtype::F16] {
            let mut cache = KvCache::new(1, max_len, dtype);
            let mut keys: Vec<Tensor> = Vec::new();
            // 256 → 512 → 1000 positions of storage.
            for (step, n) in [200usize, 100, 1, 300].into_iter().enumerate() {
                cache.reserve(n).expect("reserve");
                let k = ramp((1, nkv, n, hd), 0.01 * (step + 1) as f64);
                let v = (&k * 2.0).expect("v");
                let (kv, vv) = cache.append(0, &k, &v).expect("append");
                cache.advance(n);
                keys.push(k);
                let want = stored(&Tensor::cat(&keys, 2).expect("cat"), dtype);
                assert_eq!(diff(&kv, &want), 0.0, "{dtype:?} step {step}");
                assert_eq!(diff(&vv, &(&want * 2.0).expect("v")), 0.0, "{dtype:?}");
            }
            // Rewind to 150 and write something else after it.
            cache.truncate(150);
            cache.reserve(5).expect("reserve");
            let k = ramp((1, nkv, 5, hd), 0.5);
            let (kv, _) = cache.append(0, &k, &k).expect("append");
            let first = Tensor::cat(&keys, 2)
                .and_then(|t| t.narrow(2, 0, 150))
                .expect("first");
            let want = stored(&Tensor::cat(&[first, k], 2).expect("cat"), dtype);
            assert_eq!(diff(&kv, &want), 0.0, "{dtype:?} after the rewind");
            bytes.push(cache.allocated_bytes());
        }
        let rows = max_len + PAD_ROWS;
        assert_eq!(bytes, [rows * nkv * hd * 2 * 4, rows * nkv * hd * 2 * 2]);
    }

    /// Row blocks give the same result as one pass, with a causal mask and
    /// grouped-query heads.
    #[test]
    fn blocked_attention_is_exact() {
        let q = ramp((1, 4, 10, 8), 0.37);
        let k = ramp((1, 2, 13, 8), 0.11);
        let v = ramp((1, 2, 13, 8), 0.23);
        let mask = causal_mask(10, 3, &Device::Cpu).expect("mask");
        let whole = attention_in_blocks(&q, &k, &v, Some(&mask), usize::MAX, false).expect("whole");
        assert_eq!(whole.dims(), &[1, 10, 32]);
        // 4 heads × 13 keys × 3 rows per block: blocks of 3, 3, 3, 1 rows;
        // causal blocks read 6, 9, 12 and 13 keys.
        for causal in [false, true] {
            let blocked =
                attention_in_blocks(&q, &k, &v, Some(&mask), 4 * 13 * 3, causal).expect("blocked");
            let diff = (&whole - blocked)
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                .expect("diff");
            assert!(diff < 1e-6, "causal {causal}: {diff}");
        }
    }
}
