//! Half-precision (IEEE f16) rows for the KV cache on the CPU: conversion
//! to and from f32 sixteen (AVX-512) or eight (F16C) values per
//! instruction, chosen at run time, and the two cache operations built on
//! it — writing new keys or values in place, and widening a cached view for
//! the attention matmuls of a prompt.
//!
//! Keys and values in f16 halve the cache (a 128K-token context of Llama
//! 3.2 3B is 14 GiB in f32, 7 GiB in f16) and halve what decoding reads per
//! token at depth, which is memory-bound: llama.cpp's default too. Scalar
//! conversion (`half`'s per-value functions) costs more than the bytes it
//! saves, so every conversion here runs on whole rows.

use candle_core::{CpuStorage, CustomOp1, InplaceOp2, Layout, Shape};
use half::f16;

/// `dst[i] = src[i]` as f32 (exact), for slices of one length.
pub(crate) fn widen(src: &[f16], dst: &mut [f32]) {
    widen_ahead(src, &[], dst);
}

/// [`widen`], asking the level-2 cache for `next` (the rows to be widened
/// after these: at most as many lines as `src` has) as it goes. A stream
/// of blocks widened this way, each between other work, reads memory
/// while that work runs. Decoding attention over a 1B model's f16 cache at
/// a depth of 4096 (16 layers, two threads, in alternation): AVX-512
/// 12.4–13.2 → 9.5–10.3 ms, AVX2 12.0–12.3 → 10.0–10.7 ms. Every request
/// at once before the block, rather than spread out, took 17.3–18.7 ms;
/// into level 1, no faster than none.
pub(crate) fn widen_ahead(src: &[f16], next: &[f16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::qmm::Isa::avx512f_allowed() {
            // SAFETY: the CPU has AVX-512 F.
            #[allow(unsafe_code)]
            unsafe {
                x86::widen_avx512(src, next, dst)
            };
            return;
        }
        if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx")
        {
            // SAFETY: the CPU has AVX and F16C.
            #[allow(unsafe_code)]
            unsafe {
                x86::widen_f16c(src, next, dst)
            };
            return;
        }
    }
    let _ = next;
    widen_scalar(src, dst);
}

fn widen_scalar(src: &[f16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// `dst[i] = src[i]` rounded to the nearest f16 (ties to even; beyond
/// ±65504 it is ±∞, as f16 has no larger values).
pub(crate) fn narrow(src: &[f32], dst: &mut [f16]) {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::qmm::Isa::avx512f_allowed() {
            // SAFETY: the CPU has AVX-512 F.
            #[allow(unsafe_code)]
            unsafe {
                x86::narrow_avx512(src, dst)
            };
            return;
        }
        if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx")
        {
            // SAFETY: the CPU has AVX and F16C.
            #[allow(unsafe_code)]
            unsafe {
                x86::narrow_f16c(src, dst)
            };
            return;
        }
    }
    narrow_scalar(src, dst);
}

fn narrow_scalar(src: &[f32], dst: &mut [f16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(*s);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    /// Rounds to nearest, ties to even (floating-point exceptions are
    /// masked by default; the immediate has no room for the flag).
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT;

    /// Asks the level-2 cache for the line holding `rows[at]`, if any.
    #[inline(always)]
    fn prefetch_l2(rows: &[f16], at: usize) {
        if let Some(v) = rows.get(at) {
            // SAFETY: prefetching has no effect the program can see.
            unsafe { _mm_prefetch::<_MM_HINT_T1>((v as *const f16).cast()) };
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn widen_avx512(src: &[f16], next: &[f16], dst: &mut [f32]) {
        let (s_body, s_tail) = src.as_chunks::<16>();
        let (d_body, d_tail) = dst.as_chunks_mut::<16>();
        for (i, (s, d)) in s_body.iter().zip(d_body).enumerate() {
            if i % 2 == 0 {
                prefetch_l2(next, 16 * i);
            }
            // SAFETY: `s` is 32 readable bytes, `d` 64 writable ones; both
            // accesses are unaligned.
            unsafe {
                let h = _mm256_loadu_si256(s.as_ptr().cast());
                _mm512_storeu_ps(d.as_mut_ptr(), _mm512_cvtph_ps(h));
            }
        }
        for (d, s) in d_tail.iter_mut().zip(s_tail) {
            *d = s.to_f32();
        }
    }

    #[target_feature(enable = "avx,f16c")]
    pub(super) fn widen_f16c(src: &[f16], next: &[f16], dst: &mut [f32]) {
        let (s_body, s_tail) = src.as_chunks::<8>();
        let (d_body, d_tail) = dst.as_chunks_mut::<8>();
        for (i, (s, d)) in s_body.iter().zip(d_body).enumerate() {
            if i % 4 == 0 {
                prefetch_l2(next, 8 * i);
            }
            // SAFETY: `s` is 16 readable bytes, `d` 32 writable ones; both
            // accesses are unaligned.
            unsafe {
                let h = _mm_loadu_si128(s.as_ptr().cast());
                _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(h));
            }
        }
        for (d, s) in d_tail.iter_mut().zip(s_tail) {
            *d = s.to_f32();
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn narrow_avx512(src: &[f32], dst: &mut [f16]) {
        let (s_body, s_tail) = src.as_chunks::<16>();
        let (d_body, d_tail) = dst.as_chunks_mut::<16>();
        for (s, d) in s_body.iter().zip(d_body) {
            // SAFETY: `s` is 64 readable bytes, `d` 32 writable ones; both
            // accesses are unaligned.
            unsafe {
                let h = _mm512_cvtps_ph::<NEAREST>(_mm512_loadu_ps(s.as_ptr()));
                _mm256_storeu_si256(d.as_mut_ptr().cast(), h);
            }
        }
        for (d, s) in d_tail.iter_mut().zip(s_tail) {
            *d = f16::from_f32(*s);
        }
    }

    #[target_feature(enable = "avx,f16c")]
    pub(super) fn narrow_f16c(src: &[f32], dst: &mut [f16]) {
        let (s_body, s_tail) = src.as_chunks::<8>();
        let (d_body, d_tail) = dst.as_chunks_mut::<8>();
        for (s, d) in s_body.iter().zip(d_body) {
            // SAFETY: `s` is 32 readable bytes, `d` 16 writable ones; both
            // accesses are unaligned.
            unsafe {
                let h = _mm256_cvtps_ph::<NEAREST>(_mm256_loadu_ps(s.as_ptr()));
                _mm_storeu_si128(d.as_mut_ptr().cast(), h);
            }
        }
        for (d, s) in d_tail.iter_mut().zip(s_tail) {
            *d = f16::from_f32(*s);
        }
    }
}

/// Cached rows as f32: f32 caches as they are, f16 ones widened into a
/// buffer.
pub(crate) trait AsF32: Sized + Sync {
    /// `src` as f32, in `buf` (of the same length) if it needs converting.
    fn as_f32<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];

    /// [`AsF32::as_f32`] for a stream of blocks: a conversion asks for
    /// `next` (the next block) as it goes ([`widen_ahead`]).
    fn as_f32_ahead<'a>(src: &'a [Self], next: &[Self], buf: &'a mut [f32]) -> &'a [f32] {
        let _ = next;
        Self::as_f32(src, buf)
    }
}

impl AsF32 for f32 {
    #[inline(always)]
    fn as_f32<'a>(src: &'a [f32], _: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl AsF32 for f16 {
    #[inline(always)]
    fn as_f32<'a>(src: &'a [f16], buf: &'a mut [f32]) -> &'a [f32] {
        widen(src, buf);
        buf
    }

    #[inline(always)]
    fn as_f32_ahead<'a>(src: &'a [f16], next: &[f16], buf: &'a mut [f32]) -> &'a [f32] {
        widen_ahead(src, next, buf);
        buf
    }
}

/// A `(1, n, len, hd)` view of rows in a cache tensor: the first element,
/// the stride between heads, and `(n, len, hd)`. Rows of `hd` values are
/// contiguous and follow each other within a head.
pub(crate) struct Heads<'a, T> {
    /// From the view's first element to its last.
    pub data: &'a [T],
    /// Elements from one head's first row to the next head's.
    pub stride: usize,
    /// Heads, rows per head, values per row.
    pub dims: (usize, usize, usize),
}

impl<'a, T> Heads<'a, T> {
    /// Checks that `layout` over `data` is such a view. `op` and `what`
    /// name the operation and operand in errors.
    pub(crate) fn of(
        op: &str,
        what: &str,
        data: &'a [T],
        layout: &Layout,
    ) -> candle_core::Result<Self> {
        let (b, n, len, hd) = layout.shape().dims4()?;
        let stride = layout.stride();
        if b != 1 || stride[3] != 1 || (len > 1 && stride[2] != hd) {
            candle_core::bail!(
                "{op}: {what} {:?} with strides {stride:?} is not a view of rows",
                layout.dims()
            )
        }
        let head_stride = stride[1];
        let start = layout.start_offset();
        let end = start + n.saturating_sub(1) * head_stride + len * hd;
        if n == 0 || end > data.len() {
            candle_core::bail!("{op}: {what} lies outside its storage")
        }
        Ok(Heads {
            data: &data[start..end],
            stride: head_stride,
            dims: (n, len, hd),
        })
    }

    /// The view of each head's first `len` rows; `None` for none or more
    /// than it has.
    pub(crate) fn first_rows(&self, len: usize) -> Option<Self> {
        let (n, rows, hd) = self.dims;
        if len == 0 || len > rows || n == 0 {
            return None;
        }
        let end = (n - 1) * self.stride + len * hd;
        Some(Heads {
            data: self.data.get(..end)?,
            stride: self.stride,
            dims: (n, len, hd),
        })
    }

    /// Head `h`'s rows, `len × hd` values.
    pub(crate) fn head(&self, h: usize) -> &'a [T] {
        let (_, len, hd) = self.dims;
        &self.data[h * self.stride..][..len * hd]
    }
}

impl<'a> Heads<'a, f32> {
    /// The queries of an attention op: f32 storage viewed as [`Heads::of`].
    pub(crate) fn queries(
        op: &str,
        storage: &'a CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<Self> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{op}: q must be f32")
        };
        Self::of(op, "q", data, layout)
    }
}

/// The keys and values an attention kernel reads from the cache, both f32
/// or both f16.
pub(crate) enum KvViews<'a> {
    /// An f32 cache.
    F32(Heads<'a, f32>, Heads<'a, f32>),
    /// An f16 cache.
    F16(Heads<'a, f16>, Heads<'a, f16>),
}

impl<'a> KvViews<'a> {
    /// Checks the operands `k` and `v` of operation `op`.
    pub(crate) fn of(
        op: &str,
        k: &'a CpuStorage,
        k_layout: &Layout,
        v: &'a CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<Self> {
        Ok(match (k, v) {
            (CpuStorage::F32(k), CpuStorage::F32(v)) => Self::F32(
                Heads::of(op, "k", k, k_layout)?,
                Heads::of(op, "v", v, v_layout)?,
            ),
            (CpuStorage::F16(k), CpuStorage::F16(v)) => Self::F16(
                Heads::of(op, "k", k, k_layout)?,
                Heads::of(op, "v", v, v_layout)?,
            ),
            _ => candle_core::bail!("{op}: k and v must both be f32 or both f16"),
        })
    }

    /// Each head's first `len` keys and values ([`Heads::first_rows`]);
    /// `None` for none or more than the views hold.
    pub(crate) fn first_rows(&self, len: usize) -> Option<Self> {
        Some(match self {
            Self::F32(k, v) => Self::F32(k.first_rows(len)?, v.first_rows(len)?),
            Self::F16(k, v) => Self::F16(k.first_rows(len)?, v.first_rows(len)?),
        })
    }
}

/// Widens a `(1, n, len, hd)` f16 view of the cache to a contiguous f32
/// tensor, for the batched attention of a prompt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Widen;

impl CustomOp1 for Widen {
    fn name(&self) -> &'static str {
        "lumen-widen-f16"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F16(data) = storage else {
            candle_core::bail!("{}: expects f16", self.name())
        };
        let view = Heads::of(self.name(), "input", data, layout)?;
        let (n, len, hd) = view.dims;
        let mut out = vec![0f32; n * len * hd];
        for (h, out) in out.chunks_exact_mut(len * hd).enumerate() {
            widen(view.head(h), out);
        }
        Ok((CpuStorage::F32(out), Shape::from((1, n, len, hd))))
    }
}

/// Rounds a contiguous f32 tensor to a new f16 one of its shape (as
/// [`narrow`], in parallel): image keys and values kept for decoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Narrow;

impl CustomOp1 for Narrow {
    fn name(&self) -> &'static str {
        "lumen-narrow-f16"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let name = self.name();
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{name}: expects f32")
        };
        let src = layout
            .contiguous_offsets()
            .and_then(|(start, end)| data.get(start..end));
        let Some(src) = src else {
            candle_core::bail!("{name}: expects a contiguous tensor within its storage")
        };
        let mut out = vec![f16::ZERO; src.len()];
        out.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(out, src)| narrow(src, out));
        Ok((CpuStorage::F16(out), layout.shape().clone()))
    }
}

/// Writes f32 rows `(1, n, seq, hd)` (contiguous) into an f16 cache tensor
/// `(1, n, capacity, hd)` (contiguous) at row `at` of every head, rounding
/// to f16.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreRows {
    /// The first row written.
    pub at: usize,
}

impl InplaceOp2 for StoreRows {
    fn name(&self) -> &'static str {
        "lumen-store-f16"
    }

    fn cpu_fwd(
        &self,
        cache: &mut CpuStorage,
        cache_layout: &Layout,
        rows: &CpuStorage,
        rows_layout: &Layout,
    ) -> candle_core::Result<()> {
        let name = self.name();
        let (CpuStorage::F16(cache), CpuStorage::F32(rows)) = (cache, rows) else {
            candle_core::bail!("{name}: expects an f16 cache and f32 rows")
        };
        let (b, n, cap, hd) = cache_layout.shape().dims4()?;
        let (rb, rn, seq, rhd) = rows_layout.shape().dims4()?;
        let (Some(c0), Some(r0)) = (
            cache_layout.contiguous_offsets().map(|(s, _)| s),
            rows_layout.contiguous_offsets().map(|(s, _)| s),
        ) else {
            candle_core::bail!("{name}: the cache and the rows must be contiguous")
        };
        if b != 1 || (rb, rn, rhd) != (b, n, hd) || self.at + seq > cap {
            candle_core::bail!(
                "{name}: rows {:?} at {} do not fit the cache {:?}",
                rows_layout.dims(),
                self.at,
                cache_layout.dims()
            )
        }
        for h in 0..n {
            let src = &rows[r0 + h * seq * hd..][..seq * hd];
            let dst = &mut cache[c0 + (h * cap + self.at) * hd..][..seq * hd];
            narrow(src, dst);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, IndexOp, Tensor};

    type Widener = fn(&[f16], &mut [f32]);
    type Narrower = fn(&[f32], &mut [f16]);

    /// Every implementation this CPU can run, by name (the dispatching
    /// function picks one of them).
    #[allow(unsafe_code)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    fn implementations() -> Vec<(&'static str, Widener, Narrower)> {
        let mut all: Vec<(&'static str, Widener, Narrower)> = vec![
            ("dispatch", widen, narrow),
            ("scalar", widen_scalar, narrow_scalar),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::qmm::Isa::avx512f_allowed() {
                // SAFETY: the CPU has AVX-512 F.
                all.push((
                    "avx512",
                    // Asking for `s` itself as the next rows: the widened
                    // values must not depend on the requests.
                    |s, d| unsafe { x86::widen_avx512(s, s, d) },
                    |s, d| unsafe { x86::narrow_avx512(s, d) },
                ));
            }
            if std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("avx")
            {
                // SAFETY: the CPU has AVX and F16C.
                all.push((
                    "f16c",
                    |s, d| unsafe { x86::widen_f16c(s, s, d) },
                    |s, d| unsafe { x86::narrow_f16c(s, d) },
                ));
            }
        }
        all
    }

    /// Every f16 bit pattern widens as `half` does (NaNs to NaNs).
    #[test]
    fn widening_is_exact_for_every_value() {
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        for (name, widen, _) in implementations() {
            let mut got = vec![0f32; all.len()];
            widen(&all, &mut got);
            for (h, g) in all.iter().zip(&got) {
                let want = h.to_f32();
                assert!(
                    want.to_bits() == g.to_bits() || (want.is_nan() && g.is_nan()),
                    "{name} {:#06x}: {g} vs {want}",
                    h.to_bits()
                );
            }
        }
    }

    /// Rounding matches `half` (nearest, ties to even) on values around
    /// every exponent, the subnormals, ties, overflow and odd lengths.
    #[test]
    fn narrowing_rounds_to_nearest_even() {
        let mut xs = vec![0.0, -0.0, 65504.0, 65519.0, 65520.0, -1e9, 1e-8, 6e-8];
        for e in -26..17 {
            let base = 2f32.powi(e);
            for k in 0..67 {
                let x = base * (1.0 + k as f32 / 64.0 + 1.0 / 4096.0 * (k % 3) as f32);
                xs.extend([x, -x]);
            }
            // Exactly halfway between two f16 values above `base`.
            xs.push(base * (1.0 + 1.0 / 2048.0));
            xs.push(base * (1.0 + 3.0 / 2048.0));
        }
        for (name, _, narrow) in implementations() {
            for len in [xs.len(), 1, 7, 15, 17, 33] {
                let src = &xs[..len];
                let mut got = vec![f16::ZERO; len];
                narrow(src, &mut got);
                for (x, g) in src.iter().zip(&got) {
                    assert_eq!(g.to_bits(), f16::from_f32(*x).to_bits(), "{name} {x}");
                }
            }
        }
    }

    #[test]
    fn stored_rows_come_back_through_the_widening_view() {
        let dev = Device::Cpu;
        let (n, cap, hd, seq, at) = (3, 10, 20, 4, 5);
        let cache = Tensor::zeros((1, n, cap, hd), DType::F16, &dev).expect("cache");
        let vals: Vec<f32> = (0..n * seq * hd).map(|i| i as f32 * 0.37 - 40.0).collect();
        let rows = Tensor::from_vec(vals, (1, n, seq, hd), &dev).expect("rows");
        cache.inplace_op2(&rows, &StoreRows { at }).expect("store");
        let view = cache.narrow(2, at, seq).expect("view");
        let wide = view.apply_op1_no_bwd(&Widen).expect("widen");
        let want = rows
            .to_dtype(DType::F16)
            .and_then(|t| t.to_dtype(DType::F32))
            .expect("round trip");
        let diff = (wide - want)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff");
        assert_eq!(diff, 0.0);
        // Rows before `at` were not touched.
        let before = cache
            .i((.., .., ..at, ..))
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.abs())
            .and_then(|t| t.max_all())
            .and_then(|t| t.to_scalar::<f32>())
            .expect("before");
        assert_eq!(before, 0.0);
    }

    #[test]
    fn refuses_rows_that_do_not_fit() {
        let dev = Device::Cpu;
        let cache = Tensor::zeros((1, 2, 4, 8), DType::F16, &dev).expect("cache");
        let rows = Tensor::zeros((1, 2, 3, 8), DType::F32, &dev).expect("rows");
        let err = cache
            .inplace_op2(&rows, &StoreRows { at: 2 })
            .expect_err("2 + 3 > 4");
        assert!(err.to_string().contains("do not fit"), "{err}");
    }
}
