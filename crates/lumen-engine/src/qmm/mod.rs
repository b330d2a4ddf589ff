//! Quantized matmuls for the 32-value block formats (Q4_0, Q4_1, Q8_0) on
//! the CPU, from weights repacked at load into an interleaved layout.
//!
//! # Layout
//! Output rows are taken sixteen at a time (a *group*; the last group is
//! padded with zero rows). For each block of 32 values along `k`, a group
//! stores its sixteen f16 scales (and, for Q4_1, sixteen f16 minimums) in
//! side arrays and its quantized values in 64-byte chunks: chunk `c` holds,
//! for each of the sixteen rows in turn, the row's four quant bytes
//! `4c..4c + 4` of that block. For the 4-bit formats those bytes carry
//! values `4c..4c + 4` in their low nibbles and `16 + 4c..16 + 4c + 4` in
//! their high nibbles (GGUF's own nibble order), so a chunk is four values
//! of sixteen rows: one AVX-512 VNNI `vpdpbusd` against four activation
//! bytes broadcast to every lane leaves one partial dot product per row.
//! Nothing is widened: a group costs exactly what its sixteen rows cost in
//! the GGUF file (18, 20 or 34 bytes per block).
//!
//! # Arithmetic
//! Activations are quantized once per call to 8 bits per value with one
//! f16-rounded scale per block, exactly as llama.cpp's `quantize_row_q8_0`
//! / `q8_1` do (Q4_1's block sums `s = f16(d · Σq)` in f32 first), and the
//! integer dot products are exact, so results agree with llama.cpp on the
//! same file up to the order of f32 additions. Kernels: AVX-512 VNNI and
//! AVX2 (chosen at run time, see [`Isa`]) and a portable scalar one that is
//! also the reference the others are tested against.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;
use rayon::prelude::*;

use crate::kernels::{matmul_input, matmul_output_shape};

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Values per quantization block.
pub(crate) const QK: usize = 32;
/// Output rows per interleaved group.
pub(crate) const ROWS: usize = 16;
/// Bytes per chunk: four quant bytes of each of the sixteen rows.
pub(crate) const CHUNK: usize = 64;
/// Activation rows computed together against one group's weights.
const TILE: usize = 4;

/// The weight formats this module computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `x = d · (q − 8)`, 4-bit `q`.
    Q4_0,
    /// `x = d · q + m`, 4-bit `q`.
    Q4_1,
    /// `x = d · q`, signed 8-bit `q`.
    Q8_0,
}

impl Format {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one GGUF block.
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18, // d: f16, qs: [u8; 16]
            Self::Q4_1 => 20, // d: f16, m: f16, qs: [u8; 16]
            Self::Q8_0 => 34, // d: f16, qs: [i8; 32]
        }
    }

    /// Where the quant bytes start in a GGUF block.
    fn quants_at(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q8_0 => 2,
            Self::Q4_1 => 4,
        }
    }

    /// Quant bytes per row per block (16 for 4-bit, 32 for 8-bit).
    pub(crate) fn quant_bytes(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 => QK / 2,
            Self::Q8_0 => QK,
        }
    }

    /// 64-byte chunks per group per block.
    pub(crate) fn chunks(self) -> usize {
        self.quant_bytes() / 4
    }
}

/// A 64-byte-aligned chunk of quant bytes.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Chunk(pub(crate) [u8; CHUNK]);

/// An `(n, k)` weight in the interleaved layout (see the module docs).
#[derive(Debug)]
pub(crate) struct Interleaved {
    pub(crate) format: Format,
    pub(crate) n: usize,
    pub(crate) k: usize,
    /// `k / 32`.
    pub(crate) blocks: usize,
    /// `groups × blocks × chunks` chunks.
    pub(crate) quants: Vec<Chunk>,
    /// `groups × blocks × 16` scales.
    pub(crate) scales: Vec<f16>,
    /// `groups × blocks × 16` minimums (Q4_1), else empty.
    pub(crate) mins: Vec<f16>,
}

impl Interleaved {
    /// Repacks GGUF blocks of an `(n, k)` matrix. `None` when `data` is not
    /// exactly such a matrix.
    fn from_blocks(format: Format, n: usize, k: usize, data: &[u8]) -> Option<Self> {
        if n == 0 || k == 0 || !k.is_multiple_of(QK) {
            return None;
        }
        let blocks = k / QK;
        let row_bytes = blocks * format.block_bytes();
        if data.len() != n.checked_mul(row_bytes)? {
            return None;
        }
        let groups = n.div_ceil(ROWS);
        let chunks = format.chunks();
        let mut quants = vec![Chunk([0; CHUNK]); groups * blocks * chunks];
        let mut scales = vec![f16::ZERO; groups * blocks * ROWS];
        let mut mins = match format {
            Format::Q4_1 => vec![f16::ZERO; groups * blocks * ROWS],
            _ => Vec::new(),
        };
        let f16_at = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]);
        for (row, src) in data.chunks_exact(row_bytes).enumerate() {
            let (g, r) = (row / ROWS, row % ROWS);
            for (b, block) in src.chunks_exact(format.block_bytes()).enumerate() {
                let at = (g * blocks + b) * ROWS + r;
                scales[at] = f16_at(block, 0);
                if format == Format::Q4_1 {
                    mins[at] = f16_at(block, 2);
                }
                let qs = &block[format.quants_at()..];
                let base = (g * blocks + b) * chunks;
                for (c, four) in qs.chunks_exact(4).enumerate() {
                    quants[base + c].0[r * 4..r * 4 + 4].copy_from_slice(four);
                }
            }
        }
        Some(Self {
            format,
            n,
            k,
            blocks,
            quants,
            scales,
            mins,
        })
    }

    /// Number of 16-row groups.
    pub(crate) fn groups(&self) -> usize {
        self.n.div_ceil(ROWS)
    }

    /// Bytes held.
    fn size_in_bytes(&self) -> usize {
        std::mem::size_of_val(self.quants.as_slice())
            + std::mem::size_of_val(self.scales.as_slice())
            + std::mem::size_of_val(self.mins.as_slice())
    }

    /// Row `row`'s values, dequantized into `out` (`k` values).
    fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let (g, r) = (row / ROWS, row % ROWS);
        let chunks = self.format.chunks();
        for (b, vals) in out.chunks_exact_mut(QK).enumerate() {
            let at = (g * self.blocks + b) * ROWS + r;
            let d = self.scales[at].to_f32();
            let base = (g * self.blocks + b) * chunks;
            let byte = |i: usize| self.quants[base + i / 4].0[r * 4 + i % 4];
            match self.format {
                Format::Q4_0 | Format::Q4_1 => {
                    let m = match self.format {
                        Format::Q4_1 => self.mins[at].to_f32(),
                        _ => -8.0 * d,
                    };
                    for i in 0..QK / 2 {
                        vals[i] = f32::from(byte(i) & 0x0F) * d + m;
                        vals[i + QK / 2] = f32::from(byte(i) >> 4) * d + m;
                    }
                }
                Format::Q8_0 => {
                    for (i, v) in vals.iter_mut().enumerate() {
                        *v = f32::from(byte(i) as i8) * d;
                    }
                }
            }
        }
    }
}

/// Activations quantized to 8 bits, 32 values per block (llama.cpp's Q8_0
/// and Q8_1 in one: the block sums serve both).
#[derive(Debug, Default)]
pub(crate) struct Activations {
    /// Row-major `(rows, k)` quants.
    pub(crate) qs: Vec<i8>,
    /// Per block: the f16-rounded scale `d`.
    pub(crate) d: Vec<f32>,
    /// Per block: `Σq`.
    pub(crate) sums: Vec<i32>,
    /// Per block: `f16(d · Σq)`, Q8_1's `s` (for Q4_1's minimums).
    pub(crate) s: Vec<f32>,
    /// Blocks per row.
    pub(crate) blocks: usize,
}

impl Activations {
    /// Quantizes `rows` rows of `k` values (in parallel for many rows).
    pub(crate) fn quantize(x: &[f32], k: usize) -> Self {
        let blocks = k / QK;
        let total = x.len() / QK;
        let mut a = Self {
            qs: vec![0; x.len()],
            d: vec![0.0; total],
            sums: vec![0; total],
            s: vec![0.0; total],
            blocks,
        };
        // Blocks per parallel task: enough to outweigh a rayon dispatch.
        const PER_TASK: usize = 256;
        x.par_chunks(QK * PER_TASK)
            .zip(a.qs.par_chunks_mut(QK * PER_TASK))
            .zip(a.d.par_chunks_mut(PER_TASK))
            .zip(a.sums.par_chunks_mut(PER_TASK))
            .zip(a.s.par_chunks_mut(PER_TASK))
            .for_each(|((((x, qs), d), sums), s)| {
                for ((((x, qs), d), sum), s) in x
                    .chunks_exact(QK)
                    .zip(qs.chunks_exact_mut(QK))
                    .zip(d)
                    .zip(sums)
                    .zip(s)
                {
                    (*d, *sum, *s) = quantize_block(x, qs);
                }
            });
        a
    }

    /// Row `row`'s quants from block `b` on.
    pub(crate) fn row(&self, row: usize) -> ActRow<'_> {
        let (from, to) = (row * self.blocks, (row + 1) * self.blocks);
        ActRow {
            qs: &self.qs[from * QK..to * QK],
            d: &self.d[from..to],
            sums: &self.sums[from..to],
            s: &self.s[from..to],
        }
    }
}

/// One row of [`Activations`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub(crate) qs: &'a [i8],
    pub(crate) d: &'a [f32],
    pub(crate) sums: &'a [i32],
    pub(crate) s: &'a [f32],
}

/// One block as llama.cpp's x86 `quantize_row_q8_1`: `d = amax / 127`,
/// `q = round_ties_even(x · 127 / amax)`; returns `(f16(d), Σq, f16(d·Σq))`.
fn quantize_block(x: &[f32], qs: &mut [i8]) -> (f32, i32, f32) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = round_ties_even(v * id) as i8;
        sum += i32::from(*q);
    }
    (
        f16::from_f32(d).to_f32(),
        sum,
        f16::from_f32(sum as f32 * d).to_f32(),
    )
}

/// `v` rounded to the nearest integer, ties to even, for `|v| ≤ 2²²`:
/// adding and subtracting 1.5 · 2²³ leaves no fraction bits, and f32
/// addition rounds ties to even. Unlike `f32::round_ties_even` it needs no
/// SSE4.1 (a baseline x86-64 build would call libm's `rintf` per value)
/// and vectorizes.
#[inline(always)]
fn round_ties_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// The instruction sets a kernel is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Portable Rust.
    Scalar,
    /// AVX2 + FMA + F16C (x86-64-v3).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 F/BW + VNNI.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Isa {
    /// The best this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Self::Avx512Vnni;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Self::Avx2;
            }
        }
        Self::Scalar
    }

    /// Every kernel this CPU can run, best last (for tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Self> {
        let mut out = vec![Self::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if matches!(Self::detect(), Self::Avx2 | Self::Avx512Vnni) {
                out.push(Self::Avx2);
            }
            if Self::detect() == Self::Avx512Vnni {
                out.push(Self::Avx512Vnni);
            }
        }
        out
    }
}

/// Computes one group (rows `16g..16g + 16`) against up to [`TILE`]
/// activation rows; `out` is `(rows.len(), 16)`.
fn group(w: &Interleaved, isa: Isa, g: usize, act: &[ActRow<'_>], out: &mut [f32]) {
    match isa {
        Isa::Scalar => scalar::group(w, g, act, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => x86::group(w, isa, g, act, out),
    }
}

/// `x · Wᵀ` for `m` rows of `x` (`m × k` values): `m × n` values.
fn matmul(w: &Interleaved, isa: Isa, x: &[f32]) -> Vec<f32> {
    let m = x.len() / w.k;
    let act = Activations::quantize(x, w.k);
    let rows: Vec<ActRow<'_>> = (0..m).map(|i| act.row(i)).collect();
    let groups = w.groups();
    // Group-major result: each group's (m, 16) outputs are contiguous, so
    // tasks own disjoint slices.
    let mut out_g = vec![0f32; groups * m * ROWS];
    // Groups per task: at least ~64 KB of weights, so that a dispatch is
    // cheap next to the work, yet enough tasks to balance two or more cores.
    let min_len = (65_536 / (w.blocks * w.format.quant_bytes() * ROWS)).max(1);
    out_g
        .par_chunks_mut(m * ROWS)
        .enumerate()
        .with_min_len(min_len)
        .for_each(|(g, out)| {
            for (tile, out) in rows.chunks(TILE).zip(out.chunks_mut(TILE * ROWS)) {
                group(w, isa, g, tile, out);
            }
        });
    if m == 1 {
        out_g.truncate(w.n);
        return out_g;
    }
    let mut out = vec![0f32; m * w.n];
    for (g, block) in out_g.chunks_exact(m * ROWS).enumerate() {
        let cols = ROWS.min(w.n - g * ROWS);
        for (i, vals) in block.chunks_exact(ROWS).enumerate() {
            let at = i * w.n + g * ROWS;
            out[at..at + cols].copy_from_slice(&vals[..cols]);
        }
    }
    out
}

/// `x · Wᵀ` for a Q4_0, Q4_1 or Q8_0 weight `W` of shape `(n, k)`, repacked
/// at construction (see the module docs). CPU only.
#[derive(Debug, Clone)]
pub struct InterleavedMatMul {
    weight: Arc<Interleaved>,
    isa: Isa,
}

impl InterleavedMatMul {
    /// Repacks a CPU weight of a supported type; `None` for other types,
    /// devices or shapes (the caller keeps another kernel).
    pub fn new(weight: &QTensor) -> Option<Self> {
        let format = Format::of(weight.dtype())?;
        if !weight.device().is_cpu() {
            return None;
        }
        let (n, k) = weight.shape().dims2().ok()?;
        let data = weight.data().ok()?;
        let weight = Interleaved::from_blocks(format, n, k, &data)?;
        Some(Self {
            weight: Arc::new(weight),
            isa: Isa::detect(),
        })
    }

    /// Bytes of weight data held.
    pub fn size_in_bytes(&self) -> usize {
        self.weight.size_in_bytes()
    }

    /// `(n, k)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.weight.n, self.weight.k)
    }

    /// Row `row` of the weight as f32 (an embedding lookup), or `None` when
    /// out of range.
    pub fn row(&self, row: usize) -> Option<Vec<f32>> {
        (row < self.weight.n).then(|| {
            let mut out = vec![0f32; self.weight.k];
            self.weight.dequantize_row(row, &mut out);
            out
        })
    }
}

impl CustomOp1 for InterleavedMatMul {
    fn name(&self) -> &'static str {
        "lumen-interleaved-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, dims) = matmul_input(self.name(), storage, layout, self.weight.k)?;
        let out = matmul(&self.weight, self.isa, x);
        Ok((
            CpuStorage::F32(out),
            matmul_output_shape(dims, self.weight.n),
        ))
    }
}

#[cfg(test)]
mod tests;
