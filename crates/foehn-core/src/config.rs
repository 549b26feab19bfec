//! `ModelConfig`: the hyperparameters of a Mistral/Llama-family decoder, whatever
//! file format they were read from (HF `config.json` or GGUF metadata).

use serde::{Deserialize, Serialize};

/// Rotary-embedding frequency scaling, as in HF `rope_scaling`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        /// Scale factor applied to low frequencies.
        factor: f32,
        /// Wavelength ratio below which frequencies are kept (default 1).
        low_freq_factor: f32,
        /// Wavelength ratio above which frequencies are fully scaled (default 4).
        high_freq_factor: f32,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
    /// Plain linear position interpolation: positions are divided by `factor`.
    Linear {
        /// Divisor applied to positions.
        factor: f32,
    },
    /// YaRN (Peng et al. 2023) as ggml's `rope_yarn` computes it: each pair's
    /// frequency is blended between the interpolated (`/ factor`) and the
    /// original one by a linear ramp over the correction dimensions that
    /// `beta_fast` and `beta_slow` give, and cos/sin are multiplied by
    /// `magnitude`.
    Yarn {
        /// Context extension factor (interpolated frequencies are divided by it).
        factor: f32,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: usize,
        /// Rotations per original context above which a pair is extrapolated (default 32).
        beta_fast: f32,
        /// Rotations per original context below which a pair is interpolated (default 1).
        beta_slow: f32,
        /// Factor on cos and sin (so on queries and keys alike): HF's
        /// `attention_factor`, llama.cpp's final YaRN `mscale` (1.0 for Ministral 3).
        magnitude: f32,
    },
}

/// Llama-4-style attention temperature (Mistral 3): after RoPE, the query of
/// position `p` is multiplied by `1 + beta · ln(1 + floor(p / length))`, so
/// nothing changes below position `length`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttnTemperature {
    /// Strength (`llama_4_scaling_beta`, GGUF `attention.temperature_scale`).
    pub beta: f32,
    /// Positions per step of the temperature (the original context length).
    pub length: usize,
}

impl AttnTemperature {
    /// The query factor at position `pos`.
    pub fn scale(&self, pos: usize) -> f32 {
        let steps = (pos / self.length.max(1)) as f64;
        (1.0 + f64::from(self.beta) * (1.0 + steps).ln()) as f32
    }
}

/// A mixture-of-experts feed-forward block (Mixtral): a router picks
/// `experts_per_token` of `num_experts` SwiGLU experts per token and mixes
/// their outputs by the renormalised softmax of the router's logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoeConfig {
    /// Experts per layer.
    pub num_experts: usize,
    /// Experts run per token (top-k).
    pub experts_per_token: usize,
}

/// Hyperparameters of a Mistral/Llama decoder-only transformer.
///
/// Every field is filled by the loader; `head_dim` is explicit because it may
/// differ from `hidden_size / num_attention_heads` (Mistral Nemo).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Number of token embeddings (rows of the embedding matrix).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Inner width of the SwiGLU feed-forward block.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when smaller than the query heads).
    pub num_key_value_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Optional RoPE frequency scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f32,
    /// Sliding attention window in tokens (a query attends to itself and the `w - 1` keys before it); `None` = full causal.
    pub sliding_window: Option<usize>,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// Which layers use `sliding_window` (Ministral-8B-2410's interleaving, HF
    /// `layer_types`); the others attend to the whole context. `None` = every
    /// layer uses it.
    #[serde(default)]
    pub sliding_layers: Option<Vec<bool>>,
    /// Attention temperature by position (Mistral 3); `None` = none.
    #[serde(default)]
    pub attn_temperature: Option<AttnTemperature>,
    /// Mixture-of-experts feed-forward (Mixtral); `None` = one dense SwiGLU.
    #[serde(default)]
    pub moe: Option<MoeConfig>,
}

impl ModelConfig {
    /// The sliding window of layer `layer` (`None`: full causal attention).
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        match &self.sliding_layers {
            Some(sliding) if !sliding.get(layer).copied().unwrap_or(false) => None,
            _ => self.sliding_window,
        }
    }
}
