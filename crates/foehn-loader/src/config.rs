//! `ModelConfig` from a Hugging Face `config.json` or from GGUF metadata.
//!
//! Both readers fill the same struct and run the same validation, so a model
//! converted from HF to GGUF gives an equal `ModelConfig` either way.

use std::path::{Path, PathBuf};

use foehn_core::{AttnTemperature, ModelConfig, MoeConfig, RopeScaling};
use serde::Deserialize;

use crate::gguf::{GgufFile, Metadata};
use crate::{LoadError, Result};

/// RoPE base frequency when a file does not give one (HF and llama.cpp default).
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

/// RMSNorm epsilon when `config.json` does not give one (the default of
/// transformers' `MistralConfig` and `LlamaConfig`).
pub const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;

/// Llama-3 `low_freq_factor` when absent (the value of every Llama 3.x release).
pub const DEFAULT_LOW_FREQ_FACTOR: f64 = 1.0;

/// Llama-3 `high_freq_factor` when absent (the value of every Llama 3.x release).
pub const DEFAULT_HIGH_FREQ_FACTOR: f64 = 4.0;

/// YaRN `beta_fast` when absent (llama.cpp's and HF's default).
pub const DEFAULT_YARN_BETA_FAST: f64 = 32.0;

/// YaRN `beta_slow` when absent (llama.cpp's and HF's default).
pub const DEFAULT_YARN_BETA_SLOW: f64 = 1.0;

/// GGUF architectures whose hyperparameters this module reads.
pub const GGUF_ARCHITECTURES: &[&str] = &["llama", "mistral", "mistral3"];

/// HF `model_type` values accepted for the decoder (absent is accepted too).
const HF_MODEL_TYPES: &[&str] = &["llama", "mistral", "ministral", "ministral3", "mixtral"];

/// Reads a Hugging Face `config.json` (or the `config.json` inside a folder).
///
/// Mistral and Llama configs: `vocab_size`, `hidden_size`, `intermediate_size`,
/// `num_hidden_layers`, `num_attention_heads` and `max_position_embeddings` are
/// required; `num_key_value_heads` defaults to the head count, `head_dim`
/// (absent or null) to `hidden_size / num_attention_heads`, `rope_theta` to
/// 10000, `rms_norm_eps` to 1e-6, `tie_word_embeddings` to false, and a null,
/// absent or 0 `sliding_window` means full causal attention. `rope_scaling`
/// (keyed `type` or `rope_type`) may be null, `default`, `linear`, `llama3` or
/// `yarn` (`factor`, `original_max_position_embeddings` — default
/// `max_position_embeddings` —, `beta_fast` 32, `beta_slow` 1, and the cos/sin
/// magnitude from `attention_factor`, else `mscale` / `mscale_all_dim` as
/// transformers' `_compute_yarn_parameters`); anything else is an error. The
/// newer `rope_parameters` object (transformers 5) is read when `rope_theta` /
/// `rope_scaling` are absent; its `llama_4_scaling_beta` (Ministral 3) is the
/// attention temperature, stepping every `original_max_position_embeddings`
/// positions. A multimodal `mistral3` config is read from its `text_config`. A `mixtral`
/// config is a mixture of experts: `num_local_experts` and
/// `num_experts_per_tok` are required (`intermediate_size` is then each
/// expert's). Attention or MLP biases
/// (`attention_bias` / `mlp_bias` true) are refused: the decoder has none.
pub fn config_from_hf(path: impl AsRef<Path>) -> Result<ModelConfig> {
    let path = path.as_ref();
    let file: PathBuf = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read(&file).map_err(|source| LoadError::Io {
        path: file.clone(),
        source,
    })?;
    parse_hf(&file, &text)
}

/// Like [`config_from_hf`], for the bytes of a `config.json` already in memory.
pub fn config_from_hf_json(json: &[u8]) -> Result<ModelConfig> {
    parse_hf(Path::new("config.json"), json)
}

/// The `config.json` fields foehn reads; everything else is ignored.
#[derive(Debug, Default, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f64>,
    rope_scaling: Option<HfRopeScaling>,
    rope_parameters: Option<HfRopeScaling>,
    rms_norm_eps: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    num_local_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    text_config: Option<Box<HfConfig>>,
}

/// HF `rope_scaling` (or transformers 5 `rope_parameters`).
#[derive(Debug, Default, Deserialize)]
struct HfRopeScaling {
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_type: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    rope_theta: Option<f64>,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
    attention_factor: Option<f64>,
    llama_4_scaling_beta: Option<f64>,
}

fn parse_hf(path: &Path, json: &[u8]) -> Result<ModelConfig> {
    let top: HfConfig = serde_json::from_slice(json).map_err(|source| LoadError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let hf = match (top.model_type.as_deref(), top.text_config) {
        (Some("mistral3"), Some(text)) => *text,
        (Some("mistral3"), None) => {
            return Err(config_err("model_type 'mistral3' without a text_config"));
        }
        (_, text_config) => HfConfig { text_config, ..top },
    };
    if let Some(ty) = hf.model_type.as_deref() {
        if !HF_MODEL_TYPES.contains(&ty) {
            return Err(config_err(format!(
                "unsupported model_type '{ty}' (foehn reads {})",
                HF_MODEL_TYPES.join(", ")
            )));
        }
    }
    for (key, value) in [
        ("attention_bias", hf.attention_bias),
        ("mlp_bias", hf.mlp_bias),
    ] {
        if value == Some(true) {
            return Err(config_err(format!(
                "{key} = true is not supported (the decoder has no biases)"
            )));
        }
    }

    let required = |value: Option<usize>, key: &str| {
        value.ok_or_else(|| config_err(format!("'{key}' is missing from config.json")))
    };
    let hidden_size = required(hf.hidden_size, "hidden_size")?;
    let num_attention_heads = required(hf.num_attention_heads, "num_attention_heads")?;
    let head_dim = match hf.head_dim {
        Some(d) => d,
        None => default_head_dim(hidden_size, num_attention_heads)?,
    };
    let max_position_embeddings = required(hf.max_position_embeddings, "max_position_embeddings")?;
    let moe = if hf.model_type.as_deref() == Some("mixtral") {
        Some(MoeConfig {
            num_experts: required(hf.num_local_experts, "num_local_experts")?,
            experts_per_token: required(hf.num_experts_per_tok, "num_experts_per_tok")?,
        })
    } else {
        None
    };
    let rope_params = hf.rope_parameters.as_ref();
    let rope_theta = hf.rope_theta.or(rope_params.and_then(|p| p.rope_theta));
    let scaling_params = hf.rope_scaling.as_ref().or(rope_params);
    let rope_scaling = match scaling_params {
        Some(s) => hf_rope_scaling(s, max_position_embeddings)?,
        None => None,
    };
    let sliding_window = hf.sliding_window.filter(|&w| w > 0);
    let sliding_layers = match (&hf.layer_types, sliding_window) {
        (Some(types), Some(_)) => types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(config_err(format!(
                    "layer_types: unsupported attention type '{other}' (foehn reads \
                     sliding_attention and full_attention)"
                ))),
            })
            .collect::<Result<Vec<bool>>>()
            .map(uniform_windows)?,
        // Without a window every layer attends to the whole context.
        _ => None,
    };
    let attn_temperature = match scaling_params.and_then(|s| s.llama_4_scaling_beta) {
        None => None,
        Some(beta) => Some(AttnTemperature {
            beta: to_f32(beta, "llama_4_scaling_beta")?,
            length: scaling_params
                .and_then(|s| s.original_max_position_embeddings)
                .ok_or_else(|| {
                    config_err("llama_4_scaling_beta without original_max_position_embeddings")
                })?,
        }),
    };

    let cfg = ModelConfig {
        vocab_size: required(hf.vocab_size, "vocab_size")?,
        hidden_size,
        intermediate_size: required(hf.intermediate_size, "intermediate_size")?,
        num_hidden_layers: required(hf.num_hidden_layers, "num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads: hf.num_key_value_heads.unwrap_or(num_attention_heads),
        head_dim,
        rope_theta: to_f32(rope_theta.unwrap_or(DEFAULT_ROPE_THETA), "rope_theta")?,
        rope_scaling,
        rms_norm_eps: to_f32(
            hf.rms_norm_eps.unwrap_or(DEFAULT_RMS_NORM_EPS),
            "rms_norm_eps",
        )?,
        sliding_window,
        sliding_layers,
        max_position_embeddings,
        tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        attn_temperature,
        moe,
    };
    validate(&cfg)?;
    Ok(cfg)
}

/// Interprets an HF `rope_scaling` / `rope_parameters` object.
fn hf_rope_scaling(s: &HfRopeScaling, max_positions: usize) -> Result<Option<RopeScaling>> {
    let Some(kind) = s.rope_type.as_deref().or(s.kind.as_deref()) else {
        // `rope_parameters` holding only `rope_theta` is the plain (unscaled) RoPE.
        if s.factor.is_none() {
            return Ok(None);
        }
        return Err(config_err(
            "rope_scaling has neither 'type' nor 'rope_type'",
        ));
    };
    let factor = |s: &HfRopeScaling| {
        s.factor
            .ok_or_else(|| config_err(format!("rope_scaling '{kind}' has no 'factor'")))
    };
    let scaling = match kind {
        "default" => return Ok(None),
        "linear" => RopeScaling::Linear {
            factor: to_f32(factor(s)?, "rope_scaling.factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: to_f32(factor(s)?, "rope_scaling.factor")?,
            low_freq_factor: to_f32(
                s.low_freq_factor.unwrap_or(DEFAULT_LOW_FREQ_FACTOR),
                "rope_scaling.low_freq_factor",
            )?,
            high_freq_factor: to_f32(
                s.high_freq_factor.unwrap_or(DEFAULT_HIGH_FREQ_FACTOR),
                "rope_scaling.high_freq_factor",
            )?,
            original_max_position_embeddings: s.original_max_position_embeddings.ok_or_else(
                || config_err("rope_scaling 'llama3' has no 'original_max_position_embeddings'"),
            )?,
        },
        "yarn" => {
            let factor = factor(s)?;
            // transformers' `get_mscale`; `mscale` and `mscale_all_dim` count only when both are nonzero.
            let magnitude = match (s.attention_factor, s.mscale, s.mscale_all_dim) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                    yarn_mscale(factor, m) / yarn_mscale(factor, all)
                }
                _ => yarn_mscale(factor, 1.0),
            };
            RopeScaling::Yarn {
                factor: to_f32(factor, "rope_scaling.factor")?,
                original_max_position_embeddings: s
                    .original_max_position_embeddings
                    .unwrap_or(max_positions),
                beta_fast: to_f32(
                    s.beta_fast.unwrap_or(DEFAULT_YARN_BETA_FAST),
                    "rope_scaling.beta_fast",
                )?,
                beta_slow: to_f32(
                    s.beta_slow.unwrap_or(DEFAULT_YARN_BETA_SLOW),
                    "rope_scaling.beta_slow",
                )?,
                magnitude: to_f32(magnitude, "rope_scaling.attention_factor")?,
            }
        }
        other => return Err(unsupported_scaling(other)),
    };
    Ok(Some(scaling))
}

/// Reads the hyperparameters of a GGUF file (llama.cpp key names).
///
/// The architecture comes from `general.architecture` and must be `llama`,
/// `mistral` or `mistral3`; every other key is `{arch}.…`: `context_length`,
/// `embedding_length`, `block_count`, `feed_forward_length`,
/// `attention.head_count`, `attention.layer_norm_rms_epsilon` (required),
/// `attention.head_count_kv` (default: the head count), `attention.key_length`
/// (head_dim; default embedding / heads), `rope.freq_base` (default 10000),
/// `attention.sliding_window` (absent or 0 = none), `expert_count` and
/// `expert_used_count` (a mixture of experts, Mixtral: both or neither, an
/// `expert_count` of 0 meaning a dense model). The vocabulary size is
/// `{arch}.vocab_size`, else the length of `tokenizer.ggml.tokens`, else
/// `token_embd.weight`'s `shape[1]`.
///
/// RoPE scaling: `rope.scaling.type` `none`/absent, `linear` (with
/// `rope.scaling.factor`, or the older `rope.scale_linear`), `llama3` (with
/// `rope.scaling.factor` and `rope.scaling.original_context_length`; GGUF has
/// no keys for the low/high frequency factors, so they take Llama 3's 1 and 4),
/// or `yarn` (`rope.scaling.factor`, `original_context_length` — default
/// `context_length` —, `yarn_beta_fast` 32, `yarn_beta_slow` 1,
/// `yarn_log_multiplier`, `attn_factor`; the cos/sin magnitude as llama.cpp
/// computes it). `attention.temperature_scale` (Mistral 3) is the attention
/// temperature, stepping every `attention.temperature_length` positions, else
/// every original context length.
/// `longrope` and the llama.cpp-converted Llama 3.1 form (a
/// `rope_freqs.weight` tensor of per-frequency factors instead of metadata) are
/// refused with an error rather than run with the wrong positions, as are a
/// `rope.dimension_count` or `attention.value_length` other than head_dim.
///
/// Tied embeddings: a file with tensors and no `output.weight` is tied. A file
/// with no tensors at all (a vocab-only GGUF) has nothing to tie and reports
/// `tie_word_embeddings = false`, HF's default.
pub fn config_from_gguf(gguf: &GgufFile) -> Result<ModelConfig> {
    let md = gguf.metadata();
    let arch = md.get_str("general.architecture")?;
    if !GGUF_ARCHITECTURES.contains(&arch) {
        return Err(config_err(format!(
            "unsupported architecture '{arch}' (foehn reads {})",
            GGUF_ARCHITECTURES.join(", ")
        )));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let has_tensor = |name: &str| gguf.tensors().iter().any(|t| t.name == name);

    let hidden_size = md.get_usize(&key("embedding_length"))?;
    let num_attention_heads = md.get_usize(&key("attention.head_count"))?;
    let head_dim = match md.opt_usize(&key("attention.key_length"))? {
        Some(d) => d,
        None => default_head_dim(hidden_size, num_attention_heads)?,
    };
    for k in ["attention.value_length", "rope.dimension_count"] {
        if let Some(v) = md.opt_usize(&key(k))? {
            if v != head_dim {
                return Err(config_err(format!(
                    "{arch}.{k} = {v} differs from head_dim {head_dim}, which foehn does not support"
                )));
            }
        }
    }
    if has_tensor("rope_freqs.weight") {
        return Err(config_err(
            "the file stores RoPE scaling as a 'rope_freqs.weight' tensor (llama.cpp's Llama 3.1 \
             conversion), which foehn does not support yet",
        ));
    }

    let vocab_size = match md.opt_usize(&key("vocab_size"))? {
        Some(n) => n,
        None => gguf_vocab_size(gguf).ok_or_else(|| LoadError::MissingKey(key("vocab_size")))?,
    };

    let cfg = ModelConfig {
        vocab_size,
        hidden_size,
        intermediate_size: md.get_usize(&key("feed_forward_length"))?,
        num_hidden_layers: md.get_usize(&key("block_count"))?,
        num_attention_heads,
        num_key_value_heads: md
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(num_attention_heads),
        head_dim,
        rope_theta: to_f32(
            md.opt_f64(&key("rope.freq_base"))?
                .unwrap_or(DEFAULT_ROPE_THETA),
            "rope.freq_base",
        )?,
        rope_scaling: gguf_rope_scaling(md, arch)?,
        rms_norm_eps: to_f32(
            md.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            "attention.layer_norm_rms_epsilon",
        )?,
        sliding_window: md
            .opt_usize(&key("attention.sliding_window"))?
            .filter(|&w| w > 0),
        sliding_layers: gguf_sliding_layers(md, arch, md.get_usize(&key("block_count"))?)?,
        max_position_embeddings: md.get_usize(&key("context_length"))?,
        tie_word_embeddings: !gguf.tensors().is_empty() && !has_tensor("output.weight"),
        attn_temperature: gguf_attn_temperature(md, arch)?,
        moe: gguf_moe(md, arch)?,
    };
    validate(&cfg)?;
    Ok(cfg)
}

/// The mixture of experts of `{arch}.expert_count` / `{arch}.expert_used_count`.
fn gguf_moe(md: &Metadata, arch: &str) -> Result<Option<MoeConfig>> {
    let count = md.opt_usize(&format!("{arch}.expert_count"))?;
    let used = md.opt_usize(&format!("{arch}.expert_used_count"))?;
    match (count, used) {
        (None | Some(0), None) => Ok(None),
        (None | Some(0), Some(k)) => Err(config_err(format!(
            "{arch}.expert_used_count = {k} without {arch}.expert_count"
        ))),
        (Some(num_experts), Some(experts_per_token)) => Ok(Some(MoeConfig {
            num_experts,
            experts_per_token,
        })),
        (Some(n), None) => Err(config_err(format!(
            "{arch}.expert_count = {n} without {arch}.expert_used_count"
        ))),
    }
}

/// Vocabulary size from the token list, else from the embedding's shape.
fn gguf_vocab_size(gguf: &GgufFile) -> Option<usize> {
    if let Some(tokens) = gguf
        .metadata()
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
    {
        return Some(tokens.len());
    }
    let embd = gguf
        .tensors()
        .iter()
        .find(|t| t.name == "token_embd.weight")?;
    usize::try_from(*embd.shape.get(1)?).ok()
}

/// RoPE scaling from llama.cpp's `rope.scaling.*` keys.
fn gguf_rope_scaling(md: &Metadata, arch: &str) -> Result<Option<RopeScaling>> {
    let key = |k: &str| format!("{arch}.{k}");
    let factor = || -> Result<f32> {
        let f = md.get_f64(&key("rope.scaling.factor"))?;
        to_f32(f, "rope.scaling.factor")
    };
    match md.opt_str(&key("rope.scaling.type"))? {
        None | Some("none") => {
            // Files from before `rope.scaling.type` existed.
            match md.opt_f64(&key("rope.scale_linear"))? {
                Some(f) if f != 1.0 => Ok(Some(RopeScaling::Linear {
                    factor: to_f32(f, "rope.scale_linear")?,
                })),
                _ => Ok(None),
            }
        }
        Some("linear") => Ok(Some(RopeScaling::Linear { factor: factor()? })),
        Some("llama3") => Ok(Some(RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: DEFAULT_LOW_FREQ_FACTOR as f32,
            high_freq_factor: DEFAULT_HIGH_FREQ_FACTOR as f32,
            original_max_position_embeddings: md
                .get_usize(&key("rope.scaling.original_context_length"))?,
        })),
        Some("yarn") => {
            let factor = md.get_f64(&key("rope.scaling.factor"))?;
            let original = original_context(md, arch)?;
            // llama.cpp's cos/sin magnitude: `yarn_attn_factor` (get_mscale(factor, 1), or
            // its ratio to get_mscale(factor, yarn_log_multiplier)) divided by and then
            // multiplied again by ggml's 1 + 0.1·ln(factor), times `rope.scaling.attn_factor`.
            let log_mul = md
                .opt_f64(&key("rope.scaling.yarn_log_multiplier"))?
                .unwrap_or(0.0);
            let base = if log_mul != 0.0 {
                yarn_mscale(factor, 1.0) / yarn_mscale(factor, log_mul)
            } else {
                yarn_mscale(factor, 1.0)
            };
            let attn_factor = md.opt_f64(&key("rope.scaling.attn_factor"))?.unwrap_or(1.0);
            Ok(Some(RopeScaling::Yarn {
                factor: to_f32(factor, "rope.scaling.factor")?,
                original_max_position_embeddings: original,
                beta_fast: to_f32(
                    md.opt_f64(&key("rope.scaling.yarn_beta_fast"))?
                        .unwrap_or(DEFAULT_YARN_BETA_FAST),
                    "rope.scaling.yarn_beta_fast",
                )?,
                beta_slow: to_f32(
                    md.opt_f64(&key("rope.scaling.yarn_beta_slow"))?
                        .unwrap_or(DEFAULT_YARN_BETA_SLOW),
                    "rope.scaling.yarn_beta_slow",
                )?,
                magnitude: to_f32(base * attn_factor, "rope.scaling.attn_factor")?,
            }))
        }
        Some(other) => Err(unsupported_scaling(other)),
    }
}

/// Which layers slide, from `attention.sliding_window_pattern` as llama.cpp
/// reads it: a boolean per layer, or a period `n` (layer `l` slides iff
/// `l % n < n − 1`, so every `n`-th layer is full; 0 = every layer slides).
fn gguf_sliding_layers(md: &Metadata, arch: &str, layers: usize) -> Result<Option<Vec<bool>>> {
    let key = format!("{arch}.attention.sliding_window_pattern");
    let Some(value) = md.get(&key) else {
        return Ok(None);
    };
    let sliding = match value.as_array() {
        Some(items) => items
            .iter()
            .map(|v| match v {
                crate::gguf::Value::Bool(b) => Ok(*b),
                other => Err(LoadError::WrongType {
                    key: key.clone(),
                    expected: "array of bool",
                    found: other.type_name().to_string(),
                }),
            })
            .collect::<Result<Vec<bool>>>()?,
        None => {
            let n = md.get_usize(&key)?;
            (0..layers).map(|l| n == 0 || l % n < n - 1).collect()
        }
    };
    Ok(uniform_windows(sliding))
}

/// `None` when every layer slides (the plain sliding-window model).
fn uniform_windows(sliding: Vec<bool>) -> Option<Vec<bool>> {
    if sliding.iter().all(|&s| s) {
        None
    } else {
        Some(sliding)
    }
}

/// `rope.scaling.original_context_length`, else `context_length` (llama.cpp's
/// `n_ctx_orig_yarn`).
fn original_context(md: &Metadata, arch: &str) -> Result<usize> {
    match md.opt_usize(&format!("{arch}.rope.scaling.original_context_length"))? {
        Some(n) => Ok(n),
        None => md.get_usize(&format!("{arch}.context_length")),
    }
}

/// The attention temperature of `{arch}.attention.temperature_scale`, stepping
/// every `attention.temperature_length` positions, else every original context
/// length (what llama.cpp's `mistral3` uses). A scale of 0 means none.
fn gguf_attn_temperature(md: &Metadata, arch: &str) -> Result<Option<AttnTemperature>> {
    let key = |k: &str| format!("{arch}.{k}");
    let beta = match md.opt_f64(&key("attention.temperature_scale"))? {
        None | Some(0.0) => return Ok(None),
        Some(b) => to_f32(b, "attention.temperature_scale")?,
    };
    let length = match md.opt_usize(&key("attention.temperature_length"))? {
        Some(n) => n,
        None => original_context(md, arch)?,
    };
    Ok(Some(AttnTemperature { beta, length }))
}

/// YaRN's magnitude correction `0.1 · mscale · ln(scale) + 1` (1 for scale ≤ 1),
/// as transformers' and llama.cpp's `get_mscale`.
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// `hidden_size / num_attention_heads`, which must divide evenly.
fn default_head_dim(hidden_size: usize, heads: usize) -> Result<usize> {
    if heads == 0 || !hidden_size.is_multiple_of(heads) {
        return Err(config_err(format!(
            "no head_dim given and hidden_size {hidden_size} is not a multiple of \
             num_attention_heads {heads}"
        )));
    }
    Ok(hidden_size / heads)
}

/// Checks what the model will rely on: nonzero sizes, whole GQA groups, an even
/// head_dim (RoPE rotates pairs), finite positive constants.
fn validate(cfg: &ModelConfig) -> Result<()> {
    let sizes = [
        ("vocab_size", cfg.vocab_size),
        ("hidden_size", cfg.hidden_size),
        ("intermediate_size", cfg.intermediate_size),
        ("num_hidden_layers", cfg.num_hidden_layers),
        ("num_attention_heads", cfg.num_attention_heads),
        ("num_key_value_heads", cfg.num_key_value_heads),
        ("head_dim", cfg.head_dim),
        ("max_position_embeddings", cfg.max_position_embeddings),
    ];
    for (name, value) in sizes {
        if value == 0 {
            return Err(config_err(format!("{name} is 0")));
        }
    }
    if !cfg
        .num_attention_heads
        .is_multiple_of(cfg.num_key_value_heads)
    {
        return Err(config_err(format!(
            "num_attention_heads {} is not a multiple of num_key_value_heads {}",
            cfg.num_attention_heads, cfg.num_key_value_heads
        )));
    }
    if !cfg.head_dim.is_multiple_of(2) {
        return Err(config_err(format!(
            "head_dim {} is odd; RoPE needs pairs",
            cfg.head_dim
        )));
    }
    if let Some(moe) = cfg.moe {
        if moe.num_experts == 0 || !(1..=moe.num_experts).contains(&moe.experts_per_token) {
            return Err(config_err(format!(
                "a mixture of experts needs 1 ≤ experts per token ≤ experts, got {} of {}",
                moe.experts_per_token, moe.num_experts
            )));
        }
    }
    for (name, value) in [
        ("rope_theta", cfg.rope_theta),
        ("rms_norm_eps", cfg.rms_norm_eps),
    ] {
        if !(value.is_finite() && value > 0.0) {
            return Err(config_err(format!(
                "{name} must be a positive number, got {value}"
            )));
        }
    }
    if let Some(sliding) = &cfg.sliding_layers {
        if sliding.len() != cfg.num_hidden_layers {
            return Err(config_err(format!(
                "{} per-layer attention types for {} layers",
                sliding.len(),
                cfg.num_hidden_layers
            )));
        }
    }
    if let Some(t) = cfg.attn_temperature {
        if !t.beta.is_finite() || t.length == 0 {
            return Err(config_err(format!(
                "attention temperature needs a finite scale and a nonzero length, got {} and {}",
                t.beta, t.length
            )));
        }
    }
    match cfg.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => check_factor(factor)?,
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            check_factor(factor)?;
            if !(low_freq_factor > 0.0 && high_freq_factor > low_freq_factor) {
                return Err(config_err(format!(
                    "llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor, got \
                     {low_freq_factor} and {high_freq_factor}"
                )));
            }
            if original_max_position_embeddings == 0 {
                return Err(config_err(
                    "llama3 rope scaling: original_max_position_embeddings is 0",
                ));
            }
        }
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            magnitude,
        }) => {
            check_factor(factor)?;
            if original_max_position_embeddings == 0 {
                return Err(config_err(
                    "yarn rope scaling: original_max_position_embeddings is 0",
                ));
            }
            for (name, value) in [
                ("beta_fast", beta_fast),
                ("beta_slow", beta_slow),
                ("magnitude", magnitude),
            ] {
                if !(value.is_finite() && value > 0.0) {
                    return Err(config_err(format!(
                        "yarn rope scaling: {name} must be a positive number, got {value}"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn check_factor(factor: f32) -> Result<()> {
    if factor.is_finite() && factor > 0.0 {
        Ok(())
    } else {
        Err(config_err(format!(
            "rope scaling factor must be a positive number, got {factor}"
        )))
    }
}

/// Narrows a float to `f32`, refusing values that do not fit.
fn to_f32(value: f64, name: &str) -> Result<f32> {
    let narrowed = value as f32;
    if value.is_finite() && !narrowed.is_finite() {
        return Err(config_err(format!("{name} = {value} does not fit an f32")));
    }
    Ok(narrowed)
}

fn unsupported_scaling(kind: &str) -> LoadError {
    config_err(format!(
        "unsupported rope scaling type '{kind}' (foehn supports 'linear', 'llama3' and 'yarn')"
    ))
}

fn config_err(message: impl Into<String>) -> LoadError {
    LoadError::Config(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufWriter, Value};

    fn hf(json: &str) -> Result<ModelConfig> {
        config_from_hf_json(json.as_bytes())
    }

    const MISTRAL_7B: &str = r#"{
        "architectures": ["MistralForCausalLM"], "model_type": "mistral",
        "vocab_size": 32768, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-05,
        "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16"
    }"#;

    fn expect_config_err(r: Result<ModelConfig>, needle: &str) {
        match r {
            Err(LoadError::Config(msg)) => {
                assert!(msg.contains(needle), "'{msg}' lacks '{needle}'")
            }
            other => panic!("expected Config error containing '{needle}', got {other:?}"),
        }
    }

    #[test]
    fn mistral_defaults() {
        let cfg = hf(MISTRAL_7B).unwrap();
        assert_eq!(cfg.head_dim, 128);
        assert_eq!(cfg.num_key_value_heads, 8);
        assert_eq!(cfg.sliding_window, None);
        assert_eq!(cfg.rope_scaling, None);
        assert_eq!(cfg.rope_theta, 1e6);

        let minimal = r#"{"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 64,
            "head_dim": null}"#;
        let cfg = hf(minimal).unwrap();
        assert_eq!((cfg.num_key_value_heads, cfg.head_dim), (4, 16));
        assert_eq!(cfg.rope_theta, 10_000.0);
        assert_eq!(cfg.rms_norm_eps, 1e-6);
        assert!(!cfg.tie_word_embeddings);
        assert_eq!(cfg.sliding_window, None);
    }

    #[test]
    fn explicit_head_dim_and_window() {
        // Mistral Nemo: head_dim 128 with hidden 5120 and 32 heads.
        let json = MISTRAL_7B
            .replace(
                "\"hidden_size\": 4096",
                "\"hidden_size\": 5120, \"head_dim\": 128",
            )
            .replace("\"sliding_window\": null", "\"sliding_window\": 4096");
        let cfg = hf(&json).unwrap();
        assert_eq!((cfg.hidden_size, cfg.head_dim), (5120, 128));
        assert_eq!(cfg.sliding_window, Some(4096));
    }

    const LLAMA_32_1B: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rms_norm_eps": 1e-05, "tie_word_embeddings": true, "attention_bias": false,
        "mlp_bias": false,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    }"#;

    #[test]
    fn llama3_rope_scaling() {
        let cfg = hf(LLAMA_32_1B).unwrap();
        assert!(cfg.tie_word_embeddings);
        assert_eq!(cfg.rope_theta, 500_000.0);
        assert_eq!(
            cfg.rope_scaling,
            Some(RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            })
        );
        // The older `type` spelling, and defaults for the frequency factors.
        let old = LLAMA_32_1B
            .replace("\"rope_type\": \"llama3\"", "\"type\": \"llama3\"")
            .replace("\"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,", "");
        assert_eq!(
            hf(&old).unwrap().rope_scaling,
            hf(LLAMA_32_1B).unwrap().rope_scaling
        );
        let no_orig = LLAMA_32_1B.replace("\"original_max_position_embeddings\": 8192,", "");
        expect_config_err(hf(&no_orig), "original_max_position_embeddings");
        let bad = LLAMA_32_1B.replace("\"low_freq_factor\": 1.0", "\"low_freq_factor\": 5.0");
        expect_config_err(hf(&bad), "low_freq_factor");
    }

    #[test]
    fn other_rope_scalings() {
        let with = |scaling: &str| {
            hf(&MISTRAL_7B.replace(
                "\"sliding_window\": null",
                &format!("\"rope_scaling\": {scaling}"),
            ))
        };
        assert_eq!(
            with(r#"{"type": "linear", "factor": 2.0}"#)
                .unwrap()
                .rope_scaling,
            Some(RopeScaling::Linear { factor: 2.0 })
        );
        assert_eq!(
            with(r#"{"rope_type": "default"}"#).unwrap().rope_scaling,
            None
        );
        assert_eq!(with("null").unwrap().rope_scaling, None);
        // YaRN with transformers' defaults: original context = max positions, betas 32 / 1,
        // magnitude get_mscale(4) = 1 + 0.1 ln 4.
        assert_eq!(
            with(r#"{"type": "yarn", "factor": 4.0}"#)
                .unwrap()
                .rope_scaling,
            Some(RopeScaling::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 32768,
                beta_fast: 32.0,
                beta_slow: 1.0,
                magnitude: (1.0 + 0.1 * 4f64.ln()) as f32,
            })
        );
        let explicit = with(
            r#"{"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096,
                "beta_fast": 16, "beta_slow": 2, "attention_factor": 0.5}"#,
        )
        .unwrap();
        assert_eq!(
            explicit.rope_scaling,
            Some(RopeScaling::Yarn {
                factor: 8.0,
                original_max_position_embeddings: 4096,
                beta_fast: 16.0,
                beta_slow: 2.0,
                magnitude: 0.5,
            })
        );
        assert_eq!(explicit.attn_temperature, None);
        expect_config_err(with(r#"{"type": "yarn"}"#), "no 'factor'");
        expect_config_err(
            with(r#"{"type": "yarn", "factor": 4.0, "beta_fast": -1}"#),
            "beta_fast",
        );
        expect_config_err(
            with(r#"{"rope_type": "dynamic", "factor": 4.0}"#),
            "'dynamic'",
        );
        expect_config_err(with(r#"{"factor": 4.0}"#), "neither 'type' nor 'rope_type'");
        expect_config_err(with(r#"{"type": "linear"}"#), "no 'factor'");
        expect_config_err(with(r#"{"type": "linear", "factor": 0.0}"#), "factor");
    }

    #[test]
    fn transformers5_rope_parameters() {
        let json = MISTRAL_7B.replace(
            "\"rope_theta\": 1000000.0,",
            "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 1000000.0},",
        );
        let cfg = hf(&json).unwrap();
        assert_eq!((cfg.rope_theta, cfg.rope_scaling), (1e6, None));
    }

    #[test]
    fn mistral3_reads_text_config() {
        let json = format!(
            r#"{{"model_type": "mistral3", "architectures": ["Mistral3ForConditionalGeneration"],
                "vision_config": {{"hidden_size": 1024}}, "text_config": {MISTRAL_7B}}}"#
        );
        assert_eq!(hf(&json).unwrap(), hf(MISTRAL_7B).unwrap());
        expect_config_err(hf(r#"{"model_type": "mistral3"}"#), "text_config");
    }

    /// Ministral-3-3B-Instruct-2512's `text_config` as published (YaRN factor 16
    /// over 16,384 positions, magnitude 1, Llama-4 attention temperature 0.1).
    const MINISTRAL_3_3B: &str = r#"{
        "model_type": "ministral3", "vocab_size": 131072, "hidden_size": 3072,
        "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-05, "sliding_window": null, "tie_word_embeddings": true,
        "hidden_act": "silu", "attention_dropout": 0.0,
        "rope_parameters": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 16.0,
            "llama_4_scaling_beta": 0.1, "mscale": 1.0, "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 16384, "rope_theta": 1000000.0,
            "rope_type": "yarn", "type": "yarn"}
    }"#;

    #[test]
    fn ministral3_yarn_and_temperature() {
        let json = format!(
            r#"{{"model_type": "mistral3", "architectures": ["Mistral3ForConditionalGeneration"],
                "vision_config": {{"hidden_size": 1024}}, "text_config": {MINISTRAL_3_3B}}}"#
        );
        let cfg = hf(&json).unwrap();
        assert_eq!(cfg, hf(MINISTRAL_3_3B).unwrap());
        assert_eq!((cfg.rope_theta, cfg.head_dim), (1e6, 128));
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
                length: 16384
            })
        );
        // mscale / mscale_all_dim of 0 count as absent (transformers tests their truth).
        let zero = MINISTRAL_3_3B.replace("\"mscale\": 1.0", "\"mscale\": 0.0");
        match hf(&zero).unwrap().rope_scaling {
            Some(RopeScaling::Yarn { magnitude, .. }) => {
                assert_eq!(magnitude, (1.0 + 0.1 * 16f64.ln()) as f32)
            }
            other => panic!("{other:?}"),
        }
        let no_orig = MINISTRAL_3_3B.replace("\"original_max_position_embeddings\": 16384,", "");
        expect_config_err(hf(&no_orig), "llama_4_scaling_beta");
    }

    #[test]
    fn missing_fields_are_named() {
        for key in [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
        ] {
            let mut v: serde_json::Value = serde_json::from_str(MISTRAL_7B).unwrap();
            v.as_object_mut().unwrap().remove(key);
            expect_config_err(hf(&v.to_string()), key);
        }
    }

    #[test]
    fn bad_values_are_refused() {
        let set = |key: &str, value: &str| {
            let mut v: serde_json::Value = serde_json::from_str(MISTRAL_7B).unwrap();
            v[key] = serde_json::from_str(value).unwrap();
            hf(&v.to_string())
        };
        // Wrong JSON types are serde errors with the file's name.
        for (key, value) in [
            ("hidden_size", "\"4096\""),
            ("vocab_size", "-1"),
            ("rope_theta", "\"x\""),
        ] {
            assert!(
                matches!(set(key, value), Err(LoadError::Json { .. })),
                "{key} = {value}"
            );
        }
        expect_config_err(
            set("num_key_value_heads", "5"),
            "not a multiple of num_key_value_heads",
        );
        expect_config_err(set("num_key_value_heads", "0"), "num_key_value_heads is 0");
        expect_config_err(
            set("hidden_size", "4100"),
            "not a multiple of num_attention_heads",
        );
        expect_config_err(set("vocab_size", "0"), "vocab_size is 0");
        expect_config_err(set("head_dim", "65"), "odd");
        expect_config_err(set("rms_norm_eps", "0.0"), "rms_norm_eps");
        expect_config_err(set("rope_theta", "1e300"), "does not fit an f32");
        expect_config_err(
            set("model_type", "\"qwen2\""),
            "unsupported model_type 'qwen2'",
        );
        expect_config_err(set("attention_bias", "true"), "attention_bias");
        assert_eq!(set("sliding_window", "0").unwrap().sliding_window, None);
        assert!(matches!(
            hf("{\"vocab_size\": "),
            Err(LoadError::Json { .. })
        ));
    }

    /// A GGUF with the given metadata (plus `general.architecture`) and no tensors.
    fn gguf(arch: &str, kv: &[(&str, Value)]) -> GgufFile {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", Value::String(arch.to_string()))
            .unwrap();
        for (k, v) in kv {
            w.add_metadata(k.replace("{arch}", arch), v.clone())
                .unwrap();
        }
        let mut bytes = Vec::new();
        w.write_to(&mut bytes).unwrap();
        GgufFile::from_bytes(bytes).unwrap()
    }

    fn base_kv() -> Vec<(&'static str, Value)> {
        vec![
            ("{arch}.context_length", Value::U32(4096)),
            ("{arch}.embedding_length", Value::U32(512)),
            ("{arch}.block_count", Value::U32(2)),
            ("{arch}.feed_forward_length", Value::U32(1024)),
            ("{arch}.attention.head_count", Value::U32(8)),
            ("{arch}.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
            ("{arch}.vocab_size", Value::U32(1000)),
        ]
    }

    #[test]
    fn gguf_defaults_and_architectures() {
        for arch in ["llama", "mistral", "mistral3"] {
            let cfg = config_from_gguf(&gguf(arch, &base_kv())).unwrap();
            assert_eq!((cfg.num_key_value_heads, cfg.head_dim), (8, 64), "{arch}");
            assert_eq!((cfg.rope_theta, cfg.rope_scaling.clone()), (10_000.0, None));
            assert_eq!(cfg.sliding_window, None);
            assert!(!cfg.tie_word_embeddings, "no tensors: untied");
        }
        expect_config_err(
            config_from_gguf(&gguf("qwen2", &base_kv())),
            "unsupported architecture 'qwen2'",
        );

        let mut kv = base_kv();
        kv.push(("{arch}.attention.sliding_window", Value::U32(0)));
        assert_eq!(
            config_from_gguf(&gguf("llama", &kv))
                .unwrap()
                .sliding_window,
            None
        );
        kv.pop();
        kv.retain(|(k, _)| *k != "{arch}.vocab_size");
        kv.push((
            "tokenizer.ggml.tokens",
            Value::Array(
                crate::gguf::ValueType::String,
                (0..7).map(|i| Value::String(i.to_string())).collect(),
            ),
        ));
        assert_eq!(config_from_gguf(&gguf("llama", &kv)).unwrap().vocab_size, 7);
        kv.pop();
        assert!(matches!(
            config_from_gguf(&gguf("llama", &kv)),
            Err(LoadError::MissingKey(k)) if k == "llama.vocab_size"
        ));
    }

    #[test]
    fn gguf_rope_scaling_keys() {
        let with = |extra: Vec<(&'static str, Value)>| {
            let mut kv = base_kv();
            kv.extend(extra);
            config_from_gguf(&gguf("llama", &kv))
        };
        let s = |t: &str| Value::String(t.to_string());
        assert_eq!(
            with(vec![
                ("{arch}.rope.scaling.type", s("linear")),
                ("{arch}.rope.scaling.factor", Value::F32(4.0))
            ])
            .unwrap()
            .rope_scaling,
            Some(RopeScaling::Linear { factor: 4.0 })
        );
        assert_eq!(
            with(vec![("{arch}.rope.scale_linear", Value::F32(2.0))])
                .unwrap()
                .rope_scaling,
            Some(RopeScaling::Linear { factor: 2.0 })
        );
        assert_eq!(
            with(vec![
                ("{arch}.rope.scaling.type", s("llama3")),
                ("{arch}.rope.scaling.factor", Value::F32(8.0)),
                (
                    "{arch}.rope.scaling.original_context_length",
                    Value::U32(8192)
                ),
            ])
            .unwrap()
            .rope_scaling,
            Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            })
        );
        assert_eq!(
            with(vec![("{arch}.rope.scaling.type", s("none"))])
                .unwrap()
                .rope_scaling,
            None
        );
        // YaRN without the optional keys: llama.cpp's defaults, the original context is
        // the context length, and the magnitude is get_mscale(4).
        assert_eq!(
            with(vec![
                ("{arch}.rope.scaling.type", s("yarn")),
                ("{arch}.rope.scaling.factor", Value::F32(4.0)),
            ])
            .unwrap()
            .rope_scaling,
            Some(RopeScaling::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 4096,
                beta_fast: 32.0,
                beta_slow: 1.0,
                magnitude: (1.0 + 0.1 * 4f64.ln()) as f32,
            })
        );
        expect_config_err(
            with(vec![("{arch}.rope.scaling.type", s("longrope"))]),
            "'longrope'",
        );
        assert!(matches!(
            with(vec![("{arch}.rope.scaling.type", s("linear"))]),
            Err(LoadError::MissingKey(k)) if k == "llama.rope.scaling.factor"
        ));
        expect_config_err(
            with(vec![("{arch}.rope.dimension_count", Value::U32(32))]),
            "rope.dimension_count",
        );
        expect_config_err(
            with(vec![("{arch}.attention.value_length", Value::U32(32))]),
            "attention.value_length",
        );
        expect_config_err(
            with(vec![("{arch}.attention.head_count_kv", Value::U32(3))]),
            "not a multiple",
        );
        assert!(matches!(
            with(vec![("{arch}.rope.freq_base", s("big"))]),
            Err(LoadError::WrongType { .. })
        ));
    }

    #[test]
    fn per_layer_sliding_windows() {
        let with = |pattern: Value| {
            let mut kv = base_kv();
            kv.push(("{arch}.attention.sliding_window", Value::U32(64)));
            kv.push(("{arch}.attention.sliding_window_pattern", pattern));
            config_from_gguf(&gguf("llama", &kv))
        };
        let bools = |b: &[bool]| {
            Value::Array(
                crate::gguf::ValueType::Bool,
                b.iter().map(|&b| Value::Bool(b)).collect(),
            )
        };
        let cfg = with(bools(&[true, false])).unwrap();
        assert_eq!(cfg.sliding_layers, Some(vec![true, false]));
        assert_eq!((cfg.layer_window(0), cfg.layer_window(1)), (Some(64), None));
        // A period of 2: every second layer is full; 0 or all-sliding is the plain model.
        assert_eq!(
            with(Value::U32(2)).unwrap().sliding_layers,
            Some(vec![true, false])
        );
        assert_eq!(with(Value::U32(0)).unwrap().sliding_layers, None);
        assert_eq!(with(bools(&[true, true])).unwrap().sliding_layers, None);
        expect_config_err(with(bools(&[true, false, true])), "3 per-layer");
        assert!(matches!(
            with(Value::Array(
                crate::gguf::ValueType::U32,
                vec![Value::U32(1), Value::U32(0)]
            )),
            Err(LoadError::WrongType { .. })
        ));

        let hf_types = |types: &str| {
            hf(&MISTRAL_7B
                .replace("\"sliding_window\": null", "\"sliding_window\": 4096")
                .replace("\"mistral\"", "\"ministral\"")
                .replace("\"num_hidden_layers\": 32", "\"num_hidden_layers\": 3")
                .replace(
                    "\"rms_norm_eps\"",
                    &format!("\"layer_types\": {types}, \"rms_norm_eps\""),
                ))
        };
        let cfg =
            hf_types(r#"["sliding_attention", "full_attention", "sliding_attention"]"#).unwrap();
        assert_eq!(cfg.sliding_layers, Some(vec![true, false, true]));
        expect_config_err(
            hf_types(r#"["chunked_attention", "full_attention", "full_attention"]"#),
            "chunked_attention",
        );
        expect_config_err(hf_types(r#"["full_attention"]"#), "1 per-layer");
        // Without a window the layer types change nothing.
        let no_window = MISTRAL_7B.replace(
            "\"rms_norm_eps\"",
            "\"layer_types\": [\"full_attention\"], \"rms_norm_eps\"",
        );
        assert_eq!(hf(&no_window).unwrap().sliding_layers, None);
    }

    /// The keys of a Ministral 3 GGUF as llama.cpp's converter writes them.
    fn ministral3_kv() -> Vec<(&'static str, Value)> {
        let mut kv = base_kv();
        kv.retain(|(k, _)| *k != "{arch}.context_length");
        kv.extend([
            ("{arch}.context_length", Value::U32(262_144)),
            ("{arch}.rope.scaling.type", Value::String("yarn".into())),
            ("{arch}.rope.scaling.factor", Value::F32(16.0)),
            (
                "{arch}.rope.scaling.original_context_length",
                Value::U32(16384),
            ),
            ("{arch}.rope.scaling.yarn_beta_fast", Value::F32(32.0)),
            ("{arch}.rope.scaling.yarn_beta_slow", Value::F32(1.0)),
            ("{arch}.rope.scaling.yarn_log_multiplier", Value::F32(1.0)),
            ("{arch}.attention.temperature_scale", Value::F32(0.1)),
        ]);
        kv
    }

    #[test]
    fn gguf_mistral3_yarn_and_temperature() {
        let cfg = config_from_gguf(&gguf("mistral3", &ministral3_kv())).unwrap();
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
                length: 16384
            })
        );
        // Without the log multiplier the magnitude is ggml's 1 + 0.1 ln 16, times attn_factor.
        let mut kv = ministral3_kv();
        kv.retain(|(k, _)| !k.ends_with("yarn_log_multiplier"));
        kv.push(("{arch}.rope.scaling.attn_factor", Value::F32(2.0)));
        kv.push(("{arch}.attention.temperature_length", Value::U32(100)));
        let cfg = config_from_gguf(&gguf("mistral3", &kv)).unwrap();
        match cfg.rope_scaling {
            Some(RopeScaling::Yarn { magnitude, .. }) => {
                assert_eq!(magnitude, (2.0 * (1.0 + 0.1 * 16f64.ln())) as f32)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cfg.attn_temperature.map(|t| t.length), Some(100));
        // A temperature scale of 0 is none.
        let mut kv = ministral3_kv();
        kv.retain(|(k, _)| !k.ends_with("temperature_scale"));
        kv.push(("{arch}.attention.temperature_scale", Value::F32(0.0)));
        assert_eq!(
            config_from_gguf(&gguf("mistral3", &kv))
                .unwrap()
                .attn_temperature,
            None
        );
        let mut kv = ministral3_kv();
        kv.push(("{arch}.attention.temperature_length", Value::U32(0)));
        expect_config_err(config_from_gguf(&gguf("mistral3", &kv)), "temperature");
    }

    #[test]
    fn mixtral_experts_from_hf() {
        let mixtral = MISTRAL_7B.replace("\"mistral\"", "\"mixtral\"").replace(
            "\"sliding_window\": null",
            "\"num_local_experts\": 8, \"num_experts_per_tok\": 2",
        );
        let cfg = hf(&mixtral).unwrap();
        assert_eq!(
            cfg.moe,
            Some(MoeConfig {
                num_experts: 8,
                experts_per_token: 2
            })
        );
        assert_eq!(hf(MISTRAL_7B).unwrap().moe, None);
        expect_config_err(
            hf(&mixtral.replace("\"num_local_experts\": 8,", "")),
            "num_local_experts",
        );
        expect_config_err(
            hf(&mixtral.replace("\"num_experts_per_tok\": 2", "\"num_experts_per_tok\": 9")),
            "1 ≤ experts per token ≤ experts, got 9 of 8",
        );
        expect_config_err(
            hf(&mixtral.replace("\"num_experts_per_tok\": 2", "\"num_experts_per_tok\": 0")),
            "got 0 of 8",
        );
    }

    #[test]
    fn mixtral_experts_from_gguf() {
        let with = |arch: &str, extra: &[(&'static str, Value)]| {
            let mut kv = base_kv();
            kv.extend(extra.iter().cloned());
            config_from_gguf(&gguf(arch, &kv))
        };
        let (count, used) = ("{arch}.expert_count", "{arch}.expert_used_count");
        for arch in ["llama", "mistral3"] {
            let cfg = with(arch, &[(count, Value::U32(8)), (used, Value::U32(2))]).unwrap();
            assert_eq!(
                cfg.moe,
                Some(MoeConfig {
                    num_experts: 8,
                    experts_per_token: 2
                }),
                "{arch}"
            );
        }
        assert_eq!(with("llama", &[(count, Value::U32(0))]).unwrap().moe, None);
        expect_config_err(
            with("llama", &[(count, Value::U32(8)), (used, Value::U32(9))]),
            "got 9 of 8",
        );
        expect_config_err(
            with("llama", &[(count, Value::U32(8))]),
            "llama.expert_count = 8 without llama.expert_used_count",
        );
        expect_config_err(
            with("llama", &[(used, Value::U32(2))]),
            "without llama.expert_count",
        );
    }
}
