//! The candle backend on the CPU device against the float64 references of
//! `tests/fixtures/tiny-mistral/reference`, sliding window on: F32 GGUF and HF
//! safetensors to 1e-3 (f32 cache), every quantized variant within 1.5× the
//! distance llama.cpp itself keeps from the reference of the same file
//! (candle quantizes the activations like llama.cpp), teacher forcing on the
//! greedy tokens, chunked prefill, the f16 cache and the error paths.
//!
//! `FOEHN_TEST_DEVICE=cuda:0` (or `metal`) runs the same tests, with the same
//! tolerances, on that device (build with `--features cuda` / `metal`; the GPU
//! script `tests/gpu/run.sh` does).

#![cfg(feature = "candle")]

mod common;

use std::sync::Arc;

use common::{
    ids, max_abs_diff, prompts, read_json, read_npy, reference, tiny, tiny_gguf_with_retyped,
};
use foehn_kernels::GgmlType;
use foehn_loader::{config_from_hf, GgufFile, SafetensorsModel};
use foehn_model::candle::{Candle, CandleCache, CandleTransformer, CandleWork, Device};
use foehn_model::{
    argmax, CandleDevice, KvCacheOptions, KvCacheType, KvTypes, LogitsMode, Model, ModelError,
    RopeStyle,
};

/// The quantized GGUF variants.
const QUANT_VARIANTS: [&str; 10] = [
    "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K",
];

/// Dense f32 weights, f32 arithmetic, f32 cache.
const TOL: f32 = 1e-3;

/// The device under test: `FOEHN_TEST_DEVICE` (`cpu`, `cuda:N`, `metal`), the
/// CPU when unset.
fn device() -> Device {
    static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let name = std::env::var("FOEHN_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
            let device: CandleDevice = name
                .parse()
                .unwrap_or_else(|e| panic!("FOEHN_TEST_DEVICE: {e}"));
            device
                .open()
                .unwrap_or_else(|e| panic!("FOEHN_TEST_DEVICE={name}: {e}"))
        })
        .clone()
}

fn gguf_file(variant: &str) -> Arc<GgufFile> {
    let path = tiny().join(format!("gguf/tiny-mistral-{variant}.gguf"));
    Arc::new(GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn gguf_model(variant: &str) -> CandleTransformer {
    CandleTransformer::from_gguf(&gguf_file(variant), &device())
        .unwrap_or_else(|e| panic!("{variant}: {e}"))
}

fn hf_model() -> CandleTransformer {
    let dir = tiny().join("hf");
    let cfg = config_from_hf(&dir).unwrap();
    let st = Arc::new(SafetensorsModel::open(&dir).unwrap());
    CandleTransformer::from_safetensors(&st, cfg, &device()).unwrap()
}

/// llama.cpp's own last-logits distance from the reference of the same file.
fn llama_cpp_distance(variant: &str) -> f32 {
    let t = read_json(&tiny().join("reference/tolerances.json"));
    t["variants"][variant]["llama_cpp_vs_ref_same_file"]["last_logits_max_abs_diff"]
        .as_f64()
        .unwrap() as f32
}

/// A session of a model: its cache and work buffers.
struct Session<'m> {
    model: &'m CandleTransformer,
    cache: CandleCache,
    work: CandleWork,
}

impl Session<'_> {
    fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let logits = self
            .model
            .prefill(tokens, &mut self.cache, &mut self.work)?;
        Ok(logits.to_vec())
    }

    fn forward(&mut self, tokens: &[u32], mode: LogitsMode) -> Result<Vec<f32>, ModelError> {
        let logits = self
            .model
            .forward(tokens, &mut self.cache, &mut self.work, mode)?;
        Ok(logits.to_vec())
    }
}

fn session_with(model: &CandleTransformer, opts: KvCacheOptions) -> Session<'_> {
    let cache = model.new_cache(opts).unwrap();
    let work = model.new_scratch(&cache);
    Session { model, cache, work }
}

fn cache(model: &CandleTransformer, dtype: KvCacheType, chunk: usize) -> Session<'_> {
    session_with(
        model,
        KvCacheOptions {
            ctx_len: None,
            types: dtype.into(),
            max_chunk: chunk,
        },
    )
}

/// Worst last-position |Δ| over the prompts against the variant's reference.
fn last_logits_distance(model: &CandleTransformer, variant: &str, dtype: KvCacheType) -> f32 {
    let want = read_npy(&tiny().join(format!("reference/{variant}/last_logits_swa.npy")));
    assert_eq!(want.shape, [3, 1024]);
    prompts()
        .iter()
        .enumerate()
        .map(|(i, (_, ids))| {
            let mut c = cache(model, dtype, 512);
            let got = c.prefill(ids).unwrap();
            max_abs_diff(&got, want.row(i))
        })
        .fold(0.0, f32::max)
}

/// Prefills `prompt` in chunks of `chunk`, then feeds `forced` one token at a
/// time; one logits vector per forced token (the one that predicts it).
fn teacher_force(
    model: &CandleTransformer,
    prompt: &[u32],
    forced: &[u32],
    chunk: usize,
) -> Vec<Vec<f32>> {
    let mut c = cache(model, KvCacheType::F32, chunk);
    let mut steps = vec![c.prefill(prompt).unwrap()];
    for &t in &forced[..forced.len() - 1] {
        steps.push(c.forward(&[t], LogitsMode::Last).unwrap());
    }
    assert_eq!(c.cache.position(), prompt.len() + forced.len() - 1);
    steps
}

/// Teacher forcing on `greedy_swa`: the argmax must be the reference token at
/// every step whose reference margin (top1 − top2) is at least `min_margin`.
/// Returns (steps checked, steps in all).
fn check_teacher_forcing(
    model: &CandleTransformer,
    variant: &str,
    min_margin: f64,
    chunk: usize,
) -> (usize, usize) {
    let reference = reference(variant);
    let (mut checked, mut total) = (0, 0);
    for (name, prompt) in prompts() {
        let r = &reference["prompts"][name.as_str()];
        let greedy = ids(&r["greedy_swa"]);
        let steps = r["greedy_swa_steps"].as_array().unwrap();
        let run = teacher_force(model, &prompt, &greedy, chunk);
        for (k, (logits, step)) in run.iter().zip(steps).enumerate() {
            total += 1;
            if step["margin"].as_f64().unwrap() < min_margin {
                continue;
            }
            checked += 1;
            assert_eq!(
                argmax(logits),
                greedy[k],
                "{variant} {name} step {k} (chunk {chunk})"
            );
        }
    }
    (checked, total)
}

#[test]
fn dense_models_match_reference() {
    let g = gguf_model("F32");
    assert_eq!(g.rope_style(), RopeStyle::AdjacentPairs);
    let h = hf_model();
    assert_eq!(h.rope_style(), RopeStyle::Halves);
    for (name, model) in [("GGUF F32", &g), ("HF safetensors", &h)] {
        let d = last_logits_distance(model, "F32", KvCacheType::F32);
        eprintln!("{name:>16}: last-logits max |Δ| = {d:.2e}");
        assert!(d <= TOL, "{name}: {d}");
        let d16 = last_logits_distance(model, "F32", KvCacheType::F16);
        eprintln!("{name:>16}: f16 cache max |Δ| = {d16:.2e}");
        assert!(d16 <= 0.03, "{name} f16 cache: {d16}");
        // Every step, in one chunk and in chunks of 7 (the ring wraps).
        for chunk in [512, 7] {
            let (checked, total) = check_teacher_forcing(model, "F32", 0.0, chunk);
            assert_eq!(checked, total);
        }
    }
}

/// All positions of p24 in one chunk, in chunks of 7 and one at a time.
#[test]
fn all_positions_and_chunkings_agree() {
    let want = read_npy(&tiny().join("reference/F32/prefill_p24_all_positions_swa.npy"));
    let p24 = prompts()[1].1.clone();
    for (name, model) in [("GGUF F32", gguf_model("F32")), ("HF", hf_model())] {
        for chunk in [24, 7, 1] {
            let mut c = cache(&model, KvCacheType::F32, chunk);
            let mut got = Vec::new();
            for part in p24.chunks(chunk) {
                got.extend(c.forward(part, LogitsMode::All).unwrap());
            }
            let d = max_abs_diff(&got, &want.data);
            eprintln!("{name} chunk {chunk}: all positions max |Δ| = {d:.2e}");
            assert!(d <= TOL, "{name} chunk {chunk}: {d}");
        }
    }
}

/// On x86 CPUs with AVX-512 VNNI, candle 0.11 runs Q8_0 weights through a
/// repacked kernel that quantizes the activations to Q8_K (one scale per 256
/// values) instead of llama.cpp's Q8_0 (one per 32): coarser, measured at
/// 2.3× llama.cpp's distance on tiny-mistral (1.37× with the per-32 path,
/// `MISTRALRS_FORCE_AVX2=1`). Only that case gets the wider bound.
const Q8_0_AS_Q8_K_FACTOR: f32 = 2.5;

/// Whether candle's AVX-512 VNNI repacked path (Q8_K activations) is taken.
fn q8_0_activations_in_q8_k() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let forced = ["MISTRALRS_FORCE_AVX2", "MISTRALRS_FORCE_AVXVNNI"]
            .iter()
            .any(|k| std::env::var(k).as_deref() == Ok("1"));
        !forced && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[test]
fn quantized_variants_stay_within_llama_cpp_distance() {
    let mut report = Vec::new();
    for variant in QUANT_VARIANTS {
        let model = gguf_model(variant);
        let limit = llama_cpp_distance(variant);
        let d = last_logits_distance(&model, variant, KvCacheType::F32);
        let (checked, total) = check_teacher_forcing(&model, variant, 2.0 * f64::from(limit), 512);
        report.push((variant, d, limit, checked, total));
    }
    for (v, d, limit, checked, total) in &report {
        eprintln!(
            "{v:>7}: last-logits max |Δ| = {d:.3} (llama.cpp {limit:.3}); top-1 agrees at {checked}/{total} teacher-forced steps with margin ≥ 2×"
        );
    }
    for (v, d, limit, checked, _) in report {
        let factor = if v == "Q8_0" && q8_0_activations_in_q8_k() {
            Q8_0_AS_Q8_K_FACTOR
        } else {
            1.5
        };
        assert!(d <= factor * limit, "{v}: max |Δ| {d} > {factor} × {limit}");
        assert!(checked > 0, "{v}: no step checked");
    }
}

#[test]
fn misuse_is_an_error() {
    let model = gguf_model("Q8_0");
    let p40 = prompts()[2].1.clone();
    // The quantized KV cache is the CPU backend's: a clear error, on either
    // side; f16 keys with f32 values work.
    for (k, v) in [
        (KvCacheType::Q8_0, KvCacheType::Q8_0),
        (KvCacheType::F16, KvCacheType::Q4_0),
    ] {
        let opts = KvCacheOptions {
            types: KvTypes { k, v },
            ..KvCacheOptions::default()
        };
        let err = model.new_cache(opts).unwrap_err();
        assert!(
            matches!(&err, ModelError::Config(m) if m.contains("cpu-only")),
            "{err}"
        );
    }
    let mixed = KvCacheOptions {
        ctx_len: Some(64),
        types: KvTypes {
            k: KvCacheType::F16,
            v: KvCacheType::F32,
        },
        max_chunk: 64,
    };
    let exact = gguf_model("F32");
    let mut c = session_with(&exact, mixed);
    // 2 layers × 64 slots × kv_dim 128, 2 + 4 bytes.
    assert_eq!(c.cache.memory_bytes(), 2 * 64 * 128 * (2 + 4));
    let want = cache(&exact, KvCacheType::F32, 64).prefill(&p40).unwrap();
    let got = c.prefill(&p40).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d <= 0.01, "f16 keys, f32 values: {d}");
    let mut c = session_with(
        &model,
        KvCacheOptions {
            ctx_len: Some(32),
            types: KvCacheType::F32.into(),
            max_chunk: 8,
        },
    );
    let err = c.prefill(&p40).unwrap_err();
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
    assert_eq!(c.cache.position(), 0);
    c.prefill(&p40[..32]).unwrap();
    let err = c.forward(&[5], LogitsMode::Last).unwrap_err();
    assert!(
        matches!(err, ModelError::ContextOverflow { position: 32, .. }),
        "{err}"
    );
    c.cache.clear();
    let err = c.forward(&p40[..9], LogitsMode::Last).unwrap_err();
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
    let err = c.forward(&[1024], LogitsMode::Last).unwrap_err();
    assert!(
        matches!(err, ModelError::TokenOutOfRange { id: 1024, .. }),
        "{err}"
    );
    assert!(matches!(
        c.forward(&[], LogitsMode::Last),
        Err(ModelError::EmptyInput)
    ));
    assert!(c.forward(&[5], LogitsMode::Skip).unwrap().is_empty());
    // A cache of another model is refused.
    let mut other = model.config().clone();
    other.num_hidden_layers = 3;
    let mut wrong = CandleCache::new_on(&other, KvCacheOptions::default(), &device()).unwrap();
    assert!(matches!(
        model.forward(&[5], &mut wrong, &mut c.work, LogitsMode::Last),
        Err(ModelError::Mismatch(_))
    ));
}

/// Chat KV reuse: keep a prefix, process only the new tokens.
#[test]
fn truncated_cache_reuses_the_prefix() {
    let model = gguf_model("F32");
    let p40 = prompts()[2].1.clone();
    for chunk in [512, 7] {
        let want = cache(&model, KvCacheType::F32, chunk)
            .prefill(&p40)
            .unwrap();
        let mut c = cache(&model, KvCacheType::F32, chunk);
        let mut other = p40[..36].to_vec();
        other.extend_from_slice(&[300, 301, 302, 303]);
        c.prefill(&other).unwrap();
        c.cache.truncate(36).unwrap();
        let got = c.prefill(&p40[36..]).unwrap();
        assert!(max_abs_diff(&got, &want) <= 1e-4, "chunk {chunk}");
        if chunk == 7 {
            assert!(matches!(
                c.cache.truncate(20),
                Err(ModelError::Truncate { .. })
            ));
        }
    }
}

#[test]
fn type_without_candle_kernels_is_an_error_naming_the_tensor() {
    // blk.1.ffn_up.weight stored as IQ4_NL, which foehn can dequantize but
    // candle has no kernels for.
    let file = Arc::new(tiny_gguf_with_retyped(
        "blk.1.ffn_up.weight",
        GgmlType::IQ4_NL,
    ));
    let err = CandleTransformer::from_gguf(&file, &device()).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedTensorType { tensor, .. } if tensor == "blk.1.ffn_up.weight"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("blk.1.ffn_up.weight") && msg.contains("IQ4_NL"),
        "{msg}"
    );
}

/// The embedding kept on the device (as on a GPU) and looked up there gives
/// the logits of the rows gathered on the host, bit for bit.
#[test]
fn device_embedding_matches_host_rows() {
    for variant in ["F32", "Q4_K_M"] {
        let host = gguf_model(variant);
        let backend = Candle::new(device()).with_device_embedding(true);
        let on_device = Model::load_gguf(backend, gguf_file(variant)).unwrap();
        for chunk in [512, 7] {
            let a = teacher_force(&host, &prompts()[2].1, &[5, 6, 7], chunk);
            let b = teacher_force(&on_device, &prompts()[2].1, &[5, 6, 7], chunk);
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(max_abs_diff(x, y), 0.0, "{variant} chunk {chunk}");
            }
        }
    }
}
