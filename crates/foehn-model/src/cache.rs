//! `KvCache`: the keys and values of one session, every layer, preallocated
//! for the context length — or, with a sliding window, a ring of
//! `window + chunk − 1` slots, which is all a chunk of queries can see.

use foehn_core::ModelConfig;

use crate::{ModelError, Result};

/// Default context length, when the model allows that many positions.
pub const DEFAULT_CTX_LEN: usize = 4096;

/// Default largest chunk of tokens per forward pass (prompt prefill chunk).
pub const DEFAULT_CHUNK: usize = 512;

/// Element type of the cached keys and values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvCacheType {
    /// Half precision (llama.cpp's default): half the memory, ~1e-2 on logits.
    #[default]
    F16,
    /// Single precision: exact up to f32 arithmetic.
    F32,
}

impl KvCacheType {
    /// `f16` or `f32`, as llama.cpp's `--cache-type-k` names them.
    pub fn name(self) -> &'static str {
        match self {
            KvCacheType::F16 => "f16",
            KvCacheType::F32 => "f32",
        }
    }
}

impl std::str::FromStr for KvCacheType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(KvCacheType::F16),
            "f32" => Ok(KvCacheType::F32),
            _ => Err(format!("bad KV cache type {s:?}: expected f16 or f32")),
        }
    }
}

/// How to size a [`KvCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheOptions {
    /// Most tokens the session may hold. Default: [`DEFAULT_CTX_LEN`], or the
    /// model's `max_position_embeddings` if smaller.
    pub ctx_len: Option<usize>,
    /// Element type. Default: f16.
    pub dtype: KvCacheType,
    /// Most tokens per forward pass. Default: [`DEFAULT_CHUNK`]. With a
    /// sliding window it sets the ring size (`window + max_chunk − 1`).
    pub max_chunk: usize,
}

impl Default for KvCacheOptions {
    fn default() -> Self {
        Self {
            ctx_len: None,
            dtype: KvCacheType::F16,
            max_chunk: DEFAULT_CHUNK,
        }
    }
}

/// The shape of a session's KV cache, whatever the backend stores it in:
/// layers, KV heads, slots per layer (`ctx_len`, or the ring of a sliding
/// window), the largest chunk and the element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    /// Decoder blocks, each with its keys and values.
    pub layers: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Positions held per layer: `ctx_len`, or `window + max_chunk − 1`
    /// (at most `ctx_len`) with a sliding window.
    pub slots: usize,
    /// Most tokens a session may hold.
    pub ctx_len: usize,
    /// The model's sliding window.
    pub window: Option<usize>,
    /// Most tokens per forward pass.
    pub max_chunk: usize,
    /// Element type of the keys and values.
    pub dtype: KvCacheType,
}

impl KvGeometry {
    /// The geometry of a cache for `cfg` sized by `opts`.
    ///
    /// # Errors
    /// [`ModelError::Config`] when `ctx_len` or `max_chunk` is 0, or the
    /// cache's size overflows.
    pub fn new(cfg: &ModelConfig, opts: &KvCacheOptions) -> Result<Self> {
        let ctx_len = opts
            .ctx_len
            .unwrap_or_else(|| DEFAULT_CTX_LEN.min(cfg.max_position_embeddings));
        if ctx_len == 0 || opts.max_chunk == 0 {
            return Err(ModelError::Config(format!(
                "KV cache with ctx_len {ctx_len} and max_chunk {}: both must be at least 1",
                opts.max_chunk
            )));
        }
        let max_chunk = opts.max_chunk.min(ctx_len);
        let slots = match cfg.sliding_window {
            Some(w) => (w + max_chunk - 1).min(ctx_len),
            None => ctx_len,
        };
        let geom = Self {
            layers: cfg.num_hidden_layers,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            slots,
            ctx_len,
            window: cfg.sliding_window,
            max_chunk,
            dtype: opts.dtype,
        };
        geom.layer_elements().ok_or_else(|| {
            ModelError::Config(format!(
                "KV cache of {slots} slots × {} overflows",
                geom.kv_heads * geom.head_dim
            ))
        })?;
        Ok(geom)
    }

    /// Key (or value) elements per position: `kv_heads × head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Key (or value) elements per layer, `None` on overflow.
    pub fn layer_elements(&self) -> Option<usize> {
        self.kv_heads
            .checked_mul(self.head_dim)?
            .checked_mul(self.slots)
    }

    /// Checks that a cache of this geometry fits a model of `cfg`'s shape.
    fn check(&self, cfg: &ModelConfig) -> Result<()> {
        if self.layers != cfg.num_hidden_layers
            || self.kv_heads != cfg.num_key_value_heads
            || self.head_dim != cfg.head_dim
            || self.window != cfg.sliding_window
        {
            return Err(ModelError::Mismatch(format!(
                "the KV cache was built for {} layers × {} KV heads × {} (window {:?}), the model has {} × {} × {} (window {:?})",
                self.layers,
                self.kv_heads,
                self.head_dim,
                self.window,
                cfg.num_hidden_layers,
                cfg.num_key_value_heads,
                cfg.head_dim,
                cfg.sliding_window
            )));
        }
        Ok(())
    }
}

/// How a backend stores the keys and values of a [`KvCache`].
pub trait KvStorage: Send + std::fmt::Debug {
    /// Bytes held by the keys and values.
    fn memory_bytes(&self) -> usize;
}

/// The KV cache of one session (it belongs to the session, not to the
/// model): its [`KvGeometry`], its position, and the keys and values in the
/// backend's storage `S` (the CPU backend's by default).
///
/// Position `p` lives in slot `p % slots`. Without a sliding window there is a
/// slot per position of the context; with a window `W` and chunks of at most
/// `C` tokens, `W + C − 1` slots hold every key a chunk of queries can see
/// (the first query needs `W − 1` earlier keys, the chunk adds `C`), so the
/// ring is exact however long the session runs.
#[derive(Debug, Clone)]
pub struct KvCache<S = crate::cpu::CpuKv> {
    geom: KvGeometry,
    position: usize,
    store: S,
}

impl<S: KvStorage> KvCache<S> {
    /// An empty cache of `geom` over `store`.
    pub(crate) fn with_store(geom: KvGeometry, store: S) -> Self {
        Self {
            geom,
            position: 0,
            store,
        }
    }

    /// The cache's shape.
    pub fn geometry(&self) -> &KvGeometry {
        &self.geom
    }

    /// Tokens processed so far (the position of the next token).
    pub fn position(&self) -> usize {
        self.position
    }

    /// Most tokens the session may hold.
    pub fn ctx_len(&self) -> usize {
        self.geom.ctx_len
    }

    /// Most tokens per forward pass.
    pub fn max_chunk(&self) -> usize {
        self.geom.max_chunk
    }

    /// Slots per layer (`ctx_len`, or the ring size with a sliding window).
    pub fn slots(&self) -> usize {
        self.geom.slots
    }

    /// The sliding window the cache was sized for.
    pub fn window(&self) -> Option<usize> {
        self.geom.window
    }

    /// Element type.
    pub fn dtype(&self) -> KvCacheType {
        self.geom.dtype
    }

    /// Bytes held by the keys and values.
    pub fn memory_bytes(&self) -> usize {
        self.store.memory_bytes()
    }

    /// Forgets every token (the memory is kept).
    pub fn clear(&mut self) {
        self.position = 0;
    }

    /// Keeps the first `to` tokens and forgets the rest, so that a follow-up
    /// only processes what differs (chat KV reuse).
    ///
    /// # Errors
    /// [`ModelError::Truncate`] when `to` is past the current position, or when
    /// the ring has already overwritten keys that a query at `to` needs (more
    /// than `max_chunk` tokens back with a sliding window): the caller then
    /// clears the cache and processes the prefix again.
    pub fn truncate(&mut self, to: usize) -> Result<()> {
        let err = |reason: String| ModelError::Truncate {
            to,
            position: self.position,
            reason,
        };
        if to > self.position {
            return Err(err("that is past the cached tokens".into()));
        }
        if let Some(w) = self.geom.window {
            let needed = to.saturating_sub(w.saturating_sub(1));
            let oldest = self.position.saturating_sub(self.geom.slots);
            if needed < oldest {
                return Err(err(format!(
                    "the sliding-window ring no longer holds position {needed} (oldest kept: {oldest})"
                )));
            }
        }
        self.position = to;
        Ok(())
    }

    /// Checks that this cache was built for a model of `cfg`'s shape.
    pub(crate) fn check(&self, cfg: &ModelConfig) -> Result<()> {
        self.geom.check(cfg)
    }

    /// The slot holding position `pos`.
    pub(crate) fn slot(&self, pos: usize) -> usize {
        pos % self.geom.slots
    }

    /// The backend's keys and values.
    pub(crate) fn store(&self) -> &S {
        &self.store
    }

    /// The backend's keys and values, to write.
    pub(crate) fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Moves the position forward after a forward pass.
    pub(crate) fn advance(&mut self, n: usize) {
        self.position += n;
    }
}

/// Whether `n` more tokens fit in a context of `ctx_len` at `position`.
pub(crate) fn check_room(position: usize, ctx_len: usize, n: usize) -> Result<()> {
    if position + n > ctx_len {
        return Err(ModelError::ContextOverflow {
            position,
            n_tokens: n,
            ctx_len,
        });
    }
    Ok(())
}

/// The checks a chunk passes before a forward pass touches a cache at
/// `position`: not empty, at most `max_chunk` tokens, room in the context,
/// every id inside the vocabulary.
pub(crate) fn check_chunk_tokens(
    tokens: &[u32],
    position: usize,
    ctx_len: usize,
    max_chunk: usize,
    vocab_size: usize,
) -> Result<()> {
    let n = tokens.len();
    if n == 0 {
        return Err(ModelError::EmptyInput);
    }
    if n > max_chunk {
        return Err(ModelError::ChunkTooLarge {
            n_tokens: n,
            max: max_chunk,
            what: "KV cache",
        });
    }
    check_room(position, ctx_len, n)?;
    if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(ModelError::TokenOutOfRange { id, vocab_size });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_types_parse() {
        assert_eq!("f16".parse::<KvCacheType>(), Ok(KvCacheType::F16));
        assert_eq!("F32".parse::<KvCacheType>(), Ok(KvCacheType::F32));
        assert!("q8_0".parse::<KvCacheType>().is_err());
        assert_eq!(KvCacheType::F32.name(), "f32");
    }

    fn cfg(window: Option<usize>) -> ModelConfig {
        ModelConfig {
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 4,
            rope_theta: 1e4,
            rope_scaling: None,
            rms_norm_eps: 1e-5,
            sliding_window: window,
            max_position_embeddings: 1000,
            tie_word_embeddings: false,
            attn_temperature: None,
            moe: None,
        }
    }

    #[test]
    fn sizes_follow_context_and_window() {
        let c = KvCache::new(&cfg(None), KvCacheOptions::default()).unwrap();
        assert_eq!((c.ctx_len(), c.slots()), (1000, 1000));
        assert_eq!(c.memory_bytes(), 2 * 2 * 1000 * 4 * 2);
        let opts = KvCacheOptions {
            ctx_len: Some(300),
            dtype: KvCacheType::F32,
            max_chunk: 7,
        };
        let c = KvCache::new(&cfg(Some(16)), opts).unwrap();
        assert_eq!((c.ctx_len(), c.slots()), (300, 22));
        assert_eq!(c.memory_bytes(), 2 * 2 * 22 * 4 * 4);
    }

    #[test]
    fn truncation_keeps_what_the_ring_still_holds() {
        let opts = KvCacheOptions {
            ctx_len: Some(300),
            dtype: KvCacheType::F32,
            max_chunk: 4,
        };
        let mut c = KvCache::new(&cfg(Some(16)), opts).unwrap(); // 19 slots
        c.advance(100);
        assert!(c.truncate(101).is_err());
        // Holds positions 81..100; a query at 97 needs 82.., at 96 needs 81...
        c.truncate(97).unwrap();
        assert_eq!(c.position(), 97);
        let mut c2 = c.clone();
        c2.advance(3);
        assert!(c2.truncate(95).is_err());
        c.clear();
        assert_eq!(c.position(), 0);
        let mut full = KvCache::new(&cfg(None), KvCacheOptions::default()).unwrap();
        full.advance(500);
        full.truncate(3).unwrap();
        assert_eq!(full.position(), 3);
    }
}
