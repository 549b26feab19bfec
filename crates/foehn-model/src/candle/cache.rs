//! `CandleCache`: a session's keys and values as candle tensors on the
//! model's device, preallocated for the context and ring-indexed when the
//! model has a sliding window — the same sizing rules as the CPU [`KvCache`](crate::KvCache).

use candle_core::{DType, Device, Tensor};
use foehn_core::ModelConfig;

use super::Result;
use crate::cache::{cache_geometry, check_truncate};
use crate::{KvCacheOptions, KvCacheType, ModelError};

/// The KV cache of one session of a [`CandleTransformer`](super::CandleTransformer).
#[derive(Debug)]
pub struct CandleCache {
    /// Per layer: keys and values, each `kv_heads × slots × head_dim`.
    layers: Vec<(Tensor, Tensor)>,
    kv_heads: usize,
    head_dim: usize,
    slots: usize,
    ctx_len: usize,
    window: Option<usize>,
    max_chunk: usize,
    dtype: KvCacheType,
    position: usize,
}

impl CandleCache {
    /// An empty cache for a model with configuration `cfg` on `device`.
    ///
    /// # Errors
    /// [`ModelError::Config`] when `ctx_len` or `max_chunk` is 0; a candle
    /// error when the device cannot hold it.
    pub fn new(cfg: &ModelConfig, opts: KvCacheOptions, device: &Device) -> Result<Self> {
        let (ctx_len, max_chunk, slots) = cache_geometry(cfg, &opts)?;
        let dt = match opts.dtype {
            KvCacheType::F16 => DType::F16,
            KvCacheType::F32 => DType::F32,
        };
        let shape = (cfg.num_key_value_heads, slots, cfg.head_dim);
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, dt, device)?,
                    Tensor::zeros(shape, dt, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            slots,
            ctx_len,
            window: cfg.sliding_window,
            max_chunk,
            dtype: opts.dtype,
            position: 0,
        })
    }

    /// Tokens processed so far (the position of the next token).
    pub fn position(&self) -> usize {
        self.position
    }

    /// Most tokens the session may hold.
    pub fn ctx_len(&self) -> usize {
        self.ctx_len
    }

    /// Most tokens per forward pass.
    pub fn max_chunk(&self) -> usize {
        self.max_chunk
    }

    /// Slots per layer (`ctx_len`, or the ring size with a sliding window).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The sliding window the cache was sized for.
    pub fn window(&self) -> Option<usize> {
        self.window
    }

    /// Element type.
    pub fn dtype(&self) -> KvCacheType {
        self.dtype
    }

    /// Forgets every token (the memory is kept).
    pub fn clear(&mut self) {
        self.position = 0;
    }

    /// Keeps the first `to` tokens and forgets the rest (chat KV reuse).
    ///
    /// # Errors
    /// [`ModelError::Truncate`] as for [`KvCache::truncate`](crate::KvCache::truncate).
    pub fn truncate(&mut self, to: usize) -> Result<()> {
        check_truncate(to, self.position, self.window, self.slots)?;
        self.position = to;
        Ok(())
    }

    /// Checks that this cache was built for a model of `cfg`'s shape.
    pub(crate) fn check(&self, cfg: &ModelConfig) -> Result<()> {
        if self.layers.len() != cfg.num_hidden_layers
            || self.kv_heads != cfg.num_key_value_heads
            || self.head_dim != cfg.head_dim
            || self.window != cfg.sliding_window
        {
            return Err(ModelError::Mismatch(format!(
                "the KV cache was built for {} layers × {} KV heads × {} (window {:?}), the model has {} × {} × {} (window {:?})",
                self.layers.len(),
                self.kv_heads,
                self.head_dim,
                self.window,
                cfg.num_hidden_layers,
                cfg.num_key_value_heads,
                cfg.head_dim,
                cfg.sliding_window
            ))
            .into());
        }
        Ok(())
    }

    /// Stores the keys and values of positions `start..start + n` of layer
    /// `layer` and returns the keys and values a chunk at `start` attends to,
    /// positions `first..start + n` in order, in f32.
    ///
    /// # Shapes
    /// - `k`, `v`: `kv_heads × n × head_dim`.
    /// - returns: two `kv_heads × (start + n − first) × head_dim` tensors.
    pub(crate) fn store_and_read(
        &self,
        layer: usize,
        start: usize,
        first: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (ck, cv) = &self.layers[layer];
        let n = k.dim(1)?;
        let slots = self.slots;
        let dt = ck.dtype();
        let (k, v) = (k.to_dtype(dt)?, v.to_dtype(dt)?);
        // Write, in up to two pieces where the ring wraps.
        let s0 = start % slots;
        let head = n.min(slots - s0);
        ck.slice_set(&k.narrow(1, 0, head)?.contiguous()?, 1, s0)?;
        cv.slice_set(&v.narrow(1, 0, head)?.contiguous()?, 1, s0)?;
        if head < n {
            ck.slice_set(&k.narrow(1, head, n - head)?.contiguous()?, 1, 0)?;
            cv.slice_set(&v.narrow(1, head, n - head)?.contiguous()?, 1, 0)?;
        }
        // Read positions first..start + n, in up to two pieces.
        let nk = start + n - first;
        let r0 = first % slots;
        let read = |t: &Tensor| -> Result<Tensor> {
            let t = if r0 + nk <= slots {
                t.narrow(1, r0, nk)?
            } else {
                let a = t.narrow(1, r0, slots - r0)?;
                let b = t.narrow(1, 0, nk - (slots - r0))?;
                Tensor::cat(&[&a, &b], 1)?
            };
            Ok(t.to_dtype(DType::F32)?.contiguous()?)
        };
        Ok((read(ck)?, read(cv)?))
    }

    /// Moves the position forward after a forward pass.
    pub(crate) fn advance(&mut self, n: usize) {
        self.position += n;
    }
}
