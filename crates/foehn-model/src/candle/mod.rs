//! The candle backend: the decoder's ops ([`Backend`]) on candle tensors, so
//! it runs on any candle [`Device`] — the CPU, CUDA (cargo feature `cuda`)
//! or Metal (cargo feature `metal`).
//!
//! Weights come from our own loaders (the same tensor naming, shape and type
//! checks as the CPU backend); quantized GGUF weights stay quantized as
//! candle `QTensor`s, whose matmul quantizes the activations like llama.cpp
//! does.
//!
//! ```no_run
//! use std::sync::Arc;
//! use foehn_loader::GgufFile;
//! use foehn_model::candle::{CandleTransformer, Device};
//! use foehn_model::{KvCacheOptions, LogitsMode};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = Arc::new(GgufFile::open("model.gguf")?);
//! let model = CandleTransformer::from_gguf(&file, &Device::Cpu)?;
//! let mut cache = model.new_cache(KvCacheOptions::default())?;
//! let mut work = model.new_scratch(&cache);
//! let logits = model.prefill(&[1, 415, 2936], &mut cache, &mut work)?;
//! let next = foehn_model::argmax(logits);
//! let logits = model.forward(&[next], &mut cache, &mut work, LogitsMode::Last)?;
//! # let _ = logits; Ok(()) }
//! ```

mod cache;
mod weights;

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};
use foehn_core::ModelConfig;
use foehn_kernels::{ActPrecision, QMatrix};
use foehn_loader::{GgufFile, SafetensorsModel};

pub use self::cache::{CandleCache, CandleKv};
use crate::backend::{Act, Backend, Head};
use crate::cache::{KvCache, KvGeometry};
use crate::moe::{route, Moe};
use crate::{CandleDevice, LogitsMode, Model, ModelError, Result, Rope, RopeStyle, WeightOptions};
pub use candle_core::Device;

impl CandleDevice {
    /// Opens the device.
    ///
    /// # Errors
    /// A candle error when the device is absent or its feature is not compiled in.
    pub fn open(self) -> Result<Device> {
        Ok(match self {
            CandleDevice::Cpu => Device::Cpu,
            CandleDevice::Cuda(i) => Device::new_cuda(i)?,
            CandleDevice::Metal(i) => Device::new_metal(i)?,
        })
    }
}

/// candle tensors on one device.
#[derive(Debug, Clone)]
pub struct Candle {
    device: Device,
    embed_on_device: bool,
}

impl Candle {
    /// The backend on `device`. On a GPU the token embedding is kept on the
    /// device (dense f32) and looked up there; on the CPU device its rows
    /// are dequantized from the file as needed.
    pub fn new(device: Device) -> Self {
        let embed_on_device = !device.is_cpu();
        Self {
            device,
            embed_on_device,
        }
    }

    /// Keeps the token embedding on the device (dense f32, looked up with
    /// `index_select`) or on the host (rows dequantized from the file, one
    /// upload per forward pass), whatever the device.
    pub fn with_device_embedding(mut self, on: bool) -> Self {
        self.embed_on_device = on;
        self
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// The Mistral/Llama decoder on the candle backend.
pub type CandleTransformer = Model<Candle>;

/// The token embedding — a dense tensor on the device, or rows gathered on
/// the host (one small upload per forward pass) — and, when tied, the output
/// projection on the device.
#[derive(Debug)]
pub struct CandleEmbedding {
    host: QMatrix,
    device: Option<Tensor>,
    head: Option<QMatMul>,
}

/// A candle session's activations (tensors on the device), RoPE tables,
/// attention mask and the logits copied back to the host.
#[derive(Debug)]
pub struct CandleWork {
    /// The model shape the work was made for: hidden, vocabulary, layers.
    shape: (usize, usize, usize),
    n: usize,
    start: usize,
    acts: [Option<Tensor>; 8],
    cos: Option<Tensor>,
    sin: Option<Tensor>,
    /// RoPE tables of positions `0..len` on the device (`len × head_dim/2`
    /// each), grown as sessions get longer.
    rope_tables: Option<(Tensor, Tensor)>,
    /// The chunk as each distinct window of the model's layers sees it.
    views: Vec<ChunkView>,
    heads: (usize, usize, usize),
    /// Each layer's sliding window.
    windows: Vec<Option<usize>>,
    logits: Vec<f32>,
}

impl CandleWork {
    fn slot(a: Act) -> usize {
        match a {
            Act::X => 0,
            Act::Xn => 1,
            Act::Q => 2,
            Act::K => 3,
            Act::V => 4,
            Act::Att => 5,
            Act::Gate => 6,
            Act::Up => 7,
        }
    }

    fn get(&self, a: Act) -> Result<&Tensor> {
        self.acts[Self::slot(a)].as_ref().ok_or_else(|| {
            ModelError::Mismatch(format!("activation {a:?} read before it was written"))
        })
    }

    fn set(&mut self, a: Act, t: Tensor) {
        self.acts[Self::slot(a)] = Some(t);
    }
}

impl Backend for Candle {
    type Linear = QMatMul;
    type Stack = Vec<QMatMul>;
    type Vector = Tensor;
    type Embedding = CandleEmbedding;
    type Kv = CandleKv;
    type Work = CandleWork;

    fn name(&self) -> String {
        let dev = match &self.device {
            Device::Cpu => "cpu".to_string(),
            Device::Cuda(_) => "cuda".to_string(),
            Device::Metal(_) => "metal".to_string(),
        };
        format!("candle:{dev}")
    }

    fn linear(&self, name: &str, m: QMatrix) -> Result<QMatMul> {
        weights::linear(name, &m, &self.device)
    }

    fn stack(&self, names: &[String], parts: Vec<QMatrix>) -> Result<Vec<QMatMul>> {
        names
            .iter()
            .zip(&parts)
            .map(|(name, m)| weights::linear(name, m, &self.device))
            .collect()
    }

    fn vector(&self, v: Vec<f32>) -> Result<Tensor> {
        weights::vector(&v, &self.device)
    }

    fn embedding(&self, name: &str, m: QMatrix, tied: bool) -> Result<CandleEmbedding> {
        let head = if tied {
            Some(weights::linear(name, &m, &self.device)?)
        } else {
            None
        };
        let device = if self.embed_on_device {
            Some(weights::dense_tensor(&m, &self.device)?)
        } else {
            None
        };
        Ok(CandleEmbedding {
            host: m,
            device,
            head,
        })
    }

    fn new_kv(&self, geom: &KvGeometry) -> Result<CandleKv> {
        CandleKv::new(geom, &self.device)
    }

    fn new_work(&self, cfg: &ModelConfig, _chunk: usize) -> CandleWork {
        CandleWork {
            shape: (cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers),
            n: 0,
            start: 0,
            acts: Default::default(),
            cos: None,
            sin: None,
            rope_tables: None,
            views: Vec::new(),
            heads: (
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                cfg.head_dim,
            ),
            windows: layer_windows(cfg),
            logits: Vec::new(),
        }
    }

    fn set_precision(&self, _work: &mut CandleWork, precision: ActPrecision) -> Result<()> {
        if precision != ActPrecision::Q8 {
            return Err(ModelError::Config(format!(
                "activation precision {precision:?} is an option of the cpu backend (candle \
                 quantizes activations itself)"
            )));
        }
        Ok(())
    }

    fn work_chunk(&self, _work: &CandleWork) -> usize {
        usize::MAX
    }

    fn check_work(&self, work: &CandleWork, cfg: &ModelConfig, _n: usize) -> Result<()> {
        let heads = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        if work.shape != (cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers)
            || work.heads != heads
            || work.windows != layer_windows(cfg)
        {
            return Err(ModelError::Mismatch(
                "the work buffers were built for another model".into(),
            ));
        }
        Ok(())
    }

    fn embed(
        &self,
        w: &mut CandleWork,
        embedding: &CandleEmbedding,
        rope: &Rope,
        tokens: &[u32],
        start: usize,
    ) -> Result<()> {
        let (n, hidden) = (tokens.len(), w.shape.0);
        let dev = &self.device;
        let x = match &embedding.device {
            Some(table) => table.index_select(&Tensor::new(tokens, dev)?, 0)?,
            None => {
                let mut emb = vec![0.0f32; n * hidden];
                for (&tok, row) in tokens.iter().zip(emb.chunks_exact_mut(hidden)) {
                    embedding.host.dequantize_row_into(tok as usize, row)?;
                }
                Tensor::from_vec(emb, (n, hidden), dev)?
            }
        };
        w.set(Act::X, x);
        let (cos, sin) = self.rope_tables(w, rope, start + n)?;
        w.cos = Some(cos.narrow(0, start, n)?);
        w.sin = Some(sin.narrow(0, start, n)?);
        let mut windows = w.windows.clone();
        windows.sort_unstable();
        windows.dedup();
        w.views = windows
            .into_iter()
            .map(|window| {
                // Keys of positions first..start + n are visible to some query of the chunk.
                let first = window.map_or(0, |win| start.saturating_sub(win - 1));
                Ok(ChunkView {
                    window,
                    first,
                    mask: mask(start, n, first, window, dev)?,
                })
            })
            .collect::<Result<_>>()?;
        (w.n, w.start) = (n, start);
        Ok(())
    }

    fn rms_norm(
        &self,
        w: &mut CandleWork,
        x: Act,
        weight: &Tensor,
        eps: f32,
        out: Act,
    ) -> Result<()> {
        let t = candle_nn::ops::rms_norm(w.get(x)?, weight, eps)?;
        w.set(out, t);
        Ok(())
    }

    fn project(&self, w: &mut CandleWork, m: &Vec<QMatMul>, x: Act, outs: &[Act]) -> Result<()> {
        for (m, &out) in m.iter().zip(outs) {
            let t = m.forward(w.get(x)?)?;
            w.set(out, t);
        }
        Ok(())
    }

    fn linear_into(&self, w: &mut CandleWork, m: &QMatMul, x: Act, out: Act) -> Result<()> {
        let t = m.forward(w.get(x)?)?;
        w.set(out, t);
        Ok(())
    }

    /// Leaves the queries and keys head-major (`1 × heads × n × head_dim`),
    /// as [`attend`](Self::attend) reads them.
    fn rope(&self, w: &mut CandleWork, rope: &Rope, q: Act, k: Act) -> Result<()> {
        let (heads, kv_heads, hd) = w.heads;
        let (cos, sin) = match (&w.cos, &w.sin) {
            (Some(c), Some(s)) => (c, s),
            _ => {
                return Err(ModelError::Mismatch(
                    "RoPE before the chunk's tables".into(),
                ))
            }
        };
        let rotate = |t: &Tensor, h: usize| -> Result<Tensor> {
            let t = t.reshape((1, w.n, h, hd))?.transpose(1, 2)?.contiguous()?;
            Ok(match rope.style() {
                RopeStyle::AdjacentPairs => candle_nn::rotary_emb::rope_i(&t, cos, sin)?,
                RopeStyle::Halves => candle_nn::rotary_emb::rope(&t, cos, sin)?,
            })
        };
        let (mut rq, rk) = (rotate(w.get(q)?, heads)?, rotate(w.get(k)?, kv_heads)?);
        let scales: Vec<Option<f32>> = (w.start..w.start + w.n)
            .map(|p| rope.query_scale(p))
            .collect();
        if scales.iter().any(Option::is_some) {
            let scales: Vec<f32> = scales.into_iter().map(|s| s.unwrap_or(1.0)).collect();
            let scales = Tensor::from_vec(scales, (1, 1, w.n, 1), rq.device())?;
            rq = rq.broadcast_mul(&scales.to_dtype(rq.dtype())?)?;
        }
        w.set(q, rq);
        w.set(k, rk);
        Ok(())
    }

    fn attend(
        &self,
        w: &mut CandleWork,
        cache: &mut KvCache<CandleKv>,
        layer: usize,
        q: Act,
        k: Act,
        v: Act,
        out: Act,
    ) -> Result<()> {
        let (heads, kv_heads, hd) = w.heads;
        let window = cache.window(layer);
        let view = w
            .views
            .iter()
            .find(|v| v.window == window)
            .ok_or_else(|| ModelError::Mismatch("attention before the chunk's masks".into()))?;
        let (n, start, first) = (w.n, w.start, view.first);
        let group = heads / kv_heads;
        let nk = start + n - first;
        let v_heads = w
            .get(v)?
            .reshape((1, n, kv_heads, hd))?
            .transpose(1, 2)?
            .contiguous()?
            .squeeze(0)?;
        let (keys, values) =
            cache.store_and_read(layer, start, first, &w.get(k)?.squeeze(0)?, &v_heads)?;
        // GQA without copying keys: the `group` query heads of a KV head
        // are consecutive, so they stack into one `group·n`-row matrix.
        let qh = w.get(q)?.reshape((kv_heads, group * n, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (qh.matmul(&keys.t()?)? * scale)?;
        let scores = match &view.mask {
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
        w.set(out, att);
        Ok(())
    }

    fn add(&self, w: &mut CandleWork, acc: Act, y: Act) -> Result<()> {
        let t = (w.get(acc)? + w.get(y)?)?;
        w.set(acc, t);
        Ok(())
    }

    fn silu_mul(&self, w: &mut CandleWork, gate: Act, up: Act) -> Result<()> {
        let t = (candle_nn::ops::silu(w.get(gate)?)? * w.get(up)?)?;
        w.set(gate, t);
        Ok(())
    }

    /// The chunk's router logits come to the host to be routed; then each
    /// chosen expert runs once on its tokens' rows (`index_select`), and
    /// its weighted output is added to theirs (`index_add`).
    fn moe(&self, w: &mut CandleWork, moe: &Moe<Self>, x: Act, out: Act) -> Result<()> {
        let xs = w.get(x)?.clone();
        let logits = moe
            .router()
            .forward(&xs)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        let mut by_expert: Vec<(Vec<u32>, Vec<f32>)> =
            vec![Default::default(); moe.experts().len()];
        let mut chosen = vec![(0usize, 0.0f32); moe.experts_per_token()];
        for (t, row) in logits.iter().enumerate() {
            route(row, &mut chosen);
            for &(e, weight) in &chosen {
                by_expert[e].0.push(t as u32);
                by_expert[e].1.push(weight);
            }
        }
        let mut acc = xs.zeros_like()?;
        for (e, (expert, (tokens, weights))) in moe.experts().iter().zip(&by_expert).enumerate() {
            if tokens.is_empty() {
                continue;
            }
            let [gate, up] = &expert.gate_up()[..] else {
                return Err(ModelError::Mismatch(format!(
                    "expert {e} has {} gate/up projections, not 2",
                    expert.gate_up().len()
                )));
            };
            let idx = Tensor::new(tokens.as_slice(), &self.device)?;
            let rows = xs.index_select(&idx, 0)?;
            let h = (candle_nn::ops::silu(&gate.forward(&rows)?)? * up.forward(&rows)?)?;
            let y = expert.down().forward(&h)?;
            let wt = Tensor::from_slice(weights, (weights.len(), 1), &self.device)?
                .to_dtype(y.dtype())?;
            acc = acc.index_add(&idx, &y.broadcast_mul(&wt)?, 0)?;
        }
        w.set(out, acc);
        Ok(())
    }

    fn logits<'w>(
        &self,
        w: &'w mut CandleWork,
        x: Act,
        norm: &Tensor,
        eps: f32,
        head: Head<'_, Self>,
        mode: LogitsMode,
    ) -> Result<&'w [f32]> {
        let x = match mode {
            LogitsMode::Skip => {
                w.logits.clear();
                return Ok(&w.logits);
            }
            LogitsMode::Last => w.get(x)?.narrow(0, w.n - 1, 1)?,
            LogitsMode::All => w.get(x)?.clone(),
        };
        let head = match head {
            Head::Output(m) => m,
            Head::Tied(e) => e.head.as_ref().ok_or_else(|| {
                ModelError::Mismatch("a tied output projection without its matrix".into())
            })?,
        };
        let xn = candle_nn::ops::rms_norm(&x, norm, eps)?;
        w.logits = head.forward(&xn)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(&w.logits)
    }
}

/// A chunk as the layers with one sliding window see it.
#[derive(Debug)]
struct ChunkView {
    window: Option<usize>,
    /// The first position of the keys the chunk sees.
    first: usize,
    /// The additive mask of the chunk over those keys (`None`: every query
    /// sees every key).
    mask: Option<Tensor>,
}

/// Each layer's sliding window.
fn layer_windows(cfg: &ModelConfig) -> Vec<Option<usize>> {
    (0..cfg.num_hidden_layers)
        .map(|l| cfg.layer_window(l))
        .collect()
}

/// Positions of the first RoPE tables of a session (they double as it grows).
const ROPE_TABLE_MIN: usize = 32;

impl Candle {
    /// The work's RoPE tables, covering at least positions `0..end` (made
    /// on the device when a session first needs them, and again, twice as
    /// long, when it outgrows them).
    fn rope_tables(&self, w: &mut CandleWork, rope: &Rope, end: usize) -> Result<(Tensor, Tensor)> {
        let have = w
            .rope_tables
            .as_ref()
            .map_or(0, |(c, _)| c.dim(0).unwrap_or(0));
        if have < end {
            let len = end.max(2 * have).max(ROPE_TABLE_MIN);
            let half = w.heads.2 / 2;
            let (mut cos, mut sin) = (vec![0.0f32; len * half], vec![0.0f32; len * half]);
            rope.tables(0, &mut cos, &mut sin);
            w.rope_tables = Some((
                Tensor::from_vec(cos, (len, half), &self.device)?,
                Tensor::from_vec(sin, (len, half), &self.device)?,
            ));
        }
        match &w.rope_tables {
            Some((c, s)) => Ok((c.clone(), s.clone())),
            None => Err(ModelError::Mismatch("no RoPE tables".into())),
        }
    }
}

/// The additive attention mask of a chunk of `n` queries at `start` over
/// the keys of positions `first..start + n` (causal, sliding window), or
/// `None` when every query sees every key (a decode step).
///
/// # Shapes
/// - returns: `n × (start + n − first)`.
fn mask(
    start: usize,
    n: usize,
    first: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let nk = start + n - first;
    let window = window.unwrap_or(usize::MAX);
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
    Ok(Some(Tensor::from_vec(mask, (n, nk), device)?))
}

impl Model<Candle> {
    /// [`Model::load_gguf`] on `device`.
    ///
    /// # Errors
    /// As [`Model::load_gguf`], plus
    /// [`ModelError::UnsupportedTensorType`] for a quantized type candle has
    /// no kernels for, and candle errors (device memory).
    pub fn from_gguf(file: &Arc<GgufFile>, device: &Device) -> Result<Self> {
        Self::load_gguf(Candle::new(device.clone()), Arc::clone(file))
    }

    /// [`Model::load_gguf_with_config`] on `device`.
    ///
    /// # Errors
    /// As [`from_gguf`](Self::from_gguf).
    pub fn from_gguf_with_config(
        file: &Arc<GgufFile>,
        cfg: ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        Self::load_gguf_with_config(Candle::new(device.clone()), Arc::clone(file), cfg)
    }

    /// [`Model::load_safetensors`] on `device` (dense weights converted to f32).
    ///
    /// # Errors
    /// As [`from_gguf`](Self::from_gguf).
    pub fn from_safetensors(
        model: &Arc<SafetensorsModel>,
        cfg: ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        Self::load_safetensors(
            Candle::new(device.clone()),
            Arc::clone(model),
            cfg,
            &WeightOptions::default(),
        )
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.backend.device
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CandleTransformer>();
    assert_send_sync::<CandleCache>();
};
