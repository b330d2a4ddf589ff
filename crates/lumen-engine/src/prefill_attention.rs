//! Attention over a whole sequence on the CPU — causal for a prompt's
//! tokens, or every position with every other but padding with padding
//! for mllama's vision encoder ([`Mask`]) — fused in the manner of
//! FlashAttention: for each KV head and block of query positions, the
//! keys and values are read a block at a time (f16 rows widened as they
//! come), and each query row keeps a running maximum, sum and weighted sum
//! of values (the "online" softmax), so that no score matrix is ever
//! stored and nothing above a causal diagonal is computed.
//!
//! The unfused path (scores by a batched matmul, a softmax pass, a second
//! matmul) wrote and reread `heads × seq × context` scores per layer, ran
//! its matmuls at AVX2 width (the `gemm` crate's kernels), and needed the
//! f16 cache widened to an f32 copy first: half of a 4096-token prefill of
//! Llama 3.2 1B was spent there.
//!
//! Only where a kernel exists (AVX-512 F or AVX2 + FMA; head sizes 64 and
//! 128, every Llama 3.x text model, and 80, the Llama 3.2 Vision encoder's);
//! [`PrefillAttention::supports`] says when, and the caller keeps the
//! unfused path otherwise.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod bf16;

use crate::error::Result;
use crate::f16::{AsF32, Heads, KvViews};
use crate::simd::Kernel;

/// `softmax(scale · q · Kᵀ + mask) · V` for `q` `(1, heads, seq, hd)`
/// (contiguous rows) over `k`, `v` `(1, kv_heads, len, hd)` (views of the
/// KV cache, both f32 or both f16), with the [`Mask`] saying which keys
/// each query sees. Returns `(1, kv_heads, seq, heads / kv_heads, hd)`:
/// each KV head's query heads side by side per position.
#[derive(Debug, Clone)]
pub(crate) struct PrefillAttention {
    /// Applied to the scores before the softmax.
    pub scale: f32,
    /// Which keys each query sees.
    pub mask: Mask,
    /// Round the products' operands to bf16 where the CPU has AVX-512
    /// BF16 and a kernel exists (the vision encoder's shape: see
    /// `prefill_attention/bf16.rs`); f32 otherwise.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub bf16: bool,
}

/// The keys a query of [`PrefillAttention`] sees.
#[derive(Debug, Clone)]
pub(crate) enum Mask {
    /// The queries are the last `seq` of the `len` key positions (a prompt
    /// after what the cache held): query `i` sees the keys up to position
    /// `len - seq + i`.
    Causal,
    /// Queries and keys are the same `seq` positions, and each sees every
    /// other, except that positions flagged as padding do not see each
    /// other (mllama's vision encoder: a tile's pad tokens, and padding
    /// tiles). One flag per position.
    Padding(Arc<[bool]>),
}

/// Query positions per work item: a block of keys, once widened, serves
/// `QUERY_BLOCK × heads / kv_heads` rows.
const QUERY_BLOCK: usize = 16;

/// [`QUERY_BLOCK`] under [`Mask::Padding`], where each KV head serves one
/// query head: every block of keys is widened and transposed once per
/// work item, and with 16 rows that took a third of the vision encoder's
/// attention time.
const PADDING_QUERY_BLOCK: usize = 256;

/// Key block size in f32 values (`keys × hd`): 16 KiB each for the keys
/// and the values, which stay in the L1 cache while a block is used.
// This and `Item` serve the x86-64 kernels only; elsewhere
// `PrefillAttention::supports` is false and the general path runs.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const BLOCK_VALUES: usize = 4096;

impl PrefillAttention {
    /// Whether the fused kernel runs on this CPU for head size `hd`.
    pub(crate) fn supports(hd: usize) -> bool {
        Self::kernel(hd).is_some()
    }

    /// The best kernel this CPU has for head size `hd`.
    fn kernel(hd: usize) -> Option<Kernel> {
        Self::has_kernels_for(hd).then(Kernel::best).flatten()
    }

    /// Whether there are kernels for head size `hd` (see [`Item::run`]).
    fn has_kernels_for(hd: usize) -> bool {
        matches!(hd, 64 | 80 | 128)
    }

    /// Attention of `q`, `k`, `v` (`(1, heads, seq, hd)` and `(1,
    /// kv_heads, len, hd)`) under `mask`, scaled by `1/√hd`, as `(1, seq,
    /// heads · hd)`. The caller checked [`PrefillAttention::supports`].
    pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Mask) -> Result<Tensor> {
        Self::attend_rounded(q, k, v, mask, false)
    }

    /// [`PrefillAttention::attend`], with bf16 products where `bf16` and
    /// the CPU and shapes allow (see [`PrefillAttention::bf16`]).
    pub(crate) fn attend_rounded(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Mask,
        bf16: bool,
    ) -> Result<Tensor> {
        let (b, nh, seq, hd) = q.dims4()?;
        let op = Self {
            scale: (hd as f32).powf(-0.5),
            mask,
            bf16,
        };
        // (1, kv_heads, seq, heads / kv_heads, hd)
        let out = q.contiguous()?.apply_op3_no_bwd(k, v, &op)?;
        Ok(out.transpose(1, 2)?.reshape((b, seq, nh * hd))?)
    }
}

impl CustomOp3 for PrefillAttention {
    fn name(&self) -> &'static str {
        "lumen-prefill-attention"
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
        let Some(kernel) = Self::kernel(q.dims.2) else {
            candle_core::bail!("{name}: no kernel for head size {} here", q.dims.2)
        };
        let out = match KvViews::of(name, k_s, k_l, v_s, v_l)? {
            KvViews::F32(k, v) => self.run(kernel, &q, &k, &v)?,
            KvViews::F16(k, v) => self.run(kernel, &q, &k, &v)?,
        };
        let (nh, seq, hd) = q.dims;
        let nkv = k_l.dims()[1];
        Ok((
            CpuStorage::F32(out),
            Shape::from(vec![1, nkv, seq, nh / nkv, hd]),
        ))
    }
}

impl PrefillAttention {
    /// Checks the shapes and runs every (KV head, query block) in parallel.
    fn run<T: AsF32>(
        &self,
        kernel: Kernel,
        q: &Heads<'_, f32>,
        k: &Heads<'_, T>,
        v: &Heads<'_, T>,
    ) -> candle_core::Result<Vec<f32>> {
        let (nh, seq, hd) = q.dims;
        let (nkv, len, k_hd) = k.dims;
        if k_hd != hd
            || v.dims != (nkv, len, hd)
            || nkv == 0
            || nh % nkv != 0
            || len < seq
            || seq == 0
            || (seq > 1 && q.stride != seq * hd)
            || matches!(&self.mask, Mask::Padding(pad) if pad.len() != seq || len != seq)
        {
            candle_core::bail!(
                "{}: q {:?}, k {:?}, v {:?} do not fit",
                self.name(),
                q.dims,
                k.dims,
                v.dims
            )
        }
        if !Self::has_kernels_for(hd) || !kernel.runs_here() {
            candle_core::bail!(
                "{}: no {kernel:?} kernel for head size {hd} here",
                self.name()
            )
        }
        let rep = nh / nkv;
        let start = len - seq;
        let (pad, key_bias, query_block) = match &self.mask {
            Mask::Causal => (None, None, QUERY_BLOCK),
            Mask::Padding(pad) => {
                // Padding rows add this to their scores: −∞ at padding
                // keys, and past the last key (kernels read whole vectors
                // of a block).
                let bias: Vec<f32> = pad
                    .iter()
                    .map(|&p| if p { f32::NEG_INFINITY } else { 0.0 })
                    .chain(std::iter::repeat_n(f32::NEG_INFINITY, 64))
                    .collect();
                (Some(&pad[..]), Some(bias), PADDING_QUERY_BLOCK)
            }
        };
        #[cfg(target_arch = "x86_64")]
        let bf16 = self.bf16 && pad.is_some() && rep == 1 && hd == bf16::HD && bf16::runs_here();
        let mut out = vec![0f32; nh * seq * hd];
        out.par_chunks_mut(seq * rep * hd)
            .enumerate()
            .for_each(|(h, head_out)| {
                let queries = &q.data[h * rep * q.stride..][..rep * seq * hd];
                let (keys, values) = (k.head(h), v.head(h));
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `bf16::runs_here` confirmed the CPU.
                #[allow(unsafe_code)]
                let packed = bf16.then(|| unsafe { bf16::Packed::new(keys, values) });
                head_out
                    .par_chunks_mut(query_block * rep * hd)
                    .enumerate()
                    .for_each(|(b, out)| {
                        let item = Item {
                            queries,
                            seq,
                            rep,
                            hd,
                            first: b * query_block,
                            start,
                            len,
                            scale: self.scale,
                            pad,
                            key_bias: key_bias.as_deref(),
                        };
                        #[cfg(target_arch = "x86_64")]
                        if let Some(packed) = &packed {
                            // SAFETY: `bf16::runs_here` confirmed the CPU.
                            #[allow(unsafe_code)]
                            unsafe {
                                bf16::item(&item, packed, out)
                            };
                            return;
                        }
                        item.run(kernel, keys, values, out);
                    });
            });
        Ok(out)
    }
}

/// One KV head's block of query positions.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Item<'a> {
    /// The KV head's `rep` query heads, `seq × hd` each.
    queries: &'a [f32],
    seq: usize,
    rep: usize,
    hd: usize,
    /// The block's first query position.
    first: usize,
    /// Cached positions before the prompt's first.
    start: usize,
    /// Keys.
    len: usize,
    scale: f32,
    /// [`Mask::Padding`]'s flags (none: causal).
    pad: Option<&'a [bool]>,
    /// What padding rows add to their scores, per key (and −∞ for 64
    /// more).
    key_bias: Option<&'a [f32]>,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Item<'_> {
    /// Query row `t` of the block (position `first + t / rep`, head
    /// `t % rep`).
    fn query(&self, t: usize) -> &[f32] {
        let (i, r) = (self.first + t / self.rep, t % self.rep);
        &self.queries[(r * self.seq + i) * self.hd..][..self.hd]
    }

    /// Keys query row `t` may see: a prefix of them (every key but a
    /// padding row's padding keys, which [`Item::key_bias`] hides).
    fn visible(&self, t: usize) -> usize {
        match self.pad {
            None => self.start + self.first + t / self.rep + 1,
            Some(_) => self.len,
        }
    }

    /// Keys each of rows `t..t + G` sees among keys `first..first + n`, and
    /// the most any of them sees (0: the block is past every row).
    fn seen_in_block<const G: usize>(
        &self,
        t: usize,
        first: usize,
        n: usize,
    ) -> ([usize; G], usize) {
        let vis: [usize; G] =
            std::array::from_fn(|u| self.visible(t + u).saturating_sub(first).min(n));
        (vis, vis.iter().copied().max().unwrap_or(0))
    }

    /// For a padding row `t`, what its scores get added, key by key from
    /// `first` (−∞ at padding keys); `None` for rows that see every key
    /// [`Item::visible`] counts.
    fn key_bias(&self, t: usize, first: usize) -> Option<&[f32]> {
        let pad = self.pad?;
        if pad[self.first + t / self.rep] {
            self.key_bias.map(|b| &b[first..])
        } else {
            None
        }
    }

    /// The loop every kernel shares, over blocks of `bk` keys up to the
    /// last row's position: each block's keys widened and transposed
    /// (`kt[d * bk + j]`) and its values widened (`vb`) when `kv` gives
    /// them (`None`: the kernel reads keys and values of its own, and gets
    /// empty slices), then `group(t, first, n, kt, vb, (max, sum), out)`
    /// for rows `t..` in groups of `per_group` (single rows for the
    /// remainder) against keys `first..first + n`, keeping each row's
    /// running maximum and sum; finally every row divided by its sum.
    #[allow(clippy::type_complexity)]
    #[inline(always)]
    fn in_blocks<T: AsF32>(
        &self,
        kv: Option<(&[T], &[T])>,
        out: &mut [f32],
        bk: usize,
        per_group: usize,
        mut group: impl FnMut(usize, usize, usize, &[f32], &[f32], (&mut [f32], &mut [f32]), &mut [f32]),
    ) {
        let hd = self.hd;
        let rows = out.len() / hd;
        let mut max = vec![f32::NEG_INFINITY; rows];
        let mut sum = vec![0f32; rows];
        let buffer = if kv.is_some() { bk * hd } else { 0 };
        let mut kt = vec![0f32; buffer];
        let mut kb = vec![0f32; buffer];
        let mut vbuf = vec![0f32; buffer];
        let needed = self.visible(rows - 1);
        for first in (0..needed).step_by(bk) {
            let n = bk.min(needed - first);
            let vb: &[f32] = match kv {
                Some((keys, values)) => {
                    let wide = T::as_f32(&keys[first * hd..][..n * hd], &mut kb[..n * hd]);
                    for (j, key) in wide.chunks_exact(hd).enumerate() {
                        for (d, x) in key.iter().enumerate() {
                            kt[d * bk + j] = *x;
                        }
                    }
                    T::as_f32(&values[first * hd..][..n * hd], &mut vbuf[..n * hd])
                }
                None => &[],
            };
            let mut t = 0;
            while t < rows {
                let r = if rows - t >= per_group { per_group } else { 1 };
                let state = (&mut max[t..t + r], &mut sum[t..t + r]);
                group(t, first, n, &kt, vb, state, &mut out[t * hd..(t + r) * hd]);
                t += r;
            }
        }
        for (o, s) in out.chunks_exact_mut(hd).zip(&sum) {
            let inv = 1.0 / s;
            for x in o {
                *x *= inv;
            }
        }
    }

    /// Attends every row of the block into `out` (rows × hd, position-
    /// major) with `kernel`, which [`PrefillAttention::run`] checked runs
    /// here for this head size.
    fn run<T: AsF32>(&self, kernel: Kernel, keys: &[T], values: &[T], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            #[allow(unsafe_code)]
            // SAFETY (all): the CPU has the kernel's instructions.
            match (kernel, self.hd) {
                (Kernel::Avx512, 64) => unsafe {
                    avx512::item::<T, 4, 4, 4>(self, keys, values, out)
                },
                (Kernel::Avx512, 80) => unsafe {
                    avx512::item::<T, 5, 3, 4>(self, keys, values, out)
                },
                (Kernel::Avx512, 128) => unsafe {
                    avx512::item::<T, 8, 2, 2>(self, keys, values, out)
                },
                (Kernel::Avx2, 64) => unsafe { avx2::item::<T, 8>(self, keys, values, out) },
                (Kernel::Avx2, 80) => unsafe { avx2::item::<T, 10>(self, keys, values, out) },
                (Kernel::Avx2, 128) => unsafe { avx2::item::<T, 16>(self, keys, values, out) },
                _ => {}
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (kernel, keys, values, out);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    //! `C` vectors of sixteen per row (`hd = 16 C`), key blocks of `16 S`
    //! keys (`16 S · hd ≤ BLOCK_VALUES`), `R` query rows at a time (their
    //! scores and value sums in registers: `R · S` and `R · C` vectors).

    use std::arch::x86_64::*;

    use super::{AsF32, BLOCK_VALUES, Item};
    use crate::simd::avx512::{load, store};
    use crate::softmax::exp_nonpositive;

    #[target_feature(enable = "avx512f")]
    pub(super) fn item<T: AsF32, const C: usize, const S: usize, const R: usize>(
        it: &Item<'_>,
        keys: &[T],
        values: &[T],
        out: &mut [f32],
    ) {
        debug_assert!(16 * S * 16 * C <= BLOCK_VALUES);
        it.in_blocks(
            Some((keys, values)),
            out,
            16 * S,
            R,
            |t, first, n, kt, vb, state, out| {
                if state.0.len() == R {
                    group::<C, S, R>(it, t, first, n, kt, vb, state, out);
                } else {
                    group::<C, S, 1>(it, t, first, n, kt, vb, state, out);
                }
            },
        );
    }

    /// One row's step of the online softmax over a block of `16 S` keys:
    /// its scores `x` (unscaled; lanes past `vis` are hidden, and `bias`
    /// adds a padding row's −∞), the probabilities against the new running
    /// maximum into `p`, and the factor that rescales what the earlier
    /// blocks summed. `None` while the row has seen no key (a padding row
    /// before the first real one): nothing to add, nothing to rescale.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn online_softmax<const S: usize>(
        mut x: [__m512; S],
        vis: usize,
        bias: Option<&[f32]>,
        scale: __m512,
        (max, sum): (&mut f32, &mut f32),
        p: &mut [f32],
    ) -> Option<f32> {
        let hidden = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut top = hidden;
        for (s, x) in x.iter_mut().enumerate() {
            // Lanes of keys this row may see.
            let lanes = vis.saturating_sub(16 * s).min(16);
            let seen = ((1u32 << lanes) - 1) as __mmask16;
            *x = _mm512_mask_blend_ps(seen, hidden, _mm512_mul_ps(*x, scale));
            if let Some(bias) = bias {
                *x = _mm512_add_ps(*x, load(&bias[16 * s..]));
            }
            top = _mm512_max_ps(top, *x);
        }
        let block_max = _mm512_reduce_max_ps(top);
        let new_max = if block_max > *max { block_max } else { *max };
        if new_max == f32::NEG_INFINITY {
            return None;
        }
        let alpha = exp_nonpositive(*max - new_max);
        let shift = _mm512_set1_ps(new_max);
        for (s, x) in x.iter().enumerate() {
            store(&mut p[16 * s..], _mm512_sub_ps(*x, shift));
        }
        // A plain map over the array: compiled to vector code here.
        for x in p.iter_mut() {
            *x = exp_nonpositive(*x);
        }
        let mut total = _mm512_setzero_ps();
        for s in 0..S {
            total = _mm512_add_ps(total, load(&p[16 * s..]));
        }
        *sum = *sum * alpha + _mm512_reduce_add_ps(total);
        *max = new_max;
        Some(alpha)
    }

    /// Rows `t..t + R` against keys `first..first + n` (`kt`, `vb`).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn group<const C: usize, const S: usize, const R: usize>(
        it: &Item<'_>,
        t: usize,
        first: usize,
        n: usize,
        kt: &[f32],
        vb: &[f32],
        (max, sum): (&mut [f32], &mut [f32]),
        out: &mut [f32],
    ) {
        let (hd, bk) = (16 * C, 16 * S);
        // Keys each row sees in this block (≥ 1 in the first block).
        let (vis, seen) = it.seen_in_block::<R>(t, first, n);
        if seen == 0 {
            return;
        }
        // Scores: R × bk, vertical multiply-adds over the transposed keys.
        let mut acc = [[_mm512_setzero_ps(); S]; R];
        let qs: [&[f32]; R] = std::array::from_fn(|u| it.query(t + u));
        for d in 0..hd {
            let mut k = [_mm512_setzero_ps(); S];
            for (s, k) in k.iter_mut().enumerate() {
                *k = load(&kt[d * bk + 16 * s..]);
            }
            for (acc, q) in acc.iter_mut().zip(&qs) {
                let q = _mm512_set1_ps(q[d]);
                for (a, k) in acc.iter_mut().zip(&k) {
                    *a = _mm512_fmadd_ps(q, *k, *a);
                }
            }
        }
        // The online softmax, per row: probabilities of this block's keys
        // against the new running maximum, and the factor that rescales
        // what the earlier blocks summed.
        let mut p = [[0f32; 64]; R];
        let mut alpha = [1f32; R];
        let bias: [Option<&[f32]>; R] = std::array::from_fn(|u| it.key_bias(t + u, first));
        let scale = _mm512_set1_ps(it.scale);
        for u in 0..R {
            if let Some(a) = online_softmax(
                acc[u],
                vis[u],
                bias[u],
                scale,
                (&mut max[u], &mut sum[u]),
                &mut p[u][..bk],
            ) {
                alpha[u] = a;
            }
        }
        // Value sums: rescaled, plus this block's weighted values.
        let mut o = [[_mm512_setzero_ps(); C]; R];
        for (u, o) in o.iter_mut().enumerate() {
            let a = _mm512_set1_ps(alpha[u]);
            for (c, o) in o.iter_mut().enumerate() {
                *o = _mm512_mul_ps(load(&out[u * hd + 16 * c..]), a);
            }
        }
        for j in 0..seen {
            let mut v = [_mm512_setzero_ps(); C];
            for (c, v) in v.iter_mut().enumerate() {
                *v = load(&vb[j * hd + 16 * c..]);
            }
            for (o, p) in o.iter_mut().zip(&p) {
                let p = _mm512_set1_ps(p[j]);
                for (o, v) in o.iter_mut().zip(&v) {
                    *o = _mm512_fmadd_ps(p, *v, *o);
                }
            }
        }
        for (u, o) in o.iter().enumerate() {
            for (c, o) in o.iter().enumerate() {
                store(&mut out[u * hd + 16 * c..], *o);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    //! [`super::avx512`]'s kernel with eight-lane vectors and sixteen
    //! registers: `C` vectors per row (`hd = 8 C`), key blocks of 32, two
    //! query rows' scores in registers at a time (8 vectors), and each
    //! row's value sums eight vectors at a time.

    use std::arch::x86_64::*;

    use super::{AsF32, Item};
    use crate::simd::avx2::{load, max_lane, store, sum_lanes};
    use crate::softmax::exp_nonpositive;

    /// Keys per block.
    const BK: usize = 32;
    /// Vectors of scores per row and block.
    const S: usize = BK / 8;
    /// Query rows whose scores are computed together.
    const R: usize = 2;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn item<T: AsF32, const C: usize>(
        it: &Item<'_>,
        keys: &[T],
        values: &[T],
        out: &mut [f32],
    ) {
        it.in_blocks(
            Some((keys, values)),
            out,
            BK,
            R,
            |t, first, n, kt, vb, state, out| {
                if state.0.len() == R {
                    group::<C, R>(it, t, first, n, kt, vb, state, out);
                } else {
                    group::<C, 1>(it, t, first, n, kt, vb, state, out);
                }
            },
        );
    }

    /// Rows `t..t + G` against keys `first..first + n` (`kt`, `vb`).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn group<const C: usize, const G: usize>(
        it: &Item<'_>,
        t: usize,
        first: usize,
        n: usize,
        kt: &[f32],
        vb: &[f32],
        (max, sum): (&mut [f32], &mut [f32]),
        out: &mut [f32],
    ) {
        let hd = 8 * C;
        let (vis, seen) = it.seen_in_block::<G>(t, first, n);
        if seen == 0 {
            return;
        }
        let mut acc = [[_mm256_setzero_ps(); S]; G];
        let qs: [&[f32]; G] = std::array::from_fn(|u| it.query(t + u));
        for d in 0..hd {
            let mut k = [_mm256_setzero_ps(); S];
            for (s, k) in k.iter_mut().enumerate() {
                *k = load(&kt[d * BK + 8 * s..]);
            }
            for (acc, q) in acc.iter_mut().zip(&qs) {
                let q = _mm256_set1_ps(q[d]);
                for (a, k) in acc.iter_mut().zip(&k) {
                    *a = _mm256_fmadd_ps(q, *k, *a);
                }
            }
        }
        let mut p = [[0f32; BK]; G];
        let mut alpha = [1f32; G];
        let bias: [Option<&[f32]>; G] = std::array::from_fn(|u| it.key_bias(t + u, first));
        let scale = _mm256_set1_ps(it.scale);
        let hidden = _mm256_set1_ps(f32::NEG_INFINITY);
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for u in 0..G {
            let mut x = acc[u];
            let mut top = hidden;
            for (s, x) in x.iter_mut().enumerate() {
                // Lanes of keys this row may see.
                let lanes = vis[u].saturating_sub(8 * s).min(8) as i32;
                let seen = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), lane));
                *x = _mm256_blendv_ps(hidden, _mm256_mul_ps(*x, scale), seen);
                if let Some(bias) = bias[u] {
                    *x = _mm256_add_ps(*x, load(&bias[8 * s..]));
                }
                top = _mm256_max_ps(top, *x);
            }
            let block_max = max_lane(top);
            let new_max = if block_max > max[u] {
                block_max
            } else {
                max[u]
            };
            if new_max == f32::NEG_INFINITY {
                // As in the AVX-512 kernel: no key seen yet.
                continue;
            }
            alpha[u] = exp_nonpositive(max[u] - new_max);
            let shift = _mm256_set1_ps(new_max);
            let p = &mut p[u];
            for (s, x) in x.iter().enumerate() {
                store(&mut p[8 * s..], _mm256_sub_ps(*x, shift));
            }
            // A plain map over the array: compiled to vector code here.
            for x in p.iter_mut() {
                *x = exp_nonpositive(*x);
            }
            let mut total = _mm256_setzero_ps();
            for s in 0..S {
                total = _mm256_add_ps(total, load(&p[8 * s..]));
            }
            sum[u] = sum[u] * alpha[u] + sum_lanes(total);
            max[u] = new_max;
        }
        // Value sums, one row and up to eight vectors at a time.
        for (u, p) in p.iter().enumerate() {
            let a = _mm256_set1_ps(alpha[u]);
            for part in (0..C).step_by(8) {
                let width = (C - part).min(8);
                let at = u * hd + 8 * part;
                let mut o = [_mm256_setzero_ps(); 8];
                for (c, o) in o[..width].iter_mut().enumerate() {
                    *o = _mm256_mul_ps(load(&out[at + 8 * c..]), a);
                }
                for (j, p) in p[..seen].iter().enumerate() {
                    let p = _mm256_set1_ps(*p);
                    let row = &vb[j * hd + 8 * part..][..8 * width];
                    for (c, o) in o[..width].iter_mut().enumerate() {
                        *o = _mm256_fmadd_ps(p, load(&row[8 * c..]), *o);
                    }
                }
                for (c, o) in o[..width].iter().enumerate() {
                    store(&mut out[at + 8 * c..], *o);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    fn ramp(n: usize, seed: usize, amp: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1013) as f32 / 506.0 - 1.0) * amp)
            .collect()
    }

    /// Against f64 math: grouped query heads (1, 3 and 4 per KV head),
    /// both head sizes, prompts after a cached prefix and from position 0,
    /// lengths around the query and key blocks, f32 and f16 caches (the
    /// reference uses the f16-rounded values), on cache views narrowed
    /// from larger buffers.
    #[test]
    fn matches_exact_causal_attention() {
        if !PrefillAttention::supports(64) {
            eprintln!("no AVX-512 F: the fused kernel does not run here");
            return;
        }
        let cases = [
            // (heads, kv heads, hd, start, seq, capacity)
            (8, 2, 64, 0, 37, 40),
            (4, 1, 64, 70, 20, 100),
            (3, 3, 128, 5, 33, 40),
            (6, 2, 128, 0, 1, 1),
            (8, 2, 64, 100, 1, 128),
            (4, 1, 64, 0, 130, 130),
            (4, 2, 80, 0, 50, 64),
            (2, 1, 80, 30, 70, 100),
        ];
        for dtype in [DType::F32, DType::F16] {
            for (nh, nkv, hd, start, seq, cap) in cases {
                check(dtype, nh, nkv, hd, start, seq, cap);
            }
        }
    }

    fn check(dtype: DType, nh: usize, nkv: usize, hd: usize, start: usize, seq: usize, cap: usize) {
        let dev = Device::Cpu;
        let len = start + seq;
        // Large enough that the scores span e^±10: the running maximum
        // and rescaling matter.
        let q = Tensor::from_vec(ramp(nh * seq * hd, 1, 2.0), (1, nh, seq, hd), &dev).expect("q");
        let cache = |seed| {
            Tensor::from_vec(ramp(nkv * cap * hd, seed, 1.5), (1, nkv, cap, hd), &dev)
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
            .apply_op3_no_bwd(
                &k,
                &v,
                &PrefillAttention {
                    scale,
                    mask: Mask::Causal,
                    bf16: false,
                },
            )
            .expect("attention");
        let rep = nh / nkv;
        assert_eq!(out.dims(), &[1, nkv, seq, rep, hd]);
        let best = out
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("out");
        // The op runs the best kernel; every other one this CPU has too.
        let mut outputs = vec![("best", best)];
        for kernel in Kernel::all() {
            if kernel.runs_here() {
                outputs.push((
                    label(kernel),
                    run_with(kernel, &q, &k, &v, scale, Mask::Causal),
                ));
            }
        }
        let values = |t: &Tensor| {
            t.to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .expect("values")
        };
        let (q, kc, vc) = (ramp(nh * seq * hd, 1, 2.0), values(&kc), values(&vc));
        for (kernel, got) in &outputs {
            let worst = worst_error(got, &q, &kc, &vc, (nh, nkv, hd, start, seq, cap), scale);
            assert!(
                worst <= 1e-5,
                "{kernel} {dtype:?} {nh}/{nkv} hd {hd} start {start} seq {seq}: {worst}"
            );
        }
    }

    /// A kernel's name in failure messages.
    fn label(kernel: Kernel) -> &'static str {
        match kernel {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
        }
    }

    /// One kernel's output through the op's own code path.
    fn run_with(
        kernel: Kernel,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        mask: Mask,
    ) -> Vec<f32> {
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (
            candle_core::Storage::Cpu(CpuStorage::F32(qd)),
            candle_core::Storage::Cpu(ks),
            candle_core::Storage::Cpu(vs),
        ) = (&*qs, &*ks, &*vs)
        else {
            panic!("cpu tensors expected")
        };
        let op = PrefillAttention {
            scale,
            mask,
            bf16: false,
        };
        let name = op.name();
        let q = Heads::of(name, "q", qd, ql).expect("q");
        match KvViews::of(name, ks, kl, vs, vl).expect("k, v") {
            KvViews::F32(k, v) => op.run(kernel, &q, &k, &v),
            KvViews::F16(k, v) => op.run(kernel, &q, &k, &v),
        }
        .expect("run")
    }

    /// Padding flags of tiles of `tile` positions: a real tile's first
    /// `real` positions are real, a padding tile is padding throughout.
    fn padding_flags(tile: usize, real: usize, real_tiles: &[bool]) -> Vec<bool> {
        real_tiles
            .iter()
            .flat_map(|&r| (0..tile).map(move |i| !r || i >= real))
            .collect()
    }

    /// The largest difference between `got` (`(heads, seq, hd)`, one query
    /// head per KV head) and f64 attention of `q`, `k`, `v` under [`Mask::Padding`]'s flags.
    fn worst_padding_error(
        got: &[f32],
        (q, k, v): (&[f32], &[f32], &[f32]),
        (nh, hd): (usize, usize),
        pad: &[bool],
        scale: f32,
    ) -> f64 {
        let seq = pad.len();
        let mut worst = 0f64;
        for h in 0..nh {
            let at = |t: &[f32], i: usize, d: usize| f64::from(t[(h * seq + i) * hd + d]);
            for i in 0..seq {
                let want = crate::softmax::exact_attention_row(
                    hd,
                    seq,
                    f64::from(scale),
                    |d| at(q, i, d),
                    |j, d| at(k, j, d),
                    |j, d| at(v, j, d),
                    |j| !(pad[i] && pad[j]),
                );
                for (d, want) in want.into_iter().enumerate() {
                    worst = worst.max((at(got, i, d) - want).abs());
                }
            }
        }
        worst
    }

    /// The largest difference between `got` and f64 causal attention.
    fn worst_error(
        got: &[f32],
        q: &[f32],
        kc: &[f32],
        vc: &[f32],
        (nh, nkv, hd, start, seq, cap): (usize, usize, usize, usize, usize, usize),
        scale: f32,
    ) -> f64 {
        let rep = nh / nkv;
        let mut worst = 0f64;
        for h in 0..nh {
            let g = h / rep;
            let at = |t: &[f32], j: usize, d: usize| f64::from(t[(g * cap + j) * hd + d]);
            for i in 0..seq {
                let want = crate::softmax::exact_attention_row(
                    hd,
                    start + i + 1,
                    f64::from(scale),
                    |d| f64::from(q[(h * seq + i) * hd + d]),
                    |j, d| at(kc, j, d),
                    |j, d| at(vc, j, d),
                    |_| true,
                );
                for (d, want) in want.into_iter().enumerate() {
                    let got = f64::from(got[((g * seq + i) * rep + h % rep) * hd + d]);
                    worst = worst.max((got - want).abs());
                }
            }
        }
        worst
    }

    /// [`Mask::Padding`] against f64 math: every query sees every key but
    /// padding rows not padding keys — with padding inside and between
    /// "tiles", a whole padding tile, padding at the very start (a padding
    /// row whose first key blocks are all hidden from it), lengths around
    /// the query and key blocks, head sizes 64, 80 and 128, every kernel.
    #[test]
    fn matches_exact_attention_with_padding() {
        if PrefillAttention::kernel(80).is_none() {
            eprintln!("no AVX2 or AVX-512: the fused kernel does not run here");
            return;
        }
        let cases: Vec<(usize, usize, Vec<bool>)> = vec![
            // (heads, hd, padding flags)
            (2, 80, padding_flags(40, 37, &[true, true, false, false])),
            (3, 80, padding_flags(56, 50, &[true, true, true, true])),
            (2, 64, padding_flags(24, 21, &[true, false, true])),
            (1, 128, padding_flags(70, 65, &[true, true])),
            (2, 80, (0..130).map(|i| i < 70).collect()),
            (1, 80, vec![false]),
        ];
        let dev = Device::Cpu;
        for (nh, hd, pad) in cases {
            let seq = pad.len();
            let (q, k, v) = (
                ramp(nh * seq * hd, 1, 2.0),
                ramp(nh * seq * hd, 2, 1.5),
                ramp(nh * seq * hd, 3, 1.5),
            );
            let tensor =
                |x: &[f32]| Tensor::from_vec(x.to_vec(), (1, nh, seq, hd), &dev).expect("tensor");
            let scale = 1.0 / (hd as f32).sqrt();
            let mask = Mask::Padding(pad.clone().into());
            let best = tensor(&q)
                .apply_op3_no_bwd(
                    &tensor(&k),
                    &tensor(&v),
                    &PrefillAttention {
                        scale,
                        mask: mask.clone(),
                        bf16: false,
                    },
                )
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .expect("attention");
            let mut outputs = vec![("best", best)];
            for kernel in Kernel::all().into_iter().filter(|k| k.runs_here()) {
                let got = run_with(
                    kernel,
                    &tensor(&q),
                    &tensor(&k),
                    &tensor(&v),
                    scale,
                    mask.clone(),
                );
                outputs.push((label(kernel), got));
            }
            for (kernel, got) in &outputs {
                let worst = worst_padding_error(got, (&q, &k, &v), (nh, hd), &pad, scale);
                assert!(
                    worst <= 1e-5,
                    "{kernel} {nh} heads hd {hd} seq {seq}: {worst}"
                );
            }
        }
    }

    /// The bf16 kernel against f64 attention of the bf16-rounded queries,
    /// keys and values: what remains is the probabilities' rounding to
    /// bf16 (at most 2⁻⁹ of each) and f32 sums, so the outputs may differ
    /// by about 2⁻⁸ of the values' size and no more. Padding as in
    /// [`matches_exact_attention_with_padding`], odd lengths, blocks cut
    /// short.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn bf16_kernel_matches_exact_attention_of_rounded_inputs() {
        if !bf16::runs_here() {
            eprintln!("no AVX-512 BF16: the bf16 kernel does not run here");
            return;
        }
        let cases: Vec<(usize, Vec<bool>)> = vec![
            (2, padding_flags(40, 37, &[true, true, false, false])),
            (3, padding_flags(57, 50, &[true, true, true, true])),
            (2, (0..131).map(|i| i < 70).collect()),
            (1, vec![false]),
            (1, (0..33).map(|i| i < 31).collect()),
        ];
        let dev = Device::Cpu;
        let hd = bf16::HD;
        let round = |x: &[f32]| -> Vec<f32> {
            x.iter()
                .map(|v| half::bf16::from_f32(*v).to_f32())
                .collect()
        };
        for (nh, pad) in cases {
            let seq = pad.len();
            let (q, k, v) = (
                ramp(nh * seq * hd, 1, 2.0),
                ramp(nh * seq * hd, 2, 1.5),
                ramp(nh * seq * hd, 3, 1.5),
            );
            let tensor =
                |x: &[f32]| Tensor::from_vec(x.to_vec(), (1, nh, seq, hd), &dev).expect("tensor");
            let scale = 1.0 / (hd as f32).sqrt();
            let op = PrefillAttention {
                scale,
                mask: Mask::Padding(pad.clone().into()),
                bf16: true,
            };
            let got = tensor(&q)
                .apply_op3_no_bwd(&tensor(&k), &tensor(&v), &op)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .expect("attention");
            let (qr, kr, vr) = (round(&q), round(&k), round(&v));
            let worst = worst_padding_error(&got, (&qr, &kr, &vr), (nh, hd), &pad, scale);
            assert!(worst <= 1.5 / 256.0, "{nh} heads seq {seq}: {worst}");
        }
    }

    /// Shapes are checked where a kernel runs (elsewhere the op says it has
    /// no kernel first).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn refuses_shapes_that_do_not_fit() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 4, 5, 64), DType::F32, &dev).expect("q");
        let k = Tensor::zeros((1, 2, 3, 64), DType::F32, &dev).expect("k");
        let err = q
            .apply_op3_no_bwd(
                &k,
                &k,
                &PrefillAttention {
                    scale: 1.0,
                    mask: Mask::Causal,
                    bf16: false,
                },
            )
            .expect_err("5 queries over 3 keys");
        assert!(err.to_string().contains("do not fit"), "{err}");
    }
}
