//! Chat with a local model in the terminal: history is kept, and each turn
//! prefills only what the KV cache does not already hold. With `--remote` the
//! turns go to an OpenAI-compatible server instead, or (with `--route`) to a
//! router between the local model and that server.
//!
//! ```text
//! cargo run --release --example chat -- --model model.gguf
//! cargo run --release --example chat -- --remote hf --model-id mistralai/Mistral-7B-Instruct-v0.3
//! cargo run --release --example chat -- --remote http://127.0.0.1:8080/v1 --model-id m --route local-first
//! ```
//! Commands: `/reset` forgets the conversation, `/exit` (or end of input) quits.

mod common;

use common::{check_remote_only, given_flags, LazyLocal};

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use foehn::remote::{Policy, Route, Router, RouterConfig};
use foehn::{CancelToken, Event, GenerateRequest, Generator, LoadOptions, LocalModel, Message};

/// Chat with a local model, a remote OpenAI-compatible server, or a router between the two.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Model: a GGUF path, a safetensors directory, a catalog id or hf://owner/repo/file.gguf (default: the default model).
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// A system prompt.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per answer.
    #[arg(short = 'n', long, default_value_t = 512)]
    max_tokens: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long)]
    temp: Option<f32>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (default: available cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Context length.
    #[arg(long)]
    ctx: Option<usize>,
    #[command(flatten)]
    model_flags: common::ModelFlags,
    #[command(flatten)]
    remote: common::RemoteFlags,
    /// Route between the local model (--model, or the default model) and --remote:
    /// local-first, remote-first, fastest or cheapest.
    #[arg(long, requires = "remote")]
    route: Option<Policy>,
}

/// Flags that only make sense for a local model (refused for a remote-only run).
const LOCAL_ONLY: &[&str] = &["ctx", "threads", "kv", "backend", "device", "isq"];

fn main() {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
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

fn load_options(args: &Args) -> LoadOptions {
    args.model_flags.apply(LoadOptions {
        ctx_len: args.ctx,
        threads: args.threads,
        ..LoadOptions::default()
    })
}

fn run(args: Args) -> Result<()> {
    let model = LocalModel::load(args.model.as_deref(), load_options(&args))
        .context("loading the model")?;
    let fresh = || -> Vec<Message> { args.system.iter().map(Message::system).collect() };
    let mut history = fresh();
    let mut session = model.session()?;
    eprintln!("foehn chat — /reset to start over, /exit to quit");
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .context("reading standard input")?
            == 0
        {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = fresh();
                session.reset();
                eprintln!("[conversation reset]");
                continue;
            }
            _ => {}
        }
        history.push(Message::user(line));
        let mut request = GenerateRequest::chat(history.clone());
        request.max_tokens = Some(args.max_tokens);
        request.temperature = args.temp;
        request.seed = args.seed;
        let mut generation = match session.into_generation(request, CancelToken::new()) {
            Ok(g) => g,
            Err(e) => {
                // The session was consumed: open a new one, keep the REPL alive.
                eprintln!("error: {e}");
                history.pop();
                session = model.session()?;
                continue;
            }
        };
        let (prompt_len, reused) = (generation.prompt_ids().len(), generation.reused_tokens());
        let mut answer = String::new();
        for event in &mut generation {
            match event {
                Ok(Event::Token(t)) => {
                    answer.push_str(&t.text);
                    write!(out, "{}", t.text)?;
                    out.flush()?;
                }
                Ok(Event::Done(c)) => {
                    writeln!(out)?;
                    let decode = c.timings.decode.map_or(0.0, |d| d.as_secs_f64());
                    eprintln!(
                        "[{prompt_len} prompt tokens, {reused} reused from the cache; {} generated, {:.1} tok/s]",
                        c.usage.completion_tokens,
                        c.usage.completion_tokens.saturating_sub(1) as f64 / decode.max(1e-9)
                    );
                }
                Err(e) => eprintln!("\nerror: {e}"),
            }
        }
        session = generation.into_session();
        history.push(Message::assistant(answer));
    }
    Ok(())
}

/// `--remote` (alone, or with `--route` and the local model): each turn sends
/// the whole conversation through the [`Generator`] trait (no KV cache is
/// kept between turns, even when the local route serves).
fn run_remote(args: Args, given_local_flags: &[&str]) -> Result<()> {
    let remote = args.remote.client()?.context("--remote")?;
    if args.route.is_none() {
        check_remote_only(given_local_flags, args.model.is_some())?;
    }
    let generator: Box<dyn Generator> = match args.route {
        None => Box::new(remote),
        Some(policy) => {
            let local = Arc::new(LazyLocal::new(args.model.clone(), load_options(&args)));
            Box::new(Router::new(
                vec![Route::local(local), Route::remote(Arc::new(remote))],
                RouterConfig::new(policy),
            ))
        }
    };
    let fresh = || -> Vec<Message> { args.system.iter().map(Message::system).collect() };
    let mut history = fresh();
    eprintln!(
        "foehn chat ({}) — /reset to start over, /exit to quit",
        generator.name()
    );
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .context("reading standard input")?
            == 0
        {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = fresh();
                eprintln!("[conversation reset]");
                continue;
            }
            _ => {}
        }
        history.push(Message::user(line));
        let mut request = GenerateRequest::chat(history.clone());
        request.max_tokens = Some(args.max_tokens);
        request.temperature = args.temp;
        request.seed = args.seed;
        let events = match generator.generate(request, CancelToken::new()) {
            Ok(events) => events,
            Err(e) => {
                eprintln!("error: {e}");
                history.pop();
                continue;
            }
        };
        let mut answer = String::new();
        let mut failed = false;
        for event in events {
            match event {
                Ok(Event::Token(t)) => {
                    answer.push_str(&t.text);
                    write!(out, "{}", t.text)?;
                    out.flush()?;
                }
                Ok(Event::Done(c)) => {
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
                    let decode = c.timings.decode.map_or(0.0, |d| d.as_secs_f64());
                    eprintln!(
                        "[served by {}{provider}{tried}; {} prompt tokens, {} generated, {:.1} tok/s]",
                        c.served_by.as_deref().unwrap_or("?"),
                        c.usage.prompt_tokens,
                        c.usage.completion_tokens,
                        c.usage.completion_tokens.saturating_sub(1) as f64 / decode.max(1e-9)
                    );
                }
                Err(e) => {
                    eprintln!("\nerror: {e}");
                    failed = true;
                }
            }
        }
        if failed && answer.is_empty() {
            history.pop();
        } else {
            history.push(Message::assistant(answer));
        }
    }
    Ok(())
}
