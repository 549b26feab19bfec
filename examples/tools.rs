//! A tool loop: the model may call `get_weather` (a small table of cities)
//! and `calculator` (arithmetic, evaluated here); each call's result goes
//! back into the conversation, round after round, until the model answers
//! (the last round offers no tools, so it must). The same loop runs against
//! a local model (its own tool-call format) or, with `--remote`, an
//! OpenAI-compatible server.
//!
//! ```sh
//! cargo run --release --example tools -- --prompt "What is 17*23? And how warm is it in Oslo?"
//! cargo run --release --example tools -- --tool-choice required --prompt "Weather in Paris?"
//! cargo run --release --example tools -- --remote http://127.0.0.1:8080/v1 --model-id m --prompt "2+2?"
//! ```

#[path = "common/mod.rs"]
mod common;

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use common::{check_remote_only, given_flags};
use foehn::core::{collect_tool_calls, ToolCall};
use foehn::{
    CancelToken, Event, FinishReason, GenerateRequest, Generator, LoadOptions, LocalModel, Message,
};
use serde_json::{json, Value};

/// Let a model call two tools (weather, calculator) until it answers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// What to ask.
    #[arg(long, short = 'p')]
    prompt: String,
    /// Model: a GGUF path, a safetensors directory, a catalog id or hf://owner/repo/file.gguf (default: the default model).
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// `tool_choice` of the first round: auto, required, none, or a tool's name.
    #[arg(long, default_value = "auto")]
    tool_choice: String,
    /// Most rounds of calls before the model must answer.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Most tokens per round.
    #[arg(short = 'n', long, default_value_t = 256)]
    max_tokens: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
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
}

/// Flags that only make sense for a local model.
const LOCAL_ONLY: &[&str] = &["ctx", "threads", "kv", "backend", "device", "isq"];

fn main() {
    let matches = Args::command().get_matches();
    let given = given_flags(&matches, LOCAL_ONLY);
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if let Err(e) = run(args, &given) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args, given_local_flags: &[&str]) -> Result<()> {
    let generator: Box<dyn Generator> = match args.remote.client()? {
        Some(client) => {
            check_remote_only(given_local_flags, args.model.is_some())?;
            Box::new(client)
        }
        None => {
            let opts = args.model_flags.apply(LoadOptions {
                threads: args.threads,
                ctx_len: args.ctx,
                ..LoadOptions::default()
            });
            let model = LocalModel::load(args.model.as_deref(), opts)?;
            if !model.capabilities().tools {
                bail!("this model has no tool-call format (Mistral v3+, a template with <tool_call>, or ChatML)");
            }
            Box::new(model)
        }
    };
    let mut messages = vec![Message::user(&args.prompt)];
    for round in 0..args.rounds.max(1) {
        let last = round + 1 == args.rounds.max(1);
        let choice = match (last, round, args.tool_choice.as_str()) {
            (true, _, _) => json!("none"),
            (false, 0, c @ ("auto" | "required" | "none")) => json!(c),
            (false, 0, name) => json!({"type": "function", "function": {"name": name}}),
            _ => json!("auto"),
        };
        let mut request = GenerateRequest::chat(messages.clone());
        request.tools = Some(tools());
        request.tool_choice = Some(choice);
        request.max_tokens = Some(args.max_tokens);
        request.temperature = Some(args.temp);
        request.seed = args.seed;
        let (answer, finish) = turn(generator.as_ref(), request)?;
        if answer.tool_calls.is_empty() {
            println!();
            if finish == FinishReason::Length {
                eprintln!("(the answer reached --max-tokens)");
            }
            return Ok(());
        }
        let calls = answer.tool_calls.clone();
        messages.push(answer);
        for call in &calls {
            let result = call_tool(call);
            println!("→ {}({}) = {result}", call.name, call.arguments);
            let mut message = Message::tool(result);
            message.tool_call_id = call.id.clone();
            messages.push(message);
        }
    }
    Ok(())
}

/// One round: streams the text as it comes, and returns the assistant's
/// message (text and calls) and why it ended.
fn turn(generator: &dyn Generator, request: GenerateRequest) -> Result<(Message, FinishReason)> {
    let mut text = String::new();
    let mut deltas = Vec::new();
    let mut out = std::io::stdout();
    for event in generator.generate(request, CancelToken::new())? {
        match event? {
            Event::Token(t) => {
                if !t.reasoning {
                    print!("{}", t.text);
                    out.flush().ok();
                    text.push_str(&t.text);
                }
                deltas.extend(t.tool_calls);
            }
            Event::Done(done) => {
                let mut message = Message::assistant(text);
                message.tool_calls = collect_tool_calls(&deltas);
                return Ok((message, done.finish_reason));
            }
        }
    }
    bail!("the stream ended without a final event")
}

/// The two tools, as OpenAI's `tools` list.
fn tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather now in a city: temperature and sky.",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "description": "The city's name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"]}}},
        {"type": "function", "function": {
            "name": "calculator",
            "description": "Evaluates an arithmetic expression with + - * / and parentheses.",
            "parameters": {"type": "object", "properties": {
                "expression": {"type": "string", "description": "e.g. (17 + 3) * 2.5"}},
                "required": ["expression"]}}}
    ])
}

/// Runs a call; what goes wrong is the result (the model reads it).
fn call_tool(call: &ToolCall) -> String {
    let args: Value = match serde_json::from_str(&call.arguments) {
        Ok(v) => v,
        Err(e) => return json!({"error": format!("arguments are not JSON: {e}")}).to_string(),
    };
    let result = match call.name.as_str() {
        "get_weather" => weather(&args),
        "calculator" => args["expression"]
            .as_str()
            .context("no expression")
            .and_then(calculate)
            .map(|x| json!({"result": x})),
        other => Err(anyhow::anyhow!("no tool named {other:?}")),
    };
    result
        .unwrap_or_else(|e| json!({"error": e.to_string()}))
        .to_string()
}

/// A small table of cities (°C, sky).
fn weather(args: &Value) -> Result<Value> {
    const CITIES: [(&str, f64, &str); 5] = [
        ("paris", 18.0, "cloudy"),
        ("oslo", 4.0, "snow"),
        ("madrid", 27.0, "sunny"),
        ("london", 14.0, "rain"),
        ("tokyo", 21.0, "clear"),
    ];
    let city = args["city"].as_str().context("no city")?;
    let key = city.trim().to_lowercase();
    let (_, celsius, sky) = CITIES
        .iter()
        .find(|(name, _, _)| *name == key)
        .with_context(|| {
            format!("no weather for {city:?} (known: Paris, Oslo, Madrid, London, Tokyo)")
        })?;
    let fahrenheit = args["unit"] == "fahrenheit";
    let temperature = if fahrenheit {
        celsius * 9.0 / 5.0 + 32.0
    } else {
        *celsius
    };
    Ok(json!({"city": city, "temperature": temperature,
              "unit": if fahrenheit { "fahrenheit" } else { "celsius" }, "sky": sky}))
}

/// Evaluates `+ - * /`, unary minus, parentheses and decimal numbers.
fn calculate(expression: &str) -> Result<f64> {
    let tokens: Vec<char> = expression.chars().filter(|c| !c.is_whitespace()).collect();
    let mut at = 0;
    let value = sum(&tokens, &mut at, 0)?;
    if at != tokens.len() {
        bail!("unexpected {:?} at {at}", tokens[at]);
    }
    if !value.is_finite() {
        bail!("the result is not a finite number");
    }
    Ok(value)
}

/// Deep enough for any sensible expression, shallow enough for the stack.
const MAX_DEPTH: usize = 64;

fn sum(t: &[char], at: &mut usize, depth: usize) -> Result<f64> {
    let mut value = product(t, at, depth)?;
    while let Some(&op @ ('+' | '-')) = t.get(*at) {
        *at += 1;
        let rhs = product(t, at, depth)?;
        value = if op == '+' { value + rhs } else { value - rhs };
    }
    Ok(value)
}

fn product(t: &[char], at: &mut usize, depth: usize) -> Result<f64> {
    let mut value = factor(t, at, depth)?;
    while let Some(&op @ ('*' | '/')) = t.get(*at) {
        *at += 1;
        let rhs = factor(t, at, depth)?;
        value = if op == '*' { value * rhs } else { value / rhs };
    }
    Ok(value)
}

fn factor(t: &[char], at: &mut usize, depth: usize) -> Result<f64> {
    if depth > MAX_DEPTH {
        bail!("the expression nests too deeply");
    }
    match t.get(*at) {
        Some('-') => {
            *at += 1;
            Ok(-factor(t, at, depth + 1)?)
        }
        Some('(') => {
            *at += 1;
            let value = sum(t, at, depth + 1)?;
            if t.get(*at) != Some(&')') {
                bail!("a '(' is not closed");
            }
            *at += 1;
            Ok(value)
        }
        Some(c) if c.is_ascii_digit() || *c == '.' => {
            let start = *at;
            while t.get(*at).is_some_and(|c| c.is_ascii_digit() || *c == '.') {
                *at += 1;
            }
            let number: String = t[start..*at].iter().collect();
            number
                .parse()
                .with_context(|| format!("bad number {number:?}"))
        }
        Some(c) => bail!("unexpected {c:?} at {}", *at),
        None => bail!("the expression ends too early"),
    }
}
