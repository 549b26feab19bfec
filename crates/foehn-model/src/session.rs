//! The decoder without its backend's types: [`Decoder`] (a loaded model)
//! opens [`DecoderSession`]s (a KV cache and work buffers bound to that
//! model), so that an engine holds any backend's model behind one
//! `Arc<dyn Decoder>` and never pairs a cache with the wrong model.

use std::any::Any;
use std::sync::Arc;

use foehn_core::ModelConfig;
use foehn_kernels::ActPrecision;

use crate::backend::Backend;
use crate::cache::{check_chunk_tokens, KvCache, KvCacheOptions};
use crate::{LogitsMode, Model, ModelError, Result};

/// How to open a [`DecoderSession`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// The KV cache's size and element type.
    pub cache: KvCacheOptions,
    /// How the CPU kernels quantize the activations of their products
    /// (other backends accept only the default, [`ActPrecision::Q8`]).
    pub act_precision: ActPrecision,
}

/// One session of a [`Decoder`]: its KV cache and work buffers.
pub trait DecoderSession: Send {
    /// Tokens in the cache (the position of the next token).
    fn position(&self) -> usize;
    /// Most tokens the session may hold.
    fn ctx_len(&self) -> usize;
    /// Forgets every token.
    fn clear(&mut self);
    /// Keeps the first `to` tokens (see [`KvCache::truncate`]).
    ///
    /// # Errors
    /// As [`KvCache::truncate`].
    fn truncate(&mut self, to: usize) -> Result<()>;
    /// One chunk, as [`Model::forward`].
    ///
    /// # Errors
    /// As [`Model::forward`].
    fn forward(&mut self, tokens: &[u32], mode: LogitsMode) -> Result<&[f32]>;
    /// One chunk of a prompt, as [`Model::forward_prompt`].
    ///
    /// # Errors
    /// As [`Model::forward`].
    fn forward_prompt(&mut self, tokens: &[u32], mode: LogitsMode) -> Result<&[f32]>;
    /// A prompt of any length, as [`Model::prefill`].
    ///
    /// # Errors
    /// As [`Model::prefill`].
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]>;
    /// Tokens of any length as decode steps compute them, as [`Model::feed`].
    ///
    /// # Errors
    /// As [`Model::feed`].
    fn feed(&mut self, tokens: &[u32]) -> Result<&[f32]>;
    /// Bytes of the session's KV cache.
    fn memory_bytes(&self) -> usize;
    /// Most tokens one [`forward`](Self::forward) takes (the chunk size
    /// [`prefill`](Self::prefill) splits prompts into).
    fn max_chunk(&self) -> usize;
    /// The session as [`Any`], so that a [`DecoderBatch`] of its model
    /// reaches its cache.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Work buffers for batched decode steps over sessions of one [`Decoder`]
/// (continuous batching): each step runs one token of every session given,
/// as one forward pass where the backend batches ([`Backend::batches`]: the
/// CPU backend), else one pass per session (candle: the same logits, no
/// faster).
pub trait DecoderBatch: Send {
    /// Most sessions per step.
    fn max_rows(&self) -> usize;
    /// Runs `tokens[t]` at the position of `sessions[t]` (appending its keys
    /// and values to that session's cache) and returns one row of logits per
    /// session, the row of each as its own
    /// [`forward`](DecoderSession::forward) of that token would give up to
    /// the summation order of the batched products.
    ///
    /// # Shapes
    /// - `sessions`, `tokens`: `n`, `1 ≤ n ≤` [`max_rows`](Self::max_rows).
    /// - returns: `n × vocab`.
    ///
    /// # Errors
    /// As [`DecoderSession::forward`] for any row; [`ModelError::Mismatch`]
    /// for a session of another model or lengths that differ,
    /// [`ModelError::ChunkTooLarge`] past `max_rows`. On error no session's
    /// position changes.
    fn forward(
        &mut self,
        sessions: &mut [&mut dyn DecoderSession],
        tokens: &[u32],
    ) -> Result<&[f32]>;
}

/// A loaded decoder on any backend.
pub trait Decoder: Send + Sync + std::fmt::Debug {
    /// The model's hyperparameters.
    fn config(&self) -> &ModelConfig;
    /// The backend's name (`cpu`, `candle:cuda:0`, …).
    fn backend_name(&self) -> String;
    /// A new session over this model.
    ///
    /// # Errors
    /// Bad cache options, a precision the backend does not offer, memory or
    /// device errors.
    fn session(self: Arc<Self>, opts: &SessionOptions) -> Result<Box<dyn DecoderSession>>;
    /// Work buffers for batched steps of up to `max_rows` sessions opened
    /// with `opts` (whose precision the batch computes at).
    ///
    /// # Errors
    /// As [`session`](Self::session); [`ModelError::Config`] for `max_rows` 0.
    fn batch(
        self: Arc<Self>,
        max_rows: usize,
        opts: &SessionOptions,
    ) -> Result<Box<dyn DecoderBatch>>;
    /// Returns once the work the backend started at load is done: the CPU
    /// backend's background packing of deferred matrices, which this thread
    /// joins. Until then the first decode steps run beside it; benchmarks
    /// call this to time the steady state.
    fn finish_packing(&self);
    /// The model as [`Any`], to reach a backend's own API
    /// (`downcast_ref::<Transformer>()`).
    fn as_any(&self) -> &dyn Any;
}

/// A [`Model`] with one session's cache and work buffers.
struct Bound<B: Backend> {
    model: Arc<Model<B>>,
    cache: KvCache<B::Kv>,
    work: B::Work,
}

impl<B: Backend> DecoderSession for Bound<B> {
    fn position(&self) -> usize {
        self.cache.position()
    }

    fn ctx_len(&self) -> usize {
        self.cache.ctx_len()
    }

    fn clear(&mut self) {
        self.cache.clear();
    }

    fn truncate(&mut self, to: usize) -> Result<()> {
        self.cache.truncate(to)
    }

    fn forward(&mut self, tokens: &[u32], mode: LogitsMode) -> Result<&[f32]> {
        self.model
            .forward(tokens, &mut self.cache, &mut self.work, mode)
    }

    fn forward_prompt(&mut self, tokens: &[u32], mode: LogitsMode) -> Result<&[f32]> {
        self.model
            .forward_prompt(tokens, &mut self.cache, &mut self.work, mode)
    }

    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.model.prefill(tokens, &mut self.cache, &mut self.work)
    }

    fn feed(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.model.feed(tokens, &mut self.cache, &mut self.work)
    }

    fn memory_bytes(&self) -> usize {
        self.cache.memory_bytes()
    }

    fn max_chunk(&self) -> usize {
        self.model
            .backend
            .work_chunk(&self.work)
            .min(self.cache.max_chunk())
            .max(1)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A [`Model`]'s work buffers for batched steps.
struct Batch<B: Backend> {
    model: Arc<Model<B>>,
    work: B::Work,
    max_rows: usize,
    /// The logits of a step run session by session.
    logits: Vec<f32>,
}

impl<B: Backend> DecoderBatch for Batch<B> {
    fn max_rows(&self) -> usize {
        self.max_rows
    }

    fn forward(
        &mut self,
        sessions: &mut [&mut dyn DecoderSession],
        tokens: &[u32],
    ) -> Result<&[f32]> {
        let n = sessions.len();
        if n > self.max_rows {
            return Err(ModelError::ChunkTooLarge {
                n_tokens: n,
                max: self.max_rows,
                what: "batch",
            });
        }
        if n != tokens.len() {
            return Err(ModelError::Mismatch(format!(
                "a batch of {} tokens for {n} sessions",
                tokens.len()
            )));
        }
        let mut bound = Vec::with_capacity(n);
        for s in sessions.iter_mut() {
            let b = s
                .as_any_mut()
                .downcast_mut::<Bound<B>>()
                .filter(|b| Arc::ptr_eq(&b.model, &self.model))
                .ok_or_else(|| {
                    ModelError::Mismatch("a session of another model in the batch".into())
                })?;
            bound.push(b);
        }
        if self.model.backend.batches() {
            let mut caches: Vec<&mut KvCache<B::Kv>> =
                bound.into_iter().map(|b| &mut b.cache).collect();
            return self
                .model
                .forward_batch(&mut caches, tokens, &mut self.work);
        }
        // Session by session: every row checked first, so that an error
        // leaves every position as it was.
        let vocab = self.model.cfg.vocab_size;
        for (b, &token) in bound.iter().zip(tokens) {
            check_chunk_tokens(
                &[token],
                b.cache.position(),
                b.cache.ctx_len(),
                b.cache.max_chunk(),
                vocab,
            )?;
        }
        self.logits.clear();
        for (b, &token) in bound.into_iter().zip(tokens) {
            let row = b
                .model
                .forward(&[token], &mut b.cache, &mut b.work, LogitsMode::Last)?;
            self.logits.extend_from_slice(row);
        }
        Ok(&self.logits)
    }
}

impl<B: Backend> Decoder for Model<B> {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn backend_name(&self) -> String {
        self.backend.name()
    }

    fn session(self: Arc<Self>, opts: &SessionOptions) -> Result<Box<dyn DecoderSession>> {
        let cache = self.new_cache(opts.cache)?;
        let mut work = self.new_scratch(&cache);
        self.backend.set_precision(&mut work, opts.act_precision)?;
        Ok(Box::new(Bound {
            model: self,
            cache,
            work,
        }))
    }

    fn batch(
        self: Arc<Self>,
        max_rows: usize,
        opts: &SessionOptions,
    ) -> Result<Box<dyn DecoderBatch>> {
        if max_rows == 0 {
            return Err(ModelError::Config("a batch of 0 sessions".into()));
        }
        let mut work = self.backend.new_work(&self.cfg, max_rows);
        self.backend.set_precision(&mut work, opts.act_precision)?;
        Ok(Box::new(Batch {
            model: self,
            work,
            max_rows,
            logits: Vec::new(),
        }))
    }

    fn finish_packing(&self) {
        B::finish_packing(self);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
