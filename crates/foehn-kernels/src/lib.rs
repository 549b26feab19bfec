//! Quantized weights: the ggml quant-type table (block size, bytes per block,
//! dequantizers, quantizers, packed kernel shapes) — the single source of
//! truth for every crate — and the kernels, run in an explicit [`Compute`]
//! context (instruction set + thread pool).

pub mod compute;
pub mod cpu;
pub mod membw;
pub mod pool;
pub mod qmatrix;
pub mod quant;
pub mod vecops;

pub use compute::Compute;
pub use cpu::{Isa, SupportedIsa, ISA_ENV};
pub use membw::StreamRead;
pub use qmatrix::{ActPrecision, ByteSource, MatScratch, QMatrix};
pub use quant::{dequantize_row, GgmlType, KernelError};
pub use quant::{quantize_matrix, quantize_row};
pub use vecops::VecOps;
