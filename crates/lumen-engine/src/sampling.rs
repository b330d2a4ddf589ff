//! Choosing the next token from logits: repetition penalty, temperature,
//! top-k, top-p, min-p, and a seeded random generator so that the same seed
//! gives the same output on every platform.

use serde::{Deserialize, Serialize};

/// Sampling settings. `temperature <= 0` means greedy (argmax).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 for greedy decoding.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability adds up to `top_p`
    /// (1 = no limit).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one (0 = off).
    pub min_p: f32,
    /// Penalty for tokens seen in the last `repeat_last_n` tokens (1 = off),
    /// as in the CTRL paper and llama.cpp.
    pub repeat_penalty: f32,
    /// How far back the repetition penalty looks.
    pub repeat_last_n: usize,
    /// Random seed.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Meta's recommended settings for Llama 3 Instruct.
    fn default() -> Self {
        Self {
            temperature: 0.6,
            top_k: 0,
            top_p: 0.9,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 42,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// SplitMix64: tiny, fast, and fixed forever (unlike `rand`'s `StdRng`,
/// whose algorithm may change between versions), so a seed reproduces.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks tokens. Holds the random state; one per generation.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// Scratch buffer reused across tokens.
    candidates: Vec<(u32, f32)>,
}

/// Candidates examined before falling back to a full sort for top-p.
const TOP_P_PREFILTER: usize = 1024;

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        Self {
            rng: SplitMix64(params.seed),
            params,
            candidates: Vec::new(),
        }
    }

    /// The next token given `logits` (modified in place by the penalty) and
    /// the tokens so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.penalize(logits, history);
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        let cands = &mut self.candidates;
        cands.clear();
        cands.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        if cands.is_empty() {
            return 0;
        }
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        // Only the head of the distribution matters for top-k / top-p / min-p:
        // partition it out in O(n) before sorting.
        let keep = if p.top_k > 0 {
            p.top_k
        } else {
            TOP_P_PREFILTER
        };
        if cands.len() > keep {
            cands.select_nth_unstable_by(keep - 1, by_logit_desc);
            let head_mass = softmax_mass(cands, keep);
            if p.top_k > 0 || head_mass >= f64::from(p.top_p) {
                cands.truncate(keep);
            }
        }
        cands.sort_unstable_by(by_logit_desc);

        // Probabilities relative to the best candidate.
        let max = cands[0].1;
        let mut probs: Vec<f64> = cands.iter().map(|c| f64::from(c.1 - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);

        let mut n = probs.len();
        if p.min_p > 0.0 {
            let floor = f64::from(p.min_p) * probs[0];
            n = probs.iter().take_while(|&&x| x >= floor).count().max(1);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut cut = n;
            for (i, x) in probs[..n].iter().enumerate() {
                acc += x;
                if acc >= f64::from(p.top_p) {
                    cut = i + 1;
                    break;
                }
            }
            n = cut;
        }
        let mass: f64 = probs[..n].iter().sum();
        let mut r = self.rng.next_f64() * mass;
        for (i, x) in probs[..n].iter().enumerate() {
            r -= x;
            if r < 0.0 {
                return cands[i].0;
            }
        }
        cands[n - 1].0
    }

    fn penalize(&self, logits: &mut [f32], history: &[u32]) {
        let penalty = self.params.repeat_penalty;
        if penalty == 1.0 || self.params.repeat_last_n == 0 {
            return;
        }
        let start = history.len().saturating_sub(self.params.repeat_last_n);
        let mut seen: Vec<u32> = history[start..].to_vec();
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

/// Share of the softmax mass in `cands[..k]` (the rest follows it).
fn softmax_mass(cands: &[(u32, f32)], k: usize) -> f64 {
    let max = cands[..k]
        .iter()
        .map(|c| c.1)
        .fold(f32::NEG_INFINITY, f32::max);
    let head: f64 = cands[..k].iter().map(|c| f64::from(c.1 - max).exp()).sum();
    let tail: f64 = cands[k..].iter().map(|c| f64::from(c.1 - max).exp()).sum();
    head / (head + tail)
}

/// Index of the largest value (the first one on ties; NaN never wins).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in xs.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..5000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        let mut l = vec![0.1, 3.0, -1.0, 2.9];
        assert_eq!(s.sample(&mut l, &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.5,
                top_p: 1.0,
                seed,
                ..Default::default()
            });
            (0..50)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_and_min_p_restrict_choices() {
        let mut l = vec![0.0f32; 100];
        l[10] = 5.0;
        l[20] = 4.9;
        l[30] = 1.0;
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            ..Default::default()
        });
        for _ in 0..200 {
            let t = s.sample(&mut l.clone(), &[]);
            assert!(t == 10 || t == 20, "{t}");
        }
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            min_p: 0.5,
            ..Default::default()
        });
        for _ in 0..200 {
            let t = s.sample(&mut l.clone(), &[]);
            assert!(t == 10 || t == 20, "{t}");
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let mut l = vec![-10.0f32; 3000];
        l[1] = 10.0; // ~all the mass
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        });
        for _ in 0..100 {
            assert_eq!(s.sample(&mut l.clone(), &[]), 1);
        }
    }

    #[test]
    fn repetition_penalty_changes_the_winner() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            repeat_penalty: 2.0,
            ..Default::default()
        });
        let mut l = vec![3.0, 2.0];
        assert_eq!(s.sample(&mut l, &[0]), 1);
    }

    #[test]
    fn nan_logits_do_not_panic() {
        let mut s = Sampler::new(SamplingParams::default());
        let mut l = vec![f32::NAN; 10];
        let _ = s.sample(&mut l, &[]);
        let mut l = vec![f32::NAN, 1.0, 2.0];
        assert!(s.sample(&mut l, &[]) < 3);
    }
}
