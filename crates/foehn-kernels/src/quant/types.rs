//! `GgmlType`: every tensor type id of the GGUF spec, and the quant-type
//! table: one [`TypeTraits`] row per type.

use super::quantize::QuantizeFn;
use crate::cpu::pack::SplitRowFn;
use crate::cpu::shape::KernelShape;
use crate::cpu::Isa;

/// A ggml tensor type. The discriminants are the ids stored in GGUF files.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    /// 32-bit float.
    F32 = 0,
    /// IEEE 16-bit float.
    F16 = 1,
    /// 4-bit levels, one f16 scale per 32.
    Q4_0 = 2,
    /// 4-bit levels, an f16 scale and minimum per 32.
    Q4_1 = 3,
    /// 5-bit levels, one f16 scale per 32.
    Q5_0 = 6,
    /// 5-bit levels, an f16 scale and minimum per 32.
    Q5_1 = 7,
    /// 8-bit levels, one f16 scale per 32.
    Q8_0 = 8,
    /// 8-bit levels, an f16 scale and sum per 32 (activations).
    Q8_1 = 9,
    /// 2-bit k-quant: 256-value superblocks of 16 sub-blocks with 4-bit scales and minimums.
    Q2_K = 10,
    /// 3-bit k-quant: 256-value superblocks of 16 sub-blocks with 6-bit scales.
    Q3_K = 11,
    /// 4-bit k-quant: 256-value superblocks of 8 sub-blocks with 6-bit scales and minimums.
    Q4_K = 12,
    /// 5-bit k-quant: 256-value superblocks of 8 sub-blocks with 6-bit scales and minimums.
    Q5_K = 13,
    /// 6-bit k-quant: 256-value superblocks of 16 sub-blocks with 8-bit scales.
    Q6_K = 14,
    /// 8-bit k-quant with an f32 scale and block sums (activations of the k-quants).
    Q8_K = 15,
    /// 2.06-bit importance quant (E8 lattice codebook).
    IQ2_XXS = 16,
    /// 2.31-bit importance quant.
    IQ2_XS = 17,
    /// 3.06-bit importance quant.
    IQ3_XXS = 18,
    /// 1.56-bit importance quant.
    IQ1_S = 19,
    /// 4-bit non-linear levels (a fixed codebook), one f16 scale per 32.
    IQ4_NL = 20,
    /// 3.44-bit importance quant.
    IQ3_S = 21,
    /// 2.5-bit importance quant.
    IQ2_S = 22,
    /// 4-bit non-linear levels in 256-value superblocks with 6-bit scales.
    IQ4_XS = 23,
    /// 8-bit integer.
    I8 = 24,
    /// 16-bit integer.
    I16 = 25,
    /// 32-bit integer.
    I32 = 26,
    /// 64-bit integer.
    I64 = 27,
    /// 64-bit float.
    F64 = 28,
    /// 1.75-bit importance quant.
    IQ1_M = 29,
    /// bfloat16.
    BF16 = 30,
    /// Ternary (1.69 bits per weight).
    TQ1_0 = 34,
    /// Ternary in 2-bit levels.
    TQ2_0 = 35,
    /// OCP microscaling FP4 (E2M1 values, an E8M0 scale per 32).
    MXFP4 = 39,
}

/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

/// A scalar dequantizer: `src` holds exactly the blocks of `dst`'s elements
/// (the caller checks the lengths).
pub(crate) type DequantizeFn = fn(&[u8], &mut [f32]);

/// One row of the quant-type table (as ggml's `type_traits` and
/// `type_traits_cpu`): every fact about a type that the crates need, so that
/// adding a type is adding a row (plus SIMD kernels for a new
/// [`KernelShape`]).
#[derive(Clone, Copy)]
pub(crate) struct TypeTraits {
    /// ggml's name for the type.
    pub(crate) name: &'static str,
    /// Elements per block.
    pub(crate) block_size: usize,
    /// Bytes per block.
    pub(crate) type_size: usize,
    /// The scalar reference dequantizer, if there is one.
    pub(crate) dequantize: Option<DequantizeFn>,
    /// The scalar reference quantizer (ggml's `quantize_row_*_ref`), if
    /// there is one.
    pub(crate) quantize: Option<QuantizeFn>,
    /// How the SIMD kernels compute it; `None`: products dequantize row by
    /// row in f32.
    pub(crate) packing: Option<Packing>,
}

/// How a type is packed for the tile kernels (see [`crate::cpu::format`]).
#[derive(Clone, Copy)]
pub(crate) struct Packing {
    /// The kernel shape of the common packed format.
    pub(crate) shape: KernelShape,
    /// The level offset `off` (`w = S · (u − off) + M`).
    pub(crate) off: i32,
    /// The largest packed level `u` (the kernels' tests drive every type
    /// to it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) max_level: u8,
    /// Splits a file row into levels and scales for packing.
    pub(crate) split_row: SplitRowFn,
    /// A split variant's shape, and the instruction sets that pack it
    /// instead of the common format.
    pub(crate) split: Option<(KernelShape, &'static [Isa])>,
    /// Whether packing may wait where a direct kernel exists.
    pub(crate) defer: Defer,
}

/// Deferred packing policy of a type: on an instruction set with a direct
/// kernel for it (`cpu::direct::select`), a matrix borrowed from a file is
/// computed in place until packing pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Defer {
    /// Packed at load.
    Never,
    /// Packed by the first product with many activation rows (a long
    /// prefill), or on a background thread the first product starts
    /// (`QMatrix::pack_after_first_use`), whichever comes first: the tiles
    /// decode faster than the direct kernels, which read many short row
    /// streams side by side (AMD Zen 5: 0.5–1.1× the tiles' bytes per
    /// second, `cargo bench --bench kernels -- matvec_direct`).
    Background,
}

impl TypeTraits {
    /// A row without a packed format.
    const fn new(
        name: &'static str,
        block_size: usize,
        type_size: usize,
        dequantize: Option<DequantizeFn>,
        quantize: Option<QuantizeFn>,
    ) -> Self {
        Self {
            name,
            block_size,
            type_size,
            dequantize,
            quantize,
            packing: None,
        }
    }

    /// This row, packed as `shape` with level offset `off` and levels up to
    /// `max_level`, split from file rows by `split_row`.
    const fn packed(
        mut self,
        shape: KernelShape,
        off: i32,
        max_level: u8,
        split_row: SplitRowFn,
    ) -> Self {
        self.packing = Some(Packing {
            shape,
            off,
            max_level,
            split_row,
            split: None,
            defer: Defer::Never,
        });
        self
    }

    /// This row with a split variant of shape `shape`, packed on `isas`.
    const fn split_on(mut self, shape: KernelShape, isas: &'static [Isa]) -> Self {
        if let Some(p) = &mut self.packing {
            p.split = Some((shape, isas));
        }
        self
    }

    /// This row with the deferred packing policy `defer`.
    const fn defer(mut self, defer: Defer) -> Self {
        if let Some(p) = &mut self.packing {
            p.defer = defer;
        }
        self
    }
}

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 32] = {
        use GgmlType::*;
        [
            F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
            IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, I8, I16, I32, I64, F64,
            IQ1_M, BF16, TQ1_0, TQ2_0, MXFP4,
        ]
    };

    /// The type stored under a GGUF id; `None` for ids the spec does not define
    /// (including the removed in-file repacked types 4, 5, 31–33, 36–38).
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The GGUF id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// This row of the quant-type table.
    pub(crate) const fn traits(self) -> TypeTraits {
        use super::dequant as dq;
        use super::quantize::rows as qz;
        use crate::cpu::pack::split as sp;
        use Defer::*;
        use GgmlType::*;
        use KernelShape::*;
        const SPLIT_ISAS: &[Isa] = &[Isa::Avx2, Isa::Avx512Vnni, Isa::Avx512Amx, Isa::NeonDotprod];
        // Where AMX's int8 and bf16 prompt kernels take the byte layout.
        const NOT_AMX: &[Isa] = &[Isa::Avx2, Isa::Avx512Vnni, Isa::NeonDotprod];
        let row = TypeTraits::new;
        match self {
            F32 => row("F32", 1, 4, Some(dq::f32), Some(qz::f32)),
            F16 => row("F16", 1, 2, Some(dq::f16), Some(qz::f16)),
            Q4_0 => {
                row("Q4_0", 32, 18, Some(dq::q4_0), Some(qz::q4_0)).packed(Nib32, 8, 15, sp::q4_0)
            }
            Q4_1 => row("Q4_1", 32, 20, Some(dq::q4_1), Some(qz::q4_1)).packed(
                Nib32Min,
                0,
                15,
                sp::q4_1,
            ),
            // The 5-bit types split (nibbles and a plane of high bits) where
            // there is no AMX: the file's size, where the byte layout reads
            // 1.45× (Q5_0) and 1.33× (Q5_1) as much.
            Q5_0 => row("Q5_0", 32, 22, Some(dq::q5_0), Some(qz::q5_0))
                .packed(Byte32, 16, 31, sp::q5_0)
                .split_on(Split32, NOT_AMX),
            Q5_1 => row("Q5_1", 32, 24, Some(dq::q5_1), Some(qz::q5_1))
                .packed(Byte32Min, 0, 31, sp::q5_1)
                .split_on(Split32Min, NOT_AMX),
            Q8_0 => row("Q8_0", 32, 34, Some(dq::q8_0), Some(qz::q8_0))
                .packed(Wide32, 128, 255, sp::q8_0)
                .defer(Background),
            Q8_1 => row("Q8_1", 32, 36, Some(dq::q8_1), Some(qz::q8_1)),
            // Levels four per byte where there is no AMX: 1.19× the file,
            // where nibbles read 1.95× as much.
            Q2_K => row("Q2_K", QK_K, 84, Some(dq::q2_k), Some(qz::q2_k))
                .packed(SuperNib16Min, 0, 3, sp::q2_k)
                .split_on(SuperCrumb16Min, NOT_AMX),
            // 3-bit levels (triads) and 6-bit scales where there is no
            // AMX: the file's size, where nibbles read 1.33× as much.
            Q3_K => row("Q3_K", QK_K, 110, Some(dq::q3_k), Some(qz::q3_k))
                .packed(SuperNib16, 4, 7, sp::q3_k)
                .split_on(SuperTri16, NOT_AMX),
            Q4_K => row("Q4_K", QK_K, 144, Some(dq::q4_k), Some(qz::q4_k))
                .packed(SuperNib32Min, 0, 15, sp::q4_k)
                .defer(Background),
            // Split on AVX2, AVX-512 and NEON (not under AMX, whose int8
            // kernel takes the byte layout): the file's size, where the
            // byte layout reads 1.55× as much.
            Q5_K => row("Q5_K", QK_K, 176, Some(dq::q5_k), Some(qz::q5_k))
                .packed(SuperByte32Min, 0, 31, sp::q5_k)
                .split_on(SuperSplit32Min, NOT_AMX),
            // The split layout on AVX2, AVX-512 and NEON: the file's size, so
            // decode reads no more than the file (the byte layout reads
            // 1.31× as much).
            Q6_K => row("Q6_K", QK_K, 210, Some(dq::q6_k), Some(qz::q6_k))
                .packed(SuperByte16, 32, 63, sp::q6_k)
                .split_on(SuperSplit16, SPLIT_ISAS)
                .defer(Background),
            Q8_K => row("Q8_K", QK_K, 292, Some(dq::q8_k), Some(qz::q8_k)),
            IQ2_XXS => row("IQ2_XXS", QK_K, 66, None, None),
            IQ2_XS => row("IQ2_XS", QK_K, 74, None, None),
            IQ3_XXS => row("IQ3_XXS", QK_K, 98, None, None),
            IQ1_S => row("IQ1_S", QK_K, 50, None, None),
            // Nibble indices into the IQ4 levels where there is no AMX (a
            // table lookup per operand): the file's size, where the byte
            // layout reads 1.89× as much.
            IQ4_NL => row("IQ4_NL", 32, 18, Some(dq::iq4_nl), None)
                .packed(Wide32, 128, 255, sp::iq4_nl)
                .split_on(Lut32, NOT_AMX),
            IQ3_S => row("IQ3_S", QK_K, 110, None, None),
            IQ2_S => row("IQ2_S", QK_K, 82, None, None),
            // Nibble indices into the IQ4 levels where there is no AMX (a
            // table lookup per operand): the file's size, where the byte
            // layout reads 1.96× as much.
            IQ4_XS => row("IQ4_XS", QK_K, 136, Some(dq::iq4_xs), None)
                .packed(SuperWide32, 128, 255, sp::iq4_xs)
                .split_on(SuperLut32, NOT_AMX),
            I8 => row("I8", 1, 1, None, None),
            I16 => row("I16", 1, 2, None, None),
            I32 => row("I32", 1, 4, None, None),
            I64 => row("I64", 1, 8, None, None),
            F64 => row("F64", 1, 8, None, None),
            IQ1_M => row("IQ1_M", QK_K, 56, None, None),
            BF16 => row("BF16", 1, 2, Some(dq::bf16), Some(qz::bf16)),
            TQ1_0 => row("TQ1_0", QK_K, 54, None, None),
            TQ2_0 => row("TQ2_0", QK_K, 66, None, None),
            MXFP4 => row("MXFP4", 32, 17, None, None),
        }
    }

    /// How the SIMD kernels compute this type, if they do.
    pub(crate) const fn packing(self) -> Option<Packing> {
        self.traits().packing
    }

    /// ggml's name for the type (`Q4_K`, `BF16`, …).
    pub const fn name(self) -> &'static str {
        self.traits().name
    }

    /// Elements per block (1 for plain scalar types).
    pub const fn block_size(self) -> usize {
        self.traits().block_size
    }

    /// Bytes per block: ggml's `sizeof(block_*)`, which is gguf-py's
    /// `GGML_QUANT_SIZES` except for Q8_1 (36 = f16 `d`, f16 `s`, 32 quants;
    /// gguf-py 0.19 still lists 40, the old layout with f32 `d` and `s`).
    pub const fn type_size(self) -> usize {
        self.traits().type_size
    }

    /// Whether [`dequantize_row`](crate::dequantize_row) supports this type.
    pub const fn can_dequantize(self) -> bool {
        self.traits().dequantize.is_some()
    }

    /// Bytes of a row of `n` elements; `None` when `n` is not a whole number of
    /// blocks or the size overflows.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }

    /// Whether this type is a block-quantized type (as opposed to a plain scalar).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
