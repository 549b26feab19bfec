//! The CPU backend's keys and values: per layer, `slots × kv_dim` f16 or f32
//! values in one vector each (each layer with its own number of slots).

use foehn_core::ModelConfig;
use half::f16;

use crate::cache::{KvCache, KvCacheOptions, KvCacheType, KvGeometry, KvStorage};
use crate::{ModelError, Result};

/// Cached keys or values of one layer: `slots × kv_dim`.
#[derive(Debug, Clone)]
pub(crate) enum KvStore {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl KvStore {
    fn new(dtype: KvCacheType, len: usize) -> Self {
        match dtype {
            KvCacheType::F16 => KvStore::F16(vec![f16::ZERO; len]),
            KvCacheType::F32 => KvStore::F32(vec![0.0; len]),
        }
    }

    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            KvStore::F16(v) => {
                for (d, &s) in v[at..at + src.len()].iter_mut().zip(src) {
                    *d = f16::from_f32(s);
                }
            }
            KvStore::F32(v) => v[at..at + src.len()].copy_from_slice(src),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            KvStore::F16(v) => 2 * v.len(),
            KvStore::F32(v) => 4 * v.len(),
        }
    }
}

/// Keys and values of one layer.
#[derive(Debug, Clone)]
pub(crate) struct LayerKv {
    pub(crate) k: KvStore,
    pub(crate) v: KvStore,
}

/// Every layer's keys and values (the storage of the CPU backend's [`KvCache`]).
#[derive(Debug, Clone)]
pub struct CpuKv {
    layers: Vec<LayerKv>,
}

impl CpuKv {
    /// Zeroed keys and values for `geom`.
    pub(crate) fn new(geom: &KvGeometry) -> Result<Self> {
        let layers = (0..geom.layers)
            .map(|l| {
                let len = geom.layer_elements(l).ok_or_else(|| {
                    ModelError::Config(format!(
                        "KV cache of {} slots × {} overflows",
                        geom.slots(l),
                        geom.kv_dim()
                    ))
                })?;
                Ok(LayerKv {
                    k: KvStore::new(geom.dtype, len),
                    v: KvStore::new(geom.dtype, len),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }
}

impl KvStorage for CpuKv {
    fn memory_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.k.bytes() + l.v.bytes()).sum()
    }
}

impl KvCache<CpuKv> {
    /// An empty cache for a model with configuration `cfg`, on the CPU.
    ///
    /// # Errors
    /// [`ModelError::Config`] when `ctx_len` or `max_chunk` is 0.
    pub fn new(cfg: &ModelConfig, opts: KvCacheOptions) -> Result<Self> {
        let geom = KvGeometry::new(cfg, &opts)?;
        let store = CpuKv::new(&geom)?;
        Ok(Self::with_store(geom, store))
    }

    /// Stores the keys and values of position `pos` in layer `layer`.
    ///
    /// # Shapes
    /// - `k`, `v`: `kv_dim`.
    pub(crate) fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let at = self.slot(layer, pos) * self.geometry().kv_dim();
        let l = &mut self.store_mut().layers[layer];
        l.k.write(at, k);
        l.v.write(at, v);
    }

    /// One layer's keys and values.
    pub(crate) fn layer(&self, layer: usize) -> &LayerKv {
        &self.store().layers[layer]
    }
}
