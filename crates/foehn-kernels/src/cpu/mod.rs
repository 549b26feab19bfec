//! The CPU kernels: weights repacked into 16-row tiles ([`format`](mod@format)),
//! activations quantized once per product ([`act`]), and one tile kernel per
//! [`KernelShape`] and instruction set, chosen when a matrix is packed
//! ([`TileKernel`]) for an instruction set this CPU runs ([`SupportedIsa`]).

/// `$f`'s monomorph for the layout of the [`KernelShape`] named `$shape`:
/// its const generic arguments are `(nibbles, crumbs, group, superblocks,
/// min, high bits, lookup)`, as the shape's methods give them (checked by
/// `tests::shape_generics_spell_out_the_shapes`).
#[rustfmt::skip]
macro_rules! shape_fn {
    ($f:ident, Nib32) => { $f::<true, false, 32, false, false, 0, false> };
    ($f:ident, Nib32Min) => { $f::<true, false, 32, false, true, 0, false> };
    ($f:ident, Byte32) => { $f::<false, false, 32, false, false, 0, false> };
    ($f:ident, Byte32Min) => { $f::<false, false, 32, false, true, 0, false> };
    ($f:ident, Split32) => { $f::<true, false, 32, false, false, 1, false> };
    ($f:ident, Split32Min) => { $f::<true, false, 32, false, true, 1, false> };
    ($f:ident, Wide32) => { $f::<false, false, 32, false, false, 0, false> };
    ($f:ident, Lut32) => { $f::<true, false, 32, false, false, 0, true> };
    ($f:ident, SuperNib32Min) => { $f::<true, false, 32, true, true, 0, false> };
    ($f:ident, SuperByte32Min) => { $f::<false, false, 32, true, true, 0, false> };
    ($f:ident, SuperWide32) => { $f::<false, false, 32, true, false, 0, false> };
    ($f:ident, SuperByte16) => { $f::<false, false, 16, true, false, 0, false> };
    ($f:ident, SuperSplit16) => { $f::<true, false, 16, true, false, 2, false> };
    ($f:ident, SuperSplit32Min) => { $f::<true, false, 32, true, true, 1, false> };
    ($f:ident, SuperLut32) => { $f::<true, false, 32, true, false, 0, true> };
    ($f:ident, SuperNib16) => { $f::<true, false, 16, true, false, 0, false> };
    ($f:ident, SuperNib16Min) => { $f::<true, false, 16, true, true, 0, false> };
    ($f:ident, SuperCrumb16Min) => { $f::<false, true, 16, true, true, 0, false> };
    ($f:ident, SuperTri16) => { $f::<false, true, 16, true, false, 1, false> };
}

/// `fn $name(shape) -> Option<$ty>`: the monomorph of `$tile` (generic over
/// exactly the arguments of [`shape_fn!`]) for each shape; with `only
/// [...]`, for the listed shapes, and `None` for the others (layouts the
/// instruction set does not compute). Without a list the match is
/// exhaustive, so a new shape does not compile until it has a kernel.
macro_rules! layout_select {
    (fn $name:ident -> $ty:ty = $tile:ident) => {
        layout_select!(@select $name, $ty, $tile, [
            Nib32, Nib32Min, Byte32, Byte32Min, Split32, Split32Min, Wide32, Lut32,
            SuperNib32Min, SuperByte32Min, SuperWide32, SuperByte16, SuperSplit16,
            SuperSplit32Min, SuperLut32, SuperNib16, SuperNib16Min, SuperCrumb16Min,
            SuperTri16
        ], {});
    };
    (fn $name:ident -> $ty:ty = $tile:ident, only [$($shape:ident),* $(,)?]) => {
        layout_select!(@select $name, $ty, $tile, [$($shape),*], { _ => return None, });
    };
    (@select $name:ident, $ty:ty, $tile:ident, [$($shape:ident),*], {$($rest:tt)*}) => {
        /// The monomorph of `shape`, if this instruction set computes it.
        pub(crate) fn $name(shape: $crate::cpu::shape::KernelShape) -> Option<$ty> {
            use $crate::cpu::shape::KernelShape::*;
            let f: $ty = match shape {
                $($shape => shape_fn!($tile, $shape),)*
                $($rest)*
            };
            Some(f)
        }
    };
}

/// [`layout_select!`] over the layouts AMX's int8 and bf16 prompt kernels
/// compute: Q6_K's split layout, not the other split, lookup, crumb or
/// triad layouts (the type table packs those types in their common layouts
/// under AMX).
#[cfg(target_arch = "x86_64")]
macro_rules! amx_layout_select {
    (fn $name:ident -> $ty:ty = $tile:ident) => {
        layout_select!(fn $name -> $ty = $tile, only [
            Nib32, Nib32Min, Byte32, Byte32Min, Wide32, SuperNib32Min, SuperByte32Min,
            SuperWide32, SuperByte16, SuperSplit16, SuperNib16, SuperNib16Min
        ]);
    };
}

/// Defines, in an instruction set's module whose `$kernel` is generic over
/// the arguments of [`shape_fn!`] and the activation rows (AVX-512 VNNI,
/// NEON): `tile`, the entry point of one layout, and `select`
/// ([`layout_select!`]) over every shape.
macro_rules! layout_kernels {
    ($kernel:ident) => {
        layout_select!(fn select -> $crate::cpu::RawTileFn = tile);

        /// As [`super::scalar::tile`], for one layout: `NA` = `nr` (4 from
        /// 4 up).
        ///
        /// # Safety
        /// The CPU must support the features [`available`] checks.
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
            super::check_tile_call(fmt, cols, tile, acts, r0, nr, out);
            let off = fmt.off;
            match nr {
                1 => $kernel::<NIB, CR, G, SUP, MIN, HB, LUT, 1>(off, cols, tile, acts, r0, out),
                2 => $kernel::<NIB, CR, G, SUP, MIN, HB, LUT, 2>(off, cols, tile, acts, r0, out),
                3 => $kernel::<NIB, CR, G, SUP, MIN, HB, LUT, 3>(off, cols, tile, acts, r0, out),
                _ => $kernel::<NIB, CR, G, SUP, MIN, HB, LUT, 4>(off, cols, tile, acts, r0, out),
            }
        }
    };
}

/// How far ahead of the unit it computes a SIMD tile kernel asks for the
/// tile's bytes, into L2: the hardware prefetchers stop at 4 KB pages, and
/// a decode step (one activation row, or a few in a batch) reads gigabytes
/// that no cache holds. 4 KB into L2 was the best of 1–8 KB into L1 or L2 on
/// `benches/kernels.rs`'s streamed decode (Intel Xeon, 2 threads, AVX-512,
/// GB/s before → after: Q4_0 16.5 → 23.7, Q4_K 15.6 → 21.9, Q8_0 22.5 →
/// 25.5).
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 4096;

/// Asks for the cache lines of `bytes` bytes from `p` into L2 (hints only:
/// an address past the tile does not fault).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch(p: *const u8, bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    let mut o = 0;
    while o < bytes {
        // SAFETY: a prefetch reads nothing a program sees and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(o).cast()) };
        o += 64;
    }
}

pub(crate) mod act;
pub(crate) mod bf16;
pub(crate) mod direct;
pub(crate) mod format;
pub(crate) mod pack;
mod scalar;
pub(crate) mod shape;

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
pub(crate) mod amx_bf16;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(test)]
pub(crate) mod testutil;

use act::QuantizedActs;
use format::{Format, TILE};
use shape::KernelShape;

/// The instruction sets the tile kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust (the reference).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI.
    Avx512Vnni,
    /// [`Avx512Vnni`](Self::Avx512Vnni) with AMX-INT8 tiles for products
    /// of many activation rows (prefill), where the operating system grants
    /// the tile state.
    Avx512Amx,
    /// aarch64 NEON with the dot-product extension (SDOT).
    NeonDotprod,
}

/// The environment variable that names the default instruction set of a
/// model's kernels ([`Isa::from_env`]), read where a model is loaded:
/// `FOEHN_ISA=scalar` runs the portable code of every SIMD path.
pub const ISA_ENV: &str = "FOEHN_ISA";

/// An instruction set this CPU runs: made only by checking the CPU
/// ([`Isa::check`], [`Isa::best`]), so kernels selected for it are safe to
/// call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupportedIsa(Isa);

impl SupportedIsa {
    /// The instruction set.
    pub fn isa(self) -> Isa {
        self.0
    }
}

impl Isa {
    /// Every instruction set, for names and parsing.
    pub const ALL: [Isa; 5] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx512Vnni,
        Isa::Avx512Amx,
        Isa::NeonDotprod,
    ];

    /// The instruction set's name (`scalar`, `avx2`, `avx512vnni`,
    /// `avx512amx`, `neon-dotprod`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Avx512Amx => "avx512amx",
            Isa::NeonDotprod => "neon-dotprod",
        }
    }

    /// The instruction set whose packed formats and kernels this one uses
    /// (AVX-512 VNNI's for AMX, which adds a kernel for many activation
    /// rows); itself for the others.
    pub(crate) const fn base(self) -> Isa {
        match self {
            Isa::Avx512Amx => Isa::Avx512Vnni,
            isa => isa,
        }
    }

    /// The instruction set called `name` (see [`name`](Self::name)).
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name.trim())
    }

    /// The instruction set [`ISA_ENV`] names; `None` when it is unset or
    /// empty.
    ///
    /// # Errors
    /// A message naming the variable and the known names when its value is
    /// not one of them.
    pub fn from_env() -> Result<Option<Isa>, String> {
        match std::env::var(ISA_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!("{ISA_ENV} is not UTF-8")),
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) => Isa::from_name(&v).map(Some).ok_or_else(|| {
                let names: Vec<&str> = Isa::ALL.into_iter().map(Isa::name).collect();
                format!(
                    "{ISA_ENV}={v:?} is not an instruction set (one of {})",
                    names.join(", ")
                )
            }),
        }
    }

    /// Every instruction set this CPU can run, best first (always ends with
    /// [`Isa::Scalar`]).
    pub fn supported() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if amx::available() {
                v.push(Isa::Avx512Amx);
            }
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

    /// This instruction set, if this CPU runs it.
    pub fn check(self) -> Option<SupportedIsa> {
        Isa::supported()
            .contains(&self)
            .then_some(SupportedIsa(self))
    }

    /// The best instruction set this CPU runs.
    pub fn best() -> SupportedIsa {
        SupportedIsa(Isa::supported()[0])
    }
}

/// The shapes a SIMD tile kernel of up to 4 activation rows relies on (it
/// reads and writes through raw pointers): checked once per tile call, in
/// release builds too.
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
    check_call(fmt, cols, tile, acts, r0, rows, out);
}

/// As [`check_tile_call`] for a kernel that computes exactly `rows`
/// activation rows.
///
/// # Panics
/// When `tile`, `acts` or `out` are too short for the call.
#[allow(dead_code)] // unused on targets without a SIMD kernel
pub(crate) fn check_call(
    fmt: &Format,
    cols: usize,
    tile: &[u8],
    acts: &QuantizedActs,
    r0: usize,
    rows: usize,
    out: &[f32],
) {
    assert!(
        tile.len() >= fmt.tile_bytes(cols) && acts.cols == cols,
        "tile call: wrong tile or columns"
    );
    assert!(
        acts.quantized_for(fmt),
        "tile call: activations quantized for another format"
    );
    assert!(
        r0 + rows <= acts.n && out.len() >= rows * format::TILE,
        "tile call: too few rows"
    );
}

/// A tile kernel's entry point (see [`scalar::tile`]); the SIMD ones are
/// only safe to call on a CPU that runs their instruction set.
pub(crate) type RawTileFn =
    unsafe fn(&Format, usize, &[u8], &QuantizedActs, usize, usize, &mut [f32]);

/// The SIMD tile kernel of `isa` for `shape`, if that instruction set has
/// one (compiled for this target; whether the CPU runs it is not checked).
fn simd_kernel(isa: Isa, shape: KernelShape) -> Option<RawTileFn> {
    match isa.base() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => avx512::select(shape),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::select(shape),
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDotprod => neon::select(shape),
        _ => {
            let _ = shape;
            None
        }
    }
}

/// The tile kernel chosen for one packed format on one instruction set,
/// when a matrix is packed: calls need no dispatch, and the format the
/// tiles were packed in travels with it.
#[derive(Clone, Copy)]
pub(crate) struct TileKernel {
    fmt: Format,
    isa: Isa,
    f: RawTileFn,
    /// The kernel for many activation rows at once (AMX), if any.
    many: Option<RawTileFn>,
}

/// The most activation rows one [`TileKernel::run_rows`] call computes.
pub(crate) const MAX_CALL_ROWS: usize = 64;

/// Activation rows [`TileKernel::run_rows`] computes on the kernel for
/// many rows at a time (the rest on the 4-row kernel): its tile
/// instructions compute 16 rows, so fewer cost as much.
pub(crate) const MANY_ROWS: usize = 16;

impl std::fmt::Debug for TileKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TileKernel")
            .field("shape", &self.fmt.shape)
            .field("isa", &self.isa)
            .finish()
    }
}

impl TileKernel {
    /// The kernel of `isa` for weights packed as `fmt`: its SIMD kernel, or
    /// the scalar one where it has none (no packable type does: see the
    /// tests).
    pub(crate) fn select(fmt: Format, isa: SupportedIsa) -> Self {
        match simd_kernel(isa.0, fmt.shape) {
            Some(f) => Self {
                fmt,
                isa: isa.0,
                f,
                many: many_rows_kernel(isa.0, fmt.shape),
            },
            None => Self {
                fmt,
                isa: Isa::Scalar,
                f: scalar::tile,
                many: None,
            },
        }
    }

    /// The packed format the kernel reads.
    pub(crate) fn format(&self) -> &Format {
        &self.fmt
    }

    /// Whether the kernel computes many activation rows at once
    /// ([`run_rows`](Self::run_rows) in blocks of [`MANY_ROWS`]).
    pub(crate) fn has_many(&self) -> bool {
        self.many.is_some()
    }

    /// The instruction set that runs the kernel.
    #[allow(dead_code)] // read by tests
    pub(crate) fn isa(&self) -> Isa {
        self.isa
    }

    /// `out[r·16 + i]` for the 16 rows `i` of `tile` and activation rows
    /// `r0..r0 + nr` (see [`scalar::tile`]).
    ///
    /// # Panics
    /// When `tile`, `acts` or `out` are too short for the call.
    #[inline]
    pub(crate) fn run(
        &self,
        cols: usize,
        tile: &[u8],
        acts: &QuantizedActs,
        r0: usize,
        nr: usize,
        out: &mut [f32],
    ) {
        // SAFETY: `f` was selected for an instruction set this CPU runs
        // (`SupportedIsa` is only made by checking) and for `fmt`'s shape;
        // every kernel checks the lengths it relies on (`check_tile_call`).
        unsafe { (self.f)(&self.fmt, cols, tile, acts, r0, nr, out) }
    }

    /// As [`run`](Self::run) for `nr` activation rows (up to
    /// [`MAX_CALL_ROWS`]): whole blocks of [`MANY_ROWS`] on the kernel for
    /// many rows where there is one, the others 4 rows per call.
    ///
    /// # Panics
    /// When `tile`, `acts` or `out` are too short for the call, or `nr`
    /// exceeds [`MAX_CALL_ROWS`].
    pub(crate) fn run_rows(
        &self,
        cols: usize,
        tile: &[u8],
        acts: &QuantizedActs,
        r0: usize,
        nr: usize,
        out: &mut [f32],
    ) {
        assert!(nr <= MAX_CALL_ROWS, "tile call: too many rows");
        let mut done = 0;
        if let Some(many) = self.many {
            done = nr / MANY_ROWS * MANY_ROWS;
            if done > 0 {
                // SAFETY: as in `run`: `many` was selected for an
                // instruction set this CPU runs, and checks the lengths.
                unsafe { many(&self.fmt, cols, tile, acts, r0, done, out) }
            }
        }
        for a in (done..nr).step_by(4) {
            let rows = 4.min(nr - a);
            let out = out.get_mut(a * TILE..).unwrap_or_default();
            self.run(cols, tile, acts, r0 + a, rows, out);
        }
    }
}

/// The kernel of `isa` for many activation rows at once, for `shape`: AMX's
/// where the CPU runs it (only an instruction set this CPU runs is asked).
fn many_rows_kernel(isa: Isa, shape: KernelShape) -> Option<RawTileFn> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Amx => amx::select(shape),
        _ => {
            let _ = shape;
            None
        }
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
    fn simd_isas() -> Vec<SupportedIsa> {
        Isa::supported()
            .into_iter()
            .filter(|i| *i != Isa::Scalar)
            .filter_map(Isa::check)
            .collect()
    }

    /// The types with a packed format (from the quant-type table).
    fn packed_types() -> impl Iterator<Item = GgmlType> {
        GgmlType::ALL.into_iter().filter(|t| t.packing().is_some())
    }

    /// The const generic arguments of a layout's monomorph.
    type Generics = (bool, bool, usize, bool, bool, u32, bool);

    fn generics<
        const NIB: bool,
        const CR: bool,
        const G: usize,
        const SUP: bool,
        const MIN: bool,
        const HB: u32,
        const LUT: bool,
    >() -> Generics {
        (NIB, CR, G, SUP, MIN, HB, LUT)
    }

    layout_select!(fn generics_of -> fn() -> Generics = generics);

    /// `shape_fn!` gives each shape of the type table (common and split
    /// formats) the arguments its methods say.
    #[test]
    fn shape_generics_spell_out_the_shapes() {
        for ty in packed_types() {
            for fmt in [Format::of(ty), Format::split(ty)].into_iter().flatten() {
                let s = fmt.shape;
                let want = (
                    s.nibbles(),
                    s.crumbs(),
                    s.group(),
                    s.superblocks(),
                    s.min(),
                    s.high_bits(),
                    s.lut(),
                );
                assert_eq!(generics_of(s).unwrap()(), want, "{ty}: {s:?}");
            }
        }
    }

    /// Every type the table packs has a SIMD kernel on every SIMD
    /// instruction set compiled for this target, whether this CPU runs it
    /// or not: a type added to the table with a shape some instruction set
    /// does not compute would otherwise run the scalar kernel there.
    #[test]
    fn every_packed_type_has_a_simd_kernel_on_every_simd_isa() {
        let simd: Vec<Isa> = Isa::ALL
            .into_iter()
            .filter(|&i| simd_kernel(i, KernelShape::Nib32).is_some())
            .collect();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(simd, [Isa::Avx2, Isa::Avx512Vnni, Isa::Avx512Amx]);
        #[cfg(target_arch = "aarch64")]
        assert_eq!(simd, [Isa::NeonDotprod]);
        for ty in packed_types() {
            for &isa in &simd {
                let fmt = Format::for_isa(ty, isa).unwrap();
                assert!(
                    simd_kernel(isa, fmt.shape).is_some(),
                    "{ty} ({:?}) would run the scalar kernel on {isa:?}",
                    fmt.shape
                );
            }
        }
        // And on this CPU, the kernels chosen at pack time are SIMD ones.
        for isa in simd_isas() {
            for ty in packed_types() {
                let fmt = Format::for_isa(ty, isa.isa()).unwrap();
                assert_eq!(TileKernel::select(fmt, isa).isa(), isa.isa(), "{ty}");
            }
        }
    }

    /// Extreme levels and activations (every level 0 or the type's largest,
    /// every activation +127 or −127, every block at the largest shift):
    /// the SIMD kernels' narrow integer sums must not overflow or saturate.
    #[test]
    fn simd_tile_kernels_survive_extreme_values() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let isas = simd_isas();
        for ty in packed_types() {
            let top = ty.packing().unwrap().max_level;
            let cols = 512;
            let bytes = random_bytes(&mut rng, ty, TILE, cols);
            for &isa in &isas {
                let fmt = Format::for_isa(ty, isa.isa()).unwrap();
                let kernel = TileKernel::select(fmt, isa);
                let mut tile = pack::pack(&fmt, TILE, cols, ty.row_bytes(cols).unwrap(), &bytes);
                for (level, sign) in [(0u8, 1.0f32), (0, -1.0), (top, 1.0), (top, -1.0)] {
                    fill_levels(&fmt, &mut tile, level);
                    let xs = vec![sign; 2 * cols];
                    let mut acts = QuantizedActs::default();
                    acts.quantize(crate::VecOps::new(crate::Isa::best()), &xs, cols, &fmt);
                    for nr in 1..=2 {
                        let mut want = vec![f32::NAN; nr * TILE];
                        scalar::tile(&fmt, cols, &tile, &acts, 0, nr, &mut want);
                        let mut got = vec![f32::NAN; nr * TILE];
                        kernel.run(cols, &tile, &acts, 0, nr, &mut got);
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
        let row = vec![level; fmt.group];
        let rows = [&row[..]; TILE];
        for unit in tiles.chunks_exact_mut(fmt.unit_bytes()) {
            for gi in 0..fmt.groups_per_unit() {
                pack::write_group(fmt, unit, gi, &rows);
            }
        }
    }

    /// Where an instruction set computes the split layout, it computes what
    /// its byte layout's kernel computes, bit for bit (the same integer sums,
    /// the same float operations), one activation row (decode: with its
    /// prefetch) or many (AMX's kernel on 16 and more), so a type may move
    /// between the two layouts without changing a logit.
    #[test]
    fn split_layout_kernels_equal_the_byte_layout_kernels() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(61);
        for ty in packed_types() {
            let (Some(split), Some(bytes_fmt)) = (Format::split(ty), Format::of(ty)) else {
                continue;
            };
            for isa in simd_isas() {
                if simd_kernel(isa.isa(), split.shape).is_none() {
                    continue;
                }
                let (ks, kb) = (
                    TileKernel::select(split, isa),
                    TileKernel::select(bytes_fmt, isa),
                );
                assert_eq!(
                    (ks.isa(), ks.has_many()),
                    (kb.isa(), kb.has_many()),
                    "{isa:?}"
                );
                for (rows, cols) in [(5, 256), (33, 768)] {
                    let raw = random_bytes(&mut rng, ty, rows, cols);
                    let rb = ty.row_bytes(cols).unwrap();
                    let ps = pack::pack(&split, rows, cols, rb, &raw);
                    let pb = pack::pack(&bytes_fmt, rows, cols, rb, &raw);
                    assert!(ps.len() < pb.len());
                    let n = 37;
                    let xs: Vec<f32> = (0..n * cols)
                        .map(|i| rng.gen_range(-2.0f32..2.0) / (1 << (i / 32 % 5)) as f32)
                        .collect();
                    let mut acts = QuantizedActs::default();
                    acts.quantize(crate::VecOps::new(isa), &xs, cols, &split);
                    let (ts, tb) = (split.tile_bytes(cols), bytes_fmt.tile_bytes(cols));
                    for (t, (a, b)) in ps.chunks_exact(ts).zip(pb.chunks_exact(tb)).enumerate() {
                        for (r0, nr) in [(0, 1), (3, 2), (1, 4), (0, n), (5, 32)] {
                            let mut got = vec![f32::NAN; nr * TILE];
                            let mut want = vec![f32::NAN; nr * TILE];
                            ks.run_rows(cols, a, &acts, r0, nr, &mut got);
                            kb.run_rows(cols, b, &acts, r0, nr, &mut want);
                            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                                assert_eq!(
                                    g.to_bits(),
                                    w.to_bits(),
                                    "{isa:?} {ty} {rows}x{cols} tile {t} rows {r0}+{nr} [{k}]: {g} vs {w}"
                                );
                            }
                        }
                    }
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
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let isas = simd_isas();
        let names: Vec<Isa> = isas.iter().map(|i| i.isa()).collect();
        eprintln!("testing {names:?}");
        for ty in packed_types() {
            // Both layouts of the split types (the kernels of instruction
            // sets without one fall back to the scalar one on the split
            // layout).
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
                    acts.quantize(crate::VecOps::new(crate::Isa::best()), &xs, cols, &fmt);
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
                                    // The split layout is computed by the
                                    // instruction sets whose row says so.
                                    let kernel = TileKernel::select(fmt, isa);
                                    kernel.run(cols, tile, &acts, r0, nr, &mut got);
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
