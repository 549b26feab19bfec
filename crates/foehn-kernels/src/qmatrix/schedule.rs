//! How a product is split into tasks over the context's threads, and which
//! kernel runs them: the tile kernel over (tiles × activation rows), a
//! deferred matrix's direct kernel over blocks of rows, or the f32
//! fallback over chunks of rows. The tuning constants live here.

use std::sync::OnceLock;

use super::packing::Deferred;
use super::precision::MatScratch;
use super::storage::Storage;
use super::QMatrix;
use crate::cpu::direct::MAX_ROWS;
use crate::cpu::format::TILE;
use crate::cpu::{TileKernel, MANY_ROWS, MAX_CALL_ROWS};
use crate::{dequantize_row, Compute, KernelError};

/// Chunks of rows per thread: more than one so that uneven progress
/// balances out (a thread that is done takes the others' last chunks; see
/// `pool.rs`). 8 rather than 4: SmolLM2-135M tg128 on Zen 5, 2 threads,
/// faster in 5 of 7 alternated runs (median +5 %); pp512 and 7B decode
/// unchanged within noise.
pub(super) const CHUNKS_PER_THREAD: usize = 8;

/// Below this many weights per product, splitting over threads costs more than
/// it saves.
pub(super) const MIN_PARALLEL_WEIGHTS: usize = 1 << 15;

/// A pointer to the output that tasks of one product write disjoint parts of.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: each task of a product writes a disjoint set of elements, and the
// product returns only after every task is done.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// The scratch's per-chunk buffers, each used by one task of a product.
#[derive(Clone, Copy)]
struct BufPtr(*mut Vec<f32>);
// SAFETY: as `OutPtr`: task `c` alone uses buffer `c`.
unsafe impl Send for BufPtr {}
unsafe impl Sync for BufPtr {}

/// Activation rows per task of a prefill product: the activations a task
/// streams past each tile stay in L2 (at most one kernel call's).
pub(super) const ACT_ROWS_PER_TASK: usize = MAX_CALL_ROWS;

/// The most activation rows a deferred matrix not packed yet computes on
/// its direct kernel ([`MAX_ROWS`] at a time, re-reading the
/// weights for each call) rather than being packed first: a short prompt
/// costs a few passes over the weights, less than packing them (7B-shaped
/// Q4_K_M, 2 threads: packing ≈ 4.5 s, a pass ≈ 0.25 s).
pub(super) const DIRECT_ACT_ROWS: usize = 32;

/// Weight rows a direct product computes for every activation row before
/// moving on, so that they are read from L2 after the first call.
const DIRECT_ROWS_PER_BLOCK: usize = 64;

impl QMatrix {
    /// Rows per chunk and number of chunks for a product split over `chunks`.
    fn split(&self, chunks: usize, n: usize) -> (usize, usize) {
        let chunks = if self.rows * self.cols * n < MIN_PARALLEL_WEIGHTS {
            1
        } else {
            chunks.clamp(1, self.rows.max(1))
        };
        let per = self.rows.div_ceil(chunks).max(1);
        (per, self.rows.div_ceil(per))
    }

    /// `out[t·rows + r] = W[r] · xs[t]` for a matrix the SIMD kernels do not
    /// compute (floats, rows that are not whole units): each weight row is
    /// dequantized once, into the chunk's scratch buffer, and dotted in f32
    /// with every activation row, over chunks of rows on `ctx`'s threads.
    pub(super) fn f32_product(
        &self,
        ctx: &Compute,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut MatScratch,
    ) -> Result<(), KernelError> {
        let (per, chunks) = self.split(ctx.threads() * CHUNKS_PER_THREAD, n);
        scratch.reserve(chunks, self.cols);
        let data = self.bytes().unwrap_or(&[]);
        let (ty, rows, cols, rb) = (self.ty, self.rows, self.cols, self.row_bytes);
        let bufs = BufPtr(scratch.bufs.as_mut_ptr());
        let dst = OutPtr(out.as_mut_ptr());
        let failed = OnceLock::new();
        let ops = ctx.vecops();
        let task = |c: usize| {
            let (bufs, dst) = (bufs, dst);
            // SAFETY: `c < chunks ≤ bufs.len()` (reserved above), and task
            // `c` alone uses buffer `c`.
            let buf: &mut Vec<f32> = unsafe { &mut *bufs.0.add(c) };
            let buf = &mut buf[..cols];
            for r in c * per..((c + 1) * per).min(rows) {
                let src = data.get(r * rb..(r + 1) * rb).unwrap_or(&[]);
                if let Err(e) = dequantize_row(ty, src, buf) {
                    let _ = failed.set(e);
                    return;
                }
                for (t, x) in xs.chunks_exact(cols).take(n).enumerate() {
                    // SAFETY: `t < n` and `r < rows`: inside `out`
                    // (n × rows); rows of this chunk belong to this task.
                    unsafe { *dst.0.add(t * rows + r) = ops.dot(buf, x) };
                }
            }
        };
        ctx.parallel_for(chunks, &task);
        failed.into_inner().map_or(Ok(()), Err)
    }

    /// `kernel_product` (precision.rs) with 8-bit activations, for
    /// a packed or deferred matrix; `product_n` is the number of rows of the
    /// whole product the caller asked for (more than `n` for
    /// [`ActPrecision::Q8x2`](super::ActPrecision::Q8x2)), which decides whether a deferred matrix is
    /// packed first.
    pub(super) fn q8_product(
        &self,
        ctx: &Compute,
        xs: &[f32],
        n: usize,
        product_n: usize,
        out: &mut [f32],
        scratch: &mut MatScratch,
    ) {
        let pack_now = product_n > DIRECT_ACT_ROWS;
        if let Some((kernel, tiles)) = self.tiles(pack_now) {
            self.packed_product(ctx, kernel, tiles, xs, n, out, scratch);
        } else if let Storage::Deferred(d) = &self.storage {
            self.direct_product(ctx, d, xs, n, out, scratch);
        }
    }

    /// As [`packed_product`](Self::packed_product) for a deferred matrix
    /// not packed yet and `n ≤ DIRECT_ACT_ROWS`: the direct kernel over
    /// tasks of rows, each a run of blocks of rows computed for all `n`
    /// activation rows, up to [`MAX_ROWS`] per call.
    fn direct_product(
        &self,
        ctx: &Compute,
        d: &Deferred,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut MatScratch,
    ) {
        let (rows, cols, rb) = (self.rows, self.cols, self.row_bytes);
        scratch
            .acts
            .quantize(ctx.vecops(), xs, cols, d.kernel.format());
        let acts = &scratch.acts;
        let threads = ctx.threads();
        let tasks = if rows * cols * n >= MIN_PARALLEL_WEIGHTS && threads > 1 {
            threads * CHUNKS_PER_THREAD
        } else {
            1
        };
        // Whole passes of 16 rows per task (AVX-512's; AVX2's are 8).
        let per = rows.div_ceil(tasks).next_multiple_of(16);
        let tasks = rows.div_ceil(per);
        let dst = OutPtr(out.as_mut_ptr());
        let task = move |k: usize| {
            let dst = dst;
            let (lo, hi) = (k * per, ((k + 1) * per).min(rows));
            let mut start = 0;
            for p in &d.parts {
                let (s, e) = (lo.max(start), hi.min(start + p.rows));
                for b in (s..e).step_by(DIRECT_ROWS_PER_BLOCK) {
                    let be = (b + DIRECT_ROWS_PER_BLOCK).min(e);
                    let w = &p.bytes()[(b - start) * rb..(be - start) * rb];
                    for a0 in (0..n).step_by(MAX_ROWS) {
                        let na = MAX_ROWS.min(n - a0);
                        // SAFETY: rows b..be of output rows a0..a0 + na
                        // (stride `rows`) lie in `out` (n × rows) and
                        // belong to this task alone.
                        unsafe {
                            let at = dst.0.add(a0 * rows + b);
                            d.direct.product(w, be - b, cols, acts, a0, na, at, rows);
                        }
                    }
                }
                start += p.rows;
            }
        };
        ctx.parallel_for(tasks, &task);
        // Starts `QMatrix::pack_after_first_use`'s packer (after the product).
        d.used();
    }

    /// `out[t·rows + r] = W[r] · xs[t]` for `n` activation rows through the
    /// tile kernels (lengths checked by the callers).
    #[allow(clippy::too_many_arguments)]
    fn packed_product(
        &self,
        ctx: &Compute,
        kernel: &TileKernel,
        tiles: &[u8],
        xs: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut MatScratch,
    ) {
        let (rows, cols, fmt) = (self.rows, self.cols, kernel.format());
        scratch.acts.quantize(ctx.vecops(), xs, cols, fmt);
        let acts = &scratch.acts;
        let tb = fmt.tile_bytes(cols);
        let n_tiles = rows.div_ceil(TILE);
        let act_blocks = n.div_ceil(ACT_ROWS_PER_TASK);
        // Whole blocks for the kernel for many rows where it computes them.
        let act_rows = n.div_ceil(act_blocks);
        let act_rows = match act_rows.next_multiple_of(MANY_ROWS) {
            whole if kernel.has_many() && whole <= ACT_ROWS_PER_TASK => whole,
            _ => act_rows,
        };
        let act_blocks = n.div_ceil(act_rows);
        let threads = ctx.threads();
        let parallel = rows * cols * n >= MIN_PARALLEL_WEIGHTS && threads > 1;
        let tile_chunks = if parallel {
            (threads * CHUNKS_PER_THREAD)
                .div_ceil(act_blocks)
                .min(n_tiles)
        } else {
            1
        };
        let tiles_per_task = n_tiles.div_ceil(tile_chunks);
        let tile_chunks = n_tiles.div_ceil(tiles_per_task);
        let dst = OutPtr(out.as_mut_ptr());
        let task = move |k: usize| {
            let dst = dst;
            let (tc, ab) = (k % tile_chunks, k / tile_chunks);
            let (a0, a1) = (ab * act_rows, ((ab + 1) * act_rows).min(n));
            let mut buf = [0.0f32; MAX_CALL_ROWS * TILE];
            for t in tc * tiles_per_task..((tc + 1) * tiles_per_task).min(n_tiles) {
                let tile = &tiles[t * tb..(t + 1) * tb];
                let (r0, valid) = (t * TILE, TILE.min(rows - t * TILE));
                kernel.run_rows(cols, tile, acts, a0, a1 - a0, &mut buf);
                for j in 0..a1 - a0 {
                    // SAFETY: row a0 + j < n and columns r0..r0 + valid < rows
                    // lie inside `out` (n × rows), and no other task
                    // writes them (tasks own disjoint tiles × act rows).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            buf.as_ptr().add(j * TILE),
                            dst.0.add((a0 + j) * rows + r0),
                            valid,
                        );
                    }
                }
            }
        };
        ctx.parallel_for(tile_chunks * act_blocks, &task);
    }
}
