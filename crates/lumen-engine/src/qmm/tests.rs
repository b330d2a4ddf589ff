//! The kernels against a reference computed straight from the GGUF blocks,
//! on random bytes (every nibble and byte value, including Q8_0's −128,
//! which llama.cpp's quantizer never writes but a file may hold).

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use super::*;
use crate::sampling::SplitMix64;

const FORMATS: [Format; 3] = [Format::Q4_0, Format::Q4_1, Format::Q8_0];
const K_FORMATS: [Format; 3] = [Format::Q4K, Format::Q5K, Format::Q6K];

fn dtype(f: Format) -> GgmlDType {
    match f {
        Format::Q4_0 => GgmlDType::Q4_0,
        Format::Q4_1 => GgmlDType::Q4_1,
        Format::Q8_0 => GgmlDType::Q8_0,
        Format::Q4K => GgmlDType::Q4K,
        Format::Q5K => GgmlDType::Q5K,
        Format::Q6K => GgmlDType::Q6K,
    }
}

/// Random GGUF blocks for an `(n, k)` matrix: random quant bytes, finite
/// f16 scales (and minimums) of either sign.
fn random_blocks(f: Format, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64(seed);
    let scale = |rng: &mut SplitMix64| {
        let v = (rng.next_f64() * 2.0 - 1.0) * 0.05;
        f16::from_f64(v).to_le_bytes()
    };
    let blocks = n * k / f.block_len();
    let mut out = Vec::with_capacity(blocks * f.block_bytes());
    for _ in 0..blocks {
        let start = out.len();
        match f {
            // Random bytes, then finite scales where the format keeps them.
            Format::Q4K | Format::Q5K | Format::Q6K => {
                out.extend((0..f.block_bytes()).map(|_| rng.next_u64() as u8));
                let at = if f == Format::Q6K { start + 208 } else { start };
                out[at..at + 2].copy_from_slice(&scale(&mut rng));
                if f != Format::Q6K {
                    out[at + 2..at + 4].copy_from_slice(&scale(&mut rng));
                }
            }
            _ => {
                out.extend(scale(&mut rng));
                if f == Format::Q4_1 {
                    out.extend(scale(&mut rng));
                }
                for _ in 0..f.quant_bytes() {
                    out.push(rng.next_u64() as u8);
                }
            }
        }
    }
    out
}

/// candle's view of the same GGUF blocks.
fn gguf_qtensor(f: Format, n: usize, k: usize, data: &[u8]) -> QTensor {
    let storage = candle_core::quantized::QStorage::from_data(
        std::borrow::Cow::Borrowed(data),
        &Device::Cpu,
        dtype(f),
    )
    .expect("storage");
    QTensor::new(storage, (n, k)).expect("qtensor")
}

/// candle's dequantization, row-major.
fn dequantized(q: &QTensor) -> Vec<f32> {
    q.dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .expect("deq")
}

fn random_values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..len)
        .map(|_| (rng.next_f64() * 4.0 - 2.0) as f32)
        .collect()
}

/// `x · Wᵀ` from the GGUF bytes and the quantized activations, in f64:
/// per block `d_w · d_a · Σ q_w q_a` (with Q4_0's `q − 8`), plus Q4_1's
/// `m · s`. Also returns Σ|terms|, the scale for tolerances.
fn reference(f: Format, n: usize, k: usize, data: &[u8], act: &Activations) -> (Vec<f64>, f64) {
    let m = act.qs.len() / k;
    let blocks = k / QK;
    let mut out = vec![0f64; m * n];
    let mut size = 0f64;
    let f16_at = |b: &[u8], at: usize| f64::from(f16::from_le_bytes([b[at], b[at + 1]]).to_f32());
    for i in 0..m {
        let a = act.row(i);
        for r in 0..n {
            let mut acc = 0f64;
            for b in 0..blocks {
                let block = &data[(r * blocks + b) * f.block_bytes()..][..f.block_bytes()];
                let qs = &block[f.quants_at()..];
                let y = &a.qs[b * QK..(b + 1) * QK];
                let w = |e: usize| -> i64 {
                    match f {
                        Format::Q8_0 => i64::from(qs[e] as i8),
                        _ => {
                            let nib = if e < 16 {
                                qs[e] & 0x0F
                            } else {
                                qs[e - 16] >> 4
                            };
                            i64::from(nib) - if f == Format::Q4_0 { 8 } else { 0 }
                        }
                    }
                };
                let dot: i64 = (0..QK).map(|e| w(e) * i64::from(y[e])).sum();
                let mut term = f16_at(block, 0) * f64::from(a.d[b]) * dot as f64;
                if f == Format::Q4_1 {
                    term += f16_at(block, 2) * f64::from(a.s[b]);
                }
                acc += term;
                size += term.abs();
            }
            out[i * n + r] = acc;
        }
    }
    (out, size / (m * n) as f64)
}

fn check(f: Format, isa: Isa, m: usize, n: usize, k: usize) {
    let data = random_blocks(f, n, k, (m * 1000 + n * 10 + k) as u64);
    let w = Interleaved::from_blocks(f, n, k, &data, &mut |_| {}).expect("repack");
    let x = random_values(m * k, 7 + m as u64);
    let got = matmul(&w, isa, &x);
    let (want, size) = reference(f, n, k, &data, &Activations::quantize(&x, k, f));
    assert_eq!(got.len(), want.len());
    for (i, (g, r)) in got.iter().zip(&want).enumerate() {
        let err = (f64::from(*g) - r).abs();
        // Only the order and precision of f32 additions differ.
        assert!(
            err <= 1e-5 * size * (k / QK) as f64,
            "{f:?} {isa:?} m={m} n={n} k={k} at {i}: {g} vs {r}"
        );
    }
}

#[test]
fn every_kernel_matches_the_reference_on_odd_sizes() {
    for isa in Isa::available() {
        for f in FORMATS {
            for (m, n, k) in [
                (1, 1, 32),
                (1, 16, 64),
                (1, 37, 96),
                (2, 33, 256),
                (3, 16, 32),
                (4, 48, 160),
                (5, 17, 64),
                (7, 70, 128),
                (9, 5, 288),
            ] {
                check(f, isa, m, n, k);
            }
        }
    }
}

/// The SIMD kernels give the scalar kernel's numbers (same accumulation
/// order; FMA rounding only) on a model-sized matrix.
#[test]
fn simd_kernels_agree_with_the_scalar_kernel() {
    let (m, n, k) = (6, 100, 2048);
    for f in FORMATS {
        let data = random_blocks(f, n, k, 42);
        let w = Interleaved::from_blocks(f, n, k, &data, &mut |_| {}).expect("repack");
        let x = random_values(m * k, 43);
        let want = matmul(&w, Isa::Scalar, &x);
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        for isa in Isa::available() {
            let got = matmul(&w, isa, &x);
            let worst = got
                .iter()
                .zip(&want)
                .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
            assert!(worst <= 1e-5 * scale, "{f:?} {isa:?}: {worst} vs {scale}");
        }
    }
}

#[test]
fn repacked_rows_dequantize_like_candle() {
    for f in FORMATS.into_iter().chain(K_FORMATS) {
        let (n, k) = (19, if f.is_k() { 512 } else { 96 });
        let data = random_blocks(f, n, k, 5);
        let q = gguf_qtensor(f, n, k, &data);
        let op = InterleavedMatMul {
            weight: Arc::new(
                Interleaved::from_blocks(f, n, k, &data, &mut |_| {}).expect("repack"),
            ),
            isa: Isa::Scalar,
        };
        assert_eq!(op.dims(), (n, k));
        // Exactly the file's bytes for the rows, padded to whole groups:
        // no scale is widened.
        let padded = n.div_ceil(ROWS) * ROWS * data.len() / n;
        assert_eq!(op.size_in_bytes(), padded, "{f:?}");
        let want = q.dequantize(&Device::Cpu).expect("deq");
        for r in [0, 7, 16, 18] {
            let row = want.get(r).and_then(|t| t.to_vec1::<f32>()).expect("row");
            assert_eq!(op.row(r).expect("in range"), row, "{f:?} row {r}");
        }
        assert!(op.row(n).is_none());
    }
}

/// Through candle: batched 3-D input, and the result of f32 math on the
/// dequantized weight within 8-bit activation rounding.
#[test]
fn custom_op_matches_dequantized_matmul() {
    let (n, k) = (40, 128);
    for f in FORMATS {
        let w = Tensor::from_vec(random_values(n * k, 1), (n, k), &Device::Cpu).expect("w");
        let q = QTensor::quantize(&w, dtype(f)).expect("quantize");
        let op = InterleavedMatMul::new(&q).expect("supported");
        let x = Tensor::from_vec(random_values(2 * 3 * k, 2), (2, 3, k), &Device::Cpu).expect("x");
        let ours = x.apply_op1_no_bwd(&op).expect("op");
        assert_eq!(ours.dims(), &[2, 3, n]);
        let deq = q.dequantize(&Device::Cpu).expect("deq");
        let want = x.broadcast_matmul(&deq.t().expect("t")).expect("mm");
        let err = (ours - &want)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("err");
        let scale = want
            .abs()
            .and_then(|d| d.max_all()?.to_scalar::<f32>())
            .expect("scale");
        assert!(err <= 0.02 * scale, "{f:?}: {err} vs scale {scale}");
    }
}

/// The k-quant kernels against f64 math on candle's dequantized weights and
/// the dequantized Q8_K activations (candle's dequantization is independent
/// of the repacking and of the kernels).
#[test]
fn k_quant_kernels_match_candle_dequantized_weights() {
    for isa in Isa::available() {
        for f in K_FORMATS {
            for (m, n, k) in [
                (1, 1, 256),
                (1, 37, 512),
                (3, 16, 256),
                (4, 33, 768),
                (6, 20, 256),
            ] {
                let data = random_blocks(f, n, k, (m * 100 + n + k) as u64);
                let w = Interleaved::from_blocks(f, n, k, &data, &mut |_| {}).expect("repack");
                let q = gguf_qtensor(f, n, k, &data);
                let deq = dequantized(&q);
                let x = random_values(m * k, 11 + m as u64);
                let act = Activations::quantize(&x, k, f);
                let got = matmul(&w, isa, &x);
                for i in 0..m {
                    let a = act.row(i);
                    for r in 0..n {
                        let (mut want, mut size) = (0f64, 0f64);
                        for v in 0..k {
                            let y = f64::from(a.d[v / QK_K]) * f64::from(a.qs[v]);
                            let term = f64::from(deq[r * k + v]) * y;
                            want += term;
                            size += term.abs();
                        }
                        let g = f64::from(got[i * n + r]);
                        assert!(
                            (g - want).abs() <= 1e-5 * size,
                            "{f:?} {isa:?} m={m} n={n} k={k} ({i}, {r}): {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

/// Q8_K as llama.cpp: the largest magnitude maps to ∓127 with its sign
/// flipped, `d = 1 / iscale`, sums per 16.
#[test]
fn k_activations_quantize_like_llama_cpp() {
    let mut x = vec![0.25f32; QK_K];
    x[5] = 2.0;
    x[7] = -1.0;
    let a = Activations::quantize(&x, QK_K, Format::Q4K);
    assert_eq!(a.qs[5], -127);
    assert_eq!(a.qs[7], 64); // 63.5 → 64 (ties to even)
    assert_eq!(a.qs[0], -16); // −15.875 → −16
    assert_eq!(a.d[0], 1.0 / (-127.0 / 2.0));
    assert_eq!(a.sums.len(), 16);
    assert_eq!(a.sums[0], -127 + 64 - 16 * 14);
    assert_eq!(a.sums[1], -16 * 16);
}

#[test]
fn repacking_reports_what_it_has_read() {
    // 17.8 MB of Q8_0: a loader drops the file's pages after each report,
    // so reports must come in whole rows, only grow, and end at the end.
    let (f, n, k) = (Format::Q8_0, 4096, 4096);
    let data = random_blocks(f, n, k, 5);
    let row_bytes = data.len() / n;
    let mut reports = Vec::new();
    let w = Interleaved::from_blocks(f, n, k, &data, &mut |b| reports.push(b)).expect("repack");
    assert!(reports.len() >= 3, "{reports:?}");
    assert!(reports.windows(2).all(|p| p[0] < p[1]), "{reports:?}");
    assert!(reports.iter().all(|r| r % row_bytes == 0), "{reports:?}");
    assert!(reports[0] <= super::REPORT_BYTES, "{reports:?}");
    assert_eq!(reports.last(), Some(&data.len()));
    assert_eq!(w.groups(), n / ROWS);
}

#[test]
fn unsupported_weights_are_declined() {
    let w = Tensor::zeros((16, 256), candle_core::DType::F32, &Device::Cpu).expect("w");
    let q = QTensor::quantize(&w, GgmlDType::Q3K).expect("quantize");
    assert!(InterleavedMatMul::new(&q).is_none());
    // Bytes that are not an (n, k) matrix of the format.
    assert!(Interleaved::from_blocks(Format::Q4_0, 2, 64, &[0; 71], &mut |_| {}).is_none());
    assert!(Interleaved::from_blocks(Format::Q4_0, 2, 48, &[0; 54], &mut |_| {}).is_none());
}

#[test]
fn rounding_is_ties_to_even() {
    let mut rng = SplitMix64(9);
    for _ in 0..100_000 {
        let v = (rng.next_f64() * 300.0 - 150.0) as f32;
        assert_eq!(round_ties_even(v), v.round_ties_even(), "{v}");
    }
    for v in [
        0.5f32, 1.5, 2.5, -0.5, -1.5, 126.5, -127.0, 0.0, -0.0, 127.49999,
    ] {
        assert_eq!(round_ties_even(v), v.round_ties_even(), "{v}");
    }
}

#[test]
fn activations_round_like_llama_cpp() {
    let mut x = vec![1.0f32; QK];
    x[3] = -0.5; // 63.5 rounds to even: 64 → −64
    let a = Activations::quantize(&x, QK, Format::Q8_0);
    assert_eq!(a.qs[3], -64);
    assert_eq!(a.sums[0], 31 * 127 - 64);
    // Q8_1's s is f16(d · Σq) computed in f32, not f16(Σq) · f16(d).
    assert_eq!(
        a.s[0],
        f16::from_f32((31 * 127 - 64) as f32 / 127.0).to_f32()
    );
    let zero = Activations::quantize(&[0.0; QK], QK, Format::Q8_0);
    assert_eq!((zero.d[0], zero.sums[0]), (0.0, 0));
}

/// A random `(n, k)` weight of format `f`, repacked, on this CPU's kernels.
fn repacked(f: Format, n: usize, k: usize, seed: u64) -> InterleavedMatMul {
    InterleavedMatMul {
        weight: Arc::new(
            Interleaved::from_blocks(f, n, k, &random_blocks(f, n, k, seed), &mut |_| {})
                .expect("repack"),
        ),
        isa: Isa::detect(),
    }
}

/// Fused weights give each weight's own results, bit for bit, side by
/// side; weights that read their input differently are not fused.
#[test]
fn fused_matmuls_equal_separate_ones() {
    let families = [
        vec![
            repacked(Format::Q4_0, 37, 64, 1),
            repacked(Format::Q8_0, 16, 64, 2),
            repacked(Format::Q4_1, 5, 64, 3),
        ],
        vec![
            repacked(Format::Q4K, 20, 256, 4),
            repacked(Format::Q6K, 33, 256, 5),
        ],
    ];
    for parts in &families {
        let k = parts[0].weight.k;
        let refs: Vec<&InterleavedMatMul> = parts.iter().collect();
        let fused = FusedMatMul::new(&refs).expect("fusable");
        assert_eq!(
            fused.widths().collect::<Vec<_>>(),
            parts.iter().map(|p| p.weight.n).collect::<Vec<_>>()
        );
        for m in [1, 3, 6] {
            let x = Tensor::from_vec(random_values(m * k, m as u64), (1, m, k), &Device::Cpu)
                .expect("x");
            let ours = x.apply_op1_no_bwd(&fused).expect("fused");
            let mut at = 0;
            for p in parts {
                let want = x.apply_op1_no_bwd(p).expect("separate");
                let got = ours.narrow(2, at, p.weight.n).expect("narrow");
                at += p.weight.n;
                let diff = (got - want)
                    .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                    .expect("diff");
                assert_eq!(diff, 0.0, "m={m}");
            }
        }
    }
    let (a, b) = (
        repacked(Format::Q4_0, 16, 64, 1),
        repacked(Format::Q4_0, 16, 96, 2),
    );
    assert!(FusedMatMul::new(&[&a, &b]).is_none(), "different k");
    let (a, b) = (
        repacked(Format::Q4_0, 16, 256, 1),
        repacked(Format::Q4K, 16, 256, 2),
    );
    assert!(
        FusedMatMul::new(&[&a, &b]).is_none(),
        "different activations"
    );
}

/// A prompt's rows, whose row groups some kernels unpack once for all
/// their tiles (Q5_K on AVX-512), give bit for bit what each row alone
/// gives from the packed weight.
#[test]
fn unpacked_groups_equal_packed_ones() {
    let (m, n, k) = (9, 40, 512);
    for isa in Isa::available() {
        for f in K_FORMATS {
            let data = random_blocks(f, n, k, 77);
            let w = Interleaved::from_blocks(f, n, k, &data, &mut |_| {}).expect("repack");
            let x = random_values(m * k, 78);
            let all = matmul(&w, isa, &x);
            for (i, row) in x.chunks(k).enumerate() {
                let one = matmul(&w, isa, row);
                assert_eq!(&all[i * n..(i + 1) * n], &one[..], "{f:?} {isa:?} row {i}");
            }
        }
    }
}

/// Gate and up fused with SwiGLU give SwiGLU of their separate results,
/// bit for bit, for tiles of every height and a padded last group; parts
/// of different shapes or formats are not fused this way.
#[test]
fn swiglu_matmul_equals_swiglu_of_separate_matmuls() {
    for (f, n, k) in [
        (Format::Q4_0, 37, 64),
        (Format::Q4K, 50, 512),
        (Format::Q5K, 50, 512),
    ] {
        let (gate, up) = (repacked(f, n, k, 11), repacked(f, n, k, 12));
        let fused = FusedMatMul::new(&[&gate, &up]).expect("fusable");
        let swiglu = fused.swiglu().expect("a gate and an up projection");
        for m in [0, 1, 4, 7, 9, 70] {
            let x = Tensor::from_vec(random_values(m * k, 20 + m as u64), (1, m, k), &Device::Cpu)
                .expect("x");
            let got = x.apply_op1_no_bwd(&swiglu).expect("fused");
            assert_eq!(got.dims(), [1, m, n]);
            let (g, u) = (
                x.apply_op1_no_bwd(&gate).expect("gate"),
                x.apply_op1_no_bwd(&up).expect("up"),
            );
            let want = crate::swiglu::swiglu(&g, &u).expect("swiglu");
            let (got, want) = (
                got.flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("got"),
                want.flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("want"),
            );
            assert_eq!(got, want, "{f:?} m={m}");
        }
    }
    let (a, b, c) = (
        repacked(Format::Q4_0, 16, 64, 1),
        repacked(Format::Q4_0, 32, 64, 2),
        repacked(Format::Q8_0, 16, 64, 3),
    );
    for parts in [vec![&a, &b], vec![&a, &c], vec![&a, &a, &a]] {
        let fused = FusedMatMul::new(&parts).expect("fusable");
        assert!(
            fused.swiglu().is_none(),
            "{:?}",
            fused.widths().collect::<Vec<_>>()
        );
    }
}

/// Every quant bit set and activations at ±127 everywhere: the largest
/// integer sums the kernels form (where the i16 ones would overflow first).
#[test]
fn extreme_values_do_not_overflow() {
    let (n, k) = (16, 512);
    for f in FORMATS.into_iter().chain(K_FORMATS) {
        let mut data = vec![0xFFu8; n * k / f.block_len() * f.block_bytes()];
        let scale = f16::from_f32(0.01).to_le_bytes();
        for block in data.chunks_exact_mut(f.block_bytes()) {
            let at = if f == Format::Q6K { 208 } else { 0 };
            block[at..at + 2].copy_from_slice(&scale);
            if matches!(f, Format::Q4_1 | Format::Q4K | Format::Q5K) {
                block[2..4].copy_from_slice(&scale);
            }
        }
        let w = Interleaved::from_blocks(f, n, k, &data, &mut |_| {}).expect("repack");
        let q = gguf_qtensor(f, n, k, &data);
        let deq = dequantized(&q);
        for sign in [1.0f32, -1.0] {
            let x = vec![sign; k];
            let act = Activations::quantize(&x, k, f);
            let y = act.row(0);
            let want: f64 = (0..k)
                .map(|v| {
                    let d = f64::from(y.d[v / f.block_len()]);
                    f64::from(deq[v]) * d * f64::from(y.qs[v])
                })
                .sum();
            for isa in Isa::available() {
                let got = matmul(&w, isa, &x);
                for g in &got {
                    let err = (f64::from(*g) - want).abs();
                    assert!(
                        err <= 1e-4 * want.abs().max(1.0),
                        "{f:?} {isa:?} {sign}: {g} vs {want}"
                    );
                }
            }
        }
    }
}

/// The activation quantizers as they were written first, one value at a
/// time: the reference for [`quantize_task`]'s vectorized copies.
fn quantize_sequential(k: bool, x: &[f32]) -> (Vec<i8>, Vec<f32>, Vec<i32>, Vec<f32>) {
    let (len, per_sum) = if k { (QK_K, 16) } else { (QK, QK) };
    let (mut qs, mut d, mut sums, mut s) = (vec![0i8; x.len()], vec![], vec![], vec![]);
    for (x, qs) in x.chunks_exact(len).zip(qs.chunks_exact_mut(len)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for v in x {
            if v.abs() > amax {
                (amax, max) = (v.abs(), *v);
            }
        }
        let scale = if amax == 0.0 {
            0.0
        } else if k {
            -127.0 / max
        } else {
            127.0 / amax
        };
        for (q, v) in qs.iter_mut().zip(x) {
            *q = if k && amax == 0.0 {
                0
            } else if k {
                round_ties_even(scale * v).min(127.0) as i8
            } else {
                round_ties_even(v * scale) as i8
            };
        }
        let block_sums = qs
            .chunks_exact(per_sum)
            .map(|q| q.iter().map(|&q| i32::from(q)).sum::<i32>());
        sums.extend(block_sums);
        if k {
            d.push(if amax == 0.0 { 0.0 } else { 1.0 / scale });
            s.push(0.0);
        } else {
            let dd = amax / 127.0;
            d.push(f16::from_f32(dd).to_f32());
            s.push(f16::from_f32(*sums.last().unwrap_or(&0) as f32 * dd).to_f32());
        }
    }
    (qs, d, sums, s)
}

/// The activation quantizer, in the copy this CPU runs and in plain Rust,
/// gives the sequential reference's bits, on awkward values: the largest magnitude
/// twice with both signs, ties, NaN, infinities, ±0, blocks of zeros.
#[test]
fn activation_quantizers_agree_with_the_sequential_reference() {
    let mut rng = SplitMix64(21);
    let n = 64 * QK_K;
    let mut x: Vec<f32> = (0..n)
        .map(|_| (rng.next_f64() * 8.0 - 4.0) as f32)
        .collect();
    // Block 1: its largest magnitude first negative, then positive.
    x[QK_K + 3] = -9.0;
    x[QK_K + 200] = 9.0;
    // Block 2: zeros; block 3: −0 and NaN only; block 4: an infinity.
    x[2 * QK_K..3 * QK_K].fill(0.0);
    x[3 * QK_K..4 * QK_K].fill(-0.0);
    x[3 * QK_K + 17] = f32::NAN;
    x[4 * QK_K + 40] = f32::INFINITY;
    // Block 5: NaNs beside ordinary values, one in the last sixteen (the
    // vectorized search's lanes must not keep it); block 6: halves (ties).
    x[5 * QK_K + 1] = f32::NAN;
    x[5 * QK_K + 240] = f32::NAN;
    for (i, v) in x[6 * QK_K..7 * QK_K].iter_mut().enumerate() {
        *v = (i as f32 - 128.0) * 0.5;
    }
    for k in [true, false] {
        let (len, spb) = if k { (QK_K, 16) } else { (QK, 1) };
        let want = quantize_sequential(k, &x);
        type Quantizer = fn(bool, &[f32], super::Task<'_>);
        let copies: [(&str, Quantizer); 2] = [
            ("dispatched", super::quantize_task),
            ("portable", super::quantize_task_any),
        ];
        for (copy, quantize) in copies {
            let blocks = n / len;
            let (mut qs, mut d) = (vec![0i8; n], vec![0f32; blocks]);
            let (mut sums, mut s) = (vec![0i32; blocks * spb], vec![0f32; blocks]);
            let task = super::Task {
                qs: &mut qs,
                d: &mut d,
                sums: &mut sums,
                s: &mut s,
            };
            quantize(k, &x, task);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let first = qs.iter().zip(&want.0).position(|(a, b)| a != b);
            assert_eq!(first, None, "{copy} k={k}: quants");
            assert_eq!(bits(&d), bits(&want.1), "{copy} k={k}: scales");
            assert_eq!(sums, want.2, "{copy} k={k}: sums");
            if !k {
                assert_eq!(bits(&s), bits(&want.3), "{copy} k={k}: d·Σq");
            }
        }
    }
}
