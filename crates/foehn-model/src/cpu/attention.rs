//! Grouped-query attention of a chunk of queries over the KV cache, with an
//! optional sliding window (query `i` sees key `j` iff `0 ≤ i − j < W`).
//!
//! Blocked as flash attention is: tasks of (KV head, block of queries) run in
//! parallel; each converts blocks of keys and values to f32 (from f16, f32,
//! Q8_0 or Q4_0, keys and values each their own type; quantized ones are
//! stored rotated, and the queries and the output are rotated to match)
//! once for all its queries, computes the block's scores for all its query heads at once
//! ([`VecOps::scores`]), and keeps a running max, sum and weighted sum per query head
//! (online softmax), so the work space is a few key blocks, whatever the
//! context length.

use std::sync::Mutex;

use foehn_kernels::pool::current_slot;
use foehn_kernels::{Compute, VecOps};

use super::kv::LayerKv;

/// Queries per task.
const QUERY_BLOCK: usize = 16;

/// Keys converted to f32 at a time.
const KEY_BLOCK: usize = 64;

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
}

/// Attention of `n` queries (positions `start..start + n`, whose keys and
/// values are already in the cache) over the cached keys, on `ctx`'s
/// threads.
///
/// # Shapes
/// - `q`: `n × heads × head_dim` (RoPE applied).
/// - `out`: `n × heads × head_dim`.
pub(crate) fn attention(
    ctx: &Compute,
    kv: &LayerKv,
    shape: AttnShape,
    at: ChunkPos,
    q: &[f32],
    out: &mut [f32],
    work: &AttnWork,
) {
    let job = AttnJob {
        kv,
        window: shape.window,
        at,
        row: 0,
    };
    attention_jobs(ctx, 1, &|_| job, shape, q, out, work);
}

/// One chunk of queries of [`attention_jobs`]: its rows of the queries and
/// the output, and the cache they attend over.
#[derive(Clone, Copy)]
pub(crate) struct AttnJob<'a> {
    /// The layer's keys and values in the chunk's cache.
    pub(crate) kv: &'a LayerKv,
    /// The layer's sliding window in that cache.
    pub(crate) window: Option<usize>,
    /// Where the chunk sits in that cache.
    pub(crate) at: ChunkPos,
    /// The chunk's first row in the queries and the output.
    pub(crate) row: usize,
}

/// [`attention`] of several chunks, each over its own cache (one per session
/// of a batch), as one set of parallel tasks: job `i` of `n_jobs` is
/// `job(i)`, and their rows are disjoint. `shape.window` is ignored (each
/// job has its own).
///
/// # Shapes
/// - `q`, `out`: `rows × heads × head_dim`, every job's rows inside.
pub(crate) fn attention_jobs<'a>(
    ctx: &Compute,
    n_jobs: usize,
    job: &(dyn Fn(usize) -> AttnJob<'a> + Sync),
    shape: AttnShape,
    q: &[f32],
    out: &mut [f32],
    work: &AttnWork,
) {
    let tasks_of = |j: &AttnJob| shape.kv_heads * j.at.n.div_ceil(QUERY_BLOCK);
    let total: usize = (0..n_jobs).map(|i| tasks_of(&job(i))).sum();
    let dst = OutPtr(out.as_mut_ptr());
    let q_dim = shape.heads * shape.head_dim;
    let ops = ctx.vecops();
    debug_assert!((0..n_jobs).all(|i| {
        let j = job(i);
        let end = (j.row + j.at.n) * q_dim;
        q.len() >= end && out.len() >= end
    }));
    let task = move |mut k: usize| {
        let dst = dst;
        let mut i = 0;
        let mut j = job(0);
        while k >= tasks_of(&j) {
            k -= tasks_of(&j);
            i += 1;
            j = job(i);
        }
        let (h, qb) = (k % shape.kv_heads, k / shape.kv_heads);
        let shape = AttnShape {
            window: j.window,
            ..shape
        };
        let t0 = qb * QUERY_BLOCK;
        let t1 = (t0 + QUERY_BLOCK).min(j.at.n);
        let q = &q[j.row * q_dim..];
        {
            let slot = &work.slots[current_slot() % work.slots.len()];
            let mut w = slot.lock().unwrap_or_else(|e| e.into_inner());
            let gd = shape.group() * shape.head_dim;
            let need = AttnWork::floats(shape, t1 - t0);
            if w.len() < need {
                w.resize(need, 0.0);
            }
            let (acc, rest) = w.split_at_mut((t1 - t0) * gd);
            attend(ops, j.kv, shape, j.at, h, t0..t1, q, acc, rest);
            for (t, row) in (t0..t1).zip(acc.chunks_exact(gd)) {
                // SAFETY: query t's heads of KV head h in job i's rows,
                // inside `out` (rows × heads × head_dim); tasks own disjoint
                // (job, h, t) triples and jobs disjoint rows.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        row.as_ptr(),
                        dst.0.add((j.row + t) * q_dim + h * gd),
                        gd,
                    );
                }
            }
        }
    };
    ctx.parallel_for(total, &task);
}

/// A pointer to the output that attention tasks write disjoint parts of.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements and `attention` returns after all are done.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Work space of the attention tasks: one buffer per thread slot of the
/// pool ([`current_slot`]), allocated up front so that attention allocates
/// nothing, whichever threads run its tasks.
#[derive(Debug, Default)]
pub(crate) struct AttnWork {
    slots: Vec<Mutex<Vec<f32>>>,
}

impl AttnWork {
    /// Buffers for `threads` slots (more threads share slots, behind the locks).
    pub(crate) fn new(shape: AttnShape, threads: usize) -> Self {
        let floats = Self::floats(shape, QUERY_BLOCK);
        Self {
            slots: (0..threads.max(1))
                .map(|_| Mutex::new(vec![0.0; floats]))
                .collect(),
        }
    }

    /// Floats one task over `queries` queries needs: its output, its scaled
    /// query rows, key and value blocks, scores, running maxes and sums.
    fn floats(shape: AttnShape, queries: usize) -> usize {
        let (d, rows) = (shape.head_dim, queries * shape.group());
        2 * rows * d + 2 * KEY_BLOCK * d + rows * KEY_BLOCK + 2 * rows
    }
}

impl Clone for AttnWork {
    fn clone(&self) -> Self {
        let floats = self
            .slots
            .first()
            .map_or(0, |s| s.lock().map_or(0, |v| v.len()));
        Self {
            slots: (0..self.slots.len())
                .map(|_| Mutex::new(vec![0.0; floats]))
                .collect(),
        }
    }
}

/// Queries `ts` of KV head `h`'s query heads over their keys, into `acc`
/// (`ts.len() × group × head_dim`, token-major), with `work` for the scaled
/// query rows, key and value blocks, scores and the running max/sum.
#[allow(clippy::too_many_arguments)]
fn attend(
    ops: VecOps,
    kv: &LayerKv,
    shape: AttnShape,
    at: ChunkPos,
    h: usize,
    ts: std::ops::Range<usize>,
    q: &[f32],
    acc: &mut [f32],
    work: &mut [f32],
) {
    let (k, v) = (&kv.k, &kv.v);
    let (d, group) = (shape.head_dim, shape.group());
    let (kv_dim, q_dim) = (shape.kv_heads * d, shape.heads * d);
    let sm_scale = 1.0 / (d as f32).sqrt();
    let nq = ts.len() * group;
    let (qs, work) = work.split_at_mut(nq * d);
    let (kb, work) = work.split_at_mut(KEY_BLOCK * d);
    let (vb, work) = work.split_at_mut(KEY_BLOCK * d);
    let (sc, work) = work.split_at_mut(nq * KEY_BLOCK);
    let (maxes, work) = work.split_at_mut(nq);
    let sums = &mut work[..nq];
    // Row r = ti·group + g: query head h·group + g of token ts.start + ti,
    // scaled once by 1/√d.
    for (t, rows) in ts.clone().zip(qs.chunks_exact_mut(group * d)) {
        let src = &q[t * q_dim + h * group * d..][..group * d];
        for (dst, &x) in rows.iter_mut().zip(src) {
            *dst = x * sm_scale;
        }
    }
    // Rotated keys: the queries turn the same way, so scores are kept.
    if kv.k_rot > 0 {
        ops.hadamard(qs, kv.k_rot);
    }
    maxes.fill(f32::NEG_INFINITY);
    sums.fill(0.0);
    acc.fill(0.0);
    let first = at.start + ts.start;
    let last = at.start + ts.end - 1;
    let lo_of = |i: usize| shape.window.map_or(0, |w| (i + 1).saturating_sub(w));
    let mut j0 = lo_of(first);
    while j0 <= last {
        let j1 = (j0 + KEY_BLOCK).min(last + 1);
        let nk = j1 - j0;
        for (jj, j) in (j0..j1).enumerate() {
            let s = (j % at.slots) * kv_dim + h * d;
            k.read(ops, s, &mut kb[jj * d..(jj + 1) * d]);
            v.read(ops, s, &mut vb[jj * d..(jj + 1) * d]);
        }
        // Every row against every key of the block; each row then uses the
        // keys its token sees.
        let sc = &mut sc[..nq * nk];
        ops.scores(qs, &kb[..nk * d], d, sc);
        for (ti, t) in ts.clone().enumerate() {
            let i = at.start + t;
            let (a, b) = (j0.max(lo_of(i)), j1.min(i + 1));
            if a >= b {
                continue;
            }
            let (a, b) = (a - j0, b - j0);
            for r in ti * group..(ti + 1) * group {
                let row = &mut sc[r * nk..][a..b];
                let bmax = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let m = maxes[r].max(bmax);
                let o = &mut acc[r * d..(r + 1) * d];
                if maxes[r] > f32::NEG_INFINITY && maxes[r] < m {
                    let c = (maxes[r] - m).exp();
                    sums[r] *= c;
                    ops.scale(o, c);
                }
                maxes[r] = m;
                sums[r] += ops.exp_sub(row, m);
                ops.weighted_sum(o, row, &vb[a * d..b * d]);
            }
        }
        j0 = j1;
    }
    for (r, o) in acc.chunks_exact_mut(d).enumerate().take(nq) {
        if sums[r] > 0.0 {
            ops.scale(o, 1.0 / sums[r]);
        }
    }
    // Rotated values: the output is rotated too; the rotation is its own inverse.
    if kv.v_rot > 0 {
        ops.hadamard(&mut acc[..nq * d], kv.v_rot);
    }
}
