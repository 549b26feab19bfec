//! `bench --texts`: greedy decode speed on real text prompts, speculative
//! decoding off and on (as `--spec` says: prompt lookup, or a draft model)
//! alternated, with a check that both give the same tokens. The prompts are written here so that anyone can rerun
//! them (and `llama-completion` on the same chat-templated text beside them).

use std::time::Duration;

use anyhow::{bail, Result};
use foehn::core::{CancelToken, Constraint, Event, GenerateRequest, Message, Prompt};
use foehn::LocalModel;

/// A passage to repeat and edit.
const PASSAGE: &str = "The river rises in the northern hills, where the snow lies late into \
spring, and runs south past the old mill, the stone bridge and the orchards of the valley. \
At the harbour town it meets the sea. The fishing boats come in at dawn, the market opens \
at seven, and by noon the quay is quiet again except for the gulls and the men mending nets. \
In winter the river floods the lower meadows, and the town keeps a boat tied at every door \
on the low street.";

/// A document to fill a record from.
const DOCUMENT: &str = "Maria Keller was born on 14 March 1961 in Graz, Austria. She studied \
chemistry in Vienna and worked for twenty years as a research chemist at a paint company in \
Linz before she became a teacher. She speaks German, English and Italian, plays the cello in \
an amateur orchestra, and lives in Salzburg with her husband Peter and two cats.";

/// The "json" prompt: fill a record from the document.
pub fn json_prompt() -> String {
    format!(
        "Document: {DOCUMENT}\n\nFill in this JSON record with the facts of the \
         document and answer with the JSON only: {{\"name\": \"\", \"born\": \"\", \
         \"birthplace\": \"\", \"occupations\": [], \"languages\": [], \"city\": \"\"}}"
    )
}

/// The prompts: (name, user message).
fn prompts() -> Vec<(&'static str, String)> {
    vec![
        (
            "repeat",
            format!("Repeat the following passage exactly, word for word:\n\n{PASSAGE}"),
        ),
        (
            "edit",
            format!(
                "Rewrite the following passage, replacing the word \"river\" with \"stream\" \
                 and changing nothing else:\n\n{PASSAGE}"
            ),
        ),
        ("json", json_prompt()),
        (
            "free",
            "Write a short story about a lighthouse keeper who finds a message in a bottle."
                .to_string(),
        ),
    ]
}

/// One greedy generation: the ids, the decode time after the first token,
/// (drafted, accepted), and the tokens a constraint forced.
pub struct Run {
    pub ids: Vec<u32>,
    pub decode: Duration,
    pub stats: (usize, usize),
    pub forced: usize,
}

/// How [`generate`] runs: speculation, the constraint, fast-forwarding.
#[derive(Default)]
pub struct How<'a> {
    pub speculate: bool,
    pub schema: Option<&'a serde_json::Value>,
    /// Forced tokens one pass each instead of one chunk.
    pub one_by_one: bool,
}

/// Greedy decode of `n` tokens after the chat prompt `text`, as `how` says.
pub fn generate(model: &LocalModel, text: &str, n: u32, how: How<'_>) -> Result<Run> {
    let mut req = GenerateRequest::new(Prompt::Chat(vec![Message::user(text)]));
    req.temperature = Some(0.0);
    req.max_tokens = Some(n);
    req.constraint = how.schema.map(|s| Constraint::JsonSchema(s.clone()));
    let mut g = model
        .session()?
        .with_speculation(how.speculate)
        .with_fast_forward(!how.one_by_one)
        .into_generation(req, CancelToken::new())?;
    let (mut ids, mut decode) = (Vec::new(), None);
    for ev in &mut g {
        match ev? {
            Event::Token(t) => ids.extend(t.id),
            Event::Done(c) => decode = c.timings.decode,
        }
    }
    Ok(Run {
        ids,
        decode: decode.unwrap_or_default(),
        stats: g.speculation_stats(),
        forced: g.forced_tokens(),
    })
}

/// Decode tokens per second after the first token.
pub fn rate(r: &Run) -> f64 {
    r.ids.len().saturating_sub(1) as f64 / r.decode.as_secs_f64().max(1e-9)
}

/// Runs every prompt `reps` times with speculation off and ngram alternated
/// (`n` tokens each) and prints a table: decode tokens per second after the
/// first token, mean ± standard deviation, the drafts accepted, and the
/// ratio of the two.
pub fn run(model: &LocalModel, n: u32, reps: usize) -> Result<()> {
    println!(
        "| {:<7} | {:>6} | {:>6} | {:>18} | {:>18} | {:>14} | {:>6} |",
        "prompt", "tokens", "ids", "off t/s", "spec t/s", "accepted", "ratio"
    );
    println!("|---------|-------:|-------:|-------------------:|-------------------:|---------------:|-------:|");
    for (name, text) in prompts() {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        let (mut drafted, mut accepted, mut tokens) = (0, 0, 0);
        for _ in 0..reps {
            let a = generate(model, &text, n, How::default())?;
            let b = generate(
                model,
                &text,
                n,
                How {
                    speculate: true,
                    ..How::default()
                },
            )?;
            if a.ids != b.ids {
                let at = a.ids.iter().zip(&b.ids).take_while(|(x, y)| x == y).count();
                bail!("{name}: speculative decoding parted from plain decoding at token {at}");
            }
            off.push(rate(&a));
            on.push(rate(&b));
            drafted += b.stats.0;
            accepted += b.stats.1;
            tokens = a.ids.len();
        }
        let (mo, mn) = (super::mean(&off), super::mean(&on));
        println!(
            "| {:<7} | {:>6} | {:>6} | {:>18} | {:>18} | {:>14} | {:>6.2} |",
            name,
            tokens,
            "same",
            format!("{mo:.2} ± {:.2}", super::stddev(&off)),
            format!("{mn:.2} ± {:.2}", super::stddev(&on)),
            format!("{accepted}/{drafted}"),
            mn / mo
        );
    }
    Ok(())
}
