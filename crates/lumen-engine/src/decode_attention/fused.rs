//! The decoding-attention kernel for AVX-512 F and for AVX2 + FMA + F16C,
//! written once over a vector type ([`Isa`]) and compiled for each.
//!
//! Keys and values go from the cache straight into registers (f16 rows
//! widened there, one instruction per vector) instead of being widened
//! into a buffer and read back; each key vector loaded serves up to four
//! query rows and each value vector up to four rows' sums. Each row's
//! largest score is kept as the scores are made, its exponentials are
//! summed as they are written, and its weighted values are divided by
//! that sum once, at the end: the softmax is one pass over the scores
//! instead of four (scale, maximum, exponentials, normalization).
//!
//! `lumen bench kernels` (a Llama 3.2 1B-shaped f16 cache of 4096 tokens,
//! 16 layers, 2 threads) on this project's 2-core AVX-512 machine, in
//! alternation with the kernel before (widening into a buffer, four
//! softmax passes): 9.0–9.4 → 4.8–4.9 ms per token, 27.7 GB/s of cache
//! against a measured read bandwidth of ~33; with
//! `LUMEN_CPU_KERNELS=avx2`, 9.1 → 7.1 ms.

use std::arch::x86_64::*;

use half::f16;

use super::Rows;
use crate::simd;
use crate::softmax::exp_nonpositive;

/// Query rows that share one pass over the keys and the values.
const ROWS: usize = 4;

/// Keys per block of the values pass: a block's rows stay in the L1 cache
/// while each group of columns is summed over them.
const BLOCK_KEYS: usize = 64;

/// Scores summed as f32 before the sum goes on in f64 (the exponentials
/// are at most 1, so a block's f32 sums lose nothing that matters).
const SUM_BLOCK: usize = 1024;

/// The vector operations the kernel is written with. Every method is
/// `unsafe`: the CPU must have the instruction set, and the functions
/// that inline them must be compiled for it (the `head_*` entry points).
pub(crate) trait Isa {
    /// A vector of [`Isa::LANES`] f32.
    type V: Copy;
    /// f32 per vector.
    const LANES: usize;
    /// Every lane `x`.
    unsafe fn splat(x: f32) -> Self::V;
    /// The first `LANES` values of `v`.
    unsafe fn load(v: &[f32]) -> Self::V;
    /// The first `LANES` values of `v`, widened.
    unsafe fn load_f16(v: &[f16]) -> Self::V;
    /// Into the first `LANES` values of `v`.
    unsafe fn store(v: &mut [f32], x: Self::V);
    /// `a · b + c`, fused.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a · b`.
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// The larger of each pair of lanes.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Lane `i` of the result is the sum of the lanes of `v[i]` (`v` holds
    /// `LANES` vectors).
    unsafe fn transpose_sum(v: &[Self::V]) -> Self::V;
}

/// One kernel call's operands: up to [`ROWS`] query rows over one KV
/// head's keys and values, the scratch for their scores, their rows of
/// the output and, for a part of the keys, where their statistics go.
struct Part<'a, T> {
    qs: &'a [&'a [f32]],
    keys: &'a [T],
    values: &'a [T],
    scale: f32,
    scores: &'a mut [f32],
    out: &'a mut [f32],
    stats: Option<&'a mut [f32]>,
}

/// One KV head's attention for `all` (its `scores`, the scratch, hold at least
/// `min(4, rep) · len` values; a shorter one leaves `out` as it is),
/// [`ROWS`] query rows at a time: `rows(r, part)` runs the kernel compiled
/// for one instruction set on `r` rows. With `stats` (two values per
/// query row), the keys are one part of a head's: each row's output is
/// left unnormalized and its largest scaled score and sum of
/// exponentials go to `stats` ([`super::combine`] joins the parts).
#[inline(always)]
fn head<T: Rows>(all: Part<'_, T>, rows: impl Fn(usize, Part<'_, T>)) {
    let Part {
        qs,
        keys,
        values,
        scale,
        scores: scratch,
        out,
        mut stats,
    } = all;
    let hd = out.len() / qs.len().max(1);
    let len = keys.len() / hd.max(1);
    for (i, (qs, out)) in qs.chunks(ROWS).zip(out.chunks_mut(ROWS * hd)).enumerate() {
        let Some(scores) = scratch.get_mut(..qs.len() * len) else {
            return;
        };
        let stats = match stats.as_deref_mut() {
            Some(stats) => match stats.get_mut(2 * ROWS * i..2 * (ROWS * i + qs.len())) {
                Some(stats) => Some(stats),
                None => return,
            },
            None => None,
        };
        let part = Part {
            qs,
            keys,
            values,
            scale,
            scores,
            out,
            stats,
        };
        rows(qs.len(), part);
    }
}

/// Attention for `R` query rows (`part.qs`) over `part.keys` and
/// `part.values` (rows of `C` vectors), added into `part.out`, which
/// holds zeros.
///
/// # Safety
/// The CPU has `I`'s instructions, and the caller is compiled for them.
#[inline(always)]
unsafe fn rows<I: Isa, T: Rows, const C: usize, const R: usize, const G: usize>(part: Part<'_, T>) {
    let lanes = I::LANES;
    let hd = C * lanes;
    let Part {
        qs,
        keys,
        values,
        scale,
        scores,
        out,
        stats,
    } = part;
    let len = keys.len() / hd;
    // Every slice the loops index, cut to its length once, so that the
    // loops' bounds checks fold away.
    let mut q: [&[f32]; R] = [&[]; R];
    for (q, row) in q.iter_mut().zip(qs) {
        *q = &row[..hd];
    }
    let keys = &keys[..len * hd];
    let values = &values[..len * hd];
    let out = &mut out[..R * hd];

    // Scores, a group of keys at a time: lane `r · per + k` of a group's
    // vector is query row r's score of key `j + k`.
    let per = lanes / R;
    // SAFETY (all below): the caller's CPU and compilation have `I`.
    let mut high = unsafe { I::splat(f32::NEG_INFINITY) };
    let mut sums = [0f32; 16];
    let mut j = 0;
    while j < len {
        let count = per.min(len - j);
        let v = if count == per {
            unsafe { group::<I, T, C, R>(&q, keys, j, per) }
        } else {
            unsafe { group::<I, T, C, R>(&q, keys, j, count) }
        };
        unsafe {
            high = I::max(high, v);
            I::store(&mut sums, v);
        }
        for r in 0..R {
            scores[r * len + j..][..count].copy_from_slice(&sums[r * per..][..count]);
        }
        j += count;
    }
    let mut top = [f32::NEG_INFINITY; 16];
    unsafe { I::store(&mut top, high) };

    // Exponentials and their sums, row by row.
    let mut totals = [(f32::NEG_INFINITY, 0f64); R];
    for (r, total) in totals.iter_mut().enumerate() {
        let row = &mut scores[r * len..][..len];
        let max = top[r * per..][..per]
            .iter()
            .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
        *total = exponentials(row, max, scale);
    }

    // Weighted values, a block of keys and a group of columns at a time,
    // summed in registers and added to `out`.
    let mut p: [&[f32]; R] = [&[]; R];
    for (r, p) in p.iter_mut().enumerate() {
        *p = &scores[r * len..][..len];
    }
    let mut start = 0;
    while start < len {
        let end = len.min(start + BLOCK_KEYS);
        for col in (0..hd).step_by(G * lanes) {
            let mut acc = [[unsafe { I::splat(0.0) }; G]; R];
            for (r, acc) in acc.iter_mut().enumerate() {
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = unsafe { I::load(&out[r * hd + col + c * lanes..]) };
                }
            }
            for j in start..end {
                let row = &values[j * hd + col..][..G * lanes];
                let mut v = [unsafe { I::splat(0.0) }; G];
                for (c, v) in v.iter_mut().enumerate() {
                    *v = unsafe { T::lanes::<I>(&row[c * lanes..]) };
                }
                for (acc, p) in acc.iter_mut().zip(&p) {
                    let w = unsafe { I::splat(p[j]) };
                    for (a, v) in acc.iter_mut().zip(&v) {
                        *a = unsafe { I::fmadd(w, *v, *a) };
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (c, a) in acc.iter().enumerate() {
                    unsafe { I::store(&mut out[r * hd + col + c * lanes..], *a) };
                }
            }
        }
        start = end;
    }
    if let Some(stats) = stats {
        for (stats, (max, sum)) in stats.chunks_exact_mut(2).zip(totals) {
            stats[0] = max;
            stats[1] = sum as f32;
        }
        return;
    }
    for (out, (_, sum)) in out.chunks_exact_mut(hd).zip(totals) {
        let inverse = if sum > 0.0 { (1.0 / sum) as f32 } else { 0.0 };
        let w = unsafe { I::splat(inverse) };
        for c in 0..C {
            let at = &mut out[c * lanes..];
            unsafe { I::store(at, I::mul(w, I::load(at))) };
        }
    }
}

/// The scores of `R` query rows for keys `j .. j + count` (`count ≤ per`,
/// `per = LANES / R`), as lanes `r · per + k` of one vector; lanes without
/// a key hold `-inf`.
///
/// # Safety
/// As [`rows`].
#[inline(always)]
unsafe fn group<I: Isa, T: Rows, const C: usize, const R: usize>(
    q: &[&[f32]; R],
    keys: &[T],
    j: usize,
    count: usize,
) -> I::V {
    let lanes = I::LANES;
    let hd = C * lanes;
    let per = lanes / R;
    // SAFETY (all below): as the caller's.
    let mut dots = [unsafe { I::splat(f32::NEG_INFINITY) }; 16];
    for k in 0..count {
        let key = &keys[(j + k) * hd..][..hd];
        let mut kv = [unsafe { I::splat(0.0) }; C];
        for (c, kv) in kv.iter_mut().enumerate() {
            *kv = unsafe { T::lanes::<I>(&key[c * lanes..]) };
        }
        for (r, q) in q.iter().enumerate() {
            let mut a = unsafe { I::mul(kv[0], I::load(q)) };
            for (c, kv) in kv.iter().enumerate().skip(1) {
                a = unsafe { I::fmadd(*kv, I::load(&q[c * lanes..]), a) };
            }
            dots[r * per + k] = a;
        }
    }
    unsafe { I::transpose_sum(&dots[..lanes]) }
}

/// `row[i] = exp(scale · row[i] − m)`, `m = scale · max` (`max` the
/// row's largest score); returns `m` and the sum. A row whose maximum is
/// not finite attends to nothing (all zeros, a sum of 0).
#[inline(always)]
fn exponentials(row: &mut [f32], max: f32, scale: f32) -> (f32, f64) {
    let m = max * scale;
    if !m.is_finite() {
        row.fill(0.0);
        return (f32::NEG_INFINITY, 0.0);
    }
    let mut total = 0f64;
    for block in row.chunks_mut(SUM_BLOCK) {
        let mut lanes = [0f32; 16];
        let (body, tail) = block.as_chunks_mut::<16>();
        for chunk in body {
            for (x, s) in chunk.iter_mut().zip(&mut lanes) {
                *x = exp_nonpositive(*x * scale - m);
                *s += *x;
            }
        }
        for x in tail {
            *x = exp_nonpositive(*x * scale - m);
            total += f64::from(*x);
        }
        total += lanes.iter().map(|&s| f64::from(s)).sum::<f64>();
    }
    (m, total)
}

/// The kernels of one instruction set: `$rows`, [`rows`] compiled for it,
/// and `$head`, one KV head's attention (or a part of one: [`head`]'s
/// `stats`)
/// for rows of `C` vectors, which says what the CPU must have (`$needs`).
macro_rules! entry {
    ($rows:ident, $head:ident, $isa:ty, $features:literal, $g:literal, $needs:literal) => {
        /// [`rows`] for `R` rows of `C` vectors, compiled for this
        /// instruction set.
        ///
        /// # Safety
        /// The CPU has the instruction set.
        #[target_feature(enable = $features)]
        unsafe fn $rows<T: Rows, const C: usize, const R: usize>(part: Part<'_, T>) {
            // SAFETY: compiled for the instruction set, which the caller
            // says the CPU has.
            unsafe { rows::<$isa, T, C, R, $g>(part) }
        }

        /// The kernel for one KV head, or part of one (`stats`).
        ///
        /// # Safety
        #[doc = $needs]
        pub(crate) unsafe fn $head<T: Rows, const C: usize>(
            qs: &[&[f32]],
            keys: &[T],
            values: &[T],
            scale: f32,
            out: &mut [f32],
            scratch: &mut [f32],
            stats: Option<&mut [f32]>,
        ) {
            let all = Part {
                qs,
                keys,
                values,
                scale,
                scores: scratch,
                out,
                stats,
            };
            head(all, |r, part| {
                // SAFETY: the caller's CPU has the instruction set.
                unsafe {
                    match r {
                        4 => $rows::<T, C, 4>(part),
                        3 => $rows::<T, C, 3>(part),
                        2 => $rows::<T, C, 2>(part),
                        _ => $rows::<T, C, 1>(part),
                    }
                }
            });
        }
    };
}

/// The [`Isa`] of one instruction set: its vector type, lanes, and the
/// intrinsics of each operation (`simd`'s bounds-checked loads and
/// stores for f32; `$half`: the unaligned integer load that
/// brings in `LANES` f16 for `$widen`).
macro_rules! isa {
    ($isa:ty, $v:ty, $lanes:literal, $set1:ident, $load:path, $half:ident, $widen:ident,
     $store:path, $fmadd:ident, $mul:ident, $max:ident, $sum:ident) => {
        impl Isa for $isa {
            type V = $v;
            const LANES: usize = $lanes;

            #[inline(always)]
            unsafe fn splat(x: f32) -> $v {
                // SAFETY: the caller has the instruction set.
                unsafe { $set1(x) }
            }

            #[inline(always)]
            unsafe fn load(v: &[f32]) -> $v {
                // SAFETY: the caller has the instruction set.
                unsafe { $load(v) }
            }

            #[inline(always)]
            unsafe fn load_f16(v: &[f16]) -> $v {
                let v = &v[..$lanes];
                // SAFETY: `v` is `LANES` readable f16; the load is
                // unaligned.
                unsafe { $widen($half(v.as_ptr().cast())) }
            }

            #[inline(always)]
            unsafe fn store(v: &mut [f32], x: $v) {
                // SAFETY: the caller has the instruction set.
                unsafe { $store(v, x) }
            }

            #[inline(always)]
            unsafe fn fmadd(a: $v, b: $v, c: $v) -> $v {
                // SAFETY: the caller has the instruction set.
                unsafe { $fmadd(a, b, c) }
            }

            #[inline(always)]
            unsafe fn mul(a: $v, b: $v) -> $v {
                // SAFETY: the caller has the instruction set.
                unsafe { $mul(a, b) }
            }

            #[inline(always)]
            unsafe fn max(a: $v, b: $v) -> $v {
                // SAFETY: the caller has the instruction set.
                unsafe { $max(a, b) }
            }

            #[inline(always)]
            unsafe fn transpose_sum(v: &[$v]) -> $v {
                // SAFETY: the caller has the instruction set.
                unsafe { $sum(v) }
            }
        }
    };
}

/// AVX-512 F: sixteen lanes; the values pass sums four vectors (64
/// columns) of up to four rows in sixteen registers.
pub(crate) struct Avx512;

entry!(
    rows_avx512,
    head_avx512,
    Avx512,
    "avx512f",
    4,
    "The CPU has AVX-512 F."
);

isa!(
    Avx512,
    __m512,
    16,
    _mm512_set1_ps,
    simd::avx512::load,
    _mm256_loadu_si256,
    _mm512_cvtph_ps,
    simd::avx512::store,
    _mm512_fmadd_ps,
    _mm512_mul_ps,
    _mm512_max_ps,
    sum16
);

/// [`Isa::transpose_sum`] for sixteen vectors of sixteen lanes: pairs
/// within 128-bit lanes, then quads, then across the four 128-bit lanes
/// (45 instructions for sixteen sums instead of a chain of fifteen
/// additions for each).
///
/// # Safety
/// The CPU has AVX-512 F.
#[inline(always)]
unsafe fn sum16(v: &[__m512]) -> __m512 {
    // SAFETY: the caller has the instruction set.
    unsafe {
        let Some(v) = v.first_chunk::<16>() else {
            return _mm512_setzero_ps();
        };
        // Pairs: per 128-bit lane, [a0+a2, b0+b2, a1+a3, b1+b3].
        let mut t = [_mm512_setzero_ps(); 8];
        for (i, t) in t.iter_mut().enumerate() {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            *t = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        }
        // Quads: per 128-bit lane, that lane's partial sums of 4 vectors.
        let mut u = [_mm512_setzero_ps(); 4];
        for (i, u) in u.iter_mut().enumerate() {
            let (a, b) = (_mm512_castps_pd(t[2 * i]), _mm512_castps_pd(t[2 * i + 1]));
            // The 64-bit unpacks move pairs of f32; the sums are f32.
            *u = _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
            );
        }
        // Across the four 128-bit lanes: even lanes plus odd lanes, twice.
        let even_plus_odd = |a: __m512, b: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(a, b),
                _mm512_shuffle_f32x4::<0xDD>(a, b),
            )
        };
        let w0 = even_plus_odd(u[0], u[1]);
        let w1 = even_plus_odd(u[2], u[3]);
        even_plus_odd(w0, w1)
    }
}

/// AVX2 + FMA + F16C: eight lanes in sixteen registers; the values pass
/// sums two vectors (16 columns) of up to four rows.
pub(crate) struct Avx2;

entry!(
    rows_avx2,
    head_avx2,
    Avx2,
    "avx2,fma,f16c",
    2,
    "[`avx2_runs_here`]."
);

isa!(
    Avx2,
    __m256,
    8,
    _mm256_set1_ps,
    simd::avx2::load,
    _mm_loadu_si128,
    _mm256_cvtph_ps,
    simd::avx2::store,
    _mm256_fmadd_ps,
    _mm256_mul_ps,
    _mm256_max_ps,
    sum8
);

/// [`Isa::transpose_sum`] for eight vectors of eight lanes: horizontal
/// adds within 128-bit halves, then the halves added.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn sum8(v: &[__m256]) -> __m256 {
    // SAFETY: the caller has the instruction set.
    unsafe {
        let Some(v) = v.first_chunk::<8>() else {
            return _mm256_setzero_ps();
        };
        let a = _mm256_hadd_ps(v[0], v[1]);
        let b = _mm256_hadd_ps(v[2], v[3]);
        let c = _mm256_hadd_ps(v[4], v[5]);
        let d = _mm256_hadd_ps(v[6], v[7]);
        let ab = _mm256_hadd_ps(a, b);
        let cd = _mm256_hadd_ps(c, d);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(ab, cd),
            _mm256_permute2f128_ps::<0x31>(ab, cd),
        )
    }
}

/// Whether the AVX2 kernel runs here (it widens f16 with F16C).
pub(crate) fn avx2_runs_here() -> bool {
    crate::simd::avx2::runs_here() && std::arch::is_x86_feature_detected!("f16c")
}
