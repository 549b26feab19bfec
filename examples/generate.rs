//! Generate text with a local model, a remote OpenAI-compatible server, or a
//! router between the two.
//!
//! ```text
//! cargo run --release --example generate -- --prompt "Why is the sky blue?"
//! cargo run --release --example generate -- --model model.gguf --raw --prompt "Once upon a time" -n 64
//! cargo run --release --example generate -- --prompt-ids 1,415,2936 --force-ids 9,10 --top-logits 5 --json
//! cargo run --release --example generate -- --model ./safetensors-dir --isq q4k --prompt "Hello"
//! # structured output: JSON that a schema validates, text in a Lark grammar's language, or a regex match
//! cargo run --release --example generate -- --json-schema person.schema.json --prompt "Describe a person"
//! cargo run --release --example generate -- --grammar answer.lark --prompt "Is the sky blue?"
//! # remote: any OpenAI-compatible server, or `hf` = the Hugging Face router (token from --api-key or HF_TOKEN)
//! cargo run --release --example generate -- --remote hf --model-id mistralai/Mistral-7B-Instruct-v0.3:fastest --prompt "Hi"
//! # routed: the local model (--model or the default one) and --remote, under a policy
//! cargo run --release --example generate -- --remote hf --model-id mistralai/Mistral-7B-Instruct-v0.3 --route local-first --prompt "Hi" --json
//! ```

mod common;

use common::{check_remote_only, flag_list, given_flags, LazyLocal};

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use foehn::engine::top_k;
use foehn::remote::{Policy, Route, Router, RouterConfig};
use foehn::{
    CancelToken, Constraint, Event, GenerateRequest, Generator, LoadOptions, LocalModel, Message,
    Prompt, Role,
};

/// Generate text with a local model, a remote OpenAI-compatible server, or a router between the two.
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
    /// Structured output: the text is JSON that this JSON schema file validates.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["grammar", "regex", "force_ids"])]
    json_schema: Option<PathBuf>,
    /// Structured output: the text is in the language of this Lark grammar file (llguidance's dialect).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["regex", "force_ids"])]
    grammar: Option<PathBuf>,
    /// Structured output: the text matches this regular expression.
    #[arg(long, conflicts_with = "force_ids")]
    regex: Option<String>,
    /// Worker threads (default: available cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Context length (default 4096 or the model's maximum if smaller).
    #[arg(long)]
    ctx: Option<usize>,
    #[command(flatten)]
    model_flags: common::ModelFlags,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// With --json: the K largest logits at the last prompt position and before each generated or forced token.
    #[arg(long, default_value_t = 0)]
    top_logits: usize,
    #[command(flatten)]
    remote: common::RemoteFlags,
    /// Route between the local model (--model, or the default model) and --remote:
    /// local-first, remote-first, fastest or cheapest.
    #[arg(long, requires = "remote")]
    route: Option<Policy>,
}

/// Flags that only make sense for a local model (refused for a remote-only run).
const LOCAL_ONLY: &[&str] = &[
    "prompt_ids",
    "force_ids",
    "top_logits",
    "backend",
    "device",
    "isq",
    "kv",
    "ctx",
    "threads",
];
/// Flags that need the local engine itself, not a generator behind a router.
const LOCAL_ENGINE_ONLY: &[&str] = &["force_ids", "top_logits"];

fn main() {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The local-only flags given on the command line.
    let given = given_flags(&matches, LOCAL_ONLY);
    let result = if args.remote.remote.is_some() {
        run_remote(args, &given)
    } else {
        run(args)
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let opts = load_options(&args);
    let model = LocalModel::load(args.model.as_deref(), opts).context("loading the model")?;
    let load_ms = model.load_time().as_secs_f64() * 1e3;
    let prompt = read_prompt(&args)?;
    if let Some(forced) = &args.force_ids {
        return teacher_force(&model, &prompt, forced, &args, load_ms);
    }
    let request = build_request(&args, prompt)?;

    let session = model.session()?;
    let mut generation = session
        .into_generation(request, CancelToken::new())?
        .record_top_logits(args.top_logits);
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
    let decode_tok_s =
        (c.usage.completion_tokens.saturating_sub(1)) as f64 / secs(c.timings.decode).max(1e-9);
    if args.json {
        let json = serde_json::json!({
            "prompt_ids": prompt_ids,
            "ids": ids,
            "text": text,
            "finish_reason": c.finish_reason,
            "served_by": c.served_by,
            "tried": c.tried,
            "provider": c.provider,
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

/// `--remote` (alone, or with `--route` and the local model): the same
/// request through the [`Generator`] trait, streamed the same way.
fn run_remote(args: Args, given_local_flags: &[&str]) -> Result<()> {
    let remote = args.remote.client()?.context("--remote")?;
    match args.route {
        None => check_remote_only(given_local_flags, args.model.is_some())?,
        Some(_) => {
            let engine_only: Vec<&str> = given_local_flags
                .iter()
                .copied()
                .filter(|id| LOCAL_ENGINE_ONLY.contains(id))
                .collect();
            if !engine_only.is_empty() {
                bail!(
                    "{} cannot go through a router: drop --remote and --route to use them",
                    flag_list(&engine_only)
                );
            }
        }
    }
    let (generator, local): (Box<dyn Generator>, Option<Arc<LazyLocal>>) = match args.route {
        None => (Box::new(remote), None),
        Some(policy) => {
            let local = Arc::new(LazyLocal::new(args.model.clone(), load_options(&args)));
            let routes = vec![Route::local(local.clone()), Route::remote(Arc::new(remote))];
            (
                Box::new(Router::new(routes, RouterConfig::new(policy))),
                Some(local),
            )
        }
    };
    let request = build_request(&args, read_prompt(&args)?)?;
    let started = Instant::now();
    let (mut ids, mut text) = (Vec::new(), String::new());
    let mut out = std::io::stdout().lock();
    let mut completion = None;
    for event in generator.generate(request, CancelToken::new())? {
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
    let total_s = started.elapsed().as_secs_f64();
    let ttft_ms = c.timings.time_to_first_token.map(|d| d.as_secs_f64() * 1e3);
    let decode_tok_s = c
        .timings
        .decode
        .map(|d| c.usage.completion_tokens.saturating_sub(1) as f64 / d.as_secs_f64().max(1e-9));
    let load_ms = local.as_ref().and_then(|l| l.load_ms());
    let served_by = c.served_by.as_deref().unwrap_or("?");
    if args.json {
        let json = serde_json::json!({
            "ids": ids,
            "text": text,
            "finish_reason": c.finish_reason,
            "served_by": c.served_by,
            "tried": c.tried,
            "provider": c.provider,
            "usage": { "prompt_tokens": c.usage.prompt_tokens, "completion_tokens": c.usage.completion_tokens },
            "timings": { "load_ms": load_ms, "ttft_ms": ttft_ms, "decode_tok_s": decode_tok_s, "total_s": total_s },
        });
        writeln!(out, "{json}")?;
    } else {
        writeln!(out)?;
        let provider = c
            .provider
            .as_deref()
            .map(|p| format!(" via {p}"))
            .unwrap_or_default();
        let tried = if c.tried.len() > 1 {
            format!(", tried {}", c.tried.join(" → "))
        } else {
            String::new()
        };
        eprintln!(
            "[served by {served_by}{provider}{tried}; {} prompt tokens, {} generated ({:?}); first token {}, decode {}]",
            c.usage.prompt_tokens,
            c.usage.completion_tokens,
            c.finish_reason,
            ttft_ms.map_or("?".into(), |ms| format!("{ms:.0} ms")),
            decode_tok_s.map_or("?".into(), |t| format!("{t:.1} tok/s")),
        );
    }
    Ok(())
}

fn load_options(args: &Args) -> LoadOptions {
    args.model_flags.apply(LoadOptions {
        ctx_len: args.ctx,
        threads: args.threads,
        ..LoadOptions::default()
    })
}

/// The prompt: `--prompt-ids`, `--prompt` (a chat turn, or raw text with
/// `--raw`), or standard input.
fn read_prompt(args: &Args) -> Result<Prompt> {
    Ok(match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => Prompt::Tokens(ids.clone()),
        (None, Some(p)) if args.raw => Prompt::Text(p.clone()),
        (None, Some(p)) => Prompt::Chat(vec![Message::new(Role::User, p.clone())]),
        (None, None) => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading standard input")?;
            let text = String::from_utf8(buf).context("standard input is not valid UTF-8")?;
            if args.raw {
                Prompt::Text(text)
            } else {
                Prompt::Chat(vec![Message::new(Role::User, text)])
            }
        }
    })
}

/// The constraint the structured-output flags ask for, read from its file.
fn constraint(args: &Args) -> Result<Option<Constraint>> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(if let Some(path) = &args.json_schema {
        let schema = serde_json::from_str(&read(path)?)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Some(Constraint::JsonSchema(schema))
    } else if let Some(path) = &args.grammar {
        Some(Constraint::Lark(read(path)?))
    } else {
        args.regex.clone().map(Constraint::Regex)
    })
}

fn build_request(args: &Args, prompt: Prompt) -> Result<GenerateRequest> {
    let mut request = GenerateRequest::new(prompt);
    request.max_tokens = Some(args.max_tokens);
    request.temperature = args.temp;
    request.top_k = args.top_k;
    request.top_p = args.top_p;
    request.min_p = args.min_p;
    request.repeat_penalty = args.repeat_penalty;
    request.seed = args.seed;
    request.stop = args.stop.clone();
    request.constraint = constraint(args)?;
    Ok(request)
}

/// `--force-ids`: feed the prompt, then each forced id, recording the logits
/// that predicted it.
fn teacher_force(
    model: &LocalModel,
    prompt: &Prompt,
    forced: &[u32],
    args: &Args,
    load_ms: f64,
) -> Result<()> {
    let prompt_ids = model.prompt_ids(prompt)?;
    let mut session = model.session()?;
    let t = Instant::now();
    let mut logits = Vec::new();
    session.prefill_into(&prompt_ids, &mut logits)?;
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
