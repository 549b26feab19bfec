//! `QMatrix`: a weight matrix in any type of the quant-type table — the type
//! every linear layer holds, whatever file it came from — with its matrix ×
//! vector and matrix × matrix products.
//!
//! The bytes are either owned or borrowed from a shared owner (a memory-mapped
//! model file) through [`ByteSource`], so a model built from a file copies
//! nothing. The products dequantize one weight row at a time into a per-chunk
//! f32 buffer and dot it with the activation rows; rows are split in chunks
//! over rayon's pool. Faster kernels replace the inside of
//! [`QMatrix::matvec`] / [`QMatrix::matmul`] without changing their callers.

use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

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
                },
            )
            .finish()
    }
}

/// Per-chunk f32 buffers for the products, allocated once so that a product
/// allocates nothing (beyond rayon's own bookkeeping).
#[derive(Debug, Clone, Default)]
pub struct MatScratch {
    bufs: Vec<Vec<f32>>,
}

impl MatScratch {
    /// Buffers for products with rows of up to `max_cols` weights, one per
    /// chunk of rows (a few chunks per thread of rayon's current pool).
    pub fn new(max_cols: usize) -> Self {
        let chunks = rayon::current_num_threads().max(1) * CHUNKS_PER_THREAD;
        Self {
            bufs: (0..chunks).map(|_| vec![0.0; max_cols]).collect(),
        }
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

/// Dot product of two f32 slices (over the shorter length), with eight
/// independent accumulators so that the compiler can vectorize it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ta.iter().zip(tb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
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

    /// All the matrix's bytes, row after row.
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Owned(v) => v,
            // The range was checked against the source when the matrix was built,
            // and a source returns the same bytes on every call.
            Storage::Shared { source, range } => source.bytes().get(range.clone()).unwrap_or(&[]),
        }
    }

    /// The bytes of row `i`.
    ///
    /// # Panics
    /// When `i >= self.rows()`, like slice indexing; see
    /// [`dequantize_row_into`](Self::dequantize_row_into) for a checked use.
    pub fn row(&self, i: usize) -> &[u8] {
        assert!(i < self.rows, "row {i} of a matrix with {} rows", self.rows);
        &self.bytes()[i * self.row_bytes..(i + 1) * self.row_bytes]
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
        let src = self
            .bytes()
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
        let (per, chunks) = self.split(scratch.chunks(), 1);
        scratch.reserve(chunks, self.cols);
        let data = self.bytes();
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
        let data = self.bytes();
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

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};
    use rand::{Rng, SeedableRng};

    /// Byte offsets of the f16 scale fields in one block of `ty`, which random
    /// bytes could turn into inf/NaN.
    fn f16_fields(ty: GgmlType) -> &'static [usize] {
        use GgmlType::*;
        match ty {
            Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ4_XS => &[0],
            Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
            Q2_K => &[80, 82],
            Q3_K => &[108],
            Q6_K => &[208],
            _ => &[],
        }
    }

    /// Random `rows × cols` bytes of `ty` with finite, moderate values.
    fn random_bytes(rng: &mut impl Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
        let n = rows * cols;
        match ty {
            GgmlType::F32 => (0..n)
                .flat_map(|_| rng.gen_range(-1.0f32..1.0).to_le_bytes())
                .collect(),
            GgmlType::F16 => (0..n)
                .flat_map(|_| f16::from_f32(rng.gen_range(-1.0f32..1.0)).to_le_bytes())
                .collect(),
            GgmlType::BF16 => (0..n)
                .flat_map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0)).to_le_bytes())
                .collect(),
            _ => {
                let len = ty.row_bytes(cols).unwrap() * rows;
                let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                for block in bytes.chunks_exact_mut(ty.type_size()) {
                    for &off in f16_fields(ty) {
                        let v = f16::from_f32(rng.gen_range(0.001f32..0.05));
                        block[off..off + 2].copy_from_slice(&v.to_le_bytes());
                    }
                }
                bytes
            }
        }
    }

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
        assert_eq!(m.bytes(), &body[..]);
        assert_eq!(m.row(3), &body[3 * 68..4 * 68]);
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
