//! Activations quantized once per product: int8 levels with one f32 scale per
//! 32 values (as ggml's Q8_0, but the scale in f32) and the level sums per 16
//! and per 32 that the kernels need for the `off` and min terms.

/// Values per activation scale.
pub const ACT_BLOCK: usize = 32;

/// `n` rows of quantized activations; reused across products without
/// reallocating once large enough.
#[derive(Debug, Default, Clone)]
pub struct QuantizedActs {
    /// Rows.
    pub(crate) n: usize,
    /// Values per row (a multiple of 32).
    pub(crate) cols: usize,
    /// Levels, `n × cols`.
    pub(crate) qs: Vec<i8>,
    /// Scales, `n × cols/32`.
    pub(crate) d: Vec<f32>,
    /// Level sums per 16, `n × cols/16`.
    pub(crate) s16: Vec<i32>,
    /// Level sums per 32, `n × cols/32`.
    pub(crate) s32: Vec<i32>,
}

impl QuantizedActs {
    /// Quantizes `xs` (`n × cols`, row-major; `cols` a multiple of 32).
    pub(crate) fn quantize(&mut self, xs: &[f32], cols: usize) {
        debug_assert!(cols % ACT_BLOCK == 0 && xs.len() % cols.max(1) == 0);
        let n = xs.len().checked_div(cols).unwrap_or(0);
        self.n = n;
        self.cols = cols;
        let nb = n * cols / ACT_BLOCK;
        grow(&mut self.qs, n * cols, 0);
        grow(&mut self.d, nb, 0.0);
        grow(&mut self.s16, 2 * nb, 0);
        grow(&mut self.s32, nb, 0);
        quantize_blocks(
            &xs[..n * cols],
            &mut self.qs[..n * cols],
            &mut self.d[..nb],
            &mut self.s16[..2 * nb],
            &mut self.s32[..nb],
        );
    }

    /// The levels of row `r`.
    #[inline]
    pub(crate) fn row(&self, r: usize) -> &[i8] {
        &self.qs[r * self.cols..(r + 1) * self.cols]
    }

    /// The scales of row `r`.
    #[inline]
    pub(crate) fn scales(&self, r: usize) -> &[f32] {
        let nb = self.cols / ACT_BLOCK;
        &self.d[r * nb..(r + 1) * nb]
    }

    /// The level sums per `group` (16 or 32) of row `r`.
    #[inline]
    pub(crate) fn sums(&self, r: usize, group: usize) -> &[i32] {
        let ng = self.cols / group;
        let s = if group == 16 { &self.s16 } else { &self.s32 };
        &s[r * ng..(r + 1) * ng]
    }
}

fn grow<T: Copy>(v: &mut Vec<T>, len: usize, fill: T) {
    if v.len() < len {
        v.resize(len, fill);
    }
}

/// 1.5 · 2^23: adding and subtracting it rounds an f32 of magnitude < 2^22
/// to an integer.
const ROUND: f32 = 12_582_912.0;

/// Every block: `d = max|x| / 127`, `q = round(x / d)` (ggml's Q8_0 rule,
/// ties to even), and the level sums. Written so that the compiler
/// vectorizes it; compiled for AVX-512 and AVX2 too and chosen at run time.
fn quantize_blocks(xs: &[f32], qs: &mut [i8], d: &mut [f32], s16: &mut [i32], s32: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn avx512(
            xs: &[f32],
            qs: &mut [i8],
            d: &mut [f32],
            s16: &mut [i32],
            s32: &mut [i32],
        ) {
            quantize_body(xs, qs, d, s16, s32);
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(xs: &[f32], qs: &mut [i8], d: &mut [f32], s16: &mut [i32], s32: &mut [i32]) {
            quantize_body(xs, qs, d, s16, s32);
        }
        if std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { avx512(xs, qs, d, s16, s32) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { avx2(xs, qs, d, s16, s32) };
        }
    }
    quantize_body(xs, qs, d, s16, s32);
}

#[inline(always)]
fn quantize_body(xs: &[f32], qs: &mut [i8], d: &mut [f32], s16: &mut [i32], s32: &mut [i32]) {
    let blocks = xs
        .chunks_exact(ACT_BLOCK)
        .zip(qs.chunks_exact_mut(ACT_BLOCK))
        .zip(d.iter_mut())
        .zip(s16.chunks_exact_mut(2))
        .zip(s32.iter_mut());
    for ((((x, q), d), s16), s32) in blocks {
        let mut amax = [0.0f32; ACT_BLOCK];
        for (m, v) in amax.iter_mut().zip(x) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
        let amax = amax.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
        let scale = amax / 127.0;
        let id = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        *d = scale;
        let mut sums = [0i32; 2];
        for (h, (q, x)) in q.chunks_exact_mut(16).zip(x.chunks_exact(16)).enumerate() {
            let mut s = 0i32;
            for (q, &x) in q.iter_mut().zip(x) {
                // |x·id| ≤ 127 up to rounding; `as` saturates and maps NaN to 0.
                let v = ((x * id + ROUND) - ROUND) as i32 as i8;
                *q = v;
                s += i32::from(v);
            }
            sums[h] = s;
        }
        s16[0] = sums[0];
        s16[1] = sums[1];
        *s32 = sums[0] + sums[1];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_rows_round_trip_within_half_a_step() {
        let cols = 96;
        let xs: Vec<f32> = (0..2 * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let mut a = QuantizedActs::default();
        a.quantize(&xs, cols);
        for r in 0..2 {
            for (b, x) in xs[r * cols..(r + 1) * cols].chunks_exact(32).enumerate() {
                let d = a.scales(r)[b];
                let q = &a.row(r)[b * 32..(b + 1) * 32];
                for (&q, &x) in q.iter().zip(x) {
                    assert!((f32::from(q) * d - x).abs() <= 0.5 * d + 1e-7);
                }
                let s: i32 = q.iter().map(|&v| i32::from(v)).sum();
                assert_eq!(a.sums(r, 32)[b], s);
                assert_eq!(a.sums(r, 16)[2 * b] + a.sums(r, 16)[2 * b + 1], s);
            }
        }
        // All zeros: scale 0, levels 0.
        a.quantize(&[0.0; 32], 32);
        assert_eq!(a.scales(0), &[0.0]);
        assert!(a.row(0).iter().all(|&q| q == 0));
    }
}
