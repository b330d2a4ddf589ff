//! Q4_K quantization at load, bit for bit candle's `BlockQ4K::from_float`
//! (ggml's first k-quant recipe: per 32-value sub-block, up to five rounds
//! of least squares for a scale and a minimum, then both quantized to 6
//! bits against the block's largest), sixteen sub-blocks at a time.
//!
//! candle runs the recipe one value at a time and rounds through libm's
//! `roundf`; quantizing the 11B vision model's 10.7 billion weights took
//! most of its two-minute load here. The arithmetic below is the same
//! operations in the same order, but each step runs on sixteen sub-blocks
//! side by side (one per SIMD lane: the compiler vectorizes the lane loops
//! for AVX-512 or AVX2, chosen at run time) and rounds without calling
//! libm (truncation, then a step by the dropped fraction). Sums keep
//! candle's order within a sub-block, so the blocks are identical (tested
//! against candle on awkward inputs).

use crate::qmm::{K_SCALE_BYTES, QK_K, q4k_scale_min};

/// Bytes per block: `d`, `dmin` (f16), 12 bytes of 6-bit scales and
/// minimums, 128 bytes of 4-bit values.
pub(crate) const BLOCK_BYTES: usize = 144;
/// Values per sub-block.
const SUB: usize = 32;
/// Sub-blocks quantized side by side: two blocks.
const LANES: usize = 16;
/// Rounds of least squares per sub-block (candle's `ntry`).
const ROUNDS: usize = 5;
/// Largest 4-bit value.
const NMAX: i32 = 15;

/// Quantizes `x` (a multiple of 256 values) into Q4_K blocks, 144 bytes per
/// 256 values in `out`.
pub(crate) fn quantize(x: &[f32], out: &mut [u8]) {
    assert!(x.len().is_multiple_of(QK_K) && out.len() == x.len() / QK_K * BLOCK_BYTES);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F (just checked).
            #[allow(unsafe_code)]
            return unsafe { quantize_avx512(x, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (just checked).
            #[allow(unsafe_code)]
            return unsafe { quantize_avx2(x, out) };
        }
    }
    quantize_any(x, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn quantize_avx512(x: &[f32], out: &mut [u8]) {
    quantize_any(x, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_avx2(x: &[f32], out: &mut [u8]) {
    quantize_any(x, out);
}

/// The recipe in plain Rust; inlined into each instruction set's copy.
#[inline(always)]
fn quantize_any(x: &[f32], out: &mut [u8]) {
    for (x, out) in x.chunks(2 * QK_K).zip(out.chunks_mut(2 * BLOCK_BYTES)) {
        // Sub-block `l`'s value `i` at `t[i][l]` (lanes past the end stay
        // zero and are not used).
        let mut t = [[0f32; LANES]; SUB];
        for (l, sub) in x.chunks_exact(SUB).enumerate() {
            for (row, v) in t.iter_mut().zip(sub) {
                row[l] = *v;
            }
        }
        let (scales, mins) = scale_min(&t);
        for (b, (x, out)) in x
            .chunks_exact(QK_K)
            .zip(out.chunks_exact_mut(BLOCK_BYTES))
            .enumerate()
        {
            let at = 8 * b..8 * b + 8;
            block(x, &scales[at.clone()], &mins[at], out);
        }
    }
}

/// `v.round()` (halves away from zero) without a libm call: truncate (one
/// instruction with SSE4.1 or later), then step by one where the dropped
/// fraction is at least a half. Exact for every f32 (a zero may come out
/// as +0 where `round` keeps −0; every use makes an integer of it).
#[inline(always)]
fn round(v: f32) -> f32 {
    let t = v.trunc();
    let frac = v - t;
    t + if frac >= 0.5 {
        1.0
    } else if frac <= -0.5 {
        -1.0
    } else {
        0.0
    }
}

/// `v.round() as i32`, as candle's `nearest_int`.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    round(v) as i32
}

/// `nearest_int(v).clamp(0, 15)` as an f32 (NaN gives 0, as there).
#[inline(always)]
fn nibble(v: f32) -> f32 {
    round(v).max(0.0).min(NMAX as f32)
}

/// An f32's bits as an integer that orders as `f32::total_cmp` does; the
/// map is its own inverse.
#[inline(always)]
fn total_key(bits: i32) -> i32 {
    bits ^ ((((bits >> 31) as u32) >> 1) as i32)
}

/// Each lane's sub-block scale and minimum (`make_qkx1_quants(15, 5, ..)`
/// in candle: the minimum is returned negated, ≥ 0). Lanes that have
/// settled (no value changed in a round) keep their results while the
/// others go on, as candle's loop stops.
#[inline(always)]
fn scale_min(t: &[[f32; LANES]; SUB]) -> ([f32; LANES], [f32; LANES]) {
    // The smallest and largest value as `min_by` / `max_by` with
    // `total_cmp` find them.
    let mut lo = [i32::MAX; LANES];
    let mut hi = [i32::MIN; LANES];
    for row in t {
        for l in 0..LANES {
            let key = total_key(row[l].to_bits() as i32);
            lo[l] = lo[l].min(key);
            hi[l] = hi[l].max(key);
        }
    }
    let mut min = lo.map(|k| f32::from_bits(total_key(k) as u32));
    let max = hi.map(|k| f32::from_bits(total_key(k) as u32));
    // All values equal: scale and minimum 0, no rounds.
    let flat: [bool; LANES] = std::array::from_fn(|l| max[l] == min[l]);
    let mut active = flat.map(|f| !f);
    let mut scale = [0f32; LANES];
    let mut iscale = [0f32; LANES];
    for l in 0..LANES {
        min[l] = min[l].min(0.0);
        iscale[l] = NMAX as f32 / (max[l] - min[l]);
        scale[l] = 1.0 / iscale[l];
    }
    // The 4-bit values, as f32.
    let mut q = [[0f32; LANES]; SUB];
    for _ in 0..ROUNDS {
        if !active.iter().any(|a| *a) {
            break;
        }
        let mut sumlx = [0f32; LANES];
        // Integers below 2²⁴: exact in f32.
        let mut suml2 = [0f32; LANES];
        let mut changed = [false; LANES];
        for (row, q) in t.iter().zip(q.iter_mut()) {
            for l in 0..LANES {
                let d = row[l] - min[l];
                let li = nibble(iscale[l] * d);
                changed[l] |= li != q[l];
                q[l] = if active[l] { li } else { q[l] };
                sumlx[l] += d * li;
                suml2[l] += li * li;
            }
        }
        let mut new_scale = [0f32; LANES];
        for l in 0..LANES {
            new_scale[l] = sumlx[l] / suml2[l];
        }
        // `Sum` for f32 starts at −0.
        let mut sum = [-0f32; LANES];
        for (row, q) in t.iter().zip(&q) {
            for l in 0..LANES {
                sum[l] += row[l] - new_scale[l] * q[l];
            }
        }
        for l in 0..LANES {
            if active[l] {
                scale[l] = new_scale[l];
                let m = sum[l] / SUB as f32;
                min[l] = if m > 0.0 { 0.0 } else { m };
                iscale[l] = 1.0 / scale[l];
            }
            active[l] &= changed[l];
        }
    }
    let mut neg_min = [0f32; LANES];
    for l in 0..LANES {
        if flat[l] {
            scale[l] = 0.0;
        } else {
            neg_min[l] = -min[l];
        }
    }
    (scale, neg_min)
}

/// One block from its sub-blocks' scales and minimums: both quantized to
/// 6 bits against the largest, then the values to 4 bits.
#[inline(always)]
fn block(x: &[f32], scales: &[f32], mins: &[f32], out: &mut [u8]) {
    let max_scale = scales.iter().fold(0.0f32, |m, &v| v.max(m));
    let max_min = mins.iter().fold(0.0f32, |m, &v| v.max(m));
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; K_SCALE_BYTES];
    for j in 0..8 {
        // As candle: capped at 63, not at 0 (the inputs are ≥ 0).
        let ls = nearest_int(inv_scale * scales[j]).min(63) as u8;
        let lm = nearest_int(inv_min * mins[j]).min(63) as u8;
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = half::f16::from_f32(max_scale / 63.0);
    let dmin = half::f16::from_f32(max_min / 63.0);
    let mut q = [0u8; QK_K];
    for (j, (x, q)) in x.chunks_exact(SUB).zip(q.chunks_exact_mut(SUB)).enumerate() {
        let (sc, m) = q4k_scale_min(&packed, j);
        let dj = d.to_f32() * f32::from(sc);
        if dj != 0.0 {
            let dm = dmin.to_f32() * f32::from(m);
            for (q, x) in q.iter_mut().zip(x) {
                *q = nibble((x + dm) / dj) as u8;
            }
        }
    }
    out[0..2].copy_from_slice(&d.to_le_bytes());
    out[2..4].copy_from_slice(&dmin.to_le_bytes());
    out[4..16].copy_from_slice(&packed);
    let qs = &mut out[16..BLOCK_BYTES];
    for (j, pair) in q.chunks_exact(2 * SUB).enumerate() {
        for i in 0..SUB {
            qs[SUB * j + i] = pair[i] | (pair[SUB + i] << 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{BlockQ4K, GgmlType};

    /// candle's blocks for `x`, as bytes.
    fn candle(x: &[f32]) -> Vec<u8> {
        let mut blocks = vec![BlockQ4K::zeros(); x.len() / QK_K];
        BlockQ4K::from_float(x, &mut blocks);
        let t = candle_core::quantized::QTensor::new(
            candle_core::quantized::QStorage::Cpu(Box::new(blocks)),
            (x.len(),),
        )
        .expect("qtensor");
        t.data().expect("bytes").into_owned()
    }

    /// Values for `blocks` blocks: each sub-block of a kind that stresses
    /// one path of the recipe (mixed signs, one sign only, constants,
    /// zeros, ties at halves, outliers, tiny and huge magnitudes).
    fn awkward(blocks: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64) as f32
        };
        let mut x = Vec::with_capacity(blocks * QK_K);
        for sub in 0..blocks * 8 {
            let kind = sub % 13;
            for i in 0..SUB {
                let u = next();
                x.push(match kind {
                    // Roughly normal, as trained weights are (most of them).
                    11 | 12 => (u + next() + next() + next() - 2.0) * 0.05,
                    0 => u * 2.0 - 1.0,
                    1 => u * 0.02,
                    2 => -u * 3.0,
                    3 => 0.75,
                    4 => 0.0,
                    5 => (i as f32 - 16.0) * 0.5,
                    6 if i == 7 => 40.0,
                    6 => u * 0.1 - 0.05,
                    7 => (u * 2.0 - 1.0) * 1e-30,
                    8 => (u * 2.0 - 1.0) * 1e30,
                    9 => ((u * 30.0) as i32) as f32 / 2.0 - 7.5,
                    _ => (u - 0.5) * 0.04 + if i % 2 == 0 { 0.01 } else { -0.01 },
                });
            }
        }
        x
    }

    #[test]
    fn blocks_are_candles_bit_for_bit() {
        for blocks in [1, 2, 3, 13, 1024] {
            let x = awkward(blocks, blocks as u64);
            let want = candle(&x);
            let mut got = vec![0u8; blocks * BLOCK_BYTES];
            quantize_any(&x, &mut got);
            assert_eq!(got, want, "portable, {blocks} blocks");
            got.fill(0);
            quantize(&x, &mut got);
            assert_eq!(got, want, "dispatched, {blocks} blocks");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                got.fill(0);
                // SAFETY: the CPU has AVX2 (just checked).
                #[allow(unsafe_code)]
                unsafe {
                    quantize_avx2(&x, &mut got)
                };
                assert_eq!(got, want, "avx2, {blocks} blocks");
            }
        }
    }

    #[test]
    fn rounds_halves_away_from_zero() {
        for v in [
            0.0f32,
            -0.0,
            0.49999997,
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.4999998,
            14.5,
            15.49,
            1e9,
            -1e9,
            8388607.5,
            -8388609.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            // Equal as numbers (a zero's sign may differ; no use sees it).
            assert_eq!(round(v), v.round(), "{v}");
            assert_eq!(nearest_int(v), v.round() as i32, "{v}");
            assert_eq!(nibble(v), v.round().clamp(0.0, 15.0), "{v}");
        }
        assert_eq!(nearest_int(f32::NAN), 0);
        assert_eq!(nibble(f32::NAN), 0.0);
        for bits in [
            0u32,
            0x8000_0000,
            0x3f80_0000,
            0xbf80_0000,
            0x7f80_0001,
            0xff80_0001,
        ] {
            let a = f32::from_bits(bits);
            assert_eq!(total_key(total_key(bits as i32)), bits as i32);
            for other in [0u32, 0x8000_0000, 0x3f80_0000, 0xbf80_0000] {
                let b = f32::from_bits(other);
                let keys = total_key(bits as i32).cmp(&total_key(other as i32));
                assert_eq!(keys, a.total_cmp(&b), "{a} {b}");
            }
        }
    }

    #[test]
    fn non_finite_values_do_not_panic() {
        let mut x = awkward(2, 9);
        x[3] = f32::NAN;
        x[300] = f32::INFINITY;
        x[301] = f32::NEG_INFINITY;
        let mut out = vec![0u8; 2 * BLOCK_BYTES];
        quantize(&x, &mut out);
    }
}
