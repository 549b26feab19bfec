//! The machine's streaming read bandwidth, measured on a [`Compute`]'s
//! threads: the yardstick of a decode step, which reads every weight once
//! per token. Cloud machines' bandwidth moves by up to 2× within minutes,
//! so a decode's share of it is only meaningful against a read measured
//! beside it (`examples/bench --read-bw`, the kernels bench's
//! `matvec_stream/read`).

use std::time::Instant;

use crate::Compute;

/// A buffer to read, and the plain read that measures the bandwidth.
pub struct StreamRead {
    words: Vec<u64>,
}

impl StreamRead {
    /// A buffer of `bytes` (rounded down to 8-byte words), filled with
    /// distinct values: pages of zeros could all map one shared page.
    pub fn new(bytes: usize) -> Self {
        let words = (0..bytes / 8)
            .map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        Self { words }
    }

    /// The buffer's size in bytes.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// One read of the whole buffer on `ctx`'s threads, each summing a
    /// contiguous share (as the products split their matrices); returns
    /// the wrapping sum, so that the read cannot be optimized away.
    pub fn read(&self, ctx: &Compute) -> u64 {
        let threads = ctx.threads();
        let per = self.words.len().div_ceil(threads);
        let sums: Vec<std::sync::atomic::AtomicU64> =
            (0..threads).map(|_| Default::default()).collect();
        ctx.parallel_for(threads, &|t| {
            let n = self.words.len();
            let part = &self.words[(t * per).min(n)..((t + 1) * per).min(n)];
            sums[t].store(sum_words(part), std::sync::atomic::Ordering::Relaxed);
        });
        sums.iter().fold(0u64, |a, s| {
            a.wrapping_add(s.load(std::sync::atomic::Ordering::Relaxed))
        })
    }

    /// The best of `passes` reads (at least one), in bytes per second.
    pub fn bytes_per_second(&self, ctx: &Compute, passes: usize) -> f64 {
        let mut best = f64::INFINITY;
        for _ in 0..passes.max(1) {
            let t = Instant::now();
            std::hint::black_box(self.read(ctx));
            best = best.min(t.elapsed().as_secs_f64());
        }
        self.bytes() as f64 / best.max(1e-9)
    }
}

/// The wrapping sum of `words`, read as fast as the machine reads memory:
/// the widest loads of x86-64 (AVX-512, AVX2), four accumulators, else
/// whatever the compiler makes of a plain loop (NEON on aarch64).
fn sum_words(words: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU runs AVX-512F (checked above).
            return unsafe { sum_words_avx512(words) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU runs AVX2 (checked above).
            return unsafe { sum_words_avx2(words) };
        }
    }
    words.iter().fold(0u64, |a, w| a.wrapping_add(*w))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_words_avx512(words: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_si512(); 4];
    let chunks = words.chunks_exact(32);
    let rest = chunks.remainder();
    for c in chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: `c` holds 32 words, 8 per load.
            let v = unsafe { _mm512_loadu_si512(c.as_ptr().add(8 * k).cast()) };
            *a = _mm512_add_epi64(*a, v);
        }
    }
    let total = _mm512_add_epi64(
        _mm512_add_epi64(acc[0], acc[1]),
        _mm512_add_epi64(acc[2], acc[3]),
    );
    let lanes = _mm512_reduce_add_epi64(total) as u64;
    rest.iter().fold(lanes, |a, w| a.wrapping_add(*w))
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
            // SAFETY: `c` holds 16 words, 4 per load.
            let v = unsafe { _mm256_loadu_si256(c.as_ptr().add(4 * k).cast()) };
            *a = _mm256_add_epi64(*a, v);
        }
    }
    let mut lanes = [0u64; 4];
    let total = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    // SAFETY: `lanes` holds 4 words.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), total) };
    lanes
        .iter()
        .chain(rest)
        .fold(0u64, |a, w| a.wrapping_add(*w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_sums_every_word() {
        // Odd sizes: a remainder past the 16- and 32-word chunks and a last
        // thread's share shorter than the others.
        for (bytes, threads) in [(0, 1), (8, 2), (8 * 37, 2), (8 * 75, 1), (8 * 1001, 3)] {
            let r = StreamRead::new(bytes);
            let want = r.words.iter().fold(0u64, |a, w| a.wrapping_add(*w));
            let ctx = Compute::new(threads);
            assert_eq!(r.read(&ctx), want, "{bytes} bytes, {threads} threads");
            assert!(r.bytes_per_second(&ctx, 2) >= 0.0);
            // Every instruction set's sum this CPU runs.
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: checked above.
                    assert_eq!(unsafe { sum_words_avx512(&r.words) }, want);
                }
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: checked above.
                    assert_eq!(unsafe { sum_words_avx2(&r.words) }, want);
                }
            }
        }
    }
}
