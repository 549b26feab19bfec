//! AMX-INT8 tile kernel for products with many activation rows (prefill):
//! `tdpbssd` multiplies 16 activation rows by the 16 weight rows of a tile,
//! one group of 16 or 32 weights at a time, into a 16 × 16 tile of i32 sums;
//! the AVX-512 VNNI kernel's scaling then runs on each row of sums. Rust's
//! AMX intrinsics are unstable, so the tile instructions are `asm!`.
//!
//! Weights: each unit of a packed tile is rewritten once per call into the
//! signed levels `u − off` (all within ±128: see [`super::format`]), laid
//! out as `tdpbssd`'s second operand — which is the packed format's word
//! layout (for each 4-byte word, 16 rows' words), so byte levels only lose
//! their offset and nibbles are split into two words. The offset is then
//! part of the integer sums, which equal the VNNI kernel's (whose sums start
//! at `−off · Σ a`), and the float operations that follow are the VNNI
//! kernel's, in its order: the outputs are that kernel's bit for bit.
//!
//! Activations: rows of the quantized activations, read in place (one row
//! of the first operand per activation row, strided by the row length).
//!
//! The tile state is granted per process (`arch_prctl`, asked once by
//! [`available`]) and configured per thread, so every call configures the
//! tiles it uses and releases them when done.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::act::{QuantizedActs, ACT_BLOCK};
use super::format::{Format, UnitLayout, UnitScales, SUPER, TILE};
use super::MAX_CALL_ROWS as MAX_ROWS;

/// Whether this CPU runs the kernel: the AVX-512 VNNI kernel's features,
/// AMX-TILE and AMX-INT8 (cpuid), and the tile data state granted by the
/// operating system (asked once per process; a refusal leaves AVX-512 VNNI).
pub(crate) fn available() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED
        .get_or_init(|| super::avx512::available() && cpu_has_amx_int8() && tile_state_granted())
}

/// cpuid leaf 7 (present on every CPU with AVX-512): AMX-TILE (EDX bit
/// 24) and AMX-INT8 (EDX bit 25).
#[allow(unused_unsafe)] // `__cpuid_count` is safe on newer compilers
fn cpu_has_amx_int8() -> bool {
    // SAFETY: cpuid exists on every x86-64 CPU and only reads registers.
    let edx = unsafe { __cpuid_count(7, 0) }.edx;
    edx & (0b11 << 24) == 0b11 << 24
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`, Linux 5.16 on); whether it was granted.
#[cfg(target_os = "linux")]
fn tile_state_granted() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the system call only changes which register state this
    // process may use; it reads and writes no memory of ours, and the
    // registers the `syscall` instruction clobbers are declared.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Other operating systems: not asked, so not used.
#[cfg(not(target_os = "linux"))]
fn tile_state_granted() -> bool {
    false
}

// `select`: the kernel of each shape AMX computes, as
// [`super::scalar::tile`] for `nr` activation rows up to [`MAX_ROWS`].
amx_layout_select!(fn select -> super::RawTileFn = tile);

/// As [`super::scalar::tile`] for one layout (not a lookup or crumb one) and `nr`
/// (1..=[`MAX_ROWS`]) activation rows.
///
/// # Safety
/// The CPU must run the kernel ([`available`]).
unsafe fn tile<
    const NIB: bool,
    const CR: bool,
    const G: usize,
    const SUP: bool,
    const MIN: bool,
    const HB: u32,
    const LUT: bool,
>(
    fmt: &Format,
    cols: usize,
    tile: &[u8],
    acts: &QuantizedActs,
    r0: usize,
    nr: usize,
    out: &mut [f32],
) {
    const {
        assert!(
            !LUT && !CR,
            "no AMX kernel for the lookup and crumb layouts"
        )
    };
    kernel::<NIB, G, SUP, MIN, HB>(fmt, cols, tile, acts, r0, nr, out);
}

/// A 64-byte aligned buffer (tile loads and stores of whole cache lines).
#[repr(C, align(64))]
pub(super) struct Aligned<T>(pub(super) T);

/// The tile registers: two of the sums of 16 activation rows, those rows'
/// levels of one group and the group's signed weight levels (used in turn,
/// so that one group's product overlaps the store of the previous one's),
/// and the sums and levels of a last block of fewer rows.
const C0: usize = 0;
const C1: usize = 1;
const A0: usize = 2;
const A1: usize = 3;
const B0: usize = 4;
const B1: usize = 5;
const C_TAIL: usize = 6;
const A_TAIL: usize = 7;

/// The tile configuration (palette 1) for groups of `g` weights and a last
/// block of `tail` activation rows (0: none); the sums are 16 i32 a row,
/// the weights `g / 4` rows of 16 weight rows' 4-byte words.
fn config(g: usize, tail: usize) -> Aligned<[u8; 64]> {
    let line = 4 * TILE;
    palette(&[
        (C0, TILE, line),
        (A0, TILE, g),
        (B0, g / 4, line),
        (C1, TILE, line),
        (A1, TILE, g),
        (B1, g / 4, line),
        (C_TAIL, tail, line),
        (A_TAIL, tail, g),
    ])
}

/// A tile configuration of palette 1: `(register, rows, bytes per row)`
/// for each register used (those of 0 rows left unconfigured).
pub(super) fn palette(shapes: &[(usize, usize, usize)]) -> Aligned<[u8; 64]> {
    let mut cfg = [0u8; 64];
    cfg[0] = 1;
    for &(t, rows, bytes) in shapes.iter().filter(|s| s.1 > 0) {
        cfg[16 + 2 * t..18 + 2 * t].copy_from_slice(&(bytes as u16).to_le_bytes());
        cfg[48 + t] = rows as u8;
    }
    Aligned(cfg)
}

/// `a · b` for one group into the sums register of `T` (0 and 1: the two
/// sets for 16 activation rows, 2: the last block's). `a`: the group's
/// levels of the activation rows, `stride` bytes apart; `b`: the group's
/// signed weight levels (rows of 64 bytes). The sums are stored apart
/// ([`store_sums`]), later, so that loads meanwhile do not wait for them.
///
/// # Safety
/// The tiles must be configured ([`config`]) for the group; `a` readable
/// for the configured rows, `b` for the group.
#[inline(always)]
unsafe fn group_product<const T: usize>(a: *const i8, stride: usize, b: *const u8) {
    macro_rules! product {
        ($a:literal, $b:literal, $c:literal) => {
            asm!(
                concat!("tileloadd ", $a, ", [{a} + {stride}*1]"),
                concat!("tileloadd ", $b, ", [{b} + {line}*1]"),
                concat!("tilezero ", $c),
                concat!("tdpbssd ", $c, ", ", $a, ", ", $b),
                a = in(reg) a,
                stride = in(reg) stride,
                b = in(reg) b,
                line = in(reg) 4 * TILE,
                options(nostack, readonly),
            )
        };
    }
    // The registers of `A0`, `B0`, `C0`; `A1`, `B1`, `C1`; `A_TAIL`, `B0`, `C_TAIL`.
    match T {
        0 => product!("tmm2", "tmm4", "tmm0"),
        1 => product!("tmm3", "tmm5", "tmm1"),
        _ => product!("tmm7", "tmm4", "tmm6"),
    }
}

/// Stores the sums register of `T` (see [`group_product`]) at `c`, 16 i32
/// a row.
///
/// # Safety
/// The tiles must be configured; `c` writable for the register's rows.
#[inline(always)]
unsafe fn store_sums<const T: usize>(c: *mut i32) {
    macro_rules! store {
        ($c:literal) => {
            asm!(
                concat!("tilestored [{c} + {line}*1], ", $c),
                c = in(reg) c,
                line = in(reg) 4 * TILE,
                options(nostack),
            )
        };
    }
    match T {
        0 => store!("tmm0"),
        1 => store!("tmm1"),
        _ => store!("tmm6"),
    }
}

/// The unsigned levels of one group at `wp` (packed layout), a packed
/// word at a time: `f(levels, first)` for each 64 bytes of levels (16 rows
/// × 4 levels `first..first + 4` of the group). `HB` (not 0): the nibbles'
/// `HB` high bits come from the plane word that follows them.
#[inline(always)]
pub(super) unsafe fn group_levels<const NIB: bool, const G: usize, const HB: u32>(
    wp: *const u8,
    mut f: impl FnMut(__m512i, usize),
) {
    if NIB {
        // The group's G/8 words hold its low nibbles (levels 0..G/2) and
        // high nibbles (levels G/2..G).
        let mask = _mm512_set1_epi8(0x0f);
        let nd = G / 8;
        // The split layout's high bits (nd = 2 there) follow the nibbles.
        let plane = if HB > 0 {
            _mm512_loadu_si512(wp.add(nd * 64).cast())
        } else {
            _mm512_setzero_si512()
        };
        let high = |o: usize| super::avx512::split_high_bits::<HB>(plane, o);
        for p in 0..nd {
            let v = _mm512_loadu_si512(wp.add(p * 64).cast());
            let mut lo = _mm512_and_si512(v, mask);
            let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
            if HB > 0 {
                lo = _mm512_or_si512(lo, high(p));
                hi = _mm512_or_si512(hi, high(nd + p));
            }
            f(lo, 4 * p);
            f(hi, G / 2 + 4 * p);
        }
    } else {
        for p in 0..G / 4 {
            f(_mm512_loadu_si512(wp.add(p * 64).cast()), 4 * p);
        }
    }
}

/// Rewrites one group of levels at `wp` (packed layout) as signed levels
/// `u − off` in the second operand's layout at `b`: word `p` (levels
/// `4p..4p + 4` of each row) at `b[p · 64..]`.
#[inline(always)]
unsafe fn signed_group<const NIB: bool, const G: usize, const HB: u32>(
    wp: *const u8,
    off: i32,
    b: *mut u8,
) {
    // Wrapping: u − off lies within ±128 for every format.
    let off = _mm512_set1_epi8(off as i8);
    group_levels::<NIB, G, HB>(wp, |v, first| {
        _mm512_store_si512(b.add(first / 4 * 64).cast(), _mm512_sub_epi8(v, off));
    });
}

/// What every step of one call reads and writes.
struct Call {
    /// The tile, its units' bytes and their header's.
    tile: *const u8,
    unit_bytes: usize,
    header: usize,
    off: i32,
    cols: usize,
    /// The activation rows `r0..r0 + nr`, in blocks of 16 (the last
    /// `tail` rows when not 0).
    r0: usize,
    blocks: usize,
    tail: usize,
    /// The activations' arrays (see `QuantizedActs`): levels, scales, level
    /// sums per group, shifted sums, superblock scales and shifts.
    qs: *const i8,
    ad: *const f32,
    sums: *const i16,
    wsums: *const i16,
    sd: *const f32,
    shift: *const u32,
    /// Scratch: the step's signed weights and its groups' sums.
    b: *mut u8,
    c: *mut i32,
}

/// The groups a step computes at most (a superblock of groups of 16).
const MAX_STEP: usize = SUPER / 16;

/// One step of the kernel: `K` groups from group `g0` of the rows (one
/// superblock, or `K` legacy groups) for every activation row: the
/// weights made signed, one tile product per group and block of
/// activation rows, then per activation row the AVX-512 VNNI kernel's
/// scaling of the sums, in its order, added to `acc`.
#[inline(always)]
unsafe fn step<
    const NIB: bool,
    const G: usize,
    const SUP: bool,
    const MIN: bool,
    const K: usize,
    const HB: u32,
>(
    p: &Call,
    g0: usize,
    acc: &mut [__m512; MAX_ROWS],
) {
    let grb = UnitLayout::of(NIB, false, G, SUP, MIN, HB).group_row;
    let sets = 1 + usize::from(MIN);
    let cols = p.cols;
    let (nb, ng, ns) = (cols / ACT_BLOCK, cols / G, cols / SUPER);
    let u = g0 / K;
    let ub = p.tile.add(u * p.unit_bytes);
    for k in 0..K {
        let wp = if SUP {
            ub.add(p.header + k * TILE * grb)
        } else {
            p.tile.add((g0 + k) * p.unit_bytes + p.header)
        };
        signed_group::<NIB, G, HB>(wp, p.off, p.b.add(k * G * TILE));
    }
    // Superblocks: d, dmin, the groups' scales and (min, min) pairs;
    // legacy groups: each group's scale and min.
    let zero = _mm512_setzero_ps();
    let (mut d, mut dm) = ([zero; K], [zero; K]);
    let mut mw = [_mm512_setzero_si512(); K];
    let scp = ub.wrapping_add(2 * TILE * sets);
    let scales = UnitScales::read(scp, false, G, SUP, MIN);
    let scp = scales.as_ptr();
    if SUP {
        d[0] = _mm512_cvtph_ps(_mm256_loadu_si256(ub.cast()));
        if MIN {
            dm[0] = _mm512_cvtph_ps(_mm256_loadu_si256(ub.add(2 * TILE).cast()));
        }
        let mp = scp.add(K * TILE);
        for (j, mw) in mw.iter_mut().enumerate().take(K / 2) {
            let (lo, hi) = (
                _mm_loadu_si128(mp.add(2 * j * TILE).cast()),
                _mm_loadu_si128(mp.add((2 * j + 1) * TILE).cast()),
            );
            *mw = _mm512_cvtepi8_epi16(_mm256_set_m128i(
                _mm_unpackhi_epi8(lo, hi),
                _mm_unpacklo_epi8(lo, hi),
            ));
        }
    } else {
        for k in 0..K {
            let gb = p.tile.add((g0 + k) * p.unit_bytes);
            d[k] = _mm512_cvtph_ps(_mm256_loadu_si256(gb.cast()));
            if MIN {
                dm[k] = _mm512_cvtph_ps(_mm256_loadu_si256(gb.add(2 * TILE).cast()));
            }
        }
    }
    let mut sc = [zero; K];
    if SUP {
        for (k, sc) in sc.iter_mut().enumerate() {
            *sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                scp.add(k * TILE).cast(),
            )));
        }
    }
    // Group k's sums `x` of activation row `r` scaled into `f` (superblocks:
    // Σ_g sc_g · (Σ (u − off)·a << shift); legacy groups: the row's output).
    let scale = |f: __m512, x: __m512i, r: usize, k: usize| -> __m512 {
        if SUP {
            let sh = *p.shift.add(r * nb + (g0 + k) * G / ACT_BLOCK) as i32;
            let x = _mm512_sllv_epi32(x, _mm512_set1_epi32(sh));
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(x), sc[k], f)
        } else {
            let mut v = _mm512_mul_ps(d[k], _mm512_cvtepi32_ps(x));
            if MIN {
                let sa = f32::from(*p.sums.add(r * ng + g0 + k));
                v = _mm512_fmadd_ps(dm[k], _mm512_set1_ps(sa), v);
            }
            let s = *p.ad.add(r * nb + (g0 + k) * G / ACT_BLOCK);
            _mm512_fmadd_ps(v, _mm512_set1_ps(s), f)
        }
    };
    // Superblocks: Σ_g times d, plus the mins (Σ_g m_g·sa_g over pairs of
    // groups) times dmin, times D, added to `acc`.
    let finish = |acc: &mut __m512, f: __m512, r: usize| {
        let mut v = _mm512_mul_ps(d[0], f);
        if MIN {
            let mut imin = _mm512_setzero_si512();
            for (j, &mw) in mw.iter().take(K / 2).enumerate() {
                let pair = p.wsums.add(r * ng + g0 + 2 * j).cast::<i32>();
                let sa = _mm512_set1_epi32(std::ptr::read_unaligned(pair));
                imin = _mm512_dpwssd_epi32(imin, mw, sa);
            }
            v = _mm512_fmadd_ps(dm[0], _mm512_cvtepi32_ps(imin), v);
        }
        *acc = _mm512_fmadd_ps(v, _mm512_set1_ps(*p.sd.add(r * ns + u)), *acc);
    };
    let sum = |c: *const i32, m: usize| _mm512_load_si512(c.add(m * TILE).cast());
    for blk in 0..p.blocks {
        let first = p.r0 + blk * TILE;
        let a = p.qs.add(first * cols + g0 * G);
        let ak = |k: usize| a.add(k * G);
        let bk = |k: usize| p.b.add(k * G * TILE);
        let acc = &mut acc[blk * TILE..];
        if blk + 1 < p.blocks || p.tail == 0 {
            // 16 rows, one register each: group k + 1's product runs on
            // the tiles while group k's sums are scaled.
            let mut f = [zero; TILE];
            if !SUP {
                f.copy_from_slice(&acc[..TILE]);
            }
            group_product::<0>(ak(0), cols, bk(0));
            for k in 0..K {
                let c = p.c.add(k % 2 * TILE * TILE);
                if k.is_multiple_of(2) {
                    if k + 1 < K {
                        group_product::<1>(ak(k + 1), cols, bk(k + 1));
                    }
                    store_sums::<0>(c);
                } else {
                    if k + 1 < K {
                        group_product::<0>(ak(k + 1), cols, bk(k + 1));
                    }
                    store_sums::<1>(c);
                }
                for (m, f) in f.iter_mut().enumerate() {
                    *f = scale(*f, sum(c, m), first + m, k);
                }
            }
            for (m, (acc, &f)) in acc.iter_mut().zip(&f).enumerate() {
                if SUP {
                    finish(acc, f, first + m);
                } else {
                    *acc = f;
                }
            }
        } else {
            for k in 0..K {
                group_product::<2>(ak(k), cols, bk(k));
                store_sums::<2>(p.c.add(k * TILE * TILE));
            }
            for (m, acc) in acc.iter_mut().take(p.tail).enumerate() {
                let mut f = if SUP { zero } else { *acc };
                for k in 0..K {
                    f = scale(f, sum(p.c.add(k * TILE * TILE), m), first + m, k);
                }
                if SUP {
                    finish(acc, f, first + m);
                } else {
                    *acc = f;
                }
            }
        }
    }
}

/// The kernel, after checking the call (lengths, 1 to [`MAX_ROWS`] rows):
/// steps of a superblock, or of 8 legacy groups (then single groups for
/// the rest of a row), over the activation rows in blocks of 16.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,fma,f16c")]
unsafe fn kernel<
    const NIB: bool,
    const G: usize,
    const SUP: bool,
    const MIN: bool,
    const HB: u32,
>(
    fmt: &Format,
    cols: usize,
    tile: &[u8],
    acts: &QuantizedActs,
    r0: usize,
    nr: usize,
    out: &mut [f32],
) {
    super::check_call(fmt, cols, tile, acts, r0, nr, out);
    assert!(
        (1..=MAX_ROWS).contains(&nr),
        "tile call: 1 to {MAX_ROWS} rows"
    );
    let off = fmt.off;
    let layout = UnitLayout::of(NIB, false, G, SUP, MIN, HB);
    // Scratch written before it is read (`signed_group`, tile stores):
    // not cleared.
    let mut b = std::mem::MaybeUninit::<Aligned<[u8; SUPER * TILE]>>::uninit();
    let mut c = std::mem::MaybeUninit::<Aligned<[i32; MAX_STEP * TILE * TILE]>>::uninit();
    let call = Call {
        tile: tile.as_ptr(),
        unit_bytes: layout.bytes,
        header: layout.header,
        off,
        cols,
        r0,
        blocks: nr.div_ceil(TILE),
        tail: nr % TILE,
        qs: acts.qs.as_ptr(),
        ad: acts.d.as_ptr(),
        sums: if G == 16 {
            acts.s16.as_ptr()
        } else {
            acts.s32.as_ptr()
        },
        wsums: if G == 16 {
            acts.w16.as_ptr()
        } else {
            acts.w32.as_ptr()
        },
        sd: acts.sd.as_ptr(),
        shift: acts.shift.as_ptr(),
        b: b.as_mut_ptr().cast(),
        c: c.as_mut_ptr().cast(),
    };
    let mut acc = [_mm512_setzero_ps(); MAX_ROWS];
    let cfg = config(G, call.tail);
    // SAFETY: the configuration is palette 1 with the shapes
    // `group_product` uses; activation rows r0..r0 + nr of `cols` levels
    // exist (checked by `check_call`), and each tile load reads one group
    // of those rows.
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let row_groups = cols / G;
    if SUP && G == 16 {
        for g0 in (0..row_groups).step_by(SUPER / 16) {
            step::<NIB, G, SUP, MIN, { SUPER / 16 }, HB>(&call, g0, &mut acc);
        }
    } else if SUP {
        for g0 in (0..row_groups).step_by(SUPER / 32) {
            step::<NIB, G, SUP, MIN, { SUPER / 32 }, HB>(&call, g0, &mut acc);
        }
    } else {
        let whole = row_groups / 8 * 8;
        for g0 in (0..whole).step_by(8) {
            step::<NIB, G, SUP, MIN, 8, HB>(&call, g0, &mut acc);
        }
        for g0 in whole..row_groups {
            step::<NIB, G, SUP, MIN, 1, HB>(&call, g0, &mut acc);
        }
    }
    asm!("tilerelease", options(nostack, nomem));
    for (m, a) in acc.iter().take(nr).enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(m * TILE), *a);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::random_bytes;
    use super::super::{avx512, pack, scalar};
    use super::*;
    use crate::GgmlType;
    use rand::{Rng, SeedableRng};

    /// The AMX kernel against the scalar one (float rounding only: within
    /// 1e-5 of Σ |w·a|) and the AVX-512 VNNI one (bit for bit), for every
    /// packed type in each of its layouts: odd weight row counts
    /// (zero-padded tiles) and group counts, activation rows from 1 to 64
    /// at odd starts (partial blocks of 16), blocks of
    /// activations of different magnitudes (different superblock shifts),
    /// outputs poisoned first. Skipped where the CPU or the operating
    /// system does not run AMX.
    #[test]
    fn amx_kernel_matches_the_scalar_and_vnni_kernels() {
        if !available() {
            eprintln!("skipped: this CPU (or its operating system) does not run AMX-INT8");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let calls = [(0, 64), (3, 16), (1, 17), (5, 9), (0, 33), (7, 63), (2, 1)];
        let n = 70;
        // Every format packed for this instruction set (Q5_K's split and
        // IQ4_XS's lookup layouts are not: they have no AMX kernel).
        let formats = GgmlType::ALL
            .into_iter()
            .filter_map(|t| Some([Format::of(t)?].into_iter().chain(Format::split(t))))
            .flatten()
            .filter(|f| select(f.shape).is_some());
        for fmt in formats {
            let ty = fmt.ty;
            let many = select(fmt.shape).unwrap();
            let vnni = avx512::select(fmt.shape).unwrap();
            // 288: 9 legacy groups, one step of 8 and one of 1.
            for (rows, cols) in [(5, 256), (33, 512), (17, 288)] {
                if cols % fmt.unit() != 0 {
                    continue;
                }
                let bytes = random_bytes(&mut rng, ty, rows, cols);
                let packed = pack::pack(&fmt, rows, cols, ty.row_bytes(cols).unwrap(), &bytes);
                let xs: Vec<f32> = (0..n * cols)
                    .map(|i| rng.gen_range(-2.0f32..2.0) / (1 << (i / 32 % 5)) as f32)
                    .collect();
                let mut acts = QuantizedActs::default();
                acts.quantize(crate::VecOps::new(crate::Isa::best()), &xs, cols, &fmt);
                let a: Vec<f64> = (0..n * cols)
                    .map(|k| f64::from(acts.qs[k]) * f64::from(acts.d[k / 32]))
                    .collect();
                let tb = fmt.tile_bytes(cols);
                for (t, tile) in packed.chunks_exact(tb).enumerate() {
                    // Σ |w·a| per (activation row, weight row).
                    let mut w = vec![0.0f32; cols];
                    let mut mag = vec![0.0f64; n * TILE];
                    for i in 0..TILE {
                        pack::dequantize_tile_row(&fmt, tile, i, &mut w);
                        for r in 0..n {
                            mag[r * TILE + i] = w
                                .iter()
                                .zip(&a[r * cols..(r + 1) * cols])
                                .map(|(w, a)| (f64::from(*w) * a).abs())
                                .sum();
                        }
                    }
                    for &(r0, nr) in &calls {
                        let what = format!("{ty} {rows}x{cols} tile {t} rows {r0}+{nr}");
                        let mut want = vec![f32::NAN; nr * TILE];
                        scalar::tile(&fmt, cols, tile, &acts, r0, nr, &mut want);
                        let mut same = vec![f32::NAN; nr * TILE];
                        for a in (0..nr).step_by(4) {
                            let k = 4.min(nr - a);
                            // SAFETY: the CPU runs AVX-512 VNNI (`available`).
                            unsafe {
                                vnni(&fmt, cols, tile, &acts, r0 + a, k, &mut same[a * TILE..])
                            };
                        }
                        let mut got = vec![f32::NAN; nr * TILE];
                        // SAFETY: the CPU runs AMX (`available`).
                        unsafe { many(&fmt, cols, tile, &acts, r0, nr, &mut got) };
                        for (k, ((g, w), s)) in got.iter().zip(&want).zip(&same).enumerate() {
                            let tol = 1e-5 * mag[r0 * TILE + k] as f32 + 1e-6;
                            assert!((g - w).abs() <= tol, "{what} [{k}]: {g} vs {w}");
                            assert_eq!(g.to_bits(), s.to_bits(), "{what} [{k}]: {g} vs VNNI {s}");
                        }
                    }
                }
            }
        }
    }

    /// Calls outside the kernel's bounds panic rather than read or write
    /// out of bounds: too many rows, rows past the activations, too short
    /// an output.
    #[test]
    fn bad_calls_panic() {
        if !available() {
            eprintln!("skipped: this CPU (or its operating system) does not run AMX-INT8");
            return;
        }
        let fmt = Format::of(GgmlType::Q4_0).unwrap();
        let cols = 64;
        let tile = vec![0u8; fmt.tile_bytes(cols)];
        let mut acts = QuantizedActs::default();
        acts.quantize(
            crate::VecOps::new(crate::Isa::best()),
            &vec![0.5; 70 * cols],
            cols,
            &fmt,
        );
        let many = select(fmt.shape).unwrap();
        for (r0, nr, out) in [(0, 65, 65 * TILE), (60, 16, 16 * TILE), (0, 16, 15 * TILE)] {
            let res = std::panic::catch_unwind(|| {
                let mut out = vec![0.0; out];
                // SAFETY: the CPU runs AMX; the call is checked.
                unsafe { many(&fmt, cols, &tile, &acts, r0, nr, &mut out) };
            });
            assert!(res.is_err(), "rows {r0}+{nr}");
        }
    }
}
