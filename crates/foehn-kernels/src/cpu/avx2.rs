//! AVX2 tile kernel (x86-64 without AVX-512 VNNI): the 16 rows of a tile as
//! two halves of eight 32-bit lanes; `vpmaddubsw` + `vpmaddwd` stand in for
//! `vpdpbusd`. Byte levels (up to 255) would saturate `vpmaddubsw`, so they
//! go through the sign trick on `u − 128` and the offset is corrected.

use std::arch::x86_64::*;

use super::act::QuantizedActs;
use super::format::{Format, TILE};

/// Whether this CPU has everything the kernel uses.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// As [`super::scalar::tile`].
///
/// # Safety
/// The CPU must support the features [`available`] checks.
pub(crate) unsafe fn tile(
    fmt: &Format,
    cols: usize,
    tile: &[u8],
    acts: &QuantizedActs,
    r0: usize,
    nr: usize,
    out: &mut [f32],
) {
    super::check_tile_call(fmt, cols, tile, acts, r0, nr, out);
    dispatch_shape!(kernel(fmt, cols, tile, acts, r0, nr, out))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel<
    const NIB: bool,
    const G: usize,
    const SUP: bool,
    const MIN: bool,
    const NA: usize,
>(
    off: i32,
    cols: usize,
    tile: &[u8],
    acts: &QuantizedActs,
    r0: usize,
    out: &mut [f32],
) {
    let unit = if SUP { 256 } else { G };
    let gpu = unit / G;
    let grb = if NIB { G / 2 } else { G };
    let nd = grb / 4;
    let nops = if NIB { 2 * nd } else { nd };
    let sets = 1 + usize::from(MIN);
    let header = 2 * TILE * sets + if SUP { gpu * TILE * sets } else { 0 };
    let unit_bytes = header + gpu * TILE * grb;
    let units = cols / unit;
    // Nibble levels: u·a summed over up to 8 operands stays within i16
    // (8 · 2 · 15 · 127 < 32768). Byte levels: Σ (u − 128)·a per operand.
    let corr = if NIB { off } else { off - 128 };
    let nib_mask = _mm256_set1_epi8(0x0f);
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);

    let aq: [*const i8; NA] = std::array::from_fn(|r| acts.row(r0 + r).as_ptr());
    let ad: [*const f32; NA] = std::array::from_fn(|r| acts.scales(r0 + r).as_ptr());
    let asum: [*const i16; NA] = std::array::from_fn(|r| acts.sums(r0 + r, G).as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; NA];
    let base = tile.as_ptr();

    for u in 0..units {
        let ub = base.add(u * unit_bytes);
        let scp = ub.add(2 * TILE * sets);
        let mp = scp.add(gpu * TILE);
        #[allow(clippy::needless_range_loop)]
        // h also selects the halves of `d`, `sc` and the weights
        for h in 0..2 {
            let d = _mm256_cvtph_ps(_mm_loadu_si128(ub.add(16 * h).cast()));
            let dm = if MIN {
                _mm256_cvtph_ps(_mm_loadu_si128(ub.add(2 * TILE + 16 * h).cast()))
            } else {
                _mm256_setzero_ps()
            };
            let mut wp = ub.add(header);
            for gi in 0..gpu {
                let (s, m) = if SUP {
                    let load8 = |p: *const u8| {
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast())))
                    };
                    let sc = load8(scp.add(gi * TILE + 8 * h));
                    let m = if MIN {
                        _mm256_mul_ps(dm, load8(mp.add(gi * TILE + 8 * h)))
                    } else {
                        _mm256_setzero_ps()
                    };
                    (_mm256_mul_ps(d, sc), m)
                } else {
                    (d, dm)
                };
                // Operand p: levels 4p..4p+4 of rows 8h..8h+8 (unsigned), or
                // for bytes |u − 128| with u − 128 kept for the signs.
                let mut w = [_mm256_setzero_si256(); 8];
                let mut sg = [_mm256_setzero_si256(); 8];
                for p in 0..nd {
                    let v = _mm256_loadu_si256(wp.add(p * 64 + 32 * h).cast());
                    if NIB {
                        w[p] = _mm256_and_si256(v, nib_mask);
                        w[nd + p] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib_mask);
                    } else {
                        let c = _mm256_xor_si256(v, flip);
                        w[p] = _mm256_abs_epi8(c);
                        sg[p] = c;
                    }
                }
                let gg = u * gpu + gi;
                for r in 0..NA {
                    let a = aq[r].add(gg * G);
                    let word = |p: usize| {
                        _mm256_set1_epi32(std::ptr::read_unaligned(a.add(4 * p).cast::<i32>()))
                    };
                    let isum = if NIB {
                        let mut s16 = _mm256_setzero_si256();
                        for (p, wv) in w.iter().enumerate().take(nops) {
                            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(*wv, word(p)));
                        }
                        _mm256_madd_epi16(s16, ones)
                    } else {
                        let mut s32 = _mm256_setzero_si256();
                        for p in 0..nops {
                            let prod = _mm256_maddubs_epi16(w[p], _mm256_sign_epi8(word(p), sg[p]));
                            s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(prod, ones));
                        }
                        s32
                    };
                    let sa = i32::from(*asum[r].add(gg));
                    let da = *ad[r].add(gg * G / 32);
                    let t =
                        _mm256_cvtepi32_ps(_mm256_sub_epi32(isum, _mm256_set1_epi32(corr * sa)));
                    let mut v = _mm256_mul_ps(s, t);
                    if MIN {
                        v = _mm256_fmadd_ps(m, _mm256_set1_ps(sa as f32), v);
                    }
                    acc[r][h] = _mm256_fmadd_ps(v, _mm256_set1_ps(da), acc[r][h]);
                }
                wp = wp.add(TILE * grb);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(r * TILE), a[0]);
        _mm256_storeu_ps(out.as_mut_ptr().add(r * TILE + 8), a[1]);
    }
}
