//! x86-64 kernels over the interleaved layout: AVX-512 VNNI and AVX2.
//!
//! One group is sixteen output rows. Each 64-byte chunk holds four quant
//! bytes of each row, so a multiply-add against four activation bytes
//! broadcast to every lane yields one partial dot product per row and
//! lane; the block's f32 scale is then one vector multiply-add for all
//! sixteen rows. 4-bit values are used as unsigned nibbles; Q4_0's `−8` and
//! (for VNNI's unsigned × signed product) Q8_0's `+128` come back as
//! `offset · Σq` per activation block, subtracted before the scale.
//!
//! The kernels are safe Rust apart from the loads, which read whole
//! `Chunk`s and scale arrays through references; they only run where
//! [`Isa::runs_here`] confirms the CPU has the instructions.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::tile::{PACKED, SUB, Spans, Tiles, as_tile, word};
use super::{ActRow, CHUNK, Chunk, Format, Interleaved, Isa, ROWS};

/// The x86-64 kernels of one instruction set (AVX2 or AVX-512 VNNI).
pub(super) struct Kernels(pub(super) Isa);

impl Tiles for Kernels {
    fn tile<const T: usize>(
        &self,
        w: &Interleaved,
        g: usize,
        act: &[ActRow<'_>; T],
        out: &mut [[f32; ROWS]; T],
    ) -> bool {
        let isa = self.0;
        if !isa.runs_here() {
            return false;
        }
        // SAFETY (every arm): `runs_here` just confirmed the target features.
        match (isa, w.format) {
            (Isa::Avx512Vnni, Format::Q4K) => unsafe {
                q45k_avx512::<T, 32, false, false>(w, g, act, out, &[])
            },
            (Isa::Avx512Vnni, Format::Q5K) => unsafe {
                q45k_avx512::<T, 40, true, false>(w, g, act, out, &[])
            },
            (Isa::Avx512Vnni, Format::Q6K) => unsafe { q6k_avx512(w, g, act, out) },
            (Isa::Avx2, Format::Q4K) => unsafe { q45k_avx2::<T, 32, false>(w, g, act, out) },
            (Isa::Avx2, Format::Q5K) => unsafe { q45k_avx2::<T, 40, true>(w, g, act, out) },
            (Isa::Avx2, Format::Q6K) => unsafe { q6k_avx2(w, g, act, out) },
            (Isa::Avx512Vnni, Format::Q8_0) => unsafe { q8_avx512(w, g, act, out) },
            (Isa::Avx512Vnni, Format::Q4_1) => unsafe { q4_avx512::<T, true>(w, g, act, out) },
            (Isa::Avx512Vnni, _) => unsafe { q4_avx512::<T, false>(w, g, act, out) },
            (Isa::Avx2, Format::Q8_0) => unsafe { q8_avx2(w, g, act, out) },
            (Isa::Avx2, Format::Q4_1) => unsafe { q4_avx2::<T, true>(w, g, act, out) },
            (Isa::Avx2, _) => unsafe { q4_avx2::<T, false>(w, g, act, out) },
            (Isa::Scalar, _) => return false,
        }
        true
    }
}

/// A whole chunk: four quant bytes of each of the sixteen rows.
#[inline]
#[target_feature(enable = "avx512f")]
fn chunk512(chunk: &super::Chunk) -> __m512i {
    // SAFETY: a `Chunk` is 64 readable bytes aligned to 64.
    unsafe { _mm512_load_si512(chunk.0.as_ptr().cast()) }
}

/// Loads a 16-value f16 array as f32.
#[inline]
#[target_feature(enable = "avx512f")]
fn f16x16(v: &[half::f16; ROWS]) -> __m512 {
    // SAFETY: `v` is 32 readable bytes; the load is unaligned.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(v.as_ptr().cast()) })
}

/// Q4_0 / Q4_1 (`MINS`) with AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn q4_avx512<const T: usize, const MINS: bool>(
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>; T],
    out: &mut [[f32; ROWS]; T],
) {
    let offset = if w.format == Format::Q4_0 { 8 } else { 0 };
    let sp = Spans::<4, T>::new(w, g, act);
    let pf = Prefetch::here();
    let mask = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); T];
    let mut acc_m = [_mm512_setzero_ps(); T];
    for b in 0..w.blocks {
        prefetch_ahead::<4, T>(w, g, b, 0, 4, pf);
        let mut lo = [_mm512_setzero_si512(); 4];
        let mut hi = [_mm512_setzero_si512(); 4];
        for c in 0..4 {
            let raw = chunk512(&sp.quants[b][c]);
            lo[c] = _mm512_and_si512(raw, mask);
            hi[c] = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), mask);
        }
        let dw = f16x16(&sp.scales[b]);
        let mw = if MINS {
            f16x16(&sp.mins[b])
        } else {
            _mm512_setzero_ps()
        };
        for t in 0..T {
            let y = &sp.ys[t][b];
            let mut s = _mm512_set1_epi32(-offset * act[t].sums[b]);
            for c in 0..4 {
                s = _mm512_dpbusd_epi32(s, lo[c], _mm512_set1_epi32(word(y, c)));
                s = _mm512_dpbusd_epi32(s, hi[c], _mm512_set1_epi32(word(y, c + 4)));
            }
            let d = _mm512_mul_ps(dw, _mm512_set1_ps(act[t].d[b]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc[t]);
            if MINS {
                acc_m[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(act[t].s[b]), acc_m[t]);
            }
        }
    }
    for (o, (a, m)) in out.iter_mut().zip(acc.into_iter().zip(acc_m)) {
        let a = _mm512_add_ps(a, m);
        // SAFETY: `o` is 16 writable f32; the store is unaligned.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
    }
}

/// Q8_0 with AVX-512 VNNI: weights as `w + 128` (unsigned), less `128 · Σy`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn q8_avx512<const T: usize>(
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>; T],
    out: &mut [[f32; ROWS]; T],
) {
    let sp = Spans::<8, T>::new(w, g, act);
    let pf = Prefetch::here();
    let flip = _mm512_set1_epi8(i8::MIN);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..w.blocks {
        prefetch_ahead::<8, T>(w, g, b, 0, 8, pf);
        let mut u = [_mm512_setzero_si512(); 8];
        for (c, u) in u.iter_mut().enumerate() {
            let raw = chunk512(&sp.quants[b][c]);
            *u = _mm512_xor_si512(raw, flip);
        }
        let dw = f16x16(&sp.scales[b]);
        for t in 0..T {
            let y = &sp.ys[t][b];
            let mut s = _mm512_set1_epi32(-128 * act[t].sums[b]);
            for (c, u) in u.iter().enumerate() {
                s = _mm512_dpbusd_epi32(s, *u, _mm512_set1_epi32(word(y, c)));
            }
            let d = _mm512_mul_ps(dw, _mm512_set1_ps(act[t].d[b]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc[t]);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 16 writable f32; the store is unaligned.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
    }
}

/// Loads eight f16 values as f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16x8(v: &[half::f16]) -> __m256 {
    let v = &v[..8];
    // SAFETY: `v` is 16 readable bytes; the load is unaligned.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(v.as_ptr().cast()) })
}

/// Half `h` (rows `8h..8h + 8`) of chunk `c`: 32 bytes, aligned to 32.
#[inline]
#[target_feature(enable = "avx2")]
fn half_chunk(chunk: &super::Chunk, h: usize) -> __m256i {
    let bytes = &chunk.0[h * 32..h * 32 + 32];
    // SAFETY: 32 readable bytes at a 32-byte boundary of a 64-aligned chunk.
    unsafe { _mm256_load_si256(bytes.as_ptr().cast()) }
}

/// Q4_0 / Q4_1 (`MINS`) with AVX2: `maddubs` products (nibble × i8, at most
/// 2 · 15 · 127 per pair) summed over the block in i16 (at most
/// 8 · 3810 < 2¹⁵), then widened once.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_avx2<const T: usize, const MINS: bool>(
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>; T],
    out: &mut [[f32; ROWS]; T],
) {
    let offset = if w.format == Format::Q4_0 { 8 } else { 0 };
    let sp = Spans::<4, T>::new(w, g, act);
    let pf = Prefetch::here();
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); T];
        let mut acc_m = [_mm256_setzero_ps(); T];
        for b in 0..w.blocks {
            if h == 0 {
                prefetch_ahead::<4, T>(w, g, b, 0, 4, pf);
            }
            let mut lo = [_mm256_setzero_si256(); 4];
            let mut hi = [_mm256_setzero_si256(); 4];
            for c in 0..4 {
                let raw = half_chunk(&sp.quants[b][c], h);
                lo[c] = _mm256_and_si256(raw, mask);
                hi[c] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask);
            }
            let dw = f16x8(&sp.scales[b][h * 8..]);
            let mw = if MINS {
                f16x8(&sp.mins[b][h * 8..])
            } else {
                _mm256_setzero_ps()
            };
            for t in 0..T {
                let y = &sp.ys[t][b];
                let mut p = _mm256_setzero_si256();
                for c in 0..4 {
                    let l = _mm256_maddubs_epi16(lo[c], _mm256_set1_epi32(word(y, c)));
                    let u = _mm256_maddubs_epi16(hi[c], _mm256_set1_epi32(word(y, c + 4)));
                    p = _mm256_add_epi16(p, _mm256_add_epi16(l, u));
                }
                let s = _mm256_add_epi32(
                    _mm256_madd_epi16(p, ones),
                    _mm256_set1_epi32(-offset * act[t].sums[b]),
                );
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(act[t].d[b]));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc[t]);
                if MINS {
                    acc_m[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(act[t].s[b]), acc_m[t]);
                }
            }
        }
        for (o, (a, m)) in out.iter_mut().zip(acc.into_iter().zip(acc_m)) {
            let a = _mm256_add_ps(a, m);
            // SAFETY: 8 writable f32 at `o[8h..]`; the store is unaligned.
            unsafe { _mm256_storeu_ps(o[h * 8..].as_mut_ptr(), a) };
        }
    }
}

/// Q8_0 with AVX2: `maddubs(|w|, sign(y, w))` (at most 2 · 128 · 127 per
/// pair, so no saturation), widened per chunk.
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_avx2<const T: usize>(
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>; T],
    out: &mut [[f32; ROWS]; T],
) {
    let sp = Spans::<8, T>::new(w, g, act);
    let pf = Prefetch::here();
    let ones = _mm256_set1_epi16(1);
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..w.blocks {
            if h == 0 {
                prefetch_ahead::<8, T>(w, g, b, 0, 8, pf);
            }
            let mut raw = [_mm256_setzero_si256(); 8];
            let mut abs = [_mm256_setzero_si256(); 8];
            for c in 0..8 {
                raw[c] = half_chunk(&sp.quants[b][c], h);
                abs[c] = _mm256_abs_epi8(raw[c]);
            }
            let dw = f16x8(&sp.scales[b][h * 8..]);
            for t in 0..T {
                let y = &sp.ys[t][b];
                let mut s = _mm256_setzero_si256();
                for c in 0..8 {
                    let signed = _mm256_sign_epi8(_mm256_set1_epi32(word(y, c)), raw[c]);
                    let p = _mm256_maddubs_epi16(abs[c], signed);
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
                }
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(act[t].d[b]));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc[t]);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            // SAFETY: 8 writable f32 at `o[8h..]`; the store is unaligned.
            unsafe { _mm256_storeu_ps(o[h * 8..].as_mut_ptr(), a) };
        }
    }
}

/// Sixteen rows' bytes for sub-block `j`, widened to i32 lanes (unsigned,
/// or signed for Q6_K's scales).
#[inline]
#[target_feature(enable = "avx512f")]
fn sub_lanes<const SIGNED: bool>(sub: &[u8; SUB], j: usize) -> __m512i {
    let bytes = &sub[j * ROWS..j * ROWS + ROWS];
    // SAFETY: 16 readable bytes; the load is unaligned.
    let v = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
    if SIGNED {
        _mm512_cvtepi8_epi32(v)
    } else {
        _mm512_cvtepu8_epi32(v)
    }
}

/// A Q4_K or Q5_K block's scales and minimums for sixteen rows, unpacked
/// from 6 bits to bytes: scales `[j][row]` (128 bytes), then minimums in
/// pairs of sub-blocks per row (`[j / 2][row][j % 2]`, 128 bytes), so that
/// one 16-bit multiply-add takes two sub-blocks of all sixteen rows.
#[repr(C, align(64))]
struct Unpacked([u8; SUB]);

/// Byte `4p..4p + 4` of the packed scales (`[byte][row]`), as in
/// `q4k_scale_min`: `j < 4` keeps the low 6 bits of bytes `j` (scale) and
/// `j + 4` (minimum); `j ≥ 4` takes the nibbles of byte `j + 4` and the
/// top 2 bits of bytes `j − 4` (scale) and `j` (minimum) as bits 4–5.
#[target_feature(enable = "avx512f,avx512bw")]
fn unpack_k_avx512(p: &[u8; PACKED]) -> Unpacked {
    // SAFETY: 192 readable bytes (three unaligned 64-byte loads).
    let [q0, q1, q2] =
        [0, 1, 2].map(|i| unsafe { _mm512_loadu_si512(p[64 * i..].as_ptr().cast()) });
    let low6 = _mm512_set1_epi8(63);
    let nibble = _mm512_set1_epi8(0x0F);
    // (v >> 6) << 4 of each byte.
    let top = |v| _mm512_and_si512(_mm512_srli_epi16::<2>(v), _mm512_set1_epi8(0x30));
    let sc_0123 = _mm512_and_si512(q0, low6);
    let sc_4567 = _mm512_or_si512(_mm512_and_si512(q2, nibble), top(q0));
    let m_0123 = _mm512_and_si512(q1, low6);
    let m_4567 = _mm512_or_si512(
        _mm512_and_si512(_mm512_srli_epi16::<4>(q2), nibble),
        top(q1),
    );
    // Lanes (sub-blocks) 0, 2, 4, 6 against 1, 3, 5, 7, interleaved byte
    // by byte: rows 0–7 of each pair in `lo`, rows 8–15 in `hi`.
    let even = _mm512_shuffle_i64x2::<0b10_00_10_00>(m_0123, m_4567);
    let odd = _mm512_shuffle_i64x2::<0b11_01_11_01>(m_0123, m_4567);
    let (lo, hi) = (
        _mm512_unpacklo_epi8(even, odd),
        _mm512_unpackhi_epi8(even, odd),
    );
    // (lo.0, hi.0, lo.1, hi.1) and (lo.2, hi.2, lo.3, hi.3).
    let pairs_01 = _mm512_shuffle_i64x2::<0b01_00_01_00>(lo, hi);
    let pairs_23 = _mm512_shuffle_i64x2::<0b11_10_11_10>(lo, hi);
    let pairs_01 = _mm512_shuffle_i64x2::<0b11_01_10_00>(pairs_01, pairs_01);
    let pairs_23 = _mm512_shuffle_i64x2::<0b11_01_10_00>(pairs_23, pairs_23);
    let mut out = Unpacked([0; SUB]);
    for (i, v) in [sc_0123, sc_4567, pairs_01, pairs_23]
        .into_iter()
        .enumerate()
    {
        // SAFETY: 64 writable bytes at `64i` of 256.
        unsafe { _mm512_store_si512(out.0[64 * i..].as_mut_ptr().cast(), v) };
    }
    out
}

/// [`unpack_k_avx512`] with AVX2: the same bytes, 32 at a time.
#[target_feature(enable = "avx2")]
fn unpack_k_avx2(p: &[u8; PACKED]) -> Unpacked {
    // SAFETY: 192 readable bytes (six unaligned 32-byte loads).
    let q: [__m256i; 6] =
        std::array::from_fn(|i| unsafe { _mm256_loadu_si256(p[32 * i..].as_ptr().cast()) });
    let low6 = _mm256_set1_epi8(63);
    let nibble = _mm256_set1_epi8(0x0F);
    let top = |v| _mm256_and_si256(_mm256_srli_epi16::<2>(v), _mm256_set1_epi8(0x30));
    let mut out = Unpacked([0; SUB]);
    let mut put = |at: usize, v: __m256i| {
        // SAFETY: 32 writable bytes at `at` ≤ 224 of 256.
        unsafe { _mm256_store_si256(out.0[at..].as_mut_ptr().cast(), v) };
    };
    for h in 0..2 {
        // Sub-blocks 2h, 2h + 1 and 4 + 2h, 5 + 2h.
        let (q0, q1, q2) = (q[h], q[2 + h], q[4 + h]);
        put(32 * h, _mm256_and_si256(q0, low6));
        put(
            64 + 32 * h,
            _mm256_or_si256(_mm256_and_si256(q2, nibble), top(q0)),
        );
        let m_low = _mm256_and_si256(q1, low6);
        let m_high = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(q2), nibble),
            top(q1),
        );
        for (pair, m) in [(h, m_low), (2 + h, m_high)] {
            // The pair's two sub-blocks are the register's two lanes.
            let swapped = _mm256_permute2x128_si256::<0x01>(m, m);
            let lo = _mm256_unpacklo_epi8(m, swapped);
            let hi = _mm256_unpackhi_epi8(m, swapped);
            put(128 + 32 * pair, _mm256_permute2x128_si256::<0x20>(lo, hi));
        }
    }
    out
}

/// Chunk `c` of quarter `i` of a Q4_K or Q5_K block (`quants`) as two
/// chunks of bytes: its low nibbles (sub-block `2i`) and its high ones
/// (`2i + 1`), with Q5_K's fifth bits (`FIFTH`) as bit 4. The fifth bits
/// go in by a byte-masked add of 16 under a bit test (bit 4 of a nibble is
/// clear, so the add is an or): two tests and two adds, where shifting the
/// bits into place took eight instructions (one thread, `lumen bench
/// kernels` Q5_K: 16.7–16.9 → 22.6–23.8 GB/s).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn k_bytes<const C: usize, const FIFTH: bool>(
    quants: &[Chunk; C],
    i: usize,
    c: usize,
) -> (__m512i, __m512i) {
    let mask = _mm512_set1_epi8(0x0F);
    let raw = chunk512(&quants[8 * i + c]);
    let mut lo = _mm512_and_si512(raw, mask);
    let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), mask);
    if FIFTH {
        let bit4 = _mm512_set1_epi8(0x10);
        // This quarter's fifth bits: bit 2i (low nibbles), 2i + 1.
        let lo_bit = _mm512_set1_epi8((1u8 << (2 * i)) as i8);
        let hi_bit = _mm512_set1_epi8((2u8 << (2 * i)) as i8);
        let qh = chunk512(&quants[32 + c]);
        lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(qh, lo_bit), lo, bit4);
        hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(qh, hi_bit), hi, bit4);
    }
    (lo, hi)
}

/// A Q4_K or Q5_K block's quants as bytes, [`k_bytes`] for every chunk:
/// quarter `i`'s low-nibble chunks at `16i..16i + 8`, its high ones after.
#[derive(Clone, Copy)]
pub(super) struct KBytes([Chunk; 64]);

/// One row group of a Q5_K weight with its quants unpacked to bytes
/// ([`KBytes`]), for a prompt's many tiles of activation rows: the
/// nibbles and fifth bits are unpacked once per group instead of once per
/// tile of four rows. A 1B Q5_K file's 128-token prompt, alternated:
/// 205–217 → 232–235 tok/s. Q4_K, whose nibbles take three instructions
/// per chunk, was no faster so (Q4_K_M prompt 255–256 → 236–252 tok/s):
/// reading twice the bytes from the caches cost what unpacking saved.
#[derive(Default)]
pub(super) struct GroupBytes(Vec<KBytes>);

impl GroupBytes {
    /// Unpacks group `g` of `w` if the kernels for `isa` read it unpacked
    /// (Q5_K with AVX-512 VNNI); `false` otherwise.
    pub(super) fn fill(&mut self, isa: Isa, w: &Interleaved, g: usize) -> bool {
        if isa != Isa::Avx512Vnni || w.format != Format::Q5K || !isa.runs_here() {
            return false;
        }
        let at = g * w.blocks * 40;
        let Some(quants) = w.quants.get(at..at + w.blocks * 40) else {
            return false;
        };
        self.0.clear();
        for block in quants.as_chunks::<40>().0 {
            // SAFETY: `runs_here` confirmed AVX-512 F and BW.
            self.0.push(unsafe { unpack_block::<40, true>(block) });
        }
        true
    }

    /// Group `g` of `w` (as [`GroupBytes::fill`] left it) against 1–4
    /// activation rows; `false` where it cannot (the caller's kernels then
    /// run instead).
    pub(super) fn tile(
        &self,
        w: &Interleaved,
        g: usize,
        act: &[ActRow<'_>],
        out: &mut [f32],
    ) -> bool {
        if self.0.len() != w.blocks || w.format != Format::Q5K {
            return false;
        }
        fn run<const T: usize>(
            bytes: &[KBytes],
            w: &Interleaved,
            g: usize,
            act: &[ActRow<'_>],
            out: &mut [f32],
        ) -> bool {
            let Some((act, out)) = as_tile::<T>(act, out) else {
                return false;
            };
            // SAFETY: `fill` confirmed AVX-512 VNNI.
            unsafe { q45k_avx512::<T, 40, true, true>(w, g, act, out, bytes) };
            true
        }
        match act.len() {
            1 => run::<1>(&self.0, w, g, act, out),
            2 => run::<2>(&self.0, w, g, act, out),
            3 => run::<3>(&self.0, w, g, act, out),
            4 => run::<4>(&self.0, w, g, act, out),
            _ => false,
        }
    }
}

/// One block's [`KBytes`].
#[target_feature(enable = "avx512f,avx512bw")]
fn unpack_block<const C: usize, const FIFTH: bool>(quants: &[Chunk; C]) -> KBytes {
    let mut out = KBytes([Chunk([0; CHUNK]); 64]);
    for i in 0..4 {
        for c in 0..8 {
            let (lo, hi) = k_bytes::<C, FIFTH>(quants, i, c);
            for (at, v) in [(16 * i + c, lo), (16 * i + 8 + c, hi)] {
                // SAFETY: a `Chunk` is 64 writable bytes aligned to 64.
                unsafe { _mm512_store_si512(out.0[at].0.as_mut_ptr().cast(), v) };
            }
        }
    }
    out
}

/// Q4_K (or Q5_K: `FIFTH`, `C = 40`) with AVX-512 VNNI. Per 64 values a
/// chunk's low nibbles belong to one 32-value sub-block and its high
/// nibbles to the next (Q5_K adds bits `2i`, `2i + 1` of its fifth-bit
/// chunk as bit 4); each sub-block's per-row dot products are multiplied
/// by the rows' 8-bit scales in i32, and the minimums' `m_j · Σy` summed
/// apart.
///
/// With `BYTES`, the group's quants come unpacked from `bytes` (one
/// [`KBytes`] block per block: [`GroupBytes::fill`]) instead of from the
/// weight's nibbles.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn q45k_avx512<const T: usize, const C: usize, const FIFTH: bool, const BYTES: bool>(
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>; T],
    out: &mut [[f32; ROWS]; T],
    bytes: &[KBytes],
) {
    let sp = Spans::<C, T>::new(w, g, act);
    let pf = Prefetch::here();
    let mut acc = [_mm512_setzero_ps(); T];
    let mut acc_m = [_mm512_setzero_ps(); T];
    for b in 0..w.blocks {
        let sub = &unpack_k_avx512(&sp.packed[b]).0;
        let unpacked = if BYTES { bytes.get(b) } else { None };
        let mut sumi = [_mm512_setzero_si512(); T];
        for i in 0..4 {
            // A quarter of the block at a time (see `prefetch_ahead`).
            prefetch_ahead::<C, T>(w, g, b, i * C / 4, C / 4, pf);
            let mut lo_dot = [_mm512_setzero_si512(); T];
            let mut hi_dot = [_mm512_setzero_si512(); T];
            for c in 0..8 {
                let (lo, hi) = match unpacked {
                    Some(u) => (chunk512(&u.0[16 * i + c]), chunk512(&u.0[16 * i + 8 + c])),
                    None => k_bytes::<C, FIFTH>(&sp.quants[b], i, c),
                };
                for t in 0..T {
                    let y_lo = &sp.ys[t][8 * b + 2 * i];
                    let y_hi = &sp.ys[t][8 * b + 2 * i + 1];
                    lo_dot[t] =
                        _mm512_dpbusd_epi32(lo_dot[t], lo, _mm512_set1_epi32(word(y_lo, c)));
                    hi_dot[t] =
                        _mm512_dpbusd_epi32(hi_dot[t], hi, _mm512_set1_epi32(word(y_hi, c)));
                }
            }
            let sc_lo = sub_lanes::<false>(sub, 2 * i);
            let sc_hi = sub_lanes::<false>(sub, 2 * i + 1);
            for t in 0..T {
                let s = _mm512_add_epi32(
                    _mm512_mullo_epi32(lo_dot[t], sc_lo),
                    _mm512_mullo_epi32(hi_dot[t], sc_hi),
                );
                sumi[t] = _mm512_add_epi32(sumi[t], s);
            }
        }
        let dw = f16x16(&sp.scales[b]);
        let dmin = f16x16(&sp.mins[b]);
        for t in 0..T {
            let bsums = &act[t].sums[16 * b..16 * b + 16];
            // Σ_j m_j · Σy_j: pairs of sub-blocks per 16-bit multiply-add
            // (minimums ≤ 63, sums ≤ 32 · 127: both fit i16).
            let mut mins = _mm512_setzero_si512();
            for p in 0..4 {
                let at = 8 * ROWS + 2 * ROWS * p;
                // SAFETY: 32 readable bytes; the load is unaligned.
                let m = unsafe { _mm256_loadu_si256(sub[at..at + 2 * ROWS].as_ptr().cast()) };
                let lo = bsums[4 * p] + bsums[4 * p + 1];
                let hi = bsums[4 * p + 2] + bsums[4 * p + 3];
                let y = _mm512_set1_epi32(pair_i16(lo, hi));
                mins = _mm512_dpwssd_epi32(mins, _mm512_cvtepu8_epi16(m), y);
            }
            let dy = _mm512_set1_ps(act[t].d[b]);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[t]), _mm512_mul_ps(dw, dy), acc[t]);
            acc_m[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mins), _mm512_mul_ps(dmin, dy), acc_m[t]);
        }
    }
    for (o, (a, m)) in out.iter_mut().zip(acc.into_iter().zip(acc_m)) {
        // SAFETY: `o` is 16 writable f32; the store is unaligned.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), _mm512_sub_ps(a, m)) };
    }
}

/// Q6_K with AVX-512 VNNI: each 6-bit value is rebuilt from the nibble
/// plane and the 2-bit plane (unsigned, `q + 32`); per 16-value sub-block
/// the dot products start at `−32 · Σy` and are multiplied by the rows'
/// signed 8-bit scales in i32.
///
/// Both nibbles of a chunk are used as it is read (two quarters at a time,
/// [`q6k_half`]). Taken a quarter at a time, the compiler kept each chunk
/// for its second use by spilling it to the stack; measured with `lumen
/// bench kernels` (one thread): 30 → 36–38 GB/s, and a Q6_K 1B's 256-token
/// prompt 300–309 → 337–348 tok/s (AVX2 in the same way: 135–139 → 147–152).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn q6k_avx512<const T: usize>(
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>; T],
    out: &mut [[f32; ROWS]; T],
) {
    let sp = Spans::<48, T>::new(w, g, act);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..w.blocks {
        let mut sumi = [_mm512_setzero_si512(); T];
        // Quarters 0 and 2 (values 0–63, 128–191) from the low and high
        // nibbles of chunks 0–15, then quarters 1 and 3 from chunks 16–31:
        // each chunk is read once for both of its nibbles.
        q6k_half::<0, T>(&sp, act, b, &mut sumi);
        q6k_half::<1, T>(&sp, act, b, &mut sumi);
        let dw = f16x16(&sp.scales[b]);
        for t in 0..T {
            let d = _mm512_mul_ps(dw, _mm512_set1_ps(act[t].d[b]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[t]), d, acc[t]);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 16 writable f32; the store is unaligned.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
    }
}

/// Quarters `HALF` and `HALF + 2` of a Q6_K block (values `64·HALF..` and
/// `128 + 64·HALF..`, sub-blocks `4·HALF + s` and `8 + 4·HALF + s`): the
/// low and high nibbles of nibble chunks `16·HALF..16·HALF + 16`, each with
/// its bits of the 2-bit plane (`2·quarter`) moved to bits 4–5.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn q6k_half<const HALF: usize, const T: usize>(
    sp: &Spans<'_, 48, T>,
    act: &[ActRow<'_>; T],
    b: usize,
    sumi: &mut [__m512i; T],
) {
    let chunks = &sp.quants[b];
    let low_mask = _mm512_set1_epi8(0x0F);
    let high_mask = _mm512_set1_epi8(0x30);
    let quarters = [HALF, HALF + 2];
    for s in 0..4 {
        prefetch_ahead::<48, T>(sp.w, sp.g, b, 6 * (4 * HALF + s), 6, Prefetch::Q6K);
        // Sub-blocks `4·quarter + s`, starting at −32 · Σy.
        let mut dot = [[_mm512_setzero_si512(); 2]; T];
        for (t, d) in dot.iter_mut().enumerate() {
            for (d, quarter) in d.iter_mut().zip(quarters) {
                *d = _mm512_set1_epi32(-32 * act[t].sums[16 * b + 4 * quarter + s]);
            }
        }
        for c in 0..4 {
            // Values `64·quarter + 4·col..` of each quarter.
            let col = 4 * s + c;
            let nib = chunk512(&chunks[16 * HALF + col]);
            let hb = chunk512(&chunks[32 + col]);
            // Bits 2·quarter of the 2-bit plane at bits 4–5: quarters 0
            // and 2 shift by 4 and 0, quarters 1 and 3 by 2 and −2.
            let (hb_lo, hb_hi) = if HALF == 0 {
                (_mm512_slli_epi16::<4>(hb), hb)
            } else {
                (_mm512_slli_epi16::<2>(hb), _mm512_srli_epi16::<2>(hb))
            };
            let q = [
                _mm512_or_si512(
                    _mm512_and_si512(nib, low_mask),
                    _mm512_and_si512(hb_lo, high_mask),
                ),
                _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(nib), low_mask),
                    _mm512_and_si512(hb_hi, high_mask),
                ),
            ];
            for (t, d) in dot.iter_mut().enumerate() {
                for ((d, q), quarter) in d.iter_mut().zip(q).zip(quarters) {
                    let vg = 16 * quarter + col;
                    let y = &sp.ys[t][8 * b + vg / 8];
                    *d = _mm512_dpbusd_epi32(*d, q, _mm512_set1_epi32(word(y, vg % 8)));
                }
            }
        }
        for (quarter, h) in quarters.into_iter().zip(0..2) {
            let sc = sub_lanes::<true>(&sp.subs[b], 4 * quarter + s);
            for (s, d) in sumi.iter_mut().zip(&dot) {
                *s = _mm512_add_epi32(*s, _mm512_mullo_epi32(d[h], sc));
            }
        }
    }
}

/// Eight rows' (`8h..8h + 8`) bytes at `at` of a block's unpacked bytes,
/// each repeated for both 16-bit halves of its row's 32-bit lane.
#[inline]
#[target_feature(enable = "avx2")]
fn row_pairs_i16<const SIGNED: bool>(sub: &[u8; SUB], at: usize) -> __m256i {
    let bytes = &sub[at..at + 8];
    // SAFETY: 8 readable bytes; the load is unaligned.
    let v = unsafe { _mm_loadl_epi64(bytes.as_ptr().cast()) };
    let twice = _mm_unpacklo_epi8(v, v);
    if SIGNED {
        _mm256_cvtepi8_epi16(twice)
    } else {
        _mm256_cvtepu8_epi16(twice)
    }
}

/// Two 16-bit values in one broadcast word (`lo` in the low half).
#[inline(always)]
fn pair_i16(lo: i32, hi: i32) -> i32 {
    (lo & 0xFFFF) | (hi << 16)
}

/// Q4_K (or Q5_K: `FIFTH`, `C = 40`) with AVX2. Per row half (eight rows
/// per vector): `maddubs` products summed in i16 over a 32-value sub-block
/// (at most 8 · 2 · 15 · 127 < 2¹⁵), or over half of one for Q5_K's 5-bit
/// values (4 · 2 · 31 · 127), widened by a 16-bit multiply-add with the
/// rows' scales; the minimums' `m_j · Σy_j` by 16-bit multiply-adds of
/// sub-block pairs.
#[target_feature(enable = "avx2,fma,f16c")]
fn q45k_avx2<const T: usize, const C: usize, const FIFTH: bool>(
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>; T],
    out: &mut [[f32; ROWS]; T],
) {
    let sp = Spans::<C, T>::new(w, g, act);
    let pf = Prefetch::here();
    // Sums of the scaled products and of the minimums' terms, per row half.
    let mut acc = [[_mm256_setzero_ps(); T]; 2];
    let mut acc_m = [[_mm256_setzero_ps(); T]; 2];
    let mut block = |b: usize, h: usize, sub: &Unpacked| {
        q45k_avx2_block::<T, C, FIFTH>(&sp, act, b, h, sub, pf, &mut acc[h], &mut acc_m[h]);
    };
    if T == 1 {
        // One activation row (decoding): both halves of a block in turn,
        // so that its scales are unpacked once.
        for b in 0..w.blocks {
            let sub = unpack_k_avx2(&sp.packed[b]);
            for h in 0..2 {
                block(b, h, &sub);
            }
        }
    } else {
        // A batch: one half at a time over every block (the registers
        // hold one half's sums per row), unpacking each block twice.
        for h in 0..2 {
            for b in 0..w.blocks {
                let sub = unpack_k_avx2(&sp.packed[b]);
                block(b, h, &sub);
            }
        }
    }
    for (h, (acc, acc_m)) in acc.iter().zip(&acc_m).enumerate() {
        for (o, (a, m)) in out.iter_mut().zip(acc.iter().zip(acc_m)) {
            // SAFETY: 8 writable f32 at `o[8h..]`; the store is unaligned.
            unsafe { _mm256_storeu_ps(o[h * 8..].as_mut_ptr(), _mm256_sub_ps(*a, *m)) };
        }
    }
}

/// Block `b` of [`q45k_avx2`] for rows `8h..8h + 8`, added to `acc` (scaled
/// products) and `acc_m` (the minimums' terms).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
fn q45k_avx2_block<const T: usize, const C: usize, const FIFTH: bool>(
    sp: &Spans<'_, C, T>,
    act: &[ActRow<'_>; T],
    b: usize,
    h: usize,
    sub: &Unpacked,
    pf: Prefetch,
    acc: &mut [__m256; T],
    acc_m: &mut [__m256; T],
) {
    let sub = &sub.0;
    let mask = _mm256_set1_epi8(0x0F);
    let bit4 = _mm256_set1_epi8(0x10);
    let mut sumi = [_mm256_setzero_si256(); T];
    for i in 0..4 {
        if h == 0 {
            prefetch_ahead::<C, T>(sp.w, sp.g, b, i * C / 4, C / 4, pf);
        }
        let sc_lo = row_pairs_i16::<false>(sub, 2 * i * ROWS + 8 * h);
        let sc_hi = row_pairs_i16::<false>(sub, (2 * i + 1) * ROWS + 8 * h);
        let fifth_shift = _mm_cvtsi32_si128(2 * i as i32);
        let mut lo_dot = [_mm256_setzero_si256(); T];
        let mut hi_dot = [_mm256_setzero_si256(); T];
        for c in 0..8 {
            let raw = half_chunk(&sp.quants[b][8 * i + c], h);
            let mut lo = _mm256_and_si256(raw, mask);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask);
            if FIFTH {
                let qh = _mm256_srl_epi16(half_chunk(&sp.quants[b][32 + c], h), fifth_shift);
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16::<4>(qh), bit4));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16::<3>(qh), bit4));
            }
            for t in 0..T {
                let y_lo = _mm256_set1_epi32(word(&sp.ys[t][8 * b + 2 * i], c));
                let y_hi = _mm256_set1_epi32(word(&sp.ys[t][8 * b + 2 * i + 1], c));
                lo_dot[t] = _mm256_add_epi16(lo_dot[t], _mm256_maddubs_epi16(lo, y_lo));
                hi_dot[t] = _mm256_add_epi16(hi_dot[t], _mm256_maddubs_epi16(hi, y_hi));
            }
            // Widen before the i16 sums could overflow.
            if c == 7 || (FIFTH && c == 3) {
                for t in 0..T {
                    let s = _mm256_add_epi32(
                        _mm256_madd_epi16(lo_dot[t], sc_lo),
                        _mm256_madd_epi16(hi_dot[t], sc_hi),
                    );
                    sumi[t] = _mm256_add_epi32(sumi[t], s);
                    lo_dot[t] = _mm256_setzero_si256();
                    hi_dot[t] = _mm256_setzero_si256();
                }
            }
        }
    }
    let dw = f16x8(&sp.scales[b][h * 8..]);
    let dmin = f16x8(&sp.mins[b][h * 8..]);
    for t in 0..T {
        let bsums = &act[t].sums[16 * b..16 * b + 16];
        let mut mins = _mm256_setzero_si256();
        for p in 0..4 {
            let at = 8 * ROWS + 2 * ROWS * p + 16 * h;
            let m = &sub[at..at + 16];
            // SAFETY: 16 readable bytes; the load is unaligned.
            let m = _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(m.as_ptr().cast()) });
            let lo = bsums[4 * p] + bsums[4 * p + 1];
            let hi = bsums[4 * p + 2] + bsums[4 * p + 3];
            let y = _mm256_set1_epi32(pair_i16(lo, hi));
            mins = _mm256_add_epi32(mins, _mm256_madd_epi16(m, y));
        }
        let dy = _mm256_set1_ps(act[t].d[b]);
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), _mm256_mul_ps(dw, dy), acc[t]);
        acc_m[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_mul_ps(dmin, dy), acc_m[t]);
    }
}

/// Q6_K with AVX2: per chunk `maddubs` (6-bit × i8, at most 2 · 63 · 127
/// per pair) widened at once by a 16-bit multiply-add with the rows'
/// signed scales; Q6_K's `−32 · Σy` per sub-block as
/// `sc · (−16 Σy) · 2` in the same way (`16 · Σy ≤ 16 · 2032 < 2¹⁵`).
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k_avx2<const T: usize>(
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>; T],
    out: &mut [[f32; ROWS]; T],
) {
    let sp = Spans::<48, T>::new(w, g, act);
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..w.blocks {
            let mut sumi = [_mm256_setzero_si256(); T];
            q6k_half_avx2::<0, T>(&sp, act, b, h, &mut sumi);
            q6k_half_avx2::<1, T>(&sp, act, b, h, &mut sumi);
            let dw = f16x8(&sp.scales[b][h * 8..]);
            for t in 0..T {
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(act[t].d[b]));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), d, acc[t]);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            // SAFETY: 8 writable f32 at `o[8h..]`; the store is unaligned.
            unsafe { _mm256_storeu_ps(o[h * 8..].as_mut_ptr(), a) };
        }
    }
}

/// Quarters `HALF` and `HALF + 2` of a Q6_K block for rows `8h..8h + 8`
/// (see [`q6k_half`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k_half_avx2<const HALF: usize, const T: usize>(
    sp: &Spans<'_, 48, T>,
    act: &[ActRow<'_>; T],
    b: usize,
    h: usize,
    sumi: &mut [__m256i; T],
) {
    let chunks = &sp.quants[b];
    let low_mask = _mm256_set1_epi8(0x0F);
    let high_mask = _mm256_set1_epi8(0x30);
    let quarters = [HALF, HALF + 2];
    for s in 0..4 {
        if h == 0 {
            prefetch_ahead::<48, T>(sp.w, sp.g, b, 6 * (4 * HALF + s), 6, Prefetch::Q6K);
        }
        let sc = quarters
            .map(|quarter| row_pairs_i16::<true>(&sp.subs[b], (4 * quarter + s) * ROWS + 8 * h));
        for (t, sum) in sumi.iter_mut().enumerate() {
            for (sc, quarter) in sc.iter().zip(quarters) {
                let y_sum = act[t].sums[16 * b + 4 * quarter + s];
                let bias = _mm256_set1_epi16((-16 * y_sum) as i16);
                *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(*sc, bias));
            }
        }
        for c in 0..4 {
            let col = 4 * s + c;
            let nib = half_chunk(&chunks[16 * HALF + col], h);
            let hb = half_chunk(&chunks[32 + col], h);
            let (hb_lo, hb_hi) = if HALF == 0 {
                (_mm256_slli_epi16::<4>(hb), hb)
            } else {
                (_mm256_slli_epi16::<2>(hb), _mm256_srli_epi16::<2>(hb))
            };
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(nib, low_mask),
                    _mm256_and_si256(hb_lo, high_mask),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(nib), low_mask),
                    _mm256_and_si256(hb_hi, high_mask),
                ),
            ];
            for (t, sum) in sumi.iter_mut().enumerate() {
                for ((q, sc), quarter) in q.iter().zip(&sc).zip(quarters) {
                    let vg = 16 * quarter + col;
                    let y = _mm256_set1_epi32(word(&sp.ys[t][8 * b + vg / 8], vg % 8));
                    let p = _mm256_maddubs_epi16(*q, y);
                    *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(p, *sc));
                }
            }
        }
    }
}

/// How the kernels ask the caches for weights ahead of them when decoding
/// (one activation row, [`prefetch_ahead`]): into which cache, how far
/// ahead. Which is fastest depends on the CPU's hardware prefetchers, so it
/// is chosen once per process by the CPU's vendor ([`Prefetch::here`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Prefetch {
    /// Into the level-2 cache (`_MM_HINT_T1`) rather than level 1 (`T0`).
    level2: bool,
    /// How far ahead of the chunk in use, in bytes.
    ahead: usize,
}

impl Prefetch {
    /// Level 1, 4 KiB ahead: what the EPYCs of earlier sessions measured
    /// fastest (see [`prefetch_ahead`]); AMD's and other CPUs' plan.
    pub(super) const LEVEL1: Self = Self {
        level2: false,
        ahead: 4096,
    };

    /// Level 2, 3 KiB ahead: Intel's plan. On an Intel Xeon (AVX-512 VNNI,
    /// AMX) `lumen bench kernels --rows 524288` (0.6–1.1 GB weights, more
    /// than the caches), two threads, GB/s, one sweep of a build that read
    /// both from the environment, [`Self::LEVEL1`] / this:
    /// - AVX-512: Q4_0 25.8 / 32.1, Q4_1 28.2 / 32.1, Q8_0 28.7 / 30.2,
    ///   Q4_K 26.0 / 29.5, Q5_K 26.1 / 27.6;
    /// - AVX2 (`LUMEN_CPU_KERNELS=avx2`): Q4_0 24.5 / 27.9, Q4_1 26.3 /
    ///   29.3, Q8_0 27.0 / 29.7, Q4_K 22.9 / 27.7, Q5_K 22.9 / 23.6.
    ///
    /// Level 1 at 3 KiB fell in between (AVX-512 Q4_0 29.0, Q4_K 27.4),
    /// level 2 at 2 KiB or 4 KiB a little lower; `_MM_HINT_T2` measured as
    /// `T1`. Requests exactly 4 KiB ahead into level 1 are the slowest
    /// here, likely because that address falls in the level-1 cache set
    /// of the chunk in use; a C loop with the Q4_0 kernel's instructions
    /// (two threads, 2 MiB pages, a 256-byte block and its scales per
    /// step) measured the same order: 30.6 / 33.6 GB/s.
    pub(super) const LEVEL2: Self = Self {
        level2: true,
        ahead: 3072,
    };

    /// The Q6_K kernels' requests on every CPU: level 2, 8 KiB ahead
    /// (filling level 1 that early stalled the loads of the chunks in use,
    /// see [`prefetch_ahead`]). On the Xeon level 2 at 3 KiB measured the
    /// same (AVX-512 27.9 against 28.3 GB/s, AVX2 22.2 against 21.9).
    pub(super) const Q6K: Self = Self {
        level2: true,
        ahead: 8192,
    };

    /// This CPU's plan: [`Self::LEVEL2`] on Intel's CPUs, else
    /// [`Self::LEVEL1`]; `LUMEN_CPU_PREFETCH=level1|level2` chooses one
    /// (for comparing them on one machine).
    pub(super) fn here() -> Self {
        static CHOSEN: std::sync::OnceLock<Prefetch> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| match std::env::var("LUMEN_CPU_PREFETCH").as_deref() {
            Ok("level1") => Self::LEVEL1,
            Ok("level2") => Self::LEVEL2,
            _ if is_intel() => Self::LEVEL2,
            _ => Self::LEVEL1,
        })
    }

    /// The plan in words, for benchmarks' reports.
    pub(super) fn describe(self) -> String {
        let level = if self.level2 { 2 } else { 1 };
        format!("level-{level} prefetch {} KiB ahead", self.ahead / 1024)
    }
}

/// Whether the CPU's vendor string is Intel's.
fn is_intel() -> bool {
    let id = __cpuid(0);
    let vendor = [id.ebx, id.edx, id.ecx].map(u32::to_le_bytes);
    vendor.concat() == b"GenuineIntel"
}

/// Asks the caches (`pf`) for `n` weight chunks `pf.ahead` bytes after
/// chunk `from` of block `b` of group `g` (into the next group's, past the
/// group's end: the layout is contiguous), so that decoding's single pass
/// over the weights does not wait on memory (1B Q4_K_M decode 38.5 → 57
/// tok/s when first added). Only for one activation row (`T == 1`):
/// batches reuse each block long enough for the hardware prefetchers.
///
/// The k-quant kernels ask a few chunks at a time as they go rather than a
/// whole block at its start: 32–48 requests at once fill the core's miss
/// buffers and stall it. Measured on EPYCs with level-1 requests 4 KiB
/// ahead (`lumen bench kernels`, GB/s on one thread / two, before →
/// after): AVX-512 Q5_K 21 / 33 → 34 / 47, Q6_K 26 / 40 → 32 / 40 (with
/// [`Prefetch::Q6K`]); AVX2 Q4_K 24 / 37 → 30 / 47, Q5_K 15 / 28 → 21 /
/// 37, Q6_K 15 / 29 → 24 / 35. 1B Q4_K_M decode: AVX2, two threads 36.5 →
/// 42.5 tok/s; AVX-512, one thread 34 → 38 tok/s (two threads: unchanged
/// within the machine's noise, bandwidth-bound).
/// AVX-512 Q4_K, first left with one request per block start (spread out
/// it measured no faster on the machine of the time), spread out too on
/// another EPYC where the block-start requests stalled the scale loads
/// behind them: 128256 × 2048, one thread 15–16 → 23.5–24 GB/s, two
/// threads 30–32 → 38–39.5 GB/s (read bandwidth 36–37 GB/s).
///
/// Level 1 or 2 on the EPYCs: the Q6_K kernels' requests 8 KiB ahead
/// gained from level 2 (`lumen bench kernels` Q6_K, GB/s on one thread /
/// two, level 1 → level 2, in alternation: AVX-512 23.5–24.3 / 33–49 →
/// 28–29 / 35–55, AVX2 13.5–13.7 / 28 → 17.7–18.1 / 30–35); the 4 KiB
/// requests did not (AVX-512 Q4_0 one thread 28.7 → 25, AVX2 Q4_K 21 →
/// 17.5 GB/s), hence [`Prefetch::LEVEL1`] there. On the Intel Xeon
/// [`Prefetch::LEVEL2`] is the faster.
#[inline]
#[target_feature(enable = "sse")]
fn prefetch_ahead<const C: usize, const T: usize>(
    w: &Interleaved,
    g: usize,
    b: usize,
    from: usize,
    n: usize,
    pf: Prefetch,
) {
    if T != 1 {
        return;
    }
    let at = (g * w.blocks + b) * C + from + pf.ahead / CHUNK;
    for chunk in w.quants.get(at..at + n).unwrap_or(&[]) {
        let p = chunk.0.as_ptr().cast();
        if pf.level2 {
            _mm_prefetch::<_MM_HINT_T1>(p);
        } else {
            _mm_prefetch::<_MM_HINT_T0>(p);
        }
    }
}
