//! `GgmlType`: every tensor type id of the GGUF spec, with its block geometry.

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

/// One row of the quant-type table (as ggml's `type_traits`).
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
}

impl TypeTraits {
    const fn new(
        name: &'static str,
        block_size: usize,
        type_size: usize,
        dequantize: Option<DequantizeFn>,
    ) -> Self {
        Self {
            name,
            block_size,
            type_size,
            dequantize,
        }
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

    /// This type's row of the quant-type table.
    pub(crate) const fn traits(self) -> TypeTraits {
        use super::dequant as dq;
        use GgmlType::*;
        match self {
            F32 => TypeTraits::new("F32", 1, 4, Some(dq::f32)),
            F16 => TypeTraits::new("F16", 1, 2, Some(dq::f16)),
            Q4_0 => TypeTraits::new("Q4_0", 32, 18, Some(dq::q4_0)),
            Q4_1 => TypeTraits::new("Q4_1", 32, 20, Some(dq::q4_1)),
            Q5_0 => TypeTraits::new("Q5_0", 32, 22, Some(dq::q5_0)),
            Q5_1 => TypeTraits::new("Q5_1", 32, 24, Some(dq::q5_1)),
            Q8_0 => TypeTraits::new("Q8_0", 32, 34, Some(dq::q8_0)),
            Q8_1 => TypeTraits::new("Q8_1", 32, 36, Some(dq::q8_1)),
            Q2_K => TypeTraits::new("Q2_K", QK_K, 84, Some(dq::q2_k)),
            Q3_K => TypeTraits::new("Q3_K", QK_K, 110, Some(dq::q3_k)),
            Q4_K => TypeTraits::new("Q4_K", QK_K, 144, Some(dq::q4_k)),
            Q5_K => TypeTraits::new("Q5_K", QK_K, 176, Some(dq::q5_k)),
            Q6_K => TypeTraits::new("Q6_K", QK_K, 210, Some(dq::q6_k)),
            Q8_K => TypeTraits::new("Q8_K", QK_K, 292, Some(dq::q8_k)),
            IQ2_XXS => TypeTraits::new("IQ2_XXS", QK_K, 66, None),
            IQ2_XS => TypeTraits::new("IQ2_XS", QK_K, 74, None),
            IQ3_XXS => TypeTraits::new("IQ3_XXS", QK_K, 98, None),
            IQ1_S => TypeTraits::new("IQ1_S", QK_K, 50, None),
            IQ4_NL => TypeTraits::new("IQ4_NL", 32, 18, Some(dq::iq4_nl)),
            IQ3_S => TypeTraits::new("IQ3_S", QK_K, 110, None),
            IQ2_S => TypeTraits::new("IQ2_S", QK_K, 82, None),
            IQ4_XS => TypeTraits::new("IQ4_XS", QK_K, 136, Some(dq::iq4_xs)),
            I8 => TypeTraits::new("I8", 1, 1, None),
            I16 => TypeTraits::new("I16", 1, 2, None),
            I32 => TypeTraits::new("I32", 1, 4, None),
            I64 => TypeTraits::new("I64", 1, 8, None),
            F64 => TypeTraits::new("F64", 1, 8, None),
            IQ1_M => TypeTraits::new("IQ1_M", QK_K, 56, None),
            BF16 => TypeTraits::new("BF16", 1, 2, Some(dq::bf16)),
            TQ1_0 => TypeTraits::new("TQ1_0", QK_K, 54, None),
            TQ2_0 => TypeTraits::new("TQ2_0", QK_K, 66, None),
            MXFP4 => TypeTraits::new("MXFP4", 32, 17, None),
        }
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
