//! The forward pass on tiny-mistral (every GGUF quant variant and the HF
//! safetensors) against the float64 references of `tests/fixtures/tiny-mistral/reference`,
//! with the sliding window of 16 on: last-position logits, all positions,
//! teacher forcing on the references' greedy tokens through the decode path
//! (ring buffer past the window), the f16 cache, and the error paths.

mod common;

use std::sync::Arc;

use common::{
    ids, max_abs_diff, prompts, read_json, read_npy, reference, tiny, tiny_gguf_with_retyped,
};
use foehn_kernels::GgmlType;
use foehn_loader::{config_from_gguf, config_from_hf, GgufFile, SafetensorsModel};
use foehn_model::{
    argmax, KvCache, KvCacheOptions, KvCacheType, LogitsMode, ModelError, RopeStyle, Scratch,
    Transformer,
};

/// Every shipped GGUF variant; each has a reference of its own.
const VARIANTS: [&str; 11] = [
    "F32", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K",
];

/// Dense weights, f32 arithmetic, f32 cache: as close as f32 gets to the
/// float64 reference of the same file.
const TOL: f32 = 1e-3;

/// Quantized weights: the kernels quantize activations to int8 (as llama.cpp
/// does), so the logits may be this many times llama.cpp's own distance from
/// the reference of the same file.
const LLAMA_CPP_FACTOR: f32 = 1.5;

/// With the f16 cache (llama.cpp's own f16-cache distance is ~0.008).
const TOL_F16_CACHE: f32 = 0.03;

/// A model to test and the reference folder it must reproduce.
struct Case {
    name: String,
    reference: &'static str,
    model: Transformer,
    /// Largest |Δ| allowed against the reference logits.
    tol: f32,
}

impl Case {
    /// Whether a greedy step with this reference margin (top1 − top2) must
    /// keep its argmax: always for dense weights, and where the margin is at
    /// least twice the tolerance for quantized ones.
    fn decisive(&self, margin: f64) -> bool {
        self.tol <= TOL || margin >= 2.0 * f64::from(self.tol)
    }
}

/// llama.cpp's own last-logits distance from the reference of the same file.
fn llama_cpp_distance(variant: &str) -> f32 {
    let t = read_json(&tiny().join("reference/tolerances.json"));
    t["variants"][variant]["llama_cpp_vs_ref_same_file"]["last_logits_max_abs_diff"]
        .as_f64()
        .unwrap() as f32
}

fn gguf_model(variant: &str) -> Transformer {
    let path = tiny().join(format!("gguf/tiny-mistral-{variant}.gguf"));
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Transformer::from_gguf(Arc::new(file)).unwrap_or_else(|e| panic!("{variant}: {e}"))
}

fn hf_model() -> Transformer {
    let dir = tiny().join("hf");
    let cfg = config_from_hf(&dir).unwrap();
    let st = SafetensorsModel::open(&dir).unwrap();
    Transformer::from_safetensors(Arc::new(st), cfg).unwrap()
}

fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = VARIANTS
        .iter()
        .map(|&v| Case {
            name: format!("GGUF {v}"),
            reference: v,
            model: gguf_model(v),
            tol: if v == "F32" {
                TOL
            } else {
                LLAMA_CPP_FACTOR * llama_cpp_distance(v)
            },
        })
        .collect();
    cases.push(Case {
        name: "HF safetensors".into(),
        reference: "F32",
        model: hf_model(),
        tol: TOL,
    });
    cases
}

fn session(model: &Transformer, dtype: KvCacheType, chunk: usize) -> (KvCache, Scratch) {
    let cache = model
        .new_cache(KvCacheOptions {
            ctx_len: None,
            types: dtype.into(),
            max_chunk: chunk,
        })
        .unwrap();
    let scratch = model.new_scratch(&cache);
    (cache, scratch)
}

/// Last-position logits of each prompt, fresh session each.
fn last_logits(model: &Transformer, dtype: KvCacheType) -> Vec<Vec<f32>> {
    prompts()
        .iter()
        .map(|(_, ids)| {
            let (mut cache, mut scratch) = session(model, dtype, 512);
            model
                .prefill(ids, &mut cache, &mut scratch)
                .unwrap()
                .to_vec()
        })
        .collect()
}

#[test]
fn models_are_built_as_expected() {
    let g = gguf_model("F32");
    assert_eq!(g.rope_style(), RopeStyle::AdjacentPairs);
    assert!(!g.is_tied());
    assert!(
        g.embedding().is_shared(),
        "GGUF weights are borrowed from the mmap"
    );
    assert_eq!(g.config().sliding_window, Some(16));
    let h = hf_model();
    assert_eq!(h.rope_style(), RopeStyle::Halves);
    assert_eq!(h.embedding().ty(), GgmlType::BF16);
    assert!(h.lm_head().is_shared());
    let q = gguf_model("Q4_K_M");
    assert_eq!(q.lm_head().ty(), GgmlType::Q6_K);
    assert_eq!(q.embedding().ty(), GgmlType::Q4_K);
}

#[test]
fn last_logits_match_reference_every_variant() {
    let mut report = Vec::new();
    for case in cases() {
        let want =
            read_npy(&tiny().join(format!("reference/{}/last_logits_swa.npy", case.reference)));
        assert_eq!(want.shape, [3, 1024]);
        let got = last_logits(&case.model, KvCacheType::F32);
        let worst = (0..3)
            .map(|i| max_abs_diff(&got[i], want.row(i)))
            .fold(0.0, f32::max);
        report.push((case.name, worst, case.tol));
    }
    for (name, d, tol) in &report {
        eprintln!("{name:>16}: last-logits max |Δ| = {d:.2e} (allowed {tol:.2e})");
    }
    for (name, d, tol) in report {
        assert!(d <= tol, "{name}: max |Δ| {d} > {tol}");
    }
}

#[test]
fn f16_cache_stays_close_to_reference() {
    for case in cases() {
        let want =
            read_npy(&tiny().join(format!("reference/{}/last_logits_swa.npy", case.reference)));
        let got = last_logits(&case.model, KvCacheType::F16);
        let worst = (0..3)
            .map(|i| max_abs_diff(&got[i], want.row(i)))
            .fold(0.0, f32::max);
        eprintln!("{:>16}: f16 cache max |Δ| = {worst:.2e}", case.name);
        assert!(worst <= case.tol + TOL_F16_CACHE, "{}: {worst}", case.name);
    }
}

/// All 24 positions of p24, with the chunk in one piece and in pieces of 7
/// (the ring then holds 22 slots and wraps).
#[test]
fn all_positions_of_p24_match_reference() {
    let want = read_npy(&tiny().join("reference/F32/prefill_p24_all_positions_swa.npy"));
    assert_eq!(want.shape, [24, 1024]);
    let p24 = prompts()[1].1.clone();
    assert_eq!(p24.len(), 24);
    for (name, model) in [("GGUF F32", gguf_model("F32")), ("HF", hf_model())] {
        for chunk in [24, 7] {
            let (mut cache, mut scratch) = session(&model, KvCacheType::F32, chunk);
            let mut got = Vec::new();
            for c in p24.chunks(chunk) {
                got.extend_from_slice(
                    model
                        .forward(c, &mut cache, &mut scratch, LogitsMode::All)
                        .unwrap(),
                );
            }
            let d = max_abs_diff(&got, &want.data);
            eprintln!("{name} chunk {chunk}: all positions max |Δ| = {d:.2e}");
            assert!(d <= TOL, "{name} chunk {chunk}: {d}");
        }
    }
}

#[test]
fn gguf_and_safetensors_give_the_same_logits() {
    let (g, h) = (gguf_model("F32"), hf_model());
    for (name, ids) in prompts() {
        let run = |m: &Transformer| {
            let (mut cache, mut scratch) = session(m, KvCacheType::F32, 64);
            m.forward(&ids, &mut cache, &mut scratch, LogitsMode::All)
                .unwrap()
                .to_vec()
        };
        let d = max_abs_diff(&run(&g), &run(&h));
        assert!(d <= 1e-4, "{name}: {d}");
    }
}

/// Teacher-forced run: prefills the prompt in chunks of `chunk`, then feeds
/// `forced` one token at a time (decode path); returns one logits vector per
/// forced token, the one that predicts it.
fn teacher_force(
    model: &Transformer,
    prompt: &[u32],
    forced: &[u32],
    chunk: usize,
) -> Vec<Vec<f32>> {
    let (mut cache, mut scratch) = session(model, KvCacheType::F32, chunk);
    let mut steps = vec![model
        .prefill(prompt, &mut cache, &mut scratch)
        .unwrap()
        .to_vec()];
    for &t in &forced[..forced.len() - 1] {
        let logits = model
            .forward(&[t], &mut cache, &mut scratch, LogitsMode::Last)
            .unwrap();
        steps.push(logits.to_vec());
    }
    assert_eq!(cache.position(), prompt.len() + forced.len() - 1);
    steps
}

#[test]
fn teacher_forcing_follows_greedy_swa_in_every_chunking() {
    let mut report = Vec::new();
    for case in cases() {
        let reference = reference(case.reference);
        let mut worst = 0.0f32;
        for (name, prompt) in prompts() {
            let r = &reference["prompts"][name.as_str()];
            let greedy = ids(&r["greedy_swa"]);
            let steps = r["greedy_swa_steps"].as_array().unwrap();
            assert_eq!(steps.len(), greedy.len());
            let runs: Vec<Vec<Vec<f32>>> = [512, 7, 1]
                .iter()
                .map(|&c| teacher_force(&case.model, &prompt, &greedy, c))
                .collect();
            for (k, (logits, step)) in runs[0].iter().zip(steps).enumerate() {
                let at = format!("{} {name} step {k}", case.name);
                let (top1, top2) = (
                    step["top1"].as_u64().unwrap(),
                    step["top2"].as_u64().unwrap(),
                );
                assert_eq!(top1 as u32, greedy[k], "{at}: fixture");
                if case.decisive(step["margin"].as_f64().unwrap()) {
                    assert_eq!(argmax(logits), greedy[k], "{at}: argmax");
                }
                for (id, key) in [(top1, "top1_logit"), (top2, "top2_logit")] {
                    let want = step[key].as_f64().unwrap() as f32;
                    let d = (logits[id as usize] - want).abs();
                    worst = worst.max(d);
                    // Past the prompt the tolerance of quantized variants is
                    // doubled: only the last prompt position has llama.cpp's
                    // distance to compare with.
                    let tol = if case.tol <= TOL { TOL } else { 2.0 * case.tol };
                    assert!(d <= tol, "{at}: {key} {} vs {want}", logits[id as usize]);
                }
            }
            // Chunks of 7 and of 1 (ring of 22 / 16 slots, 55 positions) give
            // the same logits as one chunk.
            for (c, run) in [(7, &runs[1]), (1, &runs[2])] {
                for (k, (a, b)) in runs[0].iter().zip(run).enumerate() {
                    let d = max_abs_diff(a, b);
                    assert!(d <= 1e-5, "{} {name} chunk {c} step {k}: {d}", case.name);
                }
            }
        }
        report.push((case.name, worst));
    }
    for (name, d) in report {
        eprintln!("{name:>16}: teacher-forced top1/top2 logits max |Δ| = {d:.2e}");
    }
}

/// Where the no-window references differ from the windowed ones, the engine
/// follows the window.
#[test]
fn no_window_references_are_not_reproduced() {
    let mut differing_steps = 0;
    let mut differing_logits = 0;
    for case in cases() {
        let reference = reference(case.reference);
        let noswa = read_npy(&tiny().join(format!(
            "reference/{}/last_logits_noswa.npy",
            case.reference
        )));
        let swa =
            read_npy(&tiny().join(format!("reference/{}/last_logits_swa.npy", case.reference)));
        let got = last_logits(&case.model, KvCacheType::F32);
        for (i, (name, prompt)) in prompts().into_iter().enumerate() {
            if max_abs_diff(swa.row(i), noswa.row(i)) > 0.1 + 2.0 * case.tol {
                differing_logits += 1;
                let d = max_abs_diff(&got[i], noswa.row(i));
                assert!(
                    d > 0.05,
                    "{} {name}: reproduces the no-window logits ({d})",
                    case.name
                );
            }
            let r = &reference["prompts"][name.as_str()];
            let (g_swa, g_noswa) = (ids(&r["greedy_swa"]), ids(&r["greedy_noswa"]));
            // The first step where the two greedy runs part: same context, and
            // the windowed argmax is the swa token.
            let Some(k) = (0..g_swa.len()).find(|&k| g_swa[k] != g_noswa[k]) else {
                continue;
            };
            let margin = r["greedy_swa_steps"][k]["margin"].as_f64().unwrap();
            if !case.decisive(margin) {
                continue;
            }
            differing_steps += 1;
            let steps = teacher_force(&case.model, &prompt, &g_swa[..=k], 512);
            let top = argmax(&steps[k]);
            assert_eq!(top, g_swa[k], "{} {name} step {k}", case.name);
            assert_ne!(top, g_noswa[k], "{} {name} step {k}", case.name);
        }
    }
    eprintln!("{differing_logits} prompt logits and {differing_steps} greedy runs differ with/without the window");
    assert!(
        differing_logits > 0 && differing_steps > 0,
        "the fixture should exercise the window"
    );
}

#[test]
fn prompt_longer_than_context_is_an_error() {
    let model = gguf_model("Q8_0");
    let p40 = prompts()[2].1.clone();
    let mut cache = model
        .new_cache(KvCacheOptions {
            ctx_len: Some(32),
            types: KvCacheType::F32.into(),
            max_chunk: 8,
        })
        .unwrap();
    let mut scratch = model.new_scratch(&cache);
    let err = model.prefill(&p40, &mut cache, &mut scratch).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::ContextOverflow {
                position: 0,
                n_tokens: 40,
                ctx_len: 32
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("context"), "{err}");
    assert_eq!(cache.position(), 0);
    // Filling the context exactly works; one more token does not.
    model.prefill(&p40[..32], &mut cache, &mut scratch).unwrap();
    let err = model
        .forward(&[5], &mut cache, &mut scratch, LogitsMode::Last)
        .unwrap_err();
    assert!(
        matches!(err, ModelError::ContextOverflow { position: 32, .. }),
        "{err}"
    );
    // Other misuse is an error too, never a panic.
    cache.clear();
    let err = model
        .forward(&p40[..9], &mut cache, &mut scratch, LogitsMode::Last)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::ChunkTooLarge {
                n_tokens: 9,
                max: 8,
                ..
            }
        ),
        "{err}"
    );
    let err = model
        .forward(&[1024], &mut cache, &mut scratch, LogitsMode::Last)
        .unwrap_err();
    assert!(
        matches!(err, ModelError::TokenOutOfRange { id: 1024, .. }),
        "{err}"
    );
    assert!(matches!(
        model.forward(&[], &mut cache, &mut scratch, LogitsMode::Last),
        Err(ModelError::EmptyInput)
    ));
    assert_eq!(cache.position(), 0);
}

/// Chat KV reuse: keep a prefix, process only the new tokens.
#[test]
fn truncated_cache_reuses_the_prefix() {
    let model = gguf_model("Q6_K");
    let p40 = prompts()[2].1.clone();
    for chunk in [512, 7] {
        let (mut fresh, mut scratch) = session(&model, KvCacheType::F32, chunk);
        let want = model
            .prefill(&p40, &mut fresh, &mut scratch)
            .unwrap()
            .to_vec();
        // A different continuation first, then back to p40's own tail.
        let (mut cache, mut scratch) = session(&model, KvCacheType::F32, chunk);
        let mut other = p40[..36].to_vec();
        other.extend_from_slice(&[300, 301, 302, 303]);
        model.prefill(&other, &mut cache, &mut scratch).unwrap();
        cache.truncate(36).unwrap();
        let got = model.prefill(&p40[36..], &mut cache, &mut scratch).unwrap();
        assert!(max_abs_diff(got, &want) <= 1e-5, "chunk {chunk}");
        assert_eq!(cache.position(), 40);
        if chunk == 7 {
            // The 22-slot ring no longer holds what a query at 20 needs.
            assert!(matches!(
                cache.truncate(20),
                Err(ModelError::Truncate { .. })
            ));
            assert_eq!(cache.position(), 40);
        }
    }
}

#[test]
fn uncomputable_type_and_wrong_shape_are_errors_at_build() {
    let path = tiny().join("gguf/tiny-mistral-F32.gguf");
    let src = GgufFile::open(&path).unwrap();
    // blk.1.ffn_up.weight stored as IQ2_XXS, a type foehn cannot dequantize.
    let file = tiny_gguf_with_retyped("blk.1.ffn_up.weight", GgmlType::IQ2_XXS);
    let err = Transformer::from_gguf(Arc::new(file)).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedTensorType { tensor, ty } if tensor == "blk.1.ffn_up.weight" && ty == "IQ2_XXS"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("blk.1.ffn_up.weight") && msg.contains("IQ2_XXS"),
        "{msg}"
    );

    // A configuration that does not match the tensors.
    let file = Arc::new(src);
    let mut cfg = config_from_gguf(&file).unwrap();
    cfg.intermediate_size = 384;
    let err = Transformer::from_gguf_with_config(file.clone(), cfg).unwrap_err();
    assert!(
        matches!(&err, ModelError::Shape { tensor, expected, found } if tensor == "blk.0.ffn_gate.weight" && expected == &[256, 384] && found == &[256, 512]),
        "{err}"
    );
    let mut cfg = config_from_gguf(&file).unwrap();
    cfg.num_key_value_heads = 4;
    let err = Transformer::from_gguf_with_config(file, cfg).unwrap_err();
    assert!(
        matches!(&err, ModelError::Shape { tensor, .. } if tensor == "blk.0.attn_k.weight"),
        "{err}"
    );
}

#[test]
fn cache_and_scratch_of_another_model_are_refused() {
    let model = gguf_model("Q8_0");
    let mut other_cfg = model.config().clone();
    other_cfg.num_hidden_layers = 3;
    let mut cache = KvCache::new(&other_cfg, KvCacheOptions::default()).unwrap();
    let mut scratch = Scratch::for_cache(&other_cfg, &cache, 1);
    assert!(matches!(
        model.forward(&[1], &mut cache, &mut scratch, LogitsMode::Last),
        Err(ModelError::Mismatch(_))
    ));
    let mut cache = model.new_cache(KvCacheOptions::default()).unwrap();
    other_cfg.num_hidden_layers = 2;
    other_cfg.intermediate_size = 128;
    let mut scratch = Scratch::for_cache(&other_cfg, &cache, 1);
    assert!(matches!(
        model.forward(&[1], &mut cache, &mut scratch, LogitsMode::Last),
        Err(ModelError::Mismatch(_))
    ));
}

#[test]
fn safetensors_tensor_of_uncomputable_dtype_is_an_error_at_build() {
    let dir = tiny().join("hf");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    // Same element size, so the byte ranges stay valid.
    header["model.layers.1.mlp.up_proj.weight"]["dtype"] = "I16".into();
    let mut text = serde_json::to_vec(&header).unwrap();
    assert!(text.len() <= header_len);
    text.resize(header_len, b' ');
    let mut patched = bytes[..8].to_vec();
    patched.extend_from_slice(&text);
    patched.extend_from_slice(&bytes[8 + header_len..]);
    let st = SafetensorsModel::from_bytes(patched).unwrap();
    let cfg = config_from_hf(&dir).unwrap();
    let err = Transformer::from_safetensors(Arc::new(st), cfg).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedTensorType { tensor, ty } if tensor == "model.layers.1.mlp.up_proj.weight" && ty == "I16"),
        "{err}"
    );
}

/// `ActPrecision::PromptBf16`: a prompt computed in bf16 passes (where the
/// CPU has AMX-BF16; elsewhere as Q8) gives logits within twice the
/// variant's tolerance of the Q8 ones (each is within it of the
/// reference), and the same bits however the prompt is split into passes,
/// down to a pass of one token — what the prefix cache relies on.
#[test]
fn bf16_prompts_are_close_to_q8_and_split_invariant() {
    use foehn_model::ActPrecision;
    let p40 = prompts()[2].1.clone();
    for variant in ["Q8_0", "Q4_0", "Q4_K_M", "Q6_K"] {
        let model = gguf_model(variant);
        let tol = LLAMA_CPP_FACTOR * llama_cpp_distance(variant);
        let run = |precision: ActPrecision, cuts: &[usize]| {
            let (mut cache, mut scratch) = session(&model, KvCacheType::F32, 512);
            scratch.set_act_precision(precision);
            let (mut at, mut last) = (0, Vec::new());
            for &end in cuts {
                last = model
                    .prefill(&p40[at..end], &mut cache, &mut scratch)
                    .unwrap()
                    .to_vec();
                at = end;
            }
            last
        };
        let q8 = run(ActPrecision::Q8, &[40]);
        let whole = run(ActPrecision::PromptBf16, &[40]);
        let d = max_abs_diff(&whole, &q8);
        eprintln!("{variant}: bf16 prompt vs Q8 max abs diff {d:.2e} (tol {tol:.2e})");
        assert!(d <= 2.0 * tol, "{variant}: bf16 prompt vs Q8 {d}");
        for cuts in [&[36, 40][..], &[7, 14, 21, 28, 35, 39, 40]] {
            let split = run(ActPrecision::PromptBf16, cuts);
            assert_eq!(split, whole, "{variant}: split at {cuts:?}");
        }
    }
}
