//! AVX-512 VNNI tile kernel: one 512-bit lane per weight row, `vpdpbusd`
//! (unsigned weight levels × signed activation levels) with the activation
//! word broadcast to all 16 rows, so a tile needs no horizontal sums.

use std::arch::x86_64::*;

use super::act::QuantizedActs;
use super::format::{Format, TILE};

/// Whether this CPU has everything the kernel uses.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vl")
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

/// Rows of activations per call: `NA` (1..=4).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,fma,f16c")]
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
    // 4-byte words per row per group; with nibbles each word gives two operands.
    let nd = grb / 4;
    let nops = if NIB { 2 * nd } else { nd };
    let sets = 1 + usize::from(MIN);
    let header = 2 * TILE * sets + if SUP { gpu * TILE * sets } else { 0 };
    let unit_bytes = header + gpu * TILE * grb;
    let units = cols / unit;
    let nib_mask = _mm512_set1_epi8(0x0f);

    let aq: [*const i8; NA] = std::array::from_fn(|r| acts.row(r0 + r).as_ptr());
    let ad: [*const f32; NA] = std::array::from_fn(|r| acts.scales(r0 + r).as_ptr());
    let asum: [*const i32; NA] = std::array::from_fn(|r| acts.sums(r0 + r, G).as_ptr());
    let mut acc = [_mm512_setzero_ps(); NA];
    let base = tile.as_ptr();

    for u in 0..units {
        let ub = base.add(u * unit_bytes);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(ub.cast()));
        let dm = if MIN {
            _mm512_cvtph_ps(_mm256_loadu_si256(ub.add(2 * TILE).cast()))
        } else {
            _mm512_setzero_ps()
        };
        let scp = ub.add(2 * TILE * sets);
        let mp = scp.add(gpu * TILE);
        let mut wp = ub.add(header);
        for gi in 0..gpu {
            let (s, m) = if SUP {
                let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                    scp.add(gi * TILE).cast(),
                )));
                let m = if MIN {
                    let mv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                        mp.add(gi * TILE).cast(),
                    )));
                    _mm512_mul_ps(dm, mv)
                } else {
                    _mm512_setzero_ps()
                };
                (_mm512_mul_ps(d, sc), m)
            } else {
                (d, dm)
            };
            let mut w = [_mm512_setzero_si512(); 8];
            for p in 0..nd {
                let v = _mm512_loadu_si512(wp.add(p * 64).cast());
                if NIB {
                    w[p] = _mm512_and_si512(v, nib_mask);
                    w[nd + p] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib_mask);
                } else {
                    w[p] = v;
                }
            }
            let gg = u * gpu + gi;
            for r in 0..NA {
                // Operand p holds levels 4p..4p+4 of each row (for nibbles the
                // high halves continue at G/2 = 4·nd), matching activation
                // bytes 4p..4p+4 of the group.
                let a = aq[r].add(gg * G);
                // Four independent accumulators: a chain of dependent
                // vpdpbusd (5 cycles each) would bound the loop, not the loads.
                let mut part = [_mm512_setzero_si512(); 4];
                for (p, wv) in w.iter().enumerate().take(nops) {
                    let word = std::ptr::read_unaligned(a.add(4 * p).cast::<i32>());
                    part[p % 4] = _mm512_dpbusd_epi32(part[p % 4], *wv, _mm512_set1_epi32(word));
                }
                let isum = _mm512_add_epi32(
                    _mm512_add_epi32(part[0], part[1]),
                    _mm512_add_epi32(part[2], part[3]),
                );
                let sa = *asum[r].add(gg);
                let da = *ad[r].add(gg * G / 32);
                let t = _mm512_cvtepi32_ps(_mm512_sub_epi32(isum, _mm512_set1_epi32(off * sa)));
                let mut v = _mm512_mul_ps(s, t);
                if MIN {
                    v = _mm512_fmadd_ps(m, _mm512_set1_ps(sa as f32), v);
                }
                acc[r] = _mm512_fmadd_ps(v, _mm512_set1_ps(da), acc[r]);
            }
            wp = wp.add(TILE * grb);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(r * TILE), *a);
    }
}
