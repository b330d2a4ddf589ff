//! Residual connections without a new buffer: `x + y` written into `y`.
//!
//! A Llama layer adds its attention's and its MLP's outputs to the residual
//! stream; candle's `x + y` allocates the sum (4 MB a time for a 1B model's
//! 512-token prompt chunk, held by the allocator's pool between layers).
//! The outputs are fresh tensors that nothing else reads, so the sum can
//! take their place.

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// `x + y`. On the CPU, for f32 tensors of one shape with `y` contiguous,
/// the sum overwrites `y`'s storage: `y` must be a tensor that no one reads
/// after this call (a projection's output), not a view of one still in use.
/// Elsewhere it is candle's `x + y`. Each value is `x + y` as f32 either
/// way.
pub(crate) fn residual(x: &Tensor, y: Tensor) -> Result<Tensor> {
    let in_place = y.device().is_cpu()
        && x.dtype() == DType::F32
        && y.dtype() == DType::F32
        && x.dims() == y.dims()
        && x.is_contiguous()
        && y.is_contiguous();
    if in_place {
        y.inplace_op2(x, &AddInto)?;
        Ok(y)
    } else {
        Ok((x + y)?)
    }
}

/// `dst += src` for contiguous f32 tensors of one shape.
struct AddInto;

/// Values per parallel task: enough to outweigh a rayon dispatch.
const PER_TASK: usize = 1 << 16;

impl InplaceOp2 for AddInto {
    fn name(&self) -> &'static str {
        "lumen-add-into"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> candle_core::Result<()> {
        let name = self.name();
        let (CpuStorage::F32(dst), CpuStorage::F32(src)) = (dst, src) else {
            candle_core::bail!("{name}: both tensors must be f32")
        };
        let (Some((d0, d1)), Some((s0, s1))) =
            (dst_l.contiguous_offsets(), src_l.contiguous_offsets())
        else {
            candle_core::bail!("{name}: both tensors must be contiguous")
        };
        let (Some(dst), Some(src)) = (dst.get_mut(d0..d1), src.get(s0..s1)) else {
            candle_core::bail!("{name}: a view lies outside its storage")
        };
        if dst.len() != src.len() {
            candle_core::bail!("{name}: {} values and {} differ", dst.len(), src.len())
        }
        dst.par_chunks_mut(PER_TASK)
            .zip(src.par_chunks(PER_TASK))
            .for_each(|(d, s)| {
                for (d, s) in d.iter_mut().zip(s) {
                    *d += s;
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The sum in place equals candle's, value for value, and leaves `x`
    /// alone; shapes or layouts it does not take get candle's sum.
    #[test]
    fn sums_in_place_like_candle() {
        let dev = Device::Cpu;
        let n = 3 * PER_TASK + 5;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
        let x = Tensor::from_vec(x, (1, n), &dev).expect("x");
        let y = Tensor::from_vec(y, (1, n), &dev).expect("y");
        let want = (&x + &y).expect("sum").to_vec2::<f32>().expect("want");
        let x_before = x.to_vec2::<f32>().expect("x");
        let got = residual(&x, y.copy().expect("copy")).expect("residual");
        assert_eq!(got.to_vec2::<f32>().expect("got"), want);
        assert_eq!(x.to_vec2::<f32>().expect("x after"), x_before);
        // A transposed `y` is not contiguous: candle's sum, same values.
        let (a, b) = (
            Tensor::arange(0f32, 6.0, &dev)
                .and_then(|t| t.reshape((2, 3)))
                .expect("a"),
            Tensor::arange(0f32, 6.0, &dev)
                .and_then(|t| t.reshape((3, 2)))
                .expect("b"),
        );
        let bt = b.t().expect("t");
        let want = (&a + &bt).expect("sum").to_vec2::<f32>().expect("want");
        let got = residual(&a, bt).expect("residual");
        assert_eq!(got.to_vec2::<f32>().expect("got"), want);
    }
}
