//! Quantized matmuls on the CPU for the GGUF types the catalogue uses
//! (Q4_0, Q4_1, Q8_0 and the k-quants Q4_K, Q5_K, Q6_K), from weights
//! repacked at load into an interleaved layout.
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
//! The k-quants (Q4_K, Q5_K, Q6_K: 256-value super-blocks) use the same
//! chunks: Q4_K's and Q5_K's quant bytes are copied the same way (low
//! nibbles are one 32-value sub-block, high nibbles the next; Q5_K's fifth
//! bits follow as 8 more chunks of its `qh` bytes); Q6_K's 6-bit values are
//! split into a nibble plane (values `v` and `128 + v` in one byte) and a
//! 2-bit plane (values `v`, `64 + v`, `128 + v`, `192 + v` in one byte).
//! Their sub-block scales stay as the file packs them, sixteen rows side
//! by side: Q4_K's and Q5_K's twelve bytes of 6-bit scales and minimums
//! (byte `i` of the sixteen rows, then byte `i + 1`), Q6_K's sixteen signed
//! bytes; so a group costs what its rows cost in the file here too (144,
//! 176 and 210 bytes per block). The SIMD kernels unpack the 6-bit values
//! of a block to bytes as they reach it (x86: on the stack, NEON: in
//! registers), a few vector instructions per 16 rows × 256 values (see
//! `x86::unpack_k_avx512`). That costs decoding a model of Q4_K alone about
//! 3.5% at 3B's shapes and 10% at 11B's (two threads, measured against the
//! unpacked bytes this layout kept before), for 2.8% less memory. Q4_K_M
//! files decode as fast as before within the machine's noise: their Q6_K
//! layers got faster at the same time (`bench/README.md`).
//!
//! # Arithmetic
//! Activations are quantized once per call to 8 bits per value with one
//! f16-rounded scale per block, exactly as llama.cpp's `quantize_row_q8_0`
//! / `q8_1` do (Q4_1's block sums `s = f16(d · Σq)` in f32 first), and the
//! integer dot products are exact, so results agree with llama.cpp on the
//! same file up to the order of f32 additions. The k-quants take llama.cpp's
//! Q8_K activations instead: one f32 scale per 256 values and sums per 16.
//! Kernels: AVX-512 VNNI and AVX2 on x86-64, NEON with DotProd on aarch64
//! (chosen at run time, see `Isa`; on CPUs with none of them, candle
//! computes every type but Q4_1) and a portable scalar one that is also
//! the reference the others are tested against.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;
use rayon::prelude::*;

use crate::kernels::{matmul_input, matmul_output_shape};
use crate::swiglu::swiglu_row;

#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod tile;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Values per quantization block.
pub(crate) const QK: usize = 32;
/// Values per k-quant super-block.
pub(crate) const QK_K: usize = 256;
/// Bytes of Q4_K's and Q5_K's packed 6-bit sub-block scales and minimums
/// per block.
pub(crate) const K_SCALE_BYTES: usize = 12;
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
    /// Per 32-value sub-block `j`: `x = d · sc_j · q − dmin · m_j`,
    /// 4-bit `q`, 6-bit `sc`, `m`.
    Q4K,
    /// As Q4_K with 5-bit `q` (a fifth bit per value in `qh`).
    Q5K,
    /// Per 16-value sub-block `j`: `x = d · sc_j · (q − 32)`, 6-bit `q`,
    /// signed 8-bit `sc`.
    Q6K,
}

impl Format {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q5K => Some(Self::Q5K),
            GgmlDType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    /// Whether this is a k-quant (256-value super-blocks, Q8_K activations).
    pub(crate) fn is_k(self) -> bool {
        matches!(self, Self::Q4K | Self::Q5K | Self::Q6K)
    }

    /// Values per block.
    pub(crate) fn block_len(self) -> usize {
        if self.is_k() { QK_K } else { QK }
    }

    /// Bytes of one GGUF block.
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18, // d: f16, qs: [u8; 16]
            Self::Q4_1 => 20, // d: f16, m: f16, qs: [u8; 16]
            Self::Q8_0 => 34, // d: f16, qs: [i8; 32]
            Self::Q4K => 144, // d, dmin: f16, scales: [u8; 12], qs: [u8; 128]
            Self::Q5K => 176, // d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]
            Self::Q6K => 210, // ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16
        }
    }

    /// Where the (nibble) quant bytes start in a GGUF block; Q6_K is
    /// unpacked value by value instead (`q6k_values`).
    fn quants_at(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q8_0 => 2,
            Self::Q4_1 => 4,
            Self::Q4K => 16,
            Self::Q5K => 48,
            Self::Q6K => 0,
        }
    }

    /// Quant bytes per row per block.
    pub(crate) fn quant_bytes(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 => QK / 2,
            Self::Q8_0 => QK,
            Self::Q4K => QK_K / 2,
            Self::Q5K => QK_K / 2 + QK_K / 8,
            Self::Q6K => QK_K / 2 + QK_K / 4,
        }
    }

    /// Bytes of sub-block scales (and minimums) per row per block, packed
    /// as in the file.
    pub(crate) fn sub_bytes(self) -> usize {
        match self {
            // Q4_K, Q5_K: 8 scales and 8 minimums of 6 bits; Q6_K: 16
            // signed 8-bit scales.
            Self::Q4K | Self::Q5K => K_SCALE_BYTES,
            Self::Q6K => 16,
            _ => 0,
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
    /// Blocks per row: `k / 32`, or `k / 256` for the k-quants.
    pub(crate) blocks: usize,
    /// `groups × blocks × chunks` chunks.
    pub(crate) quants: Vec<Chunk>,
    /// `groups × blocks × 16` scales (`d`).
    pub(crate) scales: Vec<f16>,
    /// `groups × blocks × 16` minimums (Q4_1's `m`, Q4_K's `dmin`), else
    /// empty.
    pub(crate) mins: Vec<f16>,
    /// k-quants: per group and block, `[byte][row]`: Q4_K's and Q5_K's
    /// 12 bytes of packed scales and minimums (`q4k_scale_min`), Q6_K's 16
    /// signed scales (one per sub-block). Else empty.
    pub(crate) sub: Vec<u8>,
}

/// Q4_K's packed 6-bit scale and minimum of sub-block `j`
/// (`get_scale_min_k4` in llama.cpp).
pub(crate) fn q4k_scale_min(q: &[u8; K_SCALE_BYTES], j: usize) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q6_K's 256 values of a block as unsigned 6-bit numbers (`q + 32`), in
/// order (`dequantize_row_q6_K` in llama.cpp).
fn q6k_values(block: &[u8]) -> [u8; QK_K] {
    let (ql, qh) = (&block[..128], &block[128..192]);
    let mut q = [0u8; QK_K];
    for n in 0..2 {
        let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
        for l in 0..32 {
            let v = &mut q[128 * n..];
            v[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            v[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            v[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            v[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    q
}

/// How much of a weight [`Interleaved::from_blocks`] reads between two
/// reports of its progress (see [`InterleavedMatMul::from_ggml`]).
const REPORT_BYTES: usize = 8 << 20;

impl Interleaved {
    /// Repacks GGUF blocks of an `(n, k)` matrix, reading `data` once from
    /// start to end and calling `read(bytes)` with how much of it has been
    /// read, every [`REPORT_BYTES`] or so and at the end. `None` when
    /// `data` is not exactly such a matrix.
    fn from_blocks(
        format: Format,
        n: usize,
        k: usize,
        data: &[u8],
        read: &mut dyn FnMut(usize),
    ) -> Option<Self> {
        let len = format.block_len();
        if n == 0 || k == 0 || !k.is_multiple_of(len) {
            return None;
        }
        let blocks = k / len;
        let row_bytes = blocks * format.block_bytes();
        if data.len() != n.checked_mul(row_bytes)? {
            return None;
        }
        let groups = n.div_ceil(ROWS);
        let chunks = format.chunks();
        let mut quants = vec![Chunk([0; CHUNK]); groups * blocks * chunks];
        let mut scales = vec![f16::ZERO; groups * blocks * ROWS];
        let mut mins = match format {
            Format::Q4_1 | Format::Q4K | Format::Q5K => vec![f16::ZERO; groups * blocks * ROWS],
            _ => Vec::new(),
        };
        let sub_len = format.sub_bytes() * ROWS;
        let mut sub = vec![0u8; groups * blocks * sub_len];
        let f16_at = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]);
        let report_rows = (REPORT_BYTES / row_bytes).max(1);
        for (row, src) in data.chunks_exact(row_bytes).enumerate() {
            if row > 0 && row.is_multiple_of(report_rows) {
                read(row * row_bytes);
            }
            let (g, r) = (row / ROWS, row % ROWS);
            for (b, block) in src.chunks_exact(format.block_bytes()).enumerate() {
                let gb = g * blocks + b;
                let at = gb * ROWS + r;
                let chunk = &mut quants[gb * chunks..(gb + 1) * chunks];
                let sub = &mut sub[gb * sub_len..(gb + 1) * sub_len];
                match format {
                    Format::Q6K => {
                        scales[at] = f16_at(block, 208);
                        for (j, sc) in block[192..208].iter().enumerate() {
                            sub[j * ROWS + r] = *sc;
                        }
                        let q = q6k_values(block);
                        let (nibbles, high) = chunk.split_at_mut(32);
                        for (c, chunk) in nibbles.iter_mut().enumerate() {
                            for i in 0..4 {
                                let v = 4 * c + i;
                                chunk.0[r * 4 + i] = (q[v] & 0x0F) | ((q[128 + v] & 0x0F) << 4);
                            }
                        }
                        for (h, chunk) in high.iter_mut().enumerate() {
                            for i in 0..4 {
                                let v = 4 * h + i;
                                chunk.0[r * 4 + i] = (q[v] >> 4)
                                    | ((q[64 + v] >> 4) << 2)
                                    | ((q[128 + v] >> 4) << 4)
                                    | ((q[192 + v] >> 4) << 6);
                            }
                        }
                    }
                    _ => {
                        scales[at] = f16_at(block, 0);
                        if matches!(format, Format::Q4_1 | Format::Q4K | Format::Q5K) {
                            mins[at] = f16_at(block, 2);
                        }
                        if matches!(format, Format::Q4K | Format::Q5K) {
                            for (i, byte) in block[4..16].iter().enumerate() {
                                sub[i * ROWS + r] = *byte;
                            }
                        }
                        // The nibbles; then Q5_K's fifth bits, bit `k` of
                        // byte `l` being value `32k + l`.
                        let qs = &block[format.quants_at()..];
                        for (c, four) in qs.chunks_exact(4).take(32.min(chunks)).enumerate() {
                            chunk[c].0[r * 4..r * 4 + 4].copy_from_slice(four);
                        }
                        if format == Format::Q5K {
                            for (c, four) in block[16..48].chunks_exact(4).enumerate() {
                                chunk[32 + c].0[r * 4..r * 4 + 4].copy_from_slice(four);
                            }
                        }
                    }
                }
            }
        }
        read(data.len());
        Some(Self {
            format,
            n,
            k,
            blocks,
            quants,
            scales,
            mins,
            sub,
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
            + self.sub.len()
    }

    /// Q4_K's or Q5_K's 6-bit scale and minimum of sub-block `j`, row `r`,
    /// block `gb` (group × blocks + block).
    pub(crate) fn k_scale_min(&self, gb: usize, r: usize, j: usize) -> (u8, u8) {
        let sub = &self.sub[gb * K_SCALE_BYTES * ROWS..];
        q4k_scale_min(&std::array::from_fn(|i| sub[i * ROWS + r]), j)
    }

    /// Quant value `v` of row `r` in block `gb` (group × blocks + block),
    /// unsigned as stored (nibble, Q6_K's 6 bits, or Q8_0's byte).
    pub(crate) fn quant(&self, gb: usize, r: usize, v: usize) -> u8 {
        let chunks = &self.quants[gb * self.format.chunks()..];
        let byte = |c: usize, i: usize| chunks[c].0[r * 4 + i];
        match self.format {
            Format::Q8_0 => byte(v / 4, v % 4),
            Format::Q4_0 | Format::Q4_1 => {
                let b = byte((v % 16) / 4, v % 4);
                if v < 16 { b & 0x0F } else { b >> 4 }
            }
            Format::Q4K | Format::Q5K => {
                // Per 64 values: low nibbles, then high nibbles.
                let (pair, w) = (v / 64, v % 64);
                let b = byte(8 * pair + (w % 32) / 4, w % 4);
                let nibble = if w < 32 { b & 0x0F } else { b >> 4 };
                if self.format == Format::Q5K {
                    let fifth = (byte(32 + (v % 32) / 4, v % 4) >> (v / 32)) & 1;
                    nibble | (fifth << 4)
                } else {
                    nibble
                }
            }
            Format::Q6K => {
                let low = byte((v % 128) / 4, v % 4) >> (4 * (v / 128)) & 0x0F;
                let high = (byte(32 + (v % 64) / 4, v % 4) >> (2 * (v / 64))) & 3;
                low | (high << 4)
            }
        }
    }

    /// Row `row`'s values, dequantized into `out` (`k` values), as
    /// llama.cpp's `dequantize_row_*` compute them.
    fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let (g, r) = (row / ROWS, row % ROWS);
        let sub_len = self.format.sub_bytes() * ROWS;
        for (b, vals) in out.chunks_exact_mut(self.format.block_len()).enumerate() {
            let gb = g * self.blocks + b;
            let at = gb * ROWS + r;
            let d = self.scales[at].to_f32();
            let sub = &self.sub[(gb * sub_len).min(self.sub.len())..];
            for (v, x) in vals.iter_mut().enumerate() {
                let q = self.quant(gb, r, v);
                *x = match self.format {
                    Format::Q4_0 => (f32::from(q) - 8.0) * d,
                    Format::Q4_1 => f32::from(q) * d + self.mins[at].to_f32(),
                    Format::Q8_0 => f32::from(q as i8) * d,
                    Format::Q4K | Format::Q5K => {
                        let (sc, m) = self.k_scale_min(gb, r, v / 32);
                        let m = self.mins[at].to_f32() * f32::from(m);
                        d * f32::from(sc) * f32::from(q) - m
                    }
                    Format::Q6K => {
                        let sc = f32::from(sub[(v / 16) * ROWS + r] as i8);
                        d * sc * f32::from(i16::from(q) - 32)
                    }
                };
            }
        }
    }
}

/// Activations quantized to 8 bits: per 32 values for the 32-value formats
/// (llama.cpp's Q8_0 and Q8_1 in one: the block sums serve both), per 256
/// for the k-quants (llama.cpp's Q8_K).
#[derive(Debug, Default)]
pub(crate) struct Activations {
    /// Row-major `(rows, k)` quants.
    pub(crate) qs: Vec<i8>,
    /// Per block: the scale `d` (f16-rounded for 32-value blocks).
    pub(crate) d: Vec<f32>,
    /// `Σq` per 32 values (32-value blocks) or per 16 (Q8_K's `bsums`).
    pub(crate) sums: Vec<i32>,
    /// Per 32-value block: `f16(d · Σq)`, Q8_1's `s` (for Q4_1's
    /// minimums); zero for Q8_K.
    pub(crate) s: Vec<f32>,
    /// Blocks per row.
    pub(crate) blocks: usize,
    /// Values per block.
    pub(crate) block_len: usize,
    /// Sums per block.
    pub(crate) sums_per_block: usize,
}

impl Activations {
    /// Quantizes rows of `k` values for weights of `format` (in parallel
    /// for many rows).
    pub(crate) fn quantize(x: &[f32], k: usize, format: Format) -> Self {
        let mut a = Self::default();
        a.quantize_into(x, k, format);
        a
    }

    /// Empty buffers with room for a row of `values` values in any format.
    pub(crate) fn with_capacity(values: usize) -> Self {
        let blocks = values / QK + 1;
        Self {
            qs: Vec::with_capacity(values),
            d: Vec::with_capacity(blocks),
            sums: Vec::with_capacity(values / 16 + 1),
            s: Vec::with_capacity(blocks),
            ..Self::default()
        }
    }

    /// [`Activations::quantize`] into these buffers, reusing their memory:
    /// nothing is allocated once they have held as many values.
    pub(crate) fn quantize_into(&mut self, x: &[f32], k: usize, format: Format) {
        let len = format.block_len();
        let per_sum = if format.is_k() { 16 } else { QK };
        let total = x.len() / len;
        let spb = len / per_sum;
        refill(&mut self.qs, x.len());
        refill(&mut self.sums, total * spb);
        refill(&mut self.d, total);
        refill(&mut self.s, total);
        self.blocks = k / len;
        self.block_len = len;
        self.sums_per_block = spb;
        // Blocks per parallel task: enough to outweigh a rayon dispatch.
        let per_task = 8192 / len;
        x.par_chunks(len * per_task)
            .zip(self.qs.par_chunks_mut(len * per_task))
            .zip(self.d.par_chunks_mut(per_task))
            .zip(self.sums.par_chunks_mut(spb * per_task))
            .zip(self.s.par_chunks_mut(per_task))
            .for_each(|((((x, qs), d), sums), s)| {
                quantize_task(format.is_k(), x, Task { qs, d, sums, s });
            });
    }

    /// Row `row`.
    pub(crate) fn row(&self, row: usize) -> ActRow<'_> {
        let (from, to) = (row * self.blocks, (row + 1) * self.blocks);
        let (len, spb) = (self.block_len, self.sums_per_block);
        ActRow {
            qs: &self.qs[from * len..to * len],
            d: &self.d[from..to],
            sums: &self.sums[from * spb..to * spb],
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

/// Empties `v` and fills it with `n` zeros, in the memory it has.
fn refill<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    v.clear();
    v.resize(n, T::default());
}

/// One parallel task's share of [`Activations`]: its blocks' quants,
/// scales and sums.
struct Task<'a> {
    qs: &'a mut [i8],
    d: &'a mut [f32],
    sums: &'a mut [i32],
    s: &'a mut [f32],
}

vectorized! {
    /// Quantizes a task's blocks, as Q8_K (`k`) or as Q8_0 / Q8_1, with the
    /// widest vector instructions the CPU has: the arithmetic is the same
    /// in each copy, so the results are too (tested). In a baseline x86-64
    /// build the plain copy runs on SSE2 alone. 6432 rows of 1280 values (a
    /// linear layer's input in the vision encoder), two threads: Q8_K 7.4 →
    /// 3.6 ms, Q8_0 5.2 → 4.0 ms against the first, one-value-at-a-time code.
    fn quantize_task(k: bool, x: &[f32], task: Task<'_>) => quantize_task_any
}

/// [`quantize_task`] in plain Rust, inlined into each instruction set's copy.
#[inline(always)]
fn quantize_task_any(k: bool, x: &[f32], task: Task<'_>) {
    let Task { qs, d, sums, s } = task;
    if k {
        for (((x, qs), d), sums) in x
            .chunks_exact(QK_K)
            .zip(qs.chunks_exact_mut(QK_K))
            .zip(d)
            .zip(sums.chunks_exact_mut(QK_K / 16))
        {
            *d = quantize_block_k(x, qs, sums);
        }
    } else {
        for ((((x, qs), d), sums), s) in x
            .chunks_exact(QK)
            .zip(qs.chunks_exact_mut(QK))
            .zip(d)
            .zip(sums)
            .zip(s)
        {
            (*d, *sums, *s) = quantize_block(x, qs);
        }
    }
}

/// The largest `|v|` of `x` (a multiple of 16 values), NaNs left out; 0 if
/// none. Sixteen lanes side by side, so that it vectorizes.
#[inline(always)]
fn abs_max(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    for chunk in x.chunks_exact(16) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            let v = v.abs();
            *m = if v > *m { v } else { *m };
        }
    }
    // Halving the lanes (the order does not matter to a maximum).
    let mut width = 8;
    while width > 0 {
        let (low, high) = lanes.split_at_mut(width);
        for (m, v) in low.iter_mut().zip(&high[..width]) {
            *m = if *v > *m { *v } else { *m };
        }
        width /= 2;
    }
    lanes[0]
}

/// One 256-value block as llama.cpp's `quantize_row_q8_K_ref`: the value of
/// largest magnitude `max` (the first, if several) maps to −127 (`iscale =
/// −127 / max`), `d = 1 / iscale`, sums per 16 values into `sums`; returns
/// `d`.
#[inline(always)]
fn quantize_block_k(x: &[f32], qs: &mut [i8], sums: &mut [i32]) -> f32 {
    let amax = abs_max(x);
    if amax == 0.0 {
        qs.fill(0);
        sums.fill(0);
        return 0.0;
    }
    // `amax` is some value's magnitude, so the search finds one.
    let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
    let iscale = -127.0 / max;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = round_ties_even(iscale * v).min(127.0) as i8;
    }
    for (sum, q) in sums.iter_mut().zip(qs.chunks_exact(16)) {
        *sum = q.iter().map(|q| i32::from(*q)).sum();
    }
    1.0 / iscale
}

/// One block as llama.cpp's x86 `quantize_row_q8_1`: `d = amax / 127`,
/// `q = round_ties_even(x · 127 / amax)`; returns `(f16(d), Σq, f16(d·Σq))`.
#[inline(always)]
fn quantize_block(x: &[f32], qs: &mut [i8]) -> (f32, i32, f32) {
    let amax = abs_max(x);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(x) {
        *q = round_ties_even(v * id) as i8;
    }
    let sum = qs.iter().map(|q| i32::from(*q)).sum();
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
pub(crate) fn round_ties_even(v: f32) -> f32 {
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
    /// NEON + the dot product instructions (Armv8.2 DotProd).
    #[cfg(target_arch = "aarch64")]
    NeonDot,
}

impl Isa {
    /// The best this CPU runs, or a lesser one named by `LUMEN_CPU_KERNELS`
    /// (`avx2`, `scalar`: for comparing kernels on one machine).
    pub(crate) fn detect() -> Self {
        static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let best = Self::best();
            let asked = match std::env::var("LUMEN_CPU_KERNELS").as_deref() {
                Ok("scalar") => Self::Scalar,
                #[cfg(target_arch = "x86_64")]
                Ok("avx2") if Self::Avx2.runs_here() => Self::Avx2,
                _ => best,
            };
            if asked != best {
                tracing::info!("CPU kernels: {asked:?} (LUMEN_CPU_KERNELS; best here {best:?})");
            }
            asked
        })
    }

    /// Whether kernels outside the quantized matmuls (attention, softmax,
    /// SwiGLU) may use AVX-512 F: the CPU has it and `LUMEN_CPU_KERNELS`
    /// does not ask for a lesser set, so that `LUMEN_CPU_KERNELS=avx2`
    /// measures what a CPU without AVX-512 runs.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avx512f_allowed() -> bool {
        static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ALLOWED.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && !matches!(
                    std::env::var("LUMEN_CPU_KERNELS").as_deref(),
                    Ok("avx2" | "scalar")
                )
        })
    }

    /// Whether this CPU has the instructions `self`'s kernels use (std
    /// caches the detection).
    pub(crate) fn runs_here(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Self::NeonDot => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
        }
    }

    /// Every kernel set, worst first.
    fn all() -> Vec<Self> {
        vec![
            Self::Scalar,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni,
            #[cfg(target_arch = "aarch64")]
            Self::NeonDot,
        ]
    }

    fn best() -> Self {
        Self::all()
            .into_iter()
            .rfind(|isa| isa.runs_here())
            .unwrap_or(Self::Scalar)
    }

    /// Every kernel this CPU can run, best last (for tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Self> {
        Self::all()
            .into_iter()
            .filter(|isa| isa.runs_here())
            .collect()
    }
}

/// The CPU kernels quantized layers use on this machine: `avx512-vnni`,
/// `avx2` or `scalar` (see `LUMEN_CPU_KERNELS`).
pub fn cpu_kernels() -> &'static str {
    match Isa::detect() {
        Isa::Scalar => "scalar",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => "avx2",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => "avx512-vnni",
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDot => "neon-dotprod",
    }
}

/// How this machine's kernels ask for weights ahead of them when
/// decoding, for benchmarks' reports: `level-2 prefetch 3 KiB ahead`
/// (Intel), `level-1 prefetch 4 KiB ahead` (other x86-64 CPUs; see
/// `LUMEN_CPU_PREFETCH`), or `hardware prefetch` (the scalar and aarch64
/// kernels leave it to the CPU).
pub fn cpu_prefetch() -> String {
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => x86::Prefetch::here().describe(),
        _ => "hardware prefetch".into(),
    }
}

/// Computes one group (rows `16g..16g + 16`) against up to [`TILE`]
/// activation rows; `out` is `(rows.len(), 16)`.
fn group(w: &Interleaved, isa: Isa, g: usize, act: &[ActRow<'_>], out: &mut [f32]) {
    match isa {
        Isa::Scalar => scalar::group(w, g, act, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => tile::group(&x86::Kernels(isa), w, g, act, out),
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDot => tile::group(&neon::Kernels, w, g, act, out),
    }
}

/// `x · Wᵀ` for `m` rows of `x` (`m × k` values): `m × n` values.
fn matmul(w: &Interleaved, isa: Isa, x: &[f32]) -> Vec<f32> {
    matmul_many(&[w], isa, x)
}

/// `x · [W₁ W₂ …]ᵀ` for weights with the same `k` and activation format:
/// `m × Σn` values, each weight's outputs side by side. The activations are
/// quantized once and all weights' groups shared out in one parallel pass
/// (a layer's Q, K and V projections, or its gate and up projections);
/// each task writes its groups' columns of the result directly.
fn matmul_many(ws: &[&Interleaved], isa: Isa, x: &[f32]) -> Vec<f32> {
    let Some(first) = ws.first() else {
        return Vec::new();
    };
    let act = Activations::quantize(x, first.k, first.format);
    let rows: Vec<ActRow<'_>> = (0..x.len() / first.k).map(|i| act.row(i)).collect();
    // (weight, the result's column where its outputs start, group) for
    // every group of every weight, in order.
    let mut groups = Vec::new();
    let mut width = 0;
    for w in ws {
        groups.extend((0..w.groups()).map(|g| (*w, width, g)));
        width += w.n;
    }
    let mut out = vec![0f32; rows.len() * width];
    let columns = Columns::new(&mut out, width);
    groups
        .par_iter()
        .with_min_len(groups_per_task(first))
        .for_each(|&(w, col, g)| {
            with_unpacked(|[unpacked, _]| {
                let unpacked =
                    (rows.len() > TILE && unpacked.fill(isa, w, g)).then_some(&*unpacked);
                let mut tile_out = [0f32; TILE * ROWS];
                for (t, tile) in rows.chunks(TILE).enumerate() {
                    let vals = &mut tile_out[..tile.len() * ROWS];
                    group_tile(w, isa, g, tile, vals, unpacked);
                    columns.put(t * TILE, col + g * ROWS, w.n - g * ROWS, vals);
                }
            });
        });
    out
}

#[cfg(target_arch = "x86_64")]
use x86::GroupBytes;

/// Where no kernel reads a row group unpacked: there is nothing to fill.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Default)]
struct GroupBytes;

#[cfg(not(target_arch = "x86_64"))]
impl GroupBytes {
    fn fill(&mut self, _: Isa, _: &Interleaved, _: usize) -> bool {
        false
    }

    fn tile(&self, _: &Interleaved, _: usize, _: &[ActRow<'_>], _: &mut [f32]) -> bool {
        false
    }
}

thread_local! {
    /// Each thread's unpacked row groups: a matmul's, or a gate's and an
    /// up projection's.
    static UNPACKED: std::cell::RefCell<[GroupBytes; 2]> = std::cell::RefCell::new(Default::default());
}

/// Calls `f` with this thread's [`UNPACKED`] groups (fresh ones if they
/// are in use further up this thread's stack).
fn with_unpacked(f: impl FnOnce(&mut [GroupBytes; 2])) {
    UNPACKED.with(|unpacked| match unpacked.try_borrow_mut() {
        Ok(mut unpacked) => f(&mut unpacked),
        Err(_) => f(&mut Default::default()),
    });
}

/// [`group`] for one tile, from `unpacked` where it holds group `g` of `w`
/// ([`GroupBytes::fill`]).
fn group_tile(
    w: &Interleaved,
    isa: Isa,
    g: usize,
    act: &[ActRow<'_>],
    out: &mut [f32],
    unpacked: Option<&GroupBytes>,
) {
    if !unpacked.is_some_and(|u| u.tile(w, g, act, out)) {
        group(w, isa, g, act, out);
    }
}

/// `silu(x · Gᵀ) · (x · Uᵀ)` for a gate `G` and an up projection `U` of the
/// same shape and format: `m × n` values, a Llama MLP's first half. Each
/// task computes a group of both and applies SwiGLU to its sixteen outputs
/// per activation row at once ([`swiglu_row`], as the unfused operation),
/// so neither projection's `m × n` result is ever held: a 1B model's
/// 512-token prompt chunk holds 16 MB here instead of 64.
fn swiglu_matmul(gate: &Interleaved, up: &Interleaved, isa: Isa, x: &[f32]) -> Vec<f32> {
    let act = Activations::quantize(x, gate.k, gate.format);
    let rows: Vec<ActRow<'_>> = (0..x.len() / gate.k).map(|i| act.row(i)).collect();
    let mut out = vec![0f32; rows.len() * gate.n];
    let columns = Columns::new(&mut out, gate.n);
    // Half as many groups per task as a plain matmul: each is two weights'.
    let per_task = groups_per_task(gate).div_ceil(2);
    (0..gate.groups())
        .into_par_iter()
        .with_min_len(per_task)
        .for_each(|g| {
            with_unpacked(|[gate_bytes, up_bytes]| {
                let many = rows.len() > TILE;
                let gate_bytes = (many && gate_bytes.fill(isa, gate, g)).then_some(&*gate_bytes);
                let up_bytes = (many && up_bytes.fill(isa, up, g)).then_some(&*up_bytes);
                let mut gate_out = [0f32; TILE * ROWS];
                let mut up_out = [0f32; TILE * ROWS];
                let mut tile_out = [0f32; TILE * ROWS];
                for (t, tile) in rows.chunks(TILE).enumerate() {
                    let len = tile.len() * ROWS;
                    group_tile(gate, isa, g, tile, &mut gate_out[..len], gate_bytes);
                    group_tile(up, isa, g, tile, &mut up_out[..len], up_bytes);
                    swiglu_row(&gate_out[..len], &up_out[..len], &mut tile_out[..len]);
                    columns.put(t * TILE, g * ROWS, gate.n - g * ROWS, &tile_out[..len]);
                }
            });
        });
    out
}

/// A row-major `(rows, width)` result that parallel tasks write a group's
/// columns at a time: no task writes another's columns, so they may share
/// it (each group's outputs would otherwise be gathered into a buffer of
/// their own and copied into place, doubling the memory a matmul holds).
struct Columns<'a> {
    ptr: *mut f32,
    rows: usize,
    width: usize,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: `Columns` hands out no references; `put` writes only the columns
// of the group its caller computed, which no other task writes (each group
// is one task's), and only within the borrowed slice.
#[allow(unsafe_code)]
unsafe impl Send for Columns<'_> {}
#[allow(unsafe_code)]
unsafe impl Sync for Columns<'_> {}

impl<'a> Columns<'a> {
    fn new(out: &'a mut [f32], width: usize) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            rows: out.len().checked_div(width).unwrap_or(0),
            width,
            _out: std::marker::PhantomData,
        }
    }

    /// Writes a tile's results `vals` (`(t, 16)`: one group's sixteen
    /// outputs for `t` activation rows) at rows `row..row + t`, columns
    /// `col..col + min(16, left)`; `left` is how many columns the weight
    /// has from `col` on (its last group is padded). Must be called only by
    /// the task that owns the group at `col` (see the `Sync` impl).
    fn put(&self, row: usize, col: usize, left: usize, vals: &[f32]) {
        let cols = left.min(ROWS).min(self.width.saturating_sub(col));
        for (i, v) in vals.chunks_exact(ROWS).enumerate() {
            if row + i >= self.rows {
                return;
            }
            let at = (row + i) * self.width + col;
            // SAFETY: `at + cols ≤ rows × width`, the borrowed slice's length
            // (checked above), and these columns are this task's alone.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.add(at), cols)
            };
        }
    }
}

/// `x · [W₁ W₂ …]ᵀ` for one row `x` of `k` values (weights as for
/// [`matmul_many`]), quantized into `act`, written to `out`: each weight's
/// outputs in turn, each padded to whole groups of 16 ([`padded_width`]).
/// Allocates nothing once `act` has held a row of this size (decoding's
/// path, see [`crate::decode`]).
pub(crate) fn matvec_into(
    ws: &[Arc<Interleaved>],
    isa: Isa,
    x: &[f32],
    act: &mut Activations,
    out: &mut [f32],
) {
    let Some(first) = ws.first() else {
        return;
    };
    act.quantize_into(x, first.k, first.format);
    let row = [act.row(0)];
    let per_task = groups_per_task(first);
    out.par_chunks_mut(ROWS)
        .enumerate()
        .with_min_len(per_task)
        // Rayon splits a piece of work only when another thread steals
        // it, so an uncapped product ends in pieces of up to a quarter of
        // it, and a thread that finishes first waits on the other's last
        // one. Pieces of at most two tasks (~128 KB): 1B decode on 2
        // threads, 4 alternated pairs, mean tok/s: Q4_0 40.3 → 40.8,
        // Q4_K_M 32.7 → 33.5, Q8_0 20.3 → 20.8.
        .with_max_len(2 * per_task)
        .for_each(|(mut g, out)| {
            for w in ws {
                if g < w.groups() {
                    group(w, isa, g, &row, out);
                    return;
                }
                g -= w.groups();
            }
        });
}

/// Groups of `w` per parallel task: at least ~64 KB of weights, so that a
/// dispatch is cheap next to the work, yet enough tasks to balance two or
/// more cores.
fn groups_per_task(w: &Interleaved) -> usize {
    let group_bytes = w.blocks * w.format.quant_bytes() * ROWS;
    (65_536 / group_bytes).max(1)
}

/// Outputs [`matvec_into`] writes for weights of these row counts: each
/// rounded up to whole groups of 16.
pub(crate) fn padded_width(n: usize) -> usize {
    n.div_ceil(ROWS) * ROWS
}

/// `x · Wᵀ` for a weight `W` of shape `(n, k)` of one of the module's types,
/// repacked at construction (see the module docs). CPU only.
#[derive(Debug, Clone)]
pub struct InterleavedMatMul {
    weight: Arc<Interleaved>,
    isa: Isa,
}

impl InterleavedMatMul {
    /// Repacks a CPU weight of a supported type; `None` for other types,
    /// devices or shapes (the caller keeps another kernel).
    pub fn new(weight: &QTensor) -> Option<Self> {
        if !weight.device().is_cpu() {
            return None;
        }
        let (n, k) = weight.shape().dims2().ok()?;
        let data = weight.data().ok()?;
        Self::from_ggml(weight.dtype(), n, k, &data, &mut |_| {})
    }

    /// Repacks an `(n, k)` weight straight from its GGUF bytes (a file's
    /// mapping: no copy of the quantized tensor on the way), calling
    /// `read(bytes)` as it goes, every 8 MiB or so, with how much of `data`
    /// it has read (and will not read again): a loader drops those pages
    /// from memory as it goes, so that loading holds little more than the
    /// repacked weights at any time. `None` for types, sizes and CPUs the
    /// kernels do not cover, or bytes of the wrong length.
    pub fn from_ggml(
        dtype: GgmlDType,
        n: usize,
        k: usize,
        data: &[u8],
        read: &mut dyn FnMut(usize),
    ) -> Option<Self> {
        let format = Format::of(dtype)?;
        if !Self::computes(dtype, k) {
            return None;
        }
        let weight = Interleaved::from_blocks(format, n, k, data, read)?;
        Some(Self {
            weight: Arc::new(weight),
            isa: Isa::detect(),
        })
    }

    /// Whether [`InterleavedMatMul::new`] takes CPU weights of this type
    /// with rows of `k` values, on this CPU. Without SIMD kernels (x86-64
    /// without AVX2, aarch64 without DotProd, other CPUs) only Q4_1 does,
    /// whose alternative is as scalar (`kernels.rs`); candle's own kernels
    /// do the rest there.
    pub fn computes(dtype: GgmlDType, k: usize) -> bool {
        let simd = Isa::detect() != Isa::Scalar;
        Format::of(dtype).is_some_and(|f| {
            k > 0 && k.is_multiple_of(f.block_len()) && (simd || f == Format::Q4_1)
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

    /// The repacked weight and the kernels chosen for it.
    pub(crate) fn parts(&self) -> (&Arc<Interleaved>, Isa) {
        (&self.weight, self.isa)
    }

    /// Row `row` of the weight as f32 into `out` (`k` values); false when
    /// either is out of range.
    pub fn row_into(&self, row: usize, out: &mut [f32]) -> bool {
        let fits = row < self.weight.n && out.len() == self.weight.k;
        if fits {
            self.weight.dequantize_row(row, out);
        }
        fits
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

/// Several [`InterleavedMatMul`]s over the same input computed as one:
/// `x · [W₁ W₂ …]ᵀ`, the outputs side by side (see `matmul_many`).
#[derive(Debug, Clone)]
pub struct FusedMatMul {
    parts: Vec<Arc<Interleaved>>,
    isa: Isa,
}

impl FusedMatMul {
    /// Fuses weights that read the same input the same way (equal `k`, and
    /// all of them k-quants or none); `None` otherwise.
    pub fn new(parts: &[&InterleavedMatMul]) -> Option<Self> {
        let first = parts.first()?;
        let same = parts.iter().all(|p| {
            p.weight.k == first.weight.k
                && p.weight.format.is_k() == first.weight.format.is_k()
                && p.isa == first.isa
        });
        same.then(|| Self {
            parts: parts.iter().map(|p| p.weight.clone()).collect(),
            isa: first.isa,
        })
    }

    /// The repacked weights, in order, and the kernels chosen for them.
    pub(crate) fn parts(&self) -> (&[Arc<Interleaved>], Isa) {
        (&self.parts, self.isa)
    }

    /// Each part's number of outputs, in order.
    pub fn widths(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().map(|w| w.n)
    }

    /// For a gate and an up projection (two parts of one shape and format):
    /// the operation computing `silu(x · Gᵀ) · (x · Uᵀ)` without holding
    /// either product (see `swiglu_matmul`); `None` for other parts.
    pub fn swiglu(&self) -> Option<SwiGluMatMul<'_>> {
        let [gate, up] = &self.parts[..] else {
            return None;
        };
        let same = gate.n == up.n && gate.k == up.k && gate.format == up.format;
        same.then_some(SwiGluMatMul {
            gate,
            up,
            isa: self.isa,
        })
    }
}

/// A Llama MLP's gate and up projections with SwiGLU applied as they are
/// computed: `silu(x · Gᵀ) · (x · Uᵀ)`, from [`FusedMatMul::swiglu`].
#[derive(Debug, Clone, Copy)]
pub struct SwiGluMatMul<'a> {
    gate: &'a Interleaved,
    up: &'a Interleaved,
    isa: Isa,
}

impl CustomOp1 for SwiGluMatMul<'_> {
    fn name(&self) -> &'static str {
        "lumen-swiglu-interleaved-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, dims) = matmul_input(self.name(), storage, layout, self.gate.k)?;
        let out = swiglu_matmul(self.gate, self.up, self.isa, x);
        Ok((CpuStorage::F32(out), matmul_output_shape(dims, self.gate.n)))
    }
}

impl CustomOp1 for FusedMatMul {
    fn name(&self) -> &'static str {
        "lumen-fused-interleaved-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let k = self.parts.first().map_or(0, |w| w.k);
        let (x, dims) = matmul_input(self.name(), storage, layout, k)?;
        let parts: Vec<&Interleaved> = self.parts.iter().map(|w| &**w).collect();
        let out = matmul_many(&parts, self.isa, x);
        Ok((
            CpuStorage::F32(out),
            matmul_output_shape(dims, self.widths().sum()),
        ))
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
