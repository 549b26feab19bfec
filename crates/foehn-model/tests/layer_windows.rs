//! Per-layer sliding windows (Ministral-8B-2410's interleaving): tiny-mistral
//! with layer 0 attending to the whole context and layer 1 to a window of 16,
//! from GGUF (`attention.sliding_window_pattern`) and HF (`layer_types`),
//! against the float64 reference (`tests/fixtures/tiny-mistral-mixed-window`),
//! in every chunking (the decode path runs the sliding layer's ring past its
//! window many times), with each layer's cache sized for its own window.

mod common;

use std::sync::Arc;

use common::{max_abs_diff, read_json, read_npy, tiny, TinyHfDir};
use foehn_loader::gguf::{GgufWriter, Value, ValueType};
use foehn_loader::{config_from_gguf, config_from_hf, GgufFile, SafetensorsModel};
use foehn_model::{Backend, KvCacheOptions, KvCacheType, LogitsMode, Model, Transformer};
use foehn_testkit::fixture;

const TOL: f32 = 1e-3;

/// tiny-mistral-F32.gguf with `llama.attention.sliding_window_pattern =
/// [false, true]`, as `tests/tools/derive_tiny.py mixed-window` writes it.
fn mixed_gguf() -> Arc<GgufFile> {
    let src = GgufFile::open(tiny().join("gguf/tiny-mistral-F32.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata().iter() {
        w.add_metadata(k, v.clone()).unwrap();
    }
    w.add_metadata(
        "llama.attention.sliding_window_pattern",
        Value::Array(ValueType::Bool, vec![Value::Bool(false), Value::Bool(true)]),
    )
    .unwrap();
    for info in src.tensors() {
        let t = src.tensor(&info.name).unwrap();
        w.add_tensor(&info.name, t.ty, t.shape, t.data).unwrap();
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();
    Arc::new(GgufFile::from_bytes(bytes).unwrap())
}

fn prompt() -> (Vec<u32>, Vec<usize>) {
    let j = read_json(&fixture("tiny-mistral-mixed-window/prompt.json"));
    let num = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    let tokens = num(&j["tokens"]).into_iter().map(|t| t as u32).collect();
    (tokens, num(&j["positions"]))
}

/// Teacher-forces the prompt in chunks of `chunk` (all logits) and checks
/// the fixture positions against the reference; returns the cache's bytes.
fn check_against_reference<B: Backend>(model: &Model<B>, chunk: usize, what: &str) -> usize {
    let (tokens, positions) = prompt();
    let reference = read_npy(&fixture("tiny-mistral-mixed-window/ref.npy"));
    let mut cache = model
        .new_cache(KvCacheOptions {
            ctx_len: Some(128),
            types: KvCacheType::F32.into(),
            max_chunk: chunk,
        })
        .unwrap();
    let mut work = model.new_scratch(&cache);
    let vocab = model.config().vocab_size;
    let mut start = 0;
    for piece in tokens.chunks(chunk) {
        let logits = model
            .forward(piece, &mut cache, &mut work, LogitsMode::All)
            .unwrap();
        for (i, &p) in positions.iter().enumerate() {
            if (start..start + piece.len()).contains(&p) {
                let row = &logits[(p - start) * vocab..(p - start + 1) * vocab];
                let d = max_abs_diff(row, reference.row(i));
                assert!(
                    d < TOL,
                    "{what}, chunks of {chunk}: position {p} off by {d}"
                );
            }
        }
        start += piece.len();
    }
    cache.memory_bytes()
}

#[test]
fn gguf_pattern_is_exact_past_the_window_in_every_chunking() {
    let file = mixed_gguf();
    let cfg = config_from_gguf(&file).unwrap();
    assert_eq!(cfg.sliding_window, Some(16));
    assert_eq!(cfg.sliding_layers, Some(vec![false, true]));
    let model = Transformer::from_gguf(file).unwrap();
    let kv_bytes = 2 * 2 * 64 * 4; // K and V, 2 KV heads × 64, f32
    for chunk in [1, 7, 128] {
        let bytes = check_against_reference(&model, chunk, "cpu");
        // Layer 0 holds the whole context, layer 1 its ring of 16 + chunk − 1.
        assert_eq!(
            bytes,
            (128 + (16 + chunk - 1).min(128)) * kv_bytes,
            "chunk {chunk}"
        );
    }
}

#[test]
fn hf_layer_types_give_the_same_model() {
    let mut config: serde_json::Value = read_json(&tiny().join("hf/config.json"));
    config["model_type"] = "ministral".into();
    config["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
    let dir = TinyHfDir::new("layer-types", &config);
    let cfg = config_from_hf(&dir.0).unwrap();
    assert_eq!(cfg.sliding_layers, Some(vec![false, true]));
    let st = Arc::new(SafetensorsModel::open(&dir.0).unwrap());
    let model = Transformer::from_safetensors(st, cfg).unwrap();
    check_against_reference(&model, 5, "HF");
}

#[cfg(feature = "candle")]
#[test]
fn candle_follows_the_pattern_too() {
    use foehn_model::candle::{CandleTransformer, Device};
    let model = CandleTransformer::from_gguf(&mixed_gguf(), &Device::Cpu).unwrap();
    for chunk in [1, 9, 128] {
        check_against_reference(&model, chunk, "candle");
    }
}
