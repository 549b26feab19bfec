//! `KvCache`: the keys and values of one session, every layer, preallocated
//! for the context length — or, in a layer with a sliding window, a ring of
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
/// layers, KV heads, slots of each layer (`ctx_len`, or the ring of its
/// sliding window), the largest chunk and the element type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvGeometry {
    /// Decoder blocks, each with its keys and values.
    pub layers: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Positions held by each layer: `ctx_len`, or `window + max_chunk − 1`
    /// (at most `ctx_len`) in a layer with a sliding window.
    pub layer_slots: Vec<usize>,
    /// Most tokens a session may hold.
    pub ctx_len: usize,
    /// Each layer's sliding window (`None`: full causal attention).
    pub layer_windows: Vec<Option<usize>>,
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
        let layer_windows: Vec<Option<usize>> = (0..cfg.num_hidden_layers)
            .map(|l| cfg.layer_window(l))
            .collect();
        let layer_slots = layer_windows
            .iter()
            .map(|w| match w {
                Some(w) => w.saturating_add(max_chunk - 1).min(ctx_len),
                None => ctx_len,
            })
            .collect();
        let geom = Self {
            layers: cfg.num_hidden_layers,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            layer_slots,
            ctx_len,
            layer_windows,
            max_chunk,
            dtype: opts.dtype,
        };
        geom.total_elements().ok_or_else(|| {
            ModelError::Config(format!(
                "KV cache of {:?} slots × {} overflows",
                geom.layer_slots.iter().max(),
                geom.kv_heads * geom.head_dim
            ))
        })?;
        Ok(geom)
    }

    /// Slots of layer `layer`.
    pub fn slots(&self, layer: usize) -> usize {
        self.layer_slots[layer]
    }

    /// The sliding window of layer `layer`.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.layer_windows[layer]
    }

    /// Key (or value) elements per position: `kv_heads × head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Key (or value) elements of layer `layer`, `None` on overflow.
    pub fn layer_elements(&self, layer: usize) -> Option<usize> {
        self.kv_heads
            .checked_mul(self.head_dim)?
            .checked_mul(self.layer_slots[layer])
    }

    /// Key (or value) elements of every layer together, `None` on overflow.
    pub fn total_elements(&self) -> Option<usize> {
        (0..self.layers).try_fold(0usize, |sum, l| sum.checked_add(self.layer_elements(l)?))
    }

    /// Checks that a cache of this geometry fits a model of `cfg`'s shape.
    fn check(&self, cfg: &ModelConfig) -> Result<()> {
        // Called on every forward pass: compares without allocating.
        let same_windows = self.layer_windows.len() == cfg.num_hidden_layers
            && (0..cfg.num_hidden_layers).all(|l| self.layer_windows[l] == cfg.layer_window(l));
        if self.layers != cfg.num_hidden_layers
            || self.kv_heads != cfg.num_key_value_heads
            || self.head_dim != cfg.head_dim
            || !same_windows
        {
            let windows: Vec<Option<usize>> = (0..cfg.num_hidden_layers)
                .map(|l| cfg.layer_window(l))
                .collect();
            return Err(ModelError::Mismatch(format!(
                "the KV cache was built for {} layers × {} KV heads × {} (windows {:?}), the model has {} × {} × {} (windows {:?})",
                self.layers,
                self.kv_heads,
                self.head_dim,
                self.layer_windows,
                cfg.num_hidden_layers,
                cfg.num_key_value_heads,
                cfg.head_dim,
                windows
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
/// Position `p` lives in slot `p % slots` of each layer. A layer without a
/// sliding window has a slot per position of the context; with a window `W`
/// and chunks of at most `C` tokens, `W + C − 1` slots hold every key a chunk
/// of queries can see (the first query needs `W − 1` earlier keys, the chunk
/// adds `C`), so the ring is exact however long the session runs. Layers may
/// differ (interleaved sliding and full layers): each is sized for its own.
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

    /// Slots of layer `layer` (`ctx_len`, or the ring size with a sliding window).
    pub fn slots(&self, layer: usize) -> usize {
        self.geom.slots(layer)
    }

    /// The sliding window layer `layer` was sized for.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.geom.window(layer)
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
        for (&window, &slots) in self.geom.layer_windows.iter().zip(&self.geom.layer_slots) {
            let Some(w) = window else { continue };
            let needed = to.saturating_sub(w.saturating_sub(1));
            let oldest = self.position.saturating_sub(slots);
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

    /// The slot of layer `layer` holding position `pos`.
    pub(crate) fn slot(&self, layer: usize, pos: usize) -> usize {
        pos % self.geom.layer_slots[layer]
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
            sliding_layers: None,
            attn_temperature: None,
            moe: None,
        }
    }

    #[test]
    fn sizes_follow_context_and_window() {
        let c = KvCache::new(&cfg(None), KvCacheOptions::default()).unwrap();
        assert_eq!((c.ctx_len(), c.slots(0), c.slots(1)), (1000, 1000, 1000));
        assert_eq!(c.memory_bytes(), 2 * 2 * 1000 * 4 * 2);
        let opts = KvCacheOptions {
            ctx_len: Some(300),
            dtype: KvCacheType::F32,
            max_chunk: 7,
        };
        let c = KvCache::new(&cfg(Some(16)), opts).unwrap();
        assert_eq!((c.ctx_len(), c.slots(0), c.slots(1)), (300, 22, 22));
        assert_eq!(c.memory_bytes(), 2 * 2 * 22 * 4 * 4);
        // Layer 0 full, layer 1 sliding: each sized for its own window.
        let mut mixed = cfg(Some(16));
        mixed.sliding_layers = Some(vec![false, true]);
        let c = KvCache::new(&mixed, opts).unwrap();
        assert_eq!((c.window(0), c.window(1)), (None, Some(16)));
        assert_eq!((c.slots(0), c.slots(1)), (300, 22));
        assert_eq!(c.memory_bytes(), 2 * (300 + 22) * 4 * 4);
        // A cache of another pattern does not fit the model.
        assert!(c.check(&cfg(Some(16))).is_err());
        assert!(c.check(&mixed).is_ok());
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
        // With one sliding layer among full ones, that layer's ring decides.
        let mut mixed = cfg(Some(16));
        mixed.sliding_layers = Some(vec![false, true]);
        let mut c = KvCache::new(&mixed, opts).unwrap();
        c.advance(100);
        c.truncate(97).unwrap();
        c.advance(3);
        assert!(c.truncate(95).is_err());
    }
}
