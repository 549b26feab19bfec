//! Generate text with a local model.
//!
//! ```text
//! cargo run --release --example generate -- --prompt "Why is the sky blue?"
//! cargo run --release --example generate -- --model model.gguf --raw --prompt "Once upon a time" -n 64
//! cargo run --release --example generate -- --prompt-ids 1,415,2936 --force-ids 9,10 --top-logits 5 --json
//! ```

use std::io::{Read, Write};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use foehn::engine::{top_k, Backend, CandleDevice};
use foehn::model::KvCacheType;
use foehn::{CancelToken, Event, GenerateRequest, LoadOptions, LocalModel, Message, Prompt, Role};

/// Generate text with a local model.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Model: a GGUF path, a safetensors directory, a catalog id or hf://owner/repo/file.gguf (default: the default model).
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// The prompt (default: read standard input).
    #[arg(long, short = 'p')]
    prompt: Option<String>,
    /// Use the prompt as raw text, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Raw token ids, comma-separated: no template, no tokenizer.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["prompt", "raw"])]
    prompt_ids: Option<Vec<u32>>,
    /// Teacher forcing: feed these ids after the prompt instead of sampling (reports their logits with --top-logits).
    #[arg(long, value_delimiter = ',')]
    force_ids: Option<Vec<u32>>,
    /// Tokens to generate at most.
    #[arg(short = 'n', long, default_value_t = 256)]
    max_tokens: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long)]
    temp: Option<f32>,
    /// Top-k (0 = off).
    #[arg(long)]
    top_k: Option<u32>,
    /// Top-p (1 = off).
    #[arg(long)]
    top_p: Option<f32>,
    /// Min-p (0 = off).
    #[arg(long)]
    min_p: Option<f32>,
    /// Repetition penalty (1 = off).
    #[arg(long)]
    repeat_penalty: Option<f32>,
    /// Random seed (same seed, same output on the same machine).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Worker threads (default: available cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Context length (default 4096 or the model's maximum if smaller).
    #[arg(long)]
    ctx: Option<usize>,
    /// KV cache element type.
    #[arg(long, value_enum, default_value_t = Kv::F16)]
    kv: Kv,
    /// Compute backend: `cpu` (foehn's kernels) or `candle` (candle tensors on --device).
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
    /// Device of the candle backend: `cpu`, `cuda:N` (build with --features cuda) or `metal` (--features metal).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: CandleDevice,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// With --json: the K largest logits at the last prompt position and before each generated or forced token.
    #[arg(long, default_value_t = 0)]
    top_logits: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kv {
    F16,
    F32,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum BackendArg {
    Cpu,
    Candle,
}

fn parse_device(s: &str) -> Result<CandleDevice, String> {
    match s {
        "cpu" => Ok(CandleDevice::Cpu),
        "metal" => Ok(CandleDevice::Metal(0)),
        _ => match s.strip_prefix("cuda") {
            Some("") => Ok(CandleDevice::Cuda(0)),
            Some(n) => n
                .strip_prefix(':')
                .and_then(|n| n.parse().ok())
                .map(CandleDevice::Cuda)
                .ok_or_else(|| format!("bad device {s:?}: expected cpu, cuda:N or metal")),
            None => Err(format!("bad device {s:?}: expected cpu, cuda:N or metal")),
        },
    }
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let opts = LoadOptions {
        ctx_len: args.ctx,
        kv_type: match args.kv {
            Kv::F16 => KvCacheType::F16,
            Kv::F32 => KvCacheType::F32,
        },
        threads: args.threads,
        backend: match args.backend {
            BackendArg::Cpu => Backend::Cpu,
            BackendArg::Candle => Backend::Candle(args.device),
        },
        ..LoadOptions::default()
    };
    let model = LocalModel::load(args.model.as_deref(), opts).context("loading the model")?;
    let load_ms = model.load_time().as_secs_f64() * 1e3;
    let prompt = match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => Prompt::Tokens(ids.clone()),
        (None, Some(p)) if args.raw => Prompt::Text(p.clone()),
        (None, Some(p)) => Prompt::Chat(vec![Message::new(Role::User, p.clone())]),
        (None, None) => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("reading standard input")?;
            let text = String::from_utf8(buf).context("standard input is not valid UTF-8")?;
            if args.raw { Prompt::Text(text) } else { Prompt::Chat(vec![Message::new(Role::User, text)]) }
        }
    };
    if let Some(forced) = &args.force_ids {
        return teacher_force(&model, &prompt, forced, &args, load_ms);
    }
    let mut request = GenerateRequest::new(prompt);
    request.max_tokens = Some(args.max_tokens);
    request.temperature = args.temp;
    request.top_k = args.top_k;
    request.top_p = args.top_p;
    request.min_p = args.min_p;
    request.repeat_penalty = args.repeat_penalty;
    request.seed = args.seed;
    request.stop = args.stop.clone();

    let session = model.session()?;
    let mut generation = session.into_generation(request, CancelToken::new())?.record_top_logits(args.top_logits);
    let prompt_ids = generation.prompt_ids().to_vec();
    let (mut ids, mut text) = (Vec::new(), String::new());
    let mut out = std::io::stdout().lock();
    let mut completion = None;
    for event in &mut generation {
        match event? {
            Event::Token(t) => {
                ids.extend(t.id);
                text.push_str(&t.text);
                if !args.json {
                    write!(out, "{}", t.text)?;
                    out.flush()?;
                }
            }
            Event::Done(c) => completion = Some(c),
        }
    }
    let c = completion.context("the generation ended without a final event")?;
    let secs = |d: Option<std::time::Duration>| d.map_or(0.0, |d| d.as_secs_f64());
    let prefill_tok_s = prompt_ids.len() as f64 / secs(c.timings.prefill).max(1e-9);
    let decode_tok_s = (c.usage.completion_tokens.saturating_sub(1)) as f64 / secs(c.timings.decode).max(1e-9);
    if args.json {
        let json = serde_json::json!({
            "prompt_ids": prompt_ids,
            "ids": ids,
            "text": text,
            "finish_reason": c.finish_reason,
            "served_by": c.served_by,
            "top_logits": generation.top_logits().first().cloned().unwrap_or_default(),
            "steps": generation.top_logits().iter().take(ids.len()).collect::<Vec<_>>(),
            "timings": { "load_ms": load_ms, "prefill_tok_s": prefill_tok_s, "decode_tok_s": decode_tok_s },
        });
        writeln!(out, "{json}")?;
    } else {
        writeln!(out)?;
        eprintln!(
            "[{} prompt tokens, {} generated ({:?}); load {load_ms:.0} ms, prefill {prefill_tok_s:.1} tok/s, decode {decode_tok_s:.1} tok/s]",
            c.usage.prompt_tokens, c.usage.completion_tokens, c.finish_reason
        );
    }
    Ok(())
}

/// `--force-ids`: feed the prompt, then each forced id, recording the logits
/// that predicted it.
fn teacher_force(model: &LocalModel, prompt: &Prompt, forced: &[u32], args: &Args, load_ms: f64) -> Result<()> {
    let prompt_ids = model.prompt_ids(prompt)?;
    let mut session = model.session()?;
    let t = Instant::now();
    let mut logits = session.feed(&prompt_ids)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let top_logits = top_k(&logits, args.top_logits);
    let mut steps = Vec::new();
    let t = Instant::now();
    for (i, &id) in forced.iter().enumerate() {
        steps.push(top_k(&logits, args.top_logits));
        if i + 1 < forced.len() {
            logits = session.feed(&[id])?;
        }
    }
    let decode_s = t.elapsed().as_secs_f64();
    let text = model.tokenizer().decode(forced, true)?;
    let json = serde_json::json!({
        "prompt_ids": prompt_ids,
        "ids": forced,
        "text": text,
        "top_logits": top_logits,
        "steps": steps,
        "timings": {
            "load_ms": load_ms,
            "prefill_tok_s": prompt_ids.len() as f64 / prefill_s.max(1e-9),
            "decode_tok_s": forced.len().saturating_sub(1) as f64 / decode_s.max(1e-9),
        },
    });
    if !args.json {
        eprintln!("--force-ids prints JSON");
    }
    println!("{json}");
    Ok(())
}
