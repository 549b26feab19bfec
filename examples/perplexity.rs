//! Perplexity of a text file, like llama.cpp's `llama-perplexity`: the text is
//! cut into windows of `--ctx` tokens; in each, the second half of the tokens
//! is scored given everything before it in the window.
//!
//! ```text
//! cargo run --release --example perplexity -- --model model.gguf --file wiki.test.raw --ctx 512
//! ```

use anyhow::{bail, Context, Result};
use clap::Parser;
use foehn::model::{KvCacheOptions, KvCacheType, LogitsMode};
use foehn::{EncodeOptions, LoadOptions, LocalModel};

/// Perplexity of a text file.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Model: a GGUF path, a safetensors directory, a catalog id or hf://owner/repo/file.gguf (default: the default model).
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// The text file.
    #[arg(long, short = 'f')]
    file: std::path::PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Score at most this many windows (default: all).
    #[arg(long)]
    chunks: Option<usize>,
    /// Worker threads (default: available cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `ln Σ exp(x)` computed stably.
fn log_sum_exp(xs: &[f32]) -> f64 {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + xs.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln()
}

fn run(args: Args) -> Result<()> {
    if args.ctx < 4 {
        bail!("--ctx must be at least 4");
    }
    let model = LocalModel::load(
        args.model.as_deref(),
        LoadOptions {
            threads: args.threads,
            ..LoadOptions::default()
        },
    )?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let tokenizer = model.tokenizer();
    let tokens = tokenizer.encode(
        &text,
        EncodeOptions {
            add_bos: Some(false),
            parse_special: false,
        },
    )?;
    let ctx = args.ctx;
    let mut windows = tokens.len() / ctx;
    if let Some(n) = args.chunks {
        windows = windows.min(n);
    }
    if windows == 0 {
        bail!(
            "the file has {} tokens, fewer than one window of {ctx}",
            tokens.len()
        );
    }
    let transformer = model
        .cpu_transformer()
        .context("perplexity runs on the CPU backend")?;
    let vocab = transformer.config().vocab_size;
    let opts = KvCacheOptions {
        ctx_len: Some(ctx),
        dtype: KvCacheType::F16,
        ..KvCacheOptions::default()
    };
    let mut cache = transformer.new_cache(opts)?;
    let mut scratch = transformer.new_scratch(&cache);
    // Sub-chunks of 128 keep the all-positions logits buffer small (128 × vocab).
    let step = cache.max_chunk().clamp(1, 128);
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    eprintln!("{} tokens, {windows} windows of {ctx}", tokens.len());
    for w in 0..windows {
        let mut window = tokens[w * ctx..(w + 1) * ctx].to_vec();
        // As llama-perplexity: each window starts with BOS when the model uses one.
        if let (true, Some(bos)) = (tokenizer.add_bos(), tokenizer.bos_id()) {
            window[0] = bos;
        }
        cache.clear();
        let first_scored = ctx / 2;
        let mut pos = 0;
        while pos < ctx {
            let end = (pos + step).min(ctx);
            let logits = transformer.forward(
                &window[pos..end],
                &mut cache,
                &mut scratch,
                LogitsMode::All,
            )?;
            for (i, row) in logits.chunks_exact(vocab).enumerate() {
                let p = pos + i; // row p predicts token p + 1
                if p + 1 < ctx && p >= first_scored - 1 {
                    let target = window[p + 1] as usize;
                    let loss = log_sum_exp(row) - row[target] as f64;
                    nll += loss;
                    nll2 += loss * loss;
                    count += 1;
                }
            }
            pos = end;
        }
        print!("[{}]{:.4},", w + 1, (nll / count as f64).exp());
        use std::io::Write;
        std::io::stdout().flush()?;
    }
    let mean = nll / count as f64;
    let var = (nll2 / count as f64 - mean * mean).max(0.0);
    let ppl = mean.exp();
    // Uncertainty of exp(mean) from the standard error of the mean loss.
    let err = ppl * (var / (count as f64 - 1.0).max(1.0)).sqrt();
    println!("\nFinal estimate: PPL = {ppl:.4} +/- {err:.5}");
    Ok(())
}
