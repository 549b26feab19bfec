//! Quantized weights: the ggml quant-type table (block size, bytes per block,
//! dequantizers) — the single source of truth for every crate — and the kernels.

pub mod qmatrix;
pub mod quant;

pub use qmatrix::{dot, ByteSource, MatScratch, QMatrix};
pub use quant::{dequantize_row, GgmlType, KernelError};
