//! The portable kernel: plain loops over the interleaved layout. It is the
//! reference the SIMD kernels are tested against, so it favours clarity;
//! only its f32 accumulation order (per row: block by block, integer dot
//! product first) is shared with them on purpose.

use super::{ActRow, Format, Interleaved, QK, ROWS};

/// Rows `16g..16g + 16` against each activation row; `out` is
/// `(act.len(), 16)`.
pub(super) fn group(w: &Interleaved, g: usize, act: &[ActRow<'_>], out: &mut [f32]) {
    let chunks = w.format.chunks();
    for (a, out) in act.iter().zip(out.chunks_exact_mut(ROWS)) {
        for (r, o) in out.iter_mut().enumerate() {
            // As llama.cpp: the minimums' terms summed apart, added last.
            let (mut acc, mut acc_m) = (0f32, 0f32);
            for b in 0..w.blocks {
                let at = (g * w.blocks + b) * ROWS + r;
                let base = (g * w.blocks + b) * chunks;
                let byte = |i: usize| w.quants[base + i / 4].0[r * 4 + i % 4];
                let y = &a.qs[b * QK..(b + 1) * QK];
                let dot: i32 = match w.format {
                    Format::Q4_0 | Format::Q4_1 => {
                        let offset = if w.format == Format::Q4_0 { 8 } else { 0 };
                        (0..QK / 2)
                            .map(|i| {
                                let (lo, hi) = (byte(i) & 0x0F, byte(i) >> 4);
                                (i32::from(lo) - offset) * i32::from(y[i])
                                    + (i32::from(hi) - offset) * i32::from(y[i + QK / 2])
                            })
                            .sum()
                    }
                    Format::Q8_0 => (0..QK)
                        .map(|i| i32::from(byte(i) as i8) * i32::from(y[i]))
                        .sum(),
                };
                let d = w.scales[at].to_f32() * a.d[b];
                acc += dot as f32 * d;
                if w.format == Format::Q4_1 {
                    acc_m += w.mins[at].to_f32() * a.s[b];
                }
            }
            *o = acc + acc_m;
        }
    }
}
