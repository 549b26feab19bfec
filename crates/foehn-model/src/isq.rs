//! In-situ quantization (ISQ): dense safetensors weights (F32/F16/BF16)
//! quantized to a ggml type while the model is built, as `llama-quantize`
//! would have done offline (same reference quantizers, so the same bytes as
//! llama.cpp for the same f32 values).
//!
//! Which tensors get which type follows llama-quantize's defaults:
//! - every linear layer of the blocks gets the requested type;
//! - the token embedding gets it too (it is only read one row per token, so
//!   the 4-bit error hardly matters and the memory saving is large);
//! - the output projection (or the embedding, when tied) gets Q6_K for the
//!   types below 6 bits, as llama.cpp keeps `output.weight` at Q6_K;
//! - a matrix whose rows are not a whole number of blocks falls back as in
//!   llama.cpp: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, Q2_K/Q3_K → Q4_0
//!   (llama.cpp picks IQ4_NL, which has no quantizer here), and
//!   F16 when not even 32 divides the row; each fallback is reported with
//!   one line on stderr;
//! - norms stay f32.

use foehn_kernels::{quantize_row, GgmlType, QMatrix};
use rayon::prelude::*;

use crate::weights::TensorSource;
use crate::{ModelError, Result};

/// How a model's weights are stored once loaded.
///
/// Defaults: no in-situ quantization (the file's own types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WeightOptions {
    /// Quantize dense safetensors weights to this type at load (`None`, the
    /// default: keep the file's F32/F16/BF16). Any type with a quantizer
    /// ([`GgmlType::can_quantize`]) that is block-quantized; the engine offers
    /// Q8_0, Q4_0, Q4_K and Q6_K.
    pub isq: Option<GgmlType>,
}

/// The role of a matrix, which decides its ISQ type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A linear layer of a block, or an untied embedding.
    Linear,
    /// The output projection (or the tied embedding that serves as it).
    Output,
}

/// Checks that `ty` can be an ISQ target.
pub(crate) fn check_isq_type(ty: GgmlType) -> Result<()> {
    if ty.is_quantized() && ty.can_quantize() && !matches!(ty, GgmlType::Q8_1 | GgmlType::Q8_K) {
        Ok(())
    } else {
        Err(ModelError::Config(format!(
            "in-situ quantization to {ty} is not supported (use Q8_0, Q4_0, Q4_K or Q6_K)"
        )))
    }
}

/// The type a matrix of `cols` columns in `role` gets when the model is
/// quantized to `ty` (see the module docs).
pub(crate) fn isq_type(ty: GgmlType, role: Role, cols: usize) -> GgmlType {
    use GgmlType::*;
    let wanted = match (role, ty) {
        (Role::Output, Q2_K | Q3_K | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q4_K | Q5_K) => Q6_K,
        _ => ty,
    };
    if cols.is_multiple_of(wanted.block_size()) {
        return wanted;
    }
    let fallback = match wanted {
        Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K => Q8_0,
        Q2_K | Q3_K => Q4_0,
        t => t,
    };
    if cols.is_multiple_of(fallback.block_size()) {
        fallback
    } else {
        F16
    }
}

/// `m` (any dequantizable type) requantized to `ty`, row by row in parallel:
/// at most one f32 row per worker is alive at a time.
pub(crate) fn requantize(name: &str, m: &QMatrix, ty: GgmlType) -> Result<QMatrix> {
    let (rows, cols) = (m.rows(), m.cols());
    let row_bytes = ty.row_bytes(cols).ok_or_else(|| {
        ModelError::Config(format!("'{name}': {cols} columns do not fit {ty} blocks"))
    })?;
    let mut out = vec![0u8; rows * row_bytes];
    if row_bytes > 0 {
        out.par_chunks_exact_mut(row_bytes)
            .enumerate()
            .try_for_each_init(
                || vec![0.0f32; cols],
                |buf, (r, dst)| -> Result<()> {
                    m.dequantize_row_into(r, buf)?;
                    quantize_row(ty, buf, dst).map_err(|e| {
                        ModelError::Config(format!("in-situ quantization of '{name}': {e}"))
                    })
                },
            )?;
    }
    Ok(QMatrix::from_owned(ty, rows, cols, out)?)
}

/// A tensor source whose matrices are quantized to an ISQ type as they are
/// read (vectors pass through).
pub(crate) struct IsqSource<'a> {
    /// The dense source.
    pub(crate) inner: &'a dyn TensorSource,
    /// The requested type.
    pub(crate) ty: GgmlType,
    /// The name of the matrix that serves as the output projection (the
    /// embedding's name when tied).
    pub(crate) output: &'a str,
}

impl TensorSource for IsqSource<'_> {
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
        self.quantize(name, &self.inner.matrix(name, rows, cols)?)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.inner.vector(name, len)
    }

    fn expert_matrix(
        &self,
        name: &str,
        expert: usize,
        experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<QMatrix> {
        let dense = self
            .inner
            .expert_matrix(name, expert, experts, rows, cols)?;
        self.quantize(&format!("{name}[{expert}]"), &dense)
    }
}

impl IsqSource<'_> {
    /// The dense matrix `name` quantized to the type its role gets.
    fn quantize(&self, name: &str, dense: &QMatrix) -> Result<QMatrix> {
        let cols = dense.cols();
        let role = if name == self.output {
            Role::Output
        } else {
            Role::Linear
        };
        let ty = isq_type(self.ty, role, cols);
        if ty != self.ty && !(role == Role::Output && ty == GgmlType::Q6_K) {
            eprintln!(
                "isq: '{name}' has {cols} columns, not a whole number of {}-element {} blocks; using {ty} (as llama-quantize)",
                self.ty.block_size(),
                self.ty
            );
        }
        requantize(name, dense, ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    #[test]
    fn types_follow_llama_quantize() {
        assert_eq!(isq_type(Q4_K, Role::Linear, 4096), Q4_K);
        assert_eq!(isq_type(Q4_K, Role::Output, 4096), Q6_K);
        assert_eq!(isq_type(Q4_0, Role::Output, 4096), Q6_K);
        assert_eq!(isq_type(Q8_0, Role::Output, 4096), Q8_0);
        assert_eq!(isq_type(Q6_K, Role::Output, 4096), Q6_K);
        // Rows that are not whole super-blocks.
        assert_eq!(isq_type(Q4_K, Role::Linear, 576 + 32), Q5_0);
        assert_eq!(isq_type(Q6_K, Role::Linear, 608), Q8_0);
        assert_eq!(isq_type(Q4_0, Role::Output, 608), Q8_0);
        // Not even 32.
        assert_eq!(isq_type(Q4_K, Role::Linear, 100), F16);
        assert_eq!(isq_type(Q8_0, Role::Linear, 100), F16);
    }

    #[test]
    fn isq_targets_are_checked() {
        for ty in [Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K] {
            assert!(check_isq_type(ty).is_ok(), "{ty}");
        }
        for ty in [F32, F16, BF16, Q8_K, Q8_1, IQ2_XS] {
            assert!(check_isq_type(ty).is_err(), "{ty}");
        }
    }

    #[test]
    fn requantize_matches_quantizing_the_f32_rows() {
        let (rows, cols) = (5, 256);
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 70.0)
            .collect();
        let m = QMatrix::from_f32(rows, cols, &data).unwrap();
        let q = requantize("w", &m, Q4_K).unwrap();
        assert_eq!((q.ty(), q.rows(), q.cols()), (Q4_K, rows, cols));
        let want = foehn_kernels::quantize_matrix(Q4_K, rows, cols, &data).unwrap();
        let mut got = vec![0.0; cols];
        let mut exp = vec![0.0; cols];
        for r in 0..rows {
            q.dequantize_row_into(r, &mut got).unwrap();
            foehn_kernels::dequantize_row(Q4_K, &want[r * 144..(r + 1) * 144], &mut exp).unwrap();
            assert_eq!(got, exp, "row {r}");
        }
    }
}
