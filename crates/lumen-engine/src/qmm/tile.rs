//! What the SIMD kernels share: a group's blocks as slices of fixed-size
//! arrays, and the activation tile they compute against.

#![allow(unsafe_code)]

use super::{ActRow, Chunk, Format, Interleaved, K_SCALE_BYTES, QK, ROWS, scalar};

/// A SIMD module's kernels, for a fixed number of activation rows.
pub(super) trait Tiles {
    /// Rows `16g..16g + 16` against exactly `T` activation rows; `false`
    /// when these kernels do not run here (the scalar kernel then does).
    fn tile<const T: usize>(
        &self,
        w: &Interleaved,
        g: usize,
        act: &[ActRow<'_>; T],
        out: &mut [[f32; ROWS]; T],
    ) -> bool;
}

/// Rows `16g..16g + 16` against 1–4 activation rows with `kernels`; `out`
/// is `(act.len(), 16)`. The scalar kernel takes anything else.
pub(super) fn group(
    kernels: &impl Tiles,
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>],
    out: &mut [f32],
) {
    let done = match act.len() {
        1 => run::<1>(kernels, w, g, act, out),
        2 => run::<2>(kernels, w, g, act, out),
        3 => run::<3>(kernels, w, g, act, out),
        4 => run::<4>(kernels, w, g, act, out),
        _ => false,
    };
    if !done {
        scalar::group(w, g, act, out);
    }
}

fn run<const T: usize>(
    kernels: &impl Tiles,
    w: &Interleaved,
    g: usize,
    act: &[ActRow<'_>],
    out: &mut [f32],
) -> bool {
    as_tile::<T>(act, out).is_some_and(|(act, out)| kernels.tile::<T>(w, g, act, out))
}

/// `act` and `out` as exactly `T` rows, or `None`.
pub(super) fn as_tile<'o, 'a, const T: usize>(
    act: &'o [ActRow<'a>],
    out: &'o mut [f32],
) -> Option<(&'o [ActRow<'a>; T], &'o mut [[f32; ROWS]; T])> {
    let act = <&[ActRow<'a>; T]>::try_from(act).ok()?;
    let (rows, _) = out.as_chunks_mut::<ROWS>();
    let out = <&mut [[f32; ROWS]; T]>::try_from(rows.get_mut(..T)?).ok()?;
    Some((act, out))
}

/// Activation bytes `4c..4c + 4` of a block as one word, read straight
/// from memory so that a broadcast of it folds into the multiply-add.
#[inline(always)]
pub(super) fn word(y: &[i8; QK], c: usize) -> i32 {
    assert!(c < QK / 4);
    // SAFETY: bytes `4c..4c + 4` lie within the 32-byte block; the read
    // is unaligned.
    unsafe { y.as_ptr().cast::<i32>().add(c).read_unaligned() }
}

/// The group's blocks: per block its chunks, 16 scales and 16 minimums
/// (empty unless Q4_1, Q4_K or Q5_K), the k-quants' sub-block scales, and
/// each activation row's blocks of quants.
pub(super) struct Spans<'a, const C: usize, const T: usize> {
    /// The weight and the group (for prefetching past the group's end;
    /// the aarch64 kernels leave it to the hardware).
    #[cfg(target_arch = "x86_64")]
    pub(super) w: &'a Interleaved,
    #[cfg(target_arch = "x86_64")]
    pub(super) g: usize,
    pub(super) quants: &'a [[Chunk; C]],
    pub(super) scales: &'a [[half::f16; ROWS]],
    pub(super) mins: &'a [[half::f16; ROWS]],
    /// Q6_K: each block's sub-block scales, `[sub][row]` (else empty).
    pub(super) subs: &'a [[u8; SUB]],
    /// Q4_K, Q5_K: each block's packed 6-bit scales and minimums,
    /// `[byte][row]` (else empty).
    pub(super) packed: &'a [[u8; PACKED]],
    /// Each row's activations in 32-value pieces.
    pub(super) ys: [&'a [[i8; QK]]; T],
}

/// Bytes of a k-quant block's sub-block scales for 16 rows, as Q6_K
/// stores them and as the kernels unpack Q4_K's and Q5_K's.
pub(super) const SUB: usize = 16 * ROWS;
/// Bytes of Q4_K's and Q5_K's packed scales and minimums for 16 rows.
pub(super) const PACKED: usize = K_SCALE_BYTES * ROWS;

impl<'a, const C: usize, const T: usize> Spans<'a, C, T> {
    pub(super) fn new(w: &'a Interleaved, g: usize, act: &[ActRow<'a>; T]) -> Self {
        let blocks = g * w.blocks..(g + 1) * w.blocks;
        let per_row = |v: &'a [half::f16]| {
            v.get(blocks.start * ROWS..blocks.end * ROWS)
                .map_or(&[][..], |s| s.as_chunks::<ROWS>().0)
        };
        Self {
            #[cfg(target_arch = "x86_64")]
            w,
            #[cfg(target_arch = "x86_64")]
            g,
            quants: w.quants[blocks.start * C..blocks.end * C]
                .as_chunks::<C>()
                .0,
            scales: per_row(&w.scales),
            mins: per_row(&w.mins),
            subs: per_block(w, w.format == Format::Q6K, &blocks),
            packed: per_block(w, matches!(w.format, Format::Q4K | Format::Q5K), &blocks),
            ys: act.map(|a| a.qs.as_chunks::<QK>().0),
        }
    }
}

/// The sub-block scales of `blocks` as `N`-byte arrays where `N` is what
/// `w`'s format keeps (`holds`), else empty.
fn per_block<'a, const N: usize>(
    w: &'a Interleaved,
    holds: bool,
    blocks: &std::ops::Range<usize>,
) -> &'a [[u8; N]] {
    if !holds {
        return &[];
    }
    w.sub
        .get(blocks.start * N..blocks.end * N)
        .map_or(&[][..], |s| s.as_chunks::<N>().0)
}
