//! The Llama 3.2 Vision text decoder: Llama 3.1 blocks with gated
//! cross-attention layers at `cross_attention_layers`.
//!
//! Reference: Meta's `CrossAttention` / `CrossAttentionTransformerBlock`
//! (`llama_models/llama3/multimodal/model.py`) and transformers'
//! `MllamaCrossAttentionDecoderLayer`. As in Meta's code, a token row that
//! sees no image (text before the first `<|image|>`) gets no contribution
//! from a cross-attention layer at all (transformers 4.x/5.x still adds the
//! attention output there).
//!
//! The self-attention blocks are the text model's own [`crate::llama`]
//! blocks; the image keys and values of each cross-attention layer are
//! computed once per image set ([`TextModel::image_context`]), kept in the
//! KV cache's dtype (f16 by default), and reused for every token generated.

use candle_core::{DType, Device, Tensor};

use crate::decode::{CrossKv, CrossParts, OnKv, Parts, Plan};
use crate::error::Result;
use crate::f16::{KvViews, Narrow};
use crate::llama::{
    Block, KvCache, KvDtype, Logits, Mlp, Positions, RmsNorm, attention, check_tokens, copy_logits,
    decode_attention, output_logits, split_heads,
};
use crate::mllama::config::MllamaConfig;
use crate::rope::Rope;
use crate::weights::{EmbeddingTable, Linear, TensorName, WeightSource};

/// Extra embedding rows past the text vocabulary (`<|image|>` is the first).
const EXTRA_EMBEDDINGS: usize = 8;

struct CrossAttention {
    q: Linear,      // (heads * hd, hidden)
    k: Linear,      // (kv_heads * hd, hidden)
    v: Linear,      // (kv_heads * hd, hidden)
    o: Linear,      // (hidden, heads * hd)
    q_norm: Tensor, // (hd)
    k_norm: Tensor, // (hd)
    eps: f32,
    heads: usize,
    kv_heads: usize,
    hd: usize,
}

struct CrossBlock {
    attn_norm: RmsNorm,
    attn: CrossAttention,
    attn_gate: f64,
    ffn_norm: RmsNorm,
    mlp: Mlp,
    mlp_gate: f64,
}

enum DecoderLayer {
    SelfAttn(Block),
    CrossAttn(CrossBlock),
}

/// Image keys/values for every cross-attention layer, plus which vision
/// tokens each image owns.
pub struct ImageContext {
    /// Per layer: `(k, v)` of shape `(1, kv_heads, vision_tokens, hd)`.
    kv: Vec<Option<(Tensor, Tensor)>>,
    /// Vision tokens per image (`tiles × (P + 1)`).
    tokens_per_image: usize,
    /// `(P + 1)`: tokens per tile.
    tokens_per_tile: usize,
    /// Tiles in use per image.
    num_tiles: Vec<usize>,
    max_tiles: usize,
}

/// The decoder of a Llama 3.2 Vision checkpoint.
pub struct TextModel {
    embed: EmbeddingTable,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    cfg: MllamaConfig,
    device: Device,
    /// The single-token pass, where every weight allows it.
    decode: Option<Plan>,
}

/// What a token's row of the cross-attention mask lets it see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// No image: cross-attention layers add nothing.
    Nothing,
    /// The first `n` vision tokens of every head (one image's used tiles).
    Prefix(usize),
    /// Anything else (several images): the general pass's mask.
    Masked,
}

impl ImageContext {
    /// What a token attending to the images marked in `row` sees.
    fn seen(&self, row: &[bool]) -> Seen {
        match (row, &self.num_tiles[..]) {
            _ if !row.iter().any(|&r| r) => Seen::Nothing,
            ([true], &[tiles]) if tiles > 0 => {
                Seen::Prefix(tiles.min(self.max_tiles) * self.tokens_per_tile)
            }
            _ => Seen::Masked,
        }
    }
}

/// Layer keys and values limited to the first `tokens` vision tokens (for
/// the single-token pass).
struct PrefixKv<'a> {
    ctx: &'a ImageContext,
    tokens: usize,
}

impl CrossKv for PrefixKv<'_> {
    fn tokens(&self) -> usize {
        self.tokens
    }

    fn with(&self, layer: usize, f: &mut OnKv<'_>) -> Result<()> {
        let name = "lumen-cross-attend";
        let Some(Some((k, v))) = self.ctx.kv.get(layer) else {
            return Err(crate::error::EngineError::InvalidArgument(format!(
                "layer {layer} has no image keys and values"
            )));
        };
        let (k_s, k_l) = k.storage_and_layout();
        let (v_s, v_l) = v.storage_and_layout();
        let (candle_core::Storage::Cpu(kd), candle_core::Storage::Cpu(vd)) = (&*k_s, &*v_s) else {
            return Err(crate::error::EngineError::InvalidArgument(
                "image keys and values must be on the CPU".into(),
            ));
        };
        // Each head's first `tokens` rows (no narrowed tensor: a step
        // allocates nothing).
        match KvViews::of(name, kd, k_l, vd, v_l)?.first_rows(self.tokens) {
            Some(kv) => f(kv),
            None => Err(crate::error::EngineError::InvalidArgument(format!(
                "{name}: {} of {} vision tokens",
                self.tokens,
                k_l.dims().get(2).copied().unwrap_or(0)
            ))),
        }
    }
}

impl TextModel {
    /// Loads `language_model.*` (the source's prefix must be
    /// `language_model.model.`), calling `on_layer` after each layer.
    pub fn load(
        w: &WeightSource,
        cfg: &MllamaConfig,
        dev: &Device,
        on_layer: &mut dyn FnMut(),
    ) -> Result<Self> {
        let t = &cfg.text;
        let (h, hd) = (t.hidden_size, t.head_dim);
        let mut layers = Vec::with_capacity(t.num_layers);
        for i in 0..t.num_layers {
            if !cfg.cross_attention_layers.contains(&i) {
                layers.push(DecoderLayer::SelfAttn(Block::load(w, i, t, dev)?));
                on_layer();
                continue;
            }
            let key = |n: &str| format!("language_model.model.layers.{i}.{n}");
            let gate = |n: &str| w.tanh_gate(&key(n), dev);
            let norm = |n: &str| -> Result<Tensor> {
                Ok(w.dense_by_key(&key(n), &[hd], dev)?.to_dtype(DType::F32)?)
            };
            let attn = CrossAttention {
                q: w.linear_by_key(&key("cross_attn.q_proj.weight"), (t.num_heads * hd, h), dev)?,
                // K and V only ever see the image's thousands of states.
                k: w.linear_by_key(
                    &key("cross_attn.k_proj.weight"),
                    (t.num_kv_heads * hd, h),
                    dev,
                )?,
                v: w.linear_by_key(
                    &key("cross_attn.v_proj.weight"),
                    (t.num_kv_heads * hd, h),
                    dev,
                )?,
                o: w.linear_by_key(&key("cross_attn.o_proj.weight"), (h, t.num_heads * hd), dev)?,
                q_norm: norm("cross_attn.q_norm.weight")?,
                k_norm: norm("cross_attn.k_norm.weight")?,
                eps: t.rms_norm_eps as f32,
                heads: t.num_heads,
                kv_heads: t.num_kv_heads,
                hd,
            };
            layers.push(DecoderLayer::CrossAttn(CrossBlock {
                attn_norm: RmsNorm::load(w, TensorName::AttnNorm(i), t, dev)?,
                attn,
                attn_gate: gate("cross_attn_attn_gate")?,
                ffn_norm: RmsNorm::load(w, TensorName::FfnNorm(i), t, dev)?,
                mlp: Mlp::load(w, i, t, dev)?,
                mlp_gate: gate("cross_attn_mlp_gate")?,
            }));
            on_layer();
        }
        let embed = w.embedding(
            TensorName::TokenEmbedding,
            (t.vocab_size + EXTRA_EMBEDDINGS, h),
            dev,
        )?;
        let norm = RmsNorm::load(w, TensorName::OutputNorm, t, dev)?;
        let lm_head = w.linear_by_key("language_model.lm_head.weight", (t.vocab_size, h), dev)?;
        let rope = Rope::new(&t.rope, hd);
        let parts = layers.iter().map(|l| match l {
            DecoderLayer::SelfAttn(b) => Parts::Own(b.parts()),
            DecoderLayer::CrossAttn(c) => {
                let (gate_up, down) = c.mlp.parts();
                Parts::Cross(CrossParts {
                    attn_norm: &c.attn_norm,
                    q: &c.attn.q,
                    q_norm: &c.attn.q_norm,
                    o: &c.attn.o,
                    attn_gate: c.attn_gate,
                    ffn_norm: &c.ffn_norm,
                    gate_up,
                    down,
                    mlp_gate: c.mlp_gate,
                })
            }
        });
        let decode = Plan::new(t, parts, &embed, &norm, &lm_head, &rope);
        Ok(Self {
            embed,
            layers,
            norm,
            lm_head,
            rope,
            cfg: cfg.clone(),
            device: dev.clone(),
            decode,
        })
    }

    /// Whether [`TextModel::forward_one_into`] can take the single-token
    /// pass (`decode.rs`).
    pub fn has_decode_pass(&self) -> bool {
        self.decode.is_some()
    }

    /// Runs one token after what `cache` holds and writes the next token's
    /// logits into `logits`: the decoding step. Takes the single-token pass
    /// where the weights allow it and the token sees no image or one
    /// image's tiles (allocating nothing after the first step), else
    /// [`TextModel::forward`]. `rows` is the token's row, as for
    /// [`TextModel::forward`].
    pub fn forward_one_into(
        &self,
        token: u32,
        cache: &mut KvCache,
        images: Option<(&ImageContext, &[Vec<bool>])>,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        if let Some(plan) = &self.decode {
            let seen = match images {
                None => Seen::Nothing,
                Some((ctx, [row])) => ctx.seen(row),
                Some(_) => Seen::Masked,
            };
            match (seen, images) {
                (Seen::Nothing, _) => return plan.step(token, cache, None, logits),
                (Seen::Prefix(tokens), Some((ctx, _))) => {
                    return plan.step(token, cache, Some(&PrefixKv { ctx, tokens }), logits);
                }
                _ => {}
            }
        }
        copy_logits(
            &self.forward(&[token], cache, images, Logits::Last)?,
            logits,
        )
    }

    /// Keys and values of every cross-attention layer for the projected
    /// vision states of the images, each `(tiles, P + 1, hidden)`, kept as
    /// `kv_dtype` asks (f16 on the CPU halves them: 0.21 GB instead of 0.42 for
    /// the 11B's 4-tile image, read again for every generated token).
    pub fn image_context(
        &self,
        images: &[(Tensor, usize)],
        kv_dtype: KvDtype,
    ) -> Result<ImageContext> {
        let states: Vec<Tensor> = images
            .iter()
            .map(|(s, _)| s.flatten_to(1))
            .collect::<candle_core::Result<_>>()?;
        let tokens_per_image = states.first().map(|s| s.dim(0)).transpose()?.unwrap_or(0);
        let all = Tensor::cat(&states, 0)?.unsqueeze(0)?; // (1, images * tiles * (P+1), hidden)
        let mut kv = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            kv.push(match layer {
                DecoderLayer::CrossAttn(c) => {
                    let a = &c.attn;
                    let keep = |t: Tensor| -> Result<Tensor> {
                        Ok(match kv_dtype {
                            KvDtype::F16 if t.device().is_cpu() => t.apply_op1_no_bwd(&Narrow)?,
                            _ => t,
                        })
                    };
                    let k = split_heads(&a.k.forward(&all)?, a.kv_heads, a.hd)?;
                    let k = candle_nn::ops::rms_norm(&k, &a.k_norm, a.eps)?;
                    let v = split_heads(&a.v.forward(&all)?, a.kv_heads, a.hd)?;
                    Some((keep(k)?, keep(v)?))
                }
                DecoderLayer::SelfAttn(_) => None,
            });
        }
        Ok(ImageContext {
            kv,
            tokens_per_image,
            tokens_per_tile: self.cfg.patches_per_tile(),
            num_tiles: images.iter().map(|(_, n)| *n).collect(),
            max_tiles: self.cfg.vision.max_num_tiles,
        })
    }

    /// Runs `tokens` after what `cache` holds. `rows[i]` lists, for token
    /// `i`, whether it attends to each image (from
    /// [`crate::mllama::masks`]); with no images, cross-attention layers are
    /// skipped.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        images: Option<(&ImageContext, &[Vec<bool>])>,
        logits: Logits,
    ) -> Result<Tensor> {
        let seq = tokens.len();
        check_tokens(tokens, self.cfg.text.vocab_size + EXTRA_EMBEDDINGS)?;
        cache.reserve(seq)?;
        let start = cache.len();
        let mut x = self
            .embed
            .lookup(&Tensor::new(tokens, &self.device)?)?
            .unsqueeze(0)?;
        let pos = Positions::new(&self.rope, start, seq, &self.device)?;
        let cross = images
            .map(|(ctx, rows)| cross_masks(ctx, rows, &self.device))
            .transpose()?;
        // One token that sees one image's tiles reads them through the
        // fused decoding attention, as the single-token pass does.
        let seen = match images {
            Some((ctx, [row])) if seq == 1 && self.device.is_cpu() => ctx.seen(row),
            _ => Seen::Masked,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            x = match (layer, images, &cross) {
                (DecoderLayer::SelfAttn(b), _, _) => b.forward(&x, &pos, cache, i)?,
                (DecoderLayer::CrossAttn(c), Some((ctx, _)), Some((mask, has_image))) => {
                    match (&ctx.kv[i], seen) {
                        (Some(kv), Seen::Prefix(n)) => c.forward(&x, kv, Sight::Prefix(n))?,
                        (Some(kv), _) => c.forward(&x, kv, Sight::Masked { mask, has_image })?,
                        (None, _) => x,
                    }
                }
                (DecoderLayer::CrossAttn(_), _, _) => x,
            };
        }
        cache.advance(seq);
        output_logits(&x, &self.norm, &self.lm_head, logits)
    }
}

/// How a cross-attention layer's rows see the vision tokens.
enum Sight<'a> {
    /// Through the additive mask `(seq, vision_tokens)` (0/-inf), with
    /// `has_image` `(seq, 1)` (1/0) zeroing the rows that see no image.
    Masked {
        mask: &'a Tensor,
        has_image: &'a Tensor,
    },
    /// One token that sees the first `n` vision tokens (one image's used
    /// tiles): the fused decoding attention over them, as the single-token
    /// pass computes it, and no row to zero.
    Prefix(usize),
}

impl CrossBlock {
    fn forward(&self, x: &Tensor, kv: &(Tensor, Tensor), sight: Sight<'_>) -> Result<Tensor> {
        let a = &self.attn;
        let h = self.attn_norm.forward(x)?;
        let q = split_heads(&a.q.forward(&h)?, a.heads, a.hd)?;
        let q = candle_nn::ops::rms_norm(&q, &a.q_norm, a.eps)?;
        let (k, v) = kv;
        let (out, has_image) = match sight {
            // `attention` widens f16 keys and values for its matmuls (one
            // layer's at a time), as it does a prompt's f16 cache.
            Sight::Masked { mask, has_image } => {
                (attention(&q, k, v, Some(mask))?, Some(has_image))
            }
            Sight::Prefix(n) => (
                decode_attention(&q, &k.narrow(2, 0, n)?, &v.narrow(2, 0, n)?)?,
                None,
            ),
        };
        // Rows that see no image get nothing from this layer (Meta).
        let seen_only = |t: Tensor| -> Result<Tensor> {
            Ok(match has_image {
                Some(has_image) => t.broadcast_mul(has_image)?,
                None => t,
            })
        };
        let out = seen_only(a.o.forward(&out)?)?;
        let x = (x + (out * self.attn_gate)?)?;
        let m = seen_only(self.mlp.forward(&self.ffn_norm.forward(&x)?)?)?;
        Ok((&x + (m * self.mlp_gate)?)?)
    }
}

/// The additive vision mask `(seq, vision_tokens)` and the row indicator
/// `(seq, 1)`. A row sees the used tiles of the images it attends to; rows
/// that see none attend uniformly (their output is zeroed anyway, and this
/// keeps the softmax finite).
fn cross_masks(
    ctx: &ImageContext,
    rows: &[Vec<bool>],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let n = ctx.tokens_per_image * ctx.num_tiles.len();
    let mut mask = vec![0f32; rows.len() * n];
    let mut has = vec![0f32; rows.len()];
    for (r, row) in rows.iter().enumerate() {
        if !row.iter().any(|x| *x) {
            continue;
        }
        has[r] = 1.0;
        for (img, &tiles) in ctx.num_tiles.iter().enumerate() {
            for t in 0..ctx.max_tiles {
                let visible = row.get(img).copied().unwrap_or(false) && t < tiles;
                let at = r * n + img * ctx.tokens_per_image + t * ctx.tokens_per_tile;
                if !visible {
                    mask[at..at + ctx.tokens_per_tile].fill(f32::NEG_INFINITY);
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(mask, (rows.len(), n), device)?,
        Tensor::from_vec(has, (rows.len(), 1), device)?.unsqueeze(0)?,
    ))
}
