//! Tokenize text the way the engine does (like llama.cpp's `llama-tokenize`).
//!
//! ```text
//! cargo run --release --example tokenize -- --text "Hello world"
//! cargo run --release --example tokenize -- --tokenizer tokenizer.json --text "Hi" --json
//! echo '{"text": "Hi"}' | cargo run --release --example tokenize -- --model m.gguf --jsonl
//! ```

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use foehn::hub::{resolve_model, FetchOptions};
use foehn::tokenizer::{EncodeOptions, Tokenizer};

/// Tokenize text with a model's tokenizer.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// GGUF model: a path, a catalog id or hf://owner/repo/file.gguf (default: the default model).
    #[arg(long, short = 'm', conflicts_with = "tokenizer")]
    model: Option<String>,
    /// A tokenizer file instead of a model: tokenizer.json, tokenizer.model or tekken.json.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Text to tokenize (default: read standard input).
    #[arg(long, short = 't')]
    text: Option<String>,
    /// Do not prepend BOS even if the model asks for it.
    #[arg(long)]
    no_bos: bool,
    /// Parse control-token text such as `<s>` or `[INST]` into their ids.
    #[arg(long)]
    parse_special: bool,
    /// Print `{"ids":[...]}`.
    #[arg(long, conflicts_with = "jsonl")]
    json: bool,
    /// Read one `{"text": "..."}` object per standard-input line, print one `{"ids":[...]}` per line.
    #[arg(long)]
    jsonl: bool,
}

fn load(args: &Args) -> Result<Tokenizer> {
    let path = match &args.tokenizer {
        Some(p) => p.clone(),
        None => resolve_model(args.model.as_deref(), &FetchOptions::default())?,
    };
    Tokenizer::from_file(&path)
        .with_context(|| format!("loading the tokenizer from {}", path.display()))
}

fn run(args: Args) -> Result<()> {
    let tok = load(&args)?;
    let opts = EncodeOptions {
        add_bos: args.no_bos.then_some(false),
        parse_special: args.parse_special,
    };
    let mut out = std::io::stdout().lock();
    if args.jsonl {
        for (n, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.with_context(|| format!("reading standard input line {}", n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let obj: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("line {}: invalid JSON", n + 1))?;
            let Some(text) = obj.get("text").and_then(|t| t.as_str()) else {
                bail!(
                    "line {}: expected an object with a string field \"text\"",
                    n + 1
                );
            };
            let ids = tok.encode(text, opts)?;
            writeln!(out, "{}", serde_json::json!({ "ids": ids }))?;
        }
        return Ok(());
    }
    let text = match args.text {
        Some(t) => t,
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading standard input")?;
            String::from_utf8(buf).context("standard input is not valid UTF-8")?
        }
    };
    let ids = tok.encode(&text, opts)?;
    if args.json {
        writeln!(out, "{}", serde_json::json!({ "ids": ids }))?;
    } else {
        for &id in &ids {
            let piece = tok.token_text(id)?;
            writeln!(out, "{id:>7} -> {piece:?}")?;
        }
        writeln!(out, "{} tokens", ids.len())?;
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
