//! A load test for OpenAI-compatible servers: N concurrent streaming chat
//! clients (`POST /v1/chat/completions`, `stream: true`), each sending R
//! distinct prompts one after the other, and what the server delivered —
//! completion tokens per second over the wall time, time to first token and
//! inter-token latency percentiles, errors.
//!
//! ```text
//! cargo run --release --example serve -- --parallel 4 --port 8080 &
//! cargo run --release --example loadtest -- --url http://127.0.0.1:8080/v1 --clients 1,4,8 --max-tokens 128
//! llama-server -m model.gguf -np 4 --port 8081 &
//! cargo run --release --example loadtest -- --url http://127.0.0.1:8081 --clients 1,4 --json --ignore-eos
//! ```
//!
//! Tokens are counted from the stream: the usage chunk's `completion_tokens`
//! when the server sends one (`stream_options.include_usage`), else the
//! number of content deltas. Each level of `--clients` runs in turn; the
//! exit status is 0 whenever the report was made, errors included (they are
//! counted in it).

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use foehn::remote::{OpenAiClient, Timeouts};
use foehn::{CancelToken, Event, GenerateRequest, Generator, Message};
use serde::Serialize;

/// Drive concurrent streaming clients against an OpenAI-compatible server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The server's base URL (`/v1` is added when the URL has no path).
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    url: String,
    /// Model id to request (default: the first model the server lists at GET /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Concurrent clients: a comma-separated list runs each level in turn.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    clients: Vec<usize>,
    /// `max_tokens` of every request (answers may stop earlier; the report counts what came back).
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// Ask for answers of `--max-tokens` tokens, past end-of-generation
    /// tokens (`ignore_eos`, which vLLM, llama-server and foehn's `serve`
    /// honour): every server then generates as much for the same prompts.
    #[arg(long)]
    ignore_eos: bool,
    /// Requests each client sends, one after the other.
    #[arg(long, default_value_t = 2)]
    requests: usize,
    /// Bearer token (default: $OPENAI_API_KEY, else none).
    #[arg(long)]
    api_key: Option<String>,
    /// Sampling temperature (default: the server's).
    #[arg(long)]
    temperature: Option<f32>,
    /// Seed of the first request; request k of a level gets seed + k (default: unseeded).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds to wait for the connection, for the first byte, and between two stream events.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Print the report as JSON (one object per level, with every request).
    #[arg(long)]
    json: bool,
}

/// The prompts, distinct in topic and length; request k of a level asks prompt k mod 20.
const PROMPTS: [&str; 20] = [
    "Explain how a refrigerator keeps food cold, step by step.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main differences between TCP and UDP? Give an example use for each.",
    "Give me a recipe for a vegetarian lasagna, with quantities for four people.",
    "Summarize the causes of the French Revolution in a few paragraphs.",
    "Write a Python function that checks whether a string is a palindrome, and explain it.",
    "Why is the sky blue during the day and red at sunset?",
    "Plan a three-day trip to Kyoto for someone who likes temples and food.",
    "Describe the water cycle to a ten-year-old.",
    "What should I consider when choosing between renting and buying a home?",
    "Write a polite email asking my landlord to fix a leaking kitchen tap.",
    "Compare the economies of Norway and Switzerland.",
    "How do vaccines train the immune system? Keep it simple.",
    "List ten creative names for a coffee shop by the sea and explain two of them.",
    "Explain what a hash map is and how collisions are handled.",
    "Write a haiku sequence about the four seasons in the mountains.",
    "What are good habits for learning a new language as an adult?",
    "Describe how photosynthesis works and why it matters for life on Earth.",
    "Give advice to a new manager leading a team of five engineers.",
    "Explain the rules of chess to a complete beginner, piece by piece.",
];

/// What one request gave.
#[derive(Debug, Serialize)]
struct RequestRecord {
    /// The client (thread) that sent it.
    client: usize,
    /// Its index among the client's requests.
    index: usize,
    /// Completion tokens: the server's usage count, else the content deltas.
    tokens: u32,
    /// Content deltas received.
    deltas: u32,
    /// Seconds from sending the request to the first content delta.
    ttft_s: Option<f64>,
    /// Seconds from sending the request to the end of the stream (or the error).
    total_s: f64,
    /// Why it failed, when it did.
    error: Option<String>,
    /// Seconds between consecutive content deltas.
    #[serde(skip)]
    gaps: Vec<f64>,
}

/// Median and 99th percentile, in milliseconds.
#[derive(Debug, Serialize, Clone, Copy)]
struct Percentiles {
    p50_ms: f64,
    p99_ms: f64,
}

/// One level of concurrency: its aggregates and its requests.
#[derive(Debug, Serialize)]
struct LevelReport {
    clients: usize,
    requests: usize,
    errors: usize,
    /// Completion tokens of the successful requests.
    tokens: u64,
    wall_s: f64,
    /// `tokens / wall_s`.
    tokens_per_s: f64,
    ttft: Option<Percentiles>,
    itl: Option<Percentiles>,
    /// The distinct error messages, in the order they first came.
    error_messages: Vec<String>,
    records: Vec<RequestRecord>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The client's base URL: `url` with `/v1` when it has no path of its own.
fn base_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    if after_scheme.contains('/') {
        url.to_string()
    } else {
        format!("{url}/v1")
    }
}

fn run(args: Args) -> Result<()> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients needs one or more counts above 0");
    }
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let wait = Duration::from_secs_f64(args.timeout);
    let mut client = OpenAiClient::new(base_url(&args.url))
        .with_name("loadtest")
        .with_usage_chunk(true)
        .with_extended_sampling(args.ignore_eos)
        .with_timeouts(Timeouts {
            connect: wait,
            first_byte: wait,
            idle: wait,
        });
    let key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("OPENAI_API_KEY").ok())
        .filter(|k| !k.is_empty());
    if let Some(key) = key {
        client = client.with_api_key(key);
    }
    let model = match &args.model {
        Some(m) => m.clone(),
        None => client
            .list_models()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("listing the server's models (or pass --model)")?
            .into_iter()
            .next()
            .map(|m| m.id)
            .context("the server lists no model (pass --model)")?,
    };
    let client = client.with_model(model.clone());
    let mut reports = Vec::new();
    for &clients in &args.clients {
        let report = run_level(&client, &args, clients);
        if !args.json {
            eprintln!(
                "{clients} clients: {} requests, {} errors, {:.1} tok/s",
                report.requests, report.errors, report.tokens_per_s
            );
        }
        reports.push(report);
    }
    if args.json {
        let out = serde_json::json!({
            "url": base_url(&args.url),
            "model": model,
            "max_tokens": args.max_tokens,
            "ignore_eos": args.ignore_eos,
            "requests_per_client": args.requests,
            "levels": reports,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", markdown(&reports, &model, args.max_tokens));
    }
    Ok(())
}

/// Runs `clients` threads of `args.requests` requests each, all starting together.
fn run_level(client: &OpenAiClient, args: &Args, clients: usize) -> LevelReport {
    let start = Arc::new(Barrier::new(clients + 1));
    let mut records = Vec::new();
    let began = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let start = start.clone();
                scope.spawn(move || {
                    start.wait();
                    (0..args.requests)
                        .map(|i| {
                            let k = c * args.requests + i;
                            let mut request = GenerateRequest::chat(vec![Message::user(
                                PROMPTS[k % PROMPTS.len()],
                            )]);
                            request.max_tokens = Some(args.max_tokens);
                            request.ignore_eos = args.ignore_eos;
                            request.temperature = args.temperature;
                            request.seed = args.seed.map(|s| s.wrapping_add(k as u64));
                            one_request(client, request, c, i)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        for w in workers {
            match w.join() {
                Ok(r) => records.extend(r),
                Err(_) => records.push(RequestRecord {
                    client: usize::MAX,
                    index: 0,
                    tokens: 0,
                    deltas: 0,
                    ttft_s: None,
                    total_s: 0.0,
                    error: Some("a client thread panicked".into()),
                    gaps: Vec::new(),
                }),
            }
        }
        began
    });
    summarize(clients, began.elapsed().as_secs_f64(), records)
}

/// Sends one streaming request and times its content deltas.
fn one_request(
    client: &OpenAiClient,
    request: GenerateRequest,
    c: usize,
    index: usize,
) -> RequestRecord {
    let sent = Instant::now();
    let mut record = RequestRecord {
        client: c,
        index,
        tokens: 0,
        deltas: 0,
        ttft_s: None,
        total_s: 0.0,
        error: None,
        gaps: Vec::new(),
    };
    let mut last: Option<Instant> = None;
    let mut done = false;
    match client.generate(request, CancelToken::new()) {
        Err(e) => record.error = Some(e.to_string()),
        Ok(stream) => {
            for event in stream {
                match event {
                    Ok(Event::Token(t)) if !t.text.is_empty() || !t.tool_calls.is_empty() => {
                        let now = Instant::now();
                        match last {
                            None => record.ttft_s = Some((now - sent).as_secs_f64()),
                            Some(prev) => record.gaps.push((now - prev).as_secs_f64()),
                        }
                        last = Some(now);
                        record.deltas += 1;
                    }
                    Ok(Event::Token(_)) => {}
                    Ok(Event::Done(completion)) => {
                        record.tokens = completion.usage.completion_tokens;
                        done = true;
                    }
                    Err(e) => {
                        record.error = Some(e.to_string());
                        break;
                    }
                }
            }
            if record.error.is_none() && !done {
                record.error = Some("the stream ended without a final event".into());
            }
        }
    }
    record.total_s = sent.elapsed().as_secs_f64();
    record
}

/// The `p`-th percentile (nearest rank) of sorted `values`, in milliseconds.
fn percentile_ms(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] * 1e3
}

/// Median and p99 of `values` (seconds), `None` when there are none.
fn percentiles(mut values: Vec<f64>) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(Percentiles {
        p50_ms: percentile_ms(&values, 50.0),
        p99_ms: percentile_ms(&values, 99.0),
    })
}

fn summarize(clients: usize, wall_s: f64, mut records: Vec<RequestRecord>) -> LevelReport {
    records.sort_by_key(|r| (r.client, r.index));
    let ok = || records.iter().filter(|r| r.error.is_none());
    let tokens: u64 = ok().map(|r| u64::from(r.tokens)).sum();
    let ttft = percentiles(ok().filter_map(|r| r.ttft_s).collect());
    let itl = percentiles(ok().flat_map(|r| r.gaps.iter().copied()).collect());
    let mut error_messages: Vec<String> = Vec::new();
    for e in records.iter().filter_map(|r| r.error.as_ref()) {
        if !error_messages.contains(e) {
            error_messages.push(e.clone());
        }
    }
    LevelReport {
        clients,
        requests: records.len(),
        errors: records.iter().filter(|r| r.error.is_some()).count(),
        tokens,
        wall_s,
        tokens_per_s: if wall_s > 0.0 {
            tokens as f64 / wall_s
        } else {
            0.0
        },
        ttft,
        itl,
        error_messages,
        records,
    }
}

/// The report as a markdown table, one row per level, then the errors.
fn markdown(reports: &[LevelReport], model: &str, max_tokens: u32) -> String {
    let ms = |p: Option<Percentiles>, f: fn(Percentiles) -> f64| {
        p.map_or_else(|| "-".to_string(), |p| format!("{:.1}", f(p)))
    };
    let mut out = format!("model: {model}, max_tokens: {max_tokens}\n\n");
    out.push_str(
        "| clients | requests | errors | tokens | wall s | tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |\n\
         |--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in reports {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.1} | {} | {} | {} | {} |\n",
            r.clients,
            r.requests,
            r.errors,
            r.tokens,
            r.wall_s,
            r.tokens_per_s,
            ms(r.ttft, |p| p.p50_ms),
            ms(r.ttft, |p| p.p99_ms),
            ms(r.itl, |p| p.p50_ms),
            ms(r.itl, |p| p.p99_ms),
        ));
    }
    for r in reports.iter().filter(|r| r.errors > 0) {
        out.push_str(&format!("\nerrors with {} clients:\n", r.clients));
        for e in &r.error_messages {
            out.push_str(&format!("- {e}\n"));
        }
    }
    out
}
