//! `lumen bench kernels`: how fast each of Lumen's quantized kernels
//! streams a weight through one token's matrix–vector product — the whole
//! of a decoding step's work, weight after weight — in GB/s of weights, on
//! one thread and on all, next to the memory read bandwidth. Where a
//! model's decoding falls short of the bandwidth bound (`lumen bench`),
//! this says which weight type is the cause.
//!
//! The weight is random blocks of the chosen type (256 rows quantized from
//! random values, repeated), repacked as a model's would be; the default
//! shape is Llama 3.2 1B's output layer (128,256 × 2,048), the largest
//! single read of a decoding step.
//!
//! It also times decoding attention over an f16 KV cache
//! (`--attention-depth`): one token's query against the cached keys and
//! values of every layer of a Llama 3.2 1B-shaped model (16 layers, 32
//! query heads on 8 KV heads of 64 values), each layer's cache apart, so
//! that they are read from memory as in decoding.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use lumen_engine::decode_attention::DecodeAttention;
use lumen_engine::qmm::InterleavedMatMul;
use serde_json::json;

use crate::bench_history::Rng;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

/// `lumen bench kernels`.
#[derive(Debug, Args)]
pub struct KernelBenchArgs {
    /// Rows of the weight (outputs of the product).
    #[arg(long, default_value_t = 128_256)]
    rows: usize,
    /// Columns (the input's length; a multiple of 256 for K-quants).
    #[arg(long, default_value_t = 2048)]
    cols: usize,
    /// Weight types, comma-separated: q4_0, q4_1, q8_0, q4_k, q5_k, q6_k.
    #[arg(
        long = "types",
        value_delimiter = ',',
        default_value = "q4_0,q4_1,q8_0,q4_k,q5_k,q6_k"
    )]
    types: Vec<String>,
    /// Depth (cached tokens) of the decoding-attention measurement; 0 skips
    /// it.
    #[arg(long, default_value_t = 4096)]
    attention_depth: usize,
    /// Products per measurement; the fastest counts.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Rows quantized from random values; the weight repeats them.
const TILE_ROWS: usize = 256;

/// Runs the benchmark.
pub fn main(args: KernelBenchArgs) -> Result<()> {
    // The parallel measurement uses the compute threads (`lumen --threads`).
    let threads = rayon::current_num_threads().max(1);
    if args.rows == 0 || args.cols == 0 {
        bail!("--rows and --cols must be positive");
    }
    let mut rng = Rng(7);
    let x: Vec<f32> = (0..args.cols).map(|_| uniform(&mut rng)).collect();
    let x = Tensor::from_vec(x, (1, args.cols), &Device::Cpu)?;
    let mut rows = Vec::new();
    eprintln!(
        "{} × {} weight, one token, best of {} products ({} CPU kernels, {})",
        args.rows,
        args.cols,
        args.runs,
        lumen_engine::qmm::cpu_kernels(),
        lumen_engine::qmm::cpu_prefetch()
    );
    for name in &args.types {
        let ty = crate::bench_gguf::weight_type(name)?;
        if !args.cols.is_multiple_of(ty.block_size()) {
            bail!(
                "--cols {} is not a multiple of {name}'s block of {} values",
                args.cols,
                ty.block_size()
            );
        }
        let op = weight(ty, args.rows, args.cols, &mut rng)
            .with_context(|| format!("{name}: Lumen's kernels do not take it on this CPU"))?;
        let bytes = op.size_in_bytes() as f64;
        let rate = |n: usize| -> Result<f64> {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build()?;
            pool.install(|| {
                x.apply_op1_no_bwd(&op)?;
                let mut best = f64::INFINITY;
                for _ in 0..args.runs.max(1) {
                    let started = Instant::now();
                    let y = x.apply_op1_no_bwd(&op)?;
                    best = best.min(started.elapsed().as_secs_f64());
                    std::hint::black_box(y);
                }
                Ok(bytes / best.max(1e-9))
            })
        };
        let (one, all) = (rate(1)?, rate(threads)?);
        eprintln!(
            "  {name:5} {:7.1} MB: {:5.1} GB/s on 1 thread, {:5.1} GB/s on {threads}",
            bytes / 1e6,
            one / 1e9,
            all / 1e9
        );
        rows.push(json!({
            "type": name,
            "weight_bytes": op.size_in_bytes(),
            "one_thread_bytes_s": one,
            "all_threads_bytes_s": all,
        }));
    }
    let attention = match args.attention_depth {
        0 => None,
        depth => Some(attention(depth, threads, args.runs, &mut rng)?),
    };
    let bandwidth = crate::bandwidth::read_bandwidth(crate::bandwidth::DEFAULT_BYTES, threads, 3);
    eprintln!(
        "memory read bandwidth ({threads} threads): {:.1} GB/s",
        bandwidth / 1e9
    );
    if args.json {
        println!(
            "{}",
            json!({
                "rows": args.rows,
                "cols": args.cols,
                "threads": threads,
                "cpu_kernels": lumen_engine::qmm::cpu_kernels(),
                "cpu_prefetch": lumen_engine::qmm::cpu_prefetch(),
                "kernels": rows,
                "decode_attention": attention,
                "read_bandwidth_bytes_s": bandwidth,
            })
        );
    }
    Ok(())
}

/// A `rows × cols` weight of type `ty`, repacked for Lumen's kernels:
/// `TILE_ROWS` rows quantized from random values, repeated.
fn weight(
    ty: lumen_engine::GgmlDType,
    rows: usize,
    cols: usize,
    rng: &mut Rng,
) -> Result<InterleavedMatMul> {
    let tile_rows = TILE_ROWS.min(rows);
    let values: Vec<f32> = (0..tile_rows * cols).map(|_| uniform(rng)).collect();
    let tile = QTensor::quantize(
        &Tensor::from_vec(values, (tile_rows, cols), &Device::Cpu)?,
        ty,
    )?;
    let tile = tile.data()?;
    let row_bytes = tile.len() / tile_rows;
    let mut data = Vec::with_capacity(rows * row_bytes);
    for r in 0..rows {
        let at = (r % tile_rows) * row_bytes;
        data.extend_from_slice(&tile[at..at + row_bytes]);
    }
    InterleavedMatMul::from_ggml(ty, rows, cols, &data, &mut |_| {})
        .context("not a weight Lumen's interleaved kernels take")
}

/// Layers, query heads, KV heads and head size of the attention
/// measurement (Llama 3.2 1B).
const ATTENTION_SHAPE: (usize, usize, usize, usize) = (16, 32, 8, 64);

/// Times decoding attention over `depth` cached f16 tokens of every layer
/// (the best of `runs` passes over all layers), on `threads` threads;
/// prints it and returns it as JSON.
fn attention(
    depth: usize,
    threads: usize,
    runs: usize,
    rng: &mut Rng,
) -> Result<serde_json::Value> {
    let (layers, heads, kv_heads, hd) = ATTENTION_SHAPE;
    let dev = Device::Cpu;
    let random = |n: usize, shape: (usize, usize, usize, usize), rng: &mut Rng| {
        let v: Vec<f32> = (0..n).map(|_| uniform(rng)).collect();
        Tensor::from_vec(v, shape, &dev)
    };
    let q = random(heads * hd, (1, heads, 1, hd), rng)?;
    let cache = (1, kv_heads, depth, hd);
    let caches = (0..layers)
        .map(|_| -> Result<(Tensor, Tensor)> {
            let k = random(kv_heads * depth * hd, cache, rng)?.to_dtype(DType::F16)?;
            let v = random(kv_heads * depth * hd, cache, rng)?.to_dtype(DType::F16)?;
            Ok((k, v))
        })
        .collect::<Result<Vec<_>>>()?;
    let op = DecodeAttention {
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let best = pool.install(|| -> Result<f64> {
        let mut best = f64::INFINITY;
        // One unmeasured pass first (thread scratch, page faults).
        for run in 0..=runs.max(1) {
            let started = Instant::now();
            for (k, v) in &caches {
                std::hint::black_box(q.apply_op3_no_bwd(k, v, &op)?);
            }
            if run > 0 {
                best = best.min(started.elapsed().as_secs_f64());
            }
        }
        Ok(best)
    })?;
    let bytes = (layers * 2 * kv_heads * depth * hd * 2) as f64;
    eprintln!(
        "  decoding attention, f16 cache of {depth} tokens, {layers} layers ({heads} heads on {kv_heads}, {hd} values): {:.2} ms per token on {threads} threads ({:.1} GB/s of cache)",
        best * 1e3,
        bytes / best.max(1e-9) / 1e9
    );
    Ok(json!({
        "depth": depth,
        "layers": layers,
        "seconds_per_token": best,
        "cache_bytes_s": bytes / best.max(1e-9),
    }))
}

/// A value in [-0.5, 0.5) from `rng`.
fn uniform(rng: &mut Rng) -> f32 {
    (rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
}
