//! `Scratch`: every activation buffer of a forward pass, allocated once for a
//! chunk size and a model, so that a decode step allocates nothing.

use foehn_core::ModelConfig;
use foehn_kernels::{ActPrecision, MatScratch};

use crate::attention::{AttnShape, AttnWork};
use crate::cache::KvCache;

/// Activation buffers for forward passes of up to `chunk` tokens.
///
/// One per session (or per thread running sessions); the logits a forward pass
/// returns borrow it. The all-positions logits buffer (`n × vocab`) is only
/// allocated the first time [`LogitsMode::All`](crate::LogitsMode::All) asks for it.
#[derive(Debug, Clone)]
pub struct Scratch {
    /// The model dimensions the buffers were sized for (see [`dims`]).
    pub(crate) dims: [usize; 7],
    pub(crate) chunk: usize,
    /// Residual stream, `chunk × hidden`.
    pub(crate) x: Vec<f32>,
    /// Normed input of a block / output of a projection, `chunk × hidden`.
    pub(crate) xn: Vec<f32>,
    /// Queries, `chunk × heads·head_dim`.
    pub(crate) q: Vec<f32>,
    /// Keys, `chunk × kv_heads·head_dim`.
    pub(crate) k: Vec<f32>,
    /// Values, `chunk × kv_heads·head_dim`.
    pub(crate) v: Vec<f32>,
    /// Attention output, `chunk × heads·head_dim`.
    pub(crate) att: Vec<f32>,
    /// Outputs of stacked projections, `chunk × max(q + 2·kv, 2·intermediate)`.
    pub(crate) wide: Vec<f32>,
    /// FFN gate, `chunk × intermediate`.
    pub(crate) gate: Vec<f32>,
    /// FFN up, `chunk × intermediate`.
    pub(crate) up: Vec<f32>,
    /// RoPE tables, `chunk × head_dim/2` each.
    pub(crate) cos: Vec<f32>,
    pub(crate) sin: Vec<f32>,
    /// Logits: `vocab`, or `n × vocab` after an all-positions pass.
    pub(crate) logits: Vec<f32>,
    /// Buffers of the matrix products.
    pub(crate) mat: MatScratch,
    /// Work space of the attention tasks.
    pub(crate) attn: AttnWork,
}

impl Scratch {
    /// Buffers for chunks of up to `chunk` tokens (at least 1). Attention
    /// needs no buffer that grows with the context (it works on blocks of
    /// keys).
    pub fn new(cfg: &ModelConfig, chunk: usize) -> Self {
        let chunk = chunk.max(1);
        let q_dim = cfg.num_attention_heads * cfg.head_dim;
        let kv_dim = cfg.num_key_value_heads * cfg.head_dim;
        let widest = cfg.hidden_size.max(q_dim).max(cfg.intermediate_size);
        Self {
            dims: dims(cfg),
            chunk,
            x: vec![0.0; chunk * cfg.hidden_size],
            xn: vec![0.0; chunk * cfg.hidden_size],
            q: vec![0.0; chunk * q_dim],
            k: vec![0.0; chunk * kv_dim],
            v: vec![0.0; chunk * kv_dim],
            att: vec![0.0; chunk * q_dim],
            wide: vec![0.0; chunk * (q_dim + 2 * kv_dim).max(2 * cfg.intermediate_size)],
            gate: vec![0.0; chunk * cfg.intermediate_size],
            up: vec![0.0; chunk * cfg.intermediate_size],
            cos: vec![0.0; chunk * cfg.head_dim / 2],
            sin: vec![0.0; chunk * cfg.head_dim / 2],
            logits: vec![0.0; cfg.vocab_size],
            mat: MatScratch::new(widest),
            // A slot per thread of the pool the passes will run in (the
            // current rayon pool, or at most one per CPU).
            attn: AttnWork::new(
                attn_shape(cfg),
                rayon::current_num_threads()
                    .max(std::thread::available_parallelism().map_or(1, |n| n.get())),
            ),
        }
    }

    /// Buffers matching a cache: chunks as large as it takes.
    pub fn for_cache(cfg: &ModelConfig, cache: &KvCache) -> Self {
        Self::new(cfg, cache.max_chunk())
    }

    /// Most tokens per forward pass.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Sets how finely the passes that use these buffers quantize the
    /// activations of their matrix products (default
    /// [`ActPrecision::Q8`], as llama.cpp), making room for it so that a
    /// decode step still allocates nothing.
    pub fn set_act_precision(&mut self, precision: ActPrecision) {
        let [hidden, heads, kv_heads, head_dim, inter, vocab, _] = self.dims;
        let widest = [hidden, (heads + 2 * kv_heads) * head_dim, 2 * inter, vocab];
        self.mat
            .set_precision(precision, widest.into_iter().max().unwrap_or(0));
    }

    /// How the passes that use these buffers quantize activations.
    pub fn act_precision(&self) -> ActPrecision {
        self.mat.precision()
    }
}

/// The dimensions that size a [`Scratch`]: hidden, heads, KV heads, head_dim,
/// intermediate, vocabulary, layers.
pub(crate) fn dims(cfg: &ModelConfig) -> [usize; 7] {
    [
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.num_hidden_layers,
    ]
}

/// The attention geometry of `cfg`.
pub(crate) fn attn_shape(cfg: &ModelConfig) -> AttnShape {
    AttnShape {
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        window: cfg.sliding_window,
    }
}
