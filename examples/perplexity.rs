//! Perplexity of a text file, like llama.cpp's `llama-perplexity`: the text is
//! cut into windows of `--ctx` tokens; in each, the second half of the tokens
//! is scored given everything before it in the window.
//!
//! With `--kl-kv TYPES` each window also runs with a second KV cache of
//! those types, and the distance of its token distributions from the first
//! (`--kv`) is reported as `llama-perplexity --kl-divergence` does.
//!
//! ```text
//! cargo run --release --example perplexity -- --model model.gguf --file wiki.test.raw --ctx 512
//! cargo run --release --example perplexity -- -m model.gguf -f wiki.test.raw --kv f16 --kl-kv q8_0
//! ```

use anyhow::{bail, Context, Result};
use clap::Parser;
use foehn::model::{KvCacheOptions, KvCacheType, KvTypes, LogitsMode};
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
    /// KV cache type of keys and values: f16, f32, q8_0 or q4_0.
    #[arg(long, default_value = "f16")]
    kv: KvCacheType,
    /// KV cache type of the keys alone, overriding --kv (llama.cpp's -ctk).
    #[arg(long, value_name = "TYPE")]
    kv_k: Option<KvCacheType>,
    /// KV cache type of the values alone, overriding --kv (llama.cpp's -ctv).
    #[arg(long, value_name = "TYPE")]
    kv_v: Option<KvCacheType>,
    /// Also run every window with a KV cache of these types (`q8_0`, or `k=q8_0,v=f16`) and report the KL divergence of its token distributions from the --kv cache's, as llama-perplexity --kl-divergence.
    #[arg(long, value_name = "TYPES")]
    kl_kv: Option<KvTypes>,
}

/// Distances between the token distributions of two runs, as
/// llama-perplexity's `--kl-divergence` reports them.
#[derive(Default)]
struct Divergence {
    /// KL(base ‖ other) of every scored position.
    kld: Vec<f64>,
    /// Positions whose top token is the same in both.
    same_top: usize,
    /// Largest |Δ log p| of any token at any scored position.
    max_dlogp: f64,
}

impl Divergence {
    /// Adds one position's logits of both runs.
    fn add(&mut self, base: &[f32], other: &[f32]) {
        let (lb, lo) = (log_softmax(base), log_softmax(other));
        let kld = lb
            .iter()
            .zip(&lo)
            .map(|(b, o)| b.exp() * (b - o))
            .sum::<f64>();
        self.kld.push(kld.max(0.0));
        let top = |x: &[f64]| (0..x.len()).fold(0, |best, i| if x[i] > x[best] { i } else { best });
        self.same_top += usize::from(top(&lb) == top(&lo));
        for (b, o) in lb.iter().zip(&lo) {
            self.max_dlogp = self.max_dlogp.max((b - o).abs());
        }
    }

    fn report(&mut self, types: KvTypes) {
        let n = self.kld.len().max(1) as f64;
        self.kld.sort_by(f64::total_cmp);
        let mean = self.kld.iter().sum::<f64>() / n;
        let q999 = self.kld[((self.kld.len() as f64 * 0.999) as usize).min(self.kld.len() - 1)];
        println!(
            "KL divergence of kv {types} from the --kv cache over {} positions:",
            self.kld.len()
        );
        println!("Mean    KLD: {mean:10.6}");
        println!("Maximum KLD: {:10.6}", self.kld.last().unwrap_or(&0.0));
        println!("99.9%   KLD: {q999:10.6}");
        println!("Same top p : {:7.3} %", 100.0 * self.same_top as f64 / n);
        println!("Max |Δlogp|: {:10.6}", self.max_dlogp);
    }
}

/// `x − ln Σ eˣ`, in f64.
fn log_softmax(x: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(x);
    x.iter().map(|&v| v as f64 - lse).collect()
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
        types: KvTypes {
            k: args.kv_k.unwrap_or(args.kv),
            v: args.kv_v.unwrap_or(args.kv),
        },
        ..KvCacheOptions::default()
    };
    let mut cache = transformer.new_cache(opts)?;
    let mut scratch = transformer.new_scratch(&cache);
    // The second run of --kl-kv: its own cache and work buffers.
    let mut other = match args.kl_kv {
        Some(types) => {
            let c = transformer.new_cache(KvCacheOptions { types, ..opts })?;
            let s = transformer.new_scratch(&c);
            Some((c, s, Divergence::default()))
        }
        None => None,
    };
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
        if let Some((c, _, _)) = &mut other {
            c.clear();
        }
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
            if let Some((c, s, div)) = &mut other {
                let theirs = transformer.forward(&window[pos..end], c, s, LogitsMode::All)?;
                let rows = logits.chunks_exact(vocab).zip(theirs.chunks_exact(vocab));
                for (i, (a, b)) in rows.enumerate() {
                    let p = pos + i;
                    if p + 1 < ctx && p >= first_scored - 1 {
                        div.add(a, b);
                    }
                }
            }
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
    if let (Some((_, _, div)), Some(types)) = (&mut other, args.kl_kv) {
        div.report(types);
    }
    Ok(())
}
