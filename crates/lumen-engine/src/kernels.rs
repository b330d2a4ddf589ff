//! Quantized matmuls for the "type-1" formats (Q4_1, Q5_1) on the CPU.
//!
//! These formats store `x = d·q + m`, so a dot product with activations needs
//! the activations' block sums: llama.cpp quantizes activations to Q8_1, whose
//! `s` field is `f16(d · Σq)` computed in f32 (`quantize_row_q8_1_ref` in
//! `ggml-quants.c`). candle 0.11's `BlockQ8_1::from_float` instead computes
//! `f16(Σq) · f16(d)` in half precision, which rounds sums above 2048 and the
//! product again; on SmolLM2 (Q4_1) that moves logits by up to ~1 against
//! llama.cpp on the same file. This module quantizes activations the way
//! llama.cpp does and computes the dot products itself, in parallel over
//! output rows, without SIMD of its own: GGUF Q4_1 weights now go to the
//! interleaved SIMD kernels of [`crate::qmm`]; this one remains for Q5_1
//! and for layers that ask for candle's packed kernels.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;
use rayon::prelude::*;

/// Elements per block of Q4_1 / Q5_1 / Q8_1.
const QK: usize = 32;

/// The weight formats this module handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Q4_1,
    Q5_1,
}

impl Format {
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20, // d: f16, m: f16, qs: [u8; 16]
            Self::Q5_1 => 24, // d: f16, m: f16, qh: u32, qs: [u8; 16]
        }
    }
}

/// `x · Wᵀ` for a Q4_1 or Q5_1 weight `W` of shape `(n, k)`.
#[derive(Debug, Clone)]
pub struct Type1MatMul {
    weight: Arc<QTensor>,
    format: Format,
    n: usize,
    k: usize,
}

impl Type1MatMul {
    /// Wraps a weight if its type is one this module computes (on the CPU).
    pub fn new(weight: Arc<QTensor>) -> Option<Self> {
        let format = match weight.dtype() {
            GgmlDType::Q4_1 => Format::Q4_1,
            GgmlDType::Q5_1 => Format::Q5_1,
            _ => return None,
        };
        if !weight.device().is_cpu() {
            return None;
        }
        let (n, k) = weight.shape().dims2().ok()?;
        k.is_multiple_of(QK).then_some(Self {
            weight,
            format,
            n,
            k,
        })
    }
}

/// One block of activations quantized as llama.cpp's Q8_1.
#[derive(Debug, Clone, Copy)]
struct BlockQ8_1 {
    d: f32, // f16-rounded scale
    s: f32, // f16-rounded d · Σq
    qs: [i8; QK],
}

fn quantize_q8_1(x: &[f32]) -> BlockQ8_1 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    // As llama.cpp's x86 path: 127 / amax, rounding half to even.
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
        sum += i32::from(*q);
    }
    BlockQ8_1 {
        d: f16::from_f32(d).to_f32(),
        s: f16::from_f32(sum as f32 * d).to_f32(),
        qs,
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dot product of one weight row (raw blocks) with quantized activations.
fn dot_row(format: Format, row: &[u8], act: &[BlockQ8_1]) -> f32 {
    let bb = format.block_bytes();
    let mut acc = 0f32;
    for (w, y) in row.chunks_exact(bb).zip(act) {
        let (d, m) = (f16_at(w, 0), f16_at(w, 2));
        let mut sumi = 0i32;
        match format {
            Format::Q4_1 => {
                let (y_lo, y_hi) = y.qs.split_at(QK / 2);
                for ((q, a), b) in w[4..20].iter().zip(y_lo).zip(y_hi) {
                    sumi += i32::from(q & 0x0F) * i32::from(*a) + i32::from(q >> 4) * i32::from(*b);
                }
            }
            Format::Q5_1 => {
                let qh = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
                let (y_lo, y_hi) = y.qs.split_at(QK / 2);
                for (j, ((q, a), b)) in w[8..24].iter().zip(y_lo).zip(y_hi).enumerate() {
                    // Bit j of qh is the 5th bit of the low nibble, bit j + 16 of the high.
                    let h0 = (((qh >> j) << 4) & 0x10) as u8;
                    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                    let lo = i32::from((q & 0x0F) | h0);
                    let hi = i32::from((q >> 4) | h1);
                    sumi += lo * i32::from(*a) + hi * i32::from(*b);
                }
            }
        }
        acc += sumi as f32 * d * y.d + m * y.s;
    }
    acc
}

/// The activations of a CPU matmul op `x · Wᵀ` with `W` of shape `(n, k)`:
/// f32, contiguous, last dimension `k`. Returns them and `x`'s dimensions.
pub(crate) fn matmul_input<'a>(
    name: &str,
    storage: &'a CpuStorage,
    layout: &'a Layout,
    k: usize,
) -> candle_core::Result<(&'a [f32], &'a [usize])> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{name}: activations must be f32")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{name}: activations must be contiguous")
    };
    let dims = layout.shape().dims();
    if dims.last() != Some(&k) {
        candle_core::bail!("{name}: input {dims:?} does not end in {k}")
    }
    Ok((&data[start..end], dims))
}

/// `x`'s dimensions with the last replaced by `n`.
pub(crate) fn matmul_output_shape(dims: &[usize], n: usize) -> Shape {
    let mut out = dims.to_vec();
    if let Some(last) = out.last_mut() {
        *last = n;
    }
    Shape::from(out)
}

/// Output rows handled per parallel task.
const ROWS_PER_TASK: usize = 16;

impl CustomOp1 for Type1MatMul {
    fn name(&self) -> &'static str {
        "lumen-type1-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, dims) = matmul_input(self.name(), storage, layout, self.k)?;
        let m = x.len() / self.k;
        let act: Vec<Vec<BlockQ8_1>> = x
            .chunks_exact(self.k)
            .map(|row| row.chunks_exact(QK).map(quantize_q8_1).collect())
            .collect();

        let weights = self.weight.data()?;
        let row_bytes = self.k / QK * self.format.block_bytes();
        if weights.len() != self.n * row_bytes {
            candle_core::bail!(
                "{}: weight has {} bytes, expected {}",
                self.name(),
                weights.len(),
                self.n * row_bytes
            )
        }
        // Transposed result (n, m): each task owns a run of weight rows and
        // streams them once for all activation rows.
        let mut out_t = vec![0f32; self.n * m];
        out_t
            .par_chunks_mut(ROWS_PER_TASK * m)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (i, out_row) in chunk.chunks_exact_mut(m).enumerate() {
                    let r = task * ROWS_PER_TASK + i;
                    let w = &weights[r * row_bytes..(r + 1) * row_bytes];
                    for (o, a) in out_row.iter_mut().zip(&act) {
                        *o = dot_row(self.format, w, a);
                    }
                }
            });
        let out = if m == 1 {
            out_t
        } else {
            let mut out = vec![0f32; m * self.n];
            for (r, row) in out_t.chunks_exact(m).enumerate() {
                for (i, v) in row.iter().enumerate() {
                    out[i * self.n + r] = *v;
                }
            }
            out
        };
        Ok((CpuStorage::F32(out), matmul_output_shape(dims, self.n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    /// Against f32 math on the dequantized weights: only activation
    /// rounding (8 bits) separates them.
    #[test]
    fn matches_dequantized_matmul() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_1] {
            let (m, n, k) = (3, 40, 96);
            let w = Tensor::from_vec(random(n * k, 1), (n, k), &Device::Cpu).expect("w");
            let q = Arc::new(QTensor::quantize(&w, dtype).expect("quantize"));
            let x = Tensor::from_vec(random(m * k, 2), (m, k), &Device::Cpu).expect("x");
            let op = Type1MatMul::new(q.clone()).expect("supported");
            let ours = x.apply_op1_no_bwd(&op).expect("op");
            let want = x
                .matmul(&q.dequantize(&Device::Cpu).expect("deq").t().expect("t"))
                .expect("mm");
            let err = (ours - &want)
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                .expect("err");
            let scale = want
                .abs()
                .and_then(|d| d.max_all()?.to_scalar::<f32>())
                .expect("scale");
            assert!(err <= 0.02 * scale, "{dtype:?}: {err} vs scale {scale}");
        }
    }

    #[test]
    fn q8_1_sum_is_computed_in_f32() {
        // 32 values at the block maximum: Σq = 4064 > 2048, which f16 cannot
        // hold exactly; llama.cpp's s is f16(4064 · d).
        let b = quantize_q8_1(&[1.0; QK]);
        assert_eq!(b.s, f16::from_f32(4064.0 / 127.0).to_f32());
    }
}
