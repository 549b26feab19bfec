//! aarch64 NEON tile kernel: the 16 rows of a tile as four quarters of four
//! 32-bit lanes, SDOT (signed i8 × i8, four products per lane) with the
//! activation word taken by lane index (the by-element form), so a tile needs
//! no horizontal sums.
//!
//! `vdotq_s32` is unstable on stable Rust, so SDOT is emitted with `asm!`;
//! so is the f16 → f32 widening (`vcvt_f32_f16` needs the unstable `f16`
//! type). Nibble levels (0..15) are valid signed bytes as they are; byte
//! levels (up to 255) are flipped to `u − 128` and the offset is corrected by
//! `128 · Σa`, as in the AVX2 kernel. Q6_K and Q5_K are packed in the split
//! layouts (nibbles and a plane of high bits, the file's size): their levels
//! (up to 63) are rebuilt from both and stay valid signed bytes.

use std::arch::aarch64::*;
use std::arch::asm;

use super::act::QuantizedActs;
use super::format::{
    level_words, triads, Format, GroupAt, UnitLayout, UnitScales, IQ4_LEVELS, SUPER, TILE,
};

/// Whether this CPU has everything the kernel uses.
pub(crate) fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
        && std::arch::is_aarch64_feature_detected!("dotprod")
}

layout_kernels!(kernel);

/// `acc[j] += Σ_{b<4} w[4j + b] · a[4·lane + b]` (SDOT by element: the
/// activation word `lane` of `a` feeds all four rows of `w`). `lane` is a
/// constant after inlining and unrolling, so the match folds away.
#[inline(always)]
unsafe fn sdot_lane(acc: int32x4_t, w: int8x16_t, a: int8x16_t, lane: usize) -> int32x4_t {
    let mut acc = acc;
    macro_rules! sdot {
        ($l:literal) => {
            asm!(
                concat!("sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[", $l, "]"),
                acc = inout(vreg) acc,
                w = in(vreg) w,
                a = in(vreg) a,
                options(pure, nomem, nostack, preserves_flags),
            )
        };
    }
    match lane {
        0 => sdot!("0"),
        1 => sdot!("1"),
        2 => sdot!("2"),
        _ => sdot!("3"),
    }
    acc
}

/// Four little-endian f16 at `p` widened to f32 (FCVTL, base AdvSIMD).
#[inline(always)]
unsafe fn load_f16x4(p: *const u8) -> float32x4_t {
    let h = vld1_u16(p.cast());
    let f: float32x4_t;
    asm!(
        "fcvtl {f:v}.4s, {h:v}.4h",
        f = lateout(vreg) f,
        h = in(vreg) h,
        options(pure, nomem, nostack, preserves_flags),
    );
    f
}

/// The 16 signed bytes of `v` as four quarters of i32.
#[inline(always)]
unsafe fn i8x16_to_i32(v: int8x16_t) -> [int32x4_t; 4] {
    let lo = vmovl_s8(vget_low_s8(v));
    let hi = vmovl_high_s8(v);
    [
        vmovl_s16(vget_low_s16(lo)),
        vmovl_high_s16(lo),
        vmovl_s16(vget_low_s16(hi)),
        vmovl_high_s16(hi),
    ]
}

/// The 16 signed bytes of `v` as four quarters of f32.
#[inline(always)]
unsafe fn i8x16_to_f32(v: int8x16_t) -> [float32x4_t; 4] {
    i8x16_to_i32(v).map(|v| vcvtq_f32_s32(v))
}

/// `$body` once per listed constant, bound to `$i`: loops LLVM would keep
/// (with a run-time switch on the SDOT lane, or the accumulators in memory)
/// once their bodies grow, unrolled by hand.
macro_rules! unroll {
    (|$i:ident| [$($n:literal),*] $body:block) => {{
        $({
            let $i: usize = $n;
            $body
        })*
    }};
}

/// Rows `4q..4q + 4` of a group's integer sums for `NA` activation rows:
/// `init[r] + Σ_p w[p] · a_r[4p..4p + 4]` by SDOT, over the `nd` weight
/// words of the group at `at` of the unit at `ub` (split into nibbles or
/// crumbs, or flipped to signed bytes).
/// In the split layouts (`HB` high bits per level, not 0), each nibble
/// operand `o`'s high bits come from bits `HB·o` of the group's plane word,
/// shifted to bit 4 (levels up to 63 stay valid signed bytes); crumbs with
/// a high bit are the triad layout ([`triad_operands`]). In the lookup
/// layout (`LUT`), each nibble is looked up in [`IQ4_LEVELS`] flipped to
/// signed bytes (`u − 128`, as the byte levels).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_quarter<
    const NIB: bool,
    const CR: bool,
    const HB: u32,
    const LUT: bool,
    const NA: usize,
>(
    ub: *const u8,
    at: GroupAt,
    nd: usize,
    av: &[[int8x16_t; 2]; NA],
    init: &[i32; NA],
    q: usize,
    nib_mask: uint8x16_t,
    flip: uint8x16_t,
) -> [int32x4_t; NA] {
    let mut isum: [int32x4_t; NA] = std::array::from_fn(|r| vdupq_n_s32(init[r]));
    if triads(CR, HB) {
        let w = triad_operands(ub.add(16 * q), at);
        unroll!(|o| [0, 1, 2, 3] {
            let w = vreinterpretq_s8_u8(w[o]);
            unroll!(|r| [0, 1, 2, 3] {
                if r < NA {
                    isum[r] = sdot_lane(isum[r], w, av[r][0], o);
                }
            });
        });
        return isum;
    }
    let wp = ub.add(at.levels);
    let plane = if HB > 0 {
        vld1q_u8(ub.add(at.plane + 16 * q))
    } else {
        vdupq_n_u8(0)
    };
    let high_mask = vdupq_n_u8((((1u32 << HB) - 1) << 4) as u8);
    let signed_levels = veorq_u8(vld1q_u8(IQ4_LEVELS.as_ptr()), flip);
    // Operand o's high bits at bits 4.. (a negative shift is a right shift).
    let high = |o: usize| {
        vandq_u8(
            vshlq_u8(plane, vdupq_n_s8(4 - (HB as usize * o) as i8)),
            high_mask,
        )
    };
    unroll!(|p| [0, 1, 2, 3, 4, 5, 6, 7] {
        if p < nd {
            // Word p of rows 4q..4q+4.
            let v = vld1q_u8(wp.add(p * 4 * TILE + 16 * q));
            if CR {
                // Operand 4p + j: bits 2j..2j + 2 of each byte (a group of
                // at most 32 has at most two crumb words: the activations'
                // two vectors).
                if p >= 2 {
                    unreachable!("a crumb group of more than 32 levels");
                }
                unroll!(|j| [0, 1, 2, 3] {
                    let o = 4 * p + j;
                    let shifted = vshlq_u8(v, vdupq_n_s8(-2 * j as i8));
                    let w = vreinterpretq_s8_u8(vandq_u8(shifted, vdupq_n_u8(3)));
                    unroll!(|r| [0, 1, 2, 3] {
                        if r < NA {
                            isum[r] = sdot_lane(isum[r], w, av[r][o / 4], o % 4);
                        }
                    });
                });
            } else if NIB {
                let (mut lo, mut hi) = (vandq_u8(v, nib_mask), vshrq_n_u8::<4>(v));
                if HB > 0 {
                    lo = vorrq_u8(lo, high(p));
                    hi = vorrq_u8(hi, high(nd + p));
                }
                if LUT {
                    lo = vqtbl1q_u8(signed_levels, lo);
                    hi = vqtbl1q_u8(signed_levels, hi);
                }
                let (lo, hi) = (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi));
                let oh = nd + p;
                unroll!(|r| [0, 1, 2, 3] {
                    if r < NA {
                        isum[r] = sdot_lane(isum[r], lo, av[r][p / 4], p % 4);
                        isum[r] = sdot_lane(isum[r], hi, av[r][oh / 4], oh % 4);
                    }
                });
            } else {
                let w = vreinterpretq_s8_u8(veorq_u8(v, flip));
                unroll!(|r| [0, 1, 2, 3] {
                    if r < NA {
                        isum[r] = sdot_lane(isum[r], w, av[r][p / 4], p % 4);
                    }
                });
            }
        }
    });
    isum
}

/// The four operands of rows `4q..4q + 4` of the group at `at` in the triad
/// layout (Q3_K compact, see the format docs), `quarter` pointing to the
/// unit, offset to those rows: from its pair's level words X, Y and plane
/// word Z. NEON's byte shifts keep each byte's bits to itself, so the
/// straddling operands are a bit select of two shifts.
#[inline(always)]
unsafe fn triad_operands(quarter: *const u8, at: GroupAt) -> [uint8x16_t; 4] {
    let word = |at: usize| vld1q_u8(quarter.add(at));
    let (x, y, z) = (word(at.set), word(at.set + 64), word(at.plane));
    let m7 = vdupq_n_u8(7);
    let low = |v| vandq_u8(v, m7);
    let high = |v| vandq_u8(vshrq_n_u8::<3>(v), m7);
    if at.first() {
        return [low(x), high(x), low(y), high(y)];
    }
    // Bit 2 from the plane word, bits 0..2 from the level word's top two.
    let m4 = vdupq_n_u8(4);
    [
        low(z),
        high(z),
        vbslq_u8(m4, vshrq_n_u8::<4>(z), vshrq_n_u8::<6>(x)),
        vbslq_u8(m4, vshrq_n_u8::<5>(z), vshrq_n_u8::<6>(y)),
    ]
}

/// The group's activation bytes of `NA` rows, two vectors each: operand o
/// (levels 4o..4o+4) takes word o, i.e. lane o % 4 of vector o / 4.
#[inline(always)]
unsafe fn group_acts<const G: usize, const NA: usize>(
    aq: &[*const i8; NA],
    at: usize,
) -> [[int8x16_t; 2]; NA] {
    std::array::from_fn(|r| {
        let a = aq[r].add(at);
        let hi = if G == 32 {
            vld1q_s8(a.add(16))
        } else {
            vdupq_n_s8(0)
        };
        [vld1q_s8(a), hi]
    })
}

/// Rows of activations per call: `NA` (1..=4). The legacy types (one scale
/// per group) are computed here, the k-quants by [`superblock_kernel`]; the
/// split (`HB`) and lookup (`LUT`) layouts as there.
#[target_feature(enable = "neon,dotprod")]
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
    // 4-byte words per row per group; with nibbles each word gives two
    // operands (low halves: levels 4p.., high halves: levels G/2 + 4p..);
    // the split layout's plane word follows.
    let nd = level_words(NIB, CR, G);
    let layout = UnitLayout::of(NIB, CR, G, false, MIN, HB);
    let unit_bytes = layout.bytes;
    // Nibbles and crumbs are levels as they are; bytes and looked-up levels
    // are flipped.
    let corr = if (NIB || CR) && !LUT { off } else { off - 128 };
    let nib_mask = vdupq_n_u8(0x0f);
    let flip = vdupq_n_u8(0x80);
    let zero_f = vdupq_n_f32(0.0);

    let aq: [*const i8; NA] = std::array::from_fn(|r| acts.row(r0 + r).as_ptr());
    let ad: [*const f32; NA] = std::array::from_fn(|r| acts.scales(r0 + r).as_ptr());
    let asum: [*const i16; NA] = std::array::from_fn(|r| acts.sums(r0 + r, G).as_ptr());
    let mut acc = [[zero_f; 4]; NA];
    let base = tile.as_ptr();

    for g in 0..cols / G {
        let ub = base.add(g * unit_bytes);
        let s: [float32x4_t; 4] = std::array::from_fn(|q| load_f16x4(ub.add(8 * q)));
        let m: [float32x4_t; 4] = if MIN {
            std::array::from_fn(|q| load_f16x4(ub.add(2 * TILE + 8 * q)))
        } else {
            [zero_f; 4]
        };
        let av = group_acts::<G, NA>(&aq, g * G);
        let sa: [i32; NA] = std::array::from_fn(|r| i32::from(*asum[r].add(g)));
        let da: [f32; NA] = std::array::from_fn(|r| *ad[r].add(g * G / 32));
        let init: [i32; NA] = std::array::from_fn(|r| -corr * sa[r]);
        unroll!(|q| [0, 1, 2, 3] {
            let at = layout.group(0);
            let isum = dot_quarter::<NIB, CR, HB, LUT, NA>(ub, at, nd, &av, &init, q, nib_mask, flip);
            unroll!(|r| [0, 1, 2, 3] {
                if r < NA {
                    let mut v = vmulq_f32(s[q], vcvtq_f32_s32(isum[r]));
                    if MIN {
                        v = vfmaq_n_f32(v, m[q], sa[r] as f32);
                    }
                    acc[r][q] = vfmaq_n_f32(acc[r][q], v, da[r]);
                }
            });
        });
    }
    for (r, a) in acc.iter().enumerate() {
        for (q, v) in a.iter().enumerate() {
            vst1q_f32(out.as_mut_ptr().add(r * TILE + 4 * q), *v);
        }
    }
}

/// The k-quant kernel (as the AVX-512 one): activations of a superblock share
/// one scale up to a power of two per 32-block, so each group's integer sum
/// is shifted by its block's exponent, scaled by the group's `sc` in f32 and
/// summed over the superblock; `d`, the min term and the activation scale
/// are applied once per superblock. The split layouts (`HB` high bits per
/// level: Q6_K, Q5_K) and the lookup layout (`LUT`: IQ4_XS) rebuild the
/// byte layout's levels in [`dot_quarter`], so they compute its integer
/// sums and float operations.
#[target_feature(enable = "neon,dotprod")]
unsafe fn superblock_kernel<
    const NIB: bool,
    const CR: bool,
    const G: usize,
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
    let groups_per_unit = SUPER / G;
    // Nibble, crumb or byte words per row and group (the split plane
    // follows).
    let nd = level_words(NIB, CR, G);
    let sets = 1 + usize::from(MIN);
    let layout = UnitLayout::of(NIB, CR, G, true, MIN, HB);
    let unit_bytes = layout.bytes;
    // Nibbles and crumbs are levels as they are; bytes and looked-up levels
    // are flipped.
    let corr = if (NIB || CR) && !LUT { off } else { off - 128 };
    let nib_mask = vdupq_n_u8(0x0f);
    let flip = vdupq_n_u8(0x80);
    let zero_f = vdupq_n_f32(0.0);
    let zero_i = vdupq_n_s32(0);

    let aq: [*const i8; NA] = std::array::from_fn(|r| acts.row(r0 + r).as_ptr());
    let sd: [*const f32; NA] = std::array::from_fn(|r| acts.superblock_scales(r0 + r).as_ptr());
    let shift: [*const u32; NA] = std::array::from_fn(|r| acts.shifts(r0 + r).as_ptr());
    let asum: [*const i16; NA] = std::array::from_fn(|r| acts.sums(r0 + r, G).as_ptr());
    let wsum: [*const i16; NA] = std::array::from_fn(|r| acts.shifted_sums(r0 + r, G).as_ptr());
    let mut acc = [[zero_f; 4]; NA];
    let base = tile.as_ptr();

    for u in 0..cols / SUPER {
        let ub = base.add(u * unit_bytes);
        let scp = ub.add(2 * TILE * sets);
        let scales = UnitScales::read(scp, CR, G, true, MIN);
        let scp = scales.as_ptr();
        let mp = scp.add(groups_per_unit * TILE);
        let mut fsum = [[zero_f; 4]; NA];
        let mut imin = [[zero_i; 4]; NA];
        for gi in 0..groups_per_unit {
            let gg = u * groups_per_unit + gi;
            let sc = i8x16_to_f32(vld1q_s8(scp.add(gi * TILE).cast()));
            let m = if MIN {
                i8x16_to_i32(vld1q_s8(mp.add(gi * TILE).cast()))
            } else {
                [zero_i; 4]
            };
            let av = group_acts::<G, NA>(&aq, gg * G);
            let init: [i32; NA] = std::array::from_fn(|r| -corr * i32::from(*asum[r].add(gg)));
            let sh: [int32x4_t; NA] =
                std::array::from_fn(|r| vdupq_n_s32(*shift[r].add(gg * G / 32) as i32));
            let wsa: [i32; NA] = std::array::from_fn(|r| i32::from(*wsum[r].add(gg)));
            let at = layout.group(gi);
            unroll!(|q| [0, 1, 2, 3] {
                let isum = dot_quarter::<NIB, CR, HB, LUT, NA>(ub, at, nd, &av, &init, q, nib_mask, flip);
                unroll!(|r| [0, 1, 2, 3] {
                    if r < NA {
                        let t = vcvtq_f32_s32(vshlq_s32(isum[r], sh[r]));
                        fsum[r][q] = vfmaq_f32(fsum[r][q], t, sc[q]);
                        if MIN {
                            imin[r][q] = vmlaq_n_s32(imin[r][q], m[q], wsa[r]);
                        }
                    }
                });
            });
        }
        let d: [float32x4_t; 4] = std::array::from_fn(|q| load_f16x4(ub.add(8 * q)));
        let dm: [float32x4_t; 4] = if MIN {
            std::array::from_fn(|q| load_f16x4(ub.add(2 * TILE + 8 * q)))
        } else {
            [zero_f; 4]
        };
        unroll!(|r| [0, 1, 2, 3] {
            if r < NA {
                let s = *sd[r].add(u);
                unroll!(|q| [0, 1, 2, 3] {
                    let mut v = vmulq_f32(d[q], fsum[r][q]);
                    if MIN {
                        v = vfmaq_f32(v, dm[q], vcvtq_f32_s32(imin[r][q]));
                    }
                    acc[r][q] = vfmaq_n_f32(acc[r][q], v, s);
                });
            }
        });
    }
    for (r, a) in acc.iter().enumerate() {
        for (q, v) in a.iter().enumerate() {
            vst1q_f32(out.as_mut_ptr().add(r * TILE + 4 * q), *v);
        }
    }
}
