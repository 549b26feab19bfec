//! `KvCache`: the keys and values of one session, every layer, preallocated
//! for the context length — or, in a layer with a sliding window, a ring of
//! `window + chunk − 1` slots, which is all a chunk of queries can see.

use foehn_core::ModelConfig;
use foehn_kernels::GgmlType;

use crate::{ModelError, Result};

/// Default context length, when the model allows that many positions.
pub const DEFAULT_CTX_LEN: usize = 4096;

/// Default largest chunk of tokens per forward pass (prompt prefill chunk).
pub const DEFAULT_CHUNK: usize = 512;

/// Element type of the cached keys or values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvCacheType {
    /// Half precision (llama.cpp's default): half the memory, ~1e-2 on logits.
    #[default]
    F16,
    /// Single precision: exact up to f32 arithmetic.
    F32,
    /// ggml's Q8_0 blocks (32 values: f16 scale, 32 × i8): 34 bytes per 32
    /// values, 0.53× f16. CPU backend; `head_dim` a multiple of 32.
    Q8_0,
    /// ggml's Q4_0 blocks (32 values: f16 scale, 32 nibbles): 18 bytes per
    /// 32 values, 0.28× f16. CPU backend; `head_dim` a multiple of 32.
    Q4_0,
}

impl KvCacheType {
    /// Every type, in the order [`name`](Self::name)s are listed in messages.
    pub const ALL: [KvCacheType; 4] = [
        KvCacheType::F16,
        KvCacheType::F32,
        KvCacheType::Q8_0,
        KvCacheType::Q4_0,
    ];

    /// `f16`, `f32`, `q8_0` or `q4_0`, as llama.cpp's `--cache-type-k` names them.
    pub fn name(self) -> &'static str {
        match self {
            KvCacheType::F16 => "f16",
            KvCacheType::F32 => "f32",
            KvCacheType::Q8_0 => "q8_0",
            KvCacheType::Q4_0 => "q4_0",
        }
    }

    /// The kernels' type of the stored elements.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            KvCacheType::F16 => GgmlType::F16,
            KvCacheType::F32 => GgmlType::F32,
            KvCacheType::Q8_0 => GgmlType::Q8_0,
            KvCacheType::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// Whether the type stores blocks of 32 quantized values.
    pub fn is_quantized(self) -> bool {
        self.ggml_type().is_quantized()
    }

    /// Bytes of `n` values, `None` when `n` is not a whole number of blocks
    /// or overflows.
    pub fn bytes(self, n: usize) -> Option<usize> {
        self.ggml_type().row_bytes(n)
    }
}

impl std::fmt::Display for KvCacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvCacheType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|t| t.name() == lower)
            .ok_or_else(|| format!("bad KV cache type {s:?}: expected f16, f32, q8_0 or q4_0"))
    }
}

/// Element types of the keys and of the values, chosen separately (as
/// llama.cpp's `--cache-type-k` / `--cache-type-v`): attention is more
/// sensitive to key errors, so `k = f16, v = q8_0` or `k = q8_0, v = q4_0`
/// are useful mixes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvTypes {
    /// Element type of the keys. Default: f16.
    pub k: KvCacheType,
    /// Element type of the values. Default: f16.
    pub v: KvCacheType,
}

impl KvTypes {
    /// Keys and values of type `ty`.
    pub const fn both(ty: KvCacheType) -> Self {
        Self { k: ty, v: ty }
    }

    /// Whether keys or values are quantized.
    pub fn any_quantized(self) -> bool {
        self.k.is_quantized() || self.v.is_quantized()
    }
}

impl From<KvCacheType> for KvTypes {
    fn from(ty: KvCacheType) -> Self {
        Self::both(ty)
    }
}

impl std::str::FromStr for KvTypes {
    type Err = String;

    /// `q8_0` (both sides), or `k=q8_0,v=f16` (either part may be left out:
    /// that side is f16), as [`Display`](std::fmt::Display) writes them.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if !s.contains('=') {
            return s.parse().map(Self::both);
        }
        let mut types = Self::default();
        for part in s.split(',') {
            let (side, ty) = part
                .split_once('=')
                .ok_or_else(|| format!("bad KV cache types {s:?}: expected k=TYPE,v=TYPE"))?;
            match side.trim() {
                "k" => types.k = ty.trim().parse()?,
                "v" => types.v = ty.trim().parse()?,
                _ => return Err(format!("bad KV cache types {s:?}: sides are k and v")),
            }
        }
        Ok(types)
    }
}

impl std::fmt::Display for KvTypes {
    /// `q8_0` when both sides agree, else `k=q8_0,v=f16`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.k == self.v {
            write!(f, "{}", self.k)
        } else {
            write!(f, "k={},v={}", self.k, self.v)
        }
    }
}

/// How to size a [`KvCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheOptions {
    /// Most tokens the session may hold. Default: [`DEFAULT_CTX_LEN`], or the
    /// model's `max_position_embeddings` if smaller.
    pub ctx_len: Option<usize>,
    /// Element types of the keys and the values. Default: f16 both.
    pub types: KvTypes,
    /// Most tokens per forward pass. Default: [`DEFAULT_CHUNK`]. With a
    /// sliding window it sets the ring size (`window + max_chunk − 1`).
    pub max_chunk: usize,
}

impl Default for KvCacheOptions {
    fn default() -> Self {
        Self {
            ctx_len: None,
            types: KvTypes::default(),
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
    /// Element types of the keys and the values.
    pub types: KvTypes,
}

impl KvGeometry {
    /// The geometry of a cache for `cfg` sized by `opts`.
    ///
    /// # Errors
    /// [`ModelError::Config`] when `ctx_len` or `max_chunk` is 0, when a
    /// quantized type is asked for a `head_dim` that is not a multiple of its
    /// 32-value blocks, or when the cache's size overflows.
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
        for (side, ty) in [("key", opts.types.k), ("value", opts.types.v)] {
            if ty.bytes(cfg.head_dim).is_none() {
                return Err(ModelError::Config(format!(
                    "a {ty} {side} cache stores blocks of {} values per head, but the model's \
                     head_dim is {}: use f16 or f32 for the {side}s",
                    ty.ggml_type().block_size(),
                    cfg.head_dim
                )));
            }
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
            types: opts.types,
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

    /// Element types of the keys and the values.
    pub fn types(&self) -> KvTypes {
        self.geom.types
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
        assert_eq!("Q8_0".parse::<KvCacheType>(), Ok(KvCacheType::Q8_0));
        assert_eq!("q4_0".parse::<KvCacheType>(), Ok(KvCacheType::Q4_0));
        assert!("q4_1".parse::<KvCacheType>().is_err());
        assert_eq!(KvCacheType::F32.name(), "f32");
        for ty in KvCacheType::ALL {
            assert_eq!(ty.name().parse::<KvCacheType>(), Ok(ty));
        }
        let mixed = KvTypes {
            k: KvCacheType::Q8_0,
            v: KvCacheType::F16,
        };
        assert_eq!(mixed.to_string(), "k=q8_0,v=f16");
        assert_eq!(KvTypes::from(KvCacheType::Q4_0).to_string(), "q4_0");
        assert!(mixed.any_quantized() && !KvTypes::default().any_quantized());
        for t in [mixed, KvTypes::both(KvCacheType::Q4_0)] {
            assert_eq!(t.to_string().parse::<KvTypes>(), Ok(t));
        }
        assert_eq!(
            "v=q4_0".parse::<KvTypes>().map(|t| t.k),
            Ok(KvCacheType::F16)
        );
        for bad in ["k=q8_0,x=f16", "k:q8_0", "k=q9", ""] {
            assert!(bad.parse::<KvTypes>().is_err(), "{bad}");
        }
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
            types: KvCacheType::F32.into(),
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

    /// Quantized types count their blocks' bytes (34 or 18 per 32 values),
    /// each side its own, and need a head size of whole blocks.
    #[test]
    fn quantized_sizes_and_head_dims() {
        let mut c32 = cfg(None);
        (c32.head_dim, c32.num_key_value_heads) = (64, 2);
        let opts = |k, v| KvCacheOptions {
            ctx_len: Some(100),
            types: KvTypes { k, v },
            max_chunk: 8,
        };
        let bytes = |k, v| KvCache::new(&c32, opts(k, v)).unwrap().memory_bytes();
        let per_side = 2 * 100 * 2 * 64; // layers × slots × kv_dim values
        assert_eq!(bytes(KvCacheType::F16, KvCacheType::F16), 2 * per_side * 2);
        assert_eq!(
            bytes(KvCacheType::Q8_0, KvCacheType::Q8_0),
            2 * per_side / 32 * 34
        );
        assert_eq!(
            bytes(KvCacheType::Q8_0, KvCacheType::Q4_0),
            per_side / 32 * (34 + 18)
        );
        assert_eq!(
            bytes(KvCacheType::F32, KvCacheType::Q4_0),
            per_side * 4 + per_side / 32 * 18
        );
        // head_dim 4: f16 and f32 fit, quantized sides are refused by name.
        for (k, v, side) in [
            (KvCacheType::Q8_0, KvCacheType::F16, "key"),
            (KvCacheType::F16, KvCacheType::Q4_0, "value"),
        ] {
            let err = KvCache::new(&cfg(None), opts(k, v))
                .unwrap_err()
                .to_string();
            assert!(err.contains("head_dim is 4") && err.contains(side), "{err}");
        }
    }

    #[test]
    fn truncation_keeps_what_the_ring_still_holds() {
        let opts = KvCacheOptions {
            ctx_len: Some(300),
            types: KvCacheType::F32.into(),
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
