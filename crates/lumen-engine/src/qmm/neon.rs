//! aarch64 kernels over the interleaved layout: NEON with Armv8.2's dot
//! product instructions (`sdot`; Apple M1 and later, AWS Graviton 2 and
//! later, Arm Cortex-A76 and later, Snapdragon X).
//!
//! A 64-byte chunk is four registers of four rows each (a *quad*): `sdot`
//! multiplies each row's four bytes by four activation bytes broadcast to
//! every lane and adds the sum to that row's 32-bit lane. Both operands are
//! signed, so Q8_0's bytes go in as they are; 4-bit and 6-bit values are
//! non-negative and fit a signed byte, and their offsets (Q4_0's −8,
//! Q6_K's −32) come back as `offset · Σy` per block, as in the x86 kernels.
//! The f32 arithmetic per row (integer sum first, then one fused
//! multiply-add per block) is the scalar kernel's, so all agree.
//!
//! The kernels are safe Rust apart from the loads, which read whole
//! `Chunk`s and scale arrays through references, and the f16 conversion;
//! they only run where [`Isa::runs_here`] confirms the CPU has DotProd.

#![allow(unsafe_code)]

use std::arch::aarch64::*;

use super::tile::{PACKED, Spans, Tiles, word};
use super::{ActRow, Chunk, Format, Interleaved, Isa, QK, ROWS};

/// Sixteen rows' f32 lanes, four rows per register.
type Lanes = [float32x4_t; 4];
/// Sixteen rows' i32 lanes, four rows per register.
type Sums = [int32x4_t; 4];

/// The NEON DotProd kernels.
pub(super) struct Kernels;

impl Tiles for Kernels {
    fn tile<const T: usize>(
        &self,
        w: &Interleaved,
        g: usize,
        act: &[ActRow<'_>; T],
        out: &mut [[f32; ROWS]; T],
    ) -> bool {
        if !Isa::NeonDot.runs_here() {
            return false;
        }
        // SAFETY (every arm): `runs_here` just confirmed NEON and DotProd.
        match w.format {
            Format::Q4_0 => unsafe { q4::<T, false>(w, g, act, out) },
            Format::Q4_1 => unsafe { q4::<T, true>(w, g, act, out) },
            Format::Q8_0 => unsafe { q8::<T>(w, g, act, out) },
            Format::Q4K => unsafe { q45k::<T, 32, false>(w, g, act, out) },
            Format::Q5K => unsafe { q45k::<T, 40, true>(w, g, act, out) },
            Format::Q6K => unsafe { q6k::<T>(w, g, act, out) },
        }
        true
    }
}

/// Rows `4q..4q + 4` of a chunk: their four bytes each.
#[inline]
#[target_feature(enable = "neon")]
fn quad(chunk: &Chunk, q: usize) -> uint8x16_t {
    load16(&chunk.0[16 * q..])
}

/// Activation bytes `4c..4c + 4` of a 32-value piece, in every lane.
#[inline]
#[target_feature(enable = "neon")]
fn broadcast(y: &[i8; QK], c: usize) -> int8x16_t {
    vreinterpretq_s8_s32(vdupq_n_s32(word(y, c)))
}

/// `acc` plus, per 32-bit lane, the dot product of that lane's four
/// signed bytes of `a` and `b` (`sdot`; Rust's intrinsic for it is not
/// stable yet).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: one register-to-register instruction the caller's CPU has
    // (DotProd, checked by `Isa::runs_here`); no memory, no flags.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Four f16 values as f32 (`fcvtl`, part of every AArch64 CPU; Rust's
/// f16 vector types are not stable yet).
#[inline]
#[target_feature(enable = "neon")]
fn f16x4(bits: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: one register-to-register conversion; no memory, no flags.
    unsafe {
        std::arch::asm!(
            "fcvtl {o:v}.4s, {i:v}.4h",
            i = in(vreg) bits,
            o = lateout(vreg) out,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// Sixteen rows' f16 scales as f32.
#[inline]
#[target_feature(enable = "neon")]
fn f16x16(v: &[half::f16; ROWS]) -> Lanes {
    // SAFETY: `v` is 32 readable bytes (two loads of eight u16).
    let (lo, hi) = unsafe {
        let p = v.as_ptr().cast::<u16>();
        (vld1q_u16(p), vld1q_u16(p.add(8)))
    };
    [
        f16x4(vget_low_u16(lo)),
        f16x4(vget_high_u16(lo)),
        f16x4(vget_low_u16(hi)),
        f16x4(vget_high_u16(hi)),
    ]
}

/// Sixteen bytes.
#[inline]
#[target_feature(enable = "neon")]
fn load16(bytes: &[u8]) -> uint8x16_t {
    let bytes = &bytes[..16];
    // SAFETY: 16 readable bytes.
    unsafe { vld1q_u8(bytes.as_ptr()) }
}

/// A Q4_K or Q5_K block's 6-bit scales and minimums for sixteen rows
/// (packed `[byte][row]`), unpacked to one register per sub-block each, as
/// `q4k_scale_min` reads them: `j < 4` keeps the low 6 bits of bytes `j`
/// (scale) and `j + 4` (minimum); `j ≥ 4` takes the nibbles of byte
/// `j + 4` and the top 2 bits of bytes `j − 4` (scale) and `j` (minimum).
#[inline]
#[target_feature(enable = "neon")]
fn unpack_k(p: &[u8; PACKED]) -> ([uint8x16_t; 8], [uint8x16_t; 8]) {
    let q: [uint8x16_t; 12] = std::array::from_fn(|i| load16(&p[16 * i..]));
    let low6 = vdupq_n_u8(63);
    let top = |v| vshlq_n_u8::<4>(vshrq_n_u8::<6>(v));
    let scales = std::array::from_fn(|j| {
        if j < 4 {
            vandq_u8(q[j], low6)
        } else {
            vorrq_u8(vandq_u8(q[j + 4], vdupq_n_u8(0x0F)), top(q[j - 4]))
        }
    });
    let mins = std::array::from_fn(|j| {
        if j < 4 {
            vandq_u8(q[j + 4], low6)
        } else {
            vorrq_u8(vshrq_n_u8::<4>(q[j + 4]), top(q[j]))
        }
    });
    (scales, mins)
}

/// Sixteen rows' bytes (one sub-block of a k-quant block's scales or
/// minimums) widened to i32: unsigned, or signed for Q6_K's scales.
#[inline]
#[target_feature(enable = "neon")]
fn widen<const SIGNED: bool>(v: uint8x16_t) -> Sums {
    if SIGNED {
        let v = vreinterpretq_s8_u8(v);
        let (lo, hi) = (vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v));
        [
            vmovl_s16(vget_low_s16(lo)),
            vmovl_high_s16(lo),
            vmovl_s16(vget_low_s16(hi)),
            vmovl_high_s16(hi),
        ]
    } else {
        let (lo, hi) = (vmovl_u8(vget_low_u8(v)), vmovl_high_u8(v));
        [
            vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(lo))),
            vreinterpretq_s32_u32(vmovl_high_u16(lo)),
            vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(hi))),
            vreinterpretq_s32_u32(vmovl_high_u16(hi)),
        ]
    }
}

/// Zero sums for `T` activation rows.
#[inline]
#[target_feature(enable = "neon")]
fn zero_sums<const T: usize>() -> [Sums; T] {
    [[vdupq_n_s32(0); 4]; T]
}

/// Zero f32 lanes for `T` activation rows.
#[inline]
#[target_feature(enable = "neon")]
fn zero_lanes<const T: usize>() -> [Lanes; T] {
    [[vdupq_n_f32(0.0); 4]; T]
}

/// `acc + Σ · d · d_y` per row (the block's integer sums scaled once).
#[inline]
#[target_feature(enable = "neon")]
fn scale_add(acc: &mut Lanes, sums: &Sums, d: &Lanes, dy: f32) {
    for q in 0..4 {
        acc[q] = vfmaq_f32(acc[q], vcvtq_f32_s32(sums[q]), vmulq_n_f32(d[q], dy));
    }
}

/// Stores `acc + sign · m` (sixteen rows).
#[inline]
#[target_feature(enable = "neon")]
fn store<const SUBTRACT: bool>(out: &mut [f32; ROWS], acc: &Lanes, m: &Lanes) {
    for (q, o) in out.chunks_exact_mut(4).enumerate() {
        let v = if SUBTRACT {
            vsubq_f32(acc[q], m[q])
        } else {
            vaddq_f32(acc[q], m[q])
        };
        // SAFETY: `o` is 4 writable f32.
        unsafe { vst1q_f32(o.as_mut_ptr(), v) };
    }
}

/// Q4_0 / Q4_1 (`MINS`): per chunk the low nibbles are values `4c..` and
/// the high nibbles `16 + 4c..` of the block.
#[target_feature(enable = "neon,dotprod")]
fn q4<const T: usize, const MINS: bool>(
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>; T],
    out: &mut [[f32; ROWS]; T],
) {
    let offset = if w.format == Format::Q4_0 { 8 } else { 0 };
    let sp = Spans::<4, T>::new(w, g, act);
    let mask = vdupq_n_u8(0x0F);
    let mut acc = zero_lanes::<T>();
    let mut acc_m = zero_lanes::<T>();
    for b in 0..w.blocks {
        let mut s = zero_sums::<T>();
        for (t, s) in s.iter_mut().enumerate() {
            *s = [vdupq_n_s32(-offset * act[t].sums[b]); 4];
        }
        for c in 0..4 {
            for q in 0..4 {
                let raw = quad(&sp.quants[b][c], q);
                let lo = vreinterpretq_s8_u8(vandq_u8(raw, mask));
                let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(raw));
                for (t, s) in s.iter_mut().enumerate() {
                    let y = &sp.ys[t][b];
                    s[q] = sdot(s[q], lo, broadcast(y, c));
                    s[q] = sdot(s[q], hi, broadcast(y, c + 4));
                }
            }
        }
        let dw = f16x16(&sp.scales[b]);
        let mw = if MINS {
            f16x16(&sp.mins[b])
        } else {
            [vdupq_n_f32(0.0); 4]
        };
        for t in 0..T {
            scale_add(&mut acc[t], &s[t], &dw, act[t].d[b]);
            if MINS {
                for q in 0..4 {
                    acc_m[t][q] = vfmaq_n_f32(acc_m[t][q], mw[q], act[t].s[b]);
                }
            }
        }
    }
    for t in 0..T {
        store::<false>(&mut out[t], &acc[t], &acc_m[t]);
    }
}

/// Q8_0: signed bytes times signed bytes, nothing to offset.
#[target_feature(enable = "neon,dotprod")]
fn q8<const T: usize>(
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>; T],
    out: &mut [[f32; ROWS]; T],
) {
    let sp = Spans::<8, T>::new(w, g, act);
    let mut acc = zero_lanes::<T>();
    for b in 0..w.blocks {
        let mut s = zero_sums::<T>();
        for c in 0..8 {
            for q in 0..4 {
                let v = vreinterpretq_s8_u8(quad(&sp.quants[b][c], q));
                for (t, s) in s.iter_mut().enumerate() {
                    s[q] = sdot(s[q], v, broadcast(&sp.ys[t][b], c));
                }
            }
        }
        let dw = f16x16(&sp.scales[b]);
        for t in 0..T {
            scale_add(&mut acc[t], &s[t], &dw, act[t].d[b]);
        }
    }
    for t in 0..T {
        store::<false>(&mut out[t], &acc[t], &[vdupq_n_f32(0.0); 4]);
    }
}

/// Q4_K (or Q5_K: `FIFTH`, `C = 40`). Per 64 values a chunk's low nibbles
/// belong to one 32-value sub-block and its high nibbles to the next
/// (Q5_K adds bits `2i`, `2i + 1` of its fifth-bit chunk as bit 4); each
/// sub-block's sums are multiplied by the rows' 8-bit scales, and the
/// minimums' `m_j · Σy` summed apart.
#[target_feature(enable = "neon,dotprod")]
fn q45k<const T: usize, const C: usize, const FIFTH: bool>(
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>; T],
    out: &mut [[f32; ROWS]; T],
) {
    let sp = Spans::<C, T>::new(w, g, act);
    let mask = vdupq_n_u8(0x0F);
    let bit4 = vdupq_n_u8(0x10);
    let mut acc = zero_lanes::<T>();
    let mut acc_m = zero_lanes::<T>();
    for b in 0..w.blocks {
        let (scales, ms) = unpack_k(&sp.packed[b]);
        let mut sumi = zero_sums::<T>();
        for i in 0..4 {
            let mut lo_dot = zero_sums::<T>();
            let mut hi_dot = zero_sums::<T>();
            let (lo_bit, hi_bit) = (vdupq_n_u8(1 << (2 * i)), vdupq_n_u8(2 << (2 * i)));
            for c in 0..8 {
                for q in 0..4 {
                    let raw = quad(&sp.quants[b][8 * i + c], q);
                    let mut lo = vandq_u8(raw, mask);
                    let mut hi = vshrq_n_u8::<4>(raw);
                    if FIFTH {
                        let qh = quad(&sp.quants[b][32 + c], q);
                        lo = vorrq_u8(lo, vandq_u8(vtstq_u8(qh, lo_bit), bit4));
                        hi = vorrq_u8(hi, vandq_u8(vtstq_u8(qh, hi_bit), bit4));
                    }
                    let (lo, hi) = (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi));
                    for t in 0..T {
                        let y_lo = &sp.ys[t][8 * b + 2 * i];
                        let y_hi = &sp.ys[t][8 * b + 2 * i + 1];
                        lo_dot[t][q] = sdot(lo_dot[t][q], lo, broadcast(y_lo, c));
                        hi_dot[t][q] = sdot(hi_dot[t][q], hi, broadcast(y_hi, c));
                    }
                }
            }
            let sc_lo = widen::<false>(scales[2 * i]);
            let sc_hi = widen::<false>(scales[2 * i + 1]);
            for t in 0..T {
                for q in 0..4 {
                    sumi[t][q] = vmlaq_s32(sumi[t][q], lo_dot[t][q], sc_lo[q]);
                    sumi[t][q] = vmlaq_s32(sumi[t][q], hi_dot[t][q], sc_hi[q]);
                }
            }
        }
        // Σ_j m_j · Σy_j, sub-blocks 2p and 2p + 1 at a time.
        let mut mins = zero_sums::<T>();
        for p in 0..4 {
            let (m_even, m_odd) = (widen::<false>(ms[2 * p]), widen::<false>(ms[2 * p + 1]));
            for (t, mins) in mins.iter_mut().enumerate() {
                let bsums = &act[t].sums[16 * b..16 * b + 16];
                let y_even = bsums[4 * p] + bsums[4 * p + 1];
                let y_odd = bsums[4 * p + 2] + bsums[4 * p + 3];
                for q in 0..4 {
                    mins[q] = vmlaq_n_s32(mins[q], m_even[q], y_even);
                    mins[q] = vmlaq_n_s32(mins[q], m_odd[q], y_odd);
                }
            }
        }
        let dw = f16x16(&sp.scales[b]);
        let dmin = f16x16(&sp.mins[b]);
        for t in 0..T {
            scale_add(&mut acc[t], &sumi[t], &dw, act[t].d[b]);
            scale_add(&mut acc_m[t], &mins[t], &dmin, act[t].d[b]);
        }
    }
    for t in 0..T {
        store::<true>(&mut out[t], &acc[t], &acc_m[t]);
    }
}

/// Q6_K: each 6-bit value is rebuilt from the nibble plane and the 2-bit
/// plane (values `v`, `64 + v`, `128 + v`, `192 + v` in one byte, field
/// `quarter`); per 16-value sub-block the sums start at `−32 · Σy` and are
/// multiplied by the rows' signed 8-bit scales.
#[target_feature(enable = "neon,dotprod")]
fn q6k<const T: usize>(
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>; T],
    out: &mut [[f32; ROWS]; T],
) {
    let sp = Spans::<48, T>::new(w, g, act);
    let low = vdupq_n_u8(0x0F);
    let high = vdupq_n_u8(0x30);
    let mut acc = zero_lanes::<T>();
    for b in 0..w.blocks {
        let chunks = &sp.quants[b];
        let mut sumi = zero_sums::<T>();
        for quarter in 0..4 {
            // The field moved to bits 4–5: left by 4 − 2·quarter (a
            // negative count shifts right).
            let field_shift = vdupq_n_s8(4 - 2 * quarter as i8);
            for s4 in 0..4 {
                let j = 4 * quarter + s4;
                let mut dot = zero_sums::<T>();
                for (t, d) in dot.iter_mut().enumerate() {
                    *d = [vdupq_n_s32(-32 * act[t].sums[16 * b + j]); 4];
                }
                for c in 0..4 {
                    let vg = 16 * quarter + 4 * s4 + c;
                    for q in 0..4 {
                        let nib = quad(&chunks[vg % 32], q);
                        let nib = if quarter < 2 {
                            vandq_u8(nib, low)
                        } else {
                            vshrq_n_u8::<4>(nib)
                        };
                        let field = vshlq_u8(quad(&chunks[32 + vg % 16], q), field_shift);
                        let v = vreinterpretq_s8_u8(vorrq_u8(nib, vandq_u8(field, high)));
                        for (t, d) in dot.iter_mut().enumerate() {
                            let y = &sp.ys[t][8 * b + vg / 8];
                            d[q] = sdot(d[q], v, broadcast(y, vg % 8));
                        }
                    }
                }
                let sc = widen::<true>(load16(&sp.subs[b][j * ROWS..]));
                for t in 0..T {
                    for q in 0..4 {
                        sumi[t][q] = vmlaq_s32(sumi[t][q], dot[t][q], sc[q]);
                    }
                }
            }
        }
        let dw = f16x16(&sp.scales[b]);
        for t in 0..T {
            scale_add(&mut acc[t], &sumi[t], &dw, act[t].d[b]);
        }
    }
    for t in 0..T {
        store::<false>(&mut out[t], &acc[t], &[vdupq_n_f32(0.0); 4]);
    }
}
