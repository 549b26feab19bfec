//! QMatrix's products, packing and storage against plain references.

use std::sync::{Arc, OnceLock};

use super::packing::PACK_RUN_ROWS;
use super::schedule::DIRECT_ACT_ROWS;
use super::*;
use crate::cpu::act::ACT_BLOCK;
use crate::cpu::direct::{DirectKernel, MAX_ROWS};

/// One context for every test: all the threads the machine has, the best
/// instruction set.
fn ctx() -> &'static Compute {
    static CTX: OnceLock<Compute> = OnceLock::new();
    CTX.get_or_init(Compute::default)
}
use crate::cpu::testutil::random_bytes;
use rand::{Rng, SeedableRng};

/// `W · x` for each row of `xs`, dequantizing whole rows and summing in
/// f64, with the tolerance f32 rounding allows for each output
/// (proportional to `Σ |w·x|`).
fn naive(ty: GgmlType, bytes: &[u8], rows: usize, cols: usize, xs: &[f32]) -> (Vec<f32>, Vec<f32>) {
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
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS,
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
                let mut scratch = MatScratch::new(cols, 2);
                for n in [1, 2, 5] {
                    let xs: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                    let want = naive(ty, &bytes, rows, cols, &xs);
                    let mut got = vec![f32::NAN; n * rows];
                    m.matmul(ctx(), &xs, &mut got, &mut scratch).unwrap();
                    assert_close(&got, &want, &format!("{ty} {rows}x{cols} n={n}"));
                    if n == 1 {
                        let mut got = vec![f32::NAN; rows];
                        m.matvec(ctx(), &xs, &mut got, &mut scratch).unwrap();
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
                .packed(ctx());
            assert!(m.is_packed(), "{ty}");
            let mut scratch = MatScratch::new(cols, 2);
            // NMSE over every output of the four products together (a
            // single dot can be small next to its terms).
            let (mut all_got, mut all_want) = (Vec::new(), Vec::new());
            for n in [1, 3, 6, 70] {
                let xs: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                let (want, _) = naive(ty, &bytes, rows, cols, &xs);
                let mut got = vec![f32::NAN; n * rows];
                m.matmul(ctx(), &xs, &mut got, &mut scratch).unwrap();
                if n == 1 {
                    let mut got1 = vec![f32::NAN; rows];
                    m.matvec(ctx(), &xs, &mut got1, &mut scratch).unwrap();
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
                        .packed(ctx())
                } else {
                    QMatrix::from_owned(ty, rows, cols, bytes.clone())
                        .unwrap()
                        .packed(ctx())
                };
                assert!(m.is_packed() || m.is_deferred(), "{ty}");
                let mut q8 = MatScratch::new(cols, 2);
                let mut q8x2 = MatScratch::new(cols, 2);
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
                    m.matmul(ctx(), &xs, &mut got, &mut q8x2).unwrap();
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
                        m.matvec(ctx(), &xs, &mut got1, &mut q8x2).unwrap();
                        assert_eq!(got1, got, "{ty} matvec");
                    }
                    let mut plain = vec![f32::NAN; n * rows];
                    m.matmul(ctx(), &xs, &mut plain, &mut q8).unwrap();
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
        .packed(ctx());
    let mut scratch = MatScratch::new(cols, 2);
    scratch.set_precision(ActPrecision::Q8x2, rows);
    let ptrs = |s: &MatScratch| (s.wide_xs.as_ptr(), s.wide_out.as_ptr(), s.acts.qs.as_ptr());
    let before = ptrs(&scratch);
    let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let mut out = vec![0.0; rows];
    m.matvec(ctx(), &x, &mut out, &mut scratch).unwrap();
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
    let stacked = QMatrix::pack_stacked(&raw, ctx()).unwrap();
    let parts: Vec<QMatrix> = raw.iter().cloned().map(|m| m.packed(ctx())).collect();
    assert_eq!(stacked.rows(), 69);
    let n = 3;
    let xs: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let mut scratch = MatScratch::new(cols, 2);
    let mut all = vec![f32::NAN; n * 69];
    stacked.matmul(ctx(), &xs, &mut all, &mut scratch).unwrap();
    let mut at = 0;
    for p in &parts {
        let mut one = vec![f32::NAN; n * p.rows()];
        p.matmul(ctx(), &xs, &mut one, &mut scratch).unwrap();
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
    assert!(QMatrix::pack_stacked(&[raw[2].clone(), raw[0].clone()], ctx()).is_none());
    assert!(QMatrix::pack_stacked(&[parts[0].clone(), parts[1].clone()], ctx()).is_none());
    let f = QMatrix::from_f32(1, 32, &[0.0; 32]).unwrap();
    assert!(QMatrix::pack_stacked(&[f], ctx()).is_none());
    let q8 = QMatrix::from_owned(
        GgmlType::Q8_0,
        16,
        cols,
        random_bytes(&mut rng, GgmlType::Q8_0, 16, cols),
    )
    .unwrap();
    assert!(QMatrix::pack_stacked(&[raw[0].clone(), q8], ctx()).is_none());
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

/// A random `rows × cols` matrix of `ty` borrowed from a [`Counting`]
/// source of its bytes alone, `packed` (deferred where this CPU has a
/// direct kernel for `ty`), and its source.
fn shared_matrix(
    rng: &mut rand::rngs::StdRng,
    ty: GgmlType,
    rows: usize,
    cols: usize,
) -> (QMatrix, Arc<Counting>) {
    let body = random_bytes(rng, ty, rows, cols);
    let len = body.len();
    let source = Arc::new(Counting::new(body));
    let m = QMatrix::from_shared(ty, rows, cols, source.clone(), 0..len)
        .unwrap()
        .packed(ctx());
    (m, source)
}

/// Shared Q8_0, Q4_K and Q6_K matrices on AVX2 and AVX-512 VNNI are
/// deferred: products
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
    let deferred = DirectKernel::select(ty, ctx().isa()).is_some();
    let lazy = QMatrix::pack_stacked(&shared, ctx()).unwrap();
    let eager = QMatrix::pack_stacked(&owned, ctx()).unwrap();
    assert!(eager.is_packed() && !eager.is_deferred());
    assert_eq!(
        lazy.is_deferred(),
        deferred,
        "deferred exactly where a direct kernel is"
    );
    assert_eq!(lazy.is_packed(), !deferred);
    let rows = lazy.rows();
    let mut scratch = MatScratch::new(cols, 2);
    let check = |m: &QMatrix, scratch: &mut MatScratch, n: usize| {
        let xs: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let mut got = vec![f32::NAN; n * rows];
        let mut want = vec![f32::NAN; n * rows];
        m.matmul(ctx(), &xs, &mut got, scratch).unwrap();
        eager.matmul(ctx(), &xs, &mut want, scratch).unwrap();
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{ty} n {n} [{k}]: {g} vs {w}");
        }
    };
    for n in (1..=MAX_ROWS + 1).chain([DIRECT_ACT_ROWS]) {
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

/// Background packing packs the deferred matrices (same products after, the
/// sources' bytes released) and has nothing to do once they are packed.
#[test]
fn deferred_matrices_are_packed_in_the_background() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let (rows, cols) = (37, 512);
    let xs: Vec<f32> = (0..cols).map(|i| (i % 13) as f32 / 6.0 - 1.0).collect();
    let mut scratch = MatScratch::new(cols, 2);
    let mut before = Vec::new();
    let mut matrices = Vec::new();
    for ty in [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q6_K] {
        let (m, source) = shared_matrix(&mut rng, ty, rows, cols);
        let mut out = vec![f32::NAN; rows];
        m.matvec(ctx(), &xs, &mut out, &mut scratch).unwrap();
        before.push(out);
        matrices.push((m, source));
    }
    let packer = QMatrix::pack_in_background(&[], matrices.iter().map(|m| &m.0));
    if !matrices[0].0.is_deferred() {
        assert!(packer.is_none(), "nothing deferred, nothing to pack");
        return;
    }
    packer.expect("deferred matrices to pack").join().unwrap();
    for ((m, source), before) in matrices.iter().zip(&before) {
        assert!(m.is_packed(), "{m:?}");
        assert_eq!(source.released(), source.0.len());
        let mut after = vec![f32::NAN; rows];
        m.matvec(ctx(), &xs, &mut after, &mut scratch).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(before), bits(&after), "{m:?}");
    }
    assert!(QMatrix::pack_in_background(&[], matrices.iter().map(|m| &m.0)).is_none());
    assert!(QMatrix::pack_in_background(&[&matrices[1].0], []).is_none());
}

/// `pack_deferred_now` packs what the background packer packs, beside it
/// or alone.
#[test]
fn deferred_matrices_are_packed_now_beside_the_packer() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(37);
    let (rows, cols) = (40, 512);
    let matrices: Vec<QMatrix> = [
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q8_0,
    ]
    .into_iter()
    .map(|ty| shared_matrix(&mut rng, ty, rows, cols).0)
    .collect();
    if !matrices[0].is_deferred() {
        return;
    }
    let packer = QMatrix::pack_in_background(&[&matrices[4]], matrices.iter().take(2));
    QMatrix::pack_deferred_now(&[&matrices[4]], matrices.iter().take(2));
    for (i, m) in matrices.iter().enumerate() {
        assert_eq!(m.is_packed(), i < 2 || i == 4, "{i}: {m:?}");
    }
    packer.expect("deferred matrices to pack").join().unwrap();
    QMatrix::pack_deferred_now(&[], matrices.iter());
    assert!(matrices.iter().all(QMatrix::is_packed));
}

/// `pack_after_first_use` starts its packer with the first product on a
/// matrix of `first` (products on the others do not), which then packs them
/// all.
#[test]
fn the_packer_starts_at_the_first_use() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    let (rows, cols) = (24, 512);
    let xs: Vec<f32> = (0..cols).map(|i| (i % 11) as f32 / 5.0 - 1.0).collect();
    let mut scratch = MatScratch::new(cols, 2);
    let (head, _) = shared_matrix(&mut rng, GgmlType::Q8_0, rows, cols);
    let (body, _) = shared_matrix(&mut rng, GgmlType::Q4_K, rows, cols);
    if !head.is_deferred() {
        return;
    }
    QMatrix::pack_after_first_use(&[&head], [&body]);
    let mut out = vec![0.0; rows];
    body.matvec(ctx(), &xs, &mut out, &mut scratch).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        !head.is_packed() && !body.is_packed(),
        "packed before the first use"
    );
    head.matvec(ctx(), &xs, &mut out, &mut scratch).unwrap();
    let start = std::time::Instant::now();
    while !(head.is_packed() && body.is_packed()) {
        assert!(
            start.elapsed().as_secs() < 60,
            "not packed after the first use"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// A matrix of several packing runs reads back its rows across the
/// runs' boundaries, and every source byte is released.
#[test]
fn packing_in_runs_keeps_every_row() {
    let ty = GgmlType::Q4_0;
    let (rows, cols) = (2 * PACK_RUN_ROWS + 37, 64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(37);
    let (m, source) = shared_matrix(&mut rng, ty, rows, cols);
    if !m.is_packed() {
        return; // no packed format on this CPU
    }
    let body = &source.0;
    assert_eq!(source.released(), body.len());
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
    m.matvec(ctx(), &x, &mut out, &mut MatScratch::new(cols, 2))
        .unwrap();
    assert_close(
        &out,
        &naive(GgmlType::Q8_0, &body, rows, cols, &x),
        "shared",
    );
    // A range one byte too long, or past the end, is refused.
    assert!(QMatrix::from_shared(GgmlType::Q8_0, rows, cols, source.clone(), 10..end + 1).is_err());
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
    let mut s = MatScratch::new(3, 2);
    let mut out = [0.0; 2];
    assert!(m.matvec(ctx(), &[1.0, 1.0], &mut out, &mut s).is_err());
    assert!(m.matmul(ctx(), &[1.0; 5], &mut [0.0; 4], &mut s).is_err());
    m.matvec(ctx(), &[1.0, 0.0, -1.0], &mut out, &mut s)
        .unwrap();
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
            (ctx().vecops().dot(&a, &b) - want).abs() <= 1e-3 * (1.0 + want.abs()),
            "n={n}"
        );
    }
}
