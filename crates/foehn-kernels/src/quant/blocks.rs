//! The `#[repr(C)]` block layouts of ggml's quantized types, read from the
//! little-endian bytes of a GGUF tensor.
//!
//! Tensor data is not aligned for these structs, so blocks are never cast from
//! `&[u8]`: `from_le_bytes` copies the fields out, in declaration order, which
//! is the on-disk order (no padding: each struct's size is asserted against the
//! quant-type table).

use half::f16;

use super::types::{GgmlType, QK_K};

/// A block field read from little-endian bytes.
trait LeField: Sized {
    /// Bytes the field occupies.
    const LEN: usize;
    /// Reads the field from exactly `LEN` bytes.
    fn read_le(b: &[u8]) -> Self;
}

impl LeField for f16 {
    const LEN: usize = 2;
    fn read_le(b: &[u8]) -> Self {
        f16::from_bits(u16::from_le_bytes([b[0], b[1]]))
    }
}

impl LeField for u16 {
    const LEN: usize = 2;
    fn read_le(b: &[u8]) -> Self {
        u16::from_le_bytes([b[0], b[1]])
    }
}

impl LeField for f32 {
    const LEN: usize = 4;
    fn read_le(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl<const M: usize> LeField for [u8; M] {
    const LEN: usize = M;
    fn read_le(b: &[u8]) -> Self {
        std::array::from_fn(|i| b[i])
    }
}

impl<const M: usize> LeField for [i8; M] {
    const LEN: usize = M;
    fn read_le(b: &[u8]) -> Self {
        std::array::from_fn(|i| b[i] as i8)
    }
}

impl<const M: usize> LeField for [i16; M] {
    const LEN: usize = 2 * M;
    fn read_le(b: &[u8]) -> Self {
        std::array::from_fn(|i| i16::from_le_bytes([b[2 * i], b[2 * i + 1]]))
    }
}

/// Defines a block struct, asserts its size (literal, table and field sum
/// agree) and derives `from_le_bytes` from the field order.
macro_rules! blocks {
    ($(
        $(#[$meta:meta])*
        $name:ident($ty:ident, $bytes:literal) {
            $( $(#[$fmeta:meta])* $field:ident: $fty:ty, )+
        }
    )*) => {$(
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $fty, )+
        }

        const _: () = assert!(std::mem::size_of::<$name>() == $bytes);
        const _: () = assert!(GgmlType::$ty.type_size() == $bytes);
        const _: () = assert!(0 $( + <$fty as LeField>::LEN )+ == $bytes);

        impl $name {
            /// Bytes of one block.
            pub const BYTES: usize = $bytes;
            /// The quant type stored in these blocks.
            pub const TYPE: GgmlType = GgmlType::$ty;

            /// Reads a block from its on-disk (little-endian) bytes.
            pub fn from_le_bytes(b: &[u8; $bytes]) -> Self {
                let mut off = 0;
                $(
                    let $field = <$fty as LeField>::read_le(&b[off..off + <$fty as LeField>::LEN]);
                    off += <$fty as LeField>::LEN;
                )+
                debug_assert_eq!(off, $bytes);
                Self { $($field),+ }
            }
        }
    )*};
}

blocks! {
    /// Q4_0: 32 weights `d * (q - 8)`, 4-bit `q`.
    BlockQ4_0(Q4_0, 18) {
        /// Scale.
        d: f16,
        /// Nibbles: low nibbles are weights 0..16, high nibbles 16..32.
        qs: [u8; 16],
    }

    /// Q4_1: 32 weights `d * q + m`, 4-bit `q`.
    BlockQ4_1(Q4_1, 20) {
        /// Scale.
        d: f16,
        /// Minimum.
        m: f16,
        /// Nibbles, as Q4_0.
        qs: [u8; 16],
    }

    /// Q5_0: 32 weights `d * (q - 16)`, 5-bit `q`.
    BlockQ5_0(Q5_0, 22) {
        /// Scale.
        d: f16,
        /// Fifth bits, bit `j` of the little-endian u32 for weight `j`.
        qh: [u8; 4],
        /// Low nibbles, as Q4_0.
        qs: [u8; 16],
    }

    /// Q5_1: 32 weights `d * q + m`, 5-bit `q`.
    BlockQ5_1(Q5_1, 24) {
        /// Scale.
        d: f16,
        /// Minimum.
        m: f16,
        /// Fifth bits, as Q5_0.
        qh: [u8; 4],
        /// Low nibbles, as Q4_0.
        qs: [u8; 16],
    }

    /// Q8_0: 32 weights `d * q`, 8-bit `q`.
    BlockQ8_0(Q8_0, 34) {
        /// Scale.
        d: f16,
        /// Quants.
        qs: [i8; 32],
    }

    /// Q8_1: 32 weights `d * q`; `s = d * sum(q)` serves the dot products.
    BlockQ8_1(Q8_1, 36) {
        /// Scale.
        d: f16,
        /// `d * sum(qs)`.
        s: f16,
        /// Quants.
        qs: [i8; 32],
    }

    /// Q2_K: 256 weights in 16 groups of 16, `d * sc * q - dmin * m`, 2-bit `q`.
    BlockQ2_K(Q2_K, 84) {
        /// Per group: scale in the low nibble, min in the high nibble.
        scales: [u8; QK_K / 16],
        /// 2-bit quants, four per byte.
        qs: [u8; QK_K / 4],
        /// Super-block scale of the scales.
        d: f16,
        /// Super-block scale of the mins.
        dmin: f16,
    }

    /// Q3_K: 256 weights in 16 groups of 16, `d * (sc - 32) * (q - 4·!h)`.
    BlockQ3_K(Q3_K, 110) {
        /// High bits: bit `k` of byte `l` is the high bit of weight `32k + l`.
        hmask: [u8; QK_K / 8],
        /// Low 2 bits of the quants, four per byte.
        qs: [u8; QK_K / 4],
        /// Sixteen 6-bit scales, packed (see `dequant::q3_k_scales`).
        scales: [u8; 12],
        /// Super-block scale.
        d: f16,
    }

    /// Q4_K: 256 weights in 8 groups of 32, `d * sc * q - dmin * m`, 4-bit `q`.
    BlockQ4_K(Q4_K, 144) {
        /// Super-block scale of the scales.
        d: f16,
        /// Super-block scale of the mins.
        dmin: f16,
        /// Eight 6-bit scales and eight 6-bit mins, packed.
        scales: [u8; 12],
        /// Nibbles: 64 weights per 32 bytes (low nibbles first).
        qs: [u8; QK_K / 2],
    }

    /// Q5_K: 256 weights in 8 groups of 32, `d * sc * q - dmin * m`, 5-bit `q`.
    BlockQ5_K(Q5_K, 176) {
        /// Super-block scale of the scales.
        d: f16,
        /// Super-block scale of the mins.
        dmin: f16,
        /// Scales and mins, packed as Q4_K.
        scales: [u8; 12],
        /// Fifth bits: bit `k` of byte `l` for weight `32k + l`.
        qh: [u8; QK_K / 8],
        /// Low nibbles, as Q4_K.
        qs: [u8; QK_K / 2],
    }

    /// Q6_K: 256 weights in 16 groups of 16, `d * sc * (q - 32)`, 6-bit `q`.
    BlockQ6_K(Q6_K, 210) {
        /// Low 4 bits of the quants.
        ql: [u8; QK_K / 2],
        /// High 2 bits of the quants.
        qh: [u8; QK_K / 4],
        /// Per-group 8-bit scales.
        scales: [i8; QK_K / 16],
        /// Super-block scale.
        d: f16,
    }

    /// Q8_K: 256 weights `d * q` (the K-quants' activation type).
    BlockQ8_K(Q8_K, 292) {
        /// Scale (f32, unlike the other blocks).
        d: f32,
        /// Quants.
        qs: [i8; QK_K],
        /// Sums of the quants in groups of 16.
        bsums: [i16; QK_K / 16],
    }

    /// IQ4_NL: 32 weights `d * KVALUES_IQ4NL[q]`, 4-bit index `q`.
    BlockIQ4_NL(IQ4_NL, 18) {
        /// Scale.
        d: f16,
        /// Nibbles, as Q4_0.
        qs: [u8; 16],
    }

    /// IQ4_XS: 256 weights in 8 groups of 32, `d * (ls - 32) * KVALUES_IQ4NL[q]`.
    BlockIQ4_XS(IQ4_XS, 136) {
        /// Super-block scale.
        d: f16,
        /// High 2 bits of the eight 6-bit group scales.
        scales_h: u16,
        /// Low 4 bits of the eight group scales, two per byte.
        scales_l: [u8; QK_K / 64],
        /// Nibbles: per group of 32, 16 bytes as Q4_0.
        qs: [u8; QK_K / 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_in_disk_order() {
        let mut b = [0u8; 176];
        b[0..2].copy_from_slice(&f16::from_f32(1.5).to_bits().to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-0.25).to_bits().to_le_bytes());
        b[4] = 7; // scales[0]
        b[16] = 9; // qh[0]
        b[48] = 0xab; // qs[0]
        b[175] = 0xcd; // qs[127]
        let q = BlockQ5_K::from_le_bytes(&b);
        assert_eq!(q.d.to_f32(), 1.5);
        assert_eq!(q.dmin.to_f32(), -0.25);
        assert_eq!(q.scales[0], 7);
        assert_eq!(q.qh[0], 9);
        assert_eq!(q.qs[0], 0xab);
        assert_eq!(q.qs[127], 0xcd);
    }

    #[test]
    fn q8_k_reads_f32_scale_and_i16_sums() {
        let mut b = [0u8; 292];
        b[0..4].copy_from_slice(&0.125f32.to_le_bytes());
        b[4] = 0xff; // qs[0] = -1
        b[260..262].copy_from_slice(&(-300i16).to_le_bytes());
        b[290..292].copy_from_slice(&1234i16.to_le_bytes());
        let q = BlockQ8_K::from_le_bytes(&b);
        assert_eq!(q.d, 0.125);
        assert_eq!(q.qs[0], -1);
        assert_eq!(q.bsums[0], -300);
        assert_eq!(q.bsums[15], 1234);
    }

    #[test]
    fn iq4_xs_scales_h_is_little_endian() {
        let mut b = [0u8; 136];
        b[2] = 0x34;
        b[3] = 0x12;
        assert_eq!(BlockIQ4_XS::from_le_bytes(&b).scales_h, 0x1234);
    }
}
