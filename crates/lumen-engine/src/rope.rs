//! Rotary position embeddings, including Llama 3's long-context scaling.
//!
//! Reference: transformers' `modeling_rope_utils.py`
//! (`_compute_default_rope_parameters`, `_compute_llama3_parameters`) and
//! llama.cpp's `rope_freqs.weight` convention (θᵢ divided by `freq_factors[i]`).

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::config::{RopeConfig, RopeScaling};
use crate::error::Result;

/// Precomputed inverse frequencies for one model.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    /// Positions are divided by this (linear scaling), else 1.
    position_scale: f32,
    interleaved: bool,
}

impl Rope {
    /// Frequencies for heads of width `head_dim`.
    pub fn new(cfg: &RopeConfig, head_dim: usize) -> Self {
        let half = head_dim / 2;
        // As transformers: base ** (arange(0, dim, 2) / dim), in f32.
        let base: Vec<f32> = (0..half)
            .map(|i| 1.0 / cfg.theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut position_scale = 1.0;
        let inv_freq = match &cfg.scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => {
                position_scale = *factor;
                base
            }
            RopeScaling::FreqFactors(factors) => {
                base.iter().zip(factors).map(|(f, d)| f / d).collect()
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => llama3_scale(
                &base,
                *factor,
                *low_freq_factor,
                *high_freq_factor,
                *original_max_position_embeddings as f32,
            ),
        };
        Self {
            inv_freq,
            position_scale,
            interleaved: cfg.interleaved,
        }
    }

    /// The inverse frequencies after scaling.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// `(cos, sin)`, each `(seq_len, head_dim / 2)`, for positions
    /// `start..start + seq_len`.
    pub fn cos_sin(
        &self,
        start: usize,
        seq_len: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = vec![0f32; seq_len * half];
        let mut sin = vec![0f32; seq_len * half];
        for ((pos, cos), sin) in (start..)
            .zip(cos.chunks_mut(half.max(1)))
            .zip(sin.chunks_mut(half.max(1)))
        {
            self.cos_sin_into(pos, cos, sin);
        }
        Ok((
            Tensor::from_vec(cos, (seq_len, half), device)?,
            Tensor::from_vec(sin, (seq_len, half), device)?,
        ))
    }

    /// The rotation of position `pos`: `head_dim / 2` cosines and sines.
    pub fn cos_sin_into(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        let p = pos as f32 / self.position_scale;
        for ((f, c), s) in self.inv_freq.iter().zip(cos).zip(sin) {
            let angle = p * f;
            *c = angle.cos();
            *s = angle.sin();
        }
    }

    /// Rotates one position's heads in place (`x` is `heads × head_dim`),
    /// with tables from [`Rope::cos_sin_into`]: the same arithmetic as
    /// candle's `rope` / `rope_i` kernels that [`Rope::apply`] uses.
    pub fn rotate(&self, x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = self.inv_freq.len();
        if half == 0 {
            return;
        }
        for head in x.chunks_exact_mut(2 * half) {
            for (i, (c, s)) in cos.iter().zip(sin).enumerate() {
                let (i1, i2) = if self.interleaved {
                    (2 * i, 2 * i + 1)
                } else {
                    (i, i + half)
                };
                let (x1, x2) = (head[i1], head[i2]);
                head[i1] = x1 * c - x2 * s;
                head[i2] = x1 * s + x2 * c;
            }
        }
    }

    /// Splits `x` `(1, seq, ≥ heads × head_dim)` — a projection's output,
    /// or a view of the first columns of one: rows may lie further apart
    /// than `heads × head_dim` — into heads and rotates them: `(1, heads,
    /// seq, head_dim)`, contiguous. On the CPU in one pass (no copy of the
    /// split heads), with [`Rope::rotate`]'s arithmetic; elsewhere a copy
    /// and [`Rope::apply`]. `cos` and `sin` are [`Rope::cos_sin`]'s for
    /// these positions.
    pub fn heads(&self, x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let half = self.inv_freq.len();
        let (b, _, width) = x.dims3()?;
        if x.device().is_cpu() && b == 1 && half > 0 && width == heads * 2 * half {
            return Ok(x.apply_op3_no_bwd(cos, sin, &RopeHeads { rope: self, heads })?);
        }
        let split = crate::llama::split_heads(x, heads, width / heads.max(1))?;
        self.apply(&split, cos, sin)
    }

    /// Rotates `x` of shape `(batch, heads, seq, head_dim)`.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let out = if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope(&x, cos, sin)?
        };
        Ok(out)
    }
}

/// [`Rope::heads`] on the CPU.
struct RopeHeads<'a> {
    rope: &'a Rope,
    heads: usize,
}

impl CustomOp3 for RopeHeads<'_> {
    fn name(&self) -> &'static str {
        "lumen-rope-heads"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        cos: &CpuStorage,
        cos_l: &Layout,
        sin: &CpuStorage,
        sin_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (CpuStorage::F32(x), CpuStorage::F32(cos), CpuStorage::F32(sin)) = (x, cos, sin) else {
            candle_core::bail!("{name}: x and the tables must be f32")
        };
        let half = self.rope.inv_freq.len();
        let hd = 2 * half;
        let (_, seq, width) = x_l.shape().dims3()?;
        let row_stride = x_l.stride()[1];
        fn table<'t>(t: &'t [f32], l: &Layout, len: usize) -> Option<&'t [f32]> {
            l.contiguous_offsets()
                .and_then(|(a, b)| t.get(a..b))
                .filter(|t| t.len() == len)
        }
        let (Some(cos), Some(sin)) = (table(cos, cos_l, seq * half), table(sin, sin_l, seq * half))
        else {
            candle_core::bail!("{name}: the tables must be contiguous ({seq}, {half})")
        };
        // The last row must lie within the storage (then every row does).
        let start = x_l.start_offset();
        let last = start + seq.saturating_sub(1) * row_stride;
        if x_l.stride()[2] != 1 || width != self.heads * hd || (seq > 0 && x.len() < last + width) {
            candle_core::bail!("{name}: x must be rows of {} values", self.heads * hd)
        }
        let mut out = vec![0f32; self.heads * seq * hd];
        out.par_chunks_mut(seq * hd)
            .enumerate()
            .for_each(|(h, out)| {
                for (t, out) in out.chunks_exact_mut(hd).enumerate() {
                    let at = start + t * row_stride + h * hd;
                    out.copy_from_slice(&x[at..at + hd]);
                    let tables = t * half..(t + 1) * half;
                    self.rope.rotate(out, &cos[tables.clone()], &sin[tables]);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((1, self.heads, seq, hd))))
    }
}

/// Llama 3.1's scaling: long wavelengths are slowed by `factor`, short ones
/// kept, and the band between is interpolated smoothly.
fn llama3_scale(base: &[f32], factor: f32, low: f32, high: f32, original: f32) -> Vec<f32> {
    let low_freq_wavelen = original / low;
    let high_freq_wavelen = original / high;
    base.iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scaling: RopeScaling) -> RopeConfig {
        RopeConfig {
            theta: 500_000.0,
            scaling,
            interleaved: false,
        }
    }

    #[test]
    fn llama3_scaling_matches_the_three_bands() {
        let plain = Rope::new(&cfg(RopeScaling::None), 128);
        let scaled = Rope::new(
            &cfg(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }),
            128,
        );
        // Highest frequency (wavelength 2π) untouched, lowest divided by 8.
        assert_eq!(plain.inv_freq()[0], scaled.inv_freq()[0]);
        let last = plain.inv_freq().len() - 1;
        assert!((plain.inv_freq()[last] / 8.0 - scaled.inv_freq()[last]).abs() < 1e-12);
        // Every scaled frequency lies between f/8 and f.
        for (p, s) in plain.inv_freq().iter().zip(scaled.inv_freq()) {
            assert!(*s <= *p && *s >= p / 8.0 - 1e-12);
        }
    }

    /// Splitting and rotating in one pass gives candle's kernels' values
    /// after a split, bit for bit, from a view of a wider projection, in
    /// both layouts; a width that is not whole heads is an error.
    #[test]
    fn heads_split_and_rotate_like_candle() {
        let dev = Device::Cpu;
        let (seq, heads, hd, extra) = (7, 3, 8, 5);
        let width = heads * hd + extra;
        let values: Vec<f32> = (0..seq * width).map(|i| (i as f32 * 0.731).sin()).collect();
        let wide = Tensor::from_vec(values, (1, seq, width), &dev).expect("x");
        let x = wide.narrow(2, 0, heads * hd).expect("view");
        for interleaved in [false, true] {
            let rope = Rope::new(
                &RopeConfig {
                    theta: 10_000.0,
                    scaling: RopeScaling::None,
                    interleaved,
                },
                hd,
            );
            let (cos, sin) = rope.cos_sin(11, seq, &dev).expect("tables");
            let got = rope.heads(&x, heads, &cos, &sin).expect("heads");
            let split = x
                .reshape((1, seq, heads, hd))
                .and_then(|t| t.transpose(1, 2)?.contiguous())
                .expect("split");
            let want = rope.apply(&split, &cos, &sin).expect("apply");
            assert_eq!(got.dims(), [1, heads, seq, hd]);
            let flat = |t: &Tensor| {
                t.flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("flat")
            };
            assert_eq!(flat(&got), flat(&want), "interleaved: {interleaved}");
        }
        let rope = Rope::new(&cfg(RopeScaling::None), hd);
        let (cos, sin) = rope.cos_sin(0, seq, &dev).expect("tables");
        assert!(
            rope.heads(&wide, heads, &cos, &sin).is_err(),
            "not whole heads"
        );
    }

    #[test]
    fn freq_factors_divide() {
        let r = Rope::new(&cfg(RopeScaling::FreqFactors(vec![1.0, 2.0])), 4);
        let plain = Rope::new(&cfg(RopeScaling::None), 4);
        assert_eq!(r.inv_freq()[0], plain.inv_freq()[0]);
        assert_eq!(r.inv_freq()[1], plain.inv_freq()[1] / 2.0);
    }
}
