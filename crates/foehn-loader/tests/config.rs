//! `ModelConfig` from the fixtures: the HF config and every tiny-mistral GGUF agree.

use std::path::Path;

use foehn_core::ModelConfig;
use foehn_loader::{config_from_gguf, config_from_hf, GgufFile};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn tiny_mistral() -> ModelConfig {
    ModelConfig {
        vocab_size: 1024,
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        rope_theta: 1e6,
        rope_scaling: None,
        rms_norm_eps: 1e-5,
        sliding_window: Some(16),
        max_position_embeddings: 512,
        tie_word_embeddings: false,
        sliding_layers: None,
        attn_temperature: None,
        moe: None,
    }
}

#[test]
fn hf_config_of_tiny_mistral() {
    let dir = Path::new(FIXTURES).join("tiny-mistral/hf");
    assert_eq!(
        config_from_hf(dir.join("config.json")).unwrap(),
        tiny_mistral()
    );
    assert_eq!(config_from_hf(&dir).unwrap(), tiny_mistral());
}

#[test]
fn every_tiny_mistral_gguf_equals_the_hf_config() {
    let hf = config_from_hf(Path::new(FIXTURES).join("tiny-mistral/hf/config.json")).unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(Path::new(FIXTURES).join("tiny-mistral/gguf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "gguf") {
            let gguf = GgufFile::open(&path).unwrap();
            assert_eq!(config_from_gguf(&gguf).unwrap(), hf, "{}", path.display());
            seen += 1;
        }
    }
    assert_eq!(seen, 11, "F32 and the ten quantized variants");
}

#[test]
fn vocab_only_mistral_v3_gguf() {
    let gguf = GgufFile::open(Path::new(FIXTURES).join("vocab/mistral-v3-spm.gguf")).unwrap();
    assert!(gguf.tensors().is_empty());
    let cfg = config_from_gguf(&gguf).unwrap();
    assert_eq!(
        cfg,
        ModelConfig {
            vocab_size: 32768,
            hidden_size: 4096,
            intermediate_size: 14336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 128,
            rope_theta: 1e6,
            rope_scaling: None,
            rms_norm_eps: 1e-5,
            sliding_window: None,
            max_position_embeddings: 32768,
            // No tensors at all: documented as untied.
            tie_word_embeddings: false,
            sliding_layers: None,
            attn_temperature: None,
            moe: None,
        }
    );
}

#[test]
fn vocab_only_smollm2_gguf() {
    // SmolLM2-135M's llama.* keys: 576 hidden, 9 heads of 64, 3 KV heads, 30 layers.
    let gguf = GgufFile::open(Path::new(FIXTURES).join("vocab/smollm2-bpe.gguf")).unwrap();
    let cfg = config_from_gguf(&gguf).unwrap();
    assert_eq!(
        (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers),
        (49152, 576, 30)
    );
    assert_eq!(
        (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim
        ),
        (9, 3, 64)
    );
}
