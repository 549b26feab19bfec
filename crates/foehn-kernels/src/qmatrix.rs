//! `QMatrix`: a weight matrix in any type of the quant-type table — the type
//! every linear layer holds, whatever file it came from — with its matrix ×
//! vector and matrix × matrix products.
//!
//! The bytes are either owned or borrowed from a shared owner (a memory-mapped
//! model file) through [`ByteSource`], so a model built from a file copies
//! nothing, or **packed** ([`QMatrix::packed`]): repacked once into the
//! 16-row tiles of [`crate::cpu::format`] that the SIMD kernels read, after
//! which the file's pages are released — for Q8_0, Q4_K and Q6_K on AVX2
//! only once a product (or [`QMatrix::pack_in_background`]) needs the tiles:
//! until then a direct kernel reads the file's bytes in place, see
//! [`QMatrix::packed`].
//!
//! Products with a packed matrix quantize the activations once per product
//! (int8, one scale per 32) and run the tile kernel of the CPU's instruction
//! set ([`crate::cpu::Isa`]) over tiles of 16 weight rows × up to 4
//! activation rows, split over rayon's pool. Unpacked matrices (floats, and
//! rows that are not whole 256-weight superblocks) dequantize one row at a
//! time and dot it in f32.
//!
//! [`ActPrecision::Q8x2`] trades compute for fidelity: the activations are
//! quantized twice, the second time what the first lost, and the kernels
//! run both as one product of twice the rows (the weights are read once).

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

use crate::cpu::act::{grow, QuantizedActs, ACT_BLOCK};
use crate::cpu::format::{Format, TILE};
use crate::cpu::{direct, format_for, pack, tile_fn, Isa};
use crate::vecops::dot;
use crate::{dequantize_row, GgmlType, KernelError};

/// Chunks of rows per rayon thread: more than one so that uneven progress
/// balances out.
const CHUNKS_PER_THREAD: usize = 4;

/// Below this many weights per product, splitting over threads costs more than
/// it saves.
const MIN_PARALLEL_WEIGHTS: usize = 1 << 15;

/// An owner of immutable bytes that weight matrices borrow from (a mapped
/// GGUF or safetensors file, a shared buffer).
///
/// Implementations must return the same bytes on every call: matrices check
/// their byte range once, when they are built.
pub trait ByteSource: Send + Sync {
    /// The owner's bytes.
    fn bytes(&self) -> &[u8];

    /// Tells the owner that `range` of its bytes will not be read again (a
    /// packed copy replaced them), so a memory-mapped owner can drop those
    /// pages from the process's resident memory. The bytes must stay
    /// readable (a mapped file simply pages them in again). Default: nothing.
    fn release(&self, range: Range<usize>) {
        let _ = range;
    }
}

impl ByteSource for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Where a matrix's bytes live.
#[derive(Clone)]
enum Storage {
    /// Bytes owned by the matrix (repacked, converted or built in memory).
    Owned(Vec<u8>),
    /// A byte range of a shared owner.
    Shared {
        source: Arc<dyn ByteSource>,
        range: Range<usize>,
    },
    /// Repacked into 16-row tiles.
    Packed { fmt: Format, tiles: AlignedBytes },
    /// Byte ranges of shared owners, computed in place by a direct kernel
    /// until a product with more than [`DIRECT_ACT_ROWS`] activation rows
    /// (or [`QMatrix::pack_in_background`]) packs them (see
    /// [`QMatrix::packed`]).
    Deferred(Arc<Deferred>),
}

/// A matrix whose packing waits for a product that needs the tiles: its
/// parts' bytes in the file's layout (one part, or the stacked parts of
/// [`QMatrix::pack_stacked`]) and, once packed, the tiles.
struct Deferred {
    fmt: Format,
    parts: Vec<SharedPart>,
    /// Weights per row and bytes per row in the file's layout.
    cols: usize,
    row_bytes: usize,
    tiles: OnceLock<AlignedBytes>,
}

/// `rows` rows in `range` of `source`'s bytes.
struct SharedPart {
    source: Arc<dyn ByteSource>,
    range: Range<usize>,
    rows: usize,
}

impl SharedPart {
    fn bytes(&self) -> &[u8] {
        // The range was checked against the source when the matrix was
        // built, and a source returns the same bytes on every call.
        self.source.bytes().get(self.range.clone()).unwrap_or(&[])
    }
}

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
const PACK_RUN_ROWS: usize = 1024;

impl Deferred {
    /// The tiles, packed now if no product has needed them yet.
    fn tiles(&self) -> &AlignedBytes {
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
            pack_tiles(&self.fmt, rows, self.cols, self.row_bytes, &parts)
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

/// Bytes in 64-byte aligned storage (cache lines, 512-bit loads), zeroed
/// when made. Large buffers are anonymous memory maps that the kernel may
/// back with transparent huge pages: a 7B model's packed weights then fault
/// in by the 2 MB instead of by the 4 KB page, which matters for the time to
/// first token.
enum AlignedBytes {
    Lines { lines: Vec<CacheLine>, len: usize },
    Map(memmap2::MmapMut),
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct CacheLine([u8; 64]);

/// Buffers from this size on are memory maps.
const MAP_FROM: usize = 1 << 20;

impl AlignedBytes {
    /// `len` zero bytes.
    fn zeroed(len: usize) -> Self {
        if len >= MAP_FROM {
            if let Ok(map) = memmap2::MmapOptions::new().len(len).map_anon() {
                // Only a hint: without it the pages are 4 KB.
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                return Self::Map(map);
            }
        }
        Self::Lines {
            lines: vec![CacheLine([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Lines { len, .. } => *len,
            Self::Map(map) => map.len(),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            // SAFETY: as `as_slice`, through a unique borrow.
            Self::Lines { lines, len } => unsafe {
                std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), *len)
            },
            Self::Map(map) => &mut map[..],
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            // SAFETY: `lines` holds `lines.len() * 64 >= len` initialized
            // bytes (CacheLine is a plain byte array).
            Self::Lines { lines, len } => unsafe {
                std::slice::from_raw_parts(lines.as_ptr().cast::<u8>(), *len)
            },
            Self::Map(map) => &map[..],
        }
    }
}

impl Clone for AlignedBytes {
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.len());
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        copy
    }
}

/// A `rows × cols` weight matrix of one ggml type, stored row by row as in
/// GGUF (each row is `cols / block_size` blocks).
#[derive(Clone)]
pub struct QMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    storage: Storage,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QMatrix")
            .field("ty", &self.ty)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field(
                "storage",
                &match self.storage {
                    Storage::Owned(_) => "owned",
                    Storage::Shared { .. } => "shared",
                    Storage::Packed { .. } => "packed",
                    Storage::Deferred(ref d) if d.tiles.get().is_some() => "packed",
                    Storage::Deferred(_) => "deferred",
                },
            )
            .finish()
    }
}

/// How finely the SIMD kernels quantize the activations of a product.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ActPrecision {
    /// 8-bit levels with a scale per 32 values, as llama.cpp: the fastest;
    /// each value is off by up to half a step (`max|x| / 254` of its block).
    #[default]
    Q8,
    /// The 8-bit levels and, quantized the same way, what they lost: about
    /// 15 bits per value, so products match f32 activations to ~1e-4
    /// relative. The kernels compute both as one product of twice the
    /// activation rows: up to twice the compute of [`Q8`](Self::Q8) for a
    /// long prompt, little more for a decode step, whose cost is reading
    /// the weights.
    Q8x2,
}

/// Per-chunk f32 buffers for the products, allocated once so that a product
/// allocates nothing (beyond rayon's own bookkeeping), and the precision of
/// the products that use them.
#[derive(Debug, Clone, Default)]
pub struct MatScratch {
    bufs: Vec<Vec<f32>>,
    acts: QuantizedActs,
    precision: ActPrecision,
    /// [`ActPrecision::Q8x2`]: the activations and their remainders
    /// (`2n × cols`), and the product of both (`2n × rows`).
    wide_xs: Vec<f32>,
    wide_out: Vec<f32>,
}

impl MatScratch {
    /// Buffers for products with rows of up to `max_cols` weights, one per
    /// chunk of rows (a few chunks per thread of rayon's current pool).
    pub fn new(max_cols: usize) -> Self {
        let chunks = rayon::current_num_threads().max(1) * CHUNKS_PER_THREAD;
        let mut acts = QuantizedActs::default();
        // Room for one row of activations, so that a decode step allocates nothing.
        acts.reserve(1, max_cols.next_multiple_of(ACT_BLOCK));
        Self {
            bufs: (0..chunks).map(|_| vec![0.0; max_cols]).collect(),
            acts,
            ..Self::default()
        }
    }

    /// Sets how the products that use this scratch quantize activations;
    /// with [`ActPrecision::Q8x2`], makes room for the products of one
    /// activation row with matrices of up to `max_rows` rows, so that a
    /// decode step allocates nothing.
    pub fn set_precision(&mut self, precision: ActPrecision, max_rows: usize) {
        self.precision = precision;
        if precision == ActPrecision::Q8x2 {
            let cols = self.bufs.first().map_or(0, Vec::len);
            self.acts.reserve(2, cols.next_multiple_of(ACT_BLOCK));
            grow(&mut self.wide_xs, 2 * cols, 0.0);
            grow(&mut self.wide_out, 2 * max_rows, 0.0);
        }
    }

    /// How the products that use this scratch quantize activations.
    pub fn precision(&self) -> ActPrecision {
        self.precision
    }

    /// Number of row chunks a product is split into.
    pub fn chunks(&self) -> usize {
        self.bufs.len().max(1)
    }

    /// Makes sure there are `chunks` buffers of at least `cols` floats; only
    /// allocates when they are too few or too short.
    fn reserve(&mut self, chunks: usize, cols: usize) {
        if self.bufs.len() < chunks {
            self.bufs.resize_with(chunks, Vec::new);
        }
        for b in &mut self.bufs[..chunks] {
            if b.len() < cols {
                b.resize(cols, 0.0);
            }
        }
    }
}

fn bad_len(ty: GgmlType, reason: String) -> KernelError {
    KernelError::BadLength {
        ty: ty.name(),
        reason,
    }
}

impl QMatrix {
    /// A matrix over owned bytes.
    ///
    /// # Shapes
    /// - `bytes`: `rows × ty.row_bytes(cols)` bytes, row after row.
    ///
    /// # Errors
    /// [`KernelError::Unsupported`] when `ty` cannot be dequantized;
    /// [`KernelError::BadLength`] when `cols` is not a whole number of blocks
    /// or `bytes` has the wrong length.
    pub fn from_owned(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Self, KernelError> {
        let row_bytes = Self::check(ty, rows, cols, bytes.len())?;
        Ok(Self {
            ty,
            rows,
            cols,
            row_bytes,
            storage: Storage::Owned(bytes),
        })
    }

    /// A matrix borrowing `range` of `source`'s bytes (no copy).
    ///
    /// # Shapes
    /// - `source.bytes()[range]`: `rows × ty.row_bytes(cols)` bytes, row after row.
    ///
    /// # Errors
    /// As [`from_owned`](Self::from_owned), and [`KernelError::BadLength`] when
    /// `range` lies outside the source.
    pub fn from_shared(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        source: Arc<dyn ByteSource>,
        range: Range<usize>,
    ) -> Result<Self, KernelError> {
        let available = source.bytes().len();
        if range.start > range.end || range.end > available {
            return Err(bad_len(
                ty,
                format!("byte range {range:?} lies outside a source of {available} bytes"),
            ));
        }
        let row_bytes = Self::check(ty, rows, cols, range.len())?;
        Ok(Self {
            ty,
            rows,
            cols,
            row_bytes,
            storage: Storage::Shared { source, range },
        })
    }

    /// An F32 matrix holding a copy of `data`.
    ///
    /// # Shapes
    /// - `data`: `rows × cols`, row-major.
    ///
    /// # Errors
    /// [`KernelError::BadLength`] when `data.len() != rows × cols`.
    pub fn from_f32(rows: usize, cols: usize, data: &[f32]) -> Result<Self, KernelError> {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_owned(GgmlType::F32, rows, cols, bytes)
    }

    /// Checks that the type can be computed and that `len` bytes hold exactly
    /// `rows` rows of `cols` elements; returns the bytes per row.
    fn check(ty: GgmlType, rows: usize, cols: usize, len: usize) -> Result<usize, KernelError> {
        if !ty.can_dequantize() {
            return Err(KernelError::Unsupported {
                op: "dequantize",
                ty: ty.name(),
            });
        }
        let row_bytes = ty.row_bytes(cols).ok_or_else(|| {
            bad_len(
                ty,
                format!(
                    "rows of {cols} elements are not a whole number of {}-element blocks",
                    ty.block_size()
                ),
            )
        })?;
        let expected = row_bytes
            .checked_mul(rows)
            .ok_or_else(|| bad_len(ty, format!("{rows} rows of {row_bytes} bytes overflow")))?;
        if len != expected {
            return Err(bad_len(
                ty,
                format!("{len} bytes for {rows} rows of {cols} elements, expected {expected}"),
            ));
        }
        Ok(row_bytes)
    }

    /// The weight type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Number of rows (outputs of a product).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (inputs of a product).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Whether the bytes are borrowed from a shared owner (a mapped file).
    pub fn is_shared(&self) -> bool {
        matches!(self.storage, Storage::Shared { .. })
    }

    /// Whether the matrix is repacked into tiles for the SIMD kernels (a
    /// deferred matrix once a product has packed it).
    pub fn is_packed(&self) -> bool {
        match &self.storage {
            Storage::Packed { .. } => true,
            Storage::Deferred(d) => d.tiles.get().is_some(),
            _ => false,
        }
    }

    /// Whether the matrix was handed to the SIMD kernels with its packing
    /// deferred ([`packed`](Self::packed)), packed since or not.
    pub fn is_deferred(&self) -> bool {
        matches!(self.storage, Storage::Deferred(_))
    }

    /// Packs the deferred matrices among `matrices` ([`packed`](Self::packed))
    /// of the types where that pays (the k-quants, not Q8_0) one after the
    /// other on a thread of their own (one core: the products
    /// keep the others), so that decode moves to the tile kernels soon after
    /// a model starts, while its first tokens run on the direct kernels. A
    /// matrix a product has packed meanwhile is skipped, and so are the
    /// matrices of a model dropped before the thread reaches them. Returns
    /// the thread, or `None` when there is nothing to pack (or no thread
    /// could be started: products then pack as they need to).
    pub fn pack_in_background<'a>(
        matrices: impl IntoIterator<Item = &'a QMatrix>,
    ) -> Option<std::thread::JoinHandle<()>> {
        let todo: Vec<std::sync::Weak<Deferred>> = matrices
            .into_iter()
            .filter_map(|m| match &m.storage {
                Storage::Deferred(d)
                    if d.tiles.get().is_none() && direct::pack_in_background(m.ty) =>
                {
                    Some(Arc::downgrade(d))
                }
                _ => None,
            })
            .collect();
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
                    for d in todo.iter().filter_map(std::sync::Weak::upgrade) {
                        d.tiles();
                    }
                })
            })
            .ok()
    }

    /// The matrix's bytes in GGUF layout, row after row; `None` once handed
    /// to the SIMD kernels ([`packed`](Self::packed)).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.storage {
            Storage::Owned(v) => Some(v),
            // The range was checked against the source when the matrix was built,
            // and a source returns the same bytes on every call.
            Storage::Shared { source, range } => source.bytes().get(range.clone()),
            Storage::Packed { .. } | Storage::Deferred(_) => None,
        }
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
    /// has a direct kernel on this CPU (Q8_0, Q4_K and Q6_K on AVX2) is not
    /// packed yet: products with up to 32 activation rows (decode, short
    /// prompts) read the owner's bytes in place, with the tile kernel's
    /// results bit for bit, and the first product with more rows packs it
    /// (then releases the owner's bytes). A
    /// model then starts without copying such weights — the time to first
    /// token of a 7B model is mostly the page faults of that copy — and
    /// [`pack_in_background`](Self::pack_in_background) packs the k-quants
    /// while its first tokens run.
    pub fn packed(self) -> Self {
        let Some(fmt) = format_for(self.ty, Isa::active()) else {
            return self;
        };
        if !pack::cols_ok(&fmt, self.cols) || self.rows == 0 || self.bytes().is_none() {
            return self;
        }
        Self::pack_all(std::slice::from_ref(&self), fmt)
    }

    /// `parts` (unpacked, of one type and row length, every part but the
    /// last a whole number of tiles) packed one after the other into one
    /// matrix, or deferred as [`packed`](Self::packed) says.
    fn pack_all(parts: &[QMatrix], fmt: Format) -> QMatrix {
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
        let storage = match shared {
            Some(parts) if direct::available(ty, Isa::active()) => {
                Storage::Deferred(Arc::new(Deferred {
                    fmt,
                    parts,
                    cols,
                    row_bytes,
                    tiles: OnceLock::new(),
                }))
            }
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
                Storage::Packed { fmt, tiles }
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

    /// The tiles and their format, if the matrix is packed (a deferred one
    /// packed now when `pack_now`); `None` for a matrix computed otherwise.
    fn tiles(&self, pack_now: bool) -> Option<(&Format, &[u8])> {
        match &self.storage {
            Storage::Packed { fmt, tiles } => Some((fmt, tiles.as_slice())),
            Storage::Deferred(d) => {
                let tiles = if pack_now {
                    Some(d.tiles())
                } else {
                    d.tiles.get()
                };
                tiles.map(|t| (&d.fmt, t.as_slice()))
            }
            _ => None,
        }
    }

    /// Dequantizes row `i` into `dst`.
    ///
    /// # Shapes
    /// - `dst`: `cols`.
    ///
    /// # Errors
    /// [`KernelError::BadLength`] when `i` is out of range or `dst` has the wrong length.
    pub fn dequantize_row_into(&self, i: usize, dst: &mut [f32]) -> Result<(), KernelError> {
        if i >= self.rows || dst.len() != self.cols {
            return Err(bad_len(
                self.ty,
                format!(
                    "row {i} into {} floats, for a matrix of {} × {}",
                    dst.len(),
                    self.rows,
                    self.cols
                ),
            ));
        }
        if let Some((fmt, tiles)) = self.tiles(false) {
            let tb = fmt.tile_bytes(self.cols);
            let t = i / TILE;
            let tile = tiles.get(t * tb..(t + 1) * tb).unwrap_or(&[]);
            pack::dequantize_tile_row(fmt, tile, i % TILE, dst);
            return Ok(());
        }
        let (bytes, i) = match &self.storage {
            Storage::Deferred(d) => {
                // The part that holds row i, and the row's index in it.
                let mut i = i;
                let mut part = &d.parts[0];
                for p in &d.parts {
                    part = p;
                    if i < p.rows {
                        break;
                    }
                    i -= p.rows;
                }
                (part.bytes(), i)
            }
            _ => (self.bytes().unwrap_or(&[]), i),
        };
        let src = bytes
            .get(i * self.row_bytes..(i + 1) * self.row_bytes)
            .ok_or_else(|| {
                bad_len(
                    self.ty,
                    "the matrix's bytes are shorter than its shape".into(),
                )
            })?;
        dequantize_row(self.ty, src, dst)
    }

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

    /// The matrices `parts` packed into one, their rows one after the other,
    /// so that one product computes them all — e.g. the query, key and value
    /// projections of a block, which read the same input. Each part is
    /// packed straight into its place (no per-part buffer to copy from) and
    /// its file pages are released. `None` (nothing packed) unless every
    /// part is an unpacked matrix of the same packable type and columns and
    /// every part but the last has a whole number of 16-row tiles.
    pub fn pack_stacked(parts: &[QMatrix]) -> Option<QMatrix> {
        let first = parts.first()?;
        let fmt = format_for(first.ty, Isa::active())?;
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
        Some(Self::pack_all(parts, fmt))
    }

    /// `out = W · x`: one activation vector.
    ///
    /// # Shapes
    /// - `x`: `cols`.
    /// - `out`: `rows`.
    ///
    /// # Errors
    /// [`KernelError::BadLength`] when a length does not match.
    pub fn matvec(
        &self,
        x: &[f32],
        out: &mut [f32],
        scratch: &mut MatScratch,
    ) -> Result<(), KernelError> {
        if x.len() != self.cols || out.len() != self.rows {
            return Err(bad_len(
                self.ty,
                format!(
                    "matvec of a {} × {} matrix with x of {} and out of {}",
                    self.rows,
                    self.cols,
                    x.len(),
                    out.len()
                ),
            ));
        }
        if self.rows == 0 {
            return Ok(());
        }
        if self.kernel_product(x, 1, out, scratch) {
            return Ok(());
        }
        let (per, chunks) = self.split(scratch.chunks(), 1);
        scratch.reserve(chunks, self.cols);
        let data = self.bytes().unwrap_or(&[]);
        let (ty, cols, rb) = (self.ty, self.cols, self.row_bytes);
        let work =
            |(c, (out, buf)): (usize, (&mut [f32], &mut Vec<f32>))| -> Result<(), KernelError> {
                let buf = &mut buf[..cols];
                for (k, o) in out.iter_mut().enumerate() {
                    let r = c * per + k;
                    let src = data.get(r * rb..(r + 1) * rb).unwrap_or(&[]);
                    dequantize_row(ty, src, buf)?;
                    *o = dot(buf, x);
                }
                Ok(())
            };
        if chunks == 1 {
            work((0, (out, &mut scratch.bufs[0])))
        } else {
            out.par_chunks_mut(per)
                .zip(scratch.bufs[..chunks].par_iter_mut())
                .enumerate()
                .try_for_each(work)
        }
    }

    /// `out[t] = W · xs[t]` for `n` activation rows: each weight row is
    /// dequantized once and used by every activation row.
    ///
    /// # Shapes
    /// - `xs`: `n × cols`, row-major.
    /// - `out`: `n × rows`, row-major.
    ///
    /// # Errors
    /// [`KernelError::BadLength`] when the lengths do not describe the same `n`.
    pub fn matmul(
        &self,
        xs: &[f32],
        out: &mut [f32],
        scratch: &mut MatScratch,
    ) -> Result<(), KernelError> {
        let n = xs.len().checked_div(self.cols).unwrap_or(0);
        if self.cols == 0 || xs.len() != n * self.cols || out.len() != n * self.rows {
            return Err(bad_len(
                self.ty,
                format!(
                    "matmul of a {} × {} matrix with xs of {} and out of {}",
                    self.rows,
                    self.cols,
                    xs.len(),
                    out.len()
                ),
            ));
        }
        if n <= 1 {
            return self.matvec(xs, out, scratch);
        }
        if self.rows == 0 {
            return Ok(());
        }
        if self.kernel_product(xs, n, out, scratch) {
            return Ok(());
        }
        let (per, chunks) = self.split(scratch.chunks(), n);
        scratch.reserve(chunks, self.cols);
        // Each chunk of weight rows writes the same columns of every output row:
        // hand each chunk its pieces of the n output rows.
        let mut pieces: Vec<Vec<&mut [f32]>> = (0..chunks).map(|_| Vec::with_capacity(n)).collect();
        for out_row in out.chunks_exact_mut(self.rows) {
            for (c, piece) in out_row.chunks_mut(per).enumerate() {
                if let Some(p) = pieces.get_mut(c) {
                    p.push(piece);
                }
            }
        }
        let data = self.bytes().unwrap_or(&[]);
        let (ty, cols, rb) = (self.ty, self.cols, self.row_bytes);
        let work = |(c, (mut outs, buf)): (usize, (Vec<&mut [f32]>, &mut Vec<f32>))| -> Result<(), KernelError> {
            let buf = &mut buf[..cols];
            let rows_here = outs.first().map_or(0, |o| o.len());
            for k in 0..rows_here {
                let r = c * per + k;
                let src = data.get(r * rb..(r + 1) * rb).unwrap_or(&[]);
                dequantize_row(ty, src, buf)?;
                for (o, x) in outs.iter_mut().zip(xs.chunks_exact(cols)) {
                    o[k] = dot(buf, x);
                }
            }
            Ok(())
        };
        if chunks == 1 {
            let outs = pieces.pop().unwrap_or_default();
            work((0, (outs, &mut scratch.bufs[0])))
        } else {
            pieces
                .into_par_iter()
                .zip(scratch.bufs[..chunks].par_iter_mut())
                .enumerate()
                .try_for_each(work)
        }
    }
}

/// A pointer to the output that tasks of one product write disjoint parts of.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task of a product writes a disjoint set of elements, and the
// product returns only after every task is done.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Activation rows per task of a prefill product: the activations a task
/// streams past each tile stay in L2.
const ACT_ROWS_PER_TASK: usize = 64;

/// Activation rows per kernel call.
const ACT_ROWS_PER_CALL: usize = 4;

/// The most activation rows a deferred matrix not packed yet computes on
/// its direct kernel ([`direct::MAX_ROWS`] at a time, re-reading the
/// weights for each call) rather than being packed first: a short prompt
/// costs a few passes over the weights, less than packing them (7B-shaped
/// Q4_K_M, 2 threads: packing ≈ 4.5 s, a pass ≈ 0.25 s).
const DIRECT_ACT_ROWS: usize = 32;

/// [`ActPrecision::Q8x2`]: activation rows per product of twice as many
/// (the rows and their remainders), so that its buffers stay small (one
/// task's worth of activation rows, [`ACT_ROWS_PER_TASK`]).
const Q8X2_ACT_ROWS: usize = ACT_ROWS_PER_TASK / 2;

/// Weight rows a direct product computes for every activation row before
/// moving on, so that they are read from L2 after the first call.
const DIRECT_ROWS_PER_BLOCK: usize = 64;

impl QMatrix {
    /// `out[t·rows + r] = W[r] · xs[t]` for `n` activation rows through the
    /// SIMD kernels, if the matrix was handed to them (lengths checked by
    /// the callers): the tile kernels, or a deferred matrix's direct kernel
    /// for up to [`DIRECT_ACT_ROWS`] rows, at the scratch's precision.
    /// `false` (nothing computed) for a matrix computed row by row in f32.
    fn kernel_product(
        &self,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut MatScratch,
    ) -> bool {
        let fmt = match &self.storage {
            Storage::Packed { fmt, .. } => fmt,
            Storage::Deferred(d) => &d.fmt,
            _ => return false,
        };
        if scratch.precision == ActPrecision::Q8 {
            self.q8_product(xs, n, n, out, scratch);
            return true;
        }
        // Q8x2: per run of activation rows, [xs; remainders] as one product
        // of twice the rows, summed in pairs.
        let (cols, rows) = (self.cols, self.rows);
        let mut wide_xs = std::mem::take(&mut scratch.wide_xs);
        let mut wide_out = std::mem::take(&mut scratch.wide_out);
        for (xs, out) in xs
            .chunks(Q8X2_ACT_ROWS * cols)
            .zip(out.chunks_mut(Q8X2_ACT_ROWS * rows))
        {
            let m = xs.len() / cols;
            grow(&mut wide_xs, 2 * m * cols, 0.0);
            grow(&mut wide_out, 2 * m * rows, 0.0);
            let (lead, rest) = wide_xs[..2 * m * cols].split_at_mut(m * cols);
            lead.copy_from_slice(xs);
            scratch.acts.quantize(xs, cols, fmt);
            scratch.acts.remainder(xs, rest);
            let both = &mut wide_out[..2 * m * rows];
            self.q8_product(&wide_xs[..2 * m * cols], 2 * m, n, both, scratch);
            let (hi, lo) = both.split_at(m * rows);
            for ((o, &h), &l) in out.iter_mut().zip(hi).zip(lo) {
                *o = h + l;
            }
        }
        scratch.wide_xs = wide_xs;
        scratch.wide_out = wide_out;
        true
    }

    /// [`kernel_product`](Self::kernel_product) with 8-bit activations, for
    /// a packed or deferred matrix; `product_n` is the number of rows of the
    /// whole product the caller asked for (more than `n` for
    /// [`ActPrecision::Q8x2`]), which decides whether a deferred matrix is
    /// packed first.
    fn q8_product(
        &self,
        xs: &[f32],
        n: usize,
        product_n: usize,
        out: &mut [f32],
        scratch: &mut MatScratch,
    ) {
        let pack_now = product_n > DIRECT_ACT_ROWS;
        if let Some((fmt, tiles)) = self.tiles(pack_now) {
            self.packed_product(fmt, tiles, xs, n, out, scratch);
        } else if let Storage::Deferred(d) = &self.storage {
            self.direct_product(d, xs, n, out, scratch);
        }
    }

    /// As [`packed_product`](Self::packed_product) for a deferred matrix
    /// not packed yet and `n ≤ DIRECT_ACT_ROWS`: the direct kernel over
    /// tasks of rows, each a run of blocks of rows computed for all `n`
    /// activation rows, up to [`direct::MAX_ROWS`] per call.
    fn direct_product(
        &self,
        d: &Deferred,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut MatScratch,
    ) {
        let (ty, rows, cols, rb) = (self.ty, self.rows, self.cols, self.row_bytes);
        scratch.acts.quantize(xs, cols, &d.fmt);
        let acts = &scratch.acts;
        let threads = rayon::current_num_threads().max(1);
        let tasks = if rows * cols * n >= MIN_PARALLEL_WEIGHTS && threads > 1 {
            threads * CHUNKS_PER_THREAD
        } else {
            1
        };
        // Whole passes of eight rows per task (the kernel's widest).
        let per = rows.div_ceil(tasks).next_multiple_of(8);
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
                    for a0 in (0..n).step_by(direct::MAX_ROWS) {
                        let na = direct::MAX_ROWS.min(n - a0);
                        // SAFETY: the matrix is deferred only where the
                        // direct kernel is available on the active
                        // instruction set; rows b..be of output rows
                        // a0..a0 + na (stride `rows`) lie in `out`
                        // (n × rows) and belong to this task alone.
                        unsafe {
                            let at = dst.0.add(a0 * rows + b);
                            direct::product(ty, w, be - b, cols, acts, a0, na, at, rows);
                        }
                    }
                }
                start += p.rows;
            }
        };
        crate::pool::parallel_for(tasks, &task);
    }

    /// `out[t·rows + r] = W[r] · xs[t]` for `n` activation rows through the
    /// tile kernels (lengths checked by the callers).
    fn packed_product(
        &self,
        fmt: &Format,
        tiles: &[u8],
        xs: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut MatScratch,
    ) {
        let (rows, cols) = (self.rows, self.cols);
        scratch.acts.quantize(xs, cols, fmt);
        let acts = &scratch.acts;
        let kernel = tile_fn(Isa::active());
        let tb = fmt.tile_bytes(cols);
        let n_tiles = rows.div_ceil(TILE);
        let act_blocks = n.div_ceil(ACT_ROWS_PER_TASK);
        let act_rows = n.div_ceil(act_blocks);
        let threads = rayon::current_num_threads().max(1);
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
            let mut buf = [0.0f32; ACT_ROWS_PER_CALL * TILE];
            for t in tc * tiles_per_task..((tc + 1) * tiles_per_task).min(n_tiles) {
                let tile = &tiles[t * tb..(t + 1) * tb];
                let (r0, valid) = (t * TILE, TILE.min(rows - t * TILE));
                let mut a = a0;
                while a < a1 {
                    let nr = ACT_ROWS_PER_CALL.min(a1 - a);
                    kernel(fmt, cols, tile, acts, a, nr, &mut buf);
                    for j in 0..nr {
                        // SAFETY: row a + j < n and columns r0..r0 + valid < rows
                        // lie inside `out` (n × rows), and no other task
                        // writes them (tasks own disjoint tiles × act rows).
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                buf.as_ptr().add(j * TILE),
                                dst.0.add((a + j) * rows + r0),
                                valid,
                            );
                        }
                    }
                    a += nr;
                }
            }
        };
        crate::pool::parallel_for(tile_chunks * act_blocks, &task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::random_bytes;
    use rand::{Rng, SeedableRng};

    /// `W · x` for each row of `xs`, dequantizing whole rows and summing in
    /// f64, with the tolerance f32 rounding allows for each output
    /// (proportional to `Σ |w·x|`).
    fn naive(
        ty: GgmlType,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        xs: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let rb = ty.row_bytes(cols).unwrap();
        let mut w = vec![0.0f32; cols];
        let n = xs.len() / cols * rows;
        let (mut out, mut tol) = (vec![0.0f32; n], vec![0.0f32; n]);
        for r in 0..rows {
            dequantize_row(ty, &bytes[r * rb..(r + 1) * rb], &mut w).unwrap();
            for (t, x) in xs.chunks_exact(cols).enumerate() {
                let p = w.iter().zip(x).map(|(&a, &b)| f64::from(a) * f64::from(b));
                out[t * rows + r] = p.clone().sum::<f64>() as f32;
                tol[t * rows + r] = (1e-5 * p.map(f64::abs).sum::<f64>() + 1e-6) as f32;
            }
        }
        (out, tol)
    }

    fn assert_close(got: &[f32], (want, tol): &(Vec<f32>, Vec<f32>), what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, ((g, w), t)) in got.iter().zip(want).zip(tol).enumerate() {
            assert!(
                (g - w).abs() <= *t,
                "{what}: [{i}] {g} vs {w} (tolerance {t})"
            );
        }
    }

    #[test]
    fn products_match_naive_reference() {
        use GgmlType::*;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let types = [
            F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL,
            IQ4_XS,
        ];
        for ty in types {
            let block = ty.block_size();
            let col_choices: Vec<usize> = if block == 1 {
                vec![1, 37, 300]
            } else {
                vec![block, 3 * block]
            };
            for &cols in &col_choices {
                for rows in [1, 7, 33, 130, 301] {
                    let bytes = random_bytes(&mut rng, ty, rows, cols);
                    let m = QMatrix::from_owned(ty, rows, cols, bytes.clone()).unwrap();
                    let mut scratch = MatScratch::new(cols);
                    for n in [1, 2, 5] {
                        let xs: Vec<f32> =
                            (0..n * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                        let want = naive(ty, &bytes, rows, cols, &xs);
                        let mut got = vec![f32::NAN; n * rows];
                        m.matmul(&xs, &mut got, &mut scratch).unwrap();
                        assert_close(&got, &want, &format!("{ty} {rows}x{cols} n={n}"));
                        if n == 1 {
                            let mut got = vec![f32::NAN; rows];
                            m.matvec(&xs, &mut got, &mut scratch).unwrap();
                            assert_close(&got, &want, &format!("{ty} matvec {rows}x{cols}"));
                        }
                    }
                }
            }
        }
    }

    /// Normalized mean squared error of `got` against `want` (as llama.cpp's
    /// test-backend-ops).
    fn nmse(got: &[f32], want: &[f32]) -> f64 {
        let err: f64 = got
            .iter()
            .zip(want)
            .map(|(g, w)| (f64::from(*g) - f64::from(*w)).powi(2))
            .sum();
        let norm: f64 = want.iter().map(|w| f64::from(*w).powi(2)).sum();
        err / norm.max(1e-30)
    }

    /// Packed products (activations quantized to int8) against the f64
    /// reference of the unpacked weights: NMSE ≤ 5e-4 for every type, every
    /// instruction set this CPU has, odd row counts and activation counts
    /// (tails of tiles and of the 4-row kernel calls); outputs poisoned.
    #[test]
    fn packed_products_match_the_reference() {
        use GgmlType::*;
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for ty in [
            Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS,
        ] {
            for (rows, cols) in [(1, 256), (37, 512), (130, 768), (300, 256)] {
                let bytes = random_bytes(&mut rng, ty, rows, cols);
                let m = QMatrix::from_owned(ty, rows, cols, bytes.clone())
                    .unwrap()
                    .packed();
                assert!(m.is_packed(), "{ty}");
                let mut scratch = MatScratch::new(cols);
                // NMSE over every output of the four products together (a
                // single dot can be small next to its terms).
                let (mut all_got, mut all_want) = (Vec::new(), Vec::new());
                for n in [1, 3, 6, 70] {
                    let xs: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                    let (want, _) = naive(ty, &bytes, rows, cols, &xs);
                    let mut got = vec![f32::NAN; n * rows];
                    m.matmul(&xs, &mut got, &mut scratch).unwrap();
                    if n == 1 {
                        let mut got1 = vec![f32::NAN; rows];
                        m.matvec(&xs, &mut got1, &mut scratch).unwrap();
                        assert_eq!(got1, got, "{ty} matvec {rows}x{cols}");
                    }
                    assert!(
                        got.iter().all(|v| v.is_finite()),
                        "{ty} {rows}x{cols} n={n}"
                    );
                    all_got.extend(got);
                    all_want.extend(want);
                }
                let e = nmse(&all_got, &all_want);
                assert!(e <= 5e-4, "{ty} {rows}x{cols}: nmse {e}");
                // Rows read back from the tiles are the original rows.
                let mut a = vec![0.0; cols];
                let mut b = vec![0.0; cols];
                let rb = ty.row_bytes(cols).unwrap();
                m.dequantize_row_into(rows - 1, &mut a).unwrap();
                dequantize_row(ty, &bytes[(rows - 1) * rb..rows * rb], &mut b).unwrap();
                assert_eq!(a, b, "{ty}");
            }
        }
    }

    /// [`ActPrecision::Q8x2`]: packed and (where deferred) direct products
    /// against the f64 reference, every output within the bound the two
    /// quantizations allow (each value off by at most `max|x| / 64516` of
    /// its 32-block, or 256-superblock for the k-quants: half a step of the
    /// remainder, whose step is at most `1/127` of half the first's), and
    /// NMSE a thousand times below that of [`ActPrecision::Q8`] on the
    /// same products.
    #[test]
    fn two_pass_products_match_f32_activations() {
        use GgmlType::*;
        let mut rng = rand::rngs::StdRng::seed_from_u64(29);
        for ty in [
            Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS,
        ] {
            for (rows, cols) in [(37, 512), (130, 256)] {
                let bytes = random_bytes(&mut rng, ty, rows, cols);
                let source: Arc<dyn ByteSource> = Arc::new(bytes.clone());
                let len = bytes.len();
                for deferred in [false, true] {
                    let m = if deferred {
                        QMatrix::from_shared(ty, rows, cols, source.clone(), 0..len)
                            .unwrap()
                            .packed()
                    } else {
                        QMatrix::from_owned(ty, rows, cols, bytes.clone())
                            .unwrap()
                            .packed()
                    };
                    assert!(m.is_packed() || m.is_deferred(), "{ty}");
                    let mut q8 = MatScratch::new(cols);
                    let mut q8x2 = MatScratch::new(cols);
                    q8x2.set_precision(ActPrecision::Q8x2, rows);
                    assert_eq!(q8x2.precision(), ActPrecision::Q8x2);
                    let (mut got8, mut got16, mut all_want) = (Vec::new(), Vec::new(), Vec::new());
                    // 40 rows pack a deferred matrix: both kernels are run.
                    for n in [1, 3, 40] {
                        // Blocks of unlike magnitudes (the k-quants' superblock
                        // scales give small blocks fewer bits).
                        let mut xs: Vec<f32> =
                            (0..n * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                        for b in xs.chunks_mut(ACT_BLOCK) {
                            let scale = 10f32.powf(rng.gen_range(-2.0f32..0.0));
                            b.iter_mut().for_each(|v| *v *= scale);
                        }
                        let (want, tol) = naive(ty, &bytes, rows, cols, &xs);
                        // Scales are chosen per 32 values, or per 256 (k-quants).
                        let unit = ty.block_size().max(ACT_BLOCK);
                        let mut got = vec![f32::NAN; n * rows];
                        m.matmul(&xs, &mut got, &mut q8x2).unwrap();
                        let mut w = vec![0.0f32; cols];
                        let rb = ty.row_bytes(cols).unwrap();
                        for r in 0..rows {
                            dequantize_row(ty, &bytes[r * rb..(r + 1) * rb], &mut w).unwrap();
                            for t in 0..n {
                                let x = &xs[t * cols..(t + 1) * cols];
                                let bound: f64 = w
                                    .chunks(unit)
                                    .zip(x.chunks(unit))
                                    .map(|(w, x)| {
                                        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                                        let wsum: f64 = w.iter().map(|v| f64::from(v.abs())).sum();
                                        wsum * f64::from(amax) / 64516.0
                                    })
                                    .sum();
                                let (g, e) = (got[t * rows + r], want[t * rows + r]);
                                let lim = bound as f32 + tol[t * rows + r];
                                assert!(
                                    (g - e).abs() <= lim,
                                    "{ty} {rows}x{cols} deferred={deferred} n={n} [{t},{r}]: {g} vs {e} (bound {lim})"
                                );
                            }
                        }
                        if n == 1 {
                            let mut got1 = vec![f32::NAN; rows];
                            m.matvec(&xs, &mut got1, &mut q8x2).unwrap();
                            assert_eq!(got1, got, "{ty} matvec");
                        }
                        let mut plain = vec![f32::NAN; n * rows];
                        m.matmul(&xs, &mut plain, &mut q8).unwrap();
                        got8.extend(plain);
                        got16.extend(got);
                        all_want.extend(want);
                    }
                    let (e8, e16) = (nmse(&got8, &all_want), nmse(&got16, &all_want));
                    assert!(
                        e16 <= e8 / 1000.0,
                        "{ty} {rows}x{cols} deferred={deferred}: nmse q8x2 {e16} vs q8 {e8}"
                    );
                }
            }
        }
    }

    /// Setting [`ActPrecision::Q8x2`] makes room for a one-row product with
    /// the widest matrix: a decode step's products reuse the buffers.
    #[test]
    fn two_pass_scratch_is_reserved_for_one_row() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(31);
        let (rows, cols) = (300, 512);
        let bytes = random_bytes(&mut rng, GgmlType::Q4_0, rows, cols);
        let m = QMatrix::from_owned(GgmlType::Q4_0, rows, cols, bytes)
            .unwrap()
            .packed();
        let mut scratch = MatScratch::new(cols);
        scratch.set_precision(ActPrecision::Q8x2, rows);
        let ptrs = |s: &MatScratch| (s.wide_xs.as_ptr(), s.wide_out.as_ptr(), s.acts.qs.as_ptr());
        let before = ptrs(&scratch);
        let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let mut out = vec![0.0; rows];
        m.matvec(&x, &mut out, &mut scratch).unwrap();
        assert_eq!(ptrs(&scratch), before);
    }

    #[test]
    fn stacked_matrices_compute_their_parts() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(23);
        let cols = 256;
        let raw: Vec<QMatrix> = [32, 16, 21]
            .iter()
            .map(|&rows| {
                let bytes = random_bytes(&mut rng, GgmlType::Q4_K, rows, cols);
                QMatrix::from_owned(GgmlType::Q4_K, rows, cols, bytes).unwrap()
            })
            .collect();
        let stacked = QMatrix::pack_stacked(&raw).unwrap();
        let parts: Vec<QMatrix> = raw.iter().cloned().map(QMatrix::packed).collect();
        assert_eq!(stacked.rows(), 69);
        let n = 3;
        let xs: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let mut scratch = MatScratch::new(cols);
        let mut all = vec![f32::NAN; n * 69];
        stacked.matmul(&xs, &mut all, &mut scratch).unwrap();
        let mut at = 0;
        for p in &parts {
            let mut one = vec![f32::NAN; n * p.rows()];
            p.matmul(&xs, &mut one, &mut scratch).unwrap();
            for t in 0..n {
                assert_eq!(
                    &all[t * 69 + at..t * 69 + at + p.rows()],
                    &one[t * p.rows()..(t + 1) * p.rows()]
                );
            }
            at += p.rows();
        }
        // A part that does not end on a tile boundary can only come last, and
        // packed, float or mixed matrices are not stacked.
        assert!(QMatrix::pack_stacked(&[raw[2].clone(), raw[0].clone()]).is_none());
        assert!(QMatrix::pack_stacked(&[parts[0].clone(), parts[1].clone()]).is_none());
        let f = QMatrix::from_f32(1, 32, &[0.0; 32]).unwrap();
        assert!(QMatrix::pack_stacked(&[f]).is_none());
        let q8 = QMatrix::from_owned(
            GgmlType::Q8_0,
            16,
            cols,
            random_bytes(&mut rng, GgmlType::Q8_0, 16, cols),
        )
        .unwrap();
        assert!(QMatrix::pack_stacked(&[raw[0].clone(), q8]).is_none());
    }

    /// A shared source that records which of its bytes it was told to
    /// release (at least once).
    struct Counting(Vec<u8>, std::sync::Mutex<Vec<bool>>);

    impl Counting {
        fn new(bytes: Vec<u8>) -> Self {
            let n = bytes.len();
            Counting(bytes, std::sync::Mutex::new(vec![false; n]))
        }

        /// How many distinct bytes were released.
        fn released(&self) -> usize {
            self.1.lock().unwrap().iter().filter(|&&r| r).count()
        }
    }

    impl ByteSource for Counting {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
        fn release(&self, range: Range<usize>) {
            self.1.lock().unwrap()[range].fill(true);
        }
    }

    /// Shared Q8_0, Q4_K and Q6_K matrices on AVX2 are deferred: products
    /// with up to 32 activation rows read the file's bytes and equal the
    /// packed matrix's bit for bit, rows dequantize the same, and the first
    /// product with more rows packs the matrix and releases the source's
    /// bytes. Stacked parts (one of them not a whole tile) included.
    #[test]
    fn deferred_matrices_compute_as_packed_ones() {
        for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            deferred_computes_as_packed(ty);
        }
    }

    fn deferred_computes_as_packed(ty: GgmlType) {
        let (cols, sizes) = (512, [32usize, 16, 21]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(29);
        let rb = ty.row_bytes(cols).unwrap();
        let bodies: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&r| random_bytes(&mut rng, ty, r, cols))
            .collect();
        let mut file = vec![0x11u8; 5];
        let mut ranges = Vec::new();
        for b in &bodies {
            ranges.push(file.len()..file.len() + b.len());
            file.extend_from_slice(b);
        }
        let source = Arc::new(Counting::new(file));
        let shared: Vec<QMatrix> = sizes
            .iter()
            .zip(&ranges)
            .map(|(&r, range)| {
                QMatrix::from_shared(ty, r, cols, source.clone(), range.clone()).unwrap()
            })
            .collect();
        let owned: Vec<QMatrix> = sizes
            .iter()
            .zip(&bodies)
            .map(|(&r, b)| QMatrix::from_owned(ty, r, cols, b.clone()).unwrap())
            .collect();
        let deferred = direct::available(ty, Isa::active());
        let lazy = QMatrix::pack_stacked(&shared).unwrap();
        let eager = QMatrix::pack_stacked(&owned).unwrap();
        assert!(eager.is_packed() && !eager.is_deferred());
        assert_eq!(
            lazy.is_deferred(),
            deferred,
            "deferred exactly where a direct kernel is"
        );
        assert_eq!(lazy.is_packed(), !deferred);
        let rows = lazy.rows();
        let mut scratch = MatScratch::new(cols);
        let check = |m: &QMatrix, scratch: &mut MatScratch, n: usize| {
            let xs: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let mut got = vec![f32::NAN; n * rows];
            let mut want = vec![f32::NAN; n * rows];
            m.matmul(&xs, &mut got, scratch).unwrap();
            eager.matmul(&xs, &mut want, scratch).unwrap();
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{ty} n {n} [{k}]: {g} vs {w}");
            }
        };
        for n in (1..=direct::MAX_ROWS + 1).chain([DIRECT_ACT_ROWS]) {
            check(&lazy, &mut scratch, n);
        }
        let mut a = vec![f32::NAN; cols];
        let mut b = vec![0.0; cols];
        for (r, (part, row)) in [(40, (1, 8)), (68, (2, 20)), (0, (0, 0))] {
            lazy.dequantize_row_into(r, &mut a).unwrap();
            dequantize_row(ty, &bodies[part][row * rb..(row + 1) * rb], &mut b).unwrap();
            assert_eq!(a, b, "{ty} row {r}");
        }
        if deferred {
            assert!(!lazy.is_packed());
            assert_eq!(source.released(), 0);
        }
        check(&lazy, &mut scratch, DIRECT_ACT_ROWS + 1);
        assert!(lazy.is_packed());
        let total: usize = bodies.iter().map(Vec::len).sum();
        assert_eq!(source.released(), total);
        check(&lazy, &mut scratch, 1);
        lazy.dequantize_row_into(40, &mut a).unwrap();
        dequantize_row(ty, &bodies[1][8 * rb..9 * rb], &mut b).unwrap();
        assert_eq!(a, b);
    }

    /// Background packing packs the deferred k-quant matrices (same products
    /// after, the sources' bytes released), leaves Q8_0 to its first long
    /// prefill, and has nothing to do once the k-quants are packed.
    #[test]
    fn deferred_matrices_are_packed_in_the_background() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(31);
        let (rows, cols) = (37, 512);
        let xs: Vec<f32> = (0..cols).map(|i| (i % 13) as f32 / 6.0 - 1.0).collect();
        let mut scratch = MatScratch::new(cols);
        let mut before = Vec::new();
        let mut matrices = Vec::new();
        for ty in [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q6_K] {
            let body = random_bytes(&mut rng, ty, rows, cols);
            let len = body.len();
            let source = Arc::new(Counting::new(body));
            let m = QMatrix::from_shared(ty, rows, cols, source.clone(), 0..len)
                .unwrap()
                .packed();
            let mut out = vec![f32::NAN; rows];
            m.matvec(&xs, &mut out, &mut scratch).unwrap();
            before.push(out);
            matrices.push((m, source, len));
        }
        let packer = QMatrix::pack_in_background(matrices.iter().map(|m| &m.0));
        if !matrices[0].0.is_deferred() {
            assert!(packer.is_none(), "nothing deferred, nothing to pack");
            return;
        }
        packer.expect("deferred matrices to pack").join().unwrap();
        for ((m, source, len), before) in matrices.iter().zip(&before) {
            let q8 = m.ty() == GgmlType::Q8_0;
            assert_eq!(m.is_packed(), !q8, "{m:?}");
            assert_eq!(source.released(), if q8 { 0 } else { *len });
            let mut after = vec![f32::NAN; rows];
            m.matvec(&xs, &mut after, &mut scratch).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(before), bits(&after), "{m:?}");
        }
        assert!(QMatrix::pack_in_background(matrices.iter().map(|m| &m.0)).is_none());
    }

    /// A matrix of several packing runs reads back its rows across the
    /// runs' boundaries, and every source byte is released.
    #[test]
    fn packing_in_runs_keeps_every_row() {
        let ty = GgmlType::Q4_0;
        let (rows, cols) = (2 * PACK_RUN_ROWS + 37, 64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(37);
        let body = random_bytes(&mut rng, ty, rows, cols);
        let len = body.len();
        let source = Arc::new(Counting::new(body.clone()));
        let m = QMatrix::from_shared(ty, rows, cols, source.clone(), 0..len)
            .unwrap()
            .packed();
        if !m.is_packed() {
            return; // no packed format on this CPU
        }
        assert_eq!(source.released(), len);
        let rb = ty.row_bytes(cols).unwrap();
        let (mut a, mut b) = (vec![f32::NAN; cols], vec![0.0; cols]);
        for r in [
            0,
            PACK_RUN_ROWS - 1,
            PACK_RUN_ROWS,
            2 * PACK_RUN_ROWS + 1,
            rows - 1,
        ] {
            m.dequantize_row_into(r, &mut a).unwrap();
            dequantize_row(ty, &body[r * rb..(r + 1) * rb], &mut b).unwrap();
            assert_eq!(a, b, "row {r}");
        }
    }

    #[test]
    fn shared_bytes_are_borrowed_by_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (rows, cols) = (9, 64);
        let body = random_bytes(&mut rng, GgmlType::Q8_0, rows, cols);
        let mut all = vec![0xAAu8; 10];
        all.extend_from_slice(&body);
        all.extend_from_slice(&[0x55; 7]);
        let end = 10 + body.len();
        let source: Arc<dyn ByteSource> = Arc::new(all);
        let m = QMatrix::from_shared(GgmlType::Q8_0, rows, cols, source.clone(), 10..end).unwrap();
        assert!(m.is_shared());
        assert_eq!(m.bytes(), Some(&body[..]));
        let x: Vec<f32> = (0..cols).map(|i| i as f32 * 0.01).collect();
        let mut out = vec![0.0; rows];
        m.matvec(&x, &mut out, &mut MatScratch::new(cols)).unwrap();
        assert_close(
            &out,
            &naive(GgmlType::Q8_0, &body, rows, cols, &x),
            "shared",
        );
        // A range one byte too long, or past the end, is refused.
        assert!(
            QMatrix::from_shared(GgmlType::Q8_0, rows, cols, source.clone(), 10..end + 1).is_err()
        );
        assert!(QMatrix::from_shared(GgmlType::Q8_0, rows, cols, source, 10..end + 100).is_err());
    }

    #[test]
    fn bad_shapes_and_types_are_errors() {
        assert!(matches!(
            QMatrix::from_owned(GgmlType::IQ2_XXS, 1, 256, vec![0; 66]),
            Err(KernelError::Unsupported { .. })
        ));
        assert!(QMatrix::from_owned(GgmlType::Q4_0, 2, 33, vec![0; 36]).is_err());
        assert!(QMatrix::from_owned(GgmlType::Q4_0, 2, 32, vec![0; 35]).is_err());
        let m = QMatrix::from_f32(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let mut s = MatScratch::new(3);
        let mut out = [0.0; 2];
        assert!(m.matvec(&[1.0, 1.0], &mut out, &mut s).is_err());
        assert!(m.matmul(&[1.0; 5], &mut [0.0; 4], &mut s).is_err());
        m.matvec(&[1.0, 0.0, -1.0], &mut out, &mut s).unwrap();
        assert_eq!(out, [-2.0, -2.0]);
        let mut row = [0.0; 3];
        m.dequantize_row_into(1, &mut row).unwrap();
        assert_eq!(row, [4.0, 5.0, 6.0]);
        assert!(m.dequantize_row_into(2, &mut row).is_err());
    }

    #[test]
    fn dot_handles_tails() {
        for n in [0, 1, 7, 8, 9, 17, 64, 65] {
            let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.5).collect();
            let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!(
                (dot(&a, &b) - want).abs() <= 1e-3 * (1.0 + want.abs()),
                "n={n}"
            );
        }
    }
}
