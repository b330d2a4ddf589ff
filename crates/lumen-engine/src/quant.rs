//! In-situ quantization of dense weights, and a quantized matmul that
//! computes from the compact blocks.
//!
//! candle's quantized matmul on x86 repacks Q4_K / Q6_K / Q8_0 weights the
//! first time they are used — into 6-bit tiles for one-row products and
//! ~8.5-bit AMX tiles for batches — and keeps the original blocks as well.
//! That is fast for large batches but makes a Q4_K model occupy two to four
//! times its size: an 11B vision model would need ~20 GB instead of ~6.
//! Lumen's interleaved kernels (`crate::qmm`) compute Q4_0, Q4_1, Q8_0 and
//! the k-quants from blocks of the file's size; [`CompactMatMul`] computes
//! the other types straight from their blocks (candle's
//! `k_quants::matmul`). Every layer takes one of the two, the image-sized
//! batches of the vision encoder and the cross-attention keys and values
//! too (see `WeightSource::linear_by_key`).
//!
//! Quantization itself runs over row chunks in parallel, reading each chunk
//! from its source as f32 just before it is quantized, so a layer is never
//! held whole in f32.

use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use candle_core::quantized::{GgmlDType, QStorage, QTensor, QuantizedType};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::kernels::{matmul_input, matmul_output_shape};

/// Writes rows `range` of a matrix, as f32, into the buffer (exactly
/// `range.len() × cols` values).
pub type RowFill<'a> = dyn Fn(Range<usize>, &mut [f32]) -> Result<()> + Sync + 'a;

/// f32 values quantized per parallel task (4 MB of f32).
const CHUNK_ELEMS: usize = 1 << 20;

/// Quantizes a `(rows, cols)` matrix to `dtype`, asking `fill` for the
/// values a chunk of rows at a time (in parallel).
pub fn quantize_rows(
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    fill: &RowFill<'_>,
) -> Result<Box<dyn QuantizedType>> {
    match dtype {
        GgmlDType::Q4_0 => blocks::<BlockQ4_0>(rows, cols, fill),
        GgmlDType::Q4_1 => blocks::<BlockQ4_1>(rows, cols, fill),
        GgmlDType::Q5_0 => blocks::<BlockQ5_0>(rows, cols, fill),
        GgmlDType::Q5_1 => blocks::<BlockQ5_1>(rows, cols, fill),
        GgmlDType::Q8_0 => blocks::<BlockQ8_0>(rows, cols, fill),
        GgmlDType::Q2K => blocks::<BlockQ2K>(rows, cols, fill),
        GgmlDType::Q3K => blocks::<BlockQ3K>(rows, cols, fill),
        GgmlDType::Q4K => blocks_with::<BlockQ4K>(rows, cols, fill, q4k_from_float),
        GgmlDType::Q5K => blocks::<BlockQ5K>(rows, cols, fill),
        GgmlDType::Q6K => blocks::<BlockQ6K>(rows, cols, fill),
        other => Err(EngineError::InvalidArgument(format!(
            "weights cannot be quantized to {other:?}; choose Q8_0, Q6_K, Q5_K, Q4_K, Q4_0 or similar"
        ))),
    }
}

/// [`quantize_rows`] as a candle [`QTensor`] of shape `(rows, cols)`.
pub fn quantize_qtensor(
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    fill: &RowFill<'_>,
) -> Result<QTensor> {
    let storage = QStorage::Cpu(quantize_rows(dtype, rows, cols, fill)?);
    Ok(QTensor::new(storage, (rows, cols))?)
}

/// Q4_K blocks as candle's `BlockQ4K::from_float` makes them, by
/// [`crate::q4k`] (several times faster).
fn q4k_from_float(x: &[f32], ys: &mut [BlockQ4K]) {
    const _: () = assert!(std::mem::size_of::<BlockQ4K>() == crate::q4k::BLOCK_BYTES);
    // SAFETY: `BlockQ4K` is `repr(C)`: two f16 and two byte arrays, 144
    // bytes with no padding (asserted above) in GGUF's order, and every
    // byte pattern is a valid value of each field; the bytes are borrowed
    // for as long as `ys` is.
    #[allow(unsafe_code)]
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(ys.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(ys))
    };
    crate::q4k::quantize(x, bytes);
}

fn blocks<T: GgmlType + 'static>(
    rows: usize,
    cols: usize,
    fill: &RowFill<'_>,
) -> Result<Box<dyn QuantizedType>> {
    blocks_with::<T>(rows, cols, fill, T::from_float)
}

/// [`blocks`] with `from_float` in place of the type's own.
fn blocks_with<T: GgmlType + 'static>(
    rows: usize,
    cols: usize,
    fill: &RowFill<'_>,
    from_float: fn(&[f32], &mut [T]),
) -> Result<Box<dyn QuantizedType>> {
    if cols == 0 || !cols.is_multiple_of(T::BLCK_SIZE) {
        return Err(EngineError::InvalidArgument(format!(
            "rows of {cols} values do not split into {:?} blocks of {}",
            T::DTYPE,
            T::BLCK_SIZE
        )));
    }
    let per_row = cols / T::BLCK_SIZE;
    let chunk_rows = (CHUNK_ELEMS / cols).max(1);
    let mut out = vec![T::zeros(); rows * per_row];
    out.par_chunks_mut(chunk_rows * per_row)
        .enumerate()
        .try_for_each(|(i, chunk)| {
            let start = i * chunk_rows;
            let n = chunk.len() / per_row;
            let mut values = vec![0f32; n * cols];
            fill(start..start + n, &mut values)?;
            from_float(&values, chunk);
            Ok::<_, EngineError>(())
        })?;
    Ok(Box::new(out))
}

/// `x · Wᵀ` for a quantized `W` of shape `(n, k)`, computed from its blocks
/// without repacking (see the module docs). CPU only.
#[derive(Clone)]
pub struct CompactMatMul {
    weight: Arc<dyn QuantizedType>,
    n: usize,
    k: usize,
}

impl std::fmt::Debug for CompactMatMul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactMatMul")
            .field("dtype", &self.weight.dtype())
            .field("n", &self.n)
            .field("k", &self.k)
            .finish()
    }
}

impl CompactMatMul {
    /// Wraps blocks holding an `(n, k)` matrix.
    pub fn new(weight: Box<dyn QuantizedType>, n: usize, k: usize) -> Result<Self> {
        let expected = n * k / weight.block_size() * weight.dtype().type_size();
        if !k.is_multiple_of(weight.block_size()) || weight.storage_size_in_bytes() != expected {
            return Err(EngineError::InvalidArgument(format!(
                "{:?} weight of {} bytes is not a ({n}, {k}) matrix",
                weight.dtype(),
                weight.storage_size_in_bytes()
            )));
        }
        Ok(Self {
            weight: Arc::from(weight),
            n,
            k,
        })
    }

    /// Bytes of weight data.
    pub fn size_in_bytes(&self) -> usize {
        self.weight.storage_size_in_bytes()
    }
}

impl CustomOp1 for CompactMatMul {
    fn name(&self) -> &'static str {
        "lumen-compact-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, dims) = matmul_input(self.name(), storage, layout, self.k)?;
        let m = x.len() / self.k;
        let mut out = vec![0f32; m * self.n];
        self.weight.matmul_t((m, self.k, self.n), x, &mut out)?;
        Ok((CpuStorage::F32(out), matmul_output_shape(dims, self.n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Tensor};

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// Chunked, parallel quantization gives the same blocks as candle's
    /// whole-tensor quantization, and the compact matmul the same numbers
    /// as candle's (packed) one.
    #[test]
    fn matches_candle() {
        let (rows, cols, m) = (600, 512, 3);
        let w = values(rows * cols);
        let fill = |r: Range<usize>, out: &mut [f32]| {
            out.copy_from_slice(&w[r.start * cols..r.end * cols]);
            Ok(())
        };
        let dense = Tensor::from_slice(&w, (rows, cols), &Device::Cpu).expect("tensor");
        let x = Tensor::from_vec(values(m * cols + 3)[3..].to_vec(), (m, cols), &Device::Cpu)
            .expect("x");
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            let ours = quantize_qtensor(dtype, rows, cols, &fill).expect("quantize");
            let theirs = QTensor::quantize(&dense, dtype).expect("candle quantize");
            assert_eq!(
                ours.data().expect("data"),
                theirs.data().expect("data"),
                "{dtype:?}"
            );
            let compact = CompactMatMul::new(
                quantize_rows(dtype, rows, cols, &fill).expect("q"),
                rows,
                cols,
            )
            .expect("compact");
            let a = x.apply_op1_no_bwd(&compact).expect("compact matmul");
            let b = candle_core::quantized::QMatMul::from_qtensor(theirs)
                .expect("qmatmul")
                .forward(&x)
                .expect("candle matmul");
            let diff = (a - &b)
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                .expect("diff");
            let scale = b
                .abs()
                .and_then(|d| d.max_all()?.to_scalar::<f32>())
                .expect("scale");
            // Both round activations to 8 bits; the packed kernels may sum
            // in another order.
            assert!(diff <= 1e-4 * scale, "{dtype:?}: {diff} vs {scale}");
        }
    }

    #[test]
    fn rejects_rows_that_do_not_fit_blocks() {
        let fill = |_: Range<usize>, _: &mut [f32]| Ok(());
        let err = quantize_rows(GgmlDType::Q4K, 4, 100, &fill)
            .err()
            .expect("100 % 256 ≠ 0");
        assert!(err.to_string().contains("blocks of 256"), "{err}");
        let err = quantize_rows(GgmlDType::F16, 4, 256, &fill)
            .err()
            .expect("not a block type");
        assert!(err.to_string().contains("F16"), "{err}");
    }
}
