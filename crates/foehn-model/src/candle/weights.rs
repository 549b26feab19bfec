//! Weights on a candle device: every linear layer of the CPU loader's
//! [`QMatrix`] (already found by name, shape-checked and type-checked)
//! becomes a [`QMatMul`] — a ggml-quantized `QTensor` built from the same
//! bytes, or a dense f32 tensor for F32/F16/BF16 weights.

use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
use candle_core::{Device, Tensor};
use foehn_kernels::{GgmlType, QMatrix};

use crate::{ModelError, Result};

/// The candle type of a ggml quantized type, `None` where candle has no kernels.
fn candle_quant_type(ty: GgmlType) -> Option<GgmlDType> {
    Some(match ty {
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q2_K => GgmlDType::Q2K,
        GgmlType::Q3_K => GgmlDType::Q3K,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        _ => return None,
    })
}

/// Whether the type is dense (converted to an f32 tensor rather than kept quantized).
fn is_dense(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// The whole matrix dequantized to f32, row-major.
fn dequantize_all(m: &QMatrix) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; m.rows() * m.cols()];
    for (i, row) in out.chunks_exact_mut(m.cols()).enumerate() {
        m.dequantize_row_into(i, row)?;
    }
    Ok(out)
}

/// A dense `rows × cols` f32 tensor of `m` on `device`.
pub(crate) fn dense_tensor(m: &QMatrix, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        dequantize_all(m)?,
        (m.rows(), m.cols()),
        device,
    )?)
}

/// The linear layer `name` (`rows × cols` of `out = W · x`) on `device`.
///
/// # Errors
/// [`ModelError::UnsupportedTensorType`] (naming the tensor) for a quantized
/// type candle has no kernels for.
pub(crate) fn linear(name: &str, m: &QMatrix, device: &Device) -> Result<QMatMul> {
    if is_dense(m.ty()) {
        return Ok(QMatMul::Tensor(dense_tensor(m, device)?));
    }
    let Some(dtype) = candle_quant_type(m.ty()) else {
        return Err(ModelError::UnsupportedTensorType {
            tensor: name.to_string(),
            ty: format!("{} (no candle kernels)", m.ty().name()),
        });
    };
    let Some(bytes) = m.bytes() else {
        return Err(ModelError::Config(format!(
            "tensor '{name}' is packed for the CPU kernels; candle needs the file's layout"
        )));
    };
    let expected = m.rows() * m.row_bytes();
    if bytes.len() != expected {
        return Err(ModelError::Config(format!(
            "tensor '{name}' holds {} bytes, expected {expected}",
            bytes.len()
        )));
    }
    // candle reads the bytes as an array of blocks: give it an 8-byte-aligned
    // copy when the file's bytes are not aligned (it copies them anyway).
    let aligned;
    let bytes = if bytes.as_ptr().align_offset(8) == 0 {
        bytes
    } else {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (w, c) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            *w = u64::from_ne_bytes(b);
        }
        aligned = words;
        // SAFETY: a `Vec<u64>` of `len.div_ceil(8)` words holds at least `len`
        // initialized bytes, and u8 has no alignment requirement.
        unsafe { std::slice::from_raw_parts(aligned.as_ptr().cast::<u8>(), bytes.len()) }
    };
    let q = qtensor_from_ggml(dtype, bytes, vec![m.rows(), m.cols()], device)?;
    Ok(QMatMul::from_arc(Arc::new(q))?)
}

/// A norm vector as a 1-D f32 tensor on `device`.
pub(crate) fn vector(v: &[f32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, v.len(), device)?)
}
