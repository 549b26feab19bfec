//! Packing a matrix into the tiles of its type's format, with the tile
//! kernel chosen once for the context's instruction set — at load, or
//! deferred: computed in place by a direct kernel until a product needs the
//! tiles, or until the background packer gets to it.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::storage::{AlignedBytes, ByteSource, SharedPart, Storage};
use super::QMatrix;
use crate::cpu::direct::DirectKernel;
use crate::cpu::format::{Format, TILE};
use crate::cpu::{pack, SupportedIsa, TileKernel};
use crate::Compute;

/// A matrix whose packing waits for a product that needs the tiles: its
/// parts' bytes in the file's layout (one part, or the stacked parts of
/// [`QMatrix::pack_stacked`]) and, once packed, the tiles.
pub(super) struct Deferred {
    /// The tile kernel chosen for the tiles, and their format.
    pub(super) kernel: TileKernel,
    /// The direct kernel that computes the file's bytes until then.
    pub(super) direct: DirectKernel,
    pub(super) parts: Vec<SharedPart>,
    /// Weights per row and bytes per row in the file's layout.
    pub(super) cols: usize,
    pub(super) row_bytes: usize,
    pub(super) tiles: OnceLock<AlignedBytes>,
    /// What the first direct product on the matrix starts (see
    /// [`QMatrix::pack_after_first_use`]), and whether there is one.
    first_use: Mutex<Option<Hook>>,
    hooked: AtomicBool,
}

/// Work started once, by the first direct product on any matrix that holds
/// it.
type Hook = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

/// Rows in the file's layout to pack: `rows` rows of `bytes`, and the owner
/// to tell once they are packed.
struct PackPart<'a> {
    bytes: &'a [u8],
    rows: usize,
    owner: Option<(&'a dyn ByteSource, Range<usize>)>,
}

/// The parts' rows packed one after the other into one buffer of tiles
/// (every part but the last a whole number of tiles); each shared owner is
/// told to release its bytes as soon as they are packed, a run of rows at a
/// time.
fn pack_tiles(
    fmt: &Format,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    parts: &[PackPart<'_>],
) -> AlignedBytes {
    let tb = fmt.tile_bytes(cols);
    let mut tiles = AlignedBytes::zeroed(rows.div_ceil(TILE) * tb);
    let mut at = 0;
    for p in parts {
        let len = p.rows.div_ceil(TILE) * tb;
        let out = &mut tiles.as_mut_slice()[at..at + len];
        for r0 in (0..p.rows).step_by(PACK_RUN_ROWS) {
            let r1 = (r0 + PACK_RUN_ROWS).min(p.rows);
            let dst = &mut out[r0 / TILE * tb..r1.div_ceil(TILE) * tb];
            let src = &p.bytes[r0 * row_bytes..r1 * row_bytes];
            pack::pack_into(fmt, r1 - r0, cols, row_bytes, src, dst);
            if let Some((source, range)) = &p.owner {
                source.release(range.start + r0 * row_bytes..range.start + r1 * row_bytes);
            }
        }
        at += len;
    }
    tiles
}

/// Rows packed before their source bytes are released (a multiple of
/// [`TILE`]): a matrix's file pages and its tiles are resident together for
/// one run at a time, not for the whole matrix (SmolLM2's 30 MB Q8_0 output
/// matrix, packed while the model runs, raised peak RSS by up to 20 MB).
pub(super) const PACK_RUN_ROWS: usize = 1024;

impl Deferred {
    /// Runs the first-use hook, if the matrix holds one (after a direct
    /// product; only the first call finds it).
    pub(super) fn used(&self) {
        if !self.hooked.load(Ordering::Acquire) {
            return;
        }
        self.hooked.store(false, Ordering::Relaxed);
        let hook = self.first_use.lock().ok().and_then(|mut h| h.take());
        let start = hook.and_then(|h| h.lock().ok().and_then(|mut f| f.take()));
        if let Some(start) = start {
            start();
        }
    }

    /// The tiles, packed now if no product has needed them yet.
    pub(super) fn tiles(&self) -> &AlignedBytes {
        let mut packed_here = false;
        let tiles = self.tiles.get_or_init(|| {
            packed_here = true;
            let parts: Vec<PackPart<'_>> = self
                .parts
                .iter()
                .map(|p| PackPart {
                    bytes: p.bytes(),
                    rows: p.rows,
                    owner: Some((&*p.source, p.range.clone())),
                })
                .collect();
            let rows = self.parts.iter().map(|p| p.rows).sum();
            pack_tiles(
                self.kernel.format(),
                rows,
                self.cols,
                self.row_bytes,
                &parts,
            )
        });
        if packed_here {
            // Again, now that products use the tiles: a direct product that
            // ran while the runs were released paged some of them back in
            // (7B Q8_0 packed in the background under decode: +1 GB RSS).
            for p in &self.parts {
                p.source.release(p.range.clone());
            }
        }
        tiles
    }
}

impl QMatrix {
    /// Packs deferred matrices ([`packed`](Self::packed)) one after the
    /// other on a thread of their own (one core: the products keep the
    /// others), so that decode moves to the tile kernels soon after a model
    /// starts, while its first tokens run on the direct kernels: first those
    /// of `first` (matrices whose products never have many activation rows,
    /// such as the output projection, which no prefill would pack), then
    /// those of `matrices`. A matrix a product has packed meanwhile is skipped, and so are
    /// the matrices of a model dropped before the thread reaches them.
    /// Returns the thread, or `None` when there is nothing to pack (or no
    /// thread could be started: products then pack as they need to).
    pub fn pack_in_background<'a>(
        first: &[&'a QMatrix],
        matrices: impl IntoIterator<Item = &'a QMatrix>,
    ) -> Option<std::thread::JoinHandle<()>> {
        Self::spawn_packer(Self::background_todo(first, matrices))
    }

    /// As [`pack_in_background`](Self::pack_in_background), but the thread
    /// starts only when the first direct product on a matrix of `first`
    /// (or, where `first` has none deferred, on any of the matrices) is
    /// done: a model calls this at load, and its first token (whose forward
    /// pass ends with the output projection, in `first`) does not share the
    /// cores with the packer, and an idle model has no packer thread. 7B
    /// Q8_0 on AMD Zen 5, `generate -n 1`: the packer started at load took
    /// the first token from 1.14 s to 1.53–1.57 s.
    pub fn pack_after_first_use<'a>(
        first: &[&'a QMatrix],
        matrices: impl IntoIterator<Item = &'a QMatrix>,
    ) {
        let todo = Self::background_todo(first, matrices);
        if todo.is_empty() {
            return;
        }
        let gate = match Self::background_todo(first, []) {
            g if g.is_empty() => todo.clone(),
            g => g,
        };
        let start: Box<dyn FnOnce() + Send> = Box::new(move || {
            // No thread: products pack as they need to.
            let _ = Self::spawn_packer(todo);
        });
        let hook: Hook = Arc::new(Mutex::new(Some(start)));
        for d in gate.iter().filter_map(Weak::upgrade) {
            if let Ok(mut h) = d.first_use.lock() {
                *h = Some(hook.clone());
                d.hooked.store(true, Ordering::Release);
            }
        }
    }

    /// Packs `todo` in order on a thread of its own; `None` when there is
    /// nothing to pack or no thread started.
    fn spawn_packer(todo: Vec<Weak<Deferred>>) -> Option<std::thread::JoinHandle<()>> {
        if todo.is_empty() {
            return None;
        }
        let one_core = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .ok()?;
        std::thread::Builder::new()
            .name("foehn-pack".into())
            .spawn(move || {
                one_core.install(|| {
                    for d in todo.iter().filter_map(Weak::upgrade) {
                        d.tiles();
                    }
                })
            })
            .ok()
    }

    /// Packs now, on the calling thread, what
    /// [`pack_in_background`](Self::pack_in_background) packs for the same
    /// matrices, and returns once all of it is packed (a matrix another
    /// thread is packing is waited for, not packed twice; this thread
    /// starts from the other end of the list, so the two meet halfway): a
    /// benchmark then times the steady state, not decode steps beside the
    /// packer.
    pub fn pack_deferred_now<'a>(
        first: &[&'a QMatrix],
        matrices: impl IntoIterator<Item = &'a QMatrix>,
    ) {
        for d in Self::background_todo(first, matrices).iter().rev() {
            if let Some(d) = d.upgrade() {
                d.tiles();
            }
        }
    }

    /// The deferred matrices of `first`, then of `matrices`, not packed yet.
    fn background_todo<'a>(
        first: &[&'a QMatrix],
        matrices: impl IntoIterator<Item = &'a QMatrix>,
    ) -> Vec<Weak<Deferred>> {
        first
            .iter()
            .copied()
            .chain(matrices)
            .filter_map(|m| match &m.storage {
                Storage::Deferred(d) if d.tiles.get().is_none() => Some(Arc::downgrade(d)),
                _ => None,
            })
            .collect()
    }

    /// This matrix repacked into the tiles the SIMD kernels read, when its
    /// type has a kernel and its rows are whole units (32 weights, 256 for
    /// the k-quants); otherwise the matrix unchanged. A shared owner is told
    /// to release the original bytes ([`ByteSource::release`]) so they do not
    /// stay resident next to the packed copy.
    ///
    /// The packed matrix computes the same values: its rows dequantize to the
    /// same f32 bits as the original's.
    ///
    /// **Deferred packing**: a matrix borrowed from a shared owner whose type
    /// has a direct kernel on the context's instruction set and whose row of
    /// the quant-type table lets packing wait (Q8_0, Q4_K and Q6_K on AVX2 and AVX-512 VNNI) is not
    /// packed yet: products with up to 32 activation rows (decode, short
    /// prompts) read the owner's bytes in place, with the tile kernel's
    /// results bit for bit, and the first product with more rows packs it
    /// (then releases the owner's bytes). A
    /// model then starts without copying such weights — the time to first
    /// token of a 7B model is mostly the page faults of that copy — and
    /// [`pack_in_background`](Self::pack_in_background) packs them while its
    /// first tokens run.
    pub fn packed(self, ctx: &Compute) -> Self {
        let Some(fmt) = Format::for_isa(self.ty, ctx.isa().isa()) else {
            return self;
        };
        if !pack::cols_ok(&fmt, self.cols) || self.rows == 0 || self.bytes().is_none() {
            return self;
        }
        Self::pack_all(std::slice::from_ref(&self), fmt, ctx.isa())
    }

    /// `parts` (unpacked, of one type and row length, every part but the
    /// last a whole number of tiles) packed one after the other into one
    /// matrix, or deferred as [`packed`](Self::packed) says.
    fn pack_all(parts: &[QMatrix], fmt: Format, isa: SupportedIsa) -> QMatrix {
        let kernel = TileKernel::select(fmt, isa);
        let first = &parts[0];
        let (ty, cols, row_bytes) = (first.ty, first.cols, first.row_bytes);
        let rows = parts.iter().map(|p| p.rows).sum();
        let shared: Option<Vec<SharedPart>> = parts
            .iter()
            .map(|p| match &p.storage {
                Storage::Shared { source, range } => Some(SharedPart {
                    source: Arc::clone(source),
                    range: range.clone(),
                    rows: p.rows,
                }),
                _ => None,
            })
            .collect();
        let storage = match (shared, DirectKernel::select(ty, isa)) {
            (Some(parts), Some(direct)) => Storage::Deferred(Arc::new(Deferred {
                kernel,
                direct,
                parts,
                cols,
                row_bytes,
                tiles: OnceLock::new(),
                first_use: Mutex::new(None),
                hooked: AtomicBool::new(false),
            })),
            _ => {
                let parts: Vec<PackPart<'_>> = parts
                    .iter()
                    .map(|p| PackPart {
                        bytes: p.bytes().unwrap_or(&[]),
                        rows: p.rows,
                        owner: match &p.storage {
                            Storage::Shared { source, range } => Some((&**source, range.clone())),
                            _ => None,
                        },
                    })
                    .collect();
                let tiles = pack_tiles(&fmt, rows, cols, row_bytes, &parts);
                Storage::Packed { kernel, tiles }
            }
        };
        QMatrix {
            ty,
            rows,
            cols,
            row_bytes,
            storage,
        }
    }

    /// The tiles and their kernel, if the matrix is packed (a deferred one
    /// packed now when `pack_now`); `None` for a matrix computed otherwise.
    pub(super) fn tiles(&self, pack_now: bool) -> Option<(&TileKernel, &[u8])> {
        match &self.storage {
            Storage::Packed { kernel, tiles } => Some((kernel, tiles.as_slice())),
            Storage::Deferred(d) => {
                let tiles = if pack_now {
                    Some(d.tiles())
                } else {
                    d.tiles.get()
                };
                tiles.map(|t| (&d.kernel, t.as_slice()))
            }
            _ => None,
        }
    }

    /// The matrices `parts` packed into one, their rows one after the other,
    /// so that one product computes them all — e.g. the query, key and value
    /// projections of a block, which read the same input. Each part is
    /// packed straight into its place (no per-part buffer to copy from) and
    /// its file pages are released. `None` (nothing packed) unless every
    /// part is an unpacked matrix of the same packable type and columns and
    /// every part but the last has a whole number of 16-row tiles.
    pub fn pack_stacked(parts: &[QMatrix], ctx: &Compute) -> Option<QMatrix> {
        let first = parts.first()?;
        let fmt = Format::for_isa(first.ty, ctx.isa().isa())?;
        if !pack::cols_ok(&fmt, first.cols) {
            return None;
        }
        for (i, p) in parts.iter().enumerate() {
            let whole_tiles = i + 1 == parts.len() || p.rows % TILE == 0;
            if p.ty != first.ty || p.cols != first.cols || p.rows == 0 || !whole_tiles {
                return None;
            }
            // Unpacked: bytes in the file's layout.
            p.bytes()?;
        }
        Some(Self::pack_all(parts, fmt, ctx.isa()))
    }
}
