//! The portable kernel: plain loops over the interleaved layout. It is the
//! reference the SIMD kernels are tested against, so it favours clarity;
//! only its f32 arithmetic (per row: block by block, integer dot product
//! first, fused multiply-adds) is shared with them on purpose, so all
//! kernels give the same numbers.

use super::{ActRow, Format, Interleaved, QK, QK_K, ROWS};

/// Rows `16g..16g + 16` against each activation row; `out` is
/// `(act.len(), 16)`.
pub(super) fn group(w: &Interleaved, g: usize, act: &[ActRow<'_>], out: &mut [f32]) {
    if w.format.is_k() {
        return group_k(w, g, act, out);
    }
    for (a, out) in act.iter().zip(out.chunks_exact_mut(ROWS)) {
        for (r, o) in out.iter_mut().enumerate() {
            // As llama.cpp: the minimums' terms summed apart, added last.
            let (mut acc, mut acc_m) = (0f32, 0f32);
            for b in 0..w.blocks {
                let at = (g * w.blocks + b) * ROWS + r;
                let y = &a.qs[b * QK..(b + 1) * QK];
                let dot: i32 = (0..QK)
                    .map(|v| centered(w.format, w.quant(g * w.blocks + b, r, v)) * i32::from(y[v]))
                    .sum();
                let d = w.scales[at].to_f32() * a.d[b];
                acc = (dot as f32).mul_add(d, acc);
                if w.format == Format::Q4_1 {
                    acc_m = w.mins[at].to_f32().mul_add(a.s[b], acc_m);
                }
            }
            *o = acc + acc_m;
        }
    }
}

/// The k-quants, as llama.cpp's `ggml_vec_dot_q4_K_q8_K` /
/// `ggml_vec_dot_q6_K_q8_K`: per super-block an exact integer sum of
/// `sc_j · Σ q·y` over sub-blocks, scaled by `d · d_y`; Q4_K's minimums
/// `dmin · d_y · Σ m_j · Σy` summed apart and subtracted last.
fn group_k(w: &Interleaved, g: usize, act: &[ActRow<'_>], out: &mut [f32]) {
    let sub_len = w.format.sub_bytes() * ROWS;
    for (a, out) in act.iter().zip(out.chunks_exact_mut(ROWS)) {
        for (r, o) in out.iter_mut().enumerate() {
            let (mut acc, mut acc_m) = (0f32, 0f32);
            for b in 0..w.blocks {
                let gb = g * w.blocks + b;
                let at = gb * ROWS + r;
                let sub = &w.sub[gb * sub_len..(gb + 1) * sub_len];
                let y = &a.qs[b * QK_K..(b + 1) * QK_K];
                let bsums = &a.sums[b * 16..(b + 1) * 16];
                let dot = |from: usize, len: usize| -> i32 {
                    (from..from + len)
                        .map(|v| centered(w.format, w.quant(gb, r, v)) * i32::from(y[v]))
                        .sum()
                };
                let dy = a.d[b];
                match w.format {
                    Format::Q4K | Format::Q5K => {
                        let mut sumi = 0i32;
                        let mut mins = 0i32;
                        for j in 0..8 {
                            let (sc, m) = w.k_scale_min(gb, r, j);
                            sumi += i32::from(sc) * dot(32 * j, 32);
                            mins += i32::from(m) * (bsums[2 * j] + bsums[2 * j + 1]);
                        }
                        acc = (sumi as f32).mul_add(w.scales[at].to_f32() * dy, acc);
                        acc_m = (mins as f32).mul_add(w.mins[at].to_f32() * dy, acc_m);
                    }
                    _ => {
                        let mut sumi = 0i32;
                        for j in 0..16 {
                            let sc = i32::from(sub[j * ROWS + r] as i8);
                            sumi += sc * dot(16 * j, 16);
                        }
                        acc = (sumi as f32).mul_add(w.scales[at].to_f32() * dy, acc);
                    }
                }
            }
            *o = acc - acc_m;
        }
    }
}

/// A stored quant as the signed integer its format means (Q4_1's and Q4_K's
/// minimums and all scales apart).
fn centered(format: Format, q: u8) -> i32 {
    match format {
        Format::Q4_0 => i32::from(q) - 8,
        Format::Q4_1 | Format::Q4K | Format::Q5K => i32::from(q),
        Format::Q8_0 => i32::from(q as i8),
        Format::Q6K => i32::from(q) - 32,
    }
}
