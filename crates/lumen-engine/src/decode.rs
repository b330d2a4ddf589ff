//! One new token through a Llama on the CPU, over buffers allocated once
//! per conversation: the decoding step, which runs once per generated token.
//!
//! The general forward pass ([`crate::llama::Llama::forward`]) builds
//! candle tensors, so every operation of every layer allocates its output
//! (recycled, but not free), checks shapes and dispatches. For one token
//! none of that is needed: this pass
//! calls the same kernels on slices — the interleaved quantized matmuls
//! ([`crate::qmm`]), the fused decoding attention over the KV cache read
//! and written in place ([`crate::decode_attention`], [`crate::f16`]),
//! SwiGLU, RoPE and RMSNorm with the arithmetic of the operations the
//! general pass uses — into a [`Scratch`] that lives in the conversation's
//! [`KvCache`]. After the first step, a step allocates nothing (checked by
//! the `decode_alloc` test with a counting allocator), except when the KV
//! cache's storage doubles.
//!
//! It applies to models whose every linear layer, output layer and
//! embedding table are held by Lumen's interleaved kernels (GGUF files of
//! the catalogue's types on the CPU: Llama 3.2 1B and 3B with their tied
//! output layer, 3.1 8B and 3.3 70B with theirs, and a table repacked for
//! its rows; Llama 3.2 Vision quantized at load), and for vision models to
//! tokens that see one image or none: a gated cross-attention layer
//! normalizes the query's heads, attends with the same fused kernel to the
//! image's keys and values (computed once per image, read in place) and
//! adds its outputs scaled by their gates. Anything else takes the general
//! pass ([`Plan::new`] says which).

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{CpuStorage, InplaceOp1, Layout};
use half::f16;

use crate::config::LlamaConfig;
use crate::decode_attention::{DecodeAttention, Rows};
use crate::error::{EngineError, Result};
use crate::f16::{Heads, KvViews, narrow};
use crate::llama::{KvCache, RmsNorm};
use crate::qmm::{Activations, Interleaved, InterleavedMatMul, Isa, matvec_into, padded_width};
use crate::rope::Rope;
use crate::swiglu::swiglu_row;
use crate::weights::{EmbeddingTable, Linear, Parallel};

/// Weights that read one input, computed as one quantized matmul.
#[derive(Debug)]
struct Proj {
    parts: Vec<Arc<Interleaved>>,
    isa: Isa,
    /// Where each part's outputs start in the (group-padded) result.
    offsets: Vec<usize>,
    /// Values the result takes, padding included.
    padded: usize,
}

impl Proj {
    fn new(parts: Vec<Arc<Interleaved>>, isa: Isa) -> Self {
        let mut offsets = Vec::with_capacity(parts.len());
        let mut padded = 0;
        for w in &parts {
            offsets.push(padded);
            padded += padded_width(w.n);
        }
        Self {
            parts,
            isa,
            offsets,
            padded,
        }
    }

    fn of_linear(l: &Linear) -> Option<Self> {
        match l {
            Linear::Interleaved(op) => {
                let (w, isa) = op.parts();
                Some(Self::new(vec![w.clone()], isa))
            }
            _ => None,
        }
    }

    fn of_parallel(p: &Parallel) -> Option<Self> {
        match p {
            Parallel::Fused(op) => {
                let (parts, isa) = op.parts();
                Some(Self::new(parts.to_vec(), isa))
            }
            Parallel::Separate(_) => None,
        }
    }

    /// `x · [W₁ W₂ …]ᵀ` into `out` ([`Proj::padded`] values).
    fn run(&self, x: &[f32], act: &mut Activations, out: &mut [f32]) {
        matvec_into(&self.parts, self.isa, x, act, &mut out[..self.padded]);
    }

    /// Part `i`'s outputs within a result.
    fn part<'a>(&self, out: &'a [f32], i: usize) -> &'a [f32] {
        let at = self.offsets[i];
        &out[at..at + self.parts[i].n]
    }
}

/// One layer's weights: a Llama block, or a vision model's gated
/// cross-attention layer.
#[derive(Debug)]
enum Step {
    Own(Layer),
    Cross(CrossLayer),
}

/// A Llama block's weights.
#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    qkv: Proj,
    o: Proj,
    ffn_norm: Vec<f32>,
    gate_up: Proj,
    down: Proj,
}

/// A gated cross-attention layer's weights (Llama 3.2 Vision's text
/// decoder, see [`crate::mllama`]): the token's query attends to the image
/// keys and values, and both the attention's and the MLP's outputs are
/// scaled by their gates before they join the residual stream.
#[derive(Debug)]
struct CrossLayer {
    attn_norm: Vec<f32>,
    q: Proj,
    /// RMSNorm weights for each query head, `head_dim`.
    q_norm: Vec<f32>,
    o: Proj,
    attn_gate: f32,
    ffn_norm: Vec<f32>,
    gate_up: Proj,
    down: Proj,
    mlp_gate: f32,
}

/// What the single-token pass needs of a loaded [`crate::llama::Llama`]
/// or of a vision model's text decoder.
#[derive(Debug)]
pub(crate) struct Plan {
    layers: Vec<Step>,
    norm: Vec<f32>,
    output: Proj,
    embed: InterleavedMatMul,
    rope: Rope,
    eps: f32,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    /// Rows of the embedding table (a vision model's has a few past the
    /// vocabulary).
    embed_rows: usize,
    /// Logits per step.
    vocab: usize,
}

/// A layer's parts as the plan reads them.
pub(crate) enum Parts<'a> {
    /// A Llama block.
    Own(LayerParts<'a>),
    /// A gated cross-attention layer.
    Cross(CrossParts<'a>),
}

/// A Llama block's parts.
pub(crate) struct LayerParts<'a> {
    pub attn_norm: &'a RmsNorm,
    pub qkv: &'a Parallel,
    pub o: &'a Linear,
    pub ffn_norm: &'a RmsNorm,
    pub gate_up: &'a Parallel,
    pub down: &'a Linear,
}

/// A gated cross-attention layer's parts.
pub(crate) struct CrossParts<'a> {
    pub attn_norm: &'a RmsNorm,
    pub q: &'a Linear,
    pub q_norm: &'a candle_core::Tensor,
    pub o: &'a Linear,
    pub attn_gate: f64,
    pub ffn_norm: &'a RmsNorm,
    pub gate_up: &'a Parallel,
    pub down: &'a Linear,
    pub mlp_gate: f64,
}

/// What [`CrossKv::with`] runs on a layer's image keys and values.
pub(crate) type OnKv<'f> = dyn FnMut(KvViews<'_>) -> Result<()> + 'f;

/// The image keys and values a step's cross-attention layers read: for
/// layer `i`, [`CrossKv::with`] hands `f` views of the vision tokens the
/// token sees, `(kv_heads, tokens, head_dim)` each; `None` when the token
/// sees no image (its cross-attention layers then add nothing).
pub(crate) trait CrossKv {
    /// Runs `f` on layer `layer`'s keys and values.
    fn with(&self, layer: usize, f: &mut OnKv<'_>) -> Result<()>;

    /// Vision tokens the views hold.
    fn tokens(&self) -> usize;
}

impl Plan {
    /// The plan for a model's weights, or `None` when any of them is not
    /// held by the interleaved kernels (or the projections of a layer could
    /// not be fused): that model decodes through the general pass.
    pub(crate) fn new<'a>(
        cfg: &LlamaConfig,
        layers: impl Iterator<Item = Parts<'a>>,
        embed: &EmbeddingTable,
        norm: &RmsNorm,
        output: &Linear,
        rope: &Rope,
    ) -> Option<Self> {
        let EmbeddingTable::Interleaved(embed) = embed else {
            return None;
        };
        let layers = layers
            .map(|l| {
                Some(match l {
                    Parts::Own(l) => Step::Own(Layer {
                        attn_norm: l.attn_norm.weights()?,
                        qkv: Proj::of_parallel(l.qkv)?,
                        o: Proj::of_linear(l.o)?,
                        ffn_norm: l.ffn_norm.weights()?,
                        gate_up: Proj::of_parallel(l.gate_up)?,
                        down: Proj::of_linear(l.down)?,
                    }),
                    Parts::Cross(c) => Step::Cross(CrossLayer {
                        attn_norm: c.attn_norm.weights()?,
                        q: Proj::of_linear(c.q)?,
                        q_norm: c
                            .q_norm
                            .to_dtype(candle_core::DType::F32)
                            .and_then(|t| t.to_vec1())
                            .ok()?,
                        o: Proj::of_linear(c.o)?,
                        attn_gate: c.attn_gate as f32,
                        ffn_norm: c.ffn_norm.weights()?,
                        gate_up: Proj::of_parallel(c.gate_up)?,
                        down: Proj::of_linear(c.down)?,
                        mlp_gate: c.mlp_gate as f32,
                    }),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let (hd, h, m) = (cfg.head_dim, cfg.hidden_size, cfg.intermediate_size);
        let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let n = |p: &Proj| p.parts.iter().map(|w| (w.n, w.k)).collect::<Vec<_>>();
        let mlp_fits = |norm: &[f32], gate_up: &Proj, down: &Proj| {
            norm.len() == h && n(gate_up) == [(m, h), (m, h)] && n(down) == [(h, m)]
        };
        let shapes_fit = layers.len() == cfg.num_layers
            && embed.dims().0 >= cfg.vocab_size
            && embed.dims().1 == h
            && layers.iter().all(|l| match l {
                Step::Own(l) => {
                    n(&l.qkv) == [(q, h), (kv, h), (kv, h)]
                        && n(&l.o) == [(h, q)]
                        && l.attn_norm.len() == h
                        && mlp_fits(&l.ffn_norm, &l.gate_up, &l.down)
                }
                Step::Cross(c) => {
                    n(&c.q) == [(q, h)]
                        && n(&c.o) == [(h, q)]
                        && c.q_norm.len() == hd
                        && c.attn_norm.len() == h
                        && mlp_fits(&c.ffn_norm, &c.gate_up, &c.down)
                }
            });
        let output = Proj::of_linear(output)?;
        let norm = norm.weights()?;
        let output_fits = output.parts[0].n == cfg.vocab_size && norm.len() == cfg.hidden_size;
        (shapes_fit && output_fits && cfg.num_kv_heads > 0).then(|| Self {
            layers,
            norm,
            output,
            embed: embed.clone(),
            rope: rope.clone(),
            eps: cfg.rms_norm_eps as f32,
            hidden: cfg.hidden_size,
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            intermediate: cfg.intermediate_size,
            embed_rows: embed.dims().0,
            vocab: cfg.vocab_size,
        })
    }

    /// Runs `token` after what `cache` holds and writes the next token's
    /// logits into `logits` (resized to the vocabulary, in the memory it
    /// has). The caller runs this on a thread of rayon's pool (see
    /// [`crate::model::Model::forward`]).
    ///
    /// `images` holds what cross-attention layers read (vision models);
    /// without it they add nothing, as for a token that sees no image.
    pub(crate) fn step(
        &self,
        token: u32,
        cache: &mut KvCache,
        images: Option<&dyn CrossKv>,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        if token as usize >= self.embed_rows {
            return Err(EngineError::InvalidArgument(format!(
                "token id {token} is outside the vocabulary of {} tokens",
                self.embed_rows
            )));
        }
        cache.reserve(1)?;
        let at = cache.len();
        let mut scratch = cache
            .decode_scratch()
            .take()
            .unwrap_or_else(|| Box::new(Scratch::new(self)));
        let s = &mut *scratch;
        // Every pool thread's attention scratch for the longest keys this
        // step reads, grown ahead (by doubling) rather than by whichever
        // thread first gets a longer head.
        let keys = (at + 1).max(images.map_or(0, |i| i.tokens()));
        if keys > s.attention_keys {
            let rep = self.heads / self.kv_heads.max(1);
            s.attention_keys = crate::decode_attention::reserve_scratch(rep, keys, self.head_dim);
        }
        let result = self.layers_into(token, at, cache, images, s).map(|()| {
            rms_norm(&s.x, &self.norm, self.eps, &mut s.xn);
            logits.clear();
            logits.resize(self.output.padded, 0.0);
            self.output.run(&s.xn, &mut s.act, logits);
            logits.truncate(self.vocab);
        });
        *cache.decode_scratch() = Some(scratch);
        result?;
        cache.advance(1);
        Ok(())
    }

    /// The embedding of `token` through every layer, leaving the result in
    /// `s.x`; writes the keys and values of position `at`.
    fn layers_into(
        &self,
        token: u32,
        at: usize,
        cache: &mut KvCache,
        images: Option<&dyn CrossKv>,
        s: &mut Scratch,
    ) -> Result<()> {
        if !self.embed.row_into(token as usize, &mut s.x) {
            return Err(EngineError::InvalidArgument(format!(
                "token id {token} has no embedding"
            )));
        }
        self.rope.cos_sin_into(at, &mut s.cos, &mut s.sin);
        let device = candle_core::Device::Cpu;
        let (nh, nkv, hd) = (self.heads, self.kv_heads, self.head_dim);
        for (i, l) in self.layers.iter().enumerate() {
            let l = match l {
                Step::Own(l) => l,
                Step::Cross(c) => {
                    if let Some(images) = images {
                        self.cross_layer(c, i, images, s)?;
                    }
                    continue;
                }
            };
            // x += o(attention(rope(q), rope(k), v)) of norm(x)
            rms_norm(&s.x, &l.attn_norm, self.eps, &mut s.xn);
            l.qkv.run(&s.xn, &mut s.act, &mut s.qkv);
            let at_q = l.qkv.offsets[0];
            let at_k = l.qkv.offsets[1];
            self.rope
                .rotate(&mut s.qkv[at_q..at_q + nh * hd], &s.cos, &s.sin);
            self.rope
                .rotate(&mut s.qkv[at_k..at_k + nkv * hd], &s.cos, &s.sin);
            let layer = cache.storage(i, nkv, hd, &device)?;
            let rows = layer.kv.dim(2)?;
            layer.handle.inplace_op1(&Attend {
                at,
                rows,
                kv_heads: nkv,
                keys: l.qkv.part(&s.qkv, 1),
                values: l.qkv.part(&s.qkv, 2),
                q: l.qkv.part(&s.qkv, 0),
                heads: nh,
                out: RefCell::new(&mut s.attn),
                parts: RefCell::new(&mut s.attention_parts),
            })?;
            l.o.run(&s.attn, &mut s.act, &mut s.proj);
            add(&mut s.x, &s.proj[..self.hidden]);
            // x += down(silu(gate) · up) of norm(x)
            self.mlp_into(&l.ffn_norm, &l.gate_up, &l.down, s);
            add(&mut s.x, &s.proj[..self.hidden]);
        }
        Ok(())
    }

    /// `down(silu(gate) · up)` of `norm(x)` into `s.proj`.
    fn mlp_into(&self, norm: &[f32], gate_up: &Proj, down: &Proj, s: &mut Scratch) {
        rms_norm(&s.x, norm, self.eps, &mut s.xn);
        gate_up.run(&s.xn, &mut s.act, &mut s.gate_up);
        swiglu_row(
            gate_up.part(&s.gate_up, 0),
            gate_up.part(&s.gate_up, 1),
            &mut s.mlp,
        );
        down.run(&s.mlp, &mut s.act, &mut s.proj);
    }

    /// A gated cross-attention layer (`layer`) on `s.x`, with the
    /// arithmetic of the general pass (`mllama/text.rs`): the query's
    /// heads normalized, attention over the image keys and values the
    /// token sees, each output scaled by its gate before it is added.
    fn cross_layer(
        &self,
        c: &CrossLayer,
        layer: usize,
        images: &dyn CrossKv,
        s: &mut Scratch,
    ) -> Result<()> {
        let (nh, hd) = (self.heads, self.head_dim);
        rms_norm(&s.x, &c.attn_norm, self.eps, &mut s.xn);
        c.q.run(&s.xn, &mut s.act, &mut s.qkv);
        // Each head normalized into `s.attn`, then back as the query.
        for (q, out) in s.qkv[..nh * hd]
            .chunks_exact(hd)
            .zip(s.attn.chunks_exact_mut(hd))
        {
            rms_norm(q, &c.q_norm, self.eps, out);
        }
        s.qkv[..nh * hd].copy_from_slice(&s.attn);
        let q = Heads {
            data: &s.qkv[..nh * hd],
            stride: hd,
            dims: (nh, 1, hd),
        };
        let op = DecodeAttention {
            scale: (hd as f32).powf(-0.5),
        };
        let (out, parts) = (&mut s.attn, &mut s.attention_parts);
        images.with(layer, &mut |kv| {
            match kv {
                KvViews::F32(k, v) => op.run_into(&q, &k, &v, out, parts)?,
                KvViews::F16(k, v) => op.run_into(&q, &k, &v, out, parts)?,
            }
            Ok(())
        })?;
        c.o.run(&s.attn, &mut s.act, &mut s.proj);
        gated_add(&mut s.x, &s.proj[..self.hidden], c.attn_gate);
        self.mlp_into(&c.ffn_norm, &c.gate_up, &c.down, s);
        gated_add(&mut s.x, &s.proj[..self.hidden], c.mlp_gate);
        Ok(())
    }
}

/// The buffers of one conversation's decoding steps.
#[derive(Debug)]
pub(crate) struct Scratch {
    /// The residual stream, `hidden`.
    x: Vec<f32>,
    /// Its normalized copy, `hidden`.
    xn: Vec<f32>,
    /// Q, K and V, group-padded.
    qkv: Vec<f32>,
    /// Attention output, `heads × head_dim`.
    attn: Vec<f32>,
    /// The output and down projections' results, group-padded `hidden`.
    proj: Vec<f32>,
    /// Gate and up, group-padded.
    gate_up: Vec<f32>,
    /// `silu(gate) · up`, `intermediate`.
    mlp: Vec<f32>,
    /// The position's rotation, `head_dim / 2` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Quantized activations.
    act: Activations,
    /// Keys every pool thread's attention scratch covers.
    attention_keys: usize,
    /// Attention's results for parts of KV heads, before they are joined.
    attention_parts: Vec<f32>,
}

impl Scratch {
    fn new(plan: &Plan) -> Self {
        // The widest result each buffer takes, over both kinds of layer.
        let widest = |own: fn(&Layer) -> usize, cross: fn(&CrossLayer) -> usize| {
            plan.layers
                .iter()
                .map(|l| match l {
                    Step::Own(l) => own(l),
                    Step::Cross(c) => cross(c),
                })
                .max()
                .unwrap_or(0)
        };
        let half = plan.head_dim / 2;
        Self {
            x: vec![0.0; plan.hidden],
            xn: vec![0.0; plan.hidden],
            qkv: vec![0.0; widest(|l| l.qkv.padded, |c| c.q.padded)],
            attn: vec![0.0; plan.heads * plan.head_dim],
            proj: vec![
                0.0;
                widest(
                    |l| l.o.padded.max(l.down.padded),
                    |c| c.o.padded.max(c.down.padded)
                )
            ],
            gate_up: vec![0.0; widest(|l| l.gate_up.padded, |c| c.gate_up.padded)],
            mlp: vec![0.0; plan.intermediate],
            cos: vec![0.0; half],
            sin: vec![0.0; half],
            // Room for the widest input (the down projection's).
            act: Activations::with_capacity(plan.intermediate.max(plan.hidden)),
            attention_keys: 0,
            attention_parts: Vec::with_capacity(crate::decode_attention::parts_values(
                plan.heads,
                plan.kv_heads,
                plan.head_dim,
                rayon::current_num_threads(),
            )),
        }
    }
}

/// `out = x / sqrt(mean(x²) + eps) · w`, with the arithmetic of candle's
/// `rms_norm` (a sequential f32 sum), which the general pass uses.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum2: f32 = x.iter().map(|v| v * v).sum();
    let m = (sum2 / x.len() as f32 + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = *v / m * *w;
    }
}

/// `x += y`.
fn add(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

/// `x += y · gate`, as the general pass computes `x + (y * gate)`.
fn gated_add(x: &mut [f32], y: &[f32], gate: f32) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y * gate;
    }
}

/// Position `at`'s keys and values, stored in place, then its attention
/// over positions `0..=at`, into `out`. Applied to a layer's one-element
/// handle ([`crate::llama::LayerKv`]): the storage is the layer's
/// `(2, kv_heads, rows, head_dim)` keys and values, f16 or f32.
struct Attend<'a> {
    at: usize,
    /// Rows per head in the storage.
    rows: usize,
    kv_heads: usize,
    keys: &'a [f32],
    values: &'a [f32],
    q: &'a [f32],
    heads: usize,
    out: RefCell<&'a mut [f32]>,
    parts: RefCell<&'a mut Vec<f32>>,
}

impl Attend<'_> {
    fn run<T: Rows>(&self, kv: &mut [T], store: fn(&[f32], &mut [T])) -> candle_core::Result<()> {
        let name = self.name();
        let (nkv, cap, at) = (self.kv_heads, self.rows, self.at);
        let hd = self.keys.len() / nkv.max(1);
        let plane = nkv * cap * hd;
        if nkv == 0
            || hd == 0
            || at >= cap
            || kv.len() != 2 * plane
            || self.keys.len() != nkv * hd
            || self.values.len() != nkv * hd
            || self.q.len() != self.heads * hd
        {
            candle_core::bail!("{name}: keys, values and queries do not fit the cache")
        }
        let (keys, values) = kv.split_at_mut(plane);
        for (h, (k, v)) in self
            .keys
            .chunks_exact(hd)
            .zip(self.values.chunks_exact(hd))
            .enumerate()
        {
            let row = (h * cap + at) * hd;
            store(k, &mut keys[row..row + hd]);
            store(v, &mut values[row..row + hd]);
        }
        // The first `at + 1` rows of every head, heads `cap` rows apart.
        let span = (nkv - 1) * cap * hd + (at + 1) * hd;
        fn view<T>(
            data: &[T],
            span: usize,
            stride: usize,
            dims: (usize, usize, usize),
        ) -> Heads<'_, T> {
            Heads {
                data: &data[..span],
                stride,
                dims,
            }
        }
        let dims = (nkv, at + 1, hd);
        let q = Heads {
            data: self.q,
            stride: hd,
            dims: (self.heads, 1, hd),
        };
        let op = DecodeAttention {
            scale: (hd as f32).powf(-0.5),
        };
        op.run_into(
            &q,
            &view(keys, span, cap * hd, dims),
            &view(values, span, cap * hd, dims),
            &mut self.out.borrow_mut(),
            &mut self.parts.borrow_mut(),
        )
    }
}

impl InplaceOp1 for Attend<'_> {
    fn name(&self) -> &'static str {
        "lumen-decode-attend"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, _handle: &Layout) -> candle_core::Result<()> {
        match storage {
            CpuStorage::F16(kv) => self.run::<f16>(kv, narrow),
            CpuStorage::F32(kv) => self.run::<f32>(kv, |src, dst| dst.copy_from_slice(src)),
            _ => candle_core::bail!("{}: the cache must be f16 or f32", self.name()),
        }
    }
}
