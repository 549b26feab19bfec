//! The candle backend: the same Mistral/Llama decoder as [`Transformer`](crate::Transformer)
//! on candle tensors, so it runs on any candle [`Device`] — the CPU, CUDA
//! (cargo feature `cuda`) or Metal (cargo feature `metal`).
//!
//! Weights come from our own loaders (the CPU backend's tensor naming, shape
//! and type checks); quantized GGUF weights stay quantized as candle
//! `QTensor`s, whose matmul quantizes the activations like llama.cpp does.
//!
//! ```no_run
//! use std::sync::Arc;
//! use foehn_loader::GgufFile;
//! use foehn_model::candle::{CandleDevice, CandleTransformer};
//! use foehn_model::{KvCacheOptions, LogitsMode};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = CandleDevice::Cpu.open()?;
//! let file = Arc::new(GgufFile::open("model.gguf")?);
//! let model = CandleTransformer::from_gguf(&file, &device)?;
//! let mut cache = model.new_cache(KvCacheOptions::default())?;
//! let logits = model.prefill(&[1, 415, 2936], &mut cache)?;
//! let next = foehn_model::argmax(&logits);
//! let logits = model.forward(&[next], &mut cache, LogitsMode::Last)?;
//! # let _ = logits; Ok(()) }
//! ```

mod cache;
mod weights;

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};
use foehn_core::ModelConfig;
use foehn_kernels::QMatrix;
use foehn_loader::{config_from_gguf, GgufFile, SafetensorsModel};

pub use self::cache::CandleCache;
use crate::cache::{check_chunk_tokens, check_room};
use crate::transformer::{check_config, Naming, Part};
use crate::weights::{GgufSource, StSource, TensorSource};
use crate::{KvCacheOptions, LogitsMode, ModelError, Rope, RopeStyle};
pub use candle_core::Device;

/// Errors of the candle backend: the model's own, or candle's.
#[derive(Debug, thiserror::Error)]
pub enum CandleError {
    /// A model error (loading, shapes, context, misuse), as on the CPU backend.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A candle operation failed (device, memory, kernel).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for the candle backend.
pub type Result<T, E = CandleError> = std::result::Result<T, E>;

/// Which candle device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CandleDevice {
    /// The CPU (candle's own kernels, rayon threads).
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (needs the `cuda` feature).
    Cuda(usize),
    /// A Metal GPU by ordinal (needs the `metal` feature).
    Metal(usize),
}

impl std::str::FromStr for CandleDevice {
    type Err = String;

    /// `cpu`, `cuda` / `cuda:N`, `metal` / `metal:N`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("bad device {s:?}: expected cpu, cuda:N or metal");
        let ordinal = |rest: &str| match rest {
            "" => Some(0),
            n => n.strip_prefix(':')?.parse().ok(),
        };
        if s == "cpu" {
            Ok(CandleDevice::Cpu)
        } else if let Some(rest) = s.strip_prefix("cuda") {
            ordinal(rest).map(CandleDevice::Cuda).ok_or_else(bad)
        } else if let Some(rest) = s.strip_prefix("metal") {
            ordinal(rest).map(CandleDevice::Metal).ok_or_else(bad)
        } else {
            Err(bad())
        }
    }
}

impl std::fmt::Display for CandleDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CandleDevice::Cpu => write!(f, "cpu"),
            CandleDevice::Cuda(i) => write!(f, "cuda:{i}"),
            CandleDevice::Metal(i) => write!(f, "metal:{i}"),
        }
    }
}

impl CandleDevice {
    /// Opens the device.
    ///
    /// # Errors
    /// A candle error when the device is absent or the feature is not compiled in.
    pub fn open(self) -> Result<Device> {
        Ok(match self {
            CandleDevice::Cpu => Device::Cpu,
            CandleDevice::Cuda(i) => Device::new_cuda(i)?,
            CandleDevice::Metal(i) => Device::new_metal(i)?,
        })
    }
}

/// One decoder block on the device.
#[derive(Debug)]
struct Block {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    w_gate: QMatMul,
    w_up: QMatMul,
    w_down: QMatMul,
}

/// A Mistral/Llama decoder on a candle device, read-only once built: share
/// it between sessions, each with its own [`CandleCache`].
#[derive(Debug)]
pub struct CandleTransformer {
    cfg: ModelConfig,
    device: Device,
    /// The embedding stays on the host (rows are gathered there, one small
    /// upload per forward pass).
    embed: QMatrix,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: QMatMul,
    rope: Rope,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CandleTransformer>();
    assert_send_sync::<CandleCache>();
};

impl CandleTransformer {
    /// Builds the model of a GGUF file on `device` (llama.cpp tensor names,
    /// adjacent-pairs RoPE, tied output when there is no `output.weight`).
    ///
    /// # Errors
    /// As [`Transformer::from_gguf`](crate::Transformer::from_gguf), plus
    /// [`ModelError::UnsupportedTensorType`] for a quantized type candle has
    /// no kernels for, and candle errors (device memory).
    pub fn from_gguf(file: &Arc<GgufFile>, device: &Device) -> Result<Self> {
        let cfg = config_from_gguf(file).map_err(ModelError::from)?;
        Self::from_gguf_with_config(file, cfg, device)
    }

    /// Like [`from_gguf`](Self::from_gguf) with a configuration given by the caller.
    pub fn from_gguf_with_config(
        file: &Arc<GgufFile>,
        cfg: ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        let src = GgufSource(Arc::clone(file));
        let tied = !src.contains(Naming::Gguf.output());
        Self::build(
            &src,
            cfg,
            Naming::Gguf,
            RopeStyle::AdjacentPairs,
            tied,
            device,
        )
    }

    /// Builds the model of a Hugging Face safetensors checkpoint on `device`
    /// (HF names, rotate-halves RoPE; dense weights converted to f32).
    ///
    /// # Errors
    /// As [`from_gguf`](Self::from_gguf).
    pub fn from_safetensors(
        model: &Arc<SafetensorsModel>,
        cfg: ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        let src = StSource(Arc::clone(model));
        let tied = cfg.tie_word_embeddings || !src.contains(Naming::Hf.output());
        Self::build(&src, cfg, Naming::Hf, RopeStyle::Halves, tied, device)
    }

    fn build(
        src: &dyn TensorSource,
        cfg: ModelConfig,
        names: Naming,
        style: RopeStyle,
        tied: bool,
        device: &Device,
    ) -> Result<Self> {
        check_config(&cfg)?;
        let (hidden, ffn) = (cfg.hidden_size, cfg.intermediate_size);
        let q_dim = cfg.num_attention_heads * cfg.head_dim;
        let kv_dim = cfg.num_key_value_heads * cfg.head_dim;
        let embed = src.matrix(names.embed(), cfg.vocab_size, hidden)?;
        let vector =
            |name: &str| -> Result<Tensor> { weights::vector(&src.vector(name, hidden)?, device) };
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| {
                let m = |part, rows, cols| -> Result<QMatMul> {
                    let name = names.block(i, part);
                    weights::linear(&name, &src.matrix(&name, rows, cols)?, device)
                };
                Ok(Block {
                    attn_norm: vector(&names.block(i, Part::AttnNorm))?,
                    wq: m(Part::Q, q_dim, hidden)?,
                    wk: m(Part::K, kv_dim, hidden)?,
                    wv: m(Part::V, kv_dim, hidden)?,
                    wo: m(Part::O, hidden, q_dim)?,
                    ffn_norm: vector(&names.block(i, Part::FfnNorm))?,
                    w_gate: m(Part::Gate, ffn, hidden)?,
                    w_up: m(Part::Up, ffn, hidden)?,
                    w_down: m(Part::Down, hidden, ffn)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = vector(names.norm())?;
        let lm_head = if tied {
            weights::linear(names.embed(), &embed, device)?
        } else {
            let name = names.output();
            weights::linear(name, &src.matrix(name, cfg.vocab_size, hidden)?, device)?
        };
        let rope = Rope::new(&cfg, style);
        Ok(Self {
            cfg,
            device: device.clone(),
            embed,
            blocks,
            norm,
            lm_head,
            rope,
        })
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The RoPE convention the weights need.
    pub fn rope_style(&self) -> RopeStyle {
        self.rope.style()
    }

    /// An empty KV cache for a session of this model, on its device.
    ///
    /// # Errors
    /// [`ModelError::Config`] for a zero context or chunk size; candle errors.
    pub fn new_cache(&self, opts: KvCacheOptions) -> Result<CandleCache> {
        CandleCache::new(&self.cfg, opts, &self.device)
    }

    /// Runs `tokens` (one chunk) at the cache's position, appends their keys
    /// and values to the cache and returns the logits `mode` asks for.
    ///
    /// # Shapes
    /// - `tokens`: `n`, with `1 ≤ n ≤ cache.max_chunk()`.
    /// - returns: `vocab` ([`LogitsMode::Last`]), `n × vocab` ([`LogitsMode::All`])
    ///   or empty ([`LogitsMode::Skip`]).
    ///
    /// # Errors
    /// As [`Transformer::forward`](crate::Transformer::forward); on error the
    /// cache's position is unchanged.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut CandleCache,
        mode: LogitsMode,
    ) -> Result<Vec<f32>> {
        match self.forward_tensor(tokens, cache, mode)? {
            None => Ok(Vec::new()),
            Some(t) => Ok(t.flatten_all()?.to_vec1::<f32>()?),
        }
    }

    /// [`forward`](Self::forward) leaving the logits on the device.
    ///
    /// # Shapes
    /// - returns: `1 × vocab` ([`LogitsMode::Last`]), `n × vocab`
    ///   ([`LogitsMode::All`]) or `None` ([`LogitsMode::Skip`]).
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_tensor(
        &self,
        tokens: &[u32],
        cache: &mut CandleCache,
        mode: LogitsMode,
    ) -> Result<Option<Tensor>> {
        self.check_chunk(tokens, cache)?;
        let cfg = &self.cfg;
        let dev = &self.device;
        let n = tokens.len();
        let start = cache.position();
        let (hidden, heads, kv_heads, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let group = heads / kv_heads;
        let eps = cfg.rms_norm_eps;

        let mut emb = vec![0.0f32; n * hidden];
        for (&tok, row) in tokens.iter().zip(emb.chunks_exact_mut(hidden)) {
            self.embed
                .dequantize_row_into(tok as usize, row)
                .map_err(ModelError::from)?;
        }
        let mut x = Tensor::from_vec(emb, (n, hidden), dev)?;

        let half = hd / 2;
        let (mut cos, mut sin) = (vec![0.0f32; n * half], vec![0.0f32; n * half]);
        self.rope.tables(start, &mut cos, &mut sin);
        let cos = Tensor::from_vec(cos, (n, half), dev)?;
        let sin = Tensor::from_vec(sin, (n, half), dev)?;

        // Keys of positions first..start + n are visible to some query of the chunk.
        let first = cfg
            .sliding_window
            .map_or(0, |w| start.saturating_sub(w - 1));
        let nk = start + n - first;
        let mask = self.mask(start, n, first)?;
        let scale = 1.0 / (hd as f64).sqrt();

        for (l, b) in self.blocks.iter().enumerate() {
            // Attention.
            let xn = candle_nn::ops::rms_norm(&x, &b.attn_norm, eps)?;
            let heads_of = |t: Tensor, h: usize| -> candle_core::Result<Tensor> {
                t.reshape((1, n, h, hd))?.transpose(1, 2)?.contiguous()
            };
            let q = heads_of(b.wq.forward(&xn)?, heads)?;
            let k = heads_of(b.wk.forward(&xn)?, kv_heads)?;
            let v = heads_of(b.wv.forward(&xn)?, kv_heads)?.squeeze(0)?;
            let (q, k) = match self.rope.style() {
                RopeStyle::AdjacentPairs => (
                    candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?,
                ),
                RopeStyle::Halves => (
                    candle_nn::rotary_emb::rope(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope(&k, &cos, &sin)?,
                ),
            };
            let (keys, values) = cache.store_and_read(l, start, first, &k.squeeze(0)?, &v)?;
            // GQA without copying keys: the `group` query heads of a KV head
            // are consecutive, so they stack into one `group·n`-row matrix.
            let q = q.reshape((kv_heads, group * n, hd))?;
            let scores = (q.matmul(&keys.t()?)? * scale)?;
            let scores = match &mask {
                Some(m) => scores
                    .reshape((kv_heads, group, n, nk))?
                    .broadcast_add(m)?
                    .reshape((kv_heads, group * n, nk))?,
                None => scores,
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let att = probs
                .matmul(&values)?
                .reshape((heads, n, hd))?
                .transpose(0, 1)?
                .reshape((n, heads * hd))?;
            x = (x + b.wo.forward(&att)?)?;
            // Feed-forward.
            let xn = candle_nn::ops::rms_norm(&x, &b.ffn_norm, eps)?;
            let gate = candle_nn::ops::silu(&b.w_gate.forward(&xn)?)?;
            let up = b.w_up.forward(&xn)?;
            x = (x + b.w_down.forward(&(gate * up)?)?)?;
        }
        cache.advance(n);

        let x = match mode {
            LogitsMode::Skip => return Ok(None),
            LogitsMode::Last => x.narrow(0, n - 1, 1)?,
            LogitsMode::All => x,
        };
        let xn = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        Ok(Some(self.lm_head.forward(&xn)?))
    }

    /// The additive attention mask of a chunk of `n` queries at `start` over
    /// the keys of positions `first..start + n` (causal, sliding window), or
    /// `None` when every query sees every key (a decode step).
    ///
    /// # Shapes
    /// - returns: `n × (start + n − first)`.
    fn mask(&self, start: usize, n: usize, first: usize) -> Result<Option<Tensor>> {
        let nk = start + n - first;
        let window = self.cfg.sliding_window.unwrap_or(usize::MAX);
        let visible = |t: usize, j: usize| {
            let (q, k) = (start + t, first + j);
            k <= q && q - k < window
        };
        if (0..n).all(|t| (0..nk).all(|j| visible(t, j))) {
            return Ok(None);
        }
        let mask: Vec<f32> = (0..n)
            .flat_map(|t| (0..nk).map(move |j| (t, j)))
            .map(|(t, j)| {
                if visible(t, j) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        Ok(Some(Tensor::from_vec(mask, (n, nk), &self.device)?))
    }

    /// Runs a prompt of any length in chunks of up to `cache.max_chunk()`
    /// tokens and returns the last token's logits.
    ///
    /// # Shapes
    /// - `tokens`: `n ≥ 1`.
    /// - returns: `vocab`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward); a prompt that does not fit in the
    /// context is refused before anything is processed.
    pub fn prefill(&self, tokens: &[u32], cache: &mut CandleCache) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput.into());
        }
        check_room(cache.position(), cache.ctx_len(), tokens.len())?;
        let chunk = cache.max_chunk().max(1);
        let mut chunks = tokens.chunks(chunk).peekable();
        while let Some(c) = chunks.next() {
            if chunks.peek().is_some() {
                self.forward(c, cache, LogitsMode::Skip)?;
            } else {
                return self.forward(c, cache, LogitsMode::Last);
            }
        }
        Err(ModelError::EmptyInput.into())
    }

    /// Everything [`forward`](Self::forward) checks before touching the cache.
    fn check_chunk(&self, tokens: &[u32], cache: &CandleCache) -> Result<()> {
        cache.check(&self.cfg)?;
        check_chunk_tokens(
            tokens,
            cache.position(),
            cache.ctx_len(),
            cache.max_chunk(),
            self.cfg.vocab_size,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::CandleDevice;

    #[test]
    fn devices_parse_and_print() {
        for (s, d) in [
            ("cpu", CandleDevice::Cpu),
            ("cuda", CandleDevice::Cuda(0)),
            ("cuda:3", CandleDevice::Cuda(3)),
            ("metal", CandleDevice::Metal(0)),
            ("metal:1", CandleDevice::Metal(1)),
        ] {
            assert_eq!(s.parse::<CandleDevice>(), Ok(d));
            assert_eq!(d.to_string().parse::<CandleDevice>(), Ok(d));
        }
        for bad in ["", "gpu", "cuda:", "cuda:x", "cuda1", "metal:-1"] {
            assert!(bad.parse::<CandleDevice>().is_err(), "{bad}");
        }
    }
}
