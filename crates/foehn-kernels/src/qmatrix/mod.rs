//! `QMatrix`: a weight matrix in any type of the quant-type table — the type
//! every linear layer holds, whatever file it came from — with its matrix ×
//! vector and matrix × matrix products.
//!
//! The bytes are either owned or borrowed from a shared owner (a memory-mapped
//! model file) through [`ByteSource`], so a model built from a file copies
//! nothing, or **packed** ([`QMatrix::packed`]): repacked once into the
//! 16-row tiles of [`crate::cpu::format`] that the SIMD kernels read, after
//! which the file's pages are released — for the types whose row of the
//! quant-type table lets packing wait (Q8_0, Q4_K and Q6_K, on AVX2 and AVX-512 VNNI) only
//! once a product (or [`QMatrix::pack_in_background`]) needs the tiles:
//! until then a direct kernel reads the file's bytes in place, see
//! [`QMatrix::packed`].
//!
//! Products with a packed matrix quantize the activations once per product
//! (int8, one scale per 32) and run the tile kernel of the CPU's instruction
//! set ([`crate::cpu::Isa`]) over tiles of 16 weight rows × up to 4
//! activation rows (up to 64 per call on AMX, for prefill), split over the
//! threads of the [`Compute`] context passed to every product. Unpacked matrices (floats, and rows that are not whole
//! 256-weight superblocks) dequantize one row at a time and dot it in f32.
//!
//! By job: `storage.rs` (where the bytes live), `packing.rs` (tiles, the
//! deferred and background packing), `schedule.rs` (how a product is split
//! into tasks and which kernel runs them), `precision.rs` (how activations
//! are quantized, and the scratch buffers).
//!
//! [`ActPrecision::Q8x2`] trades compute for fidelity: the activations are
//! quantized twice, the second time what the first lost, and the kernels
//! run both as one product of twice the rows (the weights are read once).

mod packing;
mod precision;
mod prompt;
mod schedule;
mod storage;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::Arc;

pub use self::precision::{ActPrecision, MatScratch};
pub use self::storage::ByteSource;
use self::storage::Storage;
use crate::cpu::format::TILE;
use crate::cpu::pack;
use crate::{dequantize_row, Compute, GgmlType, KernelError};

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
        if let Some((kernel, tiles)) = self.tiles(false) {
            let fmt = kernel.format();
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

    /// `out = W · x`: one activation vector, on `ctx`'s threads.
    ///
    /// # Shapes
    /// - `x`: `cols`.
    /// - `out`: `rows`.
    ///
    /// # Errors
    /// [`KernelError::BadLength`] when a length does not match.
    pub fn matvec(
        &self,
        ctx: &Compute,
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
        self.product(ctx, x, 1, out, scratch)
    }

    /// `out[t] = W · xs[t]` for `n` activation rows, on `ctx`'s threads:
    /// each weight row is read once and used by every activation row.
    ///
    /// # Shapes
    /// - `xs`: `n × cols`, row-major.
    /// - `out`: `n × rows`, row-major.
    ///
    /// # Errors
    /// [`KernelError::BadLength`] when the lengths do not describe the same `n`.
    pub fn matmul(
        &self,
        ctx: &Compute,
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
            return self.matvec(ctx, xs, out, scratch);
        }
        self.product(ctx, xs, n, out, scratch)
    }

    /// `out[t·rows + r] = W[r] · xs[t]` for `n` activation rows (lengths
    /// checked): through the SIMD kernels at the scratch's precision, or
    /// row by row in f32 for a matrix they do not compute.
    fn product(
        &self,
        ctx: &Compute,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut MatScratch,
    ) -> Result<(), KernelError> {
        if self.rows == 0 {
            return Ok(());
        }
        if self.kernel_product(ctx, xs, n, out, scratch) {
            return Ok(());
        }
        self.f32_product(ctx, xs, n, out, scratch)
    }
}
