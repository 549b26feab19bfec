//! `Backend`: the small set of operations the decoder's forward pass is
//! written against ([`Model::forward`](crate::Model::forward)), and how a
//! backend holds weights, keys and values, and activations.
//!
//! The forward pass names its activations ([`Act`]) instead of holding them:
//! each backend keeps them its own way — the CPU backend in preallocated
//! `f32` buffers, so that a decode step allocates nothing; the candle
//! backend as device tensors.

use foehn_core::ModelConfig;
use foehn_kernels::{ActPrecision, QMatrix};

use crate::cache::{KvCache, KvGeometry, KvStorage};
use crate::moe::Moe;
use crate::{LogitsMode, Model, Result, Rope};

/// An activation of a forward pass, as the ops name their inputs and outputs.
///
/// # Shapes
/// For a chunk of `n` tokens: `X`, `Xn` are `n × hidden`; `Q`, `Att`
/// `n × heads·head_dim`; `K`, `V` `n × kv_heads·head_dim`; `Gate`, `Up`
/// `n × intermediate` (a backend may lay them out otherwise inside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// The residual stream.
    X,
    /// A normed input or a projection's output.
    Xn,
    /// Queries.
    Q,
    /// Keys of the chunk.
    K,
    /// Values of the chunk.
    V,
    /// The attention's output.
    Att,
    /// The feed-forward gate.
    Gate,
    /// The feed-forward up projection.
    Up,
}

/// The output projection: the token embedding (tied) or a matrix of its own.
#[derive(Debug)]
pub enum Head<'a, B: Backend> {
    /// The embedding serves as the output projection.
    Tied(&'a B::Embedding),
    /// `output.weight` / `lm_head.weight`.
    Output(&'a B::Linear),
}

/// A backend of the decoder: weights, caches, work buffers and the
/// operations of one forward pass. Every op works on the chunk that
/// [`embed`](Self::embed) started (its tokens' count is kept in the work
/// buffers).
pub trait Backend: Sized + Send + Sync + std::fmt::Debug + 'static {
    /// A linear layer (`out = W · x`).
    type Linear: Send + Sync + std::fmt::Debug + 'static;
    /// Linear layers that read the same input (query/key/value, gate/up),
    /// stacked into one product where the backend can.
    type Stack: Send + Sync + std::fmt::Debug + 'static;
    /// A norm's weights.
    type Vector: Send + Sync + std::fmt::Debug + 'static;
    /// The token embedding (and, when tied, the output projection).
    type Embedding: Send + Sync + std::fmt::Debug + 'static;
    /// How a session's keys and values are stored.
    type Kv: KvStorage + 'static;
    /// A session's activations and work space.
    type Work: Send + std::fmt::Debug + 'static;

    /// Short name (`cpu`, `candle:cuda:0`, …) for messages.
    fn name(&self) -> String;

    // ---- weights, at load -------------------------------------------------

    /// The linear layer `name` of a model being built.
    ///
    /// # Errors
    /// A type the backend cannot compute with, or a device error.
    fn linear(&self, name: &str, m: QMatrix) -> Result<Self::Linear>;

    /// The linear layers `names` that read the same input, in order.
    ///
    /// # Errors
    /// As [`linear`](Self::linear).
    fn stack(&self, names: &[String], parts: Vec<QMatrix>) -> Result<Self::Stack>;

    /// A norm's weights.
    ///
    /// # Errors
    /// A device error.
    fn vector(&self, v: Vec<f32>) -> Result<Self::Vector>;

    /// The token embedding `name`, which is also the output projection when
    /// `tied`.
    ///
    /// # Errors
    /// As [`linear`](Self::linear).
    fn embedding(&self, name: &str, m: QMatrix, tied: bool) -> Result<Self::Embedding>;

    /// Called once the model is built (the CPU backend starts packing its
    /// deferred matrices here). Default: nothing.
    fn loaded(model: &Model<Self>) {
        let _ = model;
    }

    /// Returns once what [`loaded`](Self::loaded) started in the background
    /// is done (the CPU backend packs the rest of its deferred matrices on
    /// this thread meanwhile). Default: nothing.
    fn finish_packing(model: &Model<Self>) {
        let _ = model;
    }

    // ---- sessions ---------------------------------------------------------

    /// Storage for the keys and values of a cache of `geom`.
    ///
    /// # Errors
    /// Memory or device errors.
    fn new_kv(&self, geom: &KvGeometry) -> Result<Self::Kv>;

    /// Work buffers for chunks of up to `chunk` tokens of a model of `cfg`.
    fn new_work(&self, cfg: &ModelConfig, chunk: usize) -> Self::Work;

    /// Sets how the products of the passes that use `work` quantize their
    /// activations.
    ///
    /// # Errors
    /// [`ModelError::Config`](crate::ModelError::Config) for a precision the
    /// backend does not offer.
    fn set_precision(&self, work: &mut Self::Work, precision: ActPrecision) -> Result<()>;
    /// Marks the passes that use `work` as a prompt's (or not): a backend
    /// may compute their products differently from a decode step's, as
    /// long as each row's results do not depend on the pass's other rows
    /// (the CPU backend: in bf16 on AMX tiles, see
    /// [`MatScratch::set_prompt`](foehn_kernels::MatScratch::set_prompt)).
    /// Default: no difference.
    fn set_prompt(&self, work: &mut Self::Work, prompt: bool) {
        let _ = (work, prompt);
    }

    /// Most tokens per forward pass that `work` takes.
    fn work_chunk(&self, work: &Self::Work) -> usize;

    /// Checks that `work` fits a model of `cfg` and a chunk of `n` tokens.
    ///
    /// # Errors
    /// [`ModelError::Mismatch`](crate::ModelError::Mismatch),
    /// [`ModelError::ChunkTooLarge`](crate::ModelError::ChunkTooLarge).
    fn check_work(&self, work: &Self::Work, cfg: &ModelConfig, n: usize) -> Result<()>;

    // ---- the operations of a forward pass ----------------------------------

    /// Starts a chunk: the embeddings of `tokens` into [`Act::X`], and the
    /// RoPE tables of positions `start..start + tokens.len()`.
    ///
    /// # Errors
    /// Kernel or device errors.
    fn embed(
        &self,
        w: &mut Self::Work,
        embedding: &Self::Embedding,
        rope: &Rope,
        tokens: &[u32],
        start: usize,
    ) -> Result<()>;

    /// `out = rmsnorm(x) · weight`, row by row.
    ///
    /// # Errors
    /// Device errors.
    fn rms_norm(
        &self,
        w: &mut Self::Work,
        x: Act,
        weight: &Self::Vector,
        eps: f32,
        out: Act,
    ) -> Result<()>;

    /// `outs[i] = parts[i] · x` for the parts of a stack.
    ///
    /// # Errors
    /// Kernel or device errors.
    fn project(&self, w: &mut Self::Work, m: &Self::Stack, x: Act, outs: &[Act]) -> Result<()>;

    /// `out = m · x`.
    ///
    /// # Errors
    /// Kernel or device errors.
    fn linear_into(&self, w: &mut Self::Work, m: &Self::Linear, x: Act, out: Act) -> Result<()>;

    /// Rotates the queries `q` and keys `k` of the chunk by their positions.
    ///
    /// # Errors
    /// Device errors.
    fn rope(&self, w: &mut Self::Work, rope: &Rope, q: Act, k: Act) -> Result<()>;

    /// Stores the chunk's keys `k` and values `v` in `layer` of the cache (at
    /// its position) and writes the attention of the queries `q` over every
    /// key they see (causal, sliding window) into `out`.
    ///
    /// # Errors
    /// Device errors.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        w: &mut Self::Work,
        cache: &mut KvCache<Self::Kv>,
        layer: usize,
        q: Act,
        k: Act,
        v: Act,
        out: Act,
    ) -> Result<()>;

    /// `acc += y`.
    ///
    /// # Errors
    /// Device errors.
    fn add(&self, w: &mut Self::Work, acc: Act, y: Act) -> Result<()>;

    /// SwiGLU: `gate = silu(gate) · up`.
    ///
    /// # Errors
    /// Device errors.
    fn silu_mul(&self, w: &mut Self::Work, gate: Act, up: Act) -> Result<()>;

    /// A mixture of experts: each row of `x` goes to the experts
    /// [`route`](crate::moe::route) picks from the router's logits, and `out`
    /// gets the sum of their outputs by their weights. `out` may be `x`.
    ///
    /// # Errors
    /// Kernel or device errors.
    fn moe(&self, w: &mut Self::Work, moe: &Moe<Self>, x: Act, out: Act) -> Result<()>;

    // ---- batched decoding: one token of each of several sessions --------

    /// Whether the backend runs [`Model::forward_batch`](crate::Model::forward_batch)
    /// as one pass (default: no; the ops below then stay unused and
    /// batches run session by session).
    fn batches(&self) -> bool {
        false
    }

    /// Starts a batch: row `t` is `tokens[t]` at position `positions[t]`
    /// (of its own session), as [`embed`](Self::embed) for a chunk.
    ///
    /// # Errors
    /// Kernel or device errors; [`ModelError::Config`](crate::ModelError::Config)
    /// where the backend does not batch.
    fn embed_batch(
        &self,
        w: &mut Self::Work,
        embedding: &Self::Embedding,
        rope: &Rope,
        tokens: &[u32],
        positions: &[usize],
    ) -> Result<()> {
        let _ = (w, embedding, rope, tokens, positions);
        Err(no_batches(self))
    }

    /// As [`attend`](Self::attend) for a batch: row `t`'s key and value go
    /// to `caches[t]` (at its position) and its query attends over that
    /// cache only.
    ///
    /// # Errors
    /// As [`embed_batch`](Self::embed_batch).
    #[allow(clippy::too_many_arguments)]
    fn attend_batch(
        &self,
        w: &mut Self::Work,
        caches: &mut [&mut KvCache<Self::Kv>],
        layer: usize,
        q: Act,
        k: Act,
        v: Act,
        out: Act,
    ) -> Result<()> {
        let _ = (w, caches, layer, q, k, v, out);
        Err(no_batches(self))
    }

    /// The logits `mode` asks for: the final norm of `x` (its last row, or
    /// every row) times the output projection, on the host.
    ///
    /// # Errors
    /// Kernel or device errors.
    fn logits<'w>(
        &self,
        w: &'w mut Self::Work,
        x: Act,
        norm: &Self::Vector,
        eps: f32,
        head: Head<'_, Self>,
        mode: LogitsMode,
    ) -> Result<&'w [f32]>;
}

/// The error of a batched op on a backend that does not batch.
fn no_batches<B: Backend>(b: &B) -> crate::ModelError {
    crate::ModelError::Config(format!(
        "the {} backend runs batches session by session",
        b.name()
    ))
}
