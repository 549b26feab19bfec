//! The quantized matrix products per weight type, through `QMatrix::matvec`
//! (decode: one activation row) and `QMatrix::matmul` (prefill: many rows),
//! on matrices repacked as the model repacks them (`QMatrix::packed`).
//!
//! ```text
//! cargo bench --bench kernels                  # all types
//! cargo bench --bench kernels -- --quick q4_k  # one type, quick
//! RAYON_NUM_THREADS=2 cargo bench --bench kernels
//! FOEHN_ISA=avx2 cargo bench --bench kernels -- matvec_stream
//! ```
//!
//! Throughput as criterion reports it:
//! - decode (`matvec/<type>`, 4096 × 4096): bytes of weights read per second
//!   (GB/s), to set against the machine's read bandwidth;
//! - streamed decode (`matvec_stream/<type>`): the same products over
//!   matrices holding 1 GB of weights in all, one after the other as a
//!   decode step reads them (no cache holds them), beside `read/bytes`, a
//!   plain read of 1 GB on the same threads: their ratio is the share of
//!   the machine's read bandwidth the kernels reach;
//! - streamed decode on the file's layout (`matvec_direct/<type>`): as
//!   `matvec_stream`, on matrices borrowed from their owner's bytes whose
//!   packing waits (`QMatrix::is_deferred`), so their direct kernels run —
//!   a model's first tokens, before its weights are packed;
//! - prefill (`matmul/<type>`, 2048 × 2048 × 64 rows): "elements" are
//!   operations, 2·rows·cols·n multiply-adds counted as two, so Gelem/s =
//!   GOP/s = 2·rows·cols·n / time.

// criterion_group! defines undocumented public functions.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use std::sync::{Arc, OnceLock};

use foehn::kernels::{
    quantize_matrix, ByteSource, Compute, GgmlType, Isa, MatScratch, QMatrix, StreamRead,
};

/// Every weight type a GGUF model commonly stores.
const TYPES: [GgmlType; 11] = {
    use GgmlType::*;
    [
        F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
    ]
};

/// Decode shape (Mistral-7B's attention projections).
const DECODE: (usize, usize) = (4096, 4096);

/// Prefill shape and activation rows.
const PREFILL: (usize, usize, usize) = (2048, 2048, 64);

/// Distinct random rows quantized; the matrix repeats them (quantizing 16 M
/// weights per type with the K-quant searches would dominate the run).
const DISTINCT_ROWS: usize = 64;

/// Deterministic pseudo-random values in about [-1, 1].
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Sum of two uniforms: a triangular, roughly bell-shaped spread.
            let a = (s >> 40) as f32 / (1u64 << 24) as f32;
            let b = ((s >> 16) & 0xff_ffff) as f32 / (1u64 << 24) as f32;
            a + b - 1.0
        })
        .collect()
}

/// The context of every product: a thread per core, on the instruction set
/// `FOEHN_ISA` names (`FOEHN_ISA=avx2 cargo bench …` measures AVX2's kernels
/// on an AVX-512 machine), else the best.
fn ctx() -> &'static Compute {
    static CTX: OnceLock<Compute> = OnceLock::new();
    CTX.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let isa = match Isa::from_env().expect("FOEHN_ISA") {
            Some(isa) => isa
                .check()
                .expect("FOEHN_ISA names an instruction set this CPU runs"),
            None => Isa::best(),
        };
        Compute::with_isa(threads, isa)
    })
}

/// The bytes of a `rows × cols` matrix of type `ty` in the file's layout.
fn matrix_bytes(ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let distinct = DISTINCT_ROWS.min(rows);
    let src = values(distinct * cols, 0x5eed ^ ty.id() as u64);
    let q = quantize_matrix(ty, distinct, cols, &src).expect("quantize");
    q.iter()
        .copied()
        .cycle()
        .take(q.len() / distinct * rows)
        .collect()
}

/// A `rows × cols` matrix of type `ty`, repacked as the model does.
fn matrix(ty: GgmlType, rows: usize, cols: usize) -> QMatrix {
    QMatrix::from_owned(ty, rows, cols, matrix_bytes(ty, rows, cols))
        .expect("matrix")
        .packed(ctx())
}

/// Benchmarks the decode products of `ms` (of type `ty`, `rows × cols`
/// each), one after the other, as `<type>/<count>x<rows>x<cols>`.
fn bench_streamed(
    g: &mut BenchmarkGroup<'_, WallTime>,
    ty: GgmlType,
    (rows, cols): (usize, usize),
    ms: &[QMatrix],
    x: &[f32],
) {
    let mut out = vec![0.0; rows];
    let mut scratch = MatScratch::new(cols, ctx().threads());
    let bytes = ms.len() * rows * ty.row_bytes(cols).unwrap();
    g.throughput(Throughput::BytesDecimal(bytes as u64));
    g.bench_function(
        BenchmarkId::new(
            ty.name().to_lowercase(),
            format!("{}x{rows}x{cols}", ms.len()),
        ),
        |b| {
            b.iter(|| {
                for m in ms {
                    m.matvec(ctx(), x, &mut out, &mut scratch).unwrap();
                }
            })
        },
    );
}

fn decode(c: &mut Criterion) {
    let (rows, cols) = DECODE;
    let mut g = c.benchmark_group("matvec");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let x = values(cols, 7);
    let mut out = vec![0.0; rows];
    let mut scratch = MatScratch::new(cols, ctx().threads());
    for ty in TYPES {
        let m = matrix(ty, rows, cols);
        g.throughput(Throughput::BytesDecimal(
            (rows * ty.row_bytes(cols).unwrap()) as u64,
        ));
        g.bench_function(
            BenchmarkId::new(ty.name().to_lowercase(), format!("{rows}x{cols}")),
            |b| b.iter(|| m.matvec(ctx(), &x, &mut out, &mut scratch).unwrap()),
        );
    }
    g.finish();
}

/// Weights a streamed decode pass reads (and the plain read's buffer size).
const STREAM_BYTES: usize = 1_000_000_000;

/// Types of the streamed decode: those of the 7B files we measure.
const STREAM_TYPES: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
];

fn stream(c: &mut Criterion) {
    let (rows, cols) = DECODE;
    let mut g = c.benchmark_group("matvec_stream");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    // The plain read: each thread sums a contiguous share of the buffer
    // (as the products split their matrices).
    let read = StreamRead::new(STREAM_BYTES);
    g.throughput(Throughput::BytesDecimal(read.bytes() as u64));
    g.bench_function("read/bytes", |b| b.iter(|| read.read(ctx())));
    drop(read);
    let x = values(cols, 7);
    for ty in STREAM_TYPES {
        let one = matrix(ty, rows, cols);
        let bytes = rows * ty.row_bytes(cols).unwrap();
        let ms: Vec<QMatrix> = (0..STREAM_BYTES.div_ceil(bytes))
            .map(|_| one.clone())
            .collect();
        bench_streamed(&mut g, ty, DECODE, &ms, &x);
    }
    // The products of Mistral 7B's layers, each 32 times.
    for ty in [GgmlType::Q4_K] {
        let shapes = [
            (4096, 4096),
            (1024, 4096),
            (1024, 4096),
            (4096, 4096),
            (14336, 4096),
            (14336, 4096),
            (4096, 14336),
        ];
        let mut ms = Vec::new();
        let mut bytes = 0;
        for _ in 0..32 {
            for &(r, c) in &shapes {
                ms.push(matrix(ty, r, c));
                bytes += r * ty.row_bytes(c).unwrap();
            }
        }
        let xs: Vec<Vec<f32>> = shapes.iter().map(|&(_, c)| values(c, 9)).collect();
        let mut out = vec![0.0; 14336];
        let mut scratch = MatScratch::new(14336, ctx().threads());
        g.throughput(Throughput::BytesDecimal(bytes as u64));
        g.bench_function(BenchmarkId::new(ty.name().to_lowercase(), "layers"), |b| {
            b.iter(|| {
                for (i, m) in ms.iter().enumerate() {
                    let x = &xs[i % shapes.len()];
                    m.matvec(ctx(), x, &mut out[..m.rows()], &mut scratch)
                        .unwrap();
                }
            })
        });
    }
    g.finish();
}

/// Types with direct kernels (the deferred packing of the 7B files).
const DIRECT_TYPES: [GgmlType; 3] = [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0];

fn direct(c: &mut Criterion) {
    let (rows, cols) = DECODE;
    let mut g = c.benchmark_group("matvec_direct");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    let x = values(cols, 7);
    for ty in DIRECT_TYPES {
        let one = matrix_bytes(ty, rows, cols);
        let bytes = one.len();
        let n = STREAM_BYTES.div_ceil(bytes);
        let owner: Arc<dyn ByteSource> = Arc::new(one.repeat(n));
        let ms: Vec<QMatrix> = (0..n)
            .map(|i| {
                let range = i * bytes..(i + 1) * bytes;
                QMatrix::from_shared(ty, rows, cols, Arc::clone(&owner), range)
                    .expect("matrix")
                    .packed(ctx())
            })
            .collect();
        if !ms[0].is_deferred() {
            // No direct kernel for this type on this instruction set.
            continue;
        }
        bench_streamed(&mut g, ty, DECODE, &ms, &x);
    }
    g.finish();
}

fn prefill(c: &mut Criterion) {
    let (rows, cols, n) = PREFILL;
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let xs = values(n * cols, 11);
    let mut out = vec![0.0; n * rows];
    let mut scratch = MatScratch::new(cols, ctx().threads());
    for ty in TYPES {
        let m = matrix(ty, rows, cols);
        // Operations: a multiply and an add per weight and activation row.
        g.throughput(Throughput::Elements((2 * rows * cols * n) as u64));
        g.bench_function(
            BenchmarkId::new(ty.name().to_lowercase(), format!("{rows}x{cols}x{n}")),
            |b| b.iter(|| m.matmul(ctx(), &xs, &mut out, &mut scratch).unwrap()),
        );
    }
    g.finish();
}

criterion_group!(benches, decode, stream, direct, prefill);
criterion_main!(benches);
