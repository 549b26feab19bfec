//! The sampler: logits in, token id out.

use std::fmt;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::SamplerConfig;
use crate::error::{Result, SamplerError};
use crate::penalties::PenaltyHistory;
use crate::select::{self, best_first, block_sum, Candidate};
use foehn_kernels::vecops::exp;

/// Width of the blocks whose `f32` partial sums are added into an `f64` total:
/// accurate, and the inner sums vectorize.
const SUM_BLOCK: usize = 64;

/// Picks tokens from logits with llama.cpp's default chain: logit bias →
/// penalties → top-k → top-p → min-p → temperature → draw.
///
/// Buffers are sized once in [`Sampler::new`], so sampling allocates nothing.
/// The random generator is ChaCha8 seeded from [`SamplerConfig::seed`]: the same
/// seed, config and logits give the same tokens on every machine.
#[derive(Clone)]
pub struct Sampler {
    config: SamplerConfig,
    vocab_size: usize,
    seed: u64,
    rng: ChaCha8Rng,
    penalties: PenaltyHistory,
    /// The support of the last sample's final distribution.
    candidates: Vec<Candidate>,
    /// exp((logit − max) / temperature) of each candidate.
    weights: Vec<f32>,
    /// Whether `candidates` is sorted best first.
    sorted: bool,
    /// The last distribution: logprob = (logit − max) × inv_temp − log_z.
    max: f32,
    inv_temp: f32,
    log_z: f32,
}

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler")
            .field("config", &self.config)
            .field("vocab_size", &self.vocab_size)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// A sampler for logit vectors of `vocab_size` entries.
    ///
    /// Fails if a setting is out of range, a logit bias names a token outside
    /// the vocabulary, or `vocab_size` is 0 or above 2³².
    pub fn new(config: SamplerConfig, vocab_size: usize) -> Result<Self> {
        config.validate()?;
        if vocab_size == 0 || vocab_size as u64 > 1 << 32 {
            return Err(SamplerError::InvalidVocabSize(vocab_size));
        }
        if let Some(&(token, _)) = config
            .logit_bias
            .iter()
            .find(|(t, _)| *t as usize >= vocab_size)
        {
            return Err(SamplerError::BiasTokenOutOfRange { token, vocab_size });
        }
        let seed = config.seed.unwrap_or_else(rand::random);
        let penalties = PenaltyHistory::new(
            vocab_size,
            config.penalty_last_n,
            config.repeat_penalty,
            config.frequency_penalty,
            config.presence_penalty,
        );
        let capacity = match config.top_k {
            _ if config.is_greedy() => 1,
            k if k > 0 && k < vocab_size => (2 * k + 64).min(vocab_size),
            _ => vocab_size,
        };
        Ok(Self {
            config,
            vocab_size,
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            penalties,
            candidates: Vec::with_capacity(capacity),
            weights: Vec::with_capacity(capacity),
            sorted: true,
            max: 0.0,
            inv_temp: 1.0,
            log_z: 0.0,
        })
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// The number of logits [`sample`](Self::sample) expects.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The seed in use: the configured one, or the random one drawn when the
    /// config had none (log it to reproduce a run).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Records a token for the penalties: call it for each generated token
    /// (and for prompt tokens, if they should be penalized too). Ids outside
    /// the vocabulary are ignored.
    pub fn accept(&mut self, token: u32) {
        self.penalties.accept(token);
    }

    /// Forgets the accepted tokens and restarts the random generator from the
    /// seed, so the next samples repeat those of a fresh sampler.
    pub fn reset(&mut self) {
        self.penalties.clear();
        self.rng = ChaCha8Rng::seed_from_u64(self.seed);
        self.candidates.clear();
    }

    /// Picks the next token.
    ///
    /// `logits` are modified in place (bias and penalties are added). At
    /// temperature 0 this is the argmax, lowest id on ties, and draws no random
    /// number; otherwise exactly one is drawn. Tokens whose logit is NaN or
    /// -inf are never picked, unless every token is, in which case the result
    /// is token 0.
    ///
    /// # Panics
    /// If `logits.len()` is not the vocabulary size given to [`Sampler::new`].
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.sample_with_logprob(logits).0
    }

    /// Like [`sample`](Self::sample), also returning the token's
    /// log-probability under the final distribution (after truncation and
    /// temperature; 0 at temperature 0, whose distribution is the argmax alone).
    ///
    /// # Panics
    /// If `logits.len()` is not the vocabulary size given to [`Sampler::new`].
    pub fn sample_with_logprob(&mut self, logits: &mut [f32]) -> (u32, f32) {
        assert_eq!(
            logits.len(),
            self.vocab_size,
            "logits length must equal the sampler's vocabulary size"
        );
        for &(token, bias) in &self.config.logit_bias {
            logits[token as usize] += bias;
        }
        self.penalties.apply(logits);
        if !self.config.is_greedy() {
            self.truncate(logits);
            if !self.candidates.is_empty() {
                return self.draw();
            }
        }
        self.point_mass(select::argmax(logits) as u32)
    }

    /// The `k` most likely tokens of the last sample's final distribution,
    /// most likely first, with their log-probabilities (fewer if the
    /// distribution has fewer tokens; empty before the first sample).
    pub fn top_logprobs(&self, k: usize) -> Vec<(u32, f32)> {
        let logprob = |c: &Candidate| (c.id, (c.logit - self.max) * self.inv_temp - self.log_z);
        if self.sorted {
            return self.candidates.iter().take(k).map(logprob).collect();
        }
        let mut best = self.candidates.clone();
        if k == 0 {
            return Vec::new();
        }
        if k < best.len() {
            best.select_nth_unstable_by(k - 1, best_first);
            best.truncate(k);
        }
        best.sort_unstable_by(best_first);
        best.iter().map(logprob).collect()
    }

    /// Makes `token` the whole final distribution.
    fn point_mass(&mut self, token: u32) -> (u32, f32) {
        self.candidates.clear();
        self.candidates.push(Candidate {
            id: token,
            logit: 0.0,
        });
        self.sorted = true;
        (self.max, self.inv_temp, self.log_z) = (0.0, 1.0, 0.0);
        (token, 0.0)
    }

    /// Fills `candidates` with what survives top-k, top-p and min-p.
    fn truncate(&mut self, logits: &[f32]) {
        let (top_k, top_p, min_p) = (self.config.top_k, self.config.top_p, self.config.min_p);
        let n = logits.len();
        let cands = &mut self.candidates;
        self.sorted = true;
        if top_k > 0 && top_k < n {
            select::top_k(logits, top_k, cands);
            let Some(first) = cands.first() else { return };
            if first.logit == f32::INFINITY {
                keep_infinite(cands);
                return;
            }
            let max = first.logit;
            let z = if top_p < 1.0 {
                cands.iter().map(|c| f64::from(exp(c.logit - max))).sum()
            } else {
                0.0
            };
            select::cut_sorted(cands, z, top_p, min_p);
            return;
        }
        let max = select::max_logit(logits);
        if max == f32::NEG_INFINITY {
            cands.clear();
            return;
        }
        if max == f32::INFINITY {
            select::at_least(logits, f32::INFINITY, cands);
            keep_infinite(cands);
            return;
        }
        let min_p_floor = if min_p > 0.0 {
            max + min_p.ln()
        } else {
            f32::NEG_INFINITY
        };
        if top_p >= 1.0 {
            select::at_least(logits, min_p_floor, cands);
            self.sorted = false;
            return;
        }
        select::top_p_unsorted(logits, max, top_p, min_p_floor, cands);
        self.sorted = false;
    }

    /// Applies the temperature and draws one of `candidates` (non-empty).
    fn draw(&mut self) -> (u32, f32) {
        let cands = &self.candidates;
        let max = if self.sorted {
            cands[0].logit
        } else {
            cands.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.logit))
        };
        // Capped so that a subnormal temperature gives 0 × MAX, not 0 × inf = NaN.
        let inv_temp = (1.0 / self.config.temperature).min(f32::MAX);
        self.weights.clear();
        self.weights.resize(cands.len(), 0.0);
        for (w, c) in self.weights.iter_mut().zip(cands) {
            *w = exp((c.logit - max) * inv_temp);
        }
        let z: f64 = self.weights.chunks(SUM_BLOCK).map(block_sum).sum();
        let target = unit_f64(&mut self.rng) * z;
        let chosen = pick(&self.weights, target);
        let logprob = (cands[chosen].logit - max) * inv_temp - z.ln() as f32;
        (self.max, self.inv_temp, self.log_z) = (max, inv_temp, z.ln() as f32);
        (cands[chosen].id, logprob)
    }
}

/// Keeps only the +inf candidates, as equally likely.
fn keep_infinite(cands: &mut Vec<Candidate>) {
    cands.retain(|c| c.logit == f32::INFINITY);
    cands.iter_mut().for_each(|c| c.logit = 0.0);
}

/// The index where the running sum of `weights` first exceeds `target`
/// (0 ≤ target < Σ weights), summed block by block exactly as the total was.
fn pick(weights: &[f32], target: f64) -> usize {
    let mut cum = 0.0f64;
    let mut last_positive = 0;
    for (b, block) in weights.chunks(SUM_BLOCK).enumerate() {
        let next = cum + block_sum(block);
        if next > target {
            let mut inner = cum;
            for (j, &w) in block.iter().enumerate() {
                inner += f64::from(w);
                if w > 0.0 {
                    last_positive = b * SUM_BLOCK + j;
                    if inner > target {
                        return last_positive;
                    }
                }
            }
            // Rounding inside the block: the last token with weight wins.
            return last_positive;
        }
        if let Some(j) = block.iter().rposition(|&w| w > 0.0) {
            last_positive = b * SUM_BLOCK + j;
        }
        cum = next;
    }
    last_positive
}

/// A uniform number in [0, 1) with 53 random bits.
fn unit_f64(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::Rng;

    fn sampler(config: SamplerConfig, vocab: usize) -> Sampler {
        Sampler::new(config, vocab).unwrap()
    }

    /// Plain sampling at temperature 1 with no truncation.
    fn plain(seed: u64) -> SamplerConfig {
        SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            ..SamplerConfig::default()
        }
    }

    /// Normal-ish random logits scaled by `scale`, a few quantized to create
    /// ties, a few forbidden.
    fn random_logits(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let x: f32 = (0..4).map(|_| rng.gen::<f32>() - 0.5).sum::<f32>() * scale * 1.7;
                match rng.gen_range(0..20) {
                    0 => (x * 2.0).round() / 2.0,
                    1 if n > 4 => f32::NEG_INFINITY,
                    _ => x,
                }
            })
            .collect()
    }

    /// The truncation by brute force: sort everything, then cut.
    fn reference(logits: &[f32], top_k: usize, top_p: f32, min_p: f32) -> Vec<u32> {
        let mut all: Vec<Candidate> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| **l > f32::NEG_INFINITY)
            .map(|(i, &logit)| Candidate {
                id: i as u32,
                logit,
            })
            .collect();
        all.sort_by(best_first);
        if top_k > 0 && top_k < logits.len() {
            all.truncate(top_k);
        }
        if all.is_empty() {
            return vec![];
        }
        let max = all[0].logit;
        // Same exp and comparison as the sampler, so only the selection logic differs.
        let weights: Vec<f64> = all.iter().map(|c| f64::from(exp(c.logit - max))).collect();
        let z: f64 = weights.iter().sum();
        let mut keep = all.len();
        if top_p < 1.0 {
            let mut cum = 0.0;
            for (i, w) in weights.iter().enumerate() {
                cum += w;
                if cum >= f64::from(top_p) * z {
                    keep = i + 1;
                    break;
                }
            }
        }
        if min_p > 0.0 {
            keep = all[..keep]
                .iter()
                .take_while(|c| c.logit >= max + min_p.ln())
                .count()
                .max(1);
        }
        all.truncate(keep);
        all.iter().map(|c| c.id).collect()
    }

    #[test]
    fn truncation_keeps_exactly_the_reference_set() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut checked = 0;
        for &n in &[1usize, 2, 7, 97, 1001, 4099] {
            for &scale in &[0.5f32, 2.0, 6.0] {
                let logits = random_logits(&mut rng, n, scale);
                for &top_k in &[0, 1, 5, 40, n.saturating_sub(1), n, n + 3] {
                    for &top_p in &[1.0f32, 0.3, 0.9, 0.95, 0.999] {
                        for &min_p in &[0.0f32, 0.05, 0.3] {
                            let config = SamplerConfig {
                                top_k,
                                top_p,
                                min_p,
                                ..plain(0)
                            };
                            let mut s = sampler(config, n);
                            s.truncate(&logits);
                            let mut got: Vec<u32> = s.candidates.iter().map(|c| c.id).collect();
                            let mut want = reference(&logits, top_k, top_p, min_p);
                            if !s.sorted {
                                got.sort_unstable();
                                want.sort_unstable();
                            }
                            assert_eq!(
                                got, want,
                                "n {n}, scale {scale}, top_k {top_k}, top_p {top_p}, min_p {min_p}"
                            );
                            checked += usize::from(got.len() > 1);
                        }
                    }
                }
            }
        }
        assert!(checked > 500, "too few non-trivial cases: {checked}");
    }

    #[test]
    fn greedy_is_argmax_with_ties_to_the_lowest_id_and_no_randomness() {
        let mut s = sampler(SamplerConfig::greedy(), 6);
        let rng = s.rng.clone();
        assert_eq!(s.sample(&mut [0.1, 2.0, -1.0, 2.0, 1.9, 0.0]), 1);
        assert_eq!(
            s.sample(&mut [f32::NAN, -5.0, -3.0, f32::NAN, -3.0, -4.0]),
            2
        );
        // Temperature 0 with truncation settings on is greedy too.
        let mut t = sampler(
            SamplerConfig {
                temperature: 0.0,
                ..SamplerConfig::default()
            },
            6,
        );
        assert_eq!(t.sample(&mut [0.0, 0.0, 3.0, 3.0, 0.0, 0.0]), 2);
        assert_eq!(s.rng, rng);
        // A vanishing temperature is greedy too, ties shared.
        let mut tiny = sampler(
            SamplerConfig {
                temperature: 1e-40,
                ..plain(1)
            },
            6,
        );
        for _ in 0..20 {
            let (t, lp) = tiny.sample_with_logprob(&mut [0.0, 0.0, 3.0, 3.0, 0.0, 1.0]);
            assert!(t == 2 || t == 3, "{t}");
            assert_eq!(lp, 0.5f32.ln());
        }
        assert_eq!(
            s.sample_with_logprob(&mut [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
            (1, 0.0)
        );
        assert_eq!(s.top_logprobs(3), [(1, 0.0)]);
    }

    #[test]
    fn logit_bias_forces_and_forbids() {
        let mut rng = StdRng::seed_from_u64(2);
        let logits = random_logits(&mut rng, 500, 2.0);
        let force = SamplerConfig {
            logit_bias: vec![(321, 100.0)],
            seed: Some(3),
            ..SamplerConfig::default()
        };
        let mut s = sampler(force, 500);
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits.clone()), 321);
        }
        let best = select::argmax(&logits) as u32;
        let forbid = SamplerConfig {
            logit_bias: vec![(best, f32::NEG_INFINITY)],
            ..SamplerConfig::greedy()
        };
        let mut s = sampler(forbid, 500);
        assert_ne!(s.sample(&mut logits.clone()), best);
        // Forbidding all but two tokens at high temperature.
        let bias: Vec<(u32, f32)> = (0..500)
            .filter(|t| *t != 10 && *t != 20)
            .map(|t| (t, f32::NEG_INFINITY))
            .collect();
        let mut s = sampler(
            SamplerConfig {
                logit_bias: bias,
                temperature: 5.0,
                ..plain(4)
            },
            500,
        );
        let mut seen = [0; 2];
        for _ in 0..200 {
            match s.sample(&mut logits.clone()) {
                10 => seen[0] += 1,
                20 => seen[1] += 1,
                t => panic!("forbidden token {t} drawn"),
            }
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
    }

    #[test]
    fn penalties_change_the_logits_as_specified() {
        let config = SamplerConfig {
            repeat_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 1.0,
            penalty_last_n: 3,
            logit_bias: vec![(0, 1.0)],
            ..SamplerConfig::greedy()
        };
        let mut s = sampler(config, 5);
        for t in [4, 1, 3, 3] {
            s.accept(t); // window: [1, 3, 3]
        }
        let mut logits = [1.0, 6.0, 0.5, -2.0, 5.0];
        assert_eq!(s.sample(&mut logits), 4);
        // 0: +1 bias; 1: 6/2 - 0.5 - 1; 3: -2*2 - 2*0.5 - 1; 4 has left the window.
        assert_eq!(logits, [2.0, 1.5, 0.5, -6.0, 5.0]);
        s.accept(4);
        s.accept(4); // window: [3, 4, 4]
        let mut logits = [1.0, 6.0, 0.5, -2.0, 5.0];
        assert_eq!(s.sample(&mut logits), 1);
        assert_eq!(logits[4], 5.0 / 2.0 - 1.0 - 1.0);
        s.reset();
        let mut logits = [1.0, 6.0, 0.5, -2.0, 5.0];
        s.sample(&mut logits);
        assert_eq!(logits, [2.0, 6.0, 0.5, -2.0, 5.0]);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_different_tokens() {
        let mut rng = StdRng::seed_from_u64(5);
        let steps: Vec<Vec<f32>> = (0..64)
            .map(|_| random_logits(&mut rng, 1000, 1.0))
            .collect();
        let run = |config: SamplerConfig| -> Vec<u32> {
            let mut s = sampler(config, 1000);
            steps
                .iter()
                .map(|l| {
                    let t = s.sample(&mut l.clone());
                    s.accept(t);
                    t
                })
                .collect()
        };
        for config in [
            plain(42),
            SamplerConfig {
                seed: Some(42),
                ..SamplerConfig::default()
            },
        ] {
            let a = run(config.clone());
            assert_eq!(a, run(config.clone()));
            let b = run(SamplerConfig {
                seed: Some(43),
                ..config.clone()
            });
            assert_ne!(a, b);
            assert!(a.iter().zip(&b).filter(|(x, y)| x != y).count() > 32);
        }
        // reset replays the stream.
        let mut s = sampler(plain(9), 1000);
        let first: Vec<u32> = steps
            .iter()
            .take(8)
            .map(|l| s.sample(&mut l.clone()))
            .collect();
        s.reset();
        let again: Vec<u32> = steps
            .iter()
            .take(8)
            .map(|l| s.sample(&mut l.clone()))
            .collect();
        assert_eq!(first, again);
        // No seed: a random one, reported.
        let a = sampler(SamplerConfig::default(), 10).seed();
        let b = sampler(SamplerConfig::default(), 10).seed();
        assert_ne!(a, b);
    }

    #[test]
    fn draws_follow_the_final_distribution() {
        let probs = [0.5f32, 0.3, 0.15, 0.05];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let count = |config: SamplerConfig| {
            let mut s = sampler(config, 4);
            let mut counts = [0usize; 4];
            for _ in 0..40_000 {
                counts[s.sample(&mut logits.clone()) as usize] += 1;
            }
            counts.map(|c| c as f32 / 40_000.0)
        };
        let close = |got: [f32; 4], want: [f32; 4]| {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 0.012, "got {got:?}, want {want:?}");
            }
        };
        close(count(plain(1)), probs);
        // top-k 2 renormalizes over the two survivors.
        close(
            count(SamplerConfig {
                top_k: 2,
                ..plain(2)
            }),
            [0.625, 0.375, 0.0, 0.0],
        );
        // Temperature 0.5 squares the probabilities (then renormalizes).
        let sq: f32 = probs.iter().map(|p| p * p).sum();
        close(
            count(SamplerConfig {
                temperature: 0.5,
                ..plain(3)
            }),
            probs.map(|p| p * p / sq),
        );
    }

    #[test]
    fn logprobs_describe_the_final_distribution() {
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        let mut s = sampler(plain(1), 4);
        for _ in 0..20 {
            let (t, lp) = s.sample_with_logprob(&mut logits.clone());
            assert!((lp - logits[t as usize]).abs() < 1e-5, "token {t}: {lp}");
        }
        let top = s.top_logprobs(2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1]);
        assert!((top[1].1 - 0.3f32.ln()).abs() < 1e-5);
        let mut s = sampler(
            SamplerConfig {
                top_p: 0.75,
                ..plain(1)
            },
            4,
        );
        let (t, lp) = s.sample_with_logprob(&mut logits.clone());
        assert!((lp - (logits[t as usize] - 0.8f32.ln())).abs() < 1e-5);
        let top = s.top_logprobs(10);
        assert_eq!(top.len(), 2);
        let total: f32 = top.iter().map(|t| t.1.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!(s.top_logprobs(0).is_empty());
    }

    #[test]
    fn forbidden_nan_and_infinite_logits() {
        let mut s = sampler(plain(1), 4);
        let all_forbidden = [
            f32::NEG_INFINITY,
            f32::NAN,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
        ];
        assert_eq!(s.sample(&mut all_forbidden.clone()), 0);
        for _ in 0..50 {
            assert_eq!(
                s.sample(&mut [f32::NAN, 0.0, f32::NAN, f32::NEG_INFINITY]),
                1
            );
            assert_eq!(s.sample(&mut [1.0, 2.0, f32::INFINITY, 3.0]), 2);
        }
        let mut k = sampler(
            SamplerConfig {
                top_k: 2,
                ..plain(1)
            },
            4,
        );
        assert_eq!(
            k.sample_with_logprob(&mut [1.0, f32::INFINITY, f32::INFINITY, 3.0])
                .1,
            0.5f32.ln()
        );
    }

    #[test]
    fn bad_vocabulary_or_bias_is_refused() {
        assert_eq!(
            Sampler::new(SamplerConfig::default(), 0).unwrap_err(),
            SamplerError::InvalidVocabSize(0)
        );
        let config = SamplerConfig {
            logit_bias: vec![(10, 1.0)],
            ..SamplerConfig::default()
        };
        assert_eq!(
            Sampler::new(config.clone(), 10).unwrap_err(),
            SamplerError::BiasTokenOutOfRange {
                token: 10,
                vocab_size: 10
            }
        );
        assert!(Sampler::new(config, 11).is_ok());
        let bad = SamplerConfig {
            top_p: 2.0,
            ..SamplerConfig::default()
        };
        assert!(matches!(
            Sampler::new(bad, 10),
            Err(SamplerError::InvalidSetting { name: "top_p", .. })
        ));
    }

    #[test]
    #[should_panic(expected = "vocabulary size")]
    fn wrong_logits_length_panics() {
        sampler(SamplerConfig::default(), 10).sample(&mut [0.0; 9]);
    }

    #[test]
    fn sampling_does_not_reallocate() {
        let mut rng = StdRng::seed_from_u64(6);
        for config in [
            SamplerConfig::default(),
            SamplerConfig {
                top_k: 0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                top_k: 0,
                min_p: 0.0,
                ..SamplerConfig::default()
            },
            plain(1),
            SamplerConfig {
                repeat_penalty: 1.1,
                ..SamplerConfig::default()
            },
        ] {
            let mut s = sampler(config, 4099);
            let (c, w) = (s.candidates.as_ptr(), s.weights.as_ptr());
            for _ in 0..20 {
                let t = s.sample(&mut random_logits(&mut rng, 4099, 0.3));
                s.accept(t);
            }
            assert_eq!((c, w), (s.candidates.as_ptr(), s.weights.as_ptr()));
        }
    }
}
