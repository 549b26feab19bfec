//! `KernelShape`: the named layouts of packed weights that the tile kernels
//! are monomorphized for. A quant type's row of the table names its shape
//! (and the shape of its split variant, if any); each instruction set maps
//! every shape to a kernel in one exhaustive `match` (`select` in its
//! module), so a new shape does not compile until every instruction set says
//! what computes it.

/// How a packed format stores its levels and scales (see [`super::format`]).
/// The name says: legacy (one scale per group) or superblock (k-quant)
/// scales; level width (`Nib`: 4 bits or fewer, two per byte; `Crumb`: 2
/// bits, four per byte; `Byte`: up to 127, one per byte; `Wide`: up to 255,
/// one per byte; `Split`: nibbles and a plane of high bits; `Tri`: 3 bits,
/// eight per three bytes; `Lut`: nibble
/// indices into the IQ4 levels); the group size; and `Min` when groups have
/// a min.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelShape {
    /// Q4_0: nibbles, groups of 32, a scale each.
    Nib32,
    /// Q4_1: nibbles, groups of 32, a scale and a min each.
    Nib32Min,
    /// Q5_0: levels up to 31, groups of 32, a scale each.
    Byte32,
    /// Q5_1: levels up to 31, groups of 32, a scale and a min each.
    Byte32Min,
    /// Q5_0 split: as [`Byte32`](Self::Byte32) with each level's low nibble
    /// and high bit stored apart (the file's size).
    Split32,
    /// Q5_1 split: as [`Byte32Min`](Self::Byte32Min) with each level's low
    /// nibble and high bit stored apart (the file's size).
    Split32Min,
    /// Q8_0, IQ4_NL: levels up to 255, groups of 32, a scale each.
    Wide32,
    /// IQ4_NL lookup: as [`Wide32`](Self::Wide32) with each level stored as
    /// its 4-bit index into the IQ4 levels (the file's size).
    Lut32,
    /// Q4_K: superblocks of groups of 32 nibbles with scales and mins.
    SuperNib32Min,
    /// Q5_K: superblocks of groups of 32 levels up to 31, scales and mins.
    SuperByte32Min,
    /// IQ4_XS: superblocks of groups of 32 levels up to 255, scales.
    SuperWide32,
    /// Q6_K: superblocks of groups of 16 levels up to 63, scales.
    SuperByte16,
    /// Q6_K split: as [`SuperByte16`](Self::SuperByte16) with each level's
    /// low nibble and high two bits stored apart (the file's size).
    SuperSplit16,
    /// Q5_K split: as [`SuperByte32Min`](Self::SuperByte32Min) with each
    /// level's low nibble and high bit stored apart (the file's size).
    SuperSplit32Min,
    /// IQ4_XS lookup: as [`SuperWide32`](Self::SuperWide32) with each level
    /// stored as its 4-bit index into the IQ4 levels (the file's size).
    SuperLut32,
    /// Q3_K: superblocks of groups of 16 nibbles, scales.
    SuperNib16,
    /// Q2_K: superblocks of groups of 16 nibbles, scales and mins.
    SuperNib16Min,
    /// Q2_K compact: as [`SuperNib16Min`](Self::SuperNib16Min) with the
    /// levels (0..3) four per byte.
    SuperCrumb16Min,
    /// Q3_K compact: as [`SuperNib16`](Self::SuperNib16) with the levels
    /// (0..7) at 3 bits, eight in three bytes across a pair of groups, and
    /// the scales at 6 bits (the file's size). Its kernels' arguments are
    /// crumbs with one high bit ([`crumbs`](Self::crumbs) and
    /// [`high_bits`](Self::high_bits)): the pair's third word is where the
    /// split layouts keep their plane.
    SuperTri16,
}

impl KernelShape {
    /// Levels are stored two per byte (the split shape's low nibbles too).
    pub const fn nibbles(self) -> bool {
        use KernelShape::*;
        matches!(
            self,
            Nib32
                | Nib32Min
                | Split32
                | Split32Min
                | Lut32
                | SuperNib32Min
                | SuperSplit16
                | SuperSplit32Min
                | SuperLut32
                | SuperNib16
                | SuperNib16Min
        )
    }

    /// Weights per group (16 or 32).
    pub const fn group(self) -> usize {
        use KernelShape::*;
        match self {
            SuperByte16 | SuperSplit16 | SuperNib16 | SuperNib16Min | SuperCrumb16Min
            | SuperTri16 => 16,
            _ => 32,
        }
    }

    /// Scales are a superblock's `d` times a group's small integer.
    pub const fn superblocks(self) -> bool {
        use KernelShape::*;
        !matches!(
            self,
            Nib32 | Nib32Min | Byte32 | Byte32Min | Split32 | Split32Min | Wide32 | Lut32
        )
    }

    /// Groups have a min.
    pub const fn min(self) -> bool {
        use KernelShape::*;
        matches!(
            self,
            Nib32Min
                | Byte32Min
                | Split32Min
                | SuperNib32Min
                | SuperByte32Min
                | SuperSplit32Min
                | SuperNib16Min
                | SuperCrumb16Min
        )
    }

    /// Levels are stored four per byte (not [`nibbles`](Self::nibbles)), or
    /// with [`high_bits`](Self::high_bits) at 3 bits (`SuperTri16`).
    pub const fn crumbs(self) -> bool {
        matches!(self, KernelShape::SuperCrumb16Min | KernelShape::SuperTri16)
    }

    /// Nibbles are indices into the IQ4 levels
    /// ([`IQ4_LEVELS`](super::format::IQ4_LEVELS)), not levels.
    pub const fn lut(self) -> bool {
        matches!(self, KernelShape::Lut32 | KernelShape::SuperLut32)
    }

    /// Bits of each level stored in the split plane (0: none).
    pub const fn high_bits(self) -> u32 {
        match self {
            KernelShape::SuperSplit16 => 2,
            KernelShape::Split32
            | KernelShape::Split32Min
            | KernelShape::SuperSplit32Min
            | KernelShape::SuperTri16 => 1,
            _ => 0,
        }
    }
}
