//! Per-token sampling cost on realistic vocabulary sizes, against the obvious
//! implementation that sorts the whole vocabulary (the baseline lives only here).
//!
//! Run: `cargo bench -p foehn-sampler --bench sample`.

// criterion_group! defines undocumented public functions.
#![allow(missing_docs)]

use std::cmp::Ordering;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use foehn_sampler::{Sampler, SamplerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VOCABS: [usize; 2] = [32_768, 131_072];
/// Distinct logit vectors cycled through, so no run sees the same data twice in a row.
const VARIANTS: usize = 8;

/// Logits shaped like a language model's: a Gaussian bulk (σ = 2) with a
/// handful of strong candidates on top.
fn lm_like_logits(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let mut logits: Vec<f32> = (0..n)
        .map(|_| (0..4).map(|_| rng.gen::<f32>() - 0.5).sum::<f32>() * 2.0 * 1.7)
        .collect();
    for _ in 0..8 {
        let i = rng.gen_range(0..n);
        logits[i] = 8.0 + rng.gen::<f32>() * 6.0;
    }
    logits
}

/// The baseline: copy, sort the whole vocabulary, then cut and draw.
struct FullSort {
    cands: Vec<(u32, f32)>,
    rng: StdRng,
}

impl FullSort {
    fn sample(&mut self, logits: &[f32], c: &SamplerConfig) -> u32 {
        self.cands.clear();
        self.cands
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        self.cands.sort_unstable_by(|a, b| {
            b.1.partial_cmp(&a.1)
                .unwrap_or(Ordering::Equal)
                .then(a.0.cmp(&b.0))
        });
        cut_and_draw(&mut self.cands, c, &mut self.rng)
    }
}

/// Copy everything, `select_nth_unstable_by` for top-k, sort only k: the
/// textbook partial selection (without the sampler's early rejection).
struct SelectNth {
    cands: Vec<(u32, f32)>,
    rng: StdRng,
}

impl SelectNth {
    fn sample(&mut self, logits: &[f32], c: &SamplerConfig) -> u32 {
        let cmp = |a: &(u32, f32), b: &(u32, f32)| {
            b.1.partial_cmp(&a.1)
                .unwrap_or(Ordering::Equal)
                .then(a.0.cmp(&b.0))
        };
        self.cands.clear();
        self.cands
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        self.cands.select_nth_unstable_by(c.top_k - 1, cmp);
        self.cands.truncate(c.top_k);
        self.cands.sort_unstable_by(cmp);
        cut_and_draw(&mut self.cands, c, &mut self.rng)
    }
}

/// top-k, top-p, min-p, temperature and draw on sorted candidates.
fn cut_and_draw(cands: &mut Vec<(u32, f32)>, c: &SamplerConfig, rng: &mut StdRng) -> u32 {
    if c.top_k > 0 {
        cands.truncate(c.top_k);
    }
    let max = cands[0].1;
    let z: f64 = cands.iter().map(|x| f64::from((x.1 - max).exp())).sum();
    let mut keep = cands.len();
    let mut cum = 0.0;
    for (i, x) in cands.iter().enumerate() {
        cum += f64::from((x.1 - max).exp()) / z;
        if cum >= f64::from(c.top_p) {
            keep = i + 1;
            break;
        }
    }
    if c.min_p > 0.0 {
        keep = cands[..keep]
            .iter()
            .take_while(|x| x.1 >= max + c.min_p.ln())
            .count()
            .max(1);
    }
    cands.truncate(keep);
    let weights = cands.iter().map(|x| ((x.1 - max) / c.temperature).exp());
    let total: f32 = weights.clone().sum();
    let mut target = rng.gen::<f32>() * total;
    for (x, w) in cands.iter().zip(weights) {
        target -= w;
        if target < 0.0 {
            return x.0;
        }
    }
    cands[cands.len() - 1].0
}

fn bench(cr: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    let cases = [
        ("greedy", SamplerConfig::greedy()),
        (
            "top_k40",
            SamplerConfig {
                seed: Some(1),
                ..SamplerConfig::default()
            },
        ),
        (
            "top_k0_top_p0.95",
            SamplerConfig {
                top_k: 0,
                min_p: 0.0,
                seed: Some(1),
                ..SamplerConfig::default()
            },
        ),
        (
            "top_k0_top_p0.95_min_p0.05",
            SamplerConfig {
                top_k: 0,
                seed: Some(1),
                ..SamplerConfig::default()
            },
        ),
        (
            "no_truncation",
            SamplerConfig {
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: Some(1),
                ..SamplerConfig::default()
            },
        ),
    ];
    for n in VOCABS {
        let logits: Vec<Vec<f32>> = (0..VARIANTS).map(|_| lm_like_logits(&mut rng, n)).collect();
        let mut group = cr.benchmark_group(format!("vocab_{n}"));
        group
            .sample_size(30)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for (name, config) in &cases {
            let mut sampler = Sampler::new(config.clone(), n).expect("valid config");
            let mut buf = logits[0].clone();
            sampler.sample(&mut buf);
            eprintln!(
                "vocab {n}, {name}: {} tokens survive truncation",
                sampler.top_logprobs(n).len()
            );
            let mut i = 0;
            group.bench_function(BenchmarkId::new("sampler", name), |b| {
                b.iter(|| {
                    i = (i + 1) % VARIANTS;
                    // No bias or penalties are configured, so the logits stay
                    // untouched; the copy keeps the API honest (it takes &mut).
                    buf.copy_from_slice(&logits[i]);
                    black_box(sampler.sample(black_box(&mut buf)))
                })
            });
            if *name == "greedy" || *name == "no_truncation" {
                continue;
            }
            let mut full = FullSort {
                cands: Vec::with_capacity(n),
                rng: StdRng::seed_from_u64(1),
            };
            group.bench_function(BenchmarkId::new("full_sort", name), |b| {
                b.iter(|| {
                    i = (i + 1) % VARIANTS;
                    buf.copy_from_slice(&logits[i]);
                    black_box(full.sample(black_box(&buf), config))
                })
            });
            if config.top_k > 0 {
                let mut nth = SelectNth {
                    cands: Vec::with_capacity(n),
                    rng: StdRng::seed_from_u64(1),
                };
                group.bench_function(BenchmarkId::new("select_nth_copy", name), |b| {
                    b.iter(|| {
                        i = (i + 1) % VARIANTS;
                        buf.copy_from_slice(&logits[i]);
                        black_box(nth.sample(black_box(&buf), config))
                    })
                });
            }
        }
        group.bench_function("memcpy_only", |b| {
            let mut buf = logits[0].clone();
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % VARIANTS;
                buf.copy_from_slice(&logits[i]);
                black_box(&mut buf);
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
