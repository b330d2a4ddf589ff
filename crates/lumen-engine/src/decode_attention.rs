//! Attention for one new token (decoding) on the CPU, fused: for each KV
//! head, the scores of the query heads that share it, their softmax and
//! the weighted sum of values, reading the cached keys and values once, in
//! place, in parallel over KV heads. The cache may hold f32 or f16 rows;
//! f16 rows are widened a block at a time into a buffer that stays in the
//! L1 cache, each block's widening asking the L2 cache for the next.
//!
//! The general path (two batched matmuls around a softmax op) is built for
//! many query rows; for one it spends more on dispatch, a score tensor per
//! layer and passes over memory than on arithmetic, which is what decoding
//! at a depth of thousands of tokens is made of.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use half::f16;
use rayon::prelude::*;

use crate::f16::{AsF32, Heads, KvViews};
#[cfg(target_arch = "x86_64")]
use crate::simd::Kernel;
use crate::softmax::softmax_row;

/// `softmax(scale · q · Kᵀ) · V` for `q` `(1, heads, 1, hd)` over `k`, `v`
/// `(1, kv_heads, len, hd)` (views of the KV cache, both f32 or both f16:
/// any offset and head stride, rows of `hd` contiguous values). Every
/// cached position is visible (a decoding step's query is the newest
/// position). Returns `(1, heads, 1, hd)`.
#[derive(Debug, Clone, Copy)]
pub struct DecodeAttention {
    /// Applied to the scores before the softmax.
    pub scale: f32,
}

/// Values per vector step of the dot products.
const LANES: usize = 16;

/// Cached rows converted per block: at most this many f32 (16 KiB, so the
/// block stays in the L1 cache while it is used).
const BLOCK_VALUES: usize = 4096;

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "lumen-decode-attention"
    }

    fn cpu_fwd(
        &self,
        q_s: &CpuStorage,
        q_l: &Layout,
        k_s: &CpuStorage,
        k_l: &Layout,
        v_s: &CpuStorage,
        v_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let q = Heads::queries(name, q_s, q_l)?;
        let out = match KvViews::of(name, k_s, k_l, v_s, v_l)? {
            KvViews::F32(k, v) => self.run(&q, &k, &v)?,
            KvViews::F16(k, v) => self.run(&q, &k, &v)?,
        };
        let (nh, _, hd) = q.dims;
        Ok((CpuStorage::F32(out), Shape::from((1, nh, 1, hd))))
    }
}

impl DecodeAttention {
    /// Checks the shapes and runs [`head`] for every KV head in parallel.
    fn run<T: Rows>(
        &self,
        q: &Heads<'_, f32>,
        k: &Heads<'_, T>,
        v: &Heads<'_, T>,
    ) -> candle_core::Result<Vec<f32>> {
        let (nh, _, hd) = q.dims;
        let mut out = vec![0f32; nh * hd];
        self.run_into(q, k, v, &mut out)?;
        Ok(out)
    }

    /// [`DecodeAttention::run`] into `out` (`heads × hd`). Allocates
    /// nothing once each thread's scratch has held this many keys.
    pub(crate) fn run_into<T: Rows>(
        &self,
        q: &Heads<'_, f32>,
        k: &Heads<'_, T>,
        v: &Heads<'_, T>,
        out: &mut [f32],
    ) -> candle_core::Result<()> {
        let (nh, one, hd) = q.dims;
        let (nkv, len, k_hd) = k.dims;
        if one != 1
            || k_hd != hd
            || v.dims != (nkv, len, hd)
            || nkv == 0
            || nh % nkv != 0
            || out.len() != nh * hd
        {
            candle_core::bail!(
                "{}: q {:?}, k {:?}, v {:?} do not fit",
                self.name(),
                q.dims,
                k.dims,
                v.dims
            )
        }
        let rep = nh / nkv;
        // The kernels add the weighted values into `out`.
        out.fill(0.0);
        out.par_chunks_mut(rep * hd)
            .enumerate()
            .for_each(|(h, out)| {
                let query = |r: usize| q.head(h * rep + r);
                if rep <= MAX_GROUP {
                    let mut qs: [&[f32]; MAX_GROUP] = [&[]; MAX_GROUP];
                    for (r, q_r) in qs.iter_mut().take(rep).enumerate() {
                        *q_r = query(r);
                    }
                    head(&qs[..rep], k.head(h), v.head(h), self.scale, out);
                } else {
                    let qs: Vec<&[f32]> = (0..rep).map(query).collect();
                    head(&qs, k.head(h), v.head(h), self.scale, out);
                }
            });
        Ok(())
    }
}

/// Query heads per KV head that [`DecodeAttention::run_into`] lists
/// without allocating (Llama 3 models have up to 8; more take a `Vec`).
const MAX_GROUP: usize = 32;

thread_local! {
    /// Each thread's buffer for [`in_blocks`]: a block of widened rows and
    /// the scores, grown (by doubling) as contexts get longer and kept.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Cached rows of a type the kernels read.
pub(crate) trait Rows: AsF32 {
    /// [`head_lanes`] over rows of this type, compiled for the widest
    /// vectors the CPU has.
    fn head_any(qs: &[&[f32]], keys: &[Self], values: &[Self], scale: f32, out: &mut [f32]);
}

impl Rows for f32 {
    fn head_any(qs: &[&[f32]], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
        head_any_f32(qs, keys, values, scale, out);
    }
}

impl Rows for f16 {
    fn head_any(qs: &[&[f32]], keys: &[f16], values: &[f16], scale: f32, out: &mut [f32]) {
        head_any_f16(qs, keys, values, scale, out);
    }
}

/// One KV head: the `rep` query rows' scores over the `len` cached keys,
/// softmax, and the weighted sums of the values into `out` (`rep × hd`).
fn head<T: Rows>(qs: &[&[f32]], keys: &[T], values: &[T], scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let hd = out.len() / qs.len().max(1);
        #[allow(unsafe_code)]
        // SAFETY (all): `best` chose a kernel whose instructions the CPU has.
        match (Kernel::best(), hd) {
            (Some(Kernel::Avx512), 64) => {
                return unsafe { avx512::head::<T, 4>(qs, keys, values, scale, out) };
            }
            (Some(Kernel::Avx512), 128) => {
                return unsafe { avx512::head::<T, 8>(qs, keys, values, scale, out) };
            }
            (Some(Kernel::Avx2), 64) => {
                return unsafe { avx2::head::<T, 8>(qs, keys, values, scale, out) };
            }
            (Some(Kernel::Avx2), 128) => {
                return unsafe { avx2::head::<T, 16>(qs, keys, values, scale, out) };
            }
            _ => {}
        }
    }
    T::head_any(qs, keys, values, scale, out);
}

vectorized! {
    /// [`head_lanes`] over f32 rows.
    fn head_any_f32(qs: &[&[f32]], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) => head_lanes_f32
}

#[inline(always)]
fn head_lanes_f32(qs: &[&[f32]], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
    head_lanes(qs, keys, values, scale, out);
}

vectorized! {
    /// [`head_lanes`] over f16 rows.
    fn head_any_f16(qs: &[&[f32]], keys: &[f16], values: &[f16], scale: f32, out: &mut [f32]) => head_lanes_f16
}

#[inline(always)]
fn head_lanes_f16(qs: &[&[f32]], keys: &[f16], values: &[f16], scale: f32, out: &mut [f32]) {
    head_lanes(qs, keys, values, scale, out);
}

/// [`head`] for any head size and instruction set: plain loops that the
/// compiler vectorizes.
#[inline(always)]
fn head_lanes<T: Rows>(qs: &[&[f32]], keys: &[T], values: &[T], scale: f32, out: &mut [f32]) {
    in_blocks(
        qs.len(),
        keys,
        values,
        scale,
        out,
        |rows, first, len, probs| add_scores(qs, rows, first, len, probs),
        add_values,
    );
}

/// Values of a thread's [`SCRATCH`] that attention over `len` keys with
/// `rep` query rows per KV head of `hd` values takes.
fn scratch_values(rep: usize, len: usize, hd: usize) -> usize {
    (BLOCK_VALUES / hd.max(1)).max(1) * hd.max(1) + rep * len
}

/// Grows every pool thread's scratch for attention over up to `len` keys
/// (as [`in_blocks`] would on each thread's first turn), so that decoding
/// steps do not allocate on whichever thread first gets a head of a longer
/// context. Returns the number of keys now covered (a power of two's worth
/// of scratch: call again past it).
pub(crate) fn reserve_scratch(rep: usize, len: usize, hd: usize) -> usize {
    let values = scratch_values(rep, len, hd).next_power_of_two();
    rayon::broadcast(|_| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < values {
                scratch.resize(values, 0.0);
            }
        });
    });
    let block = scratch_values(rep, 0, hd);
    (values - block) / rep.max(1)
}

/// The order every head kernel follows: the scores of the keys a block at
/// a time (f16 rows widened into one L1-sized buffer), a softmax per query
/// row, then the weighted values a block at a time. The kernel's
/// `scores(rows, first, len, probs)` and `values(probs, len, first, rows,
/// out)` do the arithmetic on a block of f32 rows starting at key `first`
/// (`len` keys in all, `rep` query rows).
#[inline(always)]
fn in_blocks<T: AsF32>(
    rep: usize,
    keys: &[T],
    values: &[T],
    scale: f32,
    out: &mut [f32],
    mut scores: impl FnMut(&[f32], usize, usize, &mut [f32]),
    mut weighted: impl FnMut(&[f32], usize, usize, &[f32], &mut [f32]),
) {
    let hd = (out.len() / rep.max(1)).max(1);
    let len = keys.len() / hd;
    let block = (BLOCK_VALUES / hd).max(1);
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let needed = scratch_values(rep, len, hd);
        if scratch.len() < needed {
            scratch.resize(needed.next_power_of_two(), 0.0);
        }
        let (buf, probs) = scratch.split_at_mut(block * hd);
        let probs = &mut probs[..rep * len];
        // Each block's conversion asks for the next (`as_f32_ahead`).
        let step = block * hd;
        fn next<T>(rows: &[T], from: usize) -> &[T] {
            rows.get(from..).unwrap_or(&[])
        }
        for (b, rows) in keys.chunks(step).enumerate() {
            let rows = T::as_f32_ahead(rows, next(keys, (b + 1) * step), &mut buf[..rows.len()]);
            scores(rows, b * block, len, probs);
        }
        normalize(probs, len, scale);
        for (b, rows) in values.chunks(step).enumerate() {
            let rows = T::as_f32_ahead(rows, next(values, (b + 1) * step), &mut buf[..rows.len()]);
            weighted(probs, len, b * block, rows, out);
        }
    });
}

/// Scores of keys `first..` (the rows of `keys`) for every query row:
/// `scores[r * len + first + j] = q_r · k_j`.
#[inline(always)]
fn add_scores(qs: &[&[f32]], keys: &[f32], first: usize, len: usize, scores: &mut [f32]) {
    let hd = qs.first().map_or(1, |q| q.len()).max(1);
    for (j, key) in keys.chunks_exact(hd).enumerate() {
        for (r, q) in qs.iter().enumerate() {
            scores[r * len + first + j] = dot(q, key);
        }
    }
}

/// Each query row's scores (`len` per row) to probabilities.
#[inline(always)]
fn normalize(scores: &mut [f32], len: usize, scale: f32) {
    for probs in scores.chunks_exact_mut(len) {
        softmax_row(probs, scale, None);
    }
}

/// Adds the values `first..` (the rows of `values`), weighted by each query
/// row's probabilities, to that row of `out`.
#[inline(always)]
fn add_values(probs: &[f32], len: usize, first: usize, values: &[f32], out: &mut [f32]) {
    let hd = out.len() / (probs.len() / len.max(1)).max(1);
    for (probs, out) in probs.chunks_exact(len).zip(out.chunks_exact_mut(hd)) {
        for (p, value) in probs[first..].iter().zip(values.chunks_exact(hd)) {
            for (o, x) in out.iter_mut().zip(value) {
                *o += p * x;
            }
        }
    }
}

/// `a · b` with sixteen running sums (so that it vectorizes).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (a_body, a_tail) = a.as_chunks::<LANES>();
    let (b_body, b_tail) = b.as_chunks::<LANES>();
    for (x, y) in a_body.iter().zip(b_body) {
        for ((l, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *l += x * y;
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    //! The head kernel for head sizes of 64 and 128 (`C` = 4 or 8 vectors
    //! of sixteen f32): query rows and value sums live in registers, values
    //! accumulate with fused multiply-adds, and the dot products of sixteen
    //! keys are summed across lanes together (a transposing reduction: 45
    //! instructions for sixteen sums instead of a chain of sixteen
    //! dependent additions for each).

    use std::arch::x86_64::*;

    use super::{Rows, in_blocks};

    /// Row `j`'s `c`-th vector of sixteen values (rows of `16 * C`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load<const C: usize>(rows: &[[f32; 16]], j: usize, c: usize) -> __m512 {
        let v = &rows[j * C + c];
        // SAFETY: `v` is 64 readable bytes; the load is unaligned.
        unsafe { _mm512_loadu_ps(v.as_ptr()) }
    }

    /// Lane `i` of the result is the sum of the lanes of `v[i]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sum16(v: &[__m512; 16]) -> __m512 {
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
        let w0 = even_plus_odd(u[0], u[1]);
        let w1 = even_plus_odd(u[2], u[3]);
        even_plus_odd(w0, w1)
    }

    /// 128-bit lanes `[a0 + a1, a2 + a3, b0 + b1, b2 + b3]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn even_plus_odd(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    }

    /// `q · row_j` for `q` as `C` vectors.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn dot_lanes<const C: usize>(q: &[__m512; C], rows: &[[f32; 16]], j: usize) -> __m512 {
        let mut a = _mm512_mul_ps(q[0], load::<C>(rows, j, 0));
        for (c, q) in q.iter().enumerate().skip(1) {
            a = _mm512_fmadd_ps(*q, load::<C>(rows, j, c), a);
        }
        a
    }

    /// `scores[r * len + first + j] = q_r · row_j` for the rows of `rows`.
    #[target_feature(enable = "avx512f")]
    fn scores<const C: usize>(
        qs: &[&[f32]],
        rows: &[f32],
        first: usize,
        len: usize,
        scores: &mut [f32],
    ) {
        let rows = rows.as_chunks::<16>().0;
        let n = rows.len() / C;
        for (r, q) in qs.iter().enumerate() {
            let q = q.as_chunks::<16>().0;
            let mut qv = [_mm512_setzero_ps(); C];
            for (c, v) in qv.iter_mut().enumerate() {
                *v = load::<1>(q, c, 0);
            }
            let out = &mut scores[r * len + first..][..n];
            let (groups, tail) = out.as_chunks_mut::<16>();
            for (g, group) in groups.iter_mut().enumerate() {
                let mut acc = [_mm512_setzero_ps(); 16];
                for (i, acc) in acc.iter_mut().enumerate() {
                    *acc = dot_lanes::<C>(&qv, rows, g * 16 + i);
                }
                // SAFETY: `group` is 64 writable bytes; the store is
                // unaligned.
                unsafe { _mm512_storeu_ps(group.as_mut_ptr(), sum16(&acc)) };
            }
            let done = groups.len() * 16;
            for (i, s) in tail.iter_mut().enumerate() {
                *s = _mm512_reduce_add_ps(dot_lanes::<C>(&qv, rows, done + i));
            }
        }
    }

    /// `out_r += Σ_j probs[r * len + first + j] · row_j` for the rows of
    /// `rows`.
    #[target_feature(enable = "avx512f")]
    fn values<const C: usize>(
        probs: &[f32],
        len: usize,
        first: usize,
        rows: &[f32],
        out: &mut [f32],
    ) {
        let rows = rows.as_chunks::<16>().0;
        let n = rows.len() / C;
        for (r, out) in out.as_chunks_mut::<16>().0.chunks_exact_mut(C).enumerate() {
            let mut acc = [_mm512_setzero_ps(); C];
            for (a, o) in acc.iter_mut().zip(out.iter()) {
                // SAFETY: `o` is 64 readable bytes; the load is unaligned.
                *a = unsafe { _mm512_loadu_ps(o.as_ptr()) };
            }
            for (j, p) in probs[r * len + first..][..n].iter().enumerate() {
                let p = _mm512_set1_ps(*p);
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(p, load::<C>(rows, j, c), *a);
                }
            }
            for (a, o) in acc.iter().zip(out.iter_mut()) {
                // SAFETY: `o` is 64 writable bytes; the store is unaligned.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
            }
        }
    }

    /// [`super::head`] for `hd = 16 * C`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn head<T: Rows, const C: usize>(
        qs: &[&[f32]],
        keys: &[T],
        values_: &[T],
        scale: f32,
        out: &mut [f32],
    ) {
        in_blocks(
            qs.len(),
            keys,
            values_,
            scale,
            out,
            |rows, first, len, probs| scores::<C>(qs, rows, first, len, probs),
            |probs, len, first, rows, out| values::<C>(probs, len, first, rows, out),
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    //! [`super::avx512`]'s kernel with eight-lane vectors (`hd = 8 C`, `C`
    //! = 8 or 16), for CPUs without AVX-512. With sixteen vector registers
    //! the query row is not kept in registers: each of its vectors is
    //! loaded once per eight keys instead.

    use std::arch::x86_64::*;

    use super::{Rows, in_blocks};
    use crate::simd::avx2::{load, store, sum_lanes};

    /// Lane `i` of the result is the sum of the lanes of `v[i]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn sum8(v: &[__m256; 8]) -> __m256 {
        // Per 128-bit half: pairs, then quads of each vector's lanes.
        let a = _mm256_hadd_ps(v[0], v[1]);
        let b = _mm256_hadd_ps(v[2], v[3]);
        let c = _mm256_hadd_ps(v[4], v[5]);
        let d = _mm256_hadd_ps(v[6], v[7]);
        let ab = _mm256_hadd_ps(a, b);
        let cd = _mm256_hadd_ps(c, d);
        // Low halves plus high halves.
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(ab, cd),
            _mm256_permute2f128_ps::<0x31>(ab, cd),
        )
    }

    /// `scores[r * len + first + j] = q_r · row_j` for the rows of `rows`.
    #[target_feature(enable = "avx2,fma")]
    fn scores<const C: usize>(
        qs: &[&[f32]],
        rows: &[f32],
        first: usize,
        len: usize,
        scores: &mut [f32],
    ) {
        let hd = 8 * C;
        let n = rows.len() / hd;
        for (r, q) in qs.iter().enumerate() {
            let out = &mut scores[r * len + first..][..n];
            let (groups, tail) = out.as_chunks_mut::<8>();
            for (g, group) in groups.iter_mut().enumerate() {
                let keys = &rows[g * 8 * hd..][..8 * hd];
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in 0..C {
                    let q = load(&q[8 * c..]);
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(q, load(&keys[i * hd + 8 * c..]), *a);
                    }
                }
                store(group, sum8(&acc));
            }
            let done = groups.len() * 8;
            for (i, s) in tail.iter_mut().enumerate() {
                let key = &rows[(done + i) * hd..][..hd];
                let mut a = _mm256_setzero_ps();
                for c in 0..C {
                    a = _mm256_fmadd_ps(load(&q[8 * c..]), load(&key[8 * c..]), a);
                }
                *s = sum_lanes(a);
            }
        }
    }

    /// `out_r += Σ_j probs[r * len + first + j] · row_j` for the rows of
    /// `rows`, eight vectors of the row at a time.
    #[target_feature(enable = "avx2,fma")]
    fn values<const C: usize>(
        probs: &[f32],
        len: usize,
        first: usize,
        rows: &[f32],
        out: &mut [f32],
    ) {
        let hd = 8 * C;
        let n = rows.len() / hd;
        for (r, out) in out.chunks_exact_mut(hd).enumerate() {
            let probs = &probs[r * len + first..][..n];
            for part in 0..C / 8 {
                let at = 64 * part;
                let mut acc = [_mm256_setzero_ps(); 8];
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = load(&out[at + 8 * c..]);
                }
                for (j, p) in probs.iter().enumerate() {
                    let p = _mm256_set1_ps(*p);
                    let row = &rows[j * hd + at..][..64];
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(p, load(&row[8 * c..]), *a);
                    }
                }
                for (c, a) in acc.iter().enumerate() {
                    store(&mut out[at + 8 * c..], *a);
                }
            }
        }
    }

    /// [`super::head`] for `hd = 8 * C`, `C` a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn head<T: Rows, const C: usize>(
        qs: &[&[f32]],
        keys: &[T],
        values_: &[T],
        scale: f32,
        out: &mut [f32],
    ) {
        in_blocks(
            qs.len(),
            keys,
            values_,
            scale,
            out,
            |rows, first, len, probs| scores::<C>(qs, rows, first, len, probs),
            |probs, len, first, rows, out| values::<C>(probs, len, first, rows, out),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    fn ramp(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1013) as f32 / 506.0 - 1.0) * 0.8)
            .collect()
    }

    /// Against f64 math, on cache-like views (a larger buffer, narrowed),
    /// with grouped query heads, head sizes with a tail and the two the
    /// AVX-512 kernel has (64, 128), key counts around its groups of 16,
    /// and caches longer than a converted block; f16 caches against the
    /// same math on their rounded values.
    #[test]
    fn matches_exact_attention() {
        let cases = [
            (8, 2, 64, 37, 64),
            (4, 4, 20, 5, 9),
            (6, 3, 16, 1, 4),
            (8, 2, 64, 150, 160),
            (3, 1, 20, 301, 310),
            (12, 4, 128, 77, 80),
            (4, 1, 128, 16, 16),
            (2, 2, 64, 1, 1),
            // More query heads per KV head than are listed without a Vec.
            (40, 1, 64, 33, 40),
        ];
        for dtype in [DType::F32, DType::F16] {
            for (nh, nkv, hd, len, cap) in cases {
                check(dtype, nh, nkv, hd, len, cap);
            }
        }
    }

    fn check(dtype: DType, nh: usize, nkv: usize, hd: usize, len: usize, cap: usize) {
        let dev = Device::Cpu;
        let q = Tensor::from_vec(ramp(nh * hd, 1), (1, nh, 1, hd), &dev).expect("q");
        let cache = |seed| {
            Tensor::from_vec(ramp(nkv * cap * hd, seed), (1, nkv, cap, hd), &dev)
                .and_then(|t| t.to_dtype(dtype))
                .expect("cache")
        };
        let (kc, vc) = (cache(2), cache(3));
        let (k, v) = (
            kc.narrow(2, 0, len).expect("k"),
            vc.narrow(2, 0, len).expect("v"),
        );
        let scale = 1.0 / (hd as f32).sqrt();
        let out = q
            .apply_op3_no_bwd(&k, &v, &DecodeAttention { scale })
            .expect("attention");
        assert_eq!(out.dims(), &[1, nh, 1, hd]);
        let got = out
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("out");
        let values = |t: &Tensor| {
            t.to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .expect("values")
        };
        let (q, kc, vc) = (ramp(nh * hd, 1), values(&kc), values(&vc));
        for h in 0..nh {
            let g = h / (nh / nkv);
            let at = |t: &[f32], j: usize, d: usize| f64::from(t[(g * cap + j) * hd + d]);
            let want = crate::softmax::exact_attention_row(
                hd,
                len,
                f64::from(scale),
                |d| f64::from(q[h * hd + d]),
                |j, d| at(&kc, j, d),
                |j, d| at(&vc, j, d),
                |_| true,
            );
            for (d, want) in want.into_iter().enumerate() {
                let got = f64::from(got[h * hd + d]);
                assert!(
                    (got - want).abs() <= 1e-5,
                    "{dtype:?} {nh}/{nkv} len {len} head {h} dim {d}: {got} vs {want}"
                );
            }
        }
    }

    /// One head through the kernel for `isa` (`generic`, `avx2`,
    /// `avx512`), or `None` where the CPU lacks it.
    #[allow(unsafe_code)]
    fn run_kernel<T: Rows>(
        isa: &str,
        qs: &[&[f32]],
        keys: &[T],
        values: &[T],
        scale: f32,
    ) -> Option<Vec<f32>> {
        let hd = qs[0].len();
        let mut out = vec![0f32; qs.len() * hd];
        match (isa, hd) {
            ("generic", _) => T::head_any(qs, keys, values, scale, &mut out),
            #[cfg(target_arch = "x86_64")]
            ("avx2", 64) if Kernel::Avx2.runs_here() => unsafe {
                // SAFETY: the CPU has AVX2 and FMA.
                avx2::head::<T, 8>(qs, keys, values, scale, &mut out)
            },
            #[cfg(target_arch = "x86_64")]
            ("avx2", 128) if Kernel::Avx2.runs_here() => unsafe {
                // SAFETY: as above.
                avx2::head::<T, 16>(qs, keys, values, scale, &mut out)
            },
            #[cfg(target_arch = "x86_64")]
            ("avx512", 64) if std::arch::is_x86_feature_detected!("avx512f") => unsafe {
                // SAFETY: the CPU has AVX-512 F.
                avx512::head::<T, 4>(qs, keys, values, scale, &mut out)
            },
            #[cfg(target_arch = "x86_64")]
            ("avx512", 128) if std::arch::is_x86_feature_detected!("avx512f") => unsafe {
                // SAFETY: as above.
                avx512::head::<T, 8>(qs, keys, values, scale, &mut out)
            },
            _ => return None,
        }
        Some(out)
    }

    /// Every kernel this CPU runs gives the generic kernel's result (held
    /// to f64 math above) on rows of f32 and f16, for group counts and
    /// lengths around their blocks. The dispatching test above only
    /// reaches the best kernel here.
    #[test]
    fn every_kernel_agrees_with_the_generic_one() {
        let mut ran = 0;
        for (hd, rep, len) in [(64, 4, 150), (128, 3, 77), (64, 1, 7), (128, 2, 16)] {
            let q = ramp(rep * hd, 1);
            let qs: Vec<&[f32]> = q.chunks(hd).collect();
            let (keys, values) = (ramp(len * hd, 2), ramp(len * hd, 3));
            let half = |v: &[f32]| v.iter().map(|x| f16::from_f32(*x)).collect::<Vec<_>>();
            let (keys16, values16) = (half(&keys), half(&values));
            let scale = 0.125;
            let want = run_kernel("generic", &qs, &keys, &values, scale).expect("generic");
            let want16 =
                run_kernel("generic", &qs, &keys16, &values16, scale).expect("generic f16");
            for isa in ["avx2", "avx512"] {
                let pairs = [
                    (run_kernel(isa, &qs, &keys, &values, scale), &want),
                    (run_kernel(isa, &qs, &keys16, &values16, scale), &want16),
                ];
                for (got, want) in pairs {
                    let Some(got) = got else { continue };
                    ran += 1;
                    let worst = got
                        .iter()
                        .zip(want.iter())
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(worst <= 1e-6, "{isa} hd {hd} rep {rep} len {len}: {worst}");
                }
            }
        }
        eprintln!("{ran} kernel runs compared");
    }

    #[test]
    fn refuses_shapes_that_do_not_fit() {
        let q = Tensor::zeros((1, 6, 1, 16), DType::F32, &Device::Cpu).expect("q");
        let k = Tensor::zeros((1, 4, 3, 16), DType::F32, &Device::Cpu).expect("k");
        let err = q
            .apply_op3_no_bwd(&k, &k, &DecodeAttention { scale: 1.0 })
            .expect_err("6 heads over 4");
        assert!(err.to_string().contains("do not fit"), "{err}");
        let v = k.to_dtype(DType::F16).expect("f16");
        let q = Tensor::zeros((1, 4, 1, 16), DType::F32, &Device::Cpu).expect("q");
        let err = q
            .apply_op3_no_bwd(&k, &v, &DecodeAttention { scale: 1.0 })
            .expect_err("mixed dtypes");
        assert!(err.to_string().contains("both"), "{err}");
    }
}
