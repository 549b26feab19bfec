//! Chat with a local model in the terminal: history is kept, and each turn
//! prefills only what the KV cache does not already hold.
//!
//! ```text
//! cargo run --release --example chat -- --model model.gguf
//! ```
//! Commands: `/reset` forgets the conversation, `/exit` (or end of input) quits.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use clap::Parser;
use foehn::{CancelToken, Event, GenerateRequest, LoadOptions, LocalModel, Message};

/// Chat with a local model.
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
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let opts = LoadOptions { ctx_len: args.ctx, threads: args.threads, ..LoadOptions::default() };
    let model = LocalModel::load(args.model.as_deref(), opts).context("loading the model")?;
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
        if stdin.lock().read_line(&mut line).context("reading standard input")? == 0 {
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
