//! Mistral 3 (`mistral3`): YaRN RoPE and the Llama-4 attention temperature,
//! on tiny-mistral's weights with Ministral 3's settings (YaRN factor 16 over
//! an original context of 16,384, magnitude 1, temperature beta 0.1, no
//! window), teacher-forced over 16,512 tokens, so positions on both sides of
//! the temperature's first step are checked against the float64 reference
//! (`tests/tools/ref_llama.py`) and llama.cpp's `mistral3` on the same
//! model (`tests/fixtures/tiny-mistral3`).

mod common;

use std::sync::{Arc, OnceLock};

use common::{max_abs_diff, read_json, read_npy, tiny, TinyHfDir};
use foehn_core::{AttnTemperature, ModelConfig, RopeScaling};
use foehn_loader::gguf::{GgufWriter, Value};
use foehn_loader::{config_from_gguf, config_from_hf, GgufFile, SafetensorsModel};
use foehn_model::{argmax, Backend, KvCacheOptions, KvCacheType, LogitsMode, Model, Transformer};
use foehn_testkit::fixture;

/// Dense weights, f32 arithmetic, f32 cache (as in tiny_mistral.rs).
const TOL: f32 = 1e-3;

/// The temperature's first step.
const TEMPERATURE_LENGTH: usize = 16384;

/// The teacher-forced tokens (BOS first) and the positions whose logits the
/// fixtures hold.
fn prompt() -> &'static (Vec<u32>, Vec<usize>) {
    static PROMPT: OnceLock<(Vec<u32>, Vec<usize>)> = OnceLock::new();
    PROMPT.get_or_init(|| {
        let j = read_json(&fixture("tiny-mistral3/prompt.json"));
        let num = |v: &serde_json::Value| -> Vec<u64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect()
        };
        let tokens = num(&j["tokens"]).into_iter().map(|t| t as u32).collect();
        let positions = num(&j["positions"])
            .into_iter()
            .map(|p| p as usize)
            .collect();
        (tokens, positions)
    })
}

/// tiny-mistral-F32.gguf rewritten as a Ministral 3 file, as
/// `tests/tools/derive_tiny.py mistral3` writes it with gguf-py.
fn mistral3_gguf() -> Arc<GgufFile> {
    static FILE: OnceLock<Arc<GgufFile>> = OnceLock::new();
    FILE.get_or_init(|| {
        let src = GgufFile::open(tiny().join("gguf/tiny-mistral-F32.gguf")).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in src.metadata().iter() {
            let key = match k.strip_prefix("llama.") {
                Some("context_length" | "attention.sliding_window") => continue,
                Some(rest) => format!("mistral3.{rest}"),
                None if k == "general.architecture" => continue,
                None => k.to_string(),
            };
            w.add_metadata(key, v.clone()).unwrap();
        }
        for (k, v) in [
            ("general.architecture", Value::String("mistral3".into())),
            ("mistral3.context_length", Value::U32(32768)),
            ("mistral3.rope.scaling.type", Value::String("yarn".into())),
            ("mistral3.rope.scaling.factor", Value::F32(16.0)),
            (
                "mistral3.rope.scaling.original_context_length",
                Value::U32(16384),
            ),
            ("mistral3.rope.scaling.yarn_beta_fast", Value::F32(32.0)),
            ("mistral3.rope.scaling.yarn_beta_slow", Value::F32(1.0)),
            ("mistral3.rope.scaling.yarn_log_multiplier", Value::F32(1.0)),
            ("mistral3.attention.temperature_scale", Value::F32(0.1)),
        ] {
            w.add_metadata(k, v).unwrap();
        }
        for info in src.tensors() {
            let t = src.tensor(&info.name).unwrap();
            w.add_tensor(&info.name, t.ty, t.shape, t.data).unwrap();
        }
        let mut bytes = Vec::new();
        w.write_to(&mut bytes).unwrap();
        Arc::new(GgufFile::from_bytes(bytes).unwrap())
    })
    .clone()
}

fn config(temperature: bool) -> ModelConfig {
    let mut cfg = config_from_gguf(&mistral3_gguf()).unwrap();
    if !temperature {
        cfg.attn_temperature = None;
    }
    cfg
}

/// Teacher-forces the prompt in chunks of 512 and returns the logits of the
/// fixture positions.
fn logits_at<B: Backend>(model: &Model<B>, dtype: KvCacheType) -> Vec<Vec<f32>> {
    let (tokens, positions) = prompt();
    let mut cache = model
        .new_cache(KvCacheOptions {
            ctx_len: Some(tokens.len()),
            types: dtype.into(),
            max_chunk: 512,
        })
        .unwrap();
    let mut work = model.new_scratch(&cache);
    let vocab = model.config().vocab_size;
    let mut out = Vec::new();
    for (c, chunk) in tokens.chunks(512).enumerate() {
        let logits = model
            .forward(chunk, &mut cache, &mut work, LogitsMode::All)
            .unwrap();
        for &p in positions.iter().filter(|&&p| p / 512 == c) {
            let row = p % 512;
            out.push(logits[row * vocab..(row + 1) * vocab].to_vec());
        }
    }
    assert_eq!(out.len(), positions.len());
    out
}

/// The CPU backend's logits with the temperature (f32 cache), computed once.
fn cpu_logits() -> &'static Vec<Vec<f32>> {
    static LOGITS: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    LOGITS.get_or_init(|| {
        let model = Transformer::from_gguf_with_config(mistral3_gguf(), config(true)).unwrap();
        logits_at(&model, KvCacheType::F32)
    })
}

/// The largest |Δ| of each position against the reference rows in `npy`.
fn distances(logits: &[Vec<f32>], npy: &str) -> Vec<f32> {
    let reference = read_npy(&fixture(&format!("tiny-mistral3/{npy}")));
    logits
        .iter()
        .enumerate()
        .map(|(i, l)| max_abs_diff(l, reference.row(i)))
        .collect()
}

#[test]
fn the_file_reads_as_ministral_3() {
    let cfg = config(true);
    assert_eq!(
        cfg.rope_scaling,
        Some(RopeScaling::Yarn {
            factor: 16.0,
            original_max_position_embeddings: 16384,
            beta_fast: 32.0,
            beta_slow: 1.0,
            magnitude: 1.0,
        })
    );
    assert_eq!(
        cfg.attn_temperature,
        Some(AttnTemperature {
            beta: 0.1,
            length: TEMPERATURE_LENGTH
        })
    );
    assert_eq!(cfg.sliding_window, None);
}

#[test]
fn cpu_matches_the_reference_on_both_sides_of_the_original_context() {
    let d = distances(cpu_logits(), "ref.npy");
    let worst = d.iter().copied().fold(0.0, f32::max);
    eprintln!(
        "CPU vs f64 reference: max |Δ| {worst:.2e} over {} positions",
        d.len()
    );
    assert!(worst < TOL, "max |Δ| {worst} (per position: {d:?})");
}

#[test]
fn the_temperature_changes_exactly_the_positions_past_its_length() {
    let model = Transformer::from_gguf_with_config(mistral3_gguf(), config(false)).unwrap();
    let cold = logits_at(&model, KvCacheType::F32);
    let d = distances(&cold, "ref-notemp.npy");
    assert!(d.iter().all(|&x| x < TOL), "without temperature: {d:?}");
    let positions = &prompt().1;
    for ((&p, with), without) in positions.iter().zip(cpu_logits()).zip(&cold) {
        let diff = max_abs_diff(with, without);
        if p < TEMPERATURE_LENGTH {
            assert_eq!(diff, 0.0, "position {p} is below the temperature's length");
        } else {
            assert!(
                diff > 0.05,
                "position {p}: the temperature changed only {diff}"
            );
        }
    }
}

#[test]
fn top1_agrees_with_llama_cpp_where_its_margin_allows() {
    let ours = cpu_logits();
    let reference = read_npy(&fixture("tiny-mistral3/ref.npy"));
    let steps = read_json(&fixture("tiny-mistral3/llama_cpp.json"))["steps"].clone();
    let steps = steps.as_array().unwrap();
    let log_softmax = |row: &[f32], id: usize| {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        row[id] as f64 - max - sum.ln()
    };
    // llama.cpp's distance from the reference: its top-1 log-probability.
    let mut distance: f64 = 0.0;
    for (i, s) in steps.iter().enumerate() {
        if let Some(top) = s["top"].as_array() {
            let (id, lp) = (
                top[0][0].as_u64().unwrap() as usize,
                top[0][1].as_f64().unwrap(),
            );
            distance = distance.max((lp - log_softmax(reference.row(i), id)).abs());
        }
    }
    eprintln!("llama.cpp vs f64 reference: top-1 log-probability within {distance:.4}");
    let mut checked = 0;
    for (i, s) in steps.iter().enumerate() {
        let Some(top) = s["top"].as_array() else {
            continue;
        };
        let margin = top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap();
        if margin >= 2.0 * distance {
            let theirs = top[0][0].as_u64().unwrap() as u32;
            assert_eq!(argmax(&ours[i]), theirs, "position {}", s["pos"]);
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} positions had a clear margin");
    // Past the temperature's step too.
    assert!(steps
        .iter()
        .filter(|s| s["pos"].as_u64().unwrap() >= TEMPERATURE_LENGTH as u64)
        .any(|s| !s["top"].is_null()));
}

#[test]
fn hf_ministral3_config_gives_the_same_logits() {
    // A Mistral3ForConditionalGeneration config around tiny-mistral's text
    // weights (rotate-halves RoPE on un-permuted Q/K).
    let mut text: serde_json::Value = read_json(&tiny().join("hf/config.json"));
    text["model_type"] = "ministral3".into();
    text["sliding_window"] = serde_json::Value::Null;
    text["max_position_embeddings"] = 262_144.into();
    text.as_object_mut().unwrap().remove("rope_theta");
    text["rope_parameters"] = serde_json::json!({
        "rope_type": "yarn", "type": "yarn", "factor": 16.0, "rope_theta": 1e6,
        "original_max_position_embeddings": 16384, "beta_fast": 32.0, "beta_slow": 1.0,
        "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1
    });
    let top = serde_json::json!({
        "architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
        "text_config": text, "vision_config": {"hidden_size": 1024}
    });
    let dir = TinyHfDir::new("ministral3", &top);
    let cfg = config_from_hf(&dir.0).unwrap();
    let gguf_cfg = config(true);
    assert_eq!(
        (&cfg.rope_scaling, cfg.attn_temperature),
        (&gguf_cfg.rope_scaling, gguf_cfg.attn_temperature)
    );
    let st = Arc::new(SafetensorsModel::open(&dir.0).unwrap());
    let model = Transformer::from_safetensors(st, cfg).unwrap();
    let d = distances(&logits_at(&model, KvCacheType::F32), "ref.npy");
    assert!(d.iter().all(|&x| x < TOL), "HF vs reference: {d:?}");
}

#[cfg(feature = "candle")]
#[test]
fn candle_matches_the_reference_too() {
    use foehn_model::candle::{CandleTransformer, Device};
    let model =
        CandleTransformer::from_gguf_with_config(&mistral3_gguf(), config(true), &Device::Cpu)
            .unwrap();
    let d = distances(&logits_at(&model, KvCacheType::F32), "ref.npy");
    let worst = d.iter().copied().fold(0.0, f32::max);
    eprintln!("candle vs f64 reference: max |Δ| {worst:.2e}");
    assert!(worst < TOL, "candle: {d:?}");
}
