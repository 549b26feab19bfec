//! One decode step (a single token through `Transformer::forward`, last-position
//! logits) of the tiny-mistral fixture in several weight types, and of any
//! GGUF named by `FOEHN_BENCH_MODEL` (e.g. SmolLM2-135M Q4_1).
//!
//! ```text
//! cargo bench --bench decode -- --quick
//! FOEHN_BENCH_MODEL=SmolLM2-135M-Instruct.Q4_1.gguf cargo bench --bench decode
//! ```
//!
//! The cache holds 16 prompt tokens plus the steps run so far; it is refilled
//! (untimed) before it reaches its 256-token context, so every step attends to
//! between 16 and 256 keys (at most the model's window).

// criterion_group! defines undocumented public functions.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use foehn::loader::gguf::GgufFile;
use foehn::model::{KvCacheOptions, KvCacheType, LogitsMode, Transformer};

const CTX: usize = 256;
const PROMPT: usize = 16;

fn models() -> Vec<(String, PathBuf)> {
    let dir = foehn_testkit::fixture("tiny-mistral/gguf");
    let mut v: Vec<(String, PathBuf)> = ["F32", "Q8_0", "Q4_0", "Q4_K_M"]
        .iter()
        .map(|t| {
            (
                format!("tiny-mistral-{t}"),
                dir.join(format!("tiny-mistral-{t}.gguf")),
            )
        })
        .collect();
    if let Some(p) = std::env::var_os("FOEHN_BENCH_MODEL") {
        let p = PathBuf::from(p);
        let name = p
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned());
        v.push((name, p));
    }
    v
}

fn decode_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_step");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(1)); // tokens
    for (name, path) in models() {
        let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let model = Transformer::from_gguf(Arc::new(file)).expect("model");
        let opts = KvCacheOptions {
            ctx_len: Some(CTX),
            types: KvCacheType::F16.into(),
            max_chunk: PROMPT,
        };
        let mut cache = model.new_cache(opts).expect("cache");
        let mut scratch = model.new_scratch(&cache);
        let vocab = model.config().vocab_size as u32;
        let prompt: Vec<u32> = (0..PROMPT as u32)
            .map(|i| (i * 7919 + 13) % vocab)
            .collect();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut token = 1;
                for i in 0..iters {
                    if i == 0 || cache.position() + 1 >= CTX {
                        cache.clear();
                        model
                            .prefill(&prompt, &mut cache, &mut scratch)
                            .expect("prefill");
                    }
                    let t = Instant::now();
                    let logits = model
                        .forward(&[token], &mut cache, &mut scratch, LogitsMode::Last)
                        .expect("step");
                    total += t.elapsed();
                    std::hint::black_box(logits);
                    token = (token * 31 + 7) % vocab;
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode_step);
criterion_main!(benches);
