//! AVX-512 VNNI tile kernel: one 512-bit lane per weight row, `vpdpbusd`
//! (unsigned weight levels × signed activation levels) with the activation
//! word broadcast to all 16 rows, so a tile needs no horizontal sums.

use std::arch::x86_64::*;

use super::act::QuantizedActs;
use super::format::{
    level_words, triads, Format, GroupAt, UnitLayout, UnitScales, IQ4_LEVELS, SUPER, TILE,
};
use super::{prefetch, PREFETCH_AHEAD};

/// Whether this CPU has everything the kernel uses.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

layout_kernels!(kernel);

/// Rows of activations per call: `NA` (1..=4). The legacy types (one scale
/// per group) are computed here, the k-quants by [`superblock_kernel`]. The
/// split layouts (`HB` high bits per level) and the lookup layout (`LUT`)
/// rebuild the byte layout's levels in [`load_group`], so they compute its
/// integer sums and float operations.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,fma,f16c")]
unsafe fn kernel<
    const NIB: bool,
    const CR: bool,
    const G: usize,
    const SUP: bool,
    const MIN: bool,
    const HB: u32,
    const LUT: bool,
    const NA: usize,
>(
    off: i32,
    cols: usize,
    tile: &[u8],
    acts: &QuantizedActs,
    r0: usize,
    out: &mut [f32],
) {
    if SUP {
        return superblock_kernel::<NIB, CR, G, MIN, HB, LUT, NA>(off, cols, tile, acts, r0, out);
    }
    let layout = UnitLayout::of(NIB, CR, G, false, MIN, HB);
    // 4-byte words per row per group; with nibbles each word gives two
    // operands (the split layout's plane word follows).
    let nd = level_words(NIB, CR, G);
    let nops = G / 4;
    let chains = chains(NA);
    let unit_bytes = layout.bytes;
    let nib_mask = _mm512_set1_epi8(0x0f);

    let aq: [*const i8; NA] = std::array::from_fn(|r| acts.row(r0 + r).as_ptr());
    let ad: [*const f32; NA] = std::array::from_fn(|r| acts.scales(r0 + r).as_ptr());
    let asum: [*const i16; NA] = std::array::from_fn(|r| acts.sums(r0 + r, G).as_ptr());
    let bias: [*const i32; NA] = std::array::from_fn(|r| acts.biases(r0 + r).as_ptr());
    let mut acc = [_mm512_setzero_ps(); NA];
    let base = tile.as_ptr();

    for g in 0..cols / G {
        let ub = base.add(g * unit_bytes);
        prefetch(ub.wrapping_add(PREFETCH_AHEAD), unit_bytes);
        let s = _mm512_cvtph_ps(_mm256_loadu_si256(ub.cast()));
        let m = if MIN {
            _mm512_cvtph_ps(_mm256_loadu_si256(ub.add(2 * TILE).cast()))
        } else {
            _mm512_setzero_ps()
        };
        let at = layout.group(0);
        let w = load_group::<NIB, CR, HB, LUT>(ub, at, nd, nops, nib_mask);
        for r in 0..NA {
            // Operand p holds levels 4p..4p+4 of each row (for nibbles the
            // high halves continue at G/2 = 4·nd), matching activation
            // bytes 4p..4p+4 of the group. The offset term starts the sum.
            let isum = dot_group(aq[r].add(g * G), &w, nops, chains, *bias[r].add(g));
            let mut v = _mm512_mul_ps(s, _mm512_cvtepi32_ps(isum));
            if MIN {
                v = _mm512_fmadd_ps(m, _mm512_set1_ps(f32::from(*asum[r].add(g))), v);
            }
            acc[r] = _mm512_fmadd_ps(v, _mm512_set1_ps(*ad[r].add(g * G / 32)), acc[r]);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(r * TILE), *a);
    }
}

/// Independent `vpdpbusd` chains per activation row (5 cycles of latency
/// each): with several rows the rows' chains interleave, alone a row needs four.
pub(super) const fn chains(na: usize) -> usize {
    if na == 1 {
        4
    } else {
        2
    }
}

/// The operands of one group of a tile, the group at `at` of the unit at
/// `ub`: `nd` words of 16 rows, each split into its low and high nibbles
/// when `NIB`, into four operands of 2 bits (bits `2j`, operand `4p + j`)
/// when `CR` (in the triad layout, `CR` with `HB`, see [`triad_group`]);
/// in the split layouts (`HB` high bits per level, not 0), each of the
/// `nops` operands' high bits or-ed in from the plane word; in the lookup
/// layout (`LUT`), each nibble looked up in [`IQ4_LEVELS`].
#[inline(always)]
unsafe fn load_group<const NIB: bool, const CR: bool, const HB: u32, const LUT: bool>(
    ub: *const u8,
    at: GroupAt,
    nd: usize,
    nops: usize,
    nib_mask: __m512i,
) -> [__m512i; 8] {
    if triads(CR, HB) {
        return triad_group(ub, at);
    }
    let wp = ub.add(at.levels);
    let mut w = [_mm512_setzero_si512(); 8];
    for p in 0..nd {
        let v = _mm512_loadu_si512(wp.add(p * 64).cast());
        if CR {
            let mask = _mm512_set1_epi8(3);
            w[4 * p] = _mm512_and_si512(v, mask);
            w[4 * p + 1] = _mm512_and_si512(_mm512_srli_epi16::<2>(v), mask);
            w[4 * p + 2] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
            w[4 * p + 3] = _mm512_and_si512(_mm512_srli_epi16::<6>(v), mask);
        } else if NIB {
            w[p] = _mm512_and_si512(v, nib_mask);
            w[nd + p] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib_mask);
        } else {
            w[p] = v;
        }
    }
    if HB > 0 {
        // Nibble groups do not share their plane word.
        let plane = _mm512_loadu_si512(ub.add(at.plane).cast());
        for (o, w) in w.iter_mut().enumerate().take(nops) {
            *w = _mm512_or_si512(*w, split_high_bits::<HB>(plane, o));
        }
    }
    if LUT {
        let levels = _mm512_broadcast_i32x4(_mm_loadu_si128(IQ4_LEVELS.as_ptr().cast()));
        for w in w.iter_mut().take(nops) {
            *w = _mm512_shuffle_epi8(levels, *w);
        }
    }
    w
}

/// [`load_group`] for the triad layout (Q3_K compact; crumbs with one high
/// bit): the group's four operands from its pair's words X, Y, Z as the
/// format docs give them, the two that straddle words merged by one
/// `vpternlogd` (bits 0..2 of the first, the rest of the second) and
/// masked.
#[inline(always)]
unsafe fn triad_group(ub: *const u8, at: GroupAt) -> [__m512i; 8] {
    let word = |at: usize| _mm512_loadu_si512(ub.add(at).cast());
    let (x, y, z) = (word(at.set), word(at.set + 64), word(at.plane));
    let (m3, m7) = (_mm512_set1_epi8(3), _mm512_set1_epi8(7));
    let low = |v| _mm512_and_si512(v, m7);
    let high = |v| _mm512_and_si512(_mm512_srli_epi16::<3>(v), m7);
    let zero = _mm512_setzero_si512();
    if at.first() {
        return [low(x), high(x), low(y), high(y), zero, zero, zero, zero];
    }
    // (a & 3) | (b & !3), then the level's bits.
    let merge = |a, b| _mm512_and_si512(_mm512_ternarylogic_epi32::<0xE4>(a, b, m3), m7);
    [
        low(z),
        high(z),
        merge(_mm512_srli_epi16::<6>(x), _mm512_srli_epi16::<4>(z)),
        merge(_mm512_srli_epi16::<6>(y), _mm512_srli_epi16::<5>(z)),
        zero,
        zero,
        zero,
        zero,
    ]
}

/// The split layout's `HB` (1 or 2) high bits of operand `o` (0..8 or 0..4)
/// of a group, from its plane word, in place (from bit 4 of each byte):
/// they sit at bits `HB·o` of the plane's bytes (16-bit shifts by at most 4
/// keep them in their byte; `o` is a constant where the loops unroll, and
/// so are the shifts).
#[inline(always)]
pub(super) unsafe fn split_high_bits<const HB: u32>(plane: __m512i, o: usize) -> __m512i {
    let left = 4 - (HB * o as u32) as i32;
    let x = if left >= 0 {
        _mm512_sll_epi16(plane, _mm_cvtsi32_si128(left))
    } else {
        _mm512_srl_epi16(plane, _mm_cvtsi32_si128(-left))
    };
    let mask = ((1 << HB) - 1) << 4;
    _mm512_and_si512(x, _mm512_set1_epi8(mask))
}

/// `init + Σ_p w[p] · a[4p..4p+4]` per row (lane) over the first `nops`
/// operands, in `chains` independent accumulators.
#[inline(always)]
pub(super) unsafe fn dot_group(
    a: *const i8,
    w: &[__m512i; 8],
    nops: usize,
    chains: usize,
    init: i32,
) -> __m512i {
    let mut part = [_mm512_setzero_si512(); 4];
    part[0] = _mm512_set1_epi32(init);
    for (p, wv) in w.iter().enumerate().take(nops) {
        let word = std::ptr::read_unaligned(a.add(4 * p).cast::<i32>());
        part[p % chains] = _mm512_dpbusd_epi32(part[p % chains], *wv, _mm512_set1_epi32(word));
    }
    let mut isum = _mm512_add_epi32(part[0], part[1]);
    if chains == 4 {
        isum = _mm512_add_epi32(isum, _mm512_add_epi32(part[2], part[3]));
    }
    isum
}

/// The k-quant kernel. The activations' 32-blocks share one scale per
/// superblock up to a power of two ([`ActMode::Superblock`]), so each
/// group's integer sum is shifted by its block's exponent, scaled by the
/// group's `sc` in f32 and summed over the superblock; the superblock's `d`
/// and activation scale are applied once. The offset starts each group's
/// integer sum; the min term `Σ m·sa` over the groups (with shifted sums
/// `sa`) is an integer dot product of (min, min) pairs with (sum, sum) pairs
/// (`vpdpwssd`), once per superblock.
///
/// The split layouts (`HB` high bits per level: Q6_K, Q5_K) and the lookup
/// layout (`LUT`: IQ4_XS) rebuild the byte layout's levels in
/// [`load_group`], so they compute its integer sums and float operations.
///
/// [`ActMode::Superblock`]: super::act::ActMode::Superblock
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,fma,f16c")]
unsafe fn superblock_kernel<
    const NIB: bool,
    const CR: bool,
    const G: usize,
    const MIN: bool,
    const HB: u32,
    const LUT: bool,
    const NA: usize,
>(
    _off: i32,
    cols: usize,
    tile: &[u8],
    acts: &QuantizedActs,
    r0: usize,
    out: &mut [f32],
) {
    let groups_per_unit = SUPER / G;
    let nd = level_words(NIB, CR, G);
    // Bytes of a row per group: the nibble or byte words, and the plane.
    let layout = UnitLayout::of(NIB, CR, G, true, MIN, HB);
    let (header, grb, unit_bytes) = (layout.header, layout.group_row, layout.bytes);
    let nops = G / 4;
    let chains = chains(NA);
    let sets = 1 + usize::from(MIN);
    let units = cols / SUPER;
    let nib_mask = _mm512_set1_epi8(0x0f);

    let aq: [*const i8; NA] = std::array::from_fn(|r| acts.row(r0 + r).as_ptr());
    let sd: [*const f32; NA] = std::array::from_fn(|r| acts.superblock_scales(r0 + r).as_ptr());
    let shift: [*const u32; NA] = std::array::from_fn(|r| acts.shifts(r0 + r).as_ptr());
    let asum: [*const i16; NA] = std::array::from_fn(|r| acts.shifted_sums(r0 + r, G).as_ptr());
    let bias: [*const i32; NA] = std::array::from_fn(|r| acts.biases(r0 + r).as_ptr());
    let mut acc = [_mm512_setzero_ps(); NA];
    let base = tile.as_ptr();

    for u in 0..units {
        let ub = base.add(u * unit_bytes);
        prefetch(ub.wrapping_add(PREFETCH_AHEAD), header);
        let scp = ub.add(2 * TILE * sets);
        let scales = UnitScales::read(scp, CR, G, true, MIN);
        let scp = scales.as_ptr();
        let mp = scp.add(groups_per_unit * TILE);
        // Σ_g sc_g · (Σ (u − off)·a << shift) over the superblock, per row.
        let mut fsum = [_mm512_setzero_ps(); NA];
        for gi in 0..groups_per_unit {
            let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                scp.add(gi * TILE).cast(),
            )));
            let at = layout.group(gi);
            prefetch(ub.wrapping_add(at.levels + PREFETCH_AHEAD), TILE * grb);
            let w = load_group::<NIB, CR, HB, LUT>(ub, at, nd, nops, nib_mask);
            let gg = u * groups_per_unit + gi;
            let at = gg * G;
            for r in 0..NA {
                let isum = dot_group(aq[r].add(at), &w, nops, chains, *bias[r].add(gg));
                let isum =
                    _mm512_sllv_epi32(isum, _mm512_set1_epi32(*shift[r].add(at / 32) as i32));
                fsum[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sc, fsum[r]);
            }
        }
        // Σ_g m_g·sa_g (for the mins).
        let mut imin = [_mm512_setzero_si512(); NA];
        if MIN {
            for j in 0..groups_per_unit / 2 {
                let (lo, hi) = (
                    _mm_loadu_si128(mp.add(2 * j * TILE).cast()),
                    _mm_loadu_si128(mp.add((2 * j + 1) * TILE).cast()),
                );
                let mw = _mm512_cvtepi8_epi16(_mm256_set_m128i(
                    _mm_unpackhi_epi8(lo, hi),
                    _mm_unpacklo_epi8(lo, hi),
                ));
                for r in 0..NA {
                    let sa = _mm512_set1_epi32(std::ptr::read_unaligned(
                        asum[r].add(u * groups_per_unit + 2 * j).cast::<i32>(),
                    ));
                    imin[r] = _mm512_dpwssd_epi32(imin[r], mw, sa);
                }
            }
        }
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(ub.cast()));
        let dm = if MIN {
            _mm512_cvtph_ps(_mm256_loadu_si256(ub.add(2 * TILE).cast()))
        } else {
            _mm512_setzero_ps()
        };
        for r in 0..NA {
            let mut v = _mm512_mul_ps(d, fsum[r]);
            if MIN {
                v = _mm512_fmadd_ps(dm, _mm512_cvtepi32_ps(imin[r]), v);
            }
            acc[r] = _mm512_fmadd_ps(v, _mm512_set1_ps(*sd[r].add(u)), acc[r]);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(r * TILE), *a);
    }
}
