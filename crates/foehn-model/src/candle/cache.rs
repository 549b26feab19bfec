//! The candle backend's keys and values: per layer, two
//! `kv_heads × slots × head_dim` tensors on the model's device, written in
//! place ([`Tensor::slice_set`]) and ring-indexed with a sliding window.

use candle_core::{DType, Device, Tensor};

use foehn_core::ModelConfig;

use crate::cache::{KvCache, KvCacheOptions, KvCacheType, KvGeometry, KvStorage};
use crate::{ModelError, Result};

/// Every layer's keys and values on a candle device (the storage of a
/// [`CandleCache`]).
#[derive(Debug)]
pub struct CandleKv {
    /// Per layer: keys and values, each `kv_heads × slots × head_dim`.
    layers: Vec<(Tensor, Tensor)>,
    bytes: usize,
}

/// The KV cache of one session of a [`CandleTransformer`](super::CandleTransformer).
pub type CandleCache = KvCache<CandleKv>;

impl CandleKv {
    /// Zeroed keys and values for `geom` on `device`.
    pub(crate) fn new(geom: &KvGeometry, device: &Device) -> Result<Self> {
        let dtype = |ty: KvCacheType| match ty {
            KvCacheType::F16 => Ok(DType::F16),
            KvCacheType::F32 => Ok(DType::F32),
            KvCacheType::Q8_0 | KvCacheType::Q4_0 => Err(ModelError::Config(format!(
                "the quantized KV cache ({}) is cpu-only: use f16 or f32 keys and values with \
                 the candle backend",
                geom.types
            ))),
        };
        let (dk, dv) = (dtype(geom.types.k)?, dtype(geom.types.v)?);
        let layers = (0..geom.layers)
            .map(|l| {
                let shape = (geom.kv_heads, geom.slots(l), geom.head_dim);
                Ok((
                    Tensor::zeros(shape, dk, device)?,
                    Tensor::zeros(shape, dv, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes = geom.total_elements().unwrap_or(0) * (dk.size_in_bytes() + dv.size_in_bytes());
        Ok(Self { layers, bytes })
    }
}

impl KvStorage for CandleKv {
    fn memory_bytes(&self) -> usize {
        self.bytes
    }
}

impl KvCache<CandleKv> {
    /// An empty cache for a model with configuration `cfg` on `device`.
    ///
    /// # Errors
    /// [`ModelError::Config`] when `ctx_len` or `max_chunk` is 0, or the
    /// keys or values are quantized (a CPU-only cache); a candle error when
    /// the device cannot hold it.
    pub fn new_on(cfg: &ModelConfig, opts: KvCacheOptions, device: &Device) -> Result<Self> {
        let geom = KvGeometry::new(cfg, &opts)?;
        let store = CandleKv::new(&geom, device)?;
        Ok(Self::with_store(geom, store))
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
        let (ck, cv) = &self.store().layers[layer];
        let n = k.dim(1)?;
        let slots = self.slots(layer);
        let (k, v) = (k.to_dtype(ck.dtype())?, v.to_dtype(cv.dtype())?);
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
}
