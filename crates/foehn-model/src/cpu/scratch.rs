//! `Scratch`: every activation buffer of a forward pass, allocated once for a
//! chunk size and a model, so that a decode step allocates nothing.

use foehn_core::{ModelConfig, MoeConfig};
use foehn_kernels::{ActPrecision, MatScratch};

use super::attention::{AttnShape, AttnWork};
use super::moe::MoeWork;
use crate::backend::Act;
use crate::cache::KvCache;

/// Activation buffers for forward passes of up to `chunk` tokens.
///
/// One per session (or per thread running sessions); the logits a forward pass
/// returns borrow it. The all-positions logits buffer (`n × vocab`) is only
/// allocated the first time [`LogitsMode::All`](crate::LogitsMode::All) asks for it.
#[derive(Debug, Clone)]
pub struct Scratch {
    /// The model dimensions the buffers were sized for.
    pub(crate) dims: Dims,
    pub(crate) chunk: usize,
    /// Tokens of the chunk in flight and the position of its first one.
    pub(crate) n: usize,
    pub(crate) start: usize,
    /// Each row's position (in its own session's cache, for a batch), `chunk`.
    pub(crate) pos: Vec<usize>,
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
    /// Work space of the mixture-of-experts blocks.
    pub(crate) moe: MoeWork,
}

impl Scratch {
    /// Buffers for chunks of up to `chunk` tokens (at least 1), for passes
    /// on `threads` threads (the model's [`Compute`](foehn_kernels::Compute)).
    /// Attention needs no buffer that grows with the context (it works on
    /// blocks of keys).
    pub fn new(cfg: &ModelConfig, chunk: usize, threads: usize) -> Self {
        let chunk = chunk.max(1);
        let q_dim = cfg.num_attention_heads * cfg.head_dim;
        let kv_dim = cfg.num_key_value_heads * cfg.head_dim;
        let widest = cfg.hidden_size.max(q_dim).max(cfg.intermediate_size);
        Self {
            dims: Dims::of(cfg),
            chunk,
            n: 0,
            start: 0,
            pos: vec![0; chunk],
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
            mat: MatScratch::new(widest, threads),
            // A slot per thread of the pool the passes will run in.
            attn: AttnWork::new(Dims::of(cfg).attn_shape(cfg.sliding_window), threads),
            moe: MoeWork::new(cfg, chunk),
        }
    }

    /// Buffers matching a cache: chunks as large as it takes, for passes
    /// on `threads` threads.
    pub fn for_cache<S>(cfg: &ModelConfig, cache: &KvCache<S>, threads: usize) -> Self
    where
        S: crate::cache::KvStorage,
    {
        Self::new(cfg, cache.max_chunk(), threads)
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
        let d = self.dims;
        let widest = [
            d.hidden,
            d.q_dim() + 2 * d.kv_dim(),
            2 * d.intermediate,
            d.vocab,
        ];
        self.mat
            .set_precision(precision, widest.into_iter().max().unwrap_or(0));
    }

    /// How the passes that use these buffers quantize activations.
    pub fn act_precision(&self) -> ActPrecision {
        self.mat.precision()
    }

    /// Expert feed-forward blocks run by the passes that used these buffers
    /// (0 for a dense model). Each run reads its expert's three matrices
    /// once: a decode step runs `experts_per_token` experts per layer, a
    /// prefill chunk at most every expert once per layer, however many
    /// tokens it holds.
    pub fn experts_run(&self) -> u64 {
        self.moe.runs
    }
}

/// The model dimensions a [`Scratch`] is sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub(crate) hidden: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) intermediate: usize,
    pub(crate) vocab: usize,
    pub(crate) layers: usize,
    pub(crate) moe: Option<MoeConfig>,
}

impl Dims {
    /// The dimensions of `cfg`.
    pub(crate) fn of(cfg: &ModelConfig) -> Self {
        Self {
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            intermediate: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            layers: cfg.num_hidden_layers,
            moe: cfg.moe,
        }
    }

    /// Elements of a token's queries.
    pub(crate) fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Elements of a token's keys (or values).
    pub(crate) fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// The attention geometry of these dimensions with a sliding `window`.
    pub(crate) fn attn_shape(&self, window: Option<usize>) -> AttnShape {
        AttnShape {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            window,
        }
    }

    /// Elements per token of the activation `a`.
    pub(crate) fn width(&self, a: Act) -> usize {
        match a {
            Act::X | Act::Xn => self.hidden,
            Act::Q | Act::Att => self.q_dim(),
            Act::K | Act::V => self.kv_dim(),
            Act::Gate | Act::Up => self.intermediate,
        }
    }
}

impl Scratch {
    /// The buffer of activation `a`.
    pub(crate) fn act(&self, a: Act) -> &[f32] {
        let n = self.n * self.dims.width(a);
        &self.buf(a)[..n]
    }

    /// The buffer of activation `a`, moved out (no allocation) so that it can
    /// be written while others are read; put it back with [`put`](Self::put).
    pub(crate) fn take(&mut self, a: Act) -> Vec<f32> {
        std::mem::take(self.buf_mut(a))
    }

    /// Puts back a buffer [`take`](Self::take) moved out.
    pub(crate) fn put(&mut self, a: Act, v: Vec<f32>) {
        *self.buf_mut(a) = v;
    }

    fn buf(&self, a: Act) -> &Vec<f32> {
        match a {
            Act::X => &self.x,
            Act::Xn => &self.xn,
            Act::Q => &self.q,
            Act::K => &self.k,
            Act::V => &self.v,
            Act::Att => &self.att,
            Act::Gate => &self.gate,
            Act::Up => &self.up,
        }
    }

    fn buf_mut(&mut self, a: Act) -> &mut Vec<f32> {
        match a {
            Act::X => &mut self.x,
            Act::Xn => &mut self.xn,
            Act::Q => &mut self.q,
            Act::K => &mut self.k,
            Act::V => &mut self.v,
            Act::Att => &mut self.att,
            Act::Gate => &mut self.gate,
            Act::Up => &mut self.up,
        }
    }
}
