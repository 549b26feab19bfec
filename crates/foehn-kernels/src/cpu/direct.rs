//! Direct kernels: products that read the weights in the file's own layout
//! (GGUF blocks, row after row), for matrices that are not packed yet.
//!
//! A matrix whose packed tiles are the file's size need not be packed
//! before its first product with many activation rows: until then
//! the model runs straight on the memory-mapped file, with no copy to fault
//! in (see `QMatrix::packed`): that is Q8_0, Q4_K and Q6_K on AVX2,
//! AVX-512 VNNI and NEON (dotprod) here. A model packs them on a background
//! thread meanwhile (`QMatrix::pack_after_first_use`): their tiles decode
//! faster (the direct kernels read many short row streams side by side).
//!
//! The AVX-512 kernels read 16 rows at once, one per lane as in a tile:
//! 32 bytes of each row by plain loads, transposed in registers into eight
//! tile words (no gathers: `vpgatherdq` made them 3–5× slower than the
//! tiles on AMD Zen 5). The lanes then run the tile kernel's own operations
//! (`vpdpbusd` on broadcast activation words, its float sums per group in
//! order), with no sums across lanes. Every kernel prefetches its rows a
//! few blocks ahead ([`PREFETCH_BYTES`]).
//!
//! Zen 5, 2 threads, streamed 4096 × 4096 products with one activation row
//! (`cargo bench --bench kernels -- matvec_direct`), share of the packed
//! tiles' GB/s in the same run: AVX-512 Q4_K 0.68–0.73, Q6_K 0.46–0.63,
//! Q8_0 0.73–1.12 (0.19–0.26 with gathers, no prefetch); AVX2 0.65–0.72,
//! 0.71–0.75, 0.76–0.93 (0.24–0.34, 0.57–0.61, 0.30–0.38 with no
//! prefetch).
//!
//! A direct kernel computes every output **bit for bit** as the tile kernel
//! of its instruction set does (same integer dot product per block, same
//! float operations in the same order), so a product gives the same result
//! whether the matrix is packed yet or not.

use super::act::QuantizedActs;
use super::format::Format;
use super::{Isa, SupportedIsa};
use crate::quant::Defer;
use crate::GgmlType;

/// Activation rows a direct kernel computes at once.
pub(crate) const MAX_ROWS: usize = 4;

/// A direct kernel's entry point (see [`DirectKernel::product`]); only safe
/// on a CPU that runs its instruction set.
type RawDirectFn =
    unsafe fn(&[u8], usize, usize, usize, &QuantizedActs, usize, usize, *mut f32, usize);

/// The direct kernel of `ty` on `isa`, if that instruction set has one
/// (compiled for this target; whether the CPU runs it is not checked).
/// Each must give its instruction set's tile kernel's results bit for bit.
fn kernel_of(ty: GgmlType, isa: Isa) -> Option<RawDirectFn> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match ty {
            GgmlType::Q8_0 => Some(avx2::q8_0),
            GgmlType::Q4_K => Some(avx2::q4_k),
            GgmlType::Q6_K => Some(avx2::q6_k),
            _ => None,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx512Amx => match ty {
            GgmlType::Q8_0 => Some(avx512::q8_0),
            GgmlType::Q4_K => Some(avx512::q4_k),
            GgmlType::Q6_K => Some(avx512::q6_k),
            _ => None,
        },
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDotprod => match ty {
            GgmlType::Q8_0 => Some(neon::q8_0),
            GgmlType::Q4_K => Some(neon::q4_k),
            GgmlType::Q6_K => Some(neon::q6_k),
            _ => None,
        },
        _ => {
            let _ = ty;
            None
        }
    }
}

/// A direct kernel for one type on an instruction set this CPU runs, chosen
/// when a matrix's packing is deferred.
#[derive(Clone, Copy)]
pub(crate) struct DirectKernel {
    /// The packed format of the weights' type on the kernel's instruction
    /// set, whose activations the kernel reads.
    fmt: Format,
    f: RawDirectFn,
}

impl DirectKernel {
    /// The direct kernel for weights of `ty` on `isa`, where the type's row
    /// lets packing wait ([`Defer`]) and the instruction set has one.
    pub(crate) fn select(ty: GgmlType, isa: SupportedIsa) -> Option<Self> {
        let defer = ty.packing()?.defer;
        if defer == Defer::Never {
            return None;
        }
        let fmt = Format::for_isa(ty, isa.isa())?;
        kernel_of(ty, isa.isa()).map(|f| Self { fmt, f })
    }

    /// `out[j · stride + r] = W[r] · a[a0 + j]` for the `rows` rows of `w`
    /// (`cols` weights each, back to back in the file's layout) and `na`
    /// activation rows, quantized for the type's packed format.
    ///
    /// # Safety
    /// `out` must be valid for writes of every `j · stride + r` (`j < na`,
    /// `r < rows`).
    ///
    /// # Panics
    /// When `w` or `acts` are too short for the call, `acts` were quantized
    /// for another format or `na` is not 1..=4.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn product(
        &self,
        w: &[u8],
        rows: usize,
        cols: usize,
        acts: &QuantizedActs,
        a0: usize,
        na: usize,
        out: *mut f32,
        stride: usize,
    ) {
        let row_bytes = self.fmt.ty.row_bytes(cols).unwrap_or(usize::MAX);
        assert!(
            rows.checked_mul(row_bytes).is_some_and(|b| b <= w.len())
                && acts.cols == cols
                && acts.quantized_for(&self.fmt)
                && (1..=MAX_ROWS).contains(&na)
                && a0 + na <= acts.n,
            "direct product: wrong weights, activations or rows"
        );
        // SAFETY: `f` was selected for an instruction set this CPU runs
        // (`SupportedIsa` is only made by checking); the lengths it reads
        // are checked above and `out` is the caller's contract.
        unsafe { (self.f)(w, row_bytes, rows, cols, acts, a0, na, out, stride) }
    }
}

/// How far ahead of its reads a direct kernel prefetches each row: a pass
/// reads 8 or 16 rows side by side, each its own stream, too short and too
/// many for the hardware prefetchers (7B Q4_K rows are 2304 bytes). On AMD
/// Zen 5, of 0–4608 bytes ahead, 256–576 were best (and within noise of
/// each other).
#[cfg(target_arch = "x86_64")]
const PREFETCH_BYTES: usize = 384;

/// Asks for the cache line(s) of the block of `bytes` a few blocks after
/// `blk` (which is `pos` bytes into a row of `row_bytes`) of a pass over
/// `rows` rows. Past the row's end, the same distance into the row that
/// the next pass reads in this row's place (`rows` rows on).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch(blk: *const u8, pos: usize, bytes: usize, row_bytes: usize, rows: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let mut ahead = bytes * PREFETCH_BYTES.div_ceil(bytes);
    if pos + ahead >= row_bytes {
        ahead += (rows - 1) * row_bytes;
    }
    let at = blk.wrapping_add(ahead);
    for k in (0..bytes).step_by(64) {
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(k).cast()) };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::prefetch;
    use crate::cpu::act::{QuantizedActs, ACT_BLOCK};
    use crate::cpu::format::SUPER;
    use crate::GgmlType;

    /// Bytes of a Q8_0 block: an f16 scale, then 32 signed levels.
    const Q8_0_BLOCK: usize = GgmlType::Q8_0.type_size();
    /// Bytes of a Q4_K block: `d`, `dmin` (f16), 12 bytes of 6-bit scales
    /// and mins, 128 bytes of nibbles.
    const Q4_K_BLOCK: usize = GgmlType::Q4_K.type_size();
    /// Bytes of a Q6_K block: 128 bytes of low nibbles, 64 of high bit
    /// pairs, 16 signed scales, `d` (f16).
    const Q6_K_BLOCK: usize = GgmlType::Q6_K.type_size();

    /// The signature of one pass: rows `r0..r0 + R` of `w` times activation
    /// rows `a0..a0 + NA` (`R · NA ≤ 8`: pair `k = r · NA + j` in lane `k`).
    type Pass = unsafe fn(&[u8], usize, usize, usize, &QuantizedActs, usize, *mut f32, usize);

    /// Defines the entry point `$name` (as [`super::DirectKernel::product`] for one type)
    /// over the passes of `$rows`: up to eight (row, activation row) pairs
    /// per pass, so that every weight block is loaded once per pass and
    /// serves all `na` activation rows.
    macro_rules! entry {
        ($name:ident, $rows:ident) => {
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $name(
                w: &[u8],
                row_bytes: usize,
                rows: usize,
                cols: usize,
                acts: &QuantizedActs,
                a0: usize,
                na: usize,
                out: *mut f32,
                stride: usize,
            ) {
                let (r, one): (usize, [Pass; 2]) = match na {
                    1 => (8, [$rows::<8, 1>, $rows::<1, 1>]),
                    2 => (4, [$rows::<4, 2>, $rows::<1, 2>]),
                    3 => (2, [$rows::<2, 3>, $rows::<1, 3>]),
                    _ => (2, [$rows::<2, 4>, $rows::<1, 4>]),
                };
                let whole = rows - rows % r;
                for r0 in (0..whole).step_by(r) {
                    one[0](w, row_bytes, r0, cols, acts, a0, out, stride);
                }
                for r0 in whole..rows {
                    one[1](w, row_bytes, r0, cols, acts, a0, out, stride);
                }
            }
        };
    }
    entry!(q8_0, q8_0_rows);
    entry!(q4_k, q4_k_rows);
    entry!(q6_k, q6_k_rows);

    /// Writes lane `r · NA + j` of `acc` to `out[j · stride + r0 + r]`.
    #[target_feature(enable = "avx2")]
    unsafe fn store<const R: usize, const NA: usize>(
        acc: __m256,
        out: *mut f32,
        r0: usize,
        stride: usize,
    ) {
        let mut res = [0.0f32; 8];
        _mm256_storeu_ps(res.as_mut_ptr(), acc);
        for r in 0..R {
            for j in 0..NA {
                *out.add(j * stride + r0 + r) = res[r * NA + j];
            }
        }
    }

    /// Lane `k` = `v[k % NA]`: an activation row's value in each of its pairs.
    #[inline(always)]
    unsafe fn per_act<const R: usize, const NA: usize>(v: [f32; NA]) -> __m256 {
        let mut l = [0.0f32; 8];
        for (k, l) in l.iter_mut().enumerate().take(R * NA) {
            *l = v[k % NA];
        }
        _mm256_loadu_ps(l.as_ptr())
    }

    /// Q8_0: per block and pair the exact integer dot product `Σ q · a`
    /// (the sign trick on `vpmaddubsw`, as the tile kernel), eight pairs
    /// summed across their lanes at once, then `acc = fma(d_w · Σ, d_a,
    /// acc)` per pair in block order — the tile kernel's operations for one
    /// lane.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn q8_0_rows<const R: usize, const NA: usize>(
        w: &[u8],
        row_bytes: usize,
        r0: usize,
        cols: usize,
        acts: &QuantizedActs,
        a0: usize,
        out: *mut f32,
        stride: usize,
    ) {
        debug_assert!(R * NA <= 8);
        let ones = _mm256_set1_epi16(1);
        let base = w.as_ptr().add(r0 * row_bytes);
        let aq: [*const i8; NA] = std::array::from_fn(|j| acts.row(a0 + j).as_ptr());
        let ad: [*const f32; NA] = std::array::from_fn(|j| acts.scales(a0 + j).as_ptr());
        let mut acc = _mm256_setzero_ps();
        for b in 0..cols / ACT_BLOCK {
            let x: [__m256i; NA] =
                std::array::from_fn(|j| _mm256_loadu_si256(aq[j].add(ACT_BLOCK * b).cast()));
            let mut sums = [_mm256_setzero_si256(); 8];
            let mut dw = [0i16; 8];
            for r in 0..R {
                let blk = base.add(r * row_bytes + Q8_0_BLOCK * b);
                prefetch(blk, Q8_0_BLOCK * b, Q8_0_BLOCK, row_bytes, R);
                let d = std::ptr::read_unaligned(blk.cast::<i16>());
                let q = _mm256_loadu_si256(blk.add(2).cast());
                let mag = _mm256_abs_epi8(q);
                for j in 0..NA {
                    let p = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(x[j], q));
                    sums[r * NA + j] = _mm256_madd_epi16(p, ones);
                    dw[r * NA + j] = d;
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(dw.as_ptr().cast()));
            let da = per_act::<R, NA>(std::array::from_fn(|j| *ad[j].add(b)));
            let v = _mm256_mul_ps(d, _mm256_cvtepi32_ps(lane_sums(sums)));
            acc = _mm256_fmadd_ps(v, da, acc);
        }
        store::<R, NA>(acc, out, r0, stride);
    }

    /// Pointers into the superblock-mode activations of rows `a0..a0 + NA`.
    struct SuperblockActs<const NA: usize> {
        /// The int8 values.
        aq: [*const i8; NA],
        /// `D / 8` per superblock.
        sd: [*const f32; NA],
        /// The shift of each 32-block.
        sh: [*const u32; NA],
        /// The shifted level sums per group of the weights' group size.
        ws: [*const i16; NA],
    }

    impl<const NA: usize> SuperblockActs<NA> {
        fn new(acts: &QuantizedActs, a0: usize, group: usize) -> Self {
            Self {
                aq: std::array::from_fn(|j| acts.row(a0 + j).as_ptr()),
                sd: std::array::from_fn(|j| acts.superblock_scales(a0 + j).as_ptr()),
                sh: std::array::from_fn(|j| acts.shifts(a0 + j).as_ptr()),
                ws: std::array::from_fn(|j| acts.shifted_sums(a0 + j, group).as_ptr()),
            }
        }
    }

    /// `1 << shift` of each of the eight 32-blocks of superblock `u` of an
    /// activation row (`shifts` = the row's [`QuantizedActs::shifts`]).
    #[inline(always)]
    unsafe fn powers(shifts: *const u32, u: usize) -> [i16; 8] {
        std::array::from_fn(|b| 1 << *shifts.add(8 * u + b))
    }

    /// Q4_K, per superblock and pair the tile kernel's two exact integers —
    /// `Σ_g sc_g · (Σ_k u_k · a_k << shift_g)` and `Σ_g m_g · (shifted level
    /// sum of g)` — then its float operations: `v = d · Σ`, `v = fma(−dmin,
    /// Σ_min, v)`, `acc = fma(v, D/8, acc)`. The shifts are folded into the
    /// 16-bit sub-scales (`sc · 2^shift ≤ 504`), so every `vpmaddwd`
    /// applies scale and shift at once.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // j, n index several arrays
    unsafe fn q4_k_rows<const R: usize, const NA: usize>(
        w: &[u8],
        row_bytes: usize,
        r0: usize,
        cols: usize,
        acts: &QuantizedActs,
        a0: usize,
        out: *mut f32,
        stride: usize,
    ) {
        debug_assert!(R * NA <= 8);
        let nib = _mm256_set1_epi8(0x0f);
        // Byte pairs selecting 16-bit element g of a 128-bit half.
        let pick: [__m256i; 8] = std::array::from_fn(|g| {
            _mm256_set1_epi16(i16::from_le_bytes([2 * g as u8, 2 * g as u8 + 1]))
        });
        let base = w.as_ptr().add(r0 * row_bytes);
        let SuperblockActs { aq, sd, sh, ws } = SuperblockActs::<NA>::new(acts, a0, 32);
        let mut acc = _mm256_setzero_ps();
        for u in 0..cols / SUPER {
            let p2: [__m128i; NA] =
                std::array::from_fn(|j| _mm_loadu_si128(powers(sh[j], u).as_ptr().cast()));
            let wsum: [__m128i; NA] =
                std::array::from_fn(|j| _mm_loadu_si128(ws[j].add(8 * u).cast()));
            let mut sums = [_mm256_setzero_si256(); 8];
            let mut mins = [0i32; 8];
            let mut dw = [0u16; 8];
            let mut mw = [0u16; 8];
            for r in 0..R {
                let blk = base.add(r * row_bytes + Q4_K_BLOCK * u);
                prefetch(blk, Q4_K_BLOCK * u, Q4_K_BLOCK, row_bytes, R);
                let d = std::ptr::read_unaligned(blk.cast::<u16>());
                // −dmin: the tile's min factor.
                let dmin = std::ptr::read_unaligned(blk.add(2).cast::<u16>()) ^ 0x8000;
                let (sc, m) = scales_q4_k(std::ptr::read_unaligned(blk.add(4).cast()));
                let sc = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
                let m = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(m as i64));
                // Per activation row: the sub-scales times 2^shift, in both
                // halves, and Σ_g m_g · shifted sum_g.
                let mult: [__m256i; NA] = std::array::from_fn(|j| {
                    _mm256_broadcastsi128_si256(_mm_mullo_epi16(sc, p2[j]))
                });
                for j in 0..NA {
                    let k = r * NA + j;
                    dw[k] = d;
                    mw[k] = dmin;
                    mins[k] = hsum4(_mm_madd_epi16(m, wsum[j]));
                }
                for c in 0..4 {
                    let v = _mm256_loadu_si256(blk.add(16 + 32 * c).cast());
                    let lo = _mm256_and_si256(v, nib);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
                    for j in 0..NA {
                        let at = aq[j].add(SUPER * u + 64 * c);
                        let x0 = _mm256_loadu_si256(at.cast());
                        let x1 = _mm256_loadu_si256(at.add(32).cast());
                        let s0 = _mm256_shuffle_epi8(mult[j], pick[2 * c]);
                        let s1 = _mm256_shuffle_epi8(mult[j], pick[2 * c + 1]);
                        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), s0);
                        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), s1);
                        let k = r * NA + j;
                        sums[k] = _mm256_add_epi32(sums[k], _mm256_add_epi32(p0, p1));
                    }
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(dw.as_ptr().cast()));
            let dm = _mm256_cvtph_ps(_mm_loadu_si128(mw.as_ptr().cast()));
            let imin = _mm256_loadu_si256(mins.as_ptr().cast());
            let scale = per_act::<R, NA>(std::array::from_fn(|j| *sd[j].add(u)));
            let mut v = _mm256_mul_ps(d, _mm256_cvtepi32_ps(lane_sums(sums)));
            v = _mm256_fmadd_ps(dm, _mm256_cvtepi32_ps(imin), v);
            acc = _mm256_fmadd_ps(v, scale, acc);
        }
        store::<R, NA>(acc, out, r0, stride);
    }

    /// Q6_K, per superblock and pair the tile kernel's exact integer
    /// `Σ_g sc_g · (Σ_k (u_k − 32) · a_k << shift_g)`, as `Σ u · a` on
    /// `vpmaddubsw` (levels up to 63: no saturation) less `32 · Σ_g sc_g ·
    /// (shifted level sum of g)`, then `v = d · Σ`, `acc = fma(v, D/8, acc)`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // j, n index several arrays
    unsafe fn q6_k_rows<const R: usize, const NA: usize>(
        w: &[u8],
        row_bytes: usize,
        r0: usize,
        cols: usize,
        acts: &QuantizedActs,
        a0: usize,
        out: *mut f32,
        stride: usize,
    ) {
        debug_assert!(R * NA <= 8);
        let nib = _mm256_set1_epi8(0x0f);
        let top = _mm256_set1_epi8(0x30);
        // Operand c of a half covers groups 2c (low 128 bits) and 2c + 1
        // (high): byte pairs selecting those 16-bit elements of a half.
        let pick: [__m256i; 4] = std::array::from_fn(|c| {
            let e = |g: usize| i16::from_le_bytes([2 * g as u8, 2 * g as u8 + 1]);
            _mm256_setr_m128i(_mm_set1_epi16(e(2 * c)), _mm_set1_epi16(e(2 * c + 1)))
        });
        let base = w.as_ptr().add(r0 * row_bytes);
        let SuperblockActs { aq, sd, sh, ws } = SuperblockActs::<NA>::new(acts, a0, 16);
        let mut acc = _mm256_setzero_ps();
        for u in 0..cols / SUPER {
            // 2^shift per group of 16 (a 32-block's two groups share it).
            let p2: [__m256i; NA] = std::array::from_fn(|j| {
                let p = powers(sh[j], u);
                let g: [i16; 16] = std::array::from_fn(|g| p[g / 2]);
                _mm256_loadu_si256(g.as_ptr().cast())
            });
            let wsum: [__m256i; NA] =
                std::array::from_fn(|j| _mm256_loadu_si256(ws[j].add(16 * u).cast()));
            let mut sums = [_mm256_setzero_si256(); 8];
            let mut dw = [0u16; 8];
            for r in 0..R {
                let blk = base.add(r * row_bytes + Q6_K_BLOCK * u);
                prefetch(blk, Q6_K_BLOCK * u, Q6_K_BLOCK, row_bytes, R);
                let d = std::ptr::read_unaligned(blk.add(208).cast::<u16>());
                let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192).cast()));
                // Per activation row: sc · 2^shift per group, each half of
                // the superblock duplicated in both 128-bit halves.
                let mult: [[__m256i; 2]; NA] = std::array::from_fn(|j| {
                    let m = _mm256_mullo_epi16(sc, p2[j]);
                    [
                        _mm256_permute2x128_si256::<0x00>(m, m),
                        _mm256_permute2x128_si256::<0x11>(m, m),
                    ]
                });
                for j in 0..NA {
                    let k = r * NA + j;
                    dw[k] = d;
                    // −32 · Σ_g sc_g · shifted sum_g.
                    let bias = _mm256_madd_epi16(sc, wsum[j]);
                    sums[k] = _mm256_sub_epi32(sums[k], _mm256_slli_epi32::<5>(bias));
                }
                for n in 0..2 {
                    let ql0 = _mm256_loadu_si256(blk.add(64 * n).cast());
                    let ql1 = _mm256_loadu_si256(blk.add(64 * n + 32).cast());
                    let qh = _mm256_loadu_si256(blk.add(128 + 32 * n).cast());
                    let high = |s: i32| {
                        let h = match s {
                            0 => _mm256_slli_epi16::<4>(qh),
                            2 => _mm256_slli_epi16::<2>(qh),
                            4 => qh,
                            _ => _mm256_srli_epi16::<2>(qh),
                        };
                        _mm256_and_si256(h, top)
                    };
                    let q = [
                        _mm256_or_si256(_mm256_and_si256(ql0, nib), high(0)),
                        _mm256_or_si256(_mm256_and_si256(ql1, nib), high(2)),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), nib),
                            high(4),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), nib),
                            high(6),
                        ),
                    ];
                    for j in 0..NA {
                        let at = aq[j].add(SUPER * u + 128 * n);
                        let k = r * NA + j;
                        for (c, &q) in q.iter().enumerate() {
                            let x = _mm256_loadu_si256(at.add(32 * c).cast());
                            let s = _mm256_shuffle_epi8(mult[j][n], pick[c]);
                            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), s);
                            sums[k] = _mm256_add_epi32(sums[k], p);
                        }
                    }
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(dw.as_ptr().cast()));
            let scale = per_act::<R, NA>(std::array::from_fn(|j| *sd[j].add(u)));
            let v = _mm256_mul_ps(d, _mm256_cvtepi32_ps(lane_sums(sums)));
            acc = _mm256_fmadd_ps(v, scale, acc);
        }
        store::<R, NA>(acc, out, r0, stride);
    }

    /// The eight 6-bit scales and eight 6-bit mins of a Q4_K block's 12
    /// scale bytes, one per byte (ggml's `get_scale_min_k4` for all eight
    /// at once).
    #[inline(always)]
    fn scales_q4_k(q: [u8; 12]) -> (u64, u64) {
        let word =
            |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
        let (w0, w1, w2) = (word(0), word(1), word(2));
        let (low6, nib, top2) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
        let sc_lo = w0 & low6;
        let sc_hi = (w2 & nib) | (((w0 >> 6) & top2) << 4);
        let m_lo = w1 & low6;
        let m_hi = ((w2 >> 4) & nib) | (((w1 >> 6) & top2) << 4);
        (
            u64::from(sc_lo) | (u64::from(sc_hi) << 32),
            u64::from(m_lo) | (u64::from(m_hi) << 32),
        )
    }

    /// The sum of the four lanes (exact: integer adds).
    #[inline(always)]
    unsafe fn hsum4(v: __m128i) -> i32 {
        let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
        let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
        _mm_cvtsi128_si32(v)
    }

    /// Lane `k` of the result is the sum of the eight lanes of `v[k]`
    /// (exact: integer adds).
    #[target_feature(enable = "avx2")]
    fn lane_sums(v: [__m256i; 8]) -> __m256i {
        let t0 = _mm256_hadd_epi32(v[0], v[1]);
        let t1 = _mm256_hadd_epi32(v[2], v[3]);
        let t2 = _mm256_hadd_epi32(v[4], v[5]);
        let t3 = _mm256_hadd_epi32(v[6], v[7]);
        // Per 128-bit half: the half-sums of v[0..4] (u0) and v[4..8] (u1).
        let u0 = _mm256_hadd_epi32(t0, t1);
        let u1 = _mm256_hadd_epi32(t2, t3);
        let low = _mm256_permute2x128_si256::<0x20>(u0, u1);
        let high = _mm256_permute2x128_si256::<0x31>(u0, u1);
        _mm256_add_epi32(low, high)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::cpu::act::{QuantizedActs, ACT_BLOCK};
    use crate::cpu::avx512::{chains, dot_group};
    use crate::cpu::format::{SUPER, TILE};
    use crate::GgmlType;

    /// Bytes of a Q8_0 block: an f16 scale, then 32 signed levels.
    const Q8_0_BLOCK: usize = GgmlType::Q8_0.type_size();
    /// Bytes of a Q4_K block: `d`, `dmin` (f16), 12 bytes of 6-bit scales
    /// and mins, 128 bytes of nibbles.
    const Q4_K_BLOCK: usize = GgmlType::Q4_K.type_size();
    /// Bytes of a Q6_K block: 128 bytes of low nibbles, 64 of high bit
    /// pairs, 16 signed scales, `d` (f16).
    const Q6_K_BLOCK: usize = GgmlType::Q6_K.type_size();

    /// The signature of one pass: the `nr ≤ 16` rows from `base` (one per
    /// lane, `row_bytes` apart) times activation rows `a0..a0 + NA`, into
    /// `out[j · stride + i]`.
    type Pass = unsafe fn(*const u8, usize, usize, usize, &QuantizedActs, usize, *mut f32, usize);

    /// Defines the entry point `$name` (as [`super::DirectKernel::product`] for one type)
    /// over passes of `$pass`: up to 16 rows each, one per lane as in a
    /// tile, so that the float operations are the tile kernel's, lane for
    /// lane.
    macro_rules! entry {
        ($name:ident, $pass:ident) => {
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $name(
                w: &[u8],
                row_bytes: usize,
                rows: usize,
                cols: usize,
                acts: &QuantizedActs,
                a0: usize,
                na: usize,
                out: *mut f32,
                stride: usize,
            ) {
                let pass: Pass = match na {
                    1 => $pass::<1>,
                    2 => $pass::<2>,
                    3 => $pass::<3>,
                    _ => $pass::<4>,
                };
                for r0 in (0..rows).step_by(TILE) {
                    let nr = TILE.min(rows - r0);
                    let base = w.as_ptr().add(r0 * row_bytes);
                    pass(base, row_bytes, nr, cols, acts, a0, out.add(r0), stride);
                }
            }
        };
    }
    entry!(q8_0, q8_0_pass);
    entry!(q4_k, q4_k_pass);
    entry!(q6_k, q6_k_pass);

    /// The lanes of a pass: the mask of its `nr` rows and each row's byte
    /// offset from the first (lanes past the rows read the first row again;
    /// their results are never stored).
    ///
    /// Words reach the lanes by plain row loads and a transpose in
    /// registers, not by gathers: `vpgatherdq` made these kernels 3–5×
    /// slower than the tiles on AMD Zen 5 (and gathers are slow on Intel
    /// cores with the Downfall microcode too).
    struct Lanes {
        mask: __mmask16,
        offsets: [usize; TILE],
        row_bytes: usize,
    }

    impl Lanes {
        /// The lanes of `nr` rows (1..=16) `row_bytes` apart.
        #[inline(always)]
        fn new(nr: usize, row_bytes: usize) -> Self {
            Self {
                mask: ((1u32 << nr) - 1) as __mmask16,
                offsets: std::array::from_fn(|i| if i < nr { i * row_bytes } else { 0 }),
                row_bytes,
            }
        }

        /// [`prefetch`](super::prefetch)es the block at `p` (in the first
        /// row, `pos` bytes into it) of each row.
        #[inline(always)]
        unsafe fn prefetch(&self, p: *const u8, pos: usize, bytes: usize) {
            for &off in &self.offsets {
                super::prefetch(p.wrapping_add(off), pos, bytes, self.row_bytes, TILE);
            }
        }

        /// The 32 bytes at `p` of row `i` (`p` in the first row).
        #[inline(always)]
        unsafe fn row32(&self, p: *const u8, i: usize) -> __m256i {
            _mm256_loadu_si256(p.add(self.offsets[i]).cast())
        }

        /// The 16 bytes at `p` of row `i` (`p` in the first row).
        #[inline(always)]
        unsafe fn row16(&self, p: *const u8, i: usize) -> __m128i {
            _mm_loadu_si128(p.add(self.offsets[i]).cast())
        }

        /// The eight 4-byte words at `p` (in the first row) of each row, in
        /// the layout of a tile's words: word `k` of row `i` in lane `i` of
        /// vector `k`.
        ///
        /// Vector `z[k]` holds rows `k` and `k + 4` (`k < 4`), or `k + 4` and
        /// `k + 8`, in its 256-bit halves; two unpack rounds transpose each
        /// 128-bit lane's 4 × 4 words, and a lane shuffle puts rows in order.
        ///
        /// (No closures here: they would not inherit the callers' target
        /// features, and calls to them are not inlined.)
        #[inline(always)]
        unsafe fn words8(&self, p: *const u8) -> [__m512i; 8] {
            let mut z = [_mm512_setzero_si512(); 8];
            for (k, z) in z.iter_mut().enumerate() {
                let (a, b) = if k < 4 { (k, k + 4) } else { (k + 4, k + 8) };
                let lo = _mm512_castsi256_si512(self.row32(p, a));
                *z = _mm512_inserti64x4::<1>(lo, self.row32(p, b));
            }
            // Lanes of `u[q]`: word q of rows 0–3, word q + 4 of rows 0–3,
            // word q of rows 4–7, word q + 4 of rows 4–7; `v[q]` the same for
            // rows 8–15.
            let u = transpose4(&z[..4]);
            let v = transpose4(&z[4..]);
            let mut out = [_mm512_setzero_si512(); 8];
            for q in 0..4 {
                out[q] = _mm512_shuffle_i32x4::<0b10_00_10_00>(u[q], v[q]);
                out[q + 4] = _mm512_shuffle_i32x4::<0b11_01_11_01>(u[q], v[q]);
            }
            out
        }

        /// The four 4-byte words at `p` (in the first row) of each row, as
        /// [`words8`](Self::words8) lays them out: vector `z[k]` holds rows
        /// `k`, `k + 4`, `k + 8` and `k + 12` in its 128-bit lanes, whose
        /// 4 × 4 words two unpack rounds transpose.
        #[inline(always)]
        unsafe fn words4(&self, p: *const u8) -> [__m512i; 4] {
            let mut z = [_mm512_setzero_si512(); 4];
            for (k, z) in z.iter_mut().enumerate() {
                let v = _mm512_castsi128_si512(self.row16(p, k));
                let v = _mm512_inserti32x4::<1>(v, self.row16(p, k + 4));
                let v = _mm512_inserti32x4::<2>(v, self.row16(p, k + 8));
                *z = _mm512_inserti32x4::<3>(v, self.row16(p, k + 12));
            }
            transpose4(&z)
        }

        /// The f16 at `p` (in the first row) of each row, as f32.
        #[inline(always)]
        unsafe fn half(&self, p: *const u8) -> __m512 {
            let mut h = _mm256_setzero_si256();
            for i in 0..TILE {
                let v = std::ptr::read_unaligned(p.add(self.offsets[i]).cast::<i16>());
                h = insert16(h, v, i);
            }
            _mm512_cvtph_ps(h)
        }

        /// Writes lane `i < nr` of `acc[j]` to `out[j · stride + i]`.
        #[inline(always)]
        unsafe fn store<const NA: usize>(&self, acc: &[__m512; NA], out: *mut f32, stride: usize) {
            for (j, a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(j * stride), self.mask, *a);
            }
        }
    }

    /// Per 128-bit lane, the 4 × 4 words of `z[0..4]` transposed: word `q`
    /// of the lane of `z[r]` is word `r` of the lane of result `q`.
    #[inline(always)]
    unsafe fn transpose4(z: &[__m512i]) -> [__m512i; 4] {
        let t0 = _mm512_unpacklo_epi32(z[0], z[1]);
        let t1 = _mm512_unpackhi_epi32(z[0], z[1]);
        let t2 = _mm512_unpacklo_epi32(z[2], z[3]);
        let t3 = _mm512_unpackhi_epi32(z[2], z[3]);
        [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ]
    }

    /// `h` with its 16-bit element `i` set to `v`.
    #[inline(always)]
    unsafe fn insert16(h: __m256i, v: i16, i: usize) -> __m256i {
        macro_rules! at {
            ($($i:literal)*) => {
                match i {
                    $($i => _mm256_insert_epi16::<$i>(h, v),)*
                    _ => unreachable!(),
                }
            };
        }
        at!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
    }

    /// The f16 in the low 16 bits of each lane, as f32.
    #[inline(always)]
    unsafe fn f16_low(v: __m512i) -> __m512 {
        _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
    }

    /// Q8_0 as the tile kernel's legacy loop (`kernel` in `avx512.rs`):
    /// levels `q + 128` (the packed `u`) in words of 16 rows, the offset
    /// term starting each block's integer sum, then `v = d · Σ`, `acc =
    /// fma(v, d_a, acc)` per block.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn q8_0_pass<const NA: usize>(
        base: *const u8,
        row_bytes: usize,
        nr: usize,
        cols: usize,
        acts: &QuantizedActs,
        a0: usize,
        out: *mut f32,
        stride: usize,
    ) {
        let lanes = Lanes::new(nr, row_bytes);
        let flip = _mm512_set1_epi8(-128);
        let aq: [*const i8; NA] = std::array::from_fn(|j| acts.row(a0 + j).as_ptr());
        let ad: [*const f32; NA] = std::array::from_fn(|j| acts.scales(a0 + j).as_ptr());
        let bias: [*const i32; NA] = std::array::from_fn(|j| acts.biases(a0 + j).as_ptr());
        let mut acc = [_mm512_setzero_ps(); NA];
        for g in 0..cols / ACT_BLOCK {
            let blk = base.add(g * Q8_0_BLOCK);
            lanes.prefetch(blk, g * Q8_0_BLOCK, Q8_0_BLOCK);
            let s = lanes.half(blk);
            let mut w = lanes.words8(blk.add(2));
            for w in &mut w {
                *w = _mm512_xor_si512(*w, flip);
            }
            for j in 0..NA {
                let isum = dot_group(aq[j].add(g * ACT_BLOCK), &w, 8, chains(NA), *bias[j].add(g));
                let v = _mm512_mul_ps(s, _mm512_cvtepi32_ps(isum));
                acc[j] = _mm512_fmadd_ps(v, _mm512_set1_ps(*ad[j].add(g)), acc[j]);
            }
        }
        lanes.store(&acc, out, stride);
    }

    /// Byte `b` of each lane, zero-extended, as f32.
    #[inline(always)]
    unsafe fn byte_u(v: __m512i, b: u32) -> __m512 {
        let v = _mm512_srl_epi32(v, _mm_cvtsi32_si128(8 * b as i32));
        _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xff)))
    }

    /// Byte `b` of each lane, sign-extended, as f32.
    #[inline(always)]
    unsafe fn byte_i(v: __m512i, b: u32) -> __m512 {
        let v = _mm512_sll_epi32(v, _mm_cvtsi32_si128(24 - 8 * b as i32));
        _mm512_cvtepi32_ps(_mm512_srai_epi32::<24>(v))
    }

    /// Bytes 0 and 1 (`HIGH`: 2 and 3) of each lane as the low and high
    /// 16-bit halves, zero-extended.
    #[inline(always)]
    unsafe fn byte_pair<const HIGH: bool>(v: __m512i) -> __m512i {
        let v = if HIGH { _mm512_srli_epi32::<16>(v) } else { v };
        let lo = _mm512_and_si512(v, _mm512_set1_epi32(0xff));
        let hi = _mm512_and_si512(_mm512_slli_epi32::<8>(v), _mm512_set1_epi32(0xff_0000));
        _mm512_or_si512(lo, hi)
    }

    /// Q4_K as the tile kernel's superblock loop (`superblock_kernel` in
    /// `avx512.rs`): per group the exact integer `Σ u · a`, shifted by its
    /// activation block's shift, `fsum = fma(Σ, sc, fsum)` over the groups
    /// in order; `Σ m · sa` on `vpdpwssd` over pairs of groups; then `v = d
    /// · fsum`, `v = fma(−dmin, Σ_min, v)`, `acc = fma(v, D/8, acc)`. A
    /// file block's 32 bytes `c` hold group `2c` in their low nibbles and
    /// `2c + 1` in their high ones.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,fma,f16c")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // j indexes several arrays
    unsafe fn q4_k_pass<const NA: usize>(
        base: *const u8,
        row_bytes: usize,
        nr: usize,
        cols: usize,
        acts: &QuantizedActs,
        a0: usize,
        out: *mut f32,
        stride: usize,
    ) {
        let lanes = Lanes::new(nr, row_bytes);
        let nib = _mm512_set1_epi8(0x0f);
        let (low6, top2) = (_mm512_set1_epi8(0x3f), _mm512_set1_epi8(0x03));
        let chains = chains(NA);
        let aq: [*const i8; NA] = std::array::from_fn(|j| acts.row(a0 + j).as_ptr());
        let sd: [*const f32; NA] = std::array::from_fn(|j| acts.superblock_scales(a0 + j).as_ptr());
        let shift: [*const u32; NA] = std::array::from_fn(|j| acts.shifts(a0 + j).as_ptr());
        let asum: [*const i16; NA] =
            std::array::from_fn(|j| acts.shifted_sums(a0 + j, 32).as_ptr());
        let mut acc = [_mm512_setzero_ps(); NA];
        for u in 0..cols / SUPER {
            let blk = base.add(u * Q4_K_BLOCK);
            lanes.prefetch(blk, u * Q4_K_BLOCK, Q4_K_BLOCK);
            // `d` and `dmin`, then ggml's `get_scale_min_k4`, four bytes per
            // word.
            let [dd, w0, w1, w2] = lanes.words4(blk);
            let sc_lo = _mm512_and_si512(w0, low6);
            let sc_hi = _mm512_or_si512(
                _mm512_and_si512(w2, nib),
                _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w0), top2)),
            );
            let m_lo = _mm512_and_si512(w1, low6);
            let m_hi = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi32::<4>(w2), nib),
                _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w1), top2)),
            );
            let mut fsum = [_mm512_setzero_ps(); NA];
            for c in 0..4 {
                let mut lo = [_mm512_setzero_si512(); 8];
                let mut hi = [_mm512_setzero_si512(); 8];
                for (p, v) in lanes.words8(blk.add(16 + 32 * c)).into_iter().enumerate() {
                    lo[p] = _mm512_and_si512(v, nib);
                    hi[p] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib);
                }
                let sc_word = if c < 2 { sc_lo } else { sc_hi };
                for (h, w) in [lo, hi].iter().enumerate() {
                    let g = 2 * c + h;
                    let sc = byte_u(sc_word, (g % 4) as u32);
                    for j in 0..NA {
                        let at = SUPER * u + 32 * g;
                        let isum = dot_group(aq[j].add(at), w, 8, chains, 0);
                        let isum = _mm512_sllv_epi32(
                            isum,
                            _mm512_set1_epi32(*shift[j].add(at / 32) as i32),
                        );
                        fsum[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sc, fsum[j]);
                    }
                }
            }
            let mins = [
                byte_pair::<false>(m_lo),
                byte_pair::<true>(m_lo),
                byte_pair::<false>(m_hi),
                byte_pair::<true>(m_hi),
            ];
            let d = f16_low(dd);
            // −dmin: the tile's min factor.
            let dm = f16_low(_mm512_xor_si512(
                _mm512_srli_epi32::<16>(dd),
                _mm512_set1_epi32(0x8000),
            ));
            for j in 0..NA {
                let mut imin = _mm512_setzero_si512();
                for (k, m) in mins.iter().enumerate() {
                    let sa = std::ptr::read_unaligned(asum[j].add(8 * u + 2 * k).cast::<i32>());
                    imin = _mm512_dpwssd_epi32(imin, *m, _mm512_set1_epi32(sa));
                }
                let mut v = _mm512_mul_ps(d, fsum[j]);
                v = _mm512_fmadd_ps(dm, _mm512_cvtepi32_ps(imin), v);
                acc[j] = _mm512_fmadd_ps(v, _mm512_set1_ps(*sd[j].add(u)), acc[j]);
            }
        }
        lanes.store(&acc, out, stride);
    }

    /// Q6_K as the tile kernel's superblock loop: per group of 16 the exact
    /// integer `Σ u · a` started by the offset term `−32 · Σ a`, shifted by
    /// its activation block's shift, `fsum = fma(Σ, sc, fsum)` over the
    /// groups in order, then `v = d · fsum`, `acc = fma(v, D/8, acc)`. Half
    /// `n` of a file block holds, per 4-byte word `p` of its low nibbles
    /// `A`/`B` and high bit pairs `H`, levels `128n + 4p + 32q` (`q` = 0..4:
    /// low nibbles of `A`, of `B`, high nibbles of `A`, of `B`, each with
    /// bit pair `q` of `H`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,fma,f16c")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // j indexes several arrays
    unsafe fn q6_k_pass<const NA: usize>(
        base: *const u8,
        row_bytes: usize,
        nr: usize,
        cols: usize,
        acts: &QuantizedActs,
        a0: usize,
        out: *mut f32,
        stride: usize,
    ) {
        let lanes = Lanes::new(nr, row_bytes);
        let (nib, top) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
        let chains = chains(NA);
        let aq: [*const i8; NA] = std::array::from_fn(|j| acts.row(a0 + j).as_ptr());
        let sd: [*const f32; NA] = std::array::from_fn(|j| acts.superblock_scales(a0 + j).as_ptr());
        let shift: [*const u32; NA] = std::array::from_fn(|j| acts.shifts(a0 + j).as_ptr());
        let bias: [*const i32; NA] = std::array::from_fn(|j| acts.biases(a0 + j).as_ptr());
        let mut acc = [_mm512_setzero_ps(); NA];
        for u in 0..cols / SUPER {
            let blk = base.add(u * Q6_K_BLOCK);
            lanes.prefetch(blk, u * Q6_K_BLOCK, Q6_K_BLOCK);
            let scw = lanes.words4(blk.add(192));
            let mut fsum = [_mm512_setzero_ps(); NA];
            for n in 0..2 {
                let mut ops = [[_mm512_setzero_si512(); 8]; 4];
                let a = lanes.words8(blk.add(64 * n));
                let b = lanes.words8(blk.add(64 * n + 32));
                let h = lanes.words8(blk.add(128 + 32 * n));
                for p in 0..8 {
                    let (a, b, h) = (a[p], b[p], h[p]);
                    let (a_hi, b_hi) = (_mm512_srli_epi16::<4>(a), _mm512_srli_epi16::<4>(b));
                    ops[0][p] = _mm512_or_si512(
                        _mm512_and_si512(a, nib),
                        _mm512_and_si512(_mm512_slli_epi16::<4>(h), top),
                    );
                    ops[1][p] = _mm512_or_si512(
                        _mm512_and_si512(b, nib),
                        _mm512_and_si512(_mm512_slli_epi16::<2>(h), top),
                    );
                    ops[2][p] =
                        _mm512_or_si512(_mm512_and_si512(a_hi, nib), _mm512_and_si512(h, top));
                    ops[3][p] = _mm512_or_si512(
                        _mm512_and_si512(b_hi, nib),
                        _mm512_and_si512(_mm512_srli_epi16::<2>(h), top),
                    );
                }
                // Groups 8n + 2q + k in order: words 4k..4k + 4 of operand q.
                for (q, op) in ops.iter().enumerate() {
                    for k in 0..2 {
                        let g = 8 * n + 2 * q + k;
                        let mut w = [_mm512_setzero_si512(); 8];
                        w[..4].copy_from_slice(&op[4 * k..4 * k + 4]);
                        let sc = byte_i(scw[g / 4], (g % 4) as u32);
                        let gg = 16 * u + g;
                        for j in 0..NA {
                            let at = 16 * gg;
                            let isum = dot_group(aq[j].add(at), &w, 4, chains, *bias[j].add(gg));
                            let isum = _mm512_sllv_epi32(
                                isum,
                                _mm512_set1_epi32(*shift[j].add(at / 32) as i32),
                            );
                            fsum[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sc, fsum[j]);
                        }
                    }
                }
            }
            let d = lanes.half(blk.add(208));
            for j in 0..NA {
                let v = _mm512_mul_ps(d, fsum[j]);
                acc[j] = _mm512_fmadd_ps(v, _mm512_set1_ps(*sd[j].add(u)), acc[j]);
            }
        }
        lanes.store(&acc, out, stride);
    }
}

/// The NEON (dotprod) direct kernels: per weight row and activation row,
/// each group's exact integer dot product by SDOT (the signed levels of the
/// file's blocks against the activation bytes, lanes summed), then the NEON
/// tile kernel's float operations for one lane in its order, as scalar
/// `mul_add` (the same fused multiply-add as its `vfmaq`).
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;
    use std::arch::asm;

    use half::f16;

    use crate::cpu::act::{QuantizedActs, ACT_BLOCK};
    use crate::cpu::format::SUPER;
    use crate::quant::dequant::scale_min_k4;
    use crate::GgmlType;

    /// Bytes of a Q8_0 block: an f16 scale, then 32 signed levels.
    const Q8_0_BLOCK: usize = GgmlType::Q8_0.type_size();
    /// Bytes of a Q4_K block: `d`, `dmin` (f16), 12 bytes of 6-bit scales
    /// and mins, 128 bytes of nibbles.
    const Q4_K_BLOCK: usize = GgmlType::Q4_K.type_size();
    /// Bytes of a Q6_K block: 128 bytes of low nibbles, 64 of high bit
    /// pairs, 16 signed scales, `d` (f16).
    const Q6_K_BLOCK: usize = GgmlType::Q6_K.type_size();

    /// `acc + Σ w·a` over 16 byte pairs, four per lane (SDOT, vector form).
    #[inline(always)]
    unsafe fn sdot(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.16b",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            options(pure, nomem, nostack, preserves_flags),
        );
        acc
    }

    /// The exact `Σ w·a` of `16 · n` signed byte pairs.
    #[inline(always)]
    unsafe fn dot(w: *const i8, a: *const i8, n: usize) -> i32 {
        let mut acc = vdupq_n_s32(0);
        for i in 0..n {
            acc = sdot(acc, vld1q_s8(w.add(16 * i)), vld1q_s8(a.add(16 * i)));
        }
        vaddvq_s32(acc)
    }

    /// The f16 at `p`, as f32.
    #[inline(always)]
    unsafe fn half(p: *const u8) -> f32 {
        f16::from_bits(std::ptr::read_unaligned(p.cast::<u16>())).to_f32()
    }

    /// Defines the entry point `$name` over `$row`, which computes one
    /// weight row against activation rows `a0..a0 + na` (at most four).
    macro_rules! entry {
        ($name:ident, $row:ident) => {
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = "neon,dotprod")]
            pub(super) unsafe fn $name(
                w: &[u8],
                row_bytes: usize,
                rows: usize,
                cols: usize,
                acts: &QuantizedActs,
                a0: usize,
                na: usize,
                out: *mut f32,
                stride: usize,
            ) {
                for r in 0..rows {
                    let acc = $row(w.as_ptr().add(r * row_bytes), cols, acts, a0, na);
                    for (j, v) in acc.iter().enumerate().take(na) {
                        *out.add(j * stride + r) = *v;
                    }
                }
            }
        };
    }
    entry!(q8_0, q8_0_row);
    entry!(q4_k, q4_k_row);
    entry!(q6_k, q6_k_row);

    /// Q8_0 (the tile kernel's `Wide32`, one scale per block of 32): per
    /// block `v = d_w · Σ q·a`, `acc = fma(v, d_a, acc)`.
    #[inline(always)]
    unsafe fn q8_0_row(
        row: *const u8,
        cols: usize,
        acts: &QuantizedActs,
        a0: usize,
        na: usize,
    ) -> [f32; 4] {
        let mut acc = [0.0f32; 4];
        for b in 0..cols / ACT_BLOCK {
            let blk = row.add(Q8_0_BLOCK * b);
            let d = half(blk);
            for (j, acc) in acc.iter_mut().enumerate().take(na) {
                let a = acts.row(a0 + j).as_ptr().add(ACT_BLOCK * b);
                let isum = dot(blk.add(2).cast(), a, 2);
                let v = d * isum as f32;
                *acc = v.mul_add(acts.scales(a0 + j)[b], *acc);
            }
        }
        acc
    }

    /// The float tail of a superblock, as the tile kernel: `v = d · fsum`,
    /// `v = fma(−dmin, imin, v)` with a min, `acc = fma(v, D/8, acc)`.
    #[inline(always)]
    fn superblock_tail(acc: f32, d: f32, fsum: f32, min: Option<(f32, i32)>, scale: f32) -> f32 {
        let mut v = d * fsum;
        if let Some((dm, imin)) = min {
            v = dm.mul_add(imin as f32, v);
        }
        v.mul_add(scale, acc)
    }

    /// Q4_K (`SuperNib32Min`): per group of 32 the exact `Σ u·a` (nibble
    /// levels), `fsum = fma(Σ << shift, sc, fsum)` and `imin += m · (shifted
    /// level sum)`, then the superblock's tail.
    #[inline(always)]
    unsafe fn q4_k_row(
        row: *const u8,
        cols: usize,
        acts: &QuantizedActs,
        a0: usize,
        na: usize,
    ) -> [f32; 4] {
        let mut acc = [0.0f32; 4];
        let mask = vdupq_n_u8(0x0f);
        for u in 0..cols / SUPER {
            let blk = row.add(Q4_K_BLOCK * u);
            let d = half(blk);
            let dm = -half(blk.add(2));
            let scales: [u8; 12] = std::ptr::read_unaligned(blk.add(4).cast());
            let qs = blk.add(16);
            // Levels of the superblock in value order: per 64 values, the
            // low nibbles of 32 bytes, then their high nibbles.
            let mut levels = [0i8; SUPER];
            for c in 0..4 {
                for h in 0..2 {
                    let v = vld1q_u8(qs.add(32 * c + 16 * h));
                    let lo = vandq_u8(v, mask);
                    let hi = vshrq_n_u8::<4>(v);
                    let at = levels.as_mut_ptr().add(64 * c + 16 * h);
                    vst1q_s8(at, vreinterpretq_s8_u8(lo));
                    vst1q_s8(at.add(32), vreinterpretq_s8_u8(hi));
                }
            }
            for (j, acc) in acc.iter_mut().enumerate().take(na) {
                let a = acts.row(a0 + j).as_ptr().add(SUPER * u);
                let shifts = acts.shifts(a0 + j);
                let wsum = acts.shifted_sums(a0 + j, 32);
                let (mut fsum, mut imin) = (0.0f32, 0i32);
                for g in 0..SUPER / 32 {
                    let (sc, m) = scale_min_k4(g, &scales);
                    let isum = dot(levels.as_ptr().add(32 * g), a.add(32 * g), 2);
                    let t = isum.wrapping_shl(shifts[8 * u + g]) as f32;
                    fsum = t.mul_add(f32::from(sc), fsum);
                    imin = imin.wrapping_add(i32::from(m).wrapping_mul(i32::from(wsum[8 * u + g])));
                }
                let scale = acts.superblock_scales(a0 + j)[u];
                *acc = superblock_tail(*acc, d, fsum, Some((dm, imin)), scale);
            }
        }
        acc
    }

    /// Q6_K (`SuperByte16`): per group of 16 the exact `Σ (u − 32)·a`,
    /// `fsum = fma(Σ << shift, sc, fsum)`, then the superblock's tail.
    #[inline(always)]
    unsafe fn q6_k_row(
        row: *const u8,
        cols: usize,
        acts: &QuantizedActs,
        a0: usize,
        na: usize,
    ) -> [f32; 4] {
        let mut acc = [0.0f32; 4];
        let (mask, two, thirty_two) = (vdupq_n_u8(0x0f), vdupq_n_u8(0x03), vdupq_n_s8(32));
        for u in 0..cols / SUPER {
            let blk = row.add(Q6_K_BLOCK * u);
            let d = half(blk.add(208));
            let sc: [i8; 16] = std::ptr::read_unaligned(blk.add(192).cast());
            // Signed levels in value order (ggml's `dequantize_row_q6_K`).
            let mut levels = [0i8; SUPER];
            for n in 0..2 {
                let ql = blk.add(64 * n);
                let qh = blk.add(128 + 32 * n);
                for l in [0, 16] {
                    let (q0, q1, h) = (
                        vld1q_u8(ql.add(l)),
                        vld1q_u8(ql.add(l + 32)),
                        vld1q_u8(qh.add(l)),
                    );
                    let parts = [
                        vorrq_u8(vandq_u8(q0, mask), vshlq_n_u8::<4>(vandq_u8(h, two))),
                        vorrq_u8(
                            vandq_u8(q1, mask),
                            vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(h), two)),
                        ),
                        vorrq_u8(
                            vshrq_n_u8::<4>(q0),
                            vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(h), two)),
                        ),
                        vorrq_u8(vshrq_n_u8::<4>(q1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(h))),
                    ];
                    for (k, p) in parts.into_iter().enumerate() {
                        let signed = vsubq_s8(vreinterpretq_s8_u8(p), thirty_two);
                        vst1q_s8(levels.as_mut_ptr().add(128 * n + 32 * k + l), signed);
                    }
                }
            }
            for (j, acc) in acc.iter_mut().enumerate().take(na) {
                let a = acts.row(a0 + j).as_ptr().add(SUPER * u);
                let shifts = acts.shifts(a0 + j);
                let mut fsum = 0.0f32;
                for (g, &sc) in sc.iter().enumerate() {
                    let isum = dot(levels.as_ptr().add(16 * g), a.add(16 * g), 1);
                    let t = isum.wrapping_shl(shifts[8 * u + g / 2]) as f32;
                    fsum = t.mul_add(f32::from(sc), fsum);
                }
                let scale = acts.superblock_scales(a0 + j)[u];
                *acc = superblock_tail(*acc, d, fsum, None, scale);
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::format::TILE;
    use crate::cpu::testutil::random_bytes;
    use crate::cpu::{pack, TileKernel};
    use rand::{Rng, SeedableRng};

    /// The instruction sets this CPU runs that have direct kernels.
    fn isas_with_direct_kernels() -> Vec<SupportedIsa> {
        Isa::supported()
            .into_iter()
            .filter(|&isa| {
                GgmlType::ALL
                    .into_iter()
                    .any(|ty| kernel_of(ty, isa).is_some())
            })
            .filter_map(Isa::check)
            .collect()
    }

    /// On every instruction set this CPU runs that has direct kernels, they
    /// give its tile kernel's outputs bit for bit (Q8_0, Q4_K, Q6_K; odd
    /// row counts, every `na` and start row, random and extreme levels,
    /// activation blocks of different magnitudes so that the k-quants'
    /// shifts differ), with outputs poisoned first.
    #[test]
    fn direct_kernels_match_the_tile_kernel_bit_for_bit() {
        let isas = isas_with_direct_kernels();
        let names: Vec<Isa> = isas.iter().map(|i| i.isa()).collect();
        eprintln!("testing {names:?}");
        if isas.is_empty() {
            eprintln!("skipped: no instruction set with direct kernels");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        let shapes = [(1, 256), (7, 512), (16, 256), (37, 768)];
        let cases: Vec<(GgmlType, (usize, usize))> =
            [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K]
                .into_iter()
                .flat_map(|ty| shapes.into_iter().map(move |s| (ty, s)))
                .chain([(GgmlType::Q8_0, (5, 96))])
                .collect();
        for isa in isas {
            for &(ty, (rows, cols)) in &cases {
                let fmt = Format::for_isa(ty, isa.isa()).unwrap();
                let tile_kernel = TileKernel::select(fmt, isa);
                assert_eq!(tile_kernel.isa(), isa.isa(), "{ty}: a SIMD tile kernel");
                let direct = DirectKernel::select(ty, isa).unwrap();
                let rb = ty.row_bytes(cols).unwrap();
                let mut bytes = random_bytes(&mut rng, ty, rows, cols);
                // The most extreme levels in some blocks (random bytes reach
                // every level of the k-quants already).
                if ty == GgmlType::Q8_0 {
                    for blk in bytes.chunks_exact_mut(34).step_by(3) {
                        let v = if rng.gen_bool(0.5) { 0x80 } else { 0x7f };
                        blk[2..].fill(v);
                    }
                }
                let n = 6;
                let xs: Vec<f32> = (0..n * cols)
                    .map(|i| rng.gen_range(-3.0f32..3.0) / (1 << (i / 32 % 4)) as f32)
                    .collect();
                let mut acts = QuantizedActs::default();
                acts.quantize(crate::VecOps::new(crate::Isa::best()), &xs, cols, &fmt);
                let tiles = pack::pack(&fmt, rows, cols, rb, &bytes);
                let tb = fmt.tile_bytes(cols);
                let mut want = vec![0.0f32; n * rows];
                for (t, tile) in tiles.chunks_exact(tb).enumerate() {
                    for a in 0..n {
                        let mut buf = vec![f32::NAN; TILE];
                        tile_kernel.run(cols, tile, &acts, a, 1, &mut buf);
                        for i in 0..TILE.min(rows - t * TILE) {
                            want[a * rows + t * TILE + i] = buf[i];
                        }
                    }
                }
                for a0 in 0..n {
                    for na in 1..=MAX_ROWS.min(n - a0) {
                        let mut got = vec![f32::NAN; na * rows];
                        // SAFETY: `got` holds na × rows.
                        unsafe {
                            direct.product(
                                &bytes,
                                rows,
                                cols,
                                &acts,
                                a0,
                                na,
                                got.as_mut_ptr(),
                                rows,
                            )
                        };
                        for j in 0..na {
                            for r in 0..rows {
                                let (g, w) = (got[j * rows + r], want[(a0 + j) * rows + r]);
                                assert_eq!(
                                    g.to_bits(),
                                    w.to_bits(),
                                    "{:?} {ty} {rows}x{cols} a0 {a0} na {na} row {r} act {j}: {g} vs {w}",
                                    isa.isa()
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Where a direct kernel exists, the type's row lets packing wait, and
    /// every type whose row does has one somewhere.
    #[test]
    fn direct_kernels_and_the_deferral_policy_agree() {
        for ty in GgmlType::ALL {
            let defer = ty.packing().map_or(Defer::Never, |p| p.defer);
            let isas: Vec<Isa> = Isa::ALL
                .into_iter()
                .filter(|&isa| kernel_of(ty, isa).is_some())
                .collect();
            if defer == Defer::Never {
                assert!(
                    isas.is_empty(),
                    "{ty}: direct kernels on {isas:?} never used"
                );
            } else {
                assert!(!isas.is_empty(), "{ty}: deferred, but no direct kernel");
            }
            for isa in Isa::supported() {
                let isa = isa.check().unwrap();
                assert_eq!(
                    DirectKernel::select(ty, isa).is_some(),
                    defer != Defer::Never && isas.contains(&isa.isa()),
                    "{ty} {isa:?}"
                );
            }
        }
    }
}
