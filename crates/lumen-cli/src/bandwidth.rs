//! Memory read bandwidth: the bound on decoding speed. Generating one token
//! reads every weight of the model once, so a CPU cannot decode faster than
//! (read bandwidth) / (bytes of weights) tokens per second, however good
//! its kernels; `lumen bench` prints how close it gets.

use std::time::Instant;

/// Bytes each measurement reads: far more than any cache.
pub const DEFAULT_BYTES: usize = 1 << 30;

/// How far ahead the probe asks for lines, bytes (0: it does not ask); it
/// keeps the fastest. Which is fastest depends on the CPU: on an EPYC of
/// earlier sessions asking 4 KiB ahead raised the reading from 44 to 69
/// GB/s; on an Intel Xeon 4 KiB read slower than not asking (30.3 against
/// 31.8 GB/s) and 3 KiB fastest (33.7 GB/s).
const AHEAD_BYTES: [usize; 4] = [0, 2048, 3072, 4096];

/// Read bandwidth in bytes per second with `threads` threads each summing
/// its share of a `bytes`-sized buffer; the best of `passes` passes at
/// each prefetch distance of [`AHEAD_BYTES`] (the first pass touches the
/// pages and is not counted).
pub fn read_bandwidth(bytes: usize, threads: usize, passes: usize) -> f64 {
    let words = (bytes / 8).max(threads.max(1) * 64);
    let buffer: Vec<u64> = (0..words as u64).collect();
    let threads = threads.max(1);
    let chunk = words.div_ceil(threads);
    let mut best = 0.0f64;
    let runs = AHEAD_BYTES
        .iter()
        .flat_map(|&ahead| std::iter::repeat_n(ahead, passes.max(1)));
    // The first pass touches the pages and is not counted.
    for (pass, ahead) in std::iter::once(0).chain(runs).enumerate() {
        let started = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let parts: Vec<_> = buffer
                .chunks(chunk)
                .map(|part| s.spawn(move || sum(part, ahead / 8)))
                .collect();
            parts
                .into_iter()
                .map(|p| p.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        let seconds = started.elapsed().as_secs_f64();
        // The sum is used, so the reads cannot be optimised away.
        std::hint::black_box(total);
        if pass > 0 {
            best = best.max((words * 8) as f64 / seconds.max(1e-9));
        }
    }
    best
}

/// Sums `words` a cache line at a time with eight independent accumulators
/// (so that the loop is bound by memory, not by one addition's latency),
/// asking for the line `ahead` words ahead as the engine's kernels do
/// (none for 0).
fn sum(words: &[u64], ahead: usize) -> u64 {
    let mut acc = [0u64; 8];
    let (lines, rest) = words.as_chunks::<8>();
    for (i, line) in lines.iter().enumerate() {
        #[cfg(target_arch = "x86_64")]
        if ahead > 0
            && let Some(ahead) = words.get(i * 8 + ahead)
        {
            prefetch(ahead);
        }
        for (a, w) in acc.iter_mut().zip(line) {
            *a = a.wrapping_add(*w);
        }
    }
    let rest = rest.iter().fold(0u64, |a, w| a.wrapping_add(*w));
    acc.iter().fold(rest, |a, w| a.wrapping_add(*w))
}

/// Asks the caches for the line holding `word`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch(word: &u64) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: SSE is part of every x86-64 CPU; a prefetch only hints the
    // caches, and the address is a valid reference.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(word).cast()) };
}

/// The fastest decoding `bandwidth` allows for a model whose weights take
/// `weight_bytes`: tokens per second.
pub fn decode_bound(bandwidth: f64, weight_bytes: u64) -> f64 {
    bandwidth / (weight_bytes.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_word_whatever_the_length() {
        for n in [0usize, 1, 3, 4, 5, 1001] {
            let words: Vec<u64> = (0..n as u64).collect();
            let expected = (0..n as u64).fold(0u64, u64::wrapping_add);
            for ahead in AHEAD_BYTES.map(|b| b / 8) {
                assert_eq!(sum(&words, ahead), expected, "{n} words, {ahead} ahead");
            }
        }
    }

    #[test]
    fn bandwidth_is_a_positive_rate_and_bounds_decoding() {
        let b = read_bandwidth(8 << 20, 2, 2);
        assert!(b.is_finite() && b > 1e8, "{b} bytes/s");
        // 20 GB/s over a 0.8 GB file: 25 tokens per second at most.
        assert!((decode_bound(20e9, 800_000_000) - 25.0).abs() < 1e-9);
    }
}
