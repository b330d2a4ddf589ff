//! The vision encoder's attention (head size 80, one query head per KV
//! head, [`super::Mask::Padding`]) with AVX-512 BF16's `vdpbf16ps`: two
//! bf16 products summed into each f32 lane per instruction, twice the
//! multiply-adds of the f32 kernel's FMAs, which bound it.
//!
//! Queries, keys, values and the softmax's probabilities are rounded to
//! bf16 (8 significant bits) for the two products; scores, the softmax
//! and the value sums stay f32. Only for quantized models, whose matmuls
//! already round activations to 8 bits; the f32 kernel serves the rest.
//!
//! Measured on the synthetic 11B's 4-tile image (AMD EPYC, two threads):
//! vision encoder 54.2 s with the f32 kernel, 49.1 s with blocks of 32
//! keys here, 45.4 s with blocks of 64 (time to first token 57.4 → 48.9 s).
//!
//! Each head's keys and values are converted once, into the pair layouts
//! the instruction reads: keys in blocks of sixteen, `[block][pair of
//! dimensions][key]`, values `[pair of keys][dimension]`, one u32 (two
//! bf16) per entry.

use std::arch::x86_64::*;

use super::Item;
use super::avx512::online_softmax;
use crate::f16::AsF32;
use crate::simd::avx512::{load, store};

/// Head size.
pub(super) const HD: usize = 80;
/// Pairs of dimensions.
const PAIRS: usize = HD / 2;
/// f32 vectors per row.
const C: usize = HD / 16;
/// Vectors of scores per row and block.
const S: usize = 4;
/// Keys per block.
const BK: usize = 16 * S;
/// Query rows at a time.
const R: usize = 4;

/// Bits as bf16 pairs (same size, any bits valid).
#[inline(always)]
fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 64 bytes of plain bits.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// bf16 pairs as bits.
#[inline(always)]
fn bits(v: __m512bh) -> __m512i {
    // SAFETY: both are 64 bytes of plain bits.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(v) }
}

/// Whether this CPU has the instructions.
pub(super) fn runs_here() -> bool {
    crate::qmm::Isa::avx512f_allowed() && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// Two values as one u32 of bf16s, `lo` in the low half (round to nearest
/// even, as `vcvtne2ps2bf16`): the reference the vector conversions are
/// tested against.
#[cfg(test)]
fn pair(lo: f32, hi: f32) -> u32 {
    let bits = |v| u32::from(half::bf16::from_f32(v).to_bits());
    bits(lo) | (bits(hi) << 16)
}

/// A row of [`HD`] values as pairs of dimensions `(2m, 2m + 1)`, one u32 of
/// bf16s each (`vcvtne2ps2bf16` leaves them in that order).
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn row_pairs(row: &[f32]) -> [u32; PAIRS] {
    let mut words = [0u32; PAIRS];
    for h in 0..2 {
        let b = _mm512_cvtne2ps_pbh(load(&row[32 * h + 16..]), load(&row[32 * h..]));
        // SAFETY: 16 writable u32 at `16h` of 40; the store is unaligned.
        unsafe { _mm512_storeu_si512(words[16 * h..16 * h + 16].as_mut_ptr().cast(), bits(b)) };
    }
    let tail = _mm512_cvtneps_pbh(load(&row[64..]));
    // SAFETY: 8 writable u32 at 32 of 40; both types are 32 bytes of plain
    // bits; the store is unaligned.
    unsafe {
        let tail = std::mem::transmute::<__m256bh, __m256i>(tail);
        _mm256_storeu_si256(words[32..40].as_mut_ptr().cast(), tail);
    }
    words
}

/// Sixteen values of two rows as pairs `(a[d], b[d])`, one u32 of bf16s
/// each, `a`'s in the low half.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn interleaved_pairs(a: __m512, b: __m512) -> __m512i {
    // SAFETY: both types are 32 bytes of plain bits.
    let half = |v| unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v)) };
    let (a, b) = (
        _mm512_cvtepu16_epi32(half(a)),
        _mm512_cvtepu16_epi32(half(b)),
    );
    _mm512_or_si512(a, _mm512_slli_epi32::<16>(b))
}

/// One head's keys and values, `len` rows of [`HD`], in the pair layouts
/// (keys past `len` are zero, up to a whole block).
pub(super) struct Packed {
    keys: Vec<u32>,
    values: Vec<u32>,
}

impl Packed {
    /// Converts a head's keys and values (f32, or f16 widened a row at a
    /// time) with the vector conversions (scalar ones took 2.3% of the 11B
    /// encoder's time).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) fn new<T: AsF32>(keys: &[T], values: &[T]) -> Self {
        let len = keys.len() / HD;
        let padded = len.div_ceil(BK) * BK;
        let mut buf = [0f32; 2 * HD];
        let mut k = vec![0u32; padded * PAIRS];
        for (j, key) in keys.chunks_exact(HD).enumerate() {
            let words = row_pairs(T::as_f32(key, &mut buf[..HD]));
            let (block, lane) = (j / 16, j % 16);
            for (m, w) in words.into_iter().enumerate() {
                k[(block * PAIRS + m) * 16 + lane] = w;
            }
        }
        let mut v = vec![0u32; padded / 2 * HD];
        for (jp, two) in values.chunks(2 * HD).enumerate() {
            let two = T::as_f32(two, &mut buf[..two.len()]);
            // An odd last row pairs with zeros.
            let mut rows = [0f32; 2 * HD];
            rows[..two.len()].copy_from_slice(two);
            let (a, b) = rows.split_at(HD);
            for c in 0..C {
                let words = interleaved_pairs(load(&a[16 * c..]), load(&b[16 * c..]));
                let at = jp * HD + 16 * c;
                // SAFETY: 16 writable u32 (the values are padded to whole
                // blocks); the store is unaligned.
                unsafe { _mm512_storeu_si512(v[at..at + 16].as_mut_ptr().cast(), words) };
            }
        }
        Self { keys: k, values: v }
    }
}

/// Attends every row of `it` (one query head per KV head) into `out`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) fn item(it: &Item<'_>, head: &Packed, out: &mut [f32]) {
    // Each row's query as pairs.
    let qp: Vec<[u32; PAIRS]> = (0..out.len() / HD)
        .map(|t| row_pairs(it.query(t)))
        .collect();
    // The keys and values are `head`'s, read by `group` itself.
    it.in_blocks::<f32>(None, out, BK, R, |t, first, n, _, _, state, out| {
        let qp = &qp[t..t + state.0.len()];
        if state.0.len() == R {
            group::<R>(it, head, qp, t, first, n, state, out);
        } else {
            group::<1>(it, head, qp, t, first, n, state, out);
        }
    });
}

/// Rows `t..t + G` against keys `first..first + n`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn group<const G: usize>(
    it: &Item<'_>,
    head: &Packed,
    qp: &[[u32; PAIRS]],
    t: usize,
    first: usize,
    n: usize,
    (max, sum): (&mut [f32], &mut [f32]),
    out: &mut [f32],
) {
    let (vis, seen) = it.seen_in_block::<G>(t, first, n);
    if seen == 0 {
        return;
    }
    // Scores: `S` vectors of sixteen keys per row.
    let mut acc = [[_mm512_setzero_ps(); S]; G];
    let blocks = &head.keys[first / 16 * PAIRS * 16..];
    for m in 0..PAIRS {
        let k: [__m512bh; S] = std::array::from_fn(|s| {
            let at = (s * PAIRS + m) * 16;
            // SAFETY: 16 readable u32 (the keys are padded to whole
            // blocks); the load is unaligned.
            let v = unsafe { _mm512_loadu_si512(blocks[at..at + 16].as_ptr().cast()) };
            bh(v)
        });
        for (acc, q) in acc.iter_mut().zip(qp) {
            let q = bh(_mm512_set1_epi32(q[m] as i32));
            for (a, k) in acc.iter_mut().zip(&k) {
                *a = _mm512_dpbf16_ps(*a, *k, q);
            }
        }
    }
    // The online softmax, as the f32 kernel's.
    let mut p = [[0f32; BK]; G];
    let mut alpha = [1f32; G];
    let scale = _mm512_set1_ps(it.scale);
    for u in 0..G {
        let bias = it.key_bias(t + u, first);
        if let Some(a) = online_softmax(
            acc[u],
            vis[u],
            bias,
            scale,
            (&mut max[u], &mut sum[u]),
            &mut p[u],
        ) {
            alpha[u] = a;
        }
    }
    // Probabilities as pairs: (p[2i], p[2i + 1]) in word i.
    let pp: [[u32; BK / 2]; G] = std::array::from_fn(|u| {
        let mut w = [0u32; BK / 2];
        for h in 0..S / 2 {
            let b = _mm512_cvtne2ps_pbh(load(&p[u][32 * h + 16..]), load(&p[u][32 * h..]));
            // SAFETY: 16 writable u32 at `16h` of `BK / 2`; the store is
            // unaligned.
            unsafe { _mm512_storeu_si512(w[16 * h..16 * h + 16].as_mut_ptr().cast(), bits(b)) };
        }
        w
    });
    // Value sums: rescaled, plus this block's weighted values.
    let mut o = [[_mm512_setzero_ps(); C]; G];
    for (u, o) in o.iter_mut().enumerate() {
        let a = _mm512_set1_ps(alpha[u]);
        for (c, o) in o.iter_mut().enumerate() {
            *o = _mm512_mul_ps(load(&out[u * HD + 16 * c..]), a);
        }
    }
    let values = &head.values[first / 2 * HD..];
    for jp in 0..seen.div_ceil(2) {
        let v: [__m512bh; C] = std::array::from_fn(|c| {
            let at = jp * HD + 16 * c;
            // SAFETY: 16 readable u32 (the values are padded to whole
            // blocks); the load is unaligned.
            bh(unsafe { _mm512_loadu_si512(values[at..at + 16].as_ptr().cast()) })
        });
        for (o, pp) in o.iter_mut().zip(&pp) {
            let p = bh(_mm512_set1_epi32(pp[jp] as i32));
            for (o, v) in o.iter_mut().zip(&v) {
                *o = _mm512_dpbf16_ps(*o, *v, p);
            }
        }
    }
    for (u, o) in o.iter().enumerate() {
        for (c, o) in o.iter().enumerate() {
            store(&mut out[u * HD + 16 * c..], *o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SplitMix64;

    /// The vector conversions give the scalar pairs bit for bit, for f32
    /// and f16 rows, with an odd number of rows (the last value pair takes
    /// zeros) and values that round both ways.
    #[test]
    #[allow(unsafe_code)]
    fn packing_matches_scalar_pairs() {
        if !runs_here() {
            return;
        }
        let mut rng = SplitMix64(77);
        let len = 37;
        let x: Vec<f32> = (0..len * HD)
            .map(|_| (rng.next_f64() as f32 - 0.5) * 1000.0)
            .collect();
        let y: Vec<f32> = (0..len * HD)
            .map(|_| (rng.next_f64() as f32 - 0.5) * 0.01)
            .collect();
        let check = |p: &Packed, keys: &[f32], values: &[f32]| {
            assert_eq!(p.keys.len(), len.div_ceil(BK) * BK * PAIRS);
            for j in 0..len.div_ceil(BK) * BK {
                for m in 0..PAIRS {
                    let want = match keys.get(j * HD..(j + 1) * HD) {
                        Some(k) => pair(k[2 * m], k[2 * m + 1]),
                        None => 0,
                    };
                    assert_eq!(
                        p.keys[(j / 16 * PAIRS + m) * 16 + j % 16],
                        want,
                        "key {j} pair {m}"
                    );
                }
            }
            for jp in 0..len.div_ceil(2) {
                for d in 0..HD {
                    let a = values[2 * jp * HD + d];
                    let b = values.get((2 * jp + 1) * HD + d).copied().unwrap_or(0.0);
                    assert_eq!(p.values[jp * HD + d], pair(a, b), "value pair {jp} dim {d}");
                }
            }
        };
        // SAFETY: `runs_here` confirmed the CPU.
        let p = unsafe { Packed::new(&x, &y) };
        check(&p, &x, &y);
        // f16 rows: the same as their f32 values.
        let (xh, yh): (Vec<half::f16>, Vec<half::f16>) = (
            x.iter().map(|&v| half::f16::from_f32(v)).collect(),
            y.iter().map(|&v| half::f16::from_f32(v)).collect(),
        );
        let widen = |v: &[half::f16]| v.iter().map(|h| h.to_f32()).collect::<Vec<_>>();
        // SAFETY: as above.
        let p = unsafe { Packed::new(&xh, &yh) };
        check(&p, &widen(&xh), &widen(&yh));
        // A query row.
        // SAFETY: as above.
        let words = unsafe { row_pairs(&x[..HD]) };
        for (m, w) in words.iter().enumerate() {
            assert_eq!(*w, pair(x[2 * m], x[2 * m + 1]), "query pair {m}");
        }
    }
}
