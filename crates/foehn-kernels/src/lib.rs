//! Quantized weights: the ggml quant-type table (block size, bytes per block,
//! dequantizers) — the single source of truth for every crate — and the kernels.

pub mod quant;

pub use quant::{dequantize_row, GgmlType, KernelError};
