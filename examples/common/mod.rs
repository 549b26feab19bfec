//! Flags shared by the examples that load a local model (`generate`, `chat`,
//! `bench`, `serve`): the KV cache type, the backend and its device, in-situ
//! quantization. Included with `mod common;` (a folder without `main.rs` is
//! not an example of its own).

use clap::{Args, ValueEnum};
use foehn::engine::{Backend, CandleDevice, Isq};
use foehn::model::KvCacheType;
use foehn::LoadOptions;

/// How a local model is loaded and run, beyond threads and context length.
#[derive(Args, Debug, Clone)]
pub struct ModelFlags {
    /// KV cache element type: f16 or f32.
    #[arg(long, default_value = "f16")]
    pub kv: KvCacheType,
    /// Compute backend: `cpu` (foehn's kernels) or `candle` (candle tensors on --device).
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
    /// Device of the candle backend: `cpu`, `cuda:N` (build with --features cuda) or `metal` (--features metal).
    #[arg(long, default_value = "cpu")]
    pub device: CandleDevice,
    /// Quantize a safetensors model's weights at load: q8_0, q4_0, q4k or q6k (not for GGUF files).
    #[arg(long)]
    pub isq: Option<Isq>,
}

/// The `--backend` choice.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum BackendArg {
    Cpu,
    Candle,
}

impl ModelFlags {
    /// The backend the flags select.
    pub fn backend(&self) -> Backend {
        match self.backend {
            BackendArg::Cpu => Backend::Cpu,
            BackendArg::Candle => Backend::Candle(self.device),
        }
    }

    /// `opts` with the flags' KV cache type, backend and quantization.
    pub fn apply(&self, opts: LoadOptions) -> LoadOptions {
        LoadOptions {
            kv_type: self.kv,
            backend: self.backend(),
            isq: self.isq,
            ..opts
        }
    }
}
