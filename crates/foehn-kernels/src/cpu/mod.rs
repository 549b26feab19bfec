//! The CPU kernels: weights repacked into 16-row tiles ([`format`]),
//! activations quantized once per product ([`act`]), and one tile kernel per
//! instruction set, chosen at run time ([`Isa`]).

/// Calls the monomorphized kernel `$kernel::<NIBBLES, GROUP, SUPERBLOCKS,
/// MIN, NA>(off, cols, tile, acts, r0, out)` matching the format's shape and
/// `nr` (NA = `nr`, 4 from 4 up), or the scalar kernel for a shape without a
/// monomorph. Every SIMD module's `tile` is this one dispatch.
macro_rules! dispatch_shape {
    ($kernel:ident($fmt:ident, $cols:ident, $tile:ident, $acts:ident, $r0:ident, $nr:ident, $out:ident)) => {
        match ($fmt.nibbles, $fmt.group, $fmt.superblocks, $fmt.min) {
            // Split formats are the AVX2 kernel's.
            _ if $fmt.high_bits != 0 => super::scalar::tile($fmt, $cols, $tile, $acts, $r0, $nr, $out),
            (true, 32, false, false) => dispatch_shape!(@na $kernel, true, 32, false, false, $fmt, $cols, $tile, $acts, $r0, $nr, $out),
            (true, 32, false, true) => dispatch_shape!(@na $kernel, true, 32, false, true, $fmt, $cols, $tile, $acts, $r0, $nr, $out),
            (false, 32, false, false) => dispatch_shape!(@na $kernel, false, 32, false, false, $fmt, $cols, $tile, $acts, $r0, $nr, $out),
            (false, 32, false, true) => dispatch_shape!(@na $kernel, false, 32, false, true, $fmt, $cols, $tile, $acts, $r0, $nr, $out),
            (true, 32, true, true) => dispatch_shape!(@na $kernel, true, 32, true, true, $fmt, $cols, $tile, $acts, $r0, $nr, $out),
            (false, 32, true, true) => dispatch_shape!(@na $kernel, false, 32, true, true, $fmt, $cols, $tile, $acts, $r0, $nr, $out),
            (false, 32, true, false) => dispatch_shape!(@na $kernel, false, 32, true, false, $fmt, $cols, $tile, $acts, $r0, $nr, $out),
            (false, 16, true, false) => dispatch_shape!(@na $kernel, false, 16, true, false, $fmt, $cols, $tile, $acts, $r0, $nr, $out),
            (true, 16, true, false) => dispatch_shape!(@na $kernel, true, 16, true, false, $fmt, $cols, $tile, $acts, $r0, $nr, $out),
            (true, 16, true, true) => dispatch_shape!(@na $kernel, true, 16, true, true, $fmt, $cols, $tile, $acts, $r0, $nr, $out),
            _ => super::scalar::tile($fmt, $cols, $tile, $acts, $r0, $nr, $out),
        }
    };
    (@na $kernel:ident, $nib:literal, $g:literal, $sup:literal, $min:literal,
     $fmt:ident, $cols:ident, $tile:ident, $acts:ident, $r0:ident, $nr:ident, $out:ident) => {
        match $nr {
            1 => $kernel::<$nib, $g, $sup, $min, 1>($fmt.off, $cols, $tile, $acts, $r0, $out),
            2 => $kernel::<$nib, $g, $sup, $min, 2>($fmt.off, $cols, $tile, $acts, $r0, $out),
            3 => $kernel::<$nib, $g, $sup, $min, 3>($fmt.off, $cols, $tile, $acts, $r0, $out),
            _ => $kernel::<$nib, $g, $sup, $min, 4>($fmt.off, $cols, $tile, $acts, $r0, $out),
        }
    };
}

pub mod act;
pub(crate) mod direct;
pub mod format;
pub(crate) mod pack;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(test)]
pub(crate) mod testutil;

use std::sync::OnceLock;

use act::QuantizedActs;
use format::Format;

/// The instruction sets the tile kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust (the reference).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI.
    Avx512Vnni,
    /// aarch64 NEON with the dot-product extension (SDOT).
    NeonDotprod,
}

impl Isa {
    /// The instruction set's name, as `FOEHN_ISA` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::NeonDotprod => "neon-dotprod",
        }
    }

    /// Every instruction set this CPU can run, best first (always ends with
    /// [`Isa::Scalar`]).
    pub fn supported() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if avx512::available() {
                v.push(Isa::Avx512Vnni);
            }
            if avx2::available() {
                v.push(Isa::Avx2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if neon::available() {
                v.push(Isa::NeonDotprod);
            }
        }
        v.push(Isa::Scalar);
        v
    }

    /// The instruction set the kernels use: the best this CPU supports, or
    /// the one named by the `FOEHN_ISA` environment variable (`scalar`,
    /// `avx2`, `avx512vnni`, `neon-dotprod`) when the CPU supports it.
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let supported = Isa::supported();
            let wanted = std::env::var("FOEHN_ISA").ok();
            wanted
                .and_then(|w| supported.iter().copied().find(|i| i.name() == w.trim()))
                .unwrap_or(supported[0])
        })
    }
}

/// How weights of `ty` are packed for the tile kernels of `isa`: the split
/// variant of the 6-bit type for AVX2 (the file's size, so decode reads no
/// more than the file), else the common format; `None` for types without
/// one.
pub fn format_for(ty: crate::GgmlType, isa: Isa) -> Option<Format> {
    match isa {
        Isa::Avx2 => Format::split(ty).or(Format::of(ty)),
        _ => Format::of(ty),
    }
}

/// The shapes a SIMD tile kernel relies on (it reads and writes through raw
/// pointers): checked once per tile call, in release builds too.
///
/// # Panics
/// When `tile`, `acts` or `out` are too short for the call.
#[allow(dead_code)] // unused on targets without a SIMD kernel
pub(crate) fn check_tile_call(
    fmt: &Format,
    cols: usize,
    tile: &[u8],
    acts: &QuantizedActs,
    r0: usize,
    nr: usize,
    out: &[f32],
) {
    let rows = if (1..=3).contains(&nr) { nr } else { 4 };
    assert!(
        tile.len() >= fmt.tile_bytes(cols) && acts.cols == cols,
        "tile call: wrong tile or columns"
    );
    assert!(
        acts.mode == fmt.act_mode() && acts.group == fmt.group && acts.off == fmt.off,
        "tile call: activations quantized for another format"
    );
    assert!(
        r0 + rows <= acts.n && out.len() >= rows * format::TILE,
        "tile call: too few rows"
    );
}

/// A tile kernel: see [`scalar::tile`].
pub(crate) type TileFn = fn(&Format, usize, &[u8], &QuantizedActs, usize, usize, &mut [f32]);

/// The tile kernel of `isa` (which the CPU must support: see [`Isa::supported`]).
pub(crate) fn tile_fn(isa: Isa) -> TileFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers only pass instruction sets from `Isa::supported()`.
        Isa::Avx512Vnni => |f, c, t, a, r, n, o| unsafe { avx512::tile(f, c, t, a, r, n, o) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => |f, c, t, a, r, n, o| unsafe { avx2::tile(f, c, t, a, r, n, o) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        Isa::NeonDotprod => |f, c, t, a, r, n, o| unsafe { neon::tile(f, c, t, a, r, n, o) },
        _ => scalar::tile,
    }
}

#[cfg(test)]
mod tests {
    use super::format::TILE;
    use super::testutil::random_bytes;
    use super::*;
    use crate::GgmlType;
    use rand::{Rng, SeedableRng};

    /// The SIMD instruction sets this CPU runs.
    fn simd_isas() -> Vec<Isa> {
        Isa::supported()
            .into_iter()
            .filter(|i| *i != Isa::Scalar)
            .collect()
    }

    /// Extreme levels and activations (every level 0 or the type's largest,
    /// every activation +127 or −127, every block at the largest shift):
    /// the SIMD kernels' narrow integer sums must not overflow or saturate.
    #[test]
    fn simd_tile_kernels_survive_extreme_values() {
        use GgmlType::*;
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let isas = simd_isas();
        for (ty, top) in [
            (Q4_0, 15u8),
            (Q4_1, 15),
            (Q5_0, 31),
            (Q5_1, 31),
            (Q8_0, 255),
            (IQ4_NL, 255),
            (Q4_K, 15),
            (Q5_K, 31),
            (Q6_K, 63),
            (Q3_K, 7),
            (Q2_K, 3),
            (IQ4_XS, 255),
        ] {
            let cols = 512;
            let bytes = random_bytes(&mut rng, ty, TILE, cols);
            for &isa in &isas {
                let fmt = format_for(ty, isa).unwrap();
                let mut tile = pack::pack(&fmt, TILE, cols, ty.row_bytes(cols).unwrap(), &bytes);
                for (level, sign) in [(0u8, 1.0f32), (0, -1.0), (top, 1.0), (top, -1.0)] {
                    fill_levels(&fmt, &mut tile, level);
                    let xs = vec![sign; 2 * cols];
                    let mut acts = QuantizedActs::default();
                    acts.quantize(&xs, cols, &fmt);
                    for nr in 1..=2 {
                        let mut want = vec![f32::NAN; nr * TILE];
                        scalar::tile(&fmt, cols, &tile, &acts, 0, nr, &mut want);
                        let mut got = vec![f32::NAN; nr * TILE];
                        tile_fn(isa)(&fmt, cols, &tile, &acts, 0, nr, &mut got);
                        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - w).abs() <= 1e-5 * w.abs().max(1e-3),
                                "{isa:?} {ty} level {level} sign {sign} [{k}]: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Sets every level of every row of `tiles` to `level`.
    fn fill_levels(fmt: &Format, tiles: &mut [u8], level: u8) {
        let grb = fmt.group_row_bytes();
        for unit in tiles.chunks_exact_mut(fmt.unit_bytes()) {
            for group in unit[fmt.header_bytes()..].chunks_exact_mut(TILE * grb) {
                if !fmt.nibbles {
                    group.fill(level);
                    continue;
                }
                let n = fmt.nibble_words();
                let low = level & 0x0f;
                group[..n * 4 * TILE].fill(low | (low << 4));
                if fmt.high_bits > 0 {
                    let high = (0..2 * n).fold(0u8, |b, op| {
                        b | ((level >> 4) << (fmt.high_bits as usize * op))
                    });
                    group[n * 4 * TILE..].fill(high);
                }
            }
        }
    }

    /// Every supported SIMD kernel against the scalar one on the same packed
    /// weights and quantized activations: same integer sums, float rounding
    /// only (within 1e-5 of Σ |w·a|). Odd row counts (zero-padded tiles) and
    /// every `nr`; outputs poisoned first.
    #[test]
    fn simd_tile_kernels_match_the_scalar_kernel() {
        use GgmlType::*;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let isas = simd_isas();
        eprintln!("testing {isas:?}");
        for ty in [
            Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K, Q3_K, Q2_K, IQ4_XS,
        ] {
            // Both layouts of the split types (other kernels than AVX2's
            // fall back to the scalar one on the split layout).
            for fmt in [Format::of(ty), Format::split(ty)].into_iter().flatten() {
                for (rows, cols) in [(5, 256), (16, 768), (33, 512)] {
                    let bytes = random_bytes(&mut rng, ty, rows, cols);
                    let packed = pack::pack(&fmt, rows, cols, ty.row_bytes(cols).unwrap(), &bytes);
                    let n = 7;
                    // Blocks of 32 of different magnitudes, so that superblock
                    // activations get different exponents.
                    let xs: Vec<f32> = (0..n * cols)
                        .map(|i| rng.gen_range(-2.0f32..2.0) / (1 << (i / 32 % 5)) as f32)
                        .collect();
                    let mut acts = QuantizedActs::default();
                    acts.quantize(&xs, cols, &fmt);
                    let tb = fmt.tile_bytes(cols);
                    let a: Vec<f64> = (0..n * cols)
                        .map(|k| f64::from(acts.qs[k]) * f64::from(acts.d[k / 32]))
                        .collect();
                    for (t, tile) in packed.chunks_exact(tb).enumerate() {
                        // Σ |w·a| per (activation row, weight row): the scale of
                        // the rounding errors, whatever the order of the sums.
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
                        for r0 in 0..n {
                            for nr in 1..=4.min(n - r0) {
                                let mut want = vec![f32::NAN; nr * TILE];
                                scalar::tile(&fmt, cols, tile, &acts, r0, nr, &mut want);
                                for &isa in &isas {
                                    let mut got = vec![f32::NAN; nr * TILE];
                                    tile_fn(isa)(&fmt, cols, tile, &acts, r0, nr, &mut got);
                                    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                                        let tol = 1e-5 * mag[r0 * TILE + k] as f32 + 1e-6;
                                        assert!(
                                        (g - w).abs() <= tol,
                                        "{isa:?} {ty} {rows}x{cols} tile {t} r0 {r0} nr {nr} [{k}]: {g} vs {w}"
                                    );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
