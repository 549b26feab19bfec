//! The bf16 prompt product on AMX-BF16 tiles ([`super::bf16`] defines what
//! it computes): the weights of each pair of packed tiles are converted to
//! bf16 once per block of K, into a scratch that stays in L2 while every
//! activation row is multiplied with it; `tdpbf16ps` sums a block of 32
//! activation rows × 32 weight rows in four tile registers from the
//! block's first K-step to its last, and only then are the sums stored.
//!
//! So the tile unit runs with no per-group stores or scaling between its
//! products (the int8 kernel, [`super::amx`], stores and scales the sums
//! of every group of 32 weights): 2.7–4.5× its products at 512 rows
//! (4096 × 4096, 2 threads), 1.3–1.6× its 7B pp512.

use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;
use std::sync::OnceLock;

use super::amx::Aligned;
use super::bf16::{act_index, STEP, STEP_WORDS};
use super::format::{Format, UnitLayout, UnitScales, SUPER, TILE};

/// Whether this CPU runs the bf16 prompt product: the int8 AMX kernel's
/// features and tile state ([`super::amx::available`]), AMX-BF16, and the
/// AVX-512 BF16 and VBMI instructions of the conversions.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        super::amx::available()
            && cpu_has_amx_bf16()
            && is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("avx512vbmi")
    })
}

/// cpuid leaf 7: AMX-BF16 (EDX bit 22).
#[allow(unused_unsafe)] // `__cpuid_count` is safe on newer compilers
fn cpu_has_amx_bf16() -> bool {
    // SAFETY: cpuid exists on every x86-64 CPU and only reads registers.
    let edx = unsafe { __cpuid_count(7, 0) }.edx;
    edx & (1 << 22) != 0
}

/// A conversion of units `u0..u1` of a packed tile into the bf16 weight
/// operand (see [`super::bf16`]): `(off, tile, u0, u1, dst)`.
pub(crate) type ConvertFn = unsafe fn(i32, &[u8], usize, usize, &mut [u16]);

amx_layout_select!(fn converter -> ConvertFn = convert);

/// [`convert_units`] for the layouts it converts (not the lookup or crumb ones).
///
/// # Safety
/// The CPU must run the product ([`available`]).
unsafe fn convert<
    const NIB: bool,
    const CR: bool,
    const G: usize,
    const SUP: bool,
    const MIN: bool,
    const HB: u32,
    const LUT: bool,
>(
    off: i32,
    tile: &[u8],
    u0: usize,
    u1: usize,
    dst: &mut [u16],
) {
    const {
        assert!(
            !LUT && !CR,
            "no bf16 conversion of the lookup and crumb layouts"
        )
    };
    convert_units::<NIB, G, SUP, MIN, HB>(off, tile, u0, u1, dst);
}

/// The weight operand of units `u0..u1` of `tile` (one layout, level
/// offset `off`) into `dst`: each weight as
/// [`dequantize_tile_row`](super::pack::dequantize_tile_row) computes it
/// (`S · (u − off)`, plus `M` for formats with a min, in that order),
/// rounded to bf16.
///
/// # Safety
/// The CPU must run the product ([`available`]).
///
/// # Panics
/// When `tile` or `dst` are too short for the units.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16,f16c")]
unsafe fn convert_units<
    const NIB: bool,
    const G: usize,
    const SUP: bool,
    const MIN: bool,
    const HB: u32,
>(
    off: i32,
    tile: &[u8],
    u0: usize,
    u1: usize,
    dst: &mut [u16],
) {
    let layout = UnitLayout::of(NIB, false, G, SUP, MIN, HB);
    let unit = if SUP { SUPER } else { G };
    assert!(
        u0 <= u1
            && u1 * layout.bytes <= tile.len()
            && (u1 - u0) * unit / STEP * STEP_WORDS <= dst.len(),
        "bf16 conversion: too short a tile or operand"
    );
    let groups = unit / G;
    let sets = 1 + usize::from(MIN);
    let ops = Levels {
        order: level_order(),
        rows: [
            _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0),
            _mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8),
        ],
        off: _mm512_set1_epi32(off),
    };
    let zero = _mm512_setzero_ps();
    let base = dst.as_mut_ptr();
    for u in u0..u1 {
        let ub = tile.as_ptr().add(u * layout.bytes);
        super::prefetch(ub.wrapping_add(super::PREFETCH_AHEAD), layout.bytes);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(ub.cast()));
        let dm = if MIN {
            _mm512_cvtph_ps(_mm256_loadu_si256(ub.add(2 * TILE).cast()))
        } else {
            zero
        };
        let scp = ub.add(2 * TILE * sets);
        let scales = UnitScales::read(scp, false, G, SUP, MIN);
        let scp = scales.as_ptr();
        let mp = scp.add(groups * TILE);
        let small =
            |p: *const u8| _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())));
        for k in 0..groups {
            let (s, m) = if SUP {
                let m = if MIN {
                    _mm512_mul_ps(dm, small(mp.add(k * TILE)))
                } else {
                    zero
                };
                (_mm512_mul_ps(d, small(scp.add(k * TILE))), m)
            } else {
                (d, dm)
            };
            let scale = Scale::<MIN>::of(&ops, s, m);
            let wp = ub.add(layout.header + k * TILE * layout.group_row);
            let k0 = (u - u0) * unit + k * G;
            // Level `j` of the group's word with first level `first`.
            let out = |first: usize| {
                let at = k0 + first;
                base.add(at / STEP * STEP_WORDS + at % STEP / 2 * 2 * TILE)
            };
            super::amx::group_levels::<NIB, G, HB>(wp, |v, first| {
                word(&ops, &scale, v, out(first));
            });
        }
    }
}

/// The constants of a conversion: where each quarter of a word's levels
/// comes from ([`level_order`]), the lanes of each row's scale, the level
/// offset.
struct Levels {
    order: [__m512i; 4],
    rows: [__m512i; 2],
    off: __m512i,
}

/// The byte orders of [`word`]: a packed word (row `r`'s levels `4p..4p +
/// 4` at bytes `4r..4r + 4`) as four quarters — levels `4p`, `4p + 1` of
/// rows 0–7, of rows 8–15, then levels `4p + 2`, `4p + 3` of rows 0–7 and
/// of rows 8–15 — each the low bytes of 16 i32 lanes (the other bytes
/// zeroed by the permutation's mask, [`LOW_BYTES`]): a row of the operand
/// once converted.
#[inline(always)]
unsafe fn level_order() -> [__m512i; 4] {
    let mut idx = [[0u8; 64]; 4];
    for (q, idx) in idx.iter_mut().enumerate() {
        for e in 0..16 {
            let row = q % 2 * 8 + e / 2;
            let level = q / 2 * 2 + e % 2;
            idx[4 * e] = (4 * row + level) as u8;
        }
    }
    idx.map(|i| _mm512_loadu_si512(i.as_ptr().cast()))
}

/// The mask of the low byte of each i32 lane.
const LOW_BYTES: u64 = 0x1111_1111_1111_1111;

/// A group's per-row scale `S` and min `M` in the lanes of a quarter of
/// rows 0–7 and of rows 8–15 (two lanes per row).
struct Scale<const MIN: bool> {
    s: [__m512; 2],
    m: [__m512; 2],
}

impl<const MIN: bool> Scale<MIN> {
    #[inline(always)]
    unsafe fn of(ops: &Levels, s: __m512, m: __m512) -> Self {
        let lanes = |v: __m512| {
            [
                _mm512_permutexvar_ps(ops.rows[0], v),
                _mm512_permutexvar_ps(ops.rows[1], v),
            ]
        };
        Self {
            s: lanes(s),
            m: if MIN {
                lanes(m)
            } else {
                [_mm512_setzero_ps(); 2]
            },
        }
    }
}

/// One packed word of unsigned levels `v` (16 rows × 4 levels) as two pair
/// rows of the operand at `at` (its levels 0–1, then 2–3).
#[inline(always)]
unsafe fn word<const MIN: bool>(ops: &Levels, sc: &Scale<MIN>, v: __m512i, at: *mut u16) {
    let mut f = [_mm512_setzero_ps(); 4];
    for (q, f) in f.iter_mut().enumerate() {
        let u = _mm512_maskz_permutexvar_epi8(LOW_BYTES, ops.order[q], v);
        let x = _mm512_cvtepi32_ps(_mm512_sub_epi32(u, ops.off));
        let y = _mm512_mul_ps(sc.s[q % 2], x);
        *f = if MIN {
            _mm512_add_ps(y, sc.m[q % 2])
        } else {
            y
        };
    }
    let lo: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(f[1], f[0]));
    let hi: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(f[3], f[2]));
    _mm512_storeu_si512(at.cast(), lo);
    _mm512_storeu_si512(at.add(2 * TILE).cast(), hi);
}

/// `xs` (rows of `cols` values) rounded to bf16 into the activation
/// operand `dst`, as [`super::bf16::round_acts`].
///
/// # Safety
/// The CPU must run the product ([`available`]).
///
/// # Panics
/// When `cols` is not whole K-steps or `dst` is too short.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn round_acts(xs: &[f32], cols: usize, dst: &mut [u16]) {
    let n = xs.len() / cols.max(1);
    assert!(
        cols.is_multiple_of(STEP) && dst.len() >= super::bf16::acts_len(n, cols),
        "bf16 activations: wrong shapes"
    );
    for t in 0..n {
        for k in (0..cols).step_by(STEP) {
            let x = xs.as_ptr().add(t * cols + k);
            let lo = _mm512_loadu_ps(x);
            let hi = _mm512_loadu_ps(x.add(16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let at = super::bf16::act_index(t, k, cols);
            _mm512_storeu_si512(dst.as_mut_ptr().add(at).cast(), v);
        }
    }
}

/// The tile registers: the sums of activation rows 0–15 and 16–31 of a
/// block with weight rows 0–15 and 16–31, the activation rows' two
/// operands, the weights' two.
const C00: usize = 0;
const C01: usize = 1;
const C10: usize = 2;
const C11: usize = 3;
const A0: usize = 4;
const A1: usize = 5;
const B0: usize = 6;
const B1: usize = 7;

/// The configuration (palette 1) for blocks of `rows` (1..=32) activation
/// rows: the second half's registers only where there are more than 16.
fn config(rows: usize) -> Aligned<[u8; 64]> {
    let (r0, r1) = (rows.min(TILE), rows.saturating_sub(TILE));
    let line = 4 * TILE;
    super::amx::palette(&[
        (C00, r0, line),
        (C01, r0, line),
        (C10, r1, line),
        (C11, r1, line),
        (A0, r0, line),
        (A1, r1, line),
        (B0, TILE, line),
        (B1, TILE, line),
    ])
}

/// One prompt product's operands: weights packed as `fmt` (`tiles`, whose
/// units `convert` turns into the bf16 operand), `rows × cols`; the
/// activations rounded to bf16, `n × cols`.
pub(crate) struct Product<'a> {
    pub(crate) convert: ConvertFn,
    pub(crate) fmt: &'a Format,
    pub(crate) tiles: &'a [u8],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) acts: &'a [u16],
    pub(crate) n: usize,
    /// Weights per block of K (whole superblocks): see [`Product::new`].
    pub(crate) block_k: usize,
}

/// Activation bytes of one block of K, which every pair of weight tiles
/// multiplies before the next block: the fewer blocks, the fewer passes
/// over the sums in the output. 2 MiB was the best of 0.25–32 MiB (4096 ×
/// 4096 and 4096 × 14336 weights, 512 rows, 2 threads, Intel Xeon with
/// 2 MiB of L2 per core: 1.05–1.35× 1 MiB's speed).
const BLOCK_ACT_BYTES: usize = 2 << 20;

/// Bytes of the sums of the pairs of tiles a task computes together over
/// every block of K, before they are copied to the output row by row.
const STAGE_BYTES: usize = 512 << 10;

impl<'a> Product<'a> {
    /// The product of `tiles` (`rows × cols` weights packed as `fmt`,
    /// converted by `convert`) with `n` rows of bf16 activations, in blocks
    /// of K that keep the activations' block in L2
    /// ([`BLOCK_ACT_BYTES`]): whole superblocks, at least one.
    pub(crate) fn new(
        convert: ConvertFn,
        fmt: &'a Format,
        tiles: &'a [u8],
        (rows, cols): (usize, usize),
        acts: &'a [u16],
        n: usize,
    ) -> Self {
        let k = BLOCK_ACT_BYTES / (2 * n.max(1));
        Self {
            convert,
            fmt,
            tiles,
            rows,
            cols,
            acts,
            n,
            block_k: (k / SUPER * SUPER).clamp(SUPER, cols.next_multiple_of(SUPER)),
        }
    }

    /// Pairs of 16-row tiles (the product's units of work).
    pub(crate) fn pairs(&self) -> usize {
        self.rows.div_ceil(2 * TILE)
    }

    /// `out[t·rows + r] = W[r] · xs[t]` for every activation row `t` and the
    /// weight rows of tile pairs `pairs`, summed in f32 from bf16 (see
    /// [`super::bf16`]).
    ///
    /// # Safety
    /// The CPU must run the product ([`available`]); `out` must be valid
    /// for `n × rows` floats, whose columns of these pairs no other thread
    /// reads or writes meanwhile.
    ///
    /// # Panics
    /// When the tiles or activations are too short for the shapes, or
    /// `cols` is not whole units of the format.
    pub(crate) unsafe fn run(&self, pairs: Range<usize>, out: *mut f32) {
        let (n, rows, cols, fmt) = (self.n, self.rows, self.cols, self.fmt);
        let unit = fmt.unit();
        let tb = fmt.tile_bytes(cols);
        let n_tiles = rows.div_ceil(TILE);
        assert!(
            cols.is_multiple_of(unit)
                && self.tiles.len() >= n_tiles * tb
                && self.acts.len() >= super::bf16::acts_len(n, cols)
                && pairs.end <= self.pairs(),
            "bf16 product: wrong shapes"
        );
        let bk = self.block_k;
        assert!(
            bk.is_multiple_of(SUPER),
            "bf16 product: blocks of whole superblocks"
        );
        if n == 0 || pairs.is_empty() {
            return;
        }
        let steps_max = bk / STEP;
        // The weight operand of one pair for one block of K.
        let mut b = vec![0u16; 2 * steps_max * STEP_WORDS];
        // The sums of a group of pairs: per pair, `n` rows of 32.
        let group = (STAGE_BYTES / (n * 2 * TILE * 4)).clamp(1, pairs.len());
        let mut stage = vec![0.0f32; group * n * 2 * TILE];
        let full = config(32);
        asm!("ldtilecfg [{}]", in(reg) full.0.as_ptr(), options(nostack, readonly));
        for g0 in pairs.clone().step_by(group) {
            let g1 = (g0 + group).min(pairs.end);
            for k0 in (0..cols).step_by(bk) {
                let k1 = (k0 + bk).min(cols);
                let steps = (k1 - k0) / STEP;
                let (u0, u1) = (k0 / unit, k1 / unit);
                let (b0, b1) = b.split_at_mut(steps_max * STEP_WORDS);
                for pair in g0..g1 {
                    let t0 = 2 * pair;
                    let tile = |t: usize| &self.tiles[t * tb..(t + 1) * tb];
                    (self.convert)(fmt.off, tile(t0), u0, u1, b0);
                    if t0 + 1 < n_tiles {
                        (self.convert)(fmt.off, tile(t0 + 1), u0, u1, b1);
                    } else {
                        b1.fill(0);
                    }
                    let c = stage.as_mut_ptr().add((pair - g0) * n * 2 * TILE);
                    for m in (0..n).step_by(2 * TILE) {
                        let ma = (2 * TILE).min(n - m);
                        if ma < 2 * TILE {
                            let cfg = config(ma);
                            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
                        }
                        let a0 = self.acts.as_ptr().add(act_index(m, k0, cols));
                        block(
                            [a0, a0.add(cols / STEP * STEP_WORDS)],
                            b0.as_ptr(),
                            b1.as_ptr(),
                            steps,
                            c.add(m * 2 * TILE),
                            4 * 2 * TILE,
                            ma > TILE,
                            k0 == 0,
                        );
                        if ma < 2 * TILE {
                            asm!("ldtilecfg [{}]", in(reg) full.0.as_ptr(), options(nostack, readonly));
                        }
                    }
                }
            }
            // The group's sums into the output, row by row.
            let r0 = g0 * 2 * TILE;
            let width = (g1 * 2 * TILE).min(rows) - r0;
            for t in 0..n {
                let mut at = 0;
                for p in 0..g1 - g0 {
                    let valid = (width - at).min(2 * TILE);
                    let src = stage.as_ptr().add((p * n + t) * 2 * TILE);
                    std::ptr::copy_nonoverlapping(src, out.add(t * rows + r0 + at), valid);
                    at += valid;
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// The sums of one block of activation rows (16 from `a[0]`, and 16 more
/// from `a[1]` when `two`; both in the activation operand's layout) with
/// the 32 weight rows of `b0` and `b1` (`steps` K-steps each): started at
/// zero (`first`) or from `c`, and stored back to `c` (rows `c_stride`
/// bytes apart, weight rows 0–15 then 16–31).
///
/// # Safety
/// The tiles must be configured for the block ([`config`]); `a`, `b0`,
/// `b1` readable for `steps` K-steps, `c` for the block's sums.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block(
    a: [*const u16; 2],
    b0: *const u16,
    b1: *const u16,
    steps: usize,
    c: *mut f32,
    c_stride: usize,
    two: bool,
    first: bool,
) {
    let c_hi = c.cast::<u8>().add(TILE * c_stride).cast::<f32>();
    if first {
        asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
        if two {
            asm!("tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        }
    } else {
        asm!(
            "tileloadd tmm0, [{c} + {s}*1]",
            "tileloadd tmm1, [{c1} + {s}*1]",
            c = in(reg) c, c1 = in(reg) c.add(TILE), s = in(reg) c_stride,
            options(nostack, readonly),
        );
        if two {
            asm!(
                "tileloadd tmm2, [{c} + {s}*1]",
                "tileloadd tmm3, [{c1} + {s}*1]",
                c = in(reg) c_hi, c1 = in(reg) c_hi.add(TILE), s = in(reg) c_stride,
                options(nostack, readonly),
            );
        }
    }
    let line = 4 * TILE;
    for s in 0..steps {
        let (a0, a1) = (a[0].add(s * STEP_WORDS), a[1].add(s * STEP_WORDS));
        let (w0, w1) = (b0.add(s * STEP_WORDS), b1.add(s * STEP_WORDS));
        if two {
            asm!(
                "tileloadd tmm4, [{a0} + {st}*1]",
                "tileloadd tmm6, [{w0} + {l}*1]",
                "tileloadd tmm7, [{w1} + {l}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm5, [{a1} + {st}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0, a1 = in(reg) a1, st = in(reg) line,
                w0 = in(reg) w0, w1 = in(reg) w1, l = in(reg) line,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "tileloadd tmm4, [{a0} + {st}*1]",
                "tileloadd tmm6, [{w0} + {l}*1]",
                "tileloadd tmm7, [{w1} + {l}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                a0 = in(reg) a0, st = in(reg) line,
                w0 = in(reg) w0, w1 = in(reg) w1, l = in(reg) line,
                options(nostack, readonly),
            );
        }
    }
    asm!(
        "tilestored [{c} + {s}*1], tmm0",
        "tilestored [{c1} + {s}*1], tmm1",
        c = in(reg) c, c1 = in(reg) c.add(TILE), s = in(reg) c_stride,
        options(nostack),
    );
    if two {
        asm!(
            "tilestored [{c} + {s}*1], tmm2",
            "tilestored [{c1} + {s}*1], tmm3",
            c = in(reg) c_hi, c1 = in(reg) c_hi.add(TILE), s = in(reg) c_stride,
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::bf16::{self, value};
    use super::super::pack;
    use super::super::testutil::random_bytes;
    use super::*;
    use crate::GgmlType;
    use rand::{Rng, SeedableRng};

    /// Every packed format, and its split variant, that has a conversion
    /// (Q5_K's split and IQ4_XS's lookup layouts are not packed for AMX).
    fn formats() -> impl Iterator<Item = Format> {
        GgmlType::ALL
            .into_iter()
            .filter_map(|t| Some([Format::of(t)?].into_iter().chain(Format::split(t))))
            .flatten()
            .filter(|f| converter(f.shape).is_some())
    }

    /// Random packed weights of `fmt`, `rows × cols`.
    fn packed(rng: &mut impl Rng, fmt: &Format, rows: usize, cols: usize) -> Vec<u8> {
        let ty = fmt.ty;
        let bytes = random_bytes(rng, ty, rows, cols);
        pack::pack(fmt, rows, cols, ty.row_bytes(cols).unwrap(), &bytes)
    }

    /// The SIMD conversion of every format, whole tiles and runs of units
    /// from inside a tile, is the reference's bit for bit.
    #[test]
    fn conversions_match_the_reference() {
        if !available() {
            eprintln!("skipped: this CPU (or its operating system) does not run AMX-BF16");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for fmt in formats() {
            let convert = converter(fmt.shape).unwrap();
            for cols in [256, 512, 288] {
                if cols % fmt.unit() != 0 {
                    continue;
                }
                let tiles = packed(&mut rng, &fmt, 20, cols);
                let tb = fmt.tile_bytes(cols);
                let units = cols / fmt.unit();
                for tile in tiles.chunks_exact(tb) {
                    let want = bf16::tile_operand(&fmt, tile, cols);
                    let per_unit = fmt.unit() / bf16::STEP * bf16::STEP_WORDS;
                    for (u0, u1) in [(0, units), (1, units), (0, 1), (units - 1, units)] {
                        let mut got = vec![0xdead; (u1 - u0) * per_unit + 3];
                        // SAFETY: the CPU runs the conversion (`available`).
                        unsafe { convert(fmt.off, tile, u0, u1, &mut got) };
                        let want = &want[u0 * per_unit..u1 * per_unit];
                        assert_eq!(
                            &got[..want.len()],
                            want,
                            "{} {cols} units {u0}..{u1}",
                            fmt.ty
                        );
                        assert_eq!(got[want.len()..], [0xdead; 3], "{}: wrote past", fmt.ty);
                    }
                }
            }
        }
    }

    /// Rounding activations: the SIMD path is the reference's bit for bit,
    /// denormals, infinities and odd lengths included.
    #[test]
    fn activations_round_as_the_reference() {
        if !available() {
            eprintln!("skipped: this CPU (or its operating system) does not run AMX-BF16");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(18);
        let mut xs = vec![f32::from_bits(1), -f32::from_bits(0x7f_ffff), f32::INFINITY];
        xs.extend([f32::MAX, 0.0, -0.0, 1.0 + 1.0 / 256.0]);
        xs.extend(
            (0..200)
                .map(|_| f32::from_bits(rng.gen::<u32>()))
                .filter(|x| !x.is_nan()),
        );
        xs.extend((0..1000).map(|_| rng.gen_range(-9.0f32..9.0)));
        for len in [xs.len(), 64, 96, 32 * 17] {
            let len = len / 32 * 32;
            let cols = if len % 64 == 0 { 64 } else { 32 };
            let mut want = vec![0; bf16::acts_len(len / cols, cols)];
            bf16::round_acts(&xs[..len], cols, &mut want);
            let mut got = vec![0; want.len()];
            // SAFETY: the CPU runs the rounding (`available`).
            unsafe { round_acts(&xs[..len], cols, &mut got) };
            assert_eq!(got, want, "len {len}");
        }
    }

    /// The product against f64 sums of the same bf16 values (f32
    /// summation only: within 4e-5 of Σ |w·a|), for every format: weight
    /// rows that leave a pair or a tile half empty, activation rows that
    /// leave a block of 32 or 16 part empty, several blocks of K, pairs
    /// split between calls; and each activation row's results are the
    /// same bit for bit in a product of fewer rows.
    #[test]
    fn the_product_matches_bf16_sums() {
        if !available() {
            eprintln!("skipped: this CPU (or its operating system) does not run AMX-BF16");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        for fmt in formats() {
            let convert = converter(fmt.shape).unwrap();
            for (rows, cols, n) in [(70, 512, 45), (32, 256, 16), (5, 288, 3), (48, 768, 33)] {
                if cols % fmt.unit() != 0 {
                    continue;
                }
                let tiles = packed(&mut rng, &fmt, rows, cols);
                let tb = fmt.tile_bytes(cols);
                // The bf16 weights, row by row.
                let mut w = vec![0.0f64; rows.next_multiple_of(TILE) * cols];
                for (t, tile) in tiles.chunks_exact(tb).enumerate() {
                    let op = bf16::tile_operand(&fmt, tile, cols);
                    for (i, v) in op.iter().enumerate() {
                        let (s, p, nn, j) = (i / 512, i % 512 / 32, i % 32 / 2, i % 2);
                        w[(t * TILE + nn) * cols + s * 32 + 2 * p + j] = f64::from(value(*v));
                    }
                }
                let xs: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let mut acts = vec![0u16; bf16::acts_len(n, cols)];
                bf16::round_acts(&xs, cols, &mut acts);
                let run = |n: usize, block_k: Option<usize>, split: usize| {
                    let mut p = Product::new(convert, &fmt, &tiles, (rows, cols), &acts, n);
                    p.block_k = block_k.unwrap_or(p.block_k);
                    let mut out = vec![f32::NAN; n * rows];
                    let pairs = p.pairs();
                    let mid = split.min(pairs);
                    // SAFETY: the CPU runs the product; `out` is n × rows.
                    unsafe {
                        p.run(0..mid, out.as_mut_ptr());
                        p.run(mid..pairs, out.as_mut_ptr());
                    }
                    out
                };
                let what = format!("{} {rows}x{cols} n {n}", fmt.ty);
                let got = run(n, Some(SUPER), 1);
                for t in 0..n {
                    for r in 0..rows {
                        let (mut sum, mut mag) = (0.0f64, 0.0f64);
                        for k in 0..cols {
                            let a = acts[bf16::act_index(t, k, cols)];
                            let x = w[r * cols + k] * f64::from(value(a));
                            sum += x;
                            mag += x.abs();
                        }
                        let g = f64::from(got[t * rows + r]);
                        assert!(
                            (g - sum).abs() <= 4e-5 * mag + 1e-6,
                            "{what} [{t}, {r}]: {g} vs {sum}"
                        );
                    }
                }
                // Fewer rows, the blocks of K `Product::new` chose (one),
                // no split: the same bits.
                let m = n.div_ceil(3);
                let fewer = run(m, None, 0);
                for (k, (a, b)) in fewer.iter().zip(&got).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{what}: [{k}] with {m} rows");
                }
            }
        }
    }
}
