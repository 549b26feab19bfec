//! Direct kernels: products that read the weights in the file's own layout
//! (GGUF blocks, row after row), for matrices that are not packed yet.
//!
//! A matrix whose packed tiles are the file's size and whose decode would
//! gain nothing from them (it reads as many bytes either way) need not be
//! packed before its first product with many activation rows: until then
//! the model runs straight on the memory-mapped file, with no copy to fault
//! in (see `QMatrix::packed`). That is Q8_0 on AVX2 here — as in llama.cpp,
//! which does not repack Q8_0 on x86 at all.
//!
//! A direct kernel computes every output **bit for bit** as the tile kernel
//! of its instruction set does (same integer dot product per block, same
//! float operations in the same order), so a product gives the same result
//! whether the matrix is packed yet or not.

use super::act::QuantizedActs;
use super::Isa;
use crate::GgmlType;

/// Activation rows a direct kernel computes at once (a product with more
/// rows packs the matrix first).
pub(crate) const MAX_ROWS: usize = 4;

/// Whether weights of `ty` have a direct kernel on `isa` that matches its
/// tile kernel bit for bit.
pub(crate) fn available(ty: GgmlType, isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        ty == GgmlType::Q8_0 && isa == Isa::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ty, isa);
        false
    }
}

/// `out[j · stride + r] = W[r] · a[a0 + j]` for the `rows` rows of `w`
/// (`ty`, `cols` weights each, back to back) and `na` activation rows,
/// quantized for `ty`'s packed format.
///
/// # Safety
/// [`available`]`(ty, isa)` must hold for an `isa` of
/// [`Isa::supported`], and `out` must be valid for writes of every
/// `j · stride + r` (`j < na`, `r < rows`).
///
/// # Panics
/// When `w` or `acts` are too short for the call or `na` is not 1..=4.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    acts: &QuantizedActs,
    a0: usize,
    na: usize,
    out: *mut f32,
    stride: usize,
) {
    let row_bytes = ty.row_bytes(cols).unwrap_or(usize::MAX);
    assert!(
        rows.checked_mul(row_bytes).is_some_and(|b| b <= w.len())
            && acts.cols == cols
            && (1..=MAX_ROWS).contains(&na)
            && a0 + na <= acts.n,
        "direct product: wrong weights, activations or rows"
    );
    #[cfg(target_arch = "x86_64")]
    if ty == GgmlType::Q8_0 {
        // SAFETY: the caller's contract and the checks above.
        unsafe { avx2::q8_0(w, row_bytes, rows, cols, acts, a0, na, out, stride) };
        return;
    }
    let _ = (out, stride);
    unreachable!("no direct kernel for {ty}");
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::cpu::act::{QuantizedActs, ACT_BLOCK};

    /// Bytes of a Q8_0 block: an f16 scale, then 32 signed levels.
    const BLOCK: usize = 34;

    /// As [`super::product`] for Q8_0: per block and (row, activation row)
    /// pair the exact integer dot product `Σ q · a` (the sign trick on
    /// `vpmaddubsw`, as the tile kernel), eight pairs summed across their
    /// lanes at once, then `acc = fma(d_w · Σ, d_a, acc)` per pair in block
    /// order — the tile kernel's operations for one lane.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn q8_0(
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
        macro_rules! run {
            ($r:literal, $na:literal) => {{
                let whole = rows - rows % $r;
                for r in (0..whole).step_by($r) {
                    block_rows::<$r, $na>(w, row_bytes, r, cols, acts, a0, out, stride);
                }
                for r in whole..rows {
                    block_rows::<1, $na>(w, row_bytes, r, cols, acts, a0, out, stride);
                }
            }};
        }
        // Up to eight (row, activation row) pairs per pass: every weight
        // block is loaded once per pass and serves all `na` activation rows.
        match na {
            1 => run!(8, 1),
            2 => run!(4, 2),
            3 => run!(2, 3),
            _ => run!(2, 4),
        }
    }

    /// Rows `r0..r0 + R` of `w` times activation rows `a0..a0 + NA`
    /// (`R · NA ≤ 8`: pair `k = r · NA + j` in lane `k`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_rows<const R: usize, const NA: usize>(
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
                let blk = base.add(r * row_bytes + BLOCK * b);
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
            let da = if NA == 1 {
                _mm256_set1_ps(*ad[0].add(b))
            } else {
                let mut v = [0.0f32; 8];
                for (k, v) in v.iter_mut().enumerate().take(R * NA) {
                    *v = *ad[k % NA].add(b);
                }
                _mm256_loadu_ps(v.as_ptr())
            };
            let v = _mm256_mul_ps(d, _mm256_cvtepi32_ps(lane_sums(sums)));
            acc = _mm256_fmadd_ps(v, da, acc);
        }
        let mut res = [0.0f32; 8];
        _mm256_storeu_ps(res.as_mut_ptr(), acc);
        for r in 0..R {
            for j in 0..NA {
                *out.add(j * stride + r0 + r) = res[r * NA + j];
            }
        }
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::cpu::format::TILE;
    use crate::cpu::testutil::random_bytes;
    use crate::cpu::{format_for, pack, tile_fn};
    use rand::{Rng, SeedableRng};

    /// The direct kernel gives the AVX2 tile kernel's outputs bit for bit
    /// (odd row counts, every `na` and start row, extreme levels ±127/−128
    /// included), with outputs poisoned first.
    #[test]
    fn direct_q8_0_matches_the_tile_kernel_bit_for_bit() {
        if !Isa::supported().contains(&Isa::Avx2) {
            eprintln!("skipped: no AVX2");
            return;
        }
        let ty = GgmlType::Q8_0;
        let fmt = format_for(ty, Isa::Avx2).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        for (rows, cols) in [(1, 32), (7, 96), (16, 256), (37, 512)] {
            let rb = ty.row_bytes(cols).unwrap();
            let mut bytes = random_bytes(&mut rng, ty, rows, cols);
            // The most extreme levels in some blocks.
            for blk in bytes.chunks_exact_mut(34).step_by(3) {
                let v = if rng.gen_bool(0.5) { 0x80 } else { 0x7f };
                blk[2..].fill(v);
            }
            let n = 6;
            let xs: Vec<f32> = (0..n * cols)
                .map(|i| rng.gen_range(-3.0f32..3.0) / (1 << (i / 32 % 4)) as f32)
                .collect();
            let mut acts = QuantizedActs::default();
            acts.quantize(&xs, cols, &fmt);
            let tiles = pack::pack(&fmt, rows, cols, rb, &bytes);
            let tb = fmt.tile_bytes(cols);
            let mut want = vec![0.0f32; n * rows];
            for (t, tile) in tiles.chunks_exact(tb).enumerate() {
                for a in 0..n {
                    let mut buf = vec![f32::NAN; TILE];
                    tile_fn(Isa::Avx2)(&fmt, cols, tile, &acts, a, 1, &mut buf);
                    for i in 0..TILE.min(rows - t * TILE) {
                        want[a * rows + t * TILE + i] = buf[i];
                    }
                }
            }
            for a0 in 0..n {
                for na in 1..=MAX_ROWS.min(n - a0) {
                    let mut got = vec![f32::NAN; na * rows];
                    // SAFETY: AVX2 is supported; `got` holds na × rows.
                    unsafe {
                        product(
                            ty,
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
                                "{rows}x{cols} a0 {a0} na {na} row {r} act {j}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn direct_kernels_exist_only_where_they_match_a_tile_kernel() {
        for ty in GgmlType::ALL {
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::NeonDotprod] {
                assert_eq!(
                    available(ty, isa),
                    ty == GgmlType::Q8_0 && isa == Isa::Avx2,
                    "{ty} {isa:?}"
                );
            }
        }
    }
}
