//! The Llama 3.2 Vision image encoder and multi-modal projector.
//!
//! Reference: Meta's `llama_models/llama3/multimodal/model.py`
//! (`VisionEncoder`), which the checkpoints were trained with, and
//! transformers' `MllamaVisionModel`. Where they disagree we follow Meta:
//! the intermediate features are the *inputs* of the listed local layers
//! (as transformers 4.x did; transformers 5 takes the outputs, one layer
//! later).
//!
//! Per image, with `T` tile slots of `S×S` pixels and `P` patches per tile:
//!
//! 1. patch convolution, plus the gated pre-tile aspect-ratio embedding;
//! 2. a class token per tile, plus the gated positional and tile-positional
//!    embeddings, then LayerNorm;
//! 3. each tile's `P + 1` tokens padded to a multiple of 8, and all tiles run
//!    as one sequence through the local layers (a pair of padding tokens is
//!    masked; real tokens still see padding);
//! 4. LayerNorm, the post-tile embedding, and the gated global layers;
//! 5. padding dropped, the final state concatenated with the intermediate
//!    features, and the projector to the text model's width.

use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::gelu::bias_gelu;
use crate::llama::{attention, split_heads};
use crate::mllama::config::MllamaConfig;
use crate::prefill_attention::{Mask, PrefillAttention};
use crate::residual::residual;
use crate::weights::{Linear, WeightSource};

/// Loads `prefix + name` as f32, checking its shape.
struct Loader<'a> {
    source: &'a WeightSource,
    device: &'a Device,
}

impl Loader<'_> {
    fn get(&self, key: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self
            .source
            .dense_by_key(key, shape, self.device)?
            .to_dtype(DType::F32)?)
    }

    /// In its stored dtype if that is a 16-bit float, else f32.
    fn get_stored(&self, key: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.source.dense_by_key(key, shape, self.device)?;
        Ok(match t.dtype() {
            DType::BF16 | DType::F16 => t,
            _ => t.to_dtype(DType::F32)?,
        })
    }

    /// A linear layer, quantized at load when the source's options ask.
    fn linear(&self, key: &str, out: usize, inp: usize, bias: bool) -> Result<Affine> {
        Ok(Affine {
            w: self
                .source
                // Lumen's kernels on the compact blocks: candle's repacked
                // ones (AMX) were 11% faster on these batches of thousands
                // of patches, but their tiles added 1 GB, which with the
                // recycled buffers took the 11B past 8 GB at its peak.
                .linear_by_key(&format!("{key}.weight"), (out, inp), self.device)?,
            b: bias
                .then(|| self.get(&format!("{key}.bias"), &[out]))
                .transpose()?,
        })
    }

    fn layer_norm(&self, key: &str, dim: usize, eps: f64) -> Result<candle_nn::LayerNorm> {
        Ok(candle_nn::LayerNorm::new(
            self.get(&format!("{key}.weight"), &[dim])?,
            self.get(&format!("{key}.bias"), &[dim])?,
            eps,
        ))
    }

    /// `tanh` of a one-element gate parameter.
    fn gate(&self, key: &str) -> Result<f64> {
        self.source.tanh_gate(key, self.device)
    }
}

fn fwd(m: &impl candle_core::Module, x: &Tensor) -> Result<Tensor> {
    Ok(m.forward(x)?)
}

/// `x · Wᵀ + b`.
struct Affine {
    w: Linear,
    b: Option<Tensor>,
}

impl Affine {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.w.forward(x)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `gelu(self(x))`, the bias and the activation in one pass.
    fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        bias_gelu(self.w.forward(x)?, self.b.as_ref())
    }
}

/// One encoder layer; the global ones scale both branches by tanh gates.
struct EncoderLayer {
    ln_attn: candle_nn::LayerNorm,
    q: Affine, // (hidden, hidden), no bias
    k: Affine,
    v: Affine,
    o: Affine,
    ln_mlp: candle_nn::LayerNorm,
    fc1: Affine, // (intermediate, hidden)
    fc2: Affine, // (hidden, intermediate)
    gates: Option<(f64, f64)>,
    heads: usize,
}

impl EncoderLayer {
    fn load(l: &Loader<'_>, key: &str, cfg: &MllamaConfig, gated: bool) -> Result<Self> {
        let v = &cfg.vision;
        let (h, m) = (v.hidden_size, v.intermediate_size);
        let attn = |n: &str| l.linear(&format!("{key}.self_attn.{n}"), h, h, false);
        Ok(Self {
            ln_attn: l.layer_norm(&format!("{key}.input_layernorm"), h, v.norm_eps)?,
            q: attn("q_proj")?,
            k: attn("k_proj")?,
            v: attn("v_proj")?,
            o: attn("o_proj")?,
            ln_mlp: l.layer_norm(&format!("{key}.post_attention_layernorm"), h, v.norm_eps)?,
            fc1: l.linear(&format!("{key}.mlp.fc1"), m, h, true)?,
            fc2: l.linear(&format!("{key}.mlp.fc2"), h, m, true)?,
            gates: gated
                .then(|| {
                    Ok::<_, EngineError>((
                        l.gate(&format!("{key}.gate_attn"))?,
                        l.gate(&format!("{key}.gate_ffn"))?,
                    ))
                })
                .transpose()?,
            heads: v.attention_heads,
        })
    }

    /// `x` is `(1, seq, hidden)`.
    fn forward(&self, x: &Tensor, mask: &EncoderMask) -> Result<Tensor> {
        self.forward_in_chunks(x, mask, MLP_CHUNK)
    }

    /// [`EncoderLayer::forward`], the MLP `mlp_chunk` tokens at a time.
    fn forward_in_chunks(
        &self,
        x: &Tensor,
        mask: &EncoderMask,
        mlp_chunk: usize,
    ) -> Result<Tensor> {
        let hd = x.dim(2)? / self.heads;
        let h = fwd(&self.ln_attn, x)?;
        let split = |l: &Affine| split_heads(&l.forward(&h)?, self.heads, hd);
        let attn = mask.attention(&split(&self.q)?, &split(&self.k)?, &split(&self.v)?)?;
        let attn = self.o.forward(&attn)?;
        // Ungated layers add their branches as they are (no pass that
        // multiplies by one), into the branch's own buffer.
        let gate = |branch: Tensor, g: Option<f64>| match g {
            Some(g) => Ok::<_, EngineError>((branch * g)?),
            None => Ok(branch),
        };
        let (ga, gf) = self.gates.unzip();
        let x = residual(x, gate(attn, ga)?)?;
        let h = fwd(&self.ln_mlp, &x)?;
        // The MLP a chunk of tokens at a time: each row is computed alone,
        // so the result is the same, and the 4×-wide intermediate of a
        // 4-tile image (132 MB, twice) becomes buffers the allocator keeps
        // instead of fresh pages for every layer.
        let seq = h.dim(1)?;
        let mlp_chunk = mlp_chunk.max(1);
        let mut parts = Vec::with_capacity(seq.div_ceil(mlp_chunk));
        for start in (0..seq).step_by(mlp_chunk) {
            let part = h.narrow(1, start, mlp_chunk.min(seq - start))?;
            parts.push(self.fc2.forward(&self.fc1.forward_gelu(&part)?)?);
        }
        let mlp = Tensor::cat(&parts, 1)?;
        residual(&x, gate(mlp, gf)?)
    }
}

/// Tokens per chunk of the encoder's MLP.
const MLP_CHUNK: usize = 1024;

/// A per-aspect-ratio embedding added to every tile, scaled by a tanh gate.
struct TileEmbedding {
    table: Tensor, // (max_aspect_ratio_id + 1, max_tiles * hidden)
    gate: f64,
}

impl TileEmbedding {
    fn load(l: &Loader<'_>, key: &str, rows: usize, width: usize) -> Result<Self> {
        Ok(Self {
            table: l.get(&format!("{key}.embedding.weight"), &[rows, width])?,
            gate: l.gate(&format!("{key}.gate"))?,
        })
    }

    /// Adds to `x` of shape `(tiles, tokens, hidden)`.
    fn add(&self, x: &Tensor, aspect_ratio_id: usize) -> Result<Tensor> {
        let (tiles, _, hidden) = x.dims3()?;
        let e = (self
            .table
            .get(aspect_ratio_id)?
            .reshape((tiles, 1, hidden))?
            * self.gate)?;
        Ok(x.broadcast_add(&e)?)
    }
}

/// The image encoder plus projector of a Llama 3.2 Vision checkpoint.
pub struct VisionModel {
    patch_embedding: Tensor,     // (hidden, channels, patch, patch)
    class_embedding: Tensor,     // (hidden)
    position_embedding: Tensor,  // (P + 1, hidden), already scaled by 1 - tanh(gate)
    tile_position_table: Tensor, // (max_aspect_ratio_id + 1, tiles * (P + 1) * hidden)
    tile_position_gate: f64,
    pre_tile: TileEmbedding,
    post_tile: TileEmbedding,
    ln_pre: candle_nn::LayerNorm,
    ln_post: candle_nn::LayerNorm,
    layers: Vec<EncoderLayer>,
    global_layers: Vec<EncoderLayer>,
    projector: Affine, // (text hidden, vision_output_dim)
    cfg: MllamaConfig,
    /// Attention products in bf16 where the CPU has them: the linear
    /// layers are quantized (their activations rounded to 8 bits), so the
    /// encoder keeps f32 precision only for dense checkpoints.
    bf16_attention: bool,
}

impl VisionModel {
    /// Loads `vision_model.*` and `multi_modal_projector.*`, calling
    /// `on_layer` after each encoder layer.
    pub fn load(
        source: &WeightSource,
        cfg: &MllamaConfig,
        device: &Device,
        on_layer: &mut dyn FnMut(),
    ) -> Result<Self> {
        let l = Loader { source, device };
        let v = &cfg.vision;
        let (h, tiles, patches) = (v.hidden_size, v.max_num_tiles, cfg.patches_per_tile());
        let ar_rows = cfg.aspect_ratio_count() + 1;
        let p = "vision_model";
        let pos_gate = l.gate(&format!("{p}.gated_positional_embedding.gate"))?;
        let mut layers = Vec::with_capacity(v.num_hidden_layers);
        for i in 0..v.num_hidden_layers {
            let key = format!("{p}.transformer.layers.{i}");
            layers.push(EncoderLayer::load(&l, &key, cfg, false)?);
            on_layer();
        }
        let mut global_layers = Vec::with_capacity(v.num_global_layers);
        for i in 0..v.num_global_layers {
            let key = format!("{p}.global_transformer.layers.{i}");
            global_layers.push(EncoderLayer::load(&l, &key, cfg, true)?);
            on_layer();
        }
        Ok(Self {
            patch_embedding: l.get(
                &format!("{p}.patch_embedding.weight"),
                &[h, v.num_channels, v.patch_size, v.patch_size],
            )?,
            class_embedding: l.get(&format!("{p}.class_embedding"), &[h])?,
            position_embedding: (l.get(
                &format!("{p}.gated_positional_embedding.embedding"),
                &[patches, h],
            )? * (1.0 - pos_gate))?,
            // 74M values (295 MB in f32) of which an image uses one row:
            // kept in the checkpoint's 16-bit type.
            tile_position_table: l.get_stored(
                &format!("{p}.gated_positional_embedding.tile_embedding.weight"),
                &[ar_rows, tiles * patches * h],
            )?,
            tile_position_gate: pos_gate,
            pre_tile: TileEmbedding::load(
                &l,
                &format!("{p}.pre_tile_positional_embedding"),
                ar_rows,
                tiles * h,
            )?,
            post_tile: TileEmbedding::load(
                &l,
                &format!("{p}.post_tile_positional_embedding"),
                ar_rows,
                tiles * h,
            )?,
            ln_pre: l.layer_norm(&format!("{p}.layernorm_pre"), h, 1e-5)?,
            ln_post: l.layer_norm(&format!("{p}.layernorm_post"), h, 1e-5)?,
            layers,
            global_layers,
            projector: l.linear(
                "multi_modal_projector",
                cfg.text.hidden_size,
                v.vision_output_dim,
                true,
            )?,
            cfg: cfg.clone(),
            bf16_attention: source.quantizes(),
        })
    }

    /// Encodes one image: `pixel_values` `(tiles, channels, S, S)` with its
    /// aspect-ratio id and tile mask; returns the vision features
    /// `(tiles, P + 1, vision_output_dim)` before the projector.
    pub fn encode(
        &self,
        pixel_values: &Tensor,
        aspect_ratio_id: usize,
        tile_mask: &[u8],
    ) -> Result<Tensor> {
        let v = &self.cfg.vision;
        let (tiles, hidden) = (v.max_num_tiles, v.hidden_size);
        if aspect_ratio_id == 0
            || aspect_ratio_id > self.cfg.aspect_ratio_count()
            || tile_mask.len() != tiles
        {
            return Err(EngineError::InvalidArgument(format!(
                "aspect ratio id {aspect_ratio_id} or tile mask invalid"
            )));
        }
        // Patches: (tiles, hidden, S/p, S/p) -> (tiles, P, hidden).
        let x = pixel_values.conv2d(&self.patch_embedding, 0, v.patch_size, 1, 1)?;
        let x = x.flatten_from(2)?.transpose(1, 2)?;
        let x = self.pre_tile.add(&x, aspect_ratio_id)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, hidden))?
            .repeat((tiles, 1, 1))?;
        let x = Tensor::cat(&[&cls, &x], 1)?; // (tiles, P + 1, hidden)
        let tokens = x.dim(1)?;
        let tile_pos = self
            .tile_position_table
            .get(aspect_ratio_id)?
            .to_dtype(DType::F32)?
            .reshape((tiles, tokens, hidden))?;
        let x =
            (x.broadcast_add(&self.position_embedding)? + (tile_pos * self.tile_position_gate)?)?;
        let x = fwd(&self.ln_pre, &x)?;

        // Pad each tile's tokens to a multiple of 8 and attend across tiles.
        let padded = tokens.div_ceil(8) * 8;
        let x = x.pad_with_zeros(1, 0, padded - tokens)?;
        let mask = EncoderMask::new(
            tile_mask,
            tokens,
            padded,
            v.hidden_size / v.attention_heads,
            self.bf16_attention,
            x.device(),
        )?;
        let mut h = x.reshape((1, tiles * padded, hidden))?;
        let mut intermediate = Vec::with_capacity(v.intermediate_layers_indices.len());
        for (i, layer) in self.layers.iter().enumerate() {
            if v.intermediate_layers_indices.contains(&i) {
                intermediate.push(h.clone());
            }
            h = layer.forward(&h, &mask)?;
        }
        let h = fwd(&self.ln_post, &h)?.reshape((tiles, padded, hidden))?;
        let mut h =
            self.post_tile
                .add(&h, aspect_ratio_id)?
                .reshape((1, tiles * padded, hidden))?;
        for layer in &self.global_layers {
            h = layer.forward(&h, &mask)?;
        }
        let unpad = |t: &Tensor| -> Result<Tensor> {
            Ok(t.reshape((tiles, padded, hidden))?.narrow(1, 0, tokens)?)
        };
        // Intermediate features are stacked on a new last axis and flattened,
        // so they interleave: feature h of layer j lands at h * k + j.
        let inter: Vec<Tensor> = intermediate.iter().map(unpad).collect::<Result<_>>()?;
        let inter = Tensor::stack(&inter, D::Minus1)?.flatten_from(2)?;
        Ok(Tensor::cat(&[&unpad(&h)?, &inter], D::Minus1)?)
    }

    /// Encodes and projects to the text model's width:
    /// `(tiles, P + 1, text hidden)`.
    pub fn cross_attention_states(
        &self,
        pixel_values: &Tensor,
        aspect_ratio_id: usize,
        tile_mask: &[u8],
    ) -> Result<Tensor> {
        self.projector
            .forward(&self.encode(pixel_values, aspect_ratio_id, tile_mask)?)
    }
}

/// Which tokens of the encoder's sequence see which: all see all, except
/// that padding does not see padding (a padding tile, or a pad token past
/// the `tokens` real ones of a tile) — as Meta's
/// `build_encoder_attention_mask` and transformers'
/// `_prepare_aspect_ratio_attention_mask`.
struct EncoderMask {
    /// Per token of the sequence: padding.
    pad: Arc<[bool]>,
    /// The same as an additive `(T·N, T·N)` matrix (0, or −∞ where both
    /// tokens are padding), for the unfused attention; `None` where the
    /// fused kernel takes this head size (it reads `pad` instead, and the
    /// 165 MB matrix of a 4-tile image is never made).
    matrix: Option<Tensor>,
    /// The fused kernel may round its products' operands to bf16
    /// ([`PrefillAttention::bf16`]).
    bf16: bool,
}

impl EncoderMask {
    fn new(
        tile_mask: &[u8],
        tokens: usize,
        padded: usize,
        hd: usize,
        bf16: bool,
        device: &Device,
    ) -> Result<Self> {
        let pad: Arc<[bool]> = tile_mask
            .iter()
            .flat_map(|&m| (0..padded).map(move |i| m == 0 || i >= tokens))
            .collect();
        let matrix = if device.is_cpu() && PrefillAttention::supports(hd) {
            None
        } else {
            let n = pad.len();
            let mut mask = vec![0f32; n * n];
            for (i, &pi) in pad.iter().enumerate() {
                if pi {
                    for (j, &pj) in pad.iter().enumerate() {
                        if pj {
                            mask[i * n + j] = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            Some(Tensor::from_vec(mask, (n, n), device)?)
        };
        Ok(Self { pad, matrix, bf16 })
    }

    /// Attention of `q`, `k`, `v` `(1, heads, seq, hd)` under this mask;
    /// returns `(1, seq, heads · hd)`.
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        match &self.matrix {
            Some(matrix) => attention(q, k, v, Some(matrix)),
            None => PrefillAttention::attend_rounded(
                q,
                k,
                v,
                Mask::Padding(self.pad.clone()),
                self.bf16,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SplitMix64;

    /// `len` values drawn evenly from `[-width/2, width/2)`.
    fn uniform(seed: u64, len: usize, width: f32) -> Vec<f32> {
        let mut rng = SplitMix64(seed);
        (0..len)
            .map(|_| (rng.next_f64() as f32 - 0.5) * width)
            .collect()
    }

    /// The fused padding attention the encoder takes for the real models'
    /// head size (80) gives what the additive-matrix path gives: two real
    /// tiles of 37 tokens padded to 40, then two padding tiles.
    #[test]
    fn fused_encoder_attention_matches_the_mask_matrix() {
        let dev = Device::Cpu;
        let (tile_mask, tokens, padded, heads, hd) = ([1u8, 1, 0, 0], 37, 40, 2, 80);
        let fused = EncoderMask::new(&tile_mask, tokens, padded, hd, false, &dev).expect("mask");
        if fused.matrix.is_some() {
            eprintln!("no fused kernel for head size {hd} here");
            return;
        }
        // The same mask, as the matrix the unfused path adds (any head
        // size without a kernel builds it).
        let unfused = EncoderMask::new(&tile_mask, tokens, padded, 12, false, &dev).expect("mask");
        let matrix = unfused.matrix.as_ref().expect("a matrix for head size 12");
        let n = 4 * padded;
        assert_eq!(matrix.dims(), &[n, n]);
        let rnd = |seed: u64| {
            let v = uniform(seed, heads * n * hd, 4.0);
            Tensor::from_vec(v, (1, heads, n, hd), &dev).expect("tensor")
        };
        let (q, k, v) = (rnd(1), rnd(2), rnd(3));
        let got = fused.attention(&q, &k, &v).expect("fused");
        let want = attention(&q, &k, &v, Some(matrix)).expect("unfused");
        assert_eq!(got.dims(), want.dims());
        let diff = (got - want)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .expect("diff");
        assert!(diff < 1e-4, "fused and unfused differ by {diff}");
    }

    /// An encoder layer of the real models' head size (80) computes the
    /// same, bit for bit, whether its MLP runs over the whole sequence or in
    /// chunks (of the default size, which splits these 1120 tokens, or 97).
    #[test]
    fn an_encoder_layer_is_the_same_with_its_mlp_in_chunks() {
        use crate::weights::DenseOptions;
        let dev = Device::Cpu;
        let mut cfg = MllamaConfig::llama32_11b_vision().expect("config");
        cfg.vision.hidden_size = 160;
        cfg.vision.attention_heads = 2;
        cfg.vision.intermediate_size = 640;
        let source = WeightSource::synthetic(
            "synthetic",
            "",
            3,
            DenseOptions {
                dtype: DType::F32,
                quantize: Some(candle_core::quantized::GgmlDType::Q8_0),
            },
        );
        let loader = Loader {
            source: &source,
            device: &dev,
        };
        let layer = EncoderLayer::load(&loader, "vision_model.transformer.layers.0", &cfg, true)
            .expect("layer");
        let mask = EncoderMask::new(&[1, 1, 1, 1], 277, 280, 80, false, &dev).expect("mask");
        let n = 4 * 280;
        assert!(n > MLP_CHUNK);
        let h = Tensor::from_vec(uniform(7, n * 160, 1.0), (1, n, 160), &dev).expect("x");
        let out = |chunk: usize| {
            layer
                .forward_in_chunks(&h, &mask, chunk)
                .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
                .expect("forward")
        };
        let whole = out(usize::MAX);
        assert_eq!(out(MLP_CHUNK), whole);
        assert_eq!(out(97), whole);
    }
}
