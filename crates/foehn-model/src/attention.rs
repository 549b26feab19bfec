//! Grouped-query attention of a chunk of queries over the KV cache, with an
//! optional sliding window (query `i` sees key `j` iff `0 ≤ i − j < W`).

use foehn_kernels::dot;
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::cache::{KvStore, LayerKv};
use crate::ops::{axpy, softmax};

/// The attention geometry of a model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnShape {
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) window: Option<usize>,
}

impl AttnShape {
    /// Query heads per KV head.
    pub(crate) fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }

    /// Floats of work space one KV head's task needs: a score row per query
    /// head of the group, and one converted key/value row.
    pub(crate) fn work_per_kv_head(&self, max_keys: usize) -> usize {
        self.group() * max_keys + self.head_dim
    }
}

/// A cached element type, read one head row at a time as f32.
trait KvElem: Copy + Send + Sync {
    /// The row as f32: `src` itself for f32, converted into `tmp` otherwise.
    fn row<'a>(src: &'a [Self], tmp: &'a mut [f32]) -> &'a [f32];
}

impl KvElem for f32 {
    fn row<'a>(src: &'a [f32], _tmp: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl KvElem for f16 {
    fn row<'a>(src: &'a [f16], tmp: &'a mut [f32]) -> &'a [f32] {
        let tmp = &mut tmp[..src.len()];
        src.convert_to_f32_slice(tmp);
        tmp
    }
}

/// Where the chunk sits in the cache.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkPos {
    /// Position of the chunk's first token.
    pub(crate) start: usize,
    /// Tokens in the chunk.
    pub(crate) n: usize,
    /// Slots of the cache's ring.
    pub(crate) slots: usize,
    /// Score columns per query head in the work space (at least the keys any query sees).
    pub(crate) max_keys: usize,
}

/// Attention of `n` queries (positions `start..start + n`, whose keys and
/// values are already in the cache) over the cached keys.
///
/// # Shapes
/// - `q`: `n × heads × head_dim` (RoPE applied).
/// - `work`: `kv_heads × shape.work_per_kv_head(max_keys)`.
/// - `out_hm`: `kv_heads × n × group × head_dim` (work space, head-major).
/// - `out`: `n × heads × head_dim`.
pub(crate) fn attention(
    kv: &LayerKv,
    shape: AttnShape,
    at: ChunkPos,
    q: &[f32],
    work: &mut [f32],
    out_hm: &mut [f32],
    out: &mut [f32],
) {
    let gd = shape.group() * shape.head_dim;
    let per_work = shape.work_per_kv_head(at.max_keys);
    let task = |(h, (o, w)): (usize, (&mut [f32], &mut [f32]))| match (&kv.k, &kv.v) {
        (KvStore::F32(k), KvStore::F32(v)) => attend_group(k, v, shape, at, h, q, w, o),
        (KvStore::F16(k), KvStore::F16(v)) => attend_group(k, v, shape, at, h, q, w, o),
        // Keys and values are always created with the same type.
        _ => o.fill(0.0),
    };
    let out_hm = &mut out_hm[..shape.kv_heads * at.n * gd];
    let work = &mut work[..shape.kv_heads * per_work];
    if shape.kv_heads == 1 {
        task((0, (out_hm, work)));
    } else {
        out_hm
            .par_chunks_mut(at.n * gd)
            .zip(work.par_chunks_mut(per_work))
            .enumerate()
            .for_each(task);
    }
    // Head-major [kv_head][token][group·d] to token-major [token][kv_head][group·d].
    for (h, src) in out_hm.chunks_exact(at.n * gd).enumerate() {
        for (t, row) in src.chunks_exact(gd).enumerate() {
            let dst = (t * shape.kv_heads + h) * gd;
            out[dst..dst + gd].copy_from_slice(row);
        }
    }
}

/// The query heads of KV head `h`, for every query of the chunk.
#[allow(clippy::too_many_arguments)]
fn attend_group<T: KvElem>(
    k: &[T],
    v: &[T],
    shape: AttnShape,
    at: ChunkPos,
    h: usize,
    q: &[f32],
    work: &mut [f32],
    out: &mut [f32],
) {
    let (d, group) = (shape.head_dim, shape.group());
    let (kv_dim, q_dim) = (shape.kv_heads * d, shape.heads * d);
    let scale = 1.0 / (d as f32).sqrt();
    let (scores, tmp) = work.split_at_mut(group * at.max_keys);
    for t in 0..at.n {
        let i = at.start + t;
        let lo = shape.window.map_or(0, |w| (i + 1).saturating_sub(w));
        let m = i + 1 - lo;
        let qt = &q[t * q_dim + h * group * d..t * q_dim + (h + 1) * group * d];
        for (jj, j) in (lo..=i).enumerate() {
            let s = (j % at.slots) * kv_dim + h * d;
            let key = T::row(&k[s..s + d], tmp);
            for (g, qh) in qt.chunks_exact(d).enumerate() {
                scores[g * at.max_keys + jj] = dot(qh, key) * scale;
            }
        }
        for g in 0..group {
            softmax(&mut scores[g * at.max_keys..g * at.max_keys + m]);
        }
        let o = &mut out[t * group * d..(t + 1) * group * d];
        o.fill(0.0);
        for (jj, j) in (lo..=i).enumerate() {
            let s = (j % at.slots) * kv_dim + h * d;
            let value = T::row(&v[s..s + d], tmp);
            for (g, og) in o.chunks_exact_mut(d).enumerate() {
                axpy(og, scores[g * at.max_keys + jj], value);
            }
        }
    }
}
