//! `bench --constrained`: what structured output costs. On the document
//! prompt of `--texts`, greedy decode (speculation off) of the same request
//! three ways, alternated: unconstrained, under a JSON schema with the
//! forced tokens run as one chunk (foehn's default), and under the schema
//! with every forced token run as a pass of its own (what decoding them one
//! by one costs). Two schemas: the document's record, and the same record
//! with long fixed keys (where fast-forwarding skips the most passes).

use std::time::Duration;

use anyhow::{bail, Result};
use foehn::LocalModel;
use serde_json::{json, Value};

use super::texts::{generate, rate, How};

/// The record `--texts`' "json" prompt asks for, with `keys` as its field names.
fn record_schema(keys: [&str; 6]) -> Value {
    let [name, born, place, jobs, languages, city] = keys;
    let text = json!({"type": "string", "maxLength": 40});
    let list =
        json!({"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 4});
    json!({
        "type": "object",
        "properties": {name: text, born: text, place: text, jobs: list, languages: list, city: text},
        "required": [name, born, place, jobs, languages, city],
        "additionalProperties": false
    })
}

/// Runs both schemas `reps` times, the three ways alternated, and prints a
/// table: tokens (forced among them), decode t/s of each way (tokens after
/// the first over the time after it), schema/plain (fast-forward included),
/// the mask cost (one pass per token with the schema against plain: the
/// time the masks add) and the decode time the forced chunks save.
pub fn run(model: &LocalModel, n: u32, reps: usize) -> Result<()> {
    let prompt = super::texts::json_prompt();
    let schemas = [
        (
            "record",
            record_schema([
                "name",
                "born",
                "birthplace",
                "occupations",
                "languages",
                "city",
            ]),
        ),
        (
            "long keys",
            record_schema([
                "full_legal_name_of_the_person_described",
                "date_of_birth_as_written_in_the_document",
                "place_of_birth_with_city_and_country",
                "all_occupations_held_in_chronological_order",
                "languages_spoken_fluently_by_the_person",
                "city_of_current_residence_as_of_the_document",
            ]),
        ),
    ];
    println!(
        "| {:<9} | {:>14} | {:>16} | {:>16} | {:>16} | {:>12} | {:>10} | {:>11} |",
        "schema",
        "tokens(forced)",
        "plain t/s",
        "schema t/s",
        "one-by-one t/s",
        "schema/plain",
        "mask cost",
        "chunk saves"
    );
    println!("|-----------|---------------:|-----------------:|-----------------:|-----------------:|-------------:|-----------:|------------:|");
    for (name, schema) in &schemas {
        let (mut plain, mut chunked, mut single) = (Vec::new(), Vec::new(), Vec::new());
        let (mut tokens, mut forced) = (0, 0);
        let (mut t_chunked, mut t_single) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..reps {
            let with = |one_by_one| How {
                schema: Some(schema),
                one_by_one,
                ..How::default()
            };
            let p = generate(model, &prompt, n, How::default())?;
            let c = generate(model, &prompt, n, with(false))?;
            let s = generate(model, &prompt, n, with(true))?;
            if c.ids != s.ids {
                bail!("{name}: fast-forwarding changed the output");
            }
            plain.push(rate(&p));
            chunked.push(rate(&c));
            single.push(rate(&s));
            t_chunked += c.decode;
            t_single += s.decode;
            (tokens, forced) = (c.ids.len(), c.forced);
        }
        let ms = |v: &[f64]| format!("{:.2} ± {:.2}", super::mean(v), super::stddev(v));
        println!(
            "| {:<9} | {:>14} | {:>16} | {:>16} | {:>16} | {:>12.3} | {:>9.1}% | {:>10.1}% |",
            name,
            format!("{tokens}({forced})"),
            ms(&plain),
            ms(&chunked),
            ms(&single),
            super::mean(&chunked) / super::mean(&plain),
            // A pass per token either way: what computing the masks costs.
            100.0 * (super::mean(&plain) / super::mean(&single) - 1.0),
            100.0 * (1.0 - t_chunked.as_secs_f64() / t_single.as_secs_f64().max(1e-9)),
        );
    }
    Ok(())
}
