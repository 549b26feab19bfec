//! f32 vector operations for the non-matmul parts of a forward pass
//! (attention scores, softmax, weighted sums) and for the sampler's softmax,
//! compiled for AVX-512 and AVX2 as well as the baseline target and chosen
//! at run time: the portable code is written so that the compiler
//! vectorizes it at whatever width the target allows, with fused
//! multiply-adds where the target has them.

// `Isa` names the x86 variants (and the docs' links) only.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
use crate::cpu::{Isa, SupportedIsa};

/// e^x for x ≤ 0, within 2 ulp of `f32::exp`; exactly 0 below -87 and for
/// NaN (a NaN logit then weighs nothing). Branch-free, so that loops over it
/// vectorize (`f32::exp` is a libm call per element).
///
/// Cephes' `expf`: x = n ln2 + r with |r| ≤ ln2 / 2, a degree-6 polynomial for
/// e^r, and 2^n put into the exponent bits. Rounding to n uses the 1.5 × 2²³
/// trick instead of `round` so that SSE2 can vectorize it.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 × 2^23
    let clamped = x.max(-87.0);
    let shifted = clamped * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // The low bits of `shifted` hold n + 0x40_0000; n ∈ [-126, 0].
    let n_int = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    let y = er * scale;
    if x >= -87.0 {
        y
    } else {
        0.0
    }
}

/// `a · b + c`, fused where the variant's target has FMA (a libm call
/// otherwise, so the portable variant of a target without it multiplies and
/// adds).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Whether the portable variants can use fused multiply-adds.
const BASE_FMA: bool = cfg!(any(target_arch = "aarch64", target_feature = "fma"));

/// Independent accumulators of [`VecOps::dot`]: enough to hide the FMA latency at
/// 16 lanes.
const ACC: usize = 32;

#[inline(always)]
fn dot_body<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; ACC];
    let (ca, cb) = (a.chunks_exact(ACC), b.chunks_exact(ACC));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..ACC {
            acc[i] = madd::<FMA>(x[i], y[i], acc[i]);
        }
    }
    let mut tail = 0.0;
    for (x, y) in ta.iter().zip(tb) {
        tail = madd::<FMA>(*x, *y, tail);
    }
    let mut w = ACC;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0] + tail
}

#[inline(always)]
fn scale_body<const FMA: bool>(y: &mut [f32], a: f32) {
    for y in y.iter_mut() {
        *y *= a;
    }
}

/// Which compiled variant of the vector operations runs: made from the
/// instruction set of the model's [`Compute`](crate::Compute) (so
/// `--isa scalar` / `FOEHN_ISA=scalar` runs the portable code here too),
/// never from a detection of its own. A copyable token, decided once: a call
/// costs a match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VecOps(Path);

/// The compiled variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// The baseline target's code (what the compiler vectorizes for it).
    Portable,
    /// AVX2 + FMA + F16C ([`Isa::Avx2`]'s features).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 F/BW/VL + FMA + F16C ([`Isa::Avx512Vnni`]'s features).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl VecOps {
    /// The variant for `isa`: AVX-512 for the AVX-512 instruction sets,
    /// AVX2 for AVX2, the portable code for the others (scalar, and NEON,
    /// which the aarch64 baseline already has).
    pub fn new(isa: SupportedIsa) -> Self {
        match isa.isa() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni | Isa::Avx512Amx => Self(Path::Avx512),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Self(Path::Avx2),
            _ => Self(Path::Portable),
        }
    }

    /// The variant, for kernels of the crate compiled per variant.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn variant(self) -> Path {
        self.0
    }

    /// The name of the variant that runs: `portable`, `avx2` or `avx512`.
    pub fn path(self) -> &'static str {
        match self.0 {
            Path::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => "avx512",
        }
    }
}

/// A method of [`VecOps`] running `$body` compiled for the token's variant.
macro_rules! dispatch {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        impl VecOps {
        $(#[$m])*
        #[inline]
        pub fn $name(self, $($arg: $ty),*) $(-> $ret)? {
            match self.0 {
                #[cfg(target_arch = "x86_64")]
                Path::Avx512 => {
                    #[target_feature(enable = "avx512f,avx512vl,fma")]
                    unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { $body::<true>($($arg),*) }
                    // SAFETY: the token was made from a checked AVX-512
                    // instruction set, which has these features.
                    unsafe { avx512($($arg),*) }
                }
                #[cfg(target_arch = "x86_64")]
                Path::Avx2 => {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { $body::<true>($($arg),*) }
                    // SAFETY: the token was made from a checked AVX2
                    // instruction set, which has these features.
                    unsafe { avx2($($arg),*) }
                }
                Path::Portable => $body::<BASE_FMA>($($arg),*),
            }
        }
        }
    };
}
dispatch! {
    /// Dot product of two f32 slices (over the shorter length).
    pub fn dot(a: &[f32], b: &[f32]) -> f32 => dot_body
}

dispatch! {
    /// `y *= a`, element-wise.
    pub fn scale(y: &mut [f32], a: f32) => scale_body
}

/// Accumulators of [`LANES`] per query row in [`VecOps::scores`].
const SCORE_ACCS: usize = 2;

/// f32 lanes of the widest vector the variants use.
const LANES: usize = 8;

#[inline(always)]
fn scores_body<const FMA: bool>(q: &[f32], k: &[f32], d: usize, out: &mut [f32]) {
    let (rows, keys) = (
        q.len().checked_div(d).unwrap_or(0),
        k.len().checked_div(d).unwrap_or(0),
    );
    let mut r0 = 0;
    // Four rows at a time (eight accumulators hide the multiply-add
    // latency), then two, then one: each row's sums are the same whatever
    // its pass, so scores do not depend on how queries are batched.
    while r0 < rows {
        let n = [4, 2, 1].into_iter().find(|&n| rows - r0 >= n).unwrap_or(1);
        let (q, o) = (
            &q[r0 * d..(r0 + n) * d],
            &mut out[r0 * keys..(r0 + n) * keys],
        );
        match n {
            4 => score_rows::<FMA, 4>(q, k, d, o),
            2 => score_rows::<FMA, 2>(q, k, d, o),
            _ => score_rows::<FMA, 1>(q, k, d, o),
        }
        r0 += n;
    }
}

/// `R` query rows (`R × d`) against every key row of `k`: `out[r·keys + j]`.
#[inline(always)]
fn score_rows<const FMA: bool, const R: usize>(q: &[f32], k: &[f32], d: usize, out: &mut [f32]) {
    const S: usize = SCORE_ACCS;
    let keys = k.len() / d;
    let step = S * LANES;
    let full = d / step * step;
    for (j, kj) in k.chunks_exact(d).enumerate() {
        let mut acc = [[[0.0f32; LANES]; S]; R];
        for c in (0..full).step_by(step) {
            for s in 0..S {
                let kc = &kj[c + s * LANES..c + (s + 1) * LANES];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let qc = &q[r * d + c + s * LANES..r * d + c + (s + 1) * LANES];
                    for l in 0..LANES {
                        acc[s][l] = madd::<FMA>(qc[l], kc[l], acc[s][l]);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let mut v = [0.0f32; LANES];
            for part in acc {
                for l in 0..LANES {
                    v[l] += part[l];
                }
            }
            let mut tail = 0.0;
            for c in full..d {
                tail = madd::<FMA>(q[r * d + c], kj[c], tail);
            }
            out[r * keys + j] = sum_lanes(v) + tail;
        }
    }
}

/// The sum of a vector's lanes, as a tree.
#[inline(always)]
fn sum_lanes(mut v: [f32; LANES]) -> f32 {
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            v[i] += v[i + w];
        }
    }
    v[0]
}

/// Values of the output row kept in registers by [`VecOps::weighted_sum`] while it
/// runs over the value rows.
const SUM_CHUNK: usize = 64;

#[inline(always)]
fn weighted_sum_body<const FMA: bool>(o: &mut [f32], p: &[f32], v: &[f32]) {
    let d = o.len();
    if d == 0 {
        return;
    }
    let rows = v.chunks_exact(d).zip(p);
    let mut chunks = o.chunks_exact_mut(SUM_CHUNK);
    let mut c0 = 0;
    for oc in chunks.by_ref() {
        let mut acc = [0.0f32; SUM_CHUNK];
        acc.copy_from_slice(oc);
        for (vr, &pj) in rows.clone() {
            let vc = &vr[c0..c0 + SUM_CHUNK];
            for l in 0..SUM_CHUNK {
                acc[l] = madd::<FMA>(pj, vc[l], acc[l]);
            }
        }
        oc.copy_from_slice(&acc);
        c0 += SUM_CHUNK;
    }
    let tail = chunks.into_remainder();
    for (vr, &pj) in rows {
        for (o, &x) in tail.iter_mut().zip(&vr[c0..]) {
            *o = madd::<FMA>(pj, x, *o);
        }
    }
}

#[inline(always)]
fn exp_sub_body<const FMA: bool>(x: &mut [f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in chunks.by_ref() {
        for l in 0..LANES {
            c[l] = exp(c[l] - m);
            acc[l] += c[l];
        }
    }
    let mut tail = 0.0;
    for v in chunks.into_remainder() {
        *v = exp(*v - m);
        tail += *v;
    }
    sum_lanes(acc) + tail
}

dispatch! {
    /// Attention scores: `out[r·keys + j] = q_r · k_j` for the `q.len() / d`
    /// query rows and `k.len() / d` key rows (`d` values each, row-major).
    ///
    /// # Panics
    /// If `out` is shorter than rows × keys.
    pub fn scores(q: &[f32], k: &[f32], d: usize, out: &mut [f32]) => scores_body
}

dispatch! {
    /// `o += Σ_j p[j] · v_j` over the first `p.len()` rows of `v` (rows of
    /// `o.len()` values).
    pub fn weighted_sum(o: &mut [f32], p: &[f32], v: &[f32]) => weighted_sum_body
}

dispatch! {
    /// `x = e^(x − m)` element-wise (for `x ≤ m`, with [`exp`]); returns the sum.
    pub fn exp_sub(x: &mut [f32], m: f32) -> f32 => exp_sub_body
}

#[inline(always)]
fn hadamard_body<const FMA: bool>(x: &mut [f32], n: usize) {
    let norm = 1.0 / (n as f32).sqrt();
    for c in x.chunks_exact_mut(n) {
        let mut h = 1;
        while h < n {
            for pair in c.chunks_exact_mut(2 * h) {
                let (a, b) = pair.split_at_mut(h);
                for (a, b) in a.iter_mut().zip(b.iter_mut()) {
                    (*a, *b) = (*a + *b, *a - *b);
                }
            }
            h *= 2;
        }
        for v in c.iter_mut() {
            *v *= norm;
        }
    }
}

dispatch! {
    /// Each whole block of `n` values of `x` (`n` a power of two) times the
    /// normalized `n × n` Sylvester–Hadamard matrix (ggml's
    /// `ggml_gen_hadamard`): orthonormal and its own inverse, so rotating
    /// queries and keys alike keeps every score, and rotating the values
    /// and then the output keeps the output. The quantized KV cache rotates
    /// keys and values before quantizing (as llama.cpp's `attn_rot`): an
    /// outlier spreads over the block, so the block's scale fits the rest.
    pub fn hadamard(x: &mut [f32], n: usize) => hadamard_body
}

/// The f16 scale at the head of a block (little-endian), as f32.
#[inline(always)]
fn block_scale(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

#[inline(always)]
fn q8_0_to_f32_body<const FMA: bool>(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        // Fixed-size views let the compiler drop the bound checks and
        // convert 16 (AVX-512) or 8 (AVX2) bytes per instruction.
        let (Ok(qs), Ok(y)) = (
            <&[u8; 32]>::try_from(&b[2..]),
            <&mut [f32; 32]>::try_from(y),
        ) else {
            continue;
        };
        let d = block_scale(b);
        for (y, &q) in y.iter_mut().zip(qs) {
            *y = f32::from(q as i8) * d;
        }
    }
}

#[inline(always)]
fn q4_0_to_f32_body<const FMA: bool>(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        let (Ok(qs), Ok(y)) = (
            <&[u8; 16]>::try_from(&b[2..]),
            <&mut [f32; 32]>::try_from(y),
        ) else {
            continue;
        };
        let d = block_scale(b);
        let (lo, hi) = y.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
            *l = (i32::from(q & 0x0f) - 8) as f32 * d;
            *h = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }
}

dispatch! {
    /// Q8_0 blocks (34 bytes: f16 scale, 32 × i8) to f32, 32 values per
    /// block, over the blocks both `src` and `dst` hold: the same values
    /// as [`dequantize_row`](crate::dequantize_row), vectorized (a row of
    /// the q8_0 KV cache is converted per block of keys).
    pub fn q8_0_to_f32(src: &[u8], dst: &mut [f32]) => q8_0_to_f32_body
}

dispatch! {
    /// Q4_0 blocks (18 bytes: f16 scale, 16 bytes of nibbles) to f32, as
    /// [`VecOps::q8_0_to_f32`] (the values of [`dequantize_row`](crate::dequantize_row)).
    pub fn q4_0_to_f32(src: &[u8], dst: &mut [f32]) => q4_0_to_f32_body
}

impl VecOps {
    /// `dst[i] = src[i]` as f32 (`dst` at least as long as `src`): 16 values
    /// per instruction with AVX-512, 8 with F16C (the AVX2 variant), else
    /// `half`'s conversion. Exact (every f16 is an f32). A key/value row of
    /// the f16 KV cache is converted per block of keys: `half`'s slice
    /// conversion calls a function per 8 values, 7.5 % of SmolLM2's decode
    /// here.
    #[inline]
    pub fn f16_to_f32(self, src: &[half::f16], dst: &mut [f32]) {
        let dst = &mut dst[..src.len()];
        match self.0 {
            // SAFETY: the token was made from a checked AVX-512 instruction
            // set, which has AVX-512 F.
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => unsafe { f16_to_f32_x86::avx512(src, dst) },
            // SAFETY: the token was made from a checked AVX2 instruction
            // set, which has AVX and F16C.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { f16_to_f32_x86::f16c(src, dst) },
            Path::Portable => {
                use half::slice::HalfFloatSliceExt;
                src.convert_to_f32_slice(dst);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod f16_to_f32_x86 {
    use std::arch::x86_64::*;

    /// As [`super::VecOps::f16_to_f32`] (`dst.len() == src.len()`), 16 at a time.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(src: &[half::f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: elements i..i + 16 lie in both slices.
            unsafe {
                let h = _mm256_loadu_si256(src.as_ptr().add(i).cast());
                _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
            }
            i += 16;
        }
        for j in i..n {
            dst[j] = src[j].to_f32();
        }
    }

    /// As [`super::VecOps::f16_to_f32`] (`dst.len() == src.len()`), 8 at a time.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f16c(src: &[half::f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: elements i..i + 8 lie in both slices.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        for j in i..n {
            dst[j] = src[j].to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token for every variant this CPU runs.
    fn variants() -> Vec<VecOps> {
        let mut v: Vec<VecOps> = Isa::supported()
            .into_iter()
            .filter_map(Isa::check)
            .map(VecOps::new)
            .collect();
        v.dedup();
        v
    }

    /// The transform is the Sylvester matrix product, in blocks, and its
    /// own inverse.
    #[test]
    fn hadamard_is_the_normalized_sylvester_product() {
        for ops in variants() {
            for n in [1, 2, 32, 64, 128] {
                // H[i][j] = (−1)^popcount(i & j) / √n.
                let h = |i: usize, j: usize| {
                    let s = if (i & j).count_ones().is_multiple_of(2) {
                        1.0
                    } else {
                        -1.0
                    };
                    s / (n as f64).sqrt()
                };
                let x = values(3 * n, 9.0);
                let mut y = x.clone();
                ops.hadamard(&mut y, n);
                for b in 0..3 {
                    for i in 0..n {
                        let want: f64 = (0..n).map(|j| h(i, j) * f64::from(x[b * n + j])).sum();
                        assert!(
                            (f64::from(y[b * n + i]) - want).abs() <= 1e-5,
                            "{n} [{b} {i}]"
                        );
                    }
                }
                ops.hadamard(&mut y, n);
                assert!(max_diff(&x, &y) <= 1e-5, "{n}: not its own inverse");
            }
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// The vectorized block conversions give the scalar dequantizer's
    /// bits, on rows of 1 to 5 blocks with every scale sign and quant.
    #[test]
    fn quant_blocks_convert_as_the_scalar_dequantizer() {
        use crate::quant::{dequantize_row, quantize_row, GgmlType};
        type Convert = fn(VecOps, &[u8], &mut [f32]);
        let cases: [(GgmlType, Convert); 2] = [
            (GgmlType::Q8_0, VecOps::q8_0_to_f32),
            (GgmlType::Q4_0, VecOps::q4_0_to_f32),
        ];
        for ((ty, convert), ops) in cases
            .into_iter()
            .flat_map(|c| variants().into_iter().map(move |ops| (c, ops)))
        {
            for blocks in 1..=5 {
                let n = 32 * blocks;
                let x: Vec<f32> = (0..n)
                    .map(|i| {
                        ((i as f32) * 0.37).sin() * (1.0 + i as f32 / 7.0) * [1.0, -3.0][i % 2]
                    })
                    .collect();
                let mut q = vec![0u8; ty.row_bytes(n).unwrap()];
                quantize_row(ty, &x, &mut q).unwrap();
                // Raw bytes too: every i8 / nibble value and a negative scale.
                let raw: Vec<u8> = (0..q.len()).map(|i| (i * 37 + 11) as u8).collect();
                for src in [&q, &raw] {
                    let mut want = vec![0.0f32; n];
                    dequantize_row(ty, src, &mut want).unwrap();
                    let mut got = vec![f32::NAN; n + 5];
                    convert(ops, src, &mut got);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                            "{ty:?} {n} [{i}]: {g} vs {w}"
                        );
                    }
                    assert!(got[n..].iter().all(|v| v.is_nan()), "wrote past the blocks");
                }
            }
        }
    }

    /// Every f16 bit pattern converts exactly (NaN to a NaN), at odd lengths.
    #[test]
    fn f16_rows_convert_exactly() {
        for ops in variants() {
            let all: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
            for n in [0, 1, 7, 8, 15, 16, 17, 63, 64, 65, all.len()] {
                let src = &all[all.len() - n..];
                let mut dst = vec![0.0f32; n + 3];
                ops.f16_to_f32(src, &mut dst);
                for (h, f) in src.iter().zip(&dst) {
                    let want = h.to_f32();
                    assert!(
                        f.to_bits() == want.to_bits() || (f.is_nan() && want.is_nan()),
                        "{:#06x}: {f} vs {want}",
                        h.to_bits()
                    );
                }
                assert!(dst[n..].iter().all(|&x| x == 0.0));
            }
        }
    }

    #[test]
    fn ops_match_plain_loops_on_odd_lengths() {
        for ops in variants() {
            for n in [0, 1, 7, 31, 32, 33, 64, 100, 129] {
                let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
                let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
                let want: f64 = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| f64::from(*x) * f64::from(*y))
                    .sum();
                assert!(
                    (f64::from(ops.dot(&a, &b)) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{n}"
                );
                let mut y = b.clone();
                ops.scale(&mut y, 2.0);
                for i in 0..n {
                    assert_eq!(y[i], 2.0 * b[i]);
                }
            }
        }
    }
    #[test]
    fn exp_matches_std_exp_within_two_ulp() {
        let mut worst = 0u32;
        let mut x = 0.0f32;
        while x > -87.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(got.to_bits().abs_diff(want.to_bits()));
            x -= 0.000_37;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(f32::NAN), 0.0);
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed) * 0.731).sin()).collect()
    }

    /// Every row-count pass (8, 4, 2, 1 and their mixes), head sizes with
    /// and without tails, no keys; outputs poisoned first.
    #[test]
    fn scores_match_f64_dot_products() {
        for ops in variants() {
            for d in [1, 7, 8, 64, 80, 128, 130] {
                for rows in [1, 2, 3, 4, 5, 8, 11, 16, 19] {
                    for keys in [0, 1, 5] {
                        let (q, k) = (values(rows * d, 1.0), values(keys * d, 2.0));
                        let mut out = vec![f32::NAN; rows * keys];
                        ops.scores(&q, &k, d, &mut out);
                        for r in 0..rows {
                            for j in 0..keys {
                                let want: f64 = (0..d)
                                    .map(|c| f64::from(q[r * d + c]) * f64::from(k[j * d + c]))
                                    .sum();
                                let got = f64::from(out[r * keys + j]);
                                assert!(
                                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                    "{d} {rows} {keys} [{r} {j}]"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// A row's scores are the same bits whether it is computed alone or in
    /// a batch of rows (so logits do not depend on how a prompt is chunked).
    #[test]
    fn scores_do_not_depend_on_the_batch() {
        for ops in variants() {
            let (d, rows, keys) = (80, 7, 3);
            let (q, k) = (values(rows * d, 7.0), values(keys * d, 8.0));
            let mut all = vec![0.0; rows * keys];
            ops.scores(&q, &k, d, &mut all);
            for r in 0..rows {
                let mut one = vec![0.0; keys];
                ops.scores(&q[r * d..(r + 1) * d], &k, d, &mut one);
                assert_eq!(one, all[r * keys..(r + 1) * keys], "row {r}");
            }
        }
    }

    #[test]
    fn weighted_sums_and_exp_sums_match_plain_loops() {
        for ops in variants() {
            for d in [1, 7, 64, 100, 128, 200] {
                for n in [0, 1, 3, 9] {
                    let (p, v) = (values(n, 3.0), values(n * d, 4.0));
                    let mut o = values(d, 5.0);
                    let want: Vec<f64> = (0..d)
                        .map(|c| {
                            f64::from(o[c])
                                + (0..n)
                                    .map(|j| f64::from(p[j]) * f64::from(v[j * d + c]))
                                    .sum::<f64>()
                        })
                        .collect();
                    ops.weighted_sum(&mut o, &p, &v);
                    for (c, (g, w)) in o.iter().zip(&want).enumerate() {
                        assert!(
                            (f64::from(*g) - w).abs() <= 1e-5 * (1.0 + w.abs()),
                            "{d} {n} [{c}]"
                        );
                    }
                }
            }
            for n in [0, 1, 7, 8, 9, 64, 67] {
                let mut x = values(n, 6.0);
                let m = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let want: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
                let sum = ops.exp_sub(&mut x, m);
                for (g, w) in x.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-6, "{n}");
                }
                assert!(
                    (sum - want.iter().sum::<f32>()).abs() <= 1e-5 * n as f32,
                    "{n}"
                );
            }
        }
    }

    /// The scalar instruction set runs the portable code: every operation
    /// gives the bits of its portable body (on x86-64 without FMA), which
    /// the fused variants do not (checked where this CPU has one, so the
    /// comparison can tell them apart).
    #[test]
    fn the_scalar_instruction_set_runs_the_portable_code() {
        let scalar = VecOps::new(Isa::Scalar.check().unwrap());
        assert_eq!(scalar.path(), "portable");
        let (a, b) = (values(1000, 1.0), values(1000, 2.0));
        let (d, rows, keys) = (64, 3, 5);
        let (q, k) = (values(rows * d, 3.0), values(keys * d, 4.0));
        let p = values(keys, 5.0);
        // Everything the attention of a forward pass calls, as bits.
        let run = |ops: VecOps| -> Vec<u32> {
            let mut out = vec![ops.dot(&a, &b)];
            let mut sc = vec![0.0; rows * keys];
            ops.scores(&q, &k, d, &mut sc);
            out.extend(&sc);
            let mut o = values(d, 6.0);
            ops.weighted_sum(&mut o, &p, &k);
            out.extend(&o);
            out.iter().map(|v| v.to_bits()).collect()
        };
        let portable = || -> Vec<u32> {
            let mut out = vec![dot_body::<BASE_FMA>(&a, &b)];
            let mut sc = vec![0.0; rows * keys];
            scores_body::<BASE_FMA>(&q, &k, d, &mut sc);
            out.extend(&sc);
            let mut o = values(d, 6.0);
            weighted_sum_body::<BASE_FMA>(&mut o, &p, &k);
            out.extend(&o);
            out.iter().map(|v| v.to_bits()).collect()
        };
        assert_eq!(run(scalar), portable());
        for ops in variants().into_iter().filter(|&o| o != scalar) {
            if !BASE_FMA {
                assert_ne!(run(ops), portable(), "{}", ops.path());
            }
        }
    }
}
