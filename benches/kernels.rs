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

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::{Arc, OnceLock};

use foehn::kernels::{quantize_matrix, ByteSource, Compute, GgmlType, Isa, MatScratch, QMatrix};

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

/// A `rows × cols` matrix of type `ty`, repacked as the model does.
fn matrix(ty: GgmlType, rows: usize, cols: usize) -> QMatrix {
    let distinct = DISTINCT_ROWS.min(rows);
    let src = values(distinct * cols, 0x5eed ^ ty.id() as u64);
    let q = quantize_matrix(ty, distinct, cols, &src).expect("quantize");
    let bytes: Vec<u8> = q
        .iter()
        .copied()
        .cycle()
        .take(q.len() / distinct * rows)
        .collect();
    QMatrix::from_owned(ty, rows, cols, bytes)
        .expect("matrix")
        .packed(ctx())
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
const STREAM_TYPES: [GgmlType; 4] = [
    GgmlType::Q4_0,
    GgmlType::Q4_K,
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
    // (as the products split their matrices), 32-byte loads on x86-64.
    let words = vec![1u64; STREAM_BYTES / 8];
    g.throughput(Throughput::BytesDecimal((words.len() * 8) as u64));
    g.bench_function("read/bytes", |b| {
        b.iter(|| {
            let threads = ctx().threads();
            let per = words.len().div_ceil(threads);
            let sums: Vec<std::sync::atomic::AtomicU64> =
                (0..threads).map(|_| Default::default()).collect();
            ctx().parallel_for(threads, &|t| {
                let part = &words[(t * per).min(words.len())..((t + 1) * per).min(words.len())];
                sums[t].store(sum_words(part), std::sync::atomic::Ordering::Relaxed);
            });
            std::hint::black_box(&sums);
        })
    });
    drop(words);
    let x = values(cols, 7);
    let mut out = vec![0.0; rows];
    let mut scratch = MatScratch::new(cols, ctx().threads());
    for ty in STREAM_TYPES {
        let one = matrix(ty, rows, cols);
        let bytes = rows * ty.row_bytes(cols).unwrap();
        let ms: Vec<QMatrix> = (0..STREAM_BYTES.div_ceil(bytes))
            .map(|_| one.clone())
            .collect();
        g.throughput(Throughput::BytesDecimal((ms.len() * bytes) as u64));
        g.bench_function(
            BenchmarkId::new(
                ty.name().to_lowercase(),
                format!("{}x{rows}x{cols}", ms.len()),
            ),
            |b| {
                b.iter(|| {
                    for m in &ms {
                        m.matvec(ctx(), &x, &mut out, &mut scratch).unwrap();
                    }
                })
            },
        );
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
    let mut out = vec![0.0; rows];
    let mut scratch = MatScratch::new(cols, ctx().threads());
    for ty in DIRECT_TYPES {
        let distinct = DISTINCT_ROWS.min(rows);
        let src = values(distinct * cols, 0x5eed ^ ty.id() as u64);
        let q = quantize_matrix(ty, distinct, cols, &src).expect("quantize");
        let bytes = rows * ty.row_bytes(cols).unwrap();
        let n = STREAM_BYTES.div_ceil(bytes);
        let owner: Arc<dyn ByteSource> = Arc::new(
            q.iter()
                .copied()
                .cycle()
                .take(n * bytes)
                .collect::<Vec<u8>>(),
        );
        let ms: Vec<QMatrix> = (0..n)
            .map(|i| {
                QMatrix::from_shared(
                    ty,
                    rows,
                    cols,
                    Arc::clone(&owner),
                    i * bytes..(i + 1) * bytes,
                )
                .expect("matrix")
                .packed(ctx())
            })
            .collect();
        if !ms[0].is_deferred() {
            // No direct kernel for this type on this instruction set.
            continue;
        }
        g.throughput(Throughput::BytesDecimal((n * bytes) as u64));
        g.bench_function(
            BenchmarkId::new(ty.name().to_lowercase(), format!("{n}x{rows}x{cols}")),
            |b| {
                b.iter(|| {
                    for m in &ms {
                        m.matvec(ctx(), &x, &mut out, &mut scratch).unwrap();
                    }
                })
            },
        );
    }
    g.finish();
}

/// The wrapping sum of `words`, read as fast as the machine reads memory
/// (the reference of `matvec_stream`): four 32-byte accumulators on x86-64
/// with AVX2, else whatever the compiler makes of a plain loop.
fn sum_words(words: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU runs AVX2 (checked above).
        return unsafe { sum_words_avx2(words) };
    }
    words.iter().fold(0u64, |a, w| a.wrapping_add(*w))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_words_avx2(words: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    let chunks = words.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            let v = _mm256_loadu_si256(c.as_ptr().add(4 * k).cast());
            *a = _mm256_add_epi64(*a, v);
        }
    }
    let mut lanes = [0u64; 4];
    let total = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    _mm256_storeu_si256(lanes.as_mut_ptr().cast(), total);
    lanes
        .iter()
        .chain(rest)
        .fold(0u64, |a, w| a.wrapping_add(*w))
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
