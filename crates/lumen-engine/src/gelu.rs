//! GELU in its exact (erf) form, after a projection's bias, in one pass over
//! the projection's own buffer on the CPU.
//!
//! candle adds the bias into a new tensor, then computes `gelu_erf` into
//! another, one value at a time (a branchy port of statrs' `erf`, which does
//! not vectorize): about 110 ms a layer for the 11B vision encoder's MLP on
//! a 4-tile image (6432 × 5120 values, two threads), four seconds of the
//! encoder's forty layers. Here `erf` is Abramowitz and Stegun's formula
//! 7.1.26 (absolute error at most 1.5·10⁻⁷), the one PyTorch's vectorized
//! CPU GELU uses, with [`crate::softmax`]'s exponential, branch-free so that
//! it vectorizes.

use std::f32::consts::FRAC_1_SQRT_2;

use candle_core::{CpuStorage, DType, InplaceOp1, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::softmax::exp_nonpositive;

/// `gelu(y + bias)` (the bias broadcast along `y`'s last dimension). On the
/// CPU, for a contiguous f32 `y` and an f32 bias of its last dimension's
/// length, the result overwrites `y`'s storage: `y` must be a tensor no one
/// reads after this call (a projection's output). Elsewhere it is candle's
/// `broadcast_add` and `gelu_erf`.
pub(crate) fn bias_gelu(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let width = y.dims().last().copied().unwrap_or(0);
    let in_place = y.device().is_cpu()
        && y.dtype() == DType::F32
        && y.is_contiguous()
        && width > 0
        && bias.is_none_or(|b| b.dtype() == DType::F32 && b.dims() == [width] && b.is_contiguous());
    if !in_place {
        let y = match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        return Ok(y.gelu_erf()?);
    }
    match bias {
        Some(b) => y.inplace_op2(b, &BiasGelu)?,
        None => y.inplace_op1(&BiasGelu)?,
    }
    Ok(y)
}

/// The in-place operation of [`bias_gelu`]: with a bias (`InplaceOp2`) or
/// without (`InplaceOp1`).
struct BiasGelu;

/// Values per parallel task: enough to outweigh a rayon dispatch.
const PER_TASK: usize = 1 << 15;

impl BiasGelu {
    /// `dst`'s values, or an error naming what is wrong with them.
    fn values<'a>(dst: &'a mut CpuStorage, layout: &Layout) -> candle_core::Result<&'a mut [f32]> {
        let name = "lumen-bias-gelu";
        let CpuStorage::F32(dst) = dst else {
            candle_core::bail!("{name}: the tensor must be f32")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{name}: the tensor must be contiguous")
        };
        match dst.get_mut(start..end) {
            Some(values) => Ok(values),
            None => candle_core::bail!("{name}: a view lies outside its storage"),
        }
    }
}

impl InplaceOp1 for BiasGelu {
    fn name(&self) -> &'static str {
        "lumen-gelu"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        Self::values(dst, layout)?
            .par_chunks_mut(PER_TASK)
            .for_each(|v| gelu_row(v, &[]));
        Ok(())
    }
}

impl InplaceOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "lumen-bias-gelu"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        bias: &CpuStorage,
        bias_l: &Layout,
    ) -> candle_core::Result<()> {
        let name = InplaceOp2::name(self);
        let CpuStorage::F32(bias) = bias else {
            candle_core::bail!("{name}: the bias must be f32")
        };
        let bias = bias_l
            .contiguous_offsets()
            .and_then(|(start, end)| bias.get(start..end))
            .filter(|b| !b.is_empty() && dst_l.dims().last() == Some(&b.len()));
        let Some(bias) = bias else {
            candle_core::bail!("{name}: the bias must be one contiguous row of the tensor's width")
        };
        let width = bias.len();
        let rows_per_task = (PER_TASK / width).max(1);
        Self::values(dst, dst_l)?
            .par_chunks_mut(width * rows_per_task)
            .for_each(|rows| {
                for row in rows.chunks_mut(width) {
                    gelu_row(row, bias);
                }
            });
        Ok(())
    }
}

vectorized! {
    /// `gelu(v + b)` for each value of `row` and of `bias` beside it (no
    /// bias when `bias` is empty), with the widest vector instructions the
    /// CPU has.
    fn gelu_row(row: &mut [f32], bias: &[f32]) => gelu_row_lanes
}

#[inline(always)]
fn gelu_row_lanes(row: &mut [f32], bias: &[f32]) {
    if bias.is_empty() {
        for v in row.iter_mut() {
            *v = gelu(*v);
        }
    } else {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = gelu(*v + b);
        }
    }
}

/// `x · (1 + erf(x / √2)) / 2`. With `z = |x| / √2` and `t = 1 / (1 +
/// p·z)`, formula 7.1.26 gives `erfc(z) ≈ t·P(t)·e^(−z²)`; `1 + erf(x/√2)`
/// is `2 − erfc(z)` for `x ≥ 0` and `erfc(z)` itself below (no
/// cancellation where GELU is small).
#[inline(always)]
fn gelu(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let z = x.abs() * FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = (((A5 * t + A4) * t + A3) * t + A2) * t + A1;
    let erfc = t * poly * exp_nonpositive(-(z * z));
    let one_plus_erf = if x >= 0.0 { 2.0 - erfc } else { erfc };
    0.5 * x * one_plus_erf
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// GELU in f64 with statrs' `erf` (candle's port, accurate to f64).
    fn exact(x: f64) -> f64 {
        0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x * std::f64::consts::FRAC_1_SQRT_2))
    }

    /// The error bound: formula 7.1.26's 1.5·10⁻⁷ on `erf`, times `|x| / 2`,
    /// plus a few roundings of the result.
    fn tolerance(x: f64, want: f64) -> f64 {
        0.5 * x.abs() * 1.6e-7 + 4.0 * f64::from(f32::EPSILON) * want.abs() + 1e-30
    }

    /// Against f64 GELU over the range where it bends and far past it,
    /// with and without a bias, on widths that leave vector tails.
    #[test]
    fn matches_exact_gelu_with_and_without_bias() {
        let dev = Device::Cpu;
        for (rows, width) in [(3, 37), (2, 5120), (1, 1), (40, 16)] {
            let n = rows * width;
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 4001) as f32 / 4000.0 * 24.0 - 12.0)
                .collect();
            let b: Vec<f32> = (0..width).map(|i| (i as f32 * 0.7).sin() * 0.5).collect();
            for with_bias in [false, true] {
                let y = Tensor::from_vec(x.clone(), (rows, width), &dev).expect("y");
                let bias = Tensor::from_vec(b.clone(), width, &dev).expect("b");
                let got = bias_gelu(y, with_bias.then_some(&bias))
                    .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
                    .expect("gelu");
                for (i, g) in got.iter().enumerate() {
                    let v = x[i] + if with_bias { b[i % width] } else { 0.0 };
                    let want = exact(f64::from(v));
                    let err = (f64::from(*g) - want).abs();
                    assert!(
                        err <= tolerance(f64::from(v), want),
                        "{rows}x{width} bias {with_bias} at {v}: {g} vs {want}"
                    );
                }
            }
        }
    }

    /// Tiny, huge, infinite and NaN inputs: GELU's limits, no NaN from
    /// finite values.
    #[test]
    fn limits() {
        assert_eq!(gelu(0.0), 0.0);
        assert_eq!(gelu(f32::INFINITY), f32::INFINITY);
        assert_eq!(gelu(1e30), 1e30);
        assert_eq!(gelu(-1e30).abs(), 0.0);
        assert!(gelu(f32::NAN).is_nan());
        let tiny = 1e-30f32;
        assert!((gelu(tiny) - tiny / 2.0).abs() <= tiny * 1e-6);
    }

    /// Layouts it does not take (a transposed view, an f64 tensor, a bias
    /// of another width) get candle's operations, with the same result.
    #[test]
    fn other_layouts_take_candles_path() {
        let dev = Device::Cpu;
        let y = Tensor::arange(0f32, 12.0, &dev)
            .and_then(|t| t.reshape((3, 4)))
            .and_then(|t| (t - 6.0)?.t())
            .expect("y");
        let want = y
            .gelu_erf()
            .and_then(|t| t.to_vec2::<f32>())
            .expect("candle");
        let got = bias_gelu(y, None)
            .and_then(|t| Ok(t.to_vec2::<f32>()?))
            .expect("gelu");
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
        }
        let y = Tensor::ones((2, 3), DType::F64, &dev).expect("y");
        let got = bias_gelu(y, None)
            .and_then(|t| Ok(t.to_vec2::<f64>()?))
            .expect("f64");
        assert!((got[0][0] - exact(1.0)).abs() < 1e-12);
    }
}
