//! Activations quantized once per product: int8 levels with one f32 scale per
//! block of 32 values (as ggml's Q8_0, but the scale in f32), and the level
//! sums per 16 and per 32 that the kernels need for the `off` and min terms
//! (as i16, so that two neighbours read as one 32-bit word).
//!
//! For the k-quants ([`ActMode::Superblock`]) the 32-blocks of a superblock
//! share one scale `D = max|x| / 127` up to a power of two:
//! `d_b = D · 2^−e_b`, `e_b ≤ 3` the largest that keeps the block's levels
//! within ±127. A kernel can then sum a whole superblock of integer dot
//! products, shifted left by `3 − e_b`, and scale once by `D / 8` (ggml's
//! Q8_K has one scale per superblock; the exponents give blocks away from
//! the superblock's largest value up to 3 more bits). Kernels that read the
//! per-32 scales need not know the difference.

use super::format::Format;
#[cfg(target_arch = "x86_64")]
use crate::vecops::Path;
use crate::vecops::VecOps;

/// Values per activation scale.
pub const ACT_BLOCK: usize = 32;

/// Values per superblock of the k-quants.
const SUPER: usize = 256;

/// The largest exponent `e_b` of a 32-block in a superblock.
const MAX_EXP: u32 = 3;

/// How the activations of a product are scaled (chosen by the weights' format).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ActMode {
    /// One scale per 32-block.
    #[default]
    Block,
    /// Per 32-block scales `D · 2^−e` sharing one `D` per 256 values.
    Superblock,
}

/// `n` rows of quantized activations; reused across products without
/// reallocating once large enough.
#[derive(Debug, Default, Clone)]
pub struct QuantizedActs {
    /// Rows.
    pub(crate) n: usize,
    /// Values per row (a multiple of 32, of 256 in superblock mode).
    pub(crate) cols: usize,
    /// How the scales were chosen.
    pub(crate) mode: ActMode,
    /// Levels, `n × cols`.
    pub(crate) qs: Vec<i8>,
    /// Scales, `n × cols/32`.
    pub(crate) d: Vec<f32>,
    /// Level sums per 16, `n × cols/16`.
    pub(crate) s16: Vec<i16>,
    /// Level sums per 32, `n × cols/32`.
    pub(crate) s32: Vec<i16>,
    /// Superblock mode: `D / 8` per superblock, `n × cols/256`.
    pub(crate) sd: Vec<f32>,
    /// Superblock mode: the left shift `3 − e_b` per 32-block, `n × cols/32`.
    pub(crate) shift: Vec<u32>,
    /// Superblock mode: `s16` shifted by the block's `shift`.
    pub(crate) w16: Vec<i16>,
    /// Superblock mode: `s32` shifted by the block's `shift`.
    pub(crate) w32: Vec<i16>,
    /// The weights' group size and level offset the activations were
    /// quantized for.
    pub(crate) group: usize,
    pub(crate) off: i32,
    /// `−off ·` the level sum of each group, `n × cols/group`: the start of
    /// the group's integer dot product with levels `u`, which then sums
    /// `(u − off) · a`.
    pub(crate) bias: Vec<i32>,
    /// The same per 16-bit half of a 4-byte word, for formats with an
    /// offset and levels below 128, `n × cols/group`: the low half is
    /// `−off ·` the sum of the group's levels `4p` and `4p + 1`, the high
    /// half of levels `4p + 2` and `4p + 3`, over its words `p` (wrapping
    /// 16-bit values: the start of `vpmaddubsw` pair sums, see the AVX2
    /// kernel).
    pub(crate) pair_bias: Vec<i32>,
    /// Block mode, formats with a min: the level sum times the scale of
    /// each 32-block, `n × cols/32`.
    pub(crate) scaled_sums: Vec<f32>,
}

impl QuantizedActs {
    /// Makes room for `n` rows of `cols` values in either mode, so that
    /// quantizing as much allocates nothing.
    pub(crate) fn reserve(&mut self, n: usize, cols: usize) {
        let nb = n * cols / ACT_BLOCK;
        grow(&mut self.qs, n * cols, 0);
        grow(&mut self.d, nb, 0.0);
        grow(&mut self.s16, 2 * nb, 0);
        grow(&mut self.s32, nb, 0);
        grow(&mut self.sd, n * cols / SUPER, 0.0);
        grow(&mut self.shift, nb, 0);
        grow(&mut self.w16, 2 * nb, 0);
        grow(&mut self.w32, nb, 0);
        grow(&mut self.bias, 2 * nb, 0);
        grow(&mut self.pair_bias, 2 * nb, 0);
        grow(&mut self.scaled_sums, nb, 0.0);
    }

    /// Whether these activations were quantized for products with weights
    /// of format `fmt` (what every SIMD kernel checks before reading them).
    pub(crate) fn quantized_for(&self, fmt: &Format) -> bool {
        self.mode == fmt.act_mode() && self.group == fmt.group && self.off == fmt.off
    }

    /// Quantizes `xs` (`n × cols`, row-major; `cols` a multiple of the
    /// format's unit) for products with weights of format `fmt`.
    /// `ops` picks the compiled variant (the model's instruction set).
    pub(crate) fn quantize(&mut self, ops: VecOps, xs: &[f32], cols: usize, fmt: &Format) {
        let mode = fmt.act_mode();
        debug_assert!(cols.is_multiple_of(fmt.unit()) && xs.len().is_multiple_of(cols.max(1)));
        let n = xs.len().checked_div(cols).unwrap_or(0);
        self.reserve(n, cols);
        self.n = n;
        self.cols = cols;
        self.mode = mode;
        self.group = fmt.group;
        self.off = fmt.off;
        let nb = n * cols / ACT_BLOCK;
        if mode == ActMode::Superblock {
            superblock_scales(
                &xs[..n * cols],
                &mut self.d[..nb],
                &mut self.sd,
                &mut self.shift,
            );
        } else {
            block_scales(&xs[..n * cols], &mut self.d[..nb]);
        }
        quantize_blocks(
            ops,
            &xs[..n * cols],
            &self.d[..nb],
            &mut self.qs[..n * cols],
            &mut self.s16[..2 * nb],
            &mut self.s32[..nb],
        );
        let sums = if fmt.group == 16 {
            &self.s16[..2 * nb]
        } else {
            &self.s32[..nb]
        };
        for (b, &s) in self.bias.iter_mut().zip(sums) {
            *b = -fmt.off * i32::from(s);
        }
        if fmt.off != 0 && fmt.off < 128 {
            pair_biases(
                &self.qs[..n * cols],
                fmt.group,
                fmt.off,
                &mut self.pair_bias,
            );
        }
        if mode == ActMode::Block && fmt.min {
            for ((ss, &s), &d) in self
                .scaled_sums
                .iter_mut()
                .zip(&self.s32[..nb])
                .zip(&self.d)
            {
                *ss = f32::from(s) * d;
            }
        }
        if mode == ActMode::Superblock {
            for (b, &sh) in self.shift[..nb].iter().enumerate() {
                // |sum| ≤ 32 · 127 and sh ≤ 3: within i16.
                self.w16[2 * b] = self.s16[2 * b] << sh;
                self.w16[2 * b + 1] = self.s16[2 * b + 1] << sh;
                self.w32[b] = self.s32[b] << sh;
            }
        }
    }

    /// What quantizing lost: `rest = xs − q · d` for the `n × cols` values
    /// quantized last (`xs` the same values), each within half a step of 0.
    /// Quantized in turn, the remainder carries the next 8 bits of `xs`
    /// ([`ActPrecision::Q8x2`](crate::qmatrix::ActPrecision::Q8x2)).
    pub(crate) fn remainder(&self, xs: &[f32], rest: &mut [f32]) {
        let len = self.n * self.cols;
        let blocks = xs[..len]
            .chunks_exact(ACT_BLOCK)
            .zip(rest[..len].chunks_exact_mut(ACT_BLOCK))
            .zip(self.qs[..len].chunks_exact(ACT_BLOCK))
            .zip(&self.d);
        for (((x, r), q), &d) in blocks {
            for ((r, &x), &q) in r.iter_mut().zip(x).zip(q) {
                *r = x - f32::from(q) * d;
            }
        }
    }

    /// The levels of row `r`.
    #[inline]
    pub(crate) fn row(&self, r: usize) -> &[i8] {
        &self.qs[r * self.cols..(r + 1) * self.cols]
    }

    /// The scales of row `r`, one per 32 values.
    #[inline]
    pub(crate) fn scales(&self, r: usize) -> &[f32] {
        let nb = self.cols / ACT_BLOCK;
        &self.d[r * nb..(r + 1) * nb]
    }

    /// The level sums per `group` (16 or 32) of row `r`.
    #[inline]
    pub(crate) fn sums(&self, r: usize, group: usize) -> &[i16] {
        let ng = self.cols / group;
        let s = if group == 16 { &self.s16 } else { &self.s32 };
        &s[r * ng..(r + 1) * ng]
    }

    /// `−off · Σ a` per group of row `r` (see the field).
    #[inline]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the AVX-512 kernels'
    pub(crate) fn biases(&self, r: usize) -> &[i32] {
        let ng = self.cols / self.group;
        &self.bias[r * ng..(r + 1) * ng]
    }

    /// The 16-bit pair biases of row `r`, one word per group (see the field).
    #[inline]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the AVX2 kernel's
    pub(crate) fn pair_biases(&self, r: usize) -> &[i32] {
        let ng = self.cols / self.group;
        &self.pair_bias[r * ng..(r + 1) * ng]
    }

    /// Block mode with a min: level sum × scale per 32-block of row `r`.
    #[inline]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the AVX2 kernel's
    pub(crate) fn scaled_sums(&self, r: usize) -> &[f32] {
        let nb = self.cols / ACT_BLOCK;
        &self.scaled_sums[r * nb..(r + 1) * nb]
    }

    /// Superblock mode: `D / 8` per superblock of row `r`.
    #[inline]
    pub(crate) fn superblock_scales(&self, r: usize) -> &[f32] {
        let ns = self.cols / SUPER;
        &self.sd[r * ns..(r + 1) * ns]
    }

    /// Superblock mode: the left shift of each 32-block of row `r`.
    #[inline]
    pub(crate) fn shifts(&self, r: usize) -> &[u32] {
        let nb = self.cols / ACT_BLOCK;
        &self.shift[r * nb..(r + 1) * nb]
    }

    /// Superblock mode: the level sums per `group` of row `r`, shifted left
    /// by their block's shift.
    #[inline]
    pub(crate) fn shifted_sums(&self, r: usize, group: usize) -> &[i16] {
        let ng = self.cols / group;
        let s = if group == 16 { &self.w16 } else { &self.w32 };
        &s[r * ng..(r + 1) * ng]
    }
}

/// Lengthens `v` to at least `len`, filling with `fill` (never shortens).
pub(crate) fn grow<T: Copy>(v: &mut Vec<T>, len: usize, fill: T) {
    if v.len() < len {
        v.resize(len, fill);
    }
}

/// 1.5 · 2^23: adding and subtracting it rounds an f32 of magnitude < 2^22
/// to an integer.
const ROUND: f32 = 12_582_912.0;

/// `max |x|` of one 32-block (NaN ignored), written so that it vectorizes.
#[inline(always)]
fn amax32(x: &[f32]) -> f32 {
    let mut m = [0.0f32; ACT_BLOCK];
    for (m, v) in m.iter_mut().zip(x) {
        let a = v.abs();
        *m = if a > *m { a } else { *m };
    }
    m.iter().fold(0.0f32, |m, &v| if v > m { v } else { m })
}

/// `d = max|x| / 127` per 32-block (ggml's Q8_0 rule).
fn block_scales(xs: &[f32], d: &mut [f32]) {
    for (x, d) in xs.chunks_exact(ACT_BLOCK).zip(d) {
        *d = amax32(x) / 127.0;
    }
}

/// Per superblock `D = max|x| / 127`, and per 32-block the largest `e ≤ 3`
/// with `max|x_b| · 2^e ≤ max|x|`: `d_b = D · 2^−e`, shift `3 − e`.
fn superblock_scales(xs: &[f32], d: &mut [f32], sd: &mut [f32], shift: &mut [u32]) {
    let per = SUPER / ACT_BLOCK;
    let units = xs
        .chunks_exact(SUPER)
        .zip(d.chunks_exact_mut(per))
        .zip(sd.iter_mut())
        .zip(shift.chunks_exact_mut(per));
    for (((x, d), sd), shift) in units {
        let mut am = [0.0f32; SUPER / ACT_BLOCK];
        for (m, x) in am.iter_mut().zip(x.chunks_exact(ACT_BLOCK)) {
            *m = amax32(x);
        }
        let amax = am.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
        let big = amax / 127.0;
        *sd = big / 8.0;
        for ((d, sh), &m) in d.iter_mut().zip(shift.iter_mut()).zip(&am) {
            let mut e = 0;
            // Scaling by powers of two is exact, so the comparison is too.
            while e < MAX_EXP && m * (2u32 << e) as f32 <= amax {
                e += 1;
            }
            *d = big / (1u32 << e) as f32;
            *sh = MAX_EXP - e;
        }
    }
}

/// Per group of `group` levels: `−off ·` the sums of the levels at
/// positions 0, 1 and 2, 3 of each 4-byte word, as the low and high 16 bits
/// of one word (wrapping).
fn pair_biases(qs: &[i8], group: usize, off: i32, out: &mut [i32]) {
    for (q, o) in qs.chunks_exact(group).zip(out.iter_mut()) {
        let (mut lo, mut hi) = (0i32, 0i32);
        for w in q.chunks_exact(4) {
            lo += i32::from(w[0]) + i32::from(w[1]);
            hi += i32::from(w[2]) + i32::from(w[3]);
        }
        let (lo, hi) = ((-off * lo) as u16, (-off * hi) as u16);
        *o = (u32::from(lo) | (u32::from(hi) << 16)) as i32;
    }
}

/// Every 32-block: `q = round(x / d)` (ties to even) and the level sums.
/// Written so that the compiler vectorizes it; compiled for AVX-512 and AVX2
/// too, the variant chosen by `ops` (the model's instruction set).
fn quantize_blocks(
    ops: VecOps,
    xs: &[f32],
    d: &[f32],
    qs: &mut [i8],
    s16: &mut [i16],
    s32: &mut [i16],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn avx512(xs: &[f32], d: &[f32], qs: &mut [i8], s16: &mut [i16], s32: &mut [i16]) {
            quantize_body(xs, d, qs, s16, s32);
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(xs: &[f32], d: &[f32], qs: &mut [i8], s16: &mut [i16], s32: &mut [i16]) {
            quantize_body(xs, d, qs, s16, s32);
        }
        match ops.variant() {
            // SAFETY: the token was made from a checked AVX-512 instruction
            // set (AVX-512 F/BW/VL).
            Path::Avx512 => return unsafe { avx512(xs, d, qs, s16, s32) },
            // SAFETY: the token was made from a checked AVX2 instruction
            // set (AVX2, FMA).
            Path::Avx2 => return unsafe { avx2(xs, d, qs, s16, s32) },
            Path::Portable => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ops;
    quantize_body(xs, d, qs, s16, s32);
}

#[inline(always)]
fn quantize_body(xs: &[f32], d: &[f32], qs: &mut [i8], s16: &mut [i16], s32: &mut [i16]) {
    let blocks = xs
        .chunks_exact(ACT_BLOCK)
        .zip(qs.chunks_exact_mut(ACT_BLOCK))
        .zip(d)
        .zip(s16.chunks_exact_mut(2))
        .zip(s32.iter_mut());
    for ((((x, q), &d), s16), s32) in blocks {
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (h, (q, x)) in q.chunks_exact_mut(16).zip(x.chunks_exact(16)).enumerate() {
            let mut s = 0i32;
            for (q, &x) in q.iter_mut().zip(x) {
                // |x·id| ≤ 127 up to rounding; `as` saturates and maps NaN to 0.
                let v = ((x * id + ROUND) - ROUND) as i32 as i8;
                *q = v;
                s += i32::from(v);
            }
            // |s| ≤ 16 · 128.
            s16[h] = s as i16;
        }
        *s32 = s16[0] + s16[1];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GgmlType, Isa};

    fn ops() -> VecOps {
        VecOps::new(Isa::best())
    }

    #[test]
    fn quantized_rows_round_trip_within_half_a_step() {
        let cols = 512;
        let xs: Vec<f32> = (0..2 * cols)
            .map(|i| {
                ((i * 37 % 101) as f32 - 50.0) * 0.013 * (1 + i % 7) as f32
                    / (1 + (i / 32) % 11) as f32
            })
            .collect();
        let mut a = QuantizedActs::default();
        for ty in [GgmlType::Q4_0, GgmlType::Q6_K] {
            let fmt = Format::of(ty).unwrap();
            let mode = fmt.act_mode();
            a.quantize(ops(), &xs, cols, &fmt);
            for r in 0..2 {
                let row = &xs[r * cols..(r + 1) * cols];
                for (b, x) in row.chunks_exact(32).enumerate() {
                    let d = a.scales(r)[b];
                    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    if mode == ActMode::Block {
                        assert_eq!(d, amax / 127.0);
                    } else {
                        // The block's scale is D / 2^e, as fine as it can be
                        // with e ≤ 3 while its values stay within ±127.
                        let sb = a.superblock_scales(r)[b / 8];
                        let sh = a.shifts(r)[b];
                        assert_eq!(d, sb * (1 << sh) as f32, "block {b}");
                        assert!(amax <= 127.0 * d * (1.0 + 1e-6));
                        assert!(sh == 0 || amax > 63.5 * d, "block {b}: {amax} vs {d}");
                        let s: i16 = a.row(r)[b * 32..(b + 1) * 32]
                            .iter()
                            .map(|&v| i16::from(v))
                            .sum();
                        assert_eq!(a.shifted_sums(r, 32)[b], s << sh);
                    }
                    let q = &a.row(r)[b * 32..(b + 1) * 32];
                    for (&q, &x) in q.iter().zip(x) {
                        assert!((f32::from(q) * d - x).abs() <= 0.5 * d + 1e-6);
                    }
                }
                for (g, q) in a.row(r).chunks_exact(32).enumerate() {
                    let s: i32 = q.iter().map(|&v| i32::from(v)).sum();
                    assert_eq!(i32::from(a.sums(r, 32)[g]), s);
                    let lo: i32 = q[..16].iter().map(|&v| i32::from(v)).sum();
                    assert_eq!(i32::from(a.sums(r, 16)[2 * g]), lo);
                    assert_eq!(i32::from(a.sums(r, 16)[2 * g + 1]), s - lo);
                    if ty == GgmlType::Q4_0 {
                        assert_eq!(a.biases(r)[g], -8 * s);
                    } else {
                        assert_eq!(a.biases(r)[2 * g], -32 * lo);
                    }
                }
                // Pair biases: per group, −off · the sums of word positions
                // {0, 1} and {2, 3}, as two wrapping 16-bit halves.
                let fmt = Format::of(ty).unwrap();
                for (g, q) in a.row(r).chunks_exact(fmt.group).enumerate() {
                    let part = |k: usize| -> i32 {
                        q.iter()
                            .enumerate()
                            .filter(|(i, _)| i % 4 / 2 == k)
                            .map(|(_, &v)| i32::from(v))
                            .sum()
                    };
                    let w = a.pair_biases(r)[g] as u32;
                    assert_eq!((w & 0xffff) as u16, (-fmt.off * part(0)) as u16);
                    assert_eq!((w >> 16) as u16, (-fmt.off * part(1)) as u16);
                }
            }
        }
        // Block mode with a min: level sum × scale per 32-block.
        a.quantize(ops(), &xs, cols, &Format::of(GgmlType::Q4_1).unwrap());
        for r in 0..2 {
            for b in 0..cols / 32 {
                let want = f32::from(a.sums(r, 32)[b]) * a.scales(r)[b];
                assert_eq!(a.scaled_sums(r)[b], want);
            }
        }
        // Superblock mode uses the finer scales somewhere in this input.
        a.quantize(ops(), &xs, cols, &Format::of(GgmlType::Q4_K).unwrap());
        assert!(a.shifts(1).iter().any(|&s| s < MAX_EXP));
        // All zeros: scale 0, levels 0.
        a.quantize(ops(), &[0.0; 32], 32, &Format::of(GgmlType::Q8_0).unwrap());
        assert_eq!(a.scales(0), &[0.0]);
        assert!(a.row(0).iter().all(|&q| q == 0));
    }
}
