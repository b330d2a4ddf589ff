//! `silu(gate) · up`, the activation of Llama's feed-forward layers, in one
//! pass on the CPU.
//!
//! candle computes it as two operations over the gate and up halves of the
//! fused projection: `silu` (libm's scalar `expf` per value) into a new
//! tensor, then the product into another. Here each row is read once, with
//! the vectorized exponential of [`crate::softmax`], straight from the
//! fused projection's output (the halves are strided views of it).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::softmax::exp_nonpositive;

/// `silu(gate) · up` for tensors of the same shape. On the CPU, f32 views
/// whose rows are contiguous (such as the halves of a fused projection)
/// take the fused pass; anything else candle's operations.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fused = gate.device().is_cpu()
        && gate.dtype() == DType::F32
        && up.dtype() == DType::F32
        && gate.dims() == up.dims()
        && rows_of(gate.layout()).is_some()
        && rows_of(up.layout()).is_some();
    Ok(if fused {
        gate.apply_op2_no_bwd(up, &SwiGlu)?
    } else {
        (candle_nn::ops::silu(gate)? * up)?
    })
}

/// The fused operation (see [`swiglu`]).
#[derive(Debug, Clone, Copy)]
struct SwiGlu;

/// A layout as rows: their count, width and the distance between row
/// starts, when each row is contiguous and rows follow at one stride.
fn rows_of(layout: &Layout) -> Option<(usize, usize, usize)> {
    let dims = layout.dims();
    let stride = layout.stride();
    let (&width, lead) = dims.split_last()?;
    if width == 0 || stride.last() != Some(&1) {
        return None;
    }
    let rows: usize = lead.iter().product();
    let row_stride = if lead.is_empty() {
        width
    } else {
        stride[lead.len() - 1]
    };
    // Leading dimensions must collapse into one run of rows.
    for i in 0..lead.len().saturating_sub(1) {
        if dims[i] > 1 && stride[i] != stride[i + 1] * dims[i + 1] {
            return None;
        }
    }
    (row_stride >= width || rows <= 1).then_some((rows, width, row_stride))
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "lumen-swiglu"
    }

    fn cpu_fwd(
        &self,
        g_s: &CpuStorage,
        g_l: &Layout,
        u_s: &CpuStorage,
        u_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (g_s, u_s) else {
            candle_core::bail!("{name}: gate and up must be f32")
        };
        let (Some((rows, width, g_stride)), Some((_, _, u_stride))) = (rows_of(g_l), rows_of(u_l))
        else {
            candle_core::bail!("{name}: gate and up must be views of contiguous rows")
        };
        if g_l.dims() != u_l.dims() {
            candle_core::bail!(
                "{name}: gate {:?} and up {:?} differ",
                g_l.dims(),
                u_l.dims()
            )
        }
        fn row(
            data: &[f32],
            start: usize,
            stride: usize,
            width: usize,
            r: usize,
        ) -> Option<&[f32]> {
            let at = start + r * stride;
            data.get(at..at + width)
        }
        // The last row in bounds puts every row in bounds (none: nothing to
        // check).
        let last = rows.checked_sub(1);
        if last.is_some_and(|last| {
            row(g, g_l.start_offset(), g_stride, width, last).is_none()
                || row(u, u_l.start_offset(), u_stride, width, last).is_none()
        }) {
            candle_core::bail!("{name}: a view lies outside its storage")
        }
        let mut out = vec![0f32; rows * width];
        out.par_chunks_mut(width).enumerate().for_each(|(r, out)| {
            if let (Some(g), Some(u)) = (
                row(g, g_l.start_offset(), g_stride, width, r),
                row(u, u_l.start_offset(), u_stride, width, r),
            ) {
                swiglu_row(g, u, out);
            }
        });
        Ok((CpuStorage::F32(out), g_l.shape().clone()))
    }
}

vectorized! {
    /// One row, with the widest vector instructions the CPU has.
    pub(crate) fn swiglu_row(g: &[f32], u: &[f32], out: &mut [f32]) => swiglu_row_lanes
}

/// `g · σ(g) · u` per value, branch-free so that it vectorizes: with
/// `t = e^-|g|`, `σ(g)` is `1 / (1 + t)` for `g ≥ 0` and `t / (1 + t)`
/// below (the exponential never overflows).
#[inline(always)]
fn swiglu_row_lanes(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        let t = exp_nonpositive(-g.abs());
        let num = if g >= 0.0 { 1.0 } else { t };
        *o = g * (num / (1.0 + t)) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// Against f64 math, on the halves of a fused projection's output
    /// (strided views), with widths that leave vector tails, and values
    /// from tiny to far past where the exponential saturates.
    #[test]
    fn matches_exact_silu_times_up_on_strided_halves() {
        for (rows, width, scale) in [(7, 37, 12.0), (3, 64, 100.0), (1, 5, 0.01), (130, 16, 3.0)] {
            let fused = Tensor::from_vec(
                values(rows * 2 * width, rows as u32, scale),
                (1, rows, 2 * width),
                &Device::Cpu,
            )
            .expect("fused");
            let gate = fused.narrow(2, 0, width).expect("gate");
            let up = fused.narrow(2, width, width).expect("up");
            let got = swiglu(&gate, &up)
                .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
                .expect("swiglu");
            let all = values(rows * 2 * width, rows as u32, scale);
            for r in 0..rows {
                for c in 0..width {
                    let g = f64::from(all[r * 2 * width + c]);
                    let u = f64::from(all[r * 2 * width + width + c]);
                    let want = g / (1.0 + (-g).exp()) * u;
                    let got = f64::from(got[r * width + c]);
                    // The exponential is within 4 ulp, and 1 + t, the
                    // division and two products add one rounding each.
                    let tol = 8.0 * f64::from(f32::EPSILON) * want.abs() + 1e-30;
                    assert!(
                        (got - want).abs() <= tol,
                        "{rows}x{width} ({r}, {c}): {got} vs {want}"
                    );
                }
            }
            // The same as candle's two operations (libm's expf), within
            // both errors.
            let candle = (candle_nn::ops::silu(&gate).expect("silu") * &up)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .expect("candle");
            for (a, b) in got.iter().zip(&candle) {
                assert!((a - b).abs() <= 12.0 * f32::EPSILON * b.abs().max(1e-30));
            }
        }
    }

    #[test]
    fn views_that_are_not_rows_take_candles_path() {
        let t = Tensor::from_vec(values(6 * 8, 1, 2.0), (6, 8), &Device::Cpu).expect("t");
        let cols = t.t().expect("transposed");
        assert!(rows_of(cols.layout()).is_none());
        let got = swiglu(&cols, &cols).expect("swiglu");
        let want = (candle_nn::ops::silu(&cols).expect("silu") * &cols).expect("mul");
        let diff = (got - want)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        assert!(diff <= 1e-5, "{diff}");
    }
}
