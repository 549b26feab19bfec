//! The decoder without its backend's types: [`Decoder`] (a loaded model)
//! opens [`DecoderSession`]s (a KV cache and work buffers bound to that
//! model), so that an engine holds any backend's model behind one
//! `Arc<dyn Decoder>` and never pairs a cache with the wrong model.

use std::any::Any;
use std::sync::Arc;

use foehn_core::ModelConfig;
use foehn_kernels::ActPrecision;

use crate::backend::Backend;
use crate::cache::{KvCache, KvCacheOptions};
use crate::{LogitsMode, Model, Result};

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
    /// A prompt of any length, as [`Model::prefill`].
    ///
    /// # Errors
    /// As [`Model::prefill`].
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]>;
    /// Bytes of the session's KV cache.
    fn memory_bytes(&self) -> usize;
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

    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.model.prefill(tokens, &mut self.cache, &mut self.work)
    }

    fn memory_bytes(&self) -> usize {
        self.cache.memory_bytes()
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

    fn as_any(&self) -> &dyn Any {
        self
    }
}
