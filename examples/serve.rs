//! An OpenAI-compatible server over a local model.
//!
//! ```text
//! cargo run --release --example serve                       # the default model on 127.0.0.1:8080
//! cargo run --release --example serve -- --model model.gguf --port 0 --api-key secret
//! curl http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \
//!      -d '{"model": "smollm2-135m-instruct-q4_1", "messages": [{"role": "user", "content": "Hi"}]}'
//! ```
//!
//! Prints `listening on http://HOST:PORT` on standard output once it accepts
//! connections (with the chosen port when `--port 0`).

#[allow(dead_code)] // the routed-run helpers are not used here
mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use foehn::{LoadOptions, LocalModel};
use foehn_serve::ServeOptions;

/// Serve a local model over an OpenAI-compatible HTTP API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Model: a GGUF path, a safetensors directory, a catalog id or hf://owner/repo/file.gguf (default: the default model).
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// The model id clients use (default: the catalog id, or the file name without extension).
    #[arg(long)]
    model_id: Option<String>,
    /// Address to bind (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0 = any free port).
    #[arg(long, short = 'p', default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` (default: $FOEHN_API_KEY, else no key).
    #[arg(long)]
    api_key: Option<String>,
    /// Generations that run at once, each with its own KV cache over the
    /// shared model: their decode steps run batched (one forward pass
    /// decodes a token of every running generation, reading the weights
    /// once for all), so more raises the aggregate throughput as well as
    /// fairness to short requests; each costs a KV cache.
    #[arg(long, default_value_t = ServeOptions::default().parallel)]
    parallel: usize,
    /// Requests that may wait for a turn; beyond that the server answers 429.
    #[arg(long, default_value_t = ServeOptions::default().queue)]
    queue: usize,
    /// Worker threads of the model (default: available cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Context length of each session (default 4096 or the model's maximum if smaller).
    #[arg(long)]
    ctx: Option<usize>,
    /// MiB of KV caches kept after requests end, so a request whose prompt
    /// starts with tokens an earlier one computed (a shared system prompt,
    /// the earlier turns of a conversation) does not prefill them again;
    /// least recently used first out; 0 turns it off.
    #[arg(long, default_value_t = foehn::engine::DEFAULT_PREFIX_CACHE_BYTES >> 20)]
    cache_mb: usize,
    #[command(flatten)]
    model_flags: common::ModelFlags,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The id clients name the model by.
fn model_id(args: &Args) -> String {
    if let Some(id) = &args.model_id {
        return id.clone();
    }
    match args.model.as_deref() {
        None => foehn::hub::DEFAULT_MODEL_ID.to_string(),
        Some(spec) if Path::new(spec).exists() => {
            let path = Path::new(spec);
            let stem = if path.is_dir() {
                path.file_name()
            } else {
                path.file_stem()
            };
            stem.map_or_else(|| spec.to_string(), |s| s.to_string_lossy().into_owned())
        }
        Some(spec) => spec.to_string(),
    }
}

fn run(args: Args) -> Result<()> {
    let opts = args.model_flags.apply(LoadOptions {
        ctx_len: args.ctx,
        threads: args.threads,
        prefix_cache_bytes: args.cache_mb.saturating_mul(1 << 20),
        ..LoadOptions::default()
    });
    let model = LocalModel::load(args.model.as_deref(), opts)
        .context("loading the model")?
        .with_batching(args.parallel.max(1))
        .context("starting the batcher")?;
    let id = model_id(&args);
    eprintln!(
        "loaded {id} in {:.0} ms (context {} tokens, {} parallel, queue {})",
        model.load_time().as_secs_f64() * 1e3,
        model.context_length(),
        args.parallel,
        args.queue
    );
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("FOEHN_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let serve = ServeOptions {
        models: vec![id],
        api_key,
        parallel: args.parallel,
        queue: args.queue,
        ..ServeOptions::default()
    };
    let addr = SocketAddr::new(args.host, args.port);
    foehn_serve::serve_blocking(addr, Arc::new(model), serve, |bound| {
        let mut out = std::io::stdout().lock();
        // Tests and scripts read this line to find the port.
        let _ = writeln!(out, "listening on http://{bound}");
        let _ = out.flush();
    })
    .with_context(|| format!("serving on {addr}"))
}
