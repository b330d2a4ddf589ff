//! Attention for one new token (decoding) on the CPU, fused: for each KV
//! head, the scores of the query heads that share it, their softmax and
//! the weighted sum of values, reading the cached keys and values once, in
//! place, in parallel over KV heads.
//!
//! The general path (two batched matmuls around a softmax op) is built for
//! many query rows; for one it spends more on dispatch, a score tensor per
//! layer and passes over memory than on arithmetic, which is what decoding
//! at a depth of thousands of tokens is made of.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

use crate::softmax::softmax_row;

/// `softmax(scale · q · Kᵀ) · V` for `q` `(1, heads, 1, hd)` over `k`, `v`
/// `(1, kv_heads, len, hd)` (views of the KV cache: any offset and head
/// stride, rows of `hd` contiguous values). Every cached position is
/// visible (a decoding step's query is the newest position). Returns
/// `(1, heads, 1, hd)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecodeAttention {
    /// Applied to the scores before the softmax.
    pub scale: f32,
}

/// Values per vector step of the dot products.
const LANES: usize = 16;

/// A `(1, n, len, hd)` view of rows: its values from the first element,
/// the stride between heads, and `(n, len, hd)`.
struct Heads<'a> {
    data: &'a [f32],
    stride: usize,
    dims: (usize, usize, usize),
}

fn heads_of<'a>(
    name: &str,
    what: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<Heads<'a>> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{name}: {what} must be f32")
    };
    let (b, n, len, hd) = layout.shape().dims4()?;
    let stride = layout.stride();
    if b != 1 || stride[3] != 1 || (len > 1 && stride[2] != hd) {
        candle_core::bail!(
            "{name}: {what} {:?} with strides {stride:?} is not a view of rows",
            layout.dims()
        )
    }
    let head_stride = stride[1];
    let start = layout.start_offset();
    let end = start + (n - 1) * head_stride + len * hd;
    if n == 0 || end > data.len() {
        candle_core::bail!("{name}: {what} lies outside its storage")
    }
    Ok(Heads {
        data: &data[start..end],
        stride: head_stride,
        dims: (n, len, hd),
    })
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "lumen-decode-attention"
    }

    fn cpu_fwd(
        &self,
        q_s: &CpuStorage,
        q_l: &Layout,
        k_s: &CpuStorage,
        k_l: &Layout,
        v_s: &CpuStorage,
        v_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let Heads {
            data: q,
            stride: q_stride,
            dims: (nh, one, hd),
        } = heads_of(name, "q", q_s, q_l)?;
        let Heads {
            data: k,
            stride: k_stride,
            dims: (nkv, len, k_hd),
        } = heads_of(name, "k", k_s, k_l)?;
        let Heads {
            data: v,
            stride: v_stride,
            dims: v_dims,
        } = heads_of(name, "v", v_s, v_l)?;
        if one != 1 || k_hd != hd || v_dims != (nkv, len, hd) || nkv == 0 || nh % nkv != 0 {
            candle_core::bail!(
                "{name}: q {:?}, k {:?}, v {:?} do not fit",
                q_l.dims(),
                k_l.dims(),
                v_l.dims()
            )
        }
        let rep = nh / nkv;
        let mut out = vec![0f32; nh * hd];
        out.par_chunks_mut(rep * hd)
            .enumerate()
            .for_each(|(h, out)| {
                let qs: Vec<&[f32]> = (0..rep)
                    .map(|r| &q[(h * rep + r) * q_stride..][..hd])
                    .collect();
                let keys = &k[h * k_stride..][..len * hd];
                let values = &v[h * v_stride..][..len * hd];
                head(&qs, keys, values, self.scale, out);
            });
        Ok((CpuStorage::F32(out), Shape::from((1, nh, 1, hd))))
    }
}

vectorized! {
    /// One KV head: the `rep` query rows' scores over `len` keys, softmax,
    /// and the weighted sums of the values into `out` (`rep × hd`).
    fn head(qs: &[&[f32]], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) => head_lanes
}

#[inline(always)]
fn head_lanes(qs: &[&[f32]], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
    let hd = out.len() / qs.len().max(1);
    let len = keys.len() / hd.max(1);
    let mut scores = vec![0f32; qs.len() * len];
    for (j, key) in keys.chunks_exact(hd).enumerate() {
        for (r, q) in qs.iter().enumerate() {
            scores[r * len + j] = dot(q, key);
        }
    }
    for (probs, out) in scores.chunks_exact_mut(len).zip(out.chunks_exact_mut(hd)) {
        softmax_row(probs, scale, None);
        for (p, value) in probs.iter().zip(values.chunks_exact(hd)) {
            for (o, x) in out.iter_mut().zip(value) {
                *o += p * x;
            }
        }
    }
}

/// `a · b` with sixteen running sums (so that it vectorizes).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (a_body, a_tail) = a.as_chunks::<LANES>();
    let (b_body, b_tail) = b.as_chunks::<LANES>();
    for (x, y) in a_body.iter().zip(b_body) {
        for ((l, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *l += x * y;
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn ramp(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1013) as f32 / 506.0 - 1.0) * 0.8)
            .collect()
    }

    /// Against f64 math, on cache-like views (a larger buffer, narrowed),
    /// with grouped query heads and a head size with a tail.
    #[test]
    fn matches_exact_attention() {
        for (nh, nkv, hd, len, cap) in [(8, 2, 64, 37, 64), (4, 4, 20, 5, 9), (6, 3, 16, 1, 4)] {
            let q = Tensor::from_vec(ramp(nh * hd, 1), (1, nh, 1, hd), &Device::Cpu).expect("q");
            let kc = Tensor::from_vec(ramp(nkv * cap * hd, 2), (1, nkv, cap, hd), &Device::Cpu)
                .expect("k");
            let vc = Tensor::from_vec(ramp(nkv * cap * hd, 3), (1, nkv, cap, hd), &Device::Cpu)
                .expect("v");
            let (k, v) = (
                kc.narrow(2, 0, len).expect("k"),
                vc.narrow(2, 0, len).expect("v"),
            );
            let scale = 1.0 / (hd as f32).sqrt();
            let out = q
                .apply_op3_no_bwd(&k, &v, &DecodeAttention { scale })
                .expect("attention");
            assert_eq!(out.dims(), &[1, nh, 1, hd]);
            let got = out
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("out");
            let (q, kc, vc) = (
                ramp(nh * hd, 1),
                ramp(nkv * cap * hd, 2),
                ramp(nkv * cap * hd, 3),
            );
            for h in 0..nh {
                let g = h / (nh / nkv);
                let at = |t: &[f32], j: usize, d: usize| f64::from(t[(g * cap + j) * hd + d]);
                let s: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..hd)
                            .map(|d| f64::from(q[h * hd + d]) * at(&kc, j, d))
                            .sum::<f64>()
                            * f64::from(scale)
                    })
                    .collect();
                let max = s.iter().fold(f64::NEG_INFINITY, |a, b| a.max(*b));
                let total: f64 = s.iter().map(|x| (x - max).exp()).sum();
                for d in 0..hd {
                    let want: f64 = (0..len)
                        .map(|j| (s[j] - max).exp() / total * at(&vc, j, d))
                        .sum();
                    let got = f64::from(got[h * hd + d]);
                    assert!(
                        (got - want).abs() <= 1e-5,
                        "{nh}/{nkv} head {h} dim {d}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn refuses_shapes_that_do_not_fit() {
        let q = Tensor::zeros((1, 6, 1, 16), candle_core::DType::F32, &Device::Cpu).expect("q");
        let k = Tensor::zeros((1, 4, 3, 16), candle_core::DType::F32, &Device::Cpu).expect("k");
        let err = q
            .apply_op3_no_bwd(&k, &k, &DecodeAttention { scale: 1.0 })
            .expect_err("6 heads over 4");
        assert!(err.to_string().contains("do not fit"), "{err}");
    }
}
