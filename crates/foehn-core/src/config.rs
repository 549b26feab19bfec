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
}
