//! FP8 E4M3 checkpoints (Mistral's and DeepSeek-style `quant_method: fp8`):
//! each weight is an 8-bit float times a scale from its `weight_scale_inv`
//! tensor — one per tensor, or one per block of rows × columns — dequantized
//! at load.

use half::bf16;

use crate::{ModelError, Result};

/// The block side DeepSeek-style checkpoints use (`weight_block_size: [128, 128]`).
const DEFAULT_BLOCK: usize = 128;

/// The value of an E4M3 ("fn") byte: 1 sign, 4 exponent (bias 7) and 3
/// mantissa bits, subnormals below exponent 1, no infinities, and NaN for
/// `S.1111.111`.
pub(crate) fn e4m3_to_f32(byte: u8) -> f32 {
    let sign = if byte & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((byte >> 3) & 0x0F);
    let man = f32::from(byte & 0x07);
    if exp == 0x0F && byte & 0x07 == 0x07 {
        return f32::NAN;
    }
    let magnitude = if exp == 0 {
        man / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    };
    sign * magnitude
}

/// How a `weight_scale_inv` tensor covers its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScaleLayout {
    /// Rows and columns of the weight per scale.
    block: (usize, usize),
    /// Scales per row of the scale tensor.
    scale_cols: usize,
}

impl ScaleLayout {
    /// The layout of `scale_shape` for a `rows × cols` weight: a scalar (or one
    /// element) covers the whole tensor; a `sr × sc` grid covers blocks of
    /// 128 × 128 when it has that many, else blocks that divide the weight
    /// evenly.
    ///
    /// # Errors
    /// [`ModelError::Config`] for a grid that fits neither.
    pub(crate) fn of(name: &str, scale_shape: &[usize], rows: usize, cols: usize) -> Result<Self> {
        match scale_shape {
            [] | [1] | [1, 1] => Ok(Self {
                block: (rows.max(1), cols.max(1)),
                scale_cols: 1,
            }),
            &[sr, sc] if sr > 0 && sc > 0 => {
                let block = if rows.div_ceil(DEFAULT_BLOCK) == sr
                    && cols.div_ceil(DEFAULT_BLOCK) == sc
                {
                    (DEFAULT_BLOCK, DEFAULT_BLOCK)
                } else if rows.is_multiple_of(sr) && cols.is_multiple_of(sc) {
                    (rows / sr, cols / sc)
                } else {
                    return Err(ModelError::Config(format!(
                        "'{name}': a {sr} × {sc} grid of FP8 scales does not tile a {rows} × {cols} weight"
                    )));
                };
                Ok(Self {
                    block,
                    scale_cols: sc,
                })
            }
            other => Err(ModelError::Config(format!(
                "'{name}': FP8 scales of shape {other:?} (expected a scalar or a 2-D grid)"
            ))),
        }
    }

    /// The index of the scale of element `(r, c)`.
    fn index(&self, r: usize, c: usize) -> usize {
        (r / self.block.0) * self.scale_cols + c / self.block.1
    }
}

/// `rows × cols` E4M3 bytes times their scales, as bf16 bytes (little
/// endian, row after row): bf16 keeps an E4M3 value exactly and rounds the
/// product by at most 2⁻⁹ relative, far inside FP8's own 2⁻⁴.
///
/// # Errors
/// [`ModelError::Config`] when a weight or a scale is not finite.
pub(crate) fn dequantize_bf16(
    name: &str,
    weights: &[u8],
    scales: &[f32],
    layout: ScaleLayout,
    rows: usize,
    cols: usize,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(rows * cols * 2);
    for (r, row) in weights.chunks_exact(cols.max(1)).take(rows).enumerate() {
        for (c, &w) in row.iter().enumerate() {
            let scale = scales.get(layout.index(r, c)).copied().unwrap_or(f32::NAN);
            let v = e4m3_to_f32(w) * scale;
            if !v.is_finite() {
                return Err(ModelError::Config(format!(
                    "'{name}': FP8 weight ({r}, {c}) × scale {scale} is not a finite number"
                )));
            }
            out.extend_from_slice(&bf16::from_f32(v).to_le_bytes());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_values() {
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0); // exponent 7, mantissa 0
        assert_eq!(e4m3_to_f32(0xB8), -1.0);
        assert_eq!(e4m3_to_f32(0x7E), 448.0); // the largest finite value
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9)); // the smallest subnormal
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6)); // the smallest normal
        assert!(e4m3_to_f32(0x7F).is_nan() && e4m3_to_f32(0xFF).is_nan());
        // Monotonic over the positive codes.
        let pos: Vec<f32> = (0..0x7F).map(e4m3_to_f32).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn scale_layouts() {
        let l = ScaleLayout::of("w", &[], 300, 200).unwrap();
        assert_eq!((l.index(0, 0), l.index(299, 199)), (0, 0));
        let l = ScaleLayout::of("w", &[3, 2], 300, 200).unwrap();
        assert_eq!(l.block, (128, 128));
        assert_eq!(
            (l.index(127, 127), l.index(128, 128), l.index(299, 199)),
            (0, 3, 5)
        );
        let l = ScaleLayout::of("w", &[4, 2], 64, 64).unwrap();
        assert_eq!(l.block, (16, 32));
        assert!(ScaleLayout::of("w", &[7, 3], 64, 64).is_err());
        assert!(ScaleLayout::of("w", &[2, 2, 2], 64, 64).is_err());
        let bytes = dequantize_bf16(
            "w",
            &[0x38, 0x7E],
            &[0.5],
            ScaleLayout::of("w", &[1], 1, 2).unwrap(),
            1,
            2,
        )
        .unwrap();
        assert_eq!(
            bytes,
            [
                bf16::from_f32(0.5).to_le_bytes(),
                bf16::from_f32(224.0).to_le_bytes()
            ]
            .concat()
        );
        assert!(dequantize_bf16(
            "w",
            &[0x7F],
            &[1.0],
            ScaleLayout::of("w", &[], 1, 1).unwrap(),
            1,
            1
        )
        .is_err());
    }
}
