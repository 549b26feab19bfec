//! The CPU backend's keys and values: per layer, `slots × kv_dim` values in
//! one vector each (each layer with its own number of slots), as f16, f32,
//! or ggml's Q8_0 / Q4_0 blocks of 32 values — keys and values each in
//! their own type.
//!
//! Quantized rows are stored rotated, as llama.cpp's `attn_rot` does: each
//! block of [`LayerKv::k_rot`] / [`LayerKv::v_rot`] values of a head is
//! multiplied by a normalized Hadamard matrix before it is quantized, which
//! spreads an outlier over the block instead of letting it set the scale
//! of its 32 values. Attention rotates the queries the same way (scores are
//! unchanged: the matrix is orthonormal) and rotates its output back.

use foehn_core::ModelConfig;
use foehn_kernels::{quantize_row, GgmlType, VecOps};
use half::f16;

use crate::cache::{KvCache, KvCacheOptions, KvCacheType, KvGeometry, KvStorage};
use crate::{ModelError, Result};

/// Values per block of the quantized types.
const QK: usize = 32;
/// Largest rotation block of quantized keys (llama.cpp rotates keys by the
/// largest power of two that divides `head_dim`, from 64 up).
const MAX_K_ROT: usize = 256;
/// Rotation block of quantized values (llama.cpp's: 64, which it measured
/// better for values than larger blocks).
const V_ROT: usize = 64;
/// Bytes of a Q8_0 block.
const Q8_BYTES: usize = GgmlType::Q8_0.type_size();
/// Bytes of a Q4_0 block.
const Q4_BYTES: usize = GgmlType::Q4_0.type_size();

/// Cached keys or values of one layer: `slots × kv_dim` values. Quantized
/// rows are whole blocks (a head's `head_dim` values are whole blocks too),
/// so value `i` starts block `i / 32` when `i` is a multiple of 32.
#[derive(Debug, Clone)]
pub(crate) enum KvStore {
    F16(Vec<f16>),
    F32(Vec<f32>),
    /// Q8_0 blocks, 34 bytes per 32 values.
    Q8_0(Vec<u8>),
    /// Q4_0 blocks, 18 bytes per 32 values.
    Q4_0(Vec<u8>),
}

impl KvStore {
    /// Zeroed storage of `len` values (whole blocks for quantized types,
    /// which [`KvGeometry::new`] checked).
    fn new(ty: KvCacheType, len: usize) -> Result<Self> {
        let bytes = ty.bytes(len).ok_or_else(|| {
            ModelError::Config(format!("a {ty} KV cache of {len} values overflows"))
        })?;
        Ok(match ty {
            KvCacheType::F16 => KvStore::F16(vec![f16::ZERO; len]),
            KvCacheType::F32 => KvStore::F32(vec![0.0; len]),
            KvCacheType::Q8_0 => KvStore::Q8_0(vec![0; bytes]),
            KvCacheType::Q4_0 => KvStore::Q4_0(vec![0; bytes]),
        })
    }

    /// Stores `src` as values `at..at + src.len()`; quantized types rotate
    /// each block of `rot` values first (`at` and the length whole rotation
    /// blocks) and round as llama.cpp's `quantize_row_*_ref`.
    ///
    /// # Errors
    /// [`ModelError::Kernel`] when a quantized type cannot represent a value
    /// (NaN, infinite, beyond f16); the row may be partly written then.
    fn write(&mut self, ops: VecOps, at: usize, src: &[f32], rot: usize) -> Result<()> {
        match self {
            KvStore::F16(v) => {
                for (d, &s) in v[at..at + src.len()].iter_mut().zip(src) {
                    *d = f16::from_f32(s);
                }
            }
            KvStore::F32(v) => v[at..at + src.len()].copy_from_slice(src),
            KvStore::Q8_0(b) => quantize_blocks(ops, GgmlType::Q8_0, at, src, rot, b)?,
            KvStore::Q4_0(b) => quantize_blocks(ops, GgmlType::Q4_0, at, src, rot, b)?,
        }
        Ok(())
    }

    /// Values `at..at + dst.len()` as f32 into `dst` (quantized: `at` and the
    /// length whole blocks), converted by `ops`.
    pub(crate) fn read(&self, ops: VecOps, at: usize, dst: &mut [f32]) {
        let n = dst.len();
        match self {
            KvStore::F16(v) => ops.f16_to_f32(&v[at..at + n], dst),
            KvStore::F32(v) => dst.copy_from_slice(&v[at..at + n]),
            KvStore::Q8_0(b) => {
                ops.q8_0_to_f32(&b[at / QK * Q8_BYTES..(at + n) / QK * Q8_BYTES], dst)
            }
            KvStore::Q4_0(b) => {
                ops.q4_0_to_f32(&b[at / QK * Q4_BYTES..(at + n) / QK * Q4_BYTES], dst)
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            KvStore::F16(v) => 2 * v.len(),
            KvStore::F32(v) => 4 * v.len(),
            KvStore::Q8_0(b) | KvStore::Q4_0(b) => b.len(),
        }
    }
}

/// Rotates each block of `rot` values of `src` and quantizes it into the
/// `ty` blocks of values `at..at + src.len()` of `blocks` (`at` and the
/// length whole rotation blocks, `rot` a multiple of 32 up to [`MAX_K_ROT`]).
fn quantize_blocks(
    ops: VecOps,
    ty: GgmlType,
    at: usize,
    src: &[f32],
    rot: usize,
    blocks: &mut [u8],
) -> Result<()> {
    let (bb, rot) = (ty.type_size(), rot.clamp(QK, MAX_K_ROT));
    let mut buf = [0.0f32; MAX_K_ROT];
    for (i, chunk) in src.chunks(rot).enumerate() {
        let buf = &mut buf[..chunk.len()];
        buf.copy_from_slice(chunk);
        ops.hadamard(buf, rot);
        let b0 = (at + i * rot) / QK * bb;
        quantize_row(ty, buf, &mut blocks[b0..b0 + chunk.len() / QK * bb])?;
    }
    Ok(())
}

/// The rotation block of a quantized side (0: stored as is): the largest
/// power of two dividing `head_dim`, from 32 up to `max`.
fn rotation(ty: KvCacheType, head_dim: usize, max: usize) -> usize {
    if !ty.is_quantized() {
        return 0;
    }
    let mut n = QK;
    while n * 2 <= max && head_dim.is_multiple_of(n * 2) {
        n *= 2;
    }
    n
}

/// Keys and values of one layer.
#[derive(Debug, Clone)]
pub(crate) struct LayerKv {
    pub(crate) k: KvStore,
    pub(crate) v: KvStore,
    /// Values per Hadamard rotation block of the stored keys (0: none).
    pub(crate) k_rot: usize,
    /// Values per Hadamard rotation block of the stored values (0: none).
    pub(crate) v_rot: usize,
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
                    k: KvStore::new(geom.types.k, len)?,
                    v: KvStore::new(geom.types.v, len)?,
                    k_rot: rotation(geom.types.k, geom.head_dim, MAX_K_ROT),
                    v_rot: rotation(geom.types.v, geom.head_dim, V_ROT),
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
    /// [`ModelError::Config`] when `ctx_len` or `max_chunk` is 0, or a
    /// quantized type meets a `head_dim` that is not a multiple of 32.
    pub fn new(cfg: &ModelConfig, opts: KvCacheOptions) -> Result<Self> {
        let geom = KvGeometry::new(cfg, &opts)?;
        let store = CpuKv::new(&geom)?;
        Ok(Self::with_store(geom, store))
    }

    /// Stores the keys and values of position `pos` in layer `layer`
    /// (quantized sides rotated by `ops`).
    ///
    /// # Shapes
    /// - `k`, `v`: `kv_dim`.
    ///
    /// # Errors
    /// [`ModelError::Kernel`] when a quantized side cannot represent a value
    /// (NaN, infinite, beyond f16).
    pub(crate) fn write(
        &mut self,
        ops: VecOps,
        layer: usize,
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<()> {
        let at = self.slot(layer, pos) * self.geometry().kv_dim();
        let l = &mut self.store_mut().layers[layer];
        l.k.write(ops, at, k, l.k_rot)?;
        l.v.write(ops, at, v, l.v_rot)
    }

    /// One layer's keys and values.
    pub(crate) fn layer(&self, layer: usize) -> &LayerKv {
        &self.store().layers[layer]
    }
}

#[cfg(test)]
mod tests {
    use foehn_kernels::{dequantize_row, GgmlType, Isa};

    use super::*;
    use crate::cache::KvTypes;

    fn ops() -> VecOps {
        VecOps::new(Isa::best())
    }

    fn cfg(kv_heads: usize, head_dim: usize, window: Option<usize>) -> ModelConfig {
        ModelConfig {
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: kv_heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rope_theta: 1e4,
            rope_scaling: None,
            rms_norm_eps: 1e-5,
            sliding_window: window,
            max_position_embeddings: 100,
            tie_word_embeddings: false,
            sliding_layers: None,
            attn_temperature: None,
            moe: None,
        }
    }

    /// Row `pos` of a layer: values of several magnitudes, signs, a zero block.
    fn row(pos: usize, n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                if i / 32 == 1 && pos.is_multiple_of(3) {
                    0.0
                } else {
                    ((i * 7 + pos * 13) as f32 * 0.31 + seed).sin() * (1.0 + (i % 5) as f32 * 3.0)
                }
            })
            .collect()
    }

    /// Every written row reads back as the scalar quantize → dequantize of
    /// the same row (bit for bit), per head, in every slot of the ring, for
    /// odd head counts and head sizes of 1 to 3 blocks.
    #[test]
    fn quantized_rows_read_back_as_the_scalar_dequantizer() {
        for (kv_heads, head_dim) in [(1, 32), (3, 96), (2, 64)] {
            for window in [None, Some(5)] {
                let c = cfg(kv_heads, head_dim, window);
                let types = KvTypes {
                    k: KvCacheType::Q8_0,
                    v: KvCacheType::Q4_0,
                };
                let opts = KvCacheOptions {
                    ctx_len: Some(23),
                    types,
                    max_chunk: 3,
                };
                let mut cache = KvCache::new(&c, opts).unwrap();
                let (kv_dim, slots) = (kv_heads * head_dim, cache.slots(1));
                // Past the ring's end when windowed: later rows overwrite slots.
                for pos in 0..23 {
                    cache
                        .write(
                            ops(),
                            1,
                            pos,
                            &row(pos, kv_dim, 0.5),
                            &row(pos, kv_dim, 1.5),
                        )
                        .unwrap();
                }
                let l = cache.layer(1);
                // The largest power of two dividing head_dim (96: 32), values
                // at most 64.
                let low = head_dim & head_dim.wrapping_neg();
                assert_eq!((l.k_rot, l.v_rot), (low, low.min(64)));
                for pos in 23 - slots..23 {
                    for (store, ty, seed, rot) in [
                        (&l.k, GgmlType::Q8_0, 0.5, l.k_rot),
                        (&l.v, GgmlType::Q4_0, 1.5, l.v_rot),
                    ] {
                        let src = row(pos, kv_dim, seed);
                        let mut rotated = src.clone();
                        ops().hadamard(&mut rotated, rot);
                        let mut q = vec![0u8; ty.row_bytes(kv_dim).unwrap()];
                        quantize_row(ty, &rotated, &mut q).unwrap();
                        let mut want = vec![0.0; kv_dim];
                        dequantize_row(ty, &q, &mut want).unwrap();
                        for h in 0..kv_heads {
                            let mut got = vec![f32::NAN; head_dim];
                            store.read(ops(), (pos % slots) * kv_dim + h * head_dim, &mut got);
                            assert_eq!(
                                got,
                                want[h * head_dim..(h + 1) * head_dim],
                                "{ty:?} {kv_heads}×{head_dim} {window:?} pos {pos} head {h}"
                            );
                            // Rotated back: what was written, within the
                            // quant steps (‖error‖₂ of a block ≤ √n · step).
                            ops().hadamard(&mut got, rot);
                            let part = &src[h * head_dim..(h + 1) * head_dim];
                            let amax = rotated.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                            let step = if ty == GgmlType::Q8_0 {
                                amax / 127.0
                            } else {
                                amax / 8.0
                            };
                            let err2: f32 =
                                got.iter().zip(part).map(|(g, s)| (g - s) * (g - s)).sum();
                            assert!(
                                err2.sqrt() <= (head_dim as f32).sqrt() * step,
                                "{ty:?} {err2}"
                            );
                        }
                    }
                }
                // 23 × kv_dim values per layer side, 34 + 18 bytes per block.
                let layer_slots: usize = (0..2).map(|l| cache.slots(l)).sum();
                assert_eq!(cache.memory_bytes(), layer_slots * kv_dim / 32 * (34 + 18));
            }
        }
    }

    /// A value a quantized cache cannot hold is an error, not a panic, and
    /// leaves the stored row as it was.
    #[test]
    fn non_finite_values_are_refused() {
        let c = cfg(1, 32, None);
        let opts = KvCacheOptions {
            ctx_len: Some(4),
            types: KvTypes::both(KvCacheType::Q8_0),
            max_chunk: 1,
        };
        let mut cache = KvCache::new(&c, opts).unwrap();
        let good = row(0, 32, 0.0);
        cache.write(ops(), 0, 0, &good, &good).unwrap();
        let mut bad = good.clone();
        bad[7] = f32::NAN;
        assert!(cache.write(ops(), 0, 0, &bad, &good).is_err());
        assert!(cache
            .write(ops(), 0, 0, &good, &[f32::INFINITY; 32])
            .is_err());
        let mut got = vec![0.0; 32];
        cache.layer(0).k.read(ops(), 0, &mut got);
        ops().hadamard(&mut got, cache.layer(0).k_rot);
        assert!((got[7] - good[7]).abs() < 0.1);
    }
}
