//! AVX2 tile kernel (x86-64 without AVX-512 VNNI): the 16 rows of a tile as
//! two halves of eight 32-bit lanes, with `vpmaddubsw` (unsigned weight
//! levels × signed activation levels, neighbouring products summed in 16
//! bits) and `vpmaddwd` standing in for `vpdpbusd`.
//!
//! A group's `vpmaddubsw` results are chained in 16-bit lanes — `vpaddw`
//! wraps, so only the chain's final sum has to fit in 16 bits — started at
//! the activations' pair bias `−off · Σ a` for formats with a level offset,
//! and closed by one `vpmaddwd`: against ones for the legacy types, against
//! the group's sub-scale for the k-quants, whose superblock is then summed
//! in integers (each group shifted by its activation block's exponent) and
//! converted to float once. Levels up to 255 (Q8_0, IQ4_NL, IQ4_XS) would
//! saturate `vpmaddubsw`: they go through the sign trick on `u − 128`, and
//! every word closes its own chain.
//!
//! One pass computes both halves for one or two activation rows, so that
//! every broadcast activation word feeds two `vpmaddubsw` and the operands
//! and accumulators stay in the sixteen registers; three or four rows are
//! two passes, except in the layouts whose operands cost most to rebuild
//! (crumbs, triads, lookups), where they share one pass per half
//! ([`four_rows_a_pass`]). Q6_K and the 5-bit types are packed in the
//! split layouts here (low nibbles and a plane of high bits: the file's
//! size, so decode reads no more than the file, at some cost in prefill),
//! whose groups run one half at a time; IQ4_NL and IQ4_XS in the lookup
//! layouts (nibble indices that one `vpshufb` turns into signed levels for
//! the sign trick, each operand closing its own chain); Q2_K in crumbs
//! (four levels per byte, four operands per word); Q3_K in triads (3-bit
//! levels, eight in three bytes across a pair of groups: one shift and mask
//! per operand, two of eight with a second one or-ed in).

use std::arch::x86_64::*;

use super::act::QuantizedActs;
use super::format::{level_words, Format, GroupAt, UnitLayout, UnitScales, SUPER, TILE};
use super::shape::KernelShape;
use crate::quant::KVALUES_IQ4NL;

/// Whether this CPU has everything the kernel uses.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Levels stored two per byte (4 bits or fewer).
const NIB: u8 = 0;
/// One level below 128 per byte.
const BYTE: u8 = 1;
/// One level up to 255 per byte, multiplied as `u − 128` with the sign trick.
const SIGN: u8 = 2;
/// The split 6-bit layout: nibbles, with each operand's high two bits or-ed
/// in from the group's plane word (see the format docs).
const SPLIT: u8 = 3;
/// The split 5-bit layout: as [`SPLIT`] with one high bit per level.
const SPLIT5: u8 = 4;
/// The lookup layout: nibble indices into the IQ4 levels, looked up as
/// signed levels `u − 128` and multiplied with the sign trick; every
/// operand closes its own chain.
const LUT: u8 = 5;
/// Levels of 2 bits, four per byte (crumbs): operand `4p + j` is word `p`
/// shifted right by `2j`, masked.
const CRUMB: u8 = 6;
/// Levels of 3 bits, eight in three bytes across a pair of groups (the
/// triad layout, see [`triad_operands`]).
const TRI: u8 = 7;

/// Whether three or four activation rows share one decode of the weights
/// (one pass per half) rather than taking two passes of two rows over both
/// halves: where rebuilding the operands costs most, in the crumb, triad
/// and lookup layouts. (Zen 5, 7B pp128 on AVX2, t/s: Q3_K_M 26.3 → 28.4,
/// IQ4_XS 18.7 → 21.7, Q2_K 26.9 → 28.2; Q5_K_M's split layouts lost
/// 3–7 %, so they keep two rows a pass.)
const fn four_rows_a_pass(mode: u8) -> bool {
    matches!(mode, TRI | CRUMB | LUT)
}

/// The IQ4 levels as signed bytes `u − 128`, the lookup layout's table.
const SIGNED_IQ4: [i8; 16] = KVALUES_IQ4NL;

/// Bits of each level in the plane of the split layouts (0: none).
const fn high_bits(mode: u8) -> u32 {
    match mode {
        SPLIT => 2,
        SPLIT5 | TRI => 1,
        _ => 0,
    }
}

/// How the kernel computes a shape: (levels, group, superblocks, min, pair
/// bias, 16-bit chains per group). A chain's final sum, two products of
/// `(u − off) · a` per lane and operand (`off` only with the pair bias) over
/// `operands/chains` operands, must stay within ±32767 for every level and
/// activation
/// (`tests::sixteen_bit_chains_cannot_overflow`).
#[cfg(test)]
type Params = (u8, usize, bool, bool, bool, usize);

/// One list, two functions: `select` (each shape's monomorph of [`tile`])
/// and, for the tests, `params` (its parameters).
macro_rules! shapes {
    ($($shape:ident => ($m:ident, $g:literal, $sup:literal, $min:literal, $b:literal, $ch:literal)),* $(,)?) => {
        /// The kernel of `shape` (every shape has one).
        pub(crate) fn select(shape: KernelShape) -> Option<super::RawTileFn> {
            let f: super::RawTileFn = match shape {
                $(KernelShape::$shape => tile::<$m, $g, $sup, $min, $b, $ch>,)*
            };
            Some(f)
        }

        /// The parameters [`select`] monomorphizes `shape`'s kernel with.
        #[cfg(test)]
        fn params(shape: KernelShape) -> Params {
            match shape {
                $(KernelShape::$shape => ($m, $g, $sup, $min, $b, $ch),)*
            }
        }
    };
}

shapes!(
    Nib32 => (NIB, 32, false, false, true, 1),
    Nib32Min => (NIB, 32, false, true, false, 1),
    Byte32 => (BYTE, 32, false, false, true, 1),
    Byte32Min => (BYTE, 32, false, true, false, 2),
    Split32 => (SPLIT5, 32, false, false, true, 1),
    Split32Min => (SPLIT5, 32, false, true, false, 2),
    Wide32 => (SIGN, 32, false, false, false, 8),
    Lut32 => (LUT, 32, false, false, false, 8),
    SuperNib32Min => (NIB, 32, true, true, false, 1),
    SuperByte32Min => (BYTE, 32, true, true, false, 2),
    SuperWide32 => (SIGN, 32, true, false, false, 8),
    SuperLut32 => (LUT, 32, true, false, false, 8),
    SuperByte16 => (BYTE, 16, true, false, true, 1),
    SuperSplit16 => (SPLIT, 16, true, false, true, 1),
    SuperSplit32Min => (SPLIT5, 32, true, true, false, 2),
    SuperNib16 => (NIB, 16, true, false, true, 1),
    SuperNib16Min => (NIB, 16, true, true, false, 1),
    SuperCrumb16Min => (CRUMB, 16, true, true, false, 1),
    SuperTri16 => (TRI, 16, true, false, true, 1),
);

/// As [`super::scalar::tile`], for one shape: one or two activation rows
/// per pass over both halves of the tile (each broadcast activation word
/// feeds both halves); three or four rows are two such passes, or one pass
/// per half where [`four_rows_a_pass`].
///
/// # Safety
/// The CPU must support the features [`available`] checks.
unsafe fn tile<
    const MODE: u8,
    const G: usize,
    const SUP: bool,
    const MIN: bool,
    const BIAS: bool,
    const CH: usize,
>(
    fmt: &Format,
    cols: usize,
    tile: &[u8],
    acts: &QuantizedActs,
    r0: usize,
    nr: usize,
    out: &mut [f32],
) {
    super::check_tile_call(fmt, cols, tile, acts, r0, nr, out);
    match nr {
        1 => kernel::<MODE, G, SUP, MIN, BIAS, CH, 1>(cols, tile, acts, r0, out),
        2 => kernel::<MODE, G, SUP, MIN, BIAS, CH, 2>(cols, tile, acts, r0, out),
        3 if four_rows_a_pass(MODE) => {
            kernel::<MODE, G, SUP, MIN, BIAS, CH, 3>(cols, tile, acts, r0, out)
        }
        4 if four_rows_a_pass(MODE) => {
            kernel::<MODE, G, SUP, MIN, BIAS, CH, 4>(cols, tile, acts, r0, out)
        }
        _ => {
            let (first, rest) = out.split_at_mut(2 * TILE);
            kernel::<MODE, G, SUP, MIN, BIAS, CH, 2>(cols, tile, acts, r0, first);
            if nr == 3 {
                kernel::<MODE, G, SUP, MIN, BIAS, CH, 1>(cols, tile, acts, r0 + 2, rest);
            } else {
                kernel::<MODE, G, SUP, MIN, BIAS, CH, 2>(cols, tile, acts, r0 + 2, rest);
            }
        }
    }
}

/// The tile's 16 rows for `NA` activation rows (see the module docs), as
/// [`super::scalar::tile`] computes them; each row as two halves of 8.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // r and hh index several arrays each
unsafe fn kernel<
    const MODE: u8,
    const G: usize,
    const SUP: bool,
    const MIN: bool,
    const BIAS: bool,
    const CH: usize,
    const NA: usize,
>(
    cols: usize,
    tile: &[u8],
    acts: &QuantizedActs,
    r0: usize,
    out: &mut [f32],
) {
    let unit = if SUP { SUPER } else { G };
    let groups_per_unit = unit / G;
    let hb = high_bits(MODE);
    // The triad layout is crumbs with one high bit, as the format sees it.
    let crumbs = MODE == CRUMB || MODE == TRI;
    let nibbles = MODE == NIB || MODE == LUT || MODE == SPLIT || MODE == SPLIT5;
    // 4-byte words (of nibbles) per row and group; a chain closes after
    // `per_chain` (the lookup layout's after each operand). The split
    // layout's plane word follows the nibble words.
    let nd = level_words(nibbles, crumbs, G);
    let layout = UnitLayout::of(nibbles, crumbs, G, SUP, MIN, hb);
    let (header, grb, unit_bytes) = (layout.header, layout.group_row, layout.bytes);
    let per_chain = (nd / CH).max(1);
    let sets = 1 + usize::from(MIN);
    let units = cols / unit;
    let nib_mask = _mm256_set1_epi8(0x0f);
    let crumb_mask = _mm256_set1_epi8(3);
    let high_mask = _mm256_set1_epi8((((1u32 << hb) - 1) << 4) as i8);
    let flip = _mm256_set1_epi8(-128);
    let signed_levels = _mm256_broadcastsi128_si256(_mm_loadu_si128(SIGNED_IQ4.as_ptr().cast()));
    let ones = _mm256_set1_epi16(1);
    // Each of 8 bytes twice: a sub-scale per 16-bit half of a lane.
    let dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);

    let aq: [*const i8; NA] = std::array::from_fn(|r| acts.row(r0 + r).as_ptr());
    let pb: [*const i32; NA] = std::array::from_fn(|r| {
        if BIAS {
            acts.pair_biases(r0 + r).as_ptr()
        } else {
            std::ptr::null()
        }
    });
    // Legacy: scale and (with a min) scaled level sum per group.
    let ad: [*const f32; NA] = std::array::from_fn(|r| acts.scales(r0 + r).as_ptr());
    let ss: [*const f32; NA] = std::array::from_fn(|r| {
        if MIN && !SUP {
            acts.scaled_sums(r0 + r).as_ptr()
        } else {
            std::ptr::null()
        }
    });
    // Superblocks: D/8, the blocks' shifts and shifted level sums.
    let sd: [*const f32; NA] = std::array::from_fn(|r| {
        if SUP {
            acts.superblock_scales(r0 + r).as_ptr()
        } else {
            std::ptr::null()
        }
    });
    let shift: [*const u32; NA] = std::array::from_fn(|r| {
        if SUP {
            acts.shifts(r0 + r).as_ptr()
        } else {
            std::ptr::null()
        }
    });
    let wsum: [*const i16; NA] = std::array::from_fn(|r| {
        if SUP {
            acts.shifted_sums(r0 + r, G).as_ptr()
        } else {
            std::ptr::null()
        }
    });
    let word = |r: usize, k: usize| {
        _mm256_set1_epi32(std::ptr::read_unaligned(aq[r].add(k).cast::<i32>()))
    };

    let mut acc = [[_mm256_setzero_ps(); 2]; NA];
    let base = tile.as_ptr();
    for u in 0..units {
        let ub = base.add(u * unit_bytes);
        // A superblock's groups ask for their own bytes below.
        let bytes = if SUP { header } else { unit_bytes };
        super::prefetch(ub.wrapping_add(super::PREFETCH_AHEAD), bytes);
        let d: [__m256; 2] =
            std::array::from_fn(|hh| _mm256_cvtph_ps(_mm_loadu_si128(ub.add(16 * hh).cast())));
        let dm: [__m256; 2] = std::array::from_fn(|hh| {
            if MIN {
                _mm256_cvtph_ps(_mm_loadu_si128(ub.add(2 * TILE + 16 * hh).cast()))
            } else {
                _mm256_setzero_ps()
            }
        });
        let scp = ub.add(2 * TILE * sets);
        let scales = UnitScales::read(scp, crumbs, G, SUP, MIN);
        let scp = scales.as_ptr();
        let mp = scp.add(groups_per_unit * TILE);
        // Superblocks: Σ_g sc_g · (group sum << shift), per row.
        let mut isb = [[_mm256_setzero_si256(); 2]; NA];
        for gi in 0..groups_per_unit {
            let place = layout.group(gi);
            let wp = ub.add(place.levels);
            if SUP {
                super::prefetch(wp.wrapping_add(super::PREFETCH_AHEAD), TILE * grb);
            }
            let gg = u * groups_per_unit + gi;
            let at = gg * G;
            let mult: [__m256i; 2] = std::array::from_fn(|hh| {
                if SUP {
                    let sc = _mm_loadl_epi64(scp.add(gi * TILE + 8 * hh).cast());
                    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, dup))
                } else {
                    ones
                }
            });
            let mut s16 = [[_mm256_setzero_si256(); 2]; NA];
            if BIAS {
                for r in 0..NA {
                    let b = _mm256_set1_epi32(*pb[r].add(gg));
                    s16[r] = [b; 2];
                }
            }
            let mut isum = [[_mm256_setzero_si256(); 2]; NA];
            // Unrolled, the sign trick's operands of every word would be computed
            // up front and spilled: its words run as a loop.
            let words = if MODE == SIGN || MODE == LUT {
                std::hint::black_box(nd)
            } else {
                nd
            };
            // The split layouts run one half at a time (fewer values live at
            // once: their operands take more registers to rebuild); the
            // triads, whose operands are about as cheap as nibbles', both.
            // (On a Zen 5 7B Q3_K_M pp128: 23.4 → 26.0 t/s.) Three or four
            // rows take one half at a time.
            let per_pass = if NA > 2 || (hb > 0 && MODE != TRI) {
                1
            } else {
                2
            };
            for pass_start in (0..2).step_by(per_pass) {
                let halves = pass_start..pass_start + per_pass;
                for p in 0..words {
                    for hh in halves.clone() {
                        let v = _mm256_loadu_si256(wp.add(p * 64 + 32 * hh).cast());
                        if nibbles {
                            let mut lo = _mm256_and_si256(v, nib_mask);
                            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib_mask);
                            if hb > 0 {
                                // Operand o's high bits sit at bits hb·o of the
                                // plane's bytes: moved to bit 4 on (16-bit
                                // shifts by at most 4 keep them in their byte).
                                let plane =
                                    _mm256_loadu_si256(ub.add(place.plane + 32 * hh).cast());
                                let high = |o: usize| {
                                    let left = 4 - (hb * o as u32) as i32;
                                    let x = if left >= 0 {
                                        _mm256_sll_epi16(plane, _mm_cvtsi32_si128(left))
                                    } else {
                                        _mm256_srl_epi16(plane, _mm_cvtsi32_si128(-left))
                                    };
                                    _mm256_and_si256(x, high_mask)
                                };
                                lo = _mm256_or_si256(lo, high(p));
                                hi = _mm256_or_si256(hi, high(nd + p));
                            }
                            if MODE == LUT {
                                let (ql, qh) = (
                                    _mm256_shuffle_epi8(signed_levels, lo),
                                    _mm256_shuffle_epi8(signed_levels, hi),
                                );
                                let (wl, wh) = (_mm256_abs_epi8(ql), _mm256_abs_epi8(qh));
                                for r in 0..NA {
                                    let al = _mm256_sign_epi8(word(r, at + 4 * p), ql);
                                    let ah = _mm256_sign_epi8(word(r, at + G / 2 + 4 * p), qh);
                                    let x =
                                        _mm256_madd_epi16(_mm256_maddubs_epi16(wl, al), mult[hh]);
                                    let y =
                                        _mm256_madd_epi16(_mm256_maddubs_epi16(wh, ah), mult[hh]);
                                    isum[r][hh] =
                                        _mm256_add_epi32(isum[r][hh], _mm256_add_epi32(x, y));
                                }
                                continue;
                            }
                            for r in 0..NA {
                                let x = _mm256_maddubs_epi16(lo, word(r, at + 4 * p));
                                let y = _mm256_maddubs_epi16(hi, word(r, at + G / 2 + 4 * p));
                                s16[r][hh] = _mm256_add_epi16(s16[r][hh], _mm256_add_epi16(x, y));
                            }
                        } else if crumbs {
                            let ops = if MODE == TRI {
                                triad_operands(ub.add(32 * hh), place)
                            } else {
                                [
                                    _mm256_and_si256(v, crumb_mask),
                                    _mm256_and_si256(_mm256_srli_epi16::<2>(v), crumb_mask),
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), crumb_mask),
                                    _mm256_and_si256(_mm256_srli_epi16::<6>(v), crumb_mask),
                                ]
                            };
                            for r in 0..NA {
                                for (j, o) in ops.iter().enumerate() {
                                    let x = _mm256_maddubs_epi16(*o, word(r, at + 16 * p + 4 * j));
                                    s16[r][hh] = _mm256_add_epi16(s16[r][hh], x);
                                }
                            }
                        } else if MODE == BYTE {
                            for r in 0..NA {
                                let x = _mm256_maddubs_epi16(v, word(r, at + 4 * p));
                                s16[r][hh] = _mm256_add_epi16(s16[r][hh], x);
                            }
                        } else {
                            let q = _mm256_xor_si256(v, flip);
                            let w = _mm256_abs_epi8(q);
                            for r in 0..NA {
                                let x = _mm256_maddubs_epi16(
                                    w,
                                    _mm256_sign_epi8(word(r, at + 4 * p), q),
                                );
                                s16[r][hh] = _mm256_add_epi16(s16[r][hh], x);
                            }
                        }
                    }
                    if MODE != LUT && (p + 1) % per_chain == 0 {
                        for r in 0..NA {
                            for hh in halves.clone() {
                                let t = _mm256_madd_epi16(s16[r][hh], mult[hh]);
                                isum[r][hh] = _mm256_add_epi32(isum[r][hh], t);
                                s16[r][hh] = _mm256_setzero_si256();
                            }
                        }
                    }
                }
            }
            for r in 0..NA {
                if SUP {
                    let sh = _mm256_set1_epi32(*shift[r].add(at / 32) as i32);
                    for hh in 0..2 {
                        isb[r][hh] =
                            _mm256_add_epi32(isb[r][hh], _mm256_sllv_epi32(isum[r][hh], sh));
                    }
                } else {
                    let da = _mm256_set1_ps(*ad[r].add(gg));
                    for hh in 0..2 {
                        let v = _mm256_mul_ps(d[hh], _mm256_cvtepi32_ps(isum[r][hh]));
                        acc[r][hh] = _mm256_fmadd_ps(v, da, acc[r][hh]);
                        if MIN {
                            let m = _mm256_set1_ps(*ss[r].add(gg));
                            acc[r][hh] = _mm256_fmadd_ps(dm[hh], m, acc[r][hh]);
                        }
                    }
                }
            }
        }
        if SUP {
            // Σ_g m_g · (shifted level sum of g), two groups per `vpmaddwd`.
            let mut imin = [[_mm256_setzero_si256(); 2]; NA];
            if MIN {
                for j in 0..groups_per_unit / 2 {
                    for hh in 0..2 {
                        let lo = _mm_loadl_epi64(mp.add(2 * j * TILE + 8 * hh).cast());
                        let hi = _mm_loadl_epi64(mp.add((2 * j + 1) * TILE + 8 * hh).cast());
                        let mw = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(lo, hi));
                        for r in 0..NA {
                            let sa = _mm256_set1_epi32(std::ptr::read_unaligned(
                                wsum[r].add(u * groups_per_unit + 2 * j).cast::<i32>(),
                            ));
                            imin[r][hh] = _mm256_add_epi32(imin[r][hh], _mm256_madd_epi16(mw, sa));
                        }
                    }
                }
            }
            for r in 0..NA {
                let scale = _mm256_set1_ps(*sd[r].add(u));
                for hh in 0..2 {
                    let mut v = _mm256_mul_ps(d[hh], _mm256_cvtepi32_ps(isb[r][hh]));
                    if MIN {
                        v = _mm256_fmadd_ps(dm[hh], _mm256_cvtepi32_ps(imin[r][hh]), v);
                    }
                    acc[r][hh] = _mm256_fmadd_ps(v, scale, acc[r][hh]);
                }
            }
        }
    }
    for r in 0..NA {
        for hh in 0..2 {
            _mm256_storeu_ps(out.as_mut_ptr().add(r * TILE + 8 * hh), acc[r][hh]);
        }
    }
}

/// The four operands of one half of the group at `at` in the triad layout
/// (Q3_K compact, see the format docs), `half` pointing to the unit, offset
/// to the half's rows: from its pair's level words X, Y and plane word Z.
#[inline(always)]
unsafe fn triad_operands(half: *const u8, at: GroupAt) -> [__m256i; 4] {
    let word = |at: usize| _mm256_loadu_si256(half.add(at).cast());
    let (m3, m4, m7) = (
        _mm256_set1_epi8(3),
        _mm256_set1_epi8(4),
        _mm256_set1_epi8(7),
    );
    let low = |v| _mm256_and_si256(v, m7);
    let high = |v| _mm256_and_si256(_mm256_srli_epi16::<3>(v), m7);
    let (x, y) = (word(at.set), word(at.set + 64));
    if at.first() {
        return [low(x), high(x), low(y), high(y)];
    }
    let z = word(at.plane);
    // The top two bits of a level word, and bit 2 from the plane word.
    let merge = |a, b| _mm256_or_si256(_mm256_and_si256(a, m3), _mm256_and_si256(b, m4));
    [
        low(z),
        high(z),
        merge(_mm256_srli_epi16::<6>(x), _mm256_srli_epi16::<4>(z)),
        merge(_mm256_srli_epi16::<6>(y), _mm256_srli_epi16::<5>(z)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgmlType;

    /// Every packed type has a kernel shape that agrees with its format, and
    /// no 16-bit chain can overflow: products per lane × the largest
    /// `|u − off|` × 127 ≤ 32767, and no `vpmaddubsw` pair saturates.
    #[test]
    fn sixteen_bit_chains_cannot_overflow() {
        for ty in GgmlType::ALL {
            let Some(fmt) = Format::of(ty) else {
                continue;
            };
            for fmt in [Some(fmt), Format::split(ty)].into_iter().flatten() {
                let (mode, g, sup, min, bias, ch) = params(fmt.shape);
                assert_eq!(
                    mode == NIB || mode == LUT || mode == SPLIT || mode == SPLIT5,
                    fmt.nibbles,
                    "{ty}"
                );
                assert_eq!(mode == LUT, fmt.lut, "{ty}");
                assert_eq!(mode == CRUMB || mode == TRI, fmt.crumbs, "{ty}");
                assert_eq!(high_bits(mode), fmt.high_bits, "{ty}");
                assert_eq!((g, sup, min), (fmt.group, fmt.superblocks, fmt.min), "{ty}");
                assert_eq!(bias, fmt.off != 0 && fmt.off < 128, "{ty}");
                assert_eq!(mode == SIGN || mode == LUT, fmt.off == 128, "{ty}");
                // Products per 16-bit lane of one chain: two per operand (a
                // nibble word gives two operands); chains close after whole
                // words, the lookup layout's after each operand.
                let words = level_words(fmt.nibbles, fmt.crumbs, g);
                let operands = g / 4;
                let ops = if mode == LUT {
                    assert_eq!(ch, operands, "{ty}: one chain per operand");
                    1
                } else {
                    assert_eq!(words % ch, 0, "{ty}");
                    operands / ch
                };
                let top = i32::from(ty.packing().unwrap().max_level);
                let dev = if mode == SIGN || mode == LUT {
                    128
                } else if bias {
                    fmt.off.max(top - fmt.off)
                } else {
                    top
                };
                assert!(2 * ops as i32 * dev * 127 <= 32767, "{ty}: chain overflows");
                let pair = if mode == SIGN || mode == LUT {
                    128
                } else {
                    top
                };
                assert!(2 * pair * 127 <= 32767, "{ty}: vpmaddubsw saturates");
                assert!(!bias || ch == 1, "{ty}: the bias starts the only chain");
            }
        }
    }
}
