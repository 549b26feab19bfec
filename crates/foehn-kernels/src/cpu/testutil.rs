//! Test helpers: random weight bytes of any type with finite scales.

use crate::GgmlType;
use half::{bf16, f16};
use rand::Rng;

/// Byte offsets of the f16 scale fields in one block of `ty`, which random
/// bytes could turn into inf/NaN.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ4_XS => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        _ => &[],
    }
}

/// Random `rows × cols` bytes of `ty` with finite, moderate values.
pub(crate) fn random_bytes(rng: &mut impl Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let n = rows * cols;
    match ty {
        GgmlType::F32 => (0..n)
            .flat_map(|_| rng.gen_range(-1.0f32..1.0).to_le_bytes())
            .collect(),
        GgmlType::F16 => (0..n)
            .flat_map(|_| f16::from_f32(rng.gen_range(-1.0f32..1.0)).to_le_bytes())
            .collect(),
        GgmlType::BF16 => (0..n)
            .flat_map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0)).to_le_bytes())
            .collect(),
        _ => {
            let len = ty.row_bytes(cols).unwrap() * rows;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            for block in bytes.chunks_exact_mut(ty.type_size()) {
                for &off in f16_fields(ty) {
                    let v = f16::from_f32(rng.gen_range(0.001f32..0.05));
                    block[off..off + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
            bytes
        }
    }
}
