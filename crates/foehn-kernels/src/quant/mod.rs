//! The ggml quant-type table: one row per type (name, block and byte sizes,
//! dequantizer, quantizer, packed kernel shape, deferred-packing policy), as
//! ggml's `type_traits`. Adding a type = adding a row in `types.rs` (plus
//! SIMD kernels if its kernel shape is new).

pub mod blocks;
pub(crate) mod dequant;
mod quantize;
mod types;

pub use dequant::{dequantize_row, KVALUES_IQ4NL};
pub use quantize::{quantize_matrix, quantize_row};
pub(crate) use types::{Defer, Packing};
pub use types::{GgmlType, QK_K};

/// Errors of the kernels crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// The type has no implementation for the requested operation.
    #[error("{op} is not implemented for {ty}")]
    Unsupported {
        /// The operation (`dequantize`, `matmul`, …).
        op: &'static str,
        /// The type's name.
        ty: &'static str,
    },
    /// Buffer lengths that do not match the type's block layout.
    #[error("{ty}: {reason}")]
    BadLength {
        /// The type's name.
        ty: &'static str,
        /// What does not fit.
        reason: String,
    },
    /// Input values a quantizer cannot represent (NaN, infinite, too large).
    #[error("{ty}: {reason}")]
    NonFinite {
        /// The type's name.
        ty: &'static str,
        /// Which value, and what the type accepts.
        reason: String,
    },
}
