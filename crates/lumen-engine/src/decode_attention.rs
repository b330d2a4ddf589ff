//! Attention for one new token (decoding) on the CPU, fused: for each KV
//! head, the scores of the query heads that share it, their softmax and
//! the weighted sum of values, reading the cached keys and values once, in
//! place, in parallel over KV heads. The cache may hold f32 or f16 rows.
//! For head sizes 64 and 128 (every Llama 3.x model) on AVX-512 or AVX2
//! CPUs, [`fused`]'s kernel loads rows straight into registers; otherwise
//! a portable kernel widens f16 rows a block at a time into a buffer that
//! stays in the L1 cache, each block's widening asking the L2 cache for
//! the next.
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

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod fused;
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
    /// Checks the shapes and runs [`DecodeAttention::run_into`].
    fn run<T: Rows>(
        &self,
        q: &Heads<'_, f32>,
        k: &Heads<'_, T>,
        v: &Heads<'_, T>,
    ) -> candle_core::Result<Vec<f32>> {
        let (nh, _, hd) = q.dims;
        let mut out = vec![0f32; nh * hd];
        self.run_into(q, k, v, &mut out, &mut Vec::new())?;
        Ok(out)
    }

    /// [`DecodeAttention::run`] into `out` (`heads × hd`). Where there are
    /// fewer KV heads than threads, or they do not divide among them
    /// evenly, each head's keys are split into parts ([`parts`]) whose
    /// results `parts_buffer` holds before they are joined. Allocates
    /// nothing once each thread's scratch has held this many keys and the
    /// buffer has room for [`parts_values`].
    pub(crate) fn run_into<T: Rows>(
        &self,
        q: &Heads<'_, f32>,
        k: &Heads<'_, T>,
        v: &Heads<'_, T>,
        out: &mut [f32],
        parts_buffer: &mut Vec<f32>,
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
        // The CPU's kernel for these rows, chosen once for every head.
        #[cfg(target_arch = "x86_64")]
        let kernel = fused_kernel::<T>(hd, self.scale);
        #[cfg(target_arch = "x86_64")]
        if let Some(kernel) = kernel {
            let n = parts(nkv, len, rayon::current_num_threads());
            if n > 1 {
                self.in_parts(kernel, q, k, v, out, n, parts_buffer);
                return Ok(());
            }
        }
        let _ = parts_buffer;
        // One KV head per task: its `rep` query rows' scores over the
        // cached keys, softmax, and the weighted sums of the values.
        out.par_chunks_mut(rep * hd)
            .enumerate()
            .for_each(|(h, out)| {
                with_queries(q, h, rep, |qs| {
                    let (keys, values) = (k.head(h), v.head(h));
                    #[cfg(target_arch = "x86_64")]
                    if let Some(kernel) = kernel {
                        run_fused(kernel, qs, keys, values, self.scale, out, None);
                        return;
                    }
                    T::head_any(qs, keys, values, self.scale, out);
                });
            });
        Ok(())
    }

    /// [`DecodeAttention::run_into`] with each KV head's keys in `n`
    /// parts: every part of every head is a task (its rows' unnormalized
    /// outputs and softmax statistics into `buffer`), then each head's
    /// parts are joined ([`combine`]).
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    fn in_parts<T: Rows>(
        &self,
        kernel: Fused<T>,
        q: &Heads<'_, f32>,
        k: &Heads<'_, T>,
        v: &Heads<'_, T>,
        out: &mut [f32],
        n: usize,
        buffer: &mut Vec<f32>,
    ) {
        let (nh, _, hd) = q.dims;
        let (nkv, len, _) = k.dims;
        let rep = nh / nkv;
        let per = len.div_ceil(n);
        let task = rep * (hd + 2);
        buffer.clear();
        buffer.resize(nkv * n * task, 0.0);
        buffer
            .par_chunks_mut(task)
            .enumerate()
            .for_each(|(t, part)| {
                let (h, p) = (t / n, t % n);
                let (first, end) = ((p * per).min(len), ((p + 1) * per).min(len));
                let (o, stats) = part.split_at_mut(rep * hd);
                if first == end {
                    // No keys: a part that weighs nothing.
                    for stats in stats.chunks_exact_mut(2) {
                        stats.copy_from_slice(&[f32::NEG_INFINITY, 0.0]);
                    }
                    return;
                }
                let keys = &k.head(h)[first * hd..end * hd];
                let values = &v.head(h)[first * hd..end * hd];
                with_queries(q, h, rep, |qs| {
                    run_fused(kernel, qs, keys, values, self.scale, o, Some(stats));
                });
            });
        out.par_chunks_mut(rep * hd)
            .zip(buffer.par_chunks(n * task))
            .for_each(|(out, parts)| combine(parts, rep, hd, out));
    }
}

/// Fewest keys in one part of a KV head's keys ([`parts`]): below this a
/// task's start costs more than sharing it saves.
const MIN_PART_KEYS: usize = 256;

/// Parts to split each of `nkv` KV heads' `len` keys into, so that
/// `threads` threads share the `nkv · parts` tasks evenly: the fewest with
/// `nkv · parts` a multiple of `threads` (1 where `nkv` already is), fewer
/// where a part would hold under [`MIN_PART_KEYS`] keys. SmolLM2's 3 KV
/// heads on 2 threads: 2 parts each; 8 on 12 threads: 3; 8 on 2 or 16: 1
/// and 2.
pub(crate) fn parts(nkv: usize, len: usize, threads: usize) -> usize {
    let (nkv, threads) = (nkv.max(1), threads.max(1));
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let even = threads / gcd(nkv, threads);
    even.min(len / MIN_PART_KEYS).max(1)
}

/// Values the parts buffer of [`DecodeAttention::run_into`] needs at most
/// for `heads` query heads on `kv_heads` of `hd` values and `threads`
/// threads: each part's rows of output and two statistics per row.
pub(crate) fn parts_values(heads: usize, kv_heads: usize, hd: usize, threads: usize) -> usize {
    parts(kv_heads, usize::MAX, threads) * heads * (hd + 2)
}

/// Joins one KV head's parts (each `rep` rows of `hd` unnormalized
/// outputs, then each row's largest scaled score and sum of
/// exponentials) into its normalized rows of `out`: each part weighs
/// `exp(its max − the overall max)`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn combine(parts: &[f32], rep: usize, hd: usize, out: &mut [f32]) {
    let task = rep * (hd + 2);
    for (r, out) in out.chunks_exact_mut(hd).enumerate() {
        let stat = |part: &[f32]| (part[rep * hd + 2 * r], part[rep * hd + 2 * r + 1]);
        let top = parts
            .chunks_exact(task)
            .map(stat)
            .filter(|&(_, sum)| sum > 0.0)
            .fold(f32::NEG_INFINITY, |a, (m, _)| if m > a { m } else { a });
        out.fill(0.0);
        if top == f32::NEG_INFINITY {
            continue;
        }
        let mut total = 0f64;
        for part in parts.chunks_exact(task) {
            let (m, sum) = stat(part);
            if sum <= 0.0 {
                continue;
            }
            let w = crate::softmax::exp_nonpositive(m - top);
            total += f64::from(w) * f64::from(sum);
            for (o, x) in out.iter_mut().zip(&part[r * hd..(r + 1) * hd]) {
                *o += w * x;
            }
        }
        let inverse = (1.0 / total) as f32;
        for o in out.iter_mut() {
            *o *= inverse;
        }
    }
}

/// Calls `f` with KV head `h`'s `rep` query rows, listed without
/// allocating up to [`MAX_GROUP`].
fn with_queries(q: &Heads<'_, f32>, h: usize, rep: usize, f: impl FnOnce(&[&[f32]])) {
    let query = |r: usize| q.head(h * rep + r);
    if rep <= MAX_GROUP {
        let mut qs: [&[f32]; MAX_GROUP] = [&[]; MAX_GROUP];
        for (r, q_r) in qs.iter_mut().take(rep).enumerate() {
            *q_r = query(r);
        }
        f(&qs[..rep]);
    } else {
        let qs: Vec<&[f32]> = (0..rep).map(query).collect();
        f(&qs);
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

    /// The first [`fused::Isa::LANES`] values of `rows` as f32.
    ///
    /// # Safety
    /// As [`fused::Isa`]'s methods.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    unsafe fn lanes<I: fused::Isa>(rows: &[Self]) -> I::V;
}

impl Rows for f32 {
    fn head_any(qs: &[&[f32]], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
        head_any_f32(qs, keys, values, scale, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    #[inline(always)]
    unsafe fn lanes<I: fused::Isa>(rows: &[f32]) -> I::V {
        // SAFETY: as the caller's.
        unsafe { I::load(rows) }
    }
}

impl Rows for f16 {
    fn head_any(qs: &[&[f32]], keys: &[f16], values: &[f16], scale: f32, out: &mut [f32]) {
        head_any_f16(qs, keys, values, scale, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    #[inline(always)]
    unsafe fn lanes<I: fused::Isa>(rows: &[f16]) -> I::V {
        // SAFETY: as the caller's.
        unsafe { I::load_f16(rows) }
    }
}

/// A [`fused`] kernel: `(qs, keys, values, scale, out, scratch, stats)`.
#[cfg(target_arch = "x86_64")]
type Fused<T> = unsafe fn(&[&[f32]], &[T], &[T], f32, &mut [f32], &mut [f32], Option<&mut [f32]>);

/// The [`fused`] kernel for rows of `hd` values on this CPU, if there is
/// one (and the scale is positive: the kernel scales the maximum score).
#[cfg(target_arch = "x86_64")]
fn fused_kernel<T: Rows>(hd: usize, scale: f32) -> Option<Fused<T>> {
    if !(scale > 0.0 && scale.is_finite()) {
        return None;
    }
    let avx512 = Kernel::Avx512.runs_here();
    let avx2 = !avx512 && fused::avx2_runs_here();
    match hd {
        64 if avx512 => Some(fused::head_avx512::<T, 4>),
        128 if avx512 => Some(fused::head_avx512::<T, 8>),
        64 if avx2 => Some(fused::head_avx2::<T, 8>),
        128 if avx2 => Some(fused::head_avx2::<T, 16>),
        _ => None,
    }
}

/// Runs `kernel` (from [`fused_kernel`]) with this thread's scratch.
#[cfg(target_arch = "x86_64")]
fn run_fused<T: Rows>(
    kernel: Fused<T>,
    qs: &[&[f32]],
    keys: &[T],
    values: &[T],
    scale: f32,
    out: &mut [f32],
    stats: Option<&mut [f32]>,
) {
    let hd = out.len() / qs.len().max(1);
    let len = keys.len() / hd.max(1);
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let needed = scratch_values(qs.len(), len, hd);
        if scratch.len() < needed {
            scratch.resize(needed.next_power_of_two(), 0.0);
        }
        #[allow(unsafe_code)]
        // SAFETY: `fused_kernel` chose it for an instruction set the CPU
        // has.
        unsafe {
            kernel(qs, keys, values, scale, out, &mut scratch, stats)
        };
    });
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

/// One KV head (the `rep` query rows' scores over the cached keys, their
/// softmax and the weighted values, into `out`) for any head size and
/// instruction set: plain loops that the
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
        #[cfg(target_arch = "x86_64")]
        let scratch = &mut vec![0f32; scratch_values(qs.len(), keys.len() / hd, hd)];
        match (isa, hd) {
            ("generic", _) => T::head_any(qs, keys, values, scale, &mut out),
            #[cfg(target_arch = "x86_64")]
            ("avx2", 64) if fused::avx2_runs_here() => unsafe {
                // SAFETY: the CPU has AVX2, FMA and F16C.
                fused::head_avx2::<T, 8>(qs, keys, values, scale, &mut out, scratch, None)
            },
            #[cfg(target_arch = "x86_64")]
            ("avx2", 128) if fused::avx2_runs_here() => unsafe {
                // SAFETY: as above.
                fused::head_avx2::<T, 16>(qs, keys, values, scale, &mut out, scratch, None)
            },
            #[cfg(target_arch = "x86_64")]
            ("avx512", 64) if std::arch::is_x86_feature_detected!("avx512f") => unsafe {
                // SAFETY: the CPU has AVX-512 F.
                fused::head_avx512::<T, 4>(qs, keys, values, scale, &mut out, scratch, None)
            },
            #[cfg(target_arch = "x86_64")]
            ("avx512", 128) if std::arch::is_x86_feature_detected!("avx512f") => unsafe {
                // SAFETY: as above.
                fused::head_avx512::<T, 8>(qs, keys, values, scale, &mut out, scratch, None)
            },
            _ => return None,
        }
        Some(out)
    }

    /// Every kernel this CPU runs, and the generic one, against f64 math
    /// on the same values (f16 rows as rounded), for head sizes 64 and 128,
    /// query rows per KV head from one to eight and lengths around every
    /// block. The dispatching test above only reaches the best kernel here.
    #[test]
    fn every_kernel_matches_exact_attention() {
        let mut ran = 0;
        for (hd, rep, len) in [
            (64, 4, 150),
            (128, 3, 77),
            (64, 1, 7),
            (128, 2, 16),
            // Row counts past one pass of four, blocks of the values pass
            // and of the f32 sums, lengths off every group size.
            (64, 5, 65),
            (128, 8, 129),
            (64, 3, 1),
            (64, 6, 1500),
            (128, 4, 2049),
        ] {
            let q = ramp(rep * hd, 1);
            let qs: Vec<&[f32]> = q.chunks(hd).collect();
            let (keys, values) = (ramp(len * hd, 2), ramp(len * hd, 3));
            let half = |v: &[f32]| v.iter().map(|x| f16::from_f32(*x)).collect::<Vec<_>>();
            let (keys16, values16) = (half(&keys), half(&values));
            let wide = |v: &[f16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
            let (keys16_f32, values16_f32) = (wide(&keys16), wide(&values16));
            let scale = 0.125;
            let exact = |keys: &[f32], values: &[f32]| -> Vec<f64> {
                (0..rep)
                    .flat_map(|r| {
                        crate::softmax::exact_attention_row(
                            hd,
                            len,
                            f64::from(scale),
                            |d| f64::from(q[r * hd + d]),
                            |j, d| f64::from(keys[j * hd + d]),
                            |j, d| f64::from(values[j * hd + d]),
                            |_| true,
                        )
                    })
                    .collect()
            };
            let want = exact(&keys, &values);
            let want16 = exact(&keys16_f32, &values16_f32);
            for isa in ["generic", "avx2", "avx512"] {
                let runs = [
                    ("f32", run_kernel(isa, &qs, &keys, &values, scale), &want),
                    (
                        "f16",
                        run_kernel(isa, &qs, &keys16, &values16, scale),
                        &want16,
                    ),
                ];
                for (dtype, got, want) in runs {
                    let Some(got) = got else { continue };
                    ran += 1;
                    let worst = got
                        .iter()
                        .zip(want.iter())
                        .map(|(a, b)| (f64::from(*a) - b).abs())
                        .fold(0f64, f64::max);
                    assert!(
                        worst <= 1e-6,
                        "{isa} {dtype} hd {hd} rep {rep} len {len}: {worst}"
                    );
                }
            }
        }
        eprintln!("{ran} kernel runs compared");
    }

    /// Each KV head's keys split into parts among threads ([`parts`]) and
    /// joined again give exact attention: 3 KV heads on 2 threads, 2 on 3
    /// and 1 on 2, f32 and f16 caches, parts of unequal length.
    #[test]
    fn heads_in_parts_match_exact_attention() {
        for (threads, nh, nkv, hd, len) in
            [(2, 9, 3, 64, 1001), (3, 8, 2, 128, 777), (2, 4, 1, 64, 513)]
        {
            assert!(
                parts(nkv, len, threads) > 1,
                "{nkv} heads on {threads} threads"
            );
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            for dtype in [DType::F32, DType::F16] {
                pool.install(|| check(dtype, nh, nkv, hd, len, len + 3));
            }
        }
    }

    #[test]
    fn heads_split_only_where_threads_would_idle() {
        assert_eq!(parts(3, 4096, 2), 2);
        assert_eq!(parts(8, 4096, 2), 1);
        assert_eq!(parts(8, 4096, 16), 2);
        assert_eq!(parts(8, 4096, 12), 3);
        assert_eq!(parts(8, 4096, 3), 3);
        assert_eq!(parts(1, 10_000, 8), 8);
        // Parts of at least 256 keys.
        assert_eq!(parts(3, 300, 2), 1);
        assert_eq!(parts(1, 600, 8), 2);
        assert_eq!(parts(8, 100, 16), 1);
        assert_eq!(parts_values(32, 8, 64, 16), 2 * 32 * 66);
    }

    /// Parts weigh `exp(max − overall max)`; a part without keys weighs
    /// nothing; a head with no keys at all attends to nothing.
    #[test]
    fn parts_join_by_their_maxima() {
        let (rep, hd) = (1, 2);
        let a = [2.0, 4.0, 0.0, 2.0];
        let b = [3.0, 3.0, -1.0, 1.0];
        let empty = [0.0, 0.0, f32::NEG_INFINITY, 0.0];
        let parts: Vec<f32> = [a, empty, b].concat();
        let mut out = [0f32; 2];
        combine(&parts, rep, hd, &mut out);
        let w = (-1f64).exp();
        let total = 2.0 + w;
        let want = [(2.0 + 3.0 * w) / total, (4.0 + 3.0 * w) / total];
        for (got, want) in out.iter().zip(want) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{out:?} vs {want:?}");
        }
        combine(&[empty, empty].concat(), rep, hd, &mut out);
        assert_eq!(out, [0.0, 0.0]);
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
