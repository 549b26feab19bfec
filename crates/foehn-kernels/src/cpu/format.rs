//! The packed weight format every quantized type is repacked into at load.
//!
//! Every supported ggml type dequantizes as `w = S · (u − off) + M` per group
//! of 16 or 32 weights, with `u` a small unsigned integer level, `off` a
//! per-type constant, `S` the group's scale and `M` its (optional) min:
//!
//! | type | levels `u` | off | group | `S` | `M` |
//! |---|---|---|---|---|---|
//! | Q4_0 | 0..15 (nibble) | 8 | 32 | `d` | – |
//! | Q4_1 | 0..15 (nibble) | 0 | 32 | `d` | `m` |
//! | Q5_0 | 0..31 (byte) | 16 | 32 | `d` | – |
//! | Q5_1 | 0..31 (byte) | 0 | 32 | `d` | `m` |
//! | Q8_0 | q + 128 (byte) | 128 | 32 | `d` | – |
//! | IQ4_NL | level + 128 (byte) | 128 | 32 | `d` | – |
//! | Q4_K | 0..15 (nibble) | 0 | 32 | `d·sc` | `−dmin·m` |
//! | Q5_K | 0..31 (byte) | 0 | 32 | `d·sc` | `−dmin·m` |
//! | Q6_K | 0..63 (byte) | 32 | 16 | `d·sc` | – |
//! | Q3_K | 0..7 (nibble) | 4 | 16 | `d·sc` | – |
//! | Q2_K | 0..3 (nibble) | 0 | 16 | `d·sc` | `−dmin·m` |
//! | IQ4_XS | level + 128 (byte) | 128 | 32 | `d·sc` | – |
//!
//! `d`, `m`, `dmin` are the file's f16 values and `sc`, `m` small integers,
//! so the packed bytes keep every bit of the original and dequantize to the
//! same f32 values as ggml (same operations, same order).
//!
//! Rows are packed in **tiles of 16 rows** so that a SIMD lane holds one row:
//! a kernel computes 16 outputs at once without horizontal sums, and one
//! broadcast activation word feeds all 16 rows. A tile is a run of *units*
//! (one group for the legacy types, one 256-weight superblock for the
//! k-quants):
//!
//! ```text
//! unit   = d[16] f16 · (dmin[16] f16) · (sc[groups][16] i8 · (m[groups][16] i8))  · weights[groups]
//! legacy = d[16] f16 · (m[16] f16)                                                · weights[1]
//! weights of one group = for each 4-byte word p of a row's group, for each row i: 4 bytes
//! ```
//! A row's group is `G` bytes (byte levels) or `G/2` bytes (nibbles: byte `k`
//! holds level `k` in its low half and level `k + G/2` in its high half).
//! Parenthesized parts exist only for types with a min; the `sc`/`m` arrays
//! only in superblock mode. Rows past the matrix's end (the last tile of a
//! matrix whose rows are not a multiple of 16) are zeros.
//!
//! The k-quants with 6-bit scales and mins (Q4_K, Q5_K: superblocks of 8
//! groups of 32, with a min) keep them at 6 bits, as the file does, so that
//! Q4_K's packed size is the file's ([`SixBitScales`]); the kernels expand
//! them to the `sc · m` arrays above, a unit at a time:
//! ```text
//! sc · m     = low[8][16] u8 · high[4][16] u8
//! low[g][i]  = sc[g][i] & 15 | (m[g][i] & 15) << 4
//! high[c][i] = sc[c][i] >> 4 | (m[c][i] >> 4) << 2 | (sc[c + 4][i] >> 4) << 4 | (m[c + 4][i] >> 4) << 6
//! ```
//!
//! The *lookup* variant of IQ4_NL and IQ4_XS ([`Format::split`] too, on the
//! instruction sets their rows name) stores each level as the nibble of its
//! index into the sixteen IQ4 levels ([`IQ4_LEVELS`]), which a kernel turns
//! back into the byte layout's level with one table lookup per operand.
//!
//! Q2_K's *compact* variant ([`Format::split`] too) stores its 2-bit levels
//! four per byte (*crumbs*): a row's group of 16 is one word, whose byte `b`
//! holds level `4j + b` at bits `2j .. 2j + 2`, so that operand `j` (the word
//! shifted right by `2j`, masked to 2 bits) holds levels `4j .. 4j + 4`.
//!
//! Its scales and mins stay at 4 bits as in the file ([`FourBitScales`]):
//! byte `16g + i` of the `sc` array holds group `g`'s scale of row `i` in its
//! low half and the min in its high half, and there is no `m` array.
//!
//! Levels wider than 4 bits are one byte each, except in the *split* variant
//! ([`Format::split`], chosen per instruction set): their low 4 bits are
//! nibbles as above and their high bits one more word per row and group,
//! whose byte `b` holds, at bits `h·o .. h·(o + 1)` (`h` high bits per
//! level), the high bits of byte `b`'s level in nibble operand `o` (operand
//! `o < n` = the low nibbles of word `o`, `o ≥ n` = the high nibbles of word
//! `o − n`, for `n` nibble words). So the packed size is the file's, and a
//! kernel rebuilds operand `o`'s levels with one shift, mask and or.
//!
//! Q3_K's compact variant keeps its levels at 3 bits (*triads*). A group of
//! 16 is 6 bytes per row, so two groups share three words: the words where
//! each group of a split layout keeps its levels, and the set's plane word
//! (see [`UnitLayout::group`]). With `X`, `Y` the pair's level words and `Z`
//! its plane word, byte `b` of operand `o` (level `4o + b` of its group) is,
//! bitwise per byte:
//! ```text
//! group 0: o0 = X & 7    o1 = X >> 3 & 7    o2 = Y & 7                     o3 = Y >> 3 & 7
//! group 1: o0 = Z & 7    o1 = Z >> 3 & 7    o2 = X >> 6 | (Z >> 6 & 1) << 2  o3 = Y >> 6 | (Z >> 7) << 2
//! ```
//! so that six of the eight operands take a shift and a mask, as nibbles do.
//! Its 16 signed scales are kept at 6 bits plus 32, as the file keeps them,
//! in the 6-bit layout above with groups 8..16 in the place of the mins
//! ([`ScaleCoding::SixBitSigned`]).

use super::act::ActMode;
use super::shape::KernelShape;
use super::Isa;
use crate::quant::{Packing, KVALUES_IQ4NL};
use crate::GgmlType;

/// Rows per tile: one SIMD lane per row with 512-bit vectors of i32/f32.
pub(crate) const TILE: usize = 16;

/// Weights per superblock of the k-quants.
pub(crate) const SUPER: usize = 256;

/// How one ggml type is packed (see the module docs): its row of the
/// quant-type table's [`KernelShape`] and level offset, spelled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Format {
    /// The original type.
    pub(crate) ty: GgmlType,
    /// The kernel shape the fields below spell out.
    pub(crate) shape: KernelShape,
    /// Levels fit in 4 bits and are stored two per byte.
    pub(crate) nibbles: bool,
    /// Levels fit in 2 bits and are stored four per byte (compact variant).
    pub(crate) crumbs: bool,
    /// Weights per group (16 or 32).
    pub(crate) group: usize,
    /// Scales are `d[superblock] · sc[group]` (k-quants) rather than `d[group]`.
    pub(crate) superblocks: bool,
    /// Groups have a min `M`.
    pub(crate) min: bool,
    /// The level offset `off`.
    pub(crate) off: i32,
    /// Split variant: bits of each level above its low nibble, stored in a
    /// plane of their own (0: levels are whole nibbles or bytes).
    pub(crate) high_bits: u32,
    /// Lookup variant: nibbles are indices into [`IQ4_LEVELS`] (IQ4_NL,
    /// IQ4_XS).
    pub(crate) lut: bool,
}

/// The levels of the lookup layouts (IQ4_NL, IQ4_XS): nibble `k` stands for level
/// `IQ4_LEVELS[k]`, the IQ4 value `k` plus 128 (the byte layout's level).
pub(crate) const IQ4_LEVELS: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut k = 0;
    while k < 16 {
        t[k] = (KVALUES_IQ4NL[k] as i16 + 128) as u8;
        k += 1;
    }
    t
};

/// The nibble of each level of [`IQ4_LEVELS`] (0 for other bytes).
pub(crate) const IQ4_INDEX: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut k = 0;
    while k < 16 {
        t[IQ4_LEVELS[k] as usize] = k as u8;
        k += 1;
    }
    t
};

impl Format {
    /// `ty` packed as `shape` with level offset `off`.
    const fn new(ty: GgmlType, shape: KernelShape, off: i32) -> Format {
        Format {
            ty,
            shape,
            nibbles: shape.nibbles(),
            crumbs: shape.crumbs(),
            group: shape.group(),
            superblocks: shape.superblocks(),
            min: shape.min(),
            off,
            high_bits: shape.high_bits(),
            lut: shape.lut(),
        }
    }

    /// The common packed format of `ty`, or `None` when the type is not
    /// packed (floats, and types without a kernel shape in their row).
    pub(crate) const fn of(ty: GgmlType) -> Option<Format> {
        match ty.packing() {
            Some(p) => Some(Format::new(ty, p.shape, p.off)),
            None => None,
        }
    }

    /// The variant of `ty` packed at or near the file's size, if it has one
    /// (see the module docs): split (high bits in a plane), lookup (IQ4
    /// indices), crumbs (Q2_K) or triads (Q3_K). Named for the first.
    pub(crate) const fn split(ty: GgmlType) -> Option<Format> {
        match ty.packing() {
            Some(Packing {
                split: Some((shape, _)),
                off,
                ..
            }) => Some(Format::new(ty, shape, off)),
            _ => None,
        }
    }

    /// How weights of `ty` are packed for the tile kernels of `isa`: the
    /// split variant where the type's row says so for `isa`, else the
    /// common format; `None` for types without one.
    pub(crate) fn for_isa(ty: GgmlType, isa: Isa) -> Option<Format> {
        match ty.packing()?.split {
            Some((_, isas)) if isas.contains(&isa) => Format::split(ty),
            _ => Format::of(ty),
        }
    }

    /// 4-byte words of low nibbles per row and group (nibble formats).
    pub(crate) const fn nibble_words(&self) -> usize {
        self.group / 8
    }

    /// Level `k` (0..group) of row `i` (0..16) in the group at `at`
    /// ([`UnitLayout::group`]) of `ub`, one unit's bytes of a tile.
    #[inline]
    pub(crate) fn level(&self, ub: &[u8], at: GroupAt, i: usize, k: usize) -> u8 {
        if triads(self.crumbs, self.high_bits) {
            return self.triad(ub, at, i, k);
        }
        let byte = |word: usize, b: usize| ub[at.levels + (word * TILE + i) * 4 + b];
        let plane = |b: usize, op: usize| {
            let p = ub[at.plane + 4 * i + b] >> (self.high_bits as usize * op);
            p & ((1 << self.high_bits) - 1)
        };
        if self.crumbs {
            let (word, j) = (k / 16, k % 16);
            return (byte(word, j % 4) >> (2 * (j / 4))) & 3;
        }
        if !self.nibbles {
            return byte(k / 4, k % 4);
        }
        let half = self.group / 2;
        let (j, high_half) = (k % half, k >= half);
        let nib = byte(j / 4, j % 4);
        let low = if high_half { nib >> 4 } else { nib & 0x0f };
        if self.lut {
            return IQ4_LEVELS[usize::from(low)];
        }
        if self.high_bits == 0 {
            return low;
        }
        let n = self.nibble_words();
        let op = j / 4 + if high_half { n } else { 0 };
        low | (plane(j % 4, op) << 4)
    }

    /// Level `k` of row `i` of the group at `at` in the triad layout (see
    /// the module docs).
    fn triad(&self, ub: &[u8], at: GroupAt, i: usize, k: usize) -> u8 {
        let (o, b) = (k / 4, k % 4);
        // The pair's words X, Y (its level words) and Z (its plane word).
        let levels = self.unit_layout().levels;
        let byte = |at: usize| ub[at + 4 * i + b];
        let (x, y, z) = (byte(at.set), byte(at.set + levels), byte(at.plane));
        match (at.first(), o) {
            (true, 0) => x & 7,
            (true, 1) => (x >> 3) & 7,
            (true, 2) => y & 7,
            (true, _) => (y >> 3) & 7,
            (false, 0) => z & 7,
            (false, 1) => (z >> 3) & 7,
            (false, 2) => (x >> 6) | (((z >> 6) & 1) << 2),
            (false, _) => (y >> 6) | ((z >> 7) << 2),
        }
    }

    /// Weights per unit (a superblock or a group).
    pub(crate) const fn unit(&self) -> usize {
        if self.superblocks {
            SUPER
        } else {
            self.group
        }
    }

    /// How activations are quantized for products with this format: the
    /// k-quants' kernels sum a whole superblock before scaling.
    pub(crate) const fn act_mode(&self) -> ActMode {
        if self.superblocks {
            ActMode::Superblock
        } else {
            ActMode::Block
        }
    }

    /// Groups per unit.
    pub(crate) const fn groups_per_unit(&self) -> usize {
        self.unit() / self.group
    }

    /// The byte layout of one unit of a tile.
    pub(crate) const fn unit_layout(&self) -> UnitLayout {
        UnitLayout::of(
            self.nibbles,
            self.crumbs,
            self.group,
            self.superblocks,
            self.min,
            self.high_bits,
        )
    }

    /// Group `g`'s scale multiplier `sc` and (with a min) min multiplier
    /// `m` of row `i` in the unit `ub` (superblock formats).
    pub(crate) fn scales(&self, ub: &[u8], g: usize, i: usize) -> (i8, i8) {
        let at = 2 * TILE * (1 + usize::from(self.min));
        match ScaleCoding::of(self.crumbs, self.group, self.superblocks, self.min) {
            ScaleCoding::SixBit => {
                let (sc, m) = SixBitScales::get(&ub[at..], g, i);
                (sc as i8, m as i8)
            }
            ScaleCoding::SixBitSigned => {
                let (sc, m) = SixBitScales::get(&ub[at..], g % 8, i);
                let v = if g < 8 { sc } else { m };
                (v as i8 - 32, 0)
            }
            ScaleCoding::FourBit => {
                let b = ub[at + g * TILE + i];
                ((b & 0x0f) as i8, (b >> 4) as i8)
            }
            ScaleCoding::Bytes => {
                let m = if self.min {
                    ub[at + (self.groups_per_unit() + g) * TILE + i] as i8
                } else {
                    0
                };
                (ub[at + g * TILE + i] as i8, m)
            }
        }
    }

    /// Bytes of one unit of a tile.
    pub(crate) const fn unit_bytes(&self) -> usize {
        self.unit_layout().bytes
    }

    /// Bytes of one tile of rows of `cols` weights (`cols` a multiple of
    /// [`unit`](Self::unit)).
    pub(crate) const fn tile_bytes(&self, cols: usize) -> usize {
        cols / self.unit() * self.unit_bytes()
    }
}

/// Whether levels in crumbs with high bits are the triad layout (Q3_K
/// compact, see the module docs): 3-bit levels across a pair of groups,
/// not crumbs and a plane.
pub(crate) const fn triads(crumbs: bool, high_bits: u32) -> bool {
    crumbs && high_bits > 0
}

/// 4-byte words of levels per row and group of `group` weights, stored as
/// nibbles, crumbs or bytes (the split layout's plane word comes on top).
pub(crate) const fn level_words(nibbles: bool, crumbs: bool, group: usize) -> usize {
    if nibbles {
        group / 8
    } else if crumbs {
        group / 16
    } else {
        group / 4
    }
}

/// The bytes of one unit of a packed tile: its header (the scales, and the
/// mins where the format has them, of 16 rows) and its groups, each 16 rows
/// of `group_row` bytes. What [`Format`] gives at run time, for kernels that
/// know the layout at compile time ([`UnitLayout::of`] is `const`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnitLayout {
    /// Bytes of the header.
    pub(crate) header: usize,
    /// Bytes of one row's levels in one group: nibbles, crumbs or bytes,
    /// and its share of the split layout's plane of high bits.
    pub(crate) group_row: usize,
    /// Bytes of the unit.
    pub(crate) bytes: usize,
    /// Bytes of one group's level words of 16 rows (the plane not counted).
    pub(crate) levels: usize,
    /// Groups stored as one set, their level words followed by the set's
    /// plane word: 2 in the triad layout (a pair shares three words), else
    /// 1.
    pub(crate) plane_groups: usize,
}

/// Where one group's bytes lie in its unit ([`UnitLayout::group`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupAt {
    /// Offset of the group's level words from the unit's start.
    pub(crate) levels: usize,
    /// Offset of the level words of its set's first group.
    pub(crate) set: usize,
    /// Offset of its set's plane word (split and triad layouts).
    pub(crate) plane: usize,
}

impl GroupAt {
    /// Whether the group is the first of its set.
    #[inline(always)]
    pub(crate) const fn first(&self) -> bool {
        self.levels == self.set
    }
}

impl UnitLayout {
    /// The layout of levels in nibbles, crumbs or bytes, in groups of
    /// `group`, superblocks (of [`SUPER`]) or single groups, with a min per
    /// group or not, and in the split layout (nibbles or crumbs and a plane
    /// of `high_bits` bits per level) when `high_bits` is not 0.
    pub(crate) const fn of(
        nibbles: bool,
        crumbs: bool,
        group: usize,
        superblocks: bool,
        min: bool,
        high_bits: u32,
    ) -> Self {
        let level_row = if nibbles {
            group / 2
        } else if crumbs {
            group / 4
        } else {
            group
        };
        let group_row = level_row + group * high_bits as usize / 8;
        let sets = if min { 2 } else { 1 };
        let groups = if superblocks { SUPER / group } else { 1 };
        let scales = match ScaleCoding::of(crumbs, group, superblocks, min) {
            ScaleCoding::SixBit | ScaleCoding::SixBitSigned => SixBitScales::BYTES,
            ScaleCoding::FourBit => FourBitScales::BYTES,
            ScaleCoding::Bytes if superblocks => groups * TILE * sets,
            ScaleCoding::Bytes => 0,
        };
        let header = 2 * TILE * sets + scales;
        // Triads: a group of 16 is a word and a half per row.
        let plane_groups = if triads(crumbs, high_bits) { 2 } else { 1 };
        Self {
            header,
            group_row,
            bytes: header + groups * TILE * group_row,
            levels: TILE * level_row,
            plane_groups,
        }
    }

    /// Where group `gi` (0..groups per unit) of a unit lies: in set
    /// `gi / plane_groups`, after the level words of the set's groups before
    /// it; the set's plane word follows the level words of all its groups.
    #[inline(always)]
    pub(crate) const fn group(&self, gi: usize) -> GroupAt {
        let (set, k) = (gi / self.plane_groups, gi % self.plane_groups);
        let start = self.header + set * self.plane_groups * TILE * self.group_row;
        GroupAt {
            levels: start + k * self.levels,
            set: start,
            plane: start + self.plane_groups * self.levels,
        }
    }
}

/// How a superblock unit's header keeps its scales (and mins): the kernels
/// read them through [`UnitScales::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScaleCoding {
    /// A byte each: the `sc` array, then `m` (and none for legacy units).
    Bytes,
    /// 6 bits each ([`SixBitScales`]): superblocks of groups of 32 with a
    /// min (Q4_K, Q5_K).
    SixBit,
    /// 6 bits each, the scale plus 32, 16 groups without a min (Q3_K's
    /// compact layout): [`SixBitScales`] with groups 8..16 where the mins
    /// are.
    SixBitSigned,
    /// 4 bits each ([`FourBitScales`]): the crumb layout's superblocks with
    /// a min (Q2_K).
    FourBit,
}

impl ScaleCoding {
    /// The coding of a layout with levels in crumbs or not, groups of
    /// `group`, superblocks or not, a min or not.
    pub(crate) const fn of(crumbs: bool, group: usize, superblocks: bool, min: bool) -> Self {
        if !superblocks {
            Self::Bytes
        } else if crumbs && min {
            Self::FourBit
        } else if crumbs {
            Self::SixBitSigned
        } else if min && group == 32 {
            Self::SixBit
        } else {
            Self::Bytes
        }
    }
}

/// A unit's scales and mins one byte each, as the kernels read them (the
/// `sc` array, then `m`): the header's own bytes, or expanded from 6 bits
/// ([`SixBitScales`]) or 4 bits ([`FourBitScales`]) where the layout keeps
/// them so. The variant is a constant of each monomorph, so the choice folds
/// away.
#[allow(clippy::large_enum_variant)] // a stack buffer per unit: boxing would allocate in the kernels' loop
pub(crate) enum UnitScales {
    /// The header's bytes, at this address.
    Bytes(*const u8),
    /// Expanded from 6 bits.
    Six(SixBitScales),
    /// Expanded from 4 bits.
    Four(FourBitScales),
}

impl UnitScales {
    /// The scales of a unit of the layout `(crumbs, group, superblocks,
    /// min)` whose header's scales start at `p`.
    ///
    /// # Safety
    /// `p` must be valid for reads of the layout's scale bytes.
    #[inline(always)]
    pub(crate) unsafe fn read(
        p: *const u8,
        crumbs: bool,
        group: usize,
        superblocks: bool,
        min: bool,
    ) -> Self {
        match ScaleCoding::of(crumbs, group, superblocks, min) {
            ScaleCoding::SixBit => Self::Six(SixBitScales::expand::<0>(p)),
            ScaleCoding::SixBitSigned => Self::Six(SixBitScales::expand::<32>(p)),
            ScaleCoding::FourBit => Self::Four(FourBitScales::expand(p)),
            ScaleCoding::Bytes => Self::Bytes(p),
        }
    }

    /// Where the one-byte scales start (valid while `self` lives).
    #[inline(always)]
    pub(crate) fn as_ptr(&self) -> *const u8 {
        match self {
            Self::Bytes(p) => *p,
            Self::Six(s) => s.0.as_ptr(),
            Self::Four(s) => s.0.as_ptr(),
        }
    }
}

/// The scales and mins of a superblock unit whose header keeps them at 4
/// bits (Q2_K's crumb layout: 16 groups of 16, each byte the scale of a
/// group and row in its low half and the min in its high half, as the
/// file's bytes), expanded to one byte each: `sc[g][i]` at byte `16g + i`,
/// then `m[g][i]` at byte `256 + 16g + i`, as the other superblock formats
/// store them.
#[repr(C, align(64))]
pub(crate) struct FourBitScales(pub(crate) [u8; 2 * 16 * TILE]);

impl FourBitScales {
    /// Bytes of the 4-bit scales and mins of one unit.
    pub(crate) const BYTES: usize = 16 * TILE;

    /// Expands the [`BYTES`](Self::BYTES) bytes of 4-bit scales and mins at
    /// `p` (a byte loop that every instruction set vectorizes).
    ///
    /// # Safety
    /// `p` must be valid for reads of [`BYTES`](Self::BYTES) bytes.
    #[inline(always)]
    pub(crate) unsafe fn expand(p: *const u8) -> Self {
        let b = std::ptr::read_unaligned(p.cast::<[u8; Self::BYTES]>());
        let mut out = Self([0; 2 * 16 * TILE]);
        let (sc, m) = out.0.split_at_mut(Self::BYTES);
        for k in 0..Self::BYTES {
            sc[k] = b[k] & 0x0f;
            m[k] = b[k] >> 4;
        }
        out
    }
}

/// The scales and mins of a superblock unit whose header keeps them at 6
/// bits (see the module docs), expanded to one byte each: `sc[g][i]` at
/// byte `16g + i`, then `m[g][i]` at byte `128 + 16g + i`, as the other
/// superblock formats store them.
#[repr(C, align(64))]
pub(crate) struct SixBitScales(pub(crate) [u8; 2 * 8 * TILE]);

impl SixBitScales {
    /// Bytes of the 6-bit scales and mins of one unit.
    pub(crate) const BYTES: usize = 12 * TILE;

    /// Expands the [`BYTES`](Self::BYTES) bytes of 6-bit scales and mins at
    /// `p`, each less `BIAS` (wrapping: 32 makes Q3_K's signed scales).
    /// Plain byte loops that every instruction set vectorizes: a few vector
    /// operations per unit of 16 rows × 256 weights.
    ///
    /// # Safety
    /// `p` must be valid for reads of [`BYTES`](Self::BYTES) bytes.
    #[inline(always)]
    pub(crate) unsafe fn expand<const BIAS: u8>(p: *const u8) -> Self {
        const Q: usize = 4 * TILE;
        let low = std::ptr::read_unaligned(p.cast::<[[u8; Q]; 2]>());
        let high = std::ptr::read_unaligned(p.add(2 * Q).cast::<[u8; Q]>());
        let mut out = Self([0; 2 * 8 * TILE]);
        let (sc, m) = out.0.split_at_mut(2 * Q);
        for k in 0..Q {
            let (a, b, h) = (low[0][k], low[1][k], high[k]);
            sc[k] = ((a & 0x0f) | ((h << 4) & 0x30)).wrapping_sub(BIAS);
            sc[Q + k] = ((b & 0x0f) | (h & 0x30)).wrapping_sub(BIAS);
            m[k] = ((a >> 4) | ((h << 2) & 0x30)).wrapping_sub(BIAS);
            m[Q + k] = ((b >> 4) | ((h >> 2) & 0x30)).wrapping_sub(BIAS);
        }
        out
    }

    /// Scale and min of row `i`, group `g` from the 6-bit bytes `b`.
    pub(crate) fn get(b: &[u8], g: usize, i: usize) -> (u8, u8) {
        let low = b[g * TILE + i];
        let high = b[8 * TILE + (g % 4) * TILE + i] >> (4 * (g / 4));
        (
            (low & 0x0f) | ((high & 3) << 4),
            (low >> 4) | (((high >> 2) & 3) << 4),
        )
    }

    /// Writes scale `sc` and min `m` (each below 64) of row `i`, group `g`
    /// into the 6-bit bytes `b`, whose bits for them must be zero.
    pub(crate) fn set(b: &mut [u8], g: usize, i: usize, sc: u8, m: u8) {
        debug_assert!(sc < 64 && m < 64, "6-bit scale {sc} or min {m}");
        b[g * TILE + i] = (sc & 0x0f) | ((m & 0x0f) << 4);
        b[8 * TILE + (g % 4) * TILE + i] |= ((sc >> 4) | ((m >> 4) << 2)) << (4 * (g / 4));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_bit_scales_round_trip_every_value() {
        // Every (scale, min) pair of 6-bit values, at every group and row.
        for base in 0..32usize {
            let mut b = [0u8; SixBitScales::BYTES];
            let mut want = [[(0u8, 0u8); TILE]; 8];
            for (g, row) in want.iter_mut().enumerate() {
                for (i, w) in row.iter_mut().enumerate() {
                    let k = base * 128 + g * TILE + i;
                    *w = ((k % 64) as u8, (k / 64) as u8);
                    SixBitScales::set(&mut b, g, i, w.0, w.1);
                }
            }
            // SAFETY: `b` holds the bytes `expand` reads.
            let expanded = unsafe { SixBitScales::expand::<0>(b.as_ptr()) };
            for (g, row) in want.iter().enumerate() {
                for (i, &(sc, m)) in row.iter().enumerate() {
                    assert_eq!(SixBitScales::get(&b, g, i), (sc, m), "group {g} row {i}");
                    assert_eq!(expanded.0[g * TILE + i], sc, "sc, group {g} row {i}");
                    assert_eq!(expanded.0[(8 + g) * TILE + i], m, "m, group {g} row {i}");
                }
            }
        }
    }

    #[test]
    fn packed_sizes_stay_close_to_the_originals() {
        // Bits per weight of the packed form vs the file's.
        for (ty, max_ratio) in [
            (GgmlType::Q4_0, 1.0),
            (GgmlType::Q4_1, 1.0),
            (GgmlType::Q8_0, 1.0),
            (GgmlType::Q4_K, 1.0),
            (GgmlType::Q5_K, 1.55),
            (GgmlType::Q6_K, 1.31),
            (GgmlType::Q5_0, 1.55),
        ] {
            let f = Format::of(ty).unwrap();
            let packed = f.tile_bytes(4096) as f64 / TILE as f64;
            let orig = ty.row_bytes(4096).unwrap() as f64;
            assert!(packed / orig <= max_ratio, "{ty}: {packed} vs {orig}");
        }
        // The split variants of Q6_K, Q5_K, Q5_0 and Q5_1, the lookup
        // variant of IQ4_NL, the crumbs of Q2_K, the triads of Q3_K and the
        // 6-bit scales of Q4_K are the file's size; IQ4_XS's lookup variant is
        // within 2 % of it (its scales take a byte each).
        for f in [
            Format::split(GgmlType::Q6_K),
            Format::split(GgmlType::Q5_K),
            Format::split(GgmlType::Q5_0),
            Format::split(GgmlType::Q5_1),
            Format::split(GgmlType::IQ4_NL),
            Format::split(GgmlType::Q2_K),
            Format::split(GgmlType::Q3_K),
            Format::of(GgmlType::Q4_K),
        ] {
            let f = f.unwrap();
            assert_eq!(f.tile_bytes(4096), TILE * f.ty.row_bytes(4096).unwrap());
        }
        let f = Format::split(GgmlType::IQ4_XS).unwrap();
        let file = TILE * f.ty.row_bytes(4096).unwrap();
        assert!(f.tile_bytes(4096) * 100 <= file * 102, "IQ4_XS lookup");
    }
}
