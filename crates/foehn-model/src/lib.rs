//! The Mistral/Llama decoder: [`Model<B>`] — weights borrowed from the model
//! file, its forward pass written once against a small [`Backend`] trait —
//! a per-session [`KvCache`] (f16 or f32, a ring with a sliding window), and
//! two backends: [`Cpu`] (foehn's SIMD kernels, preallocated [`Scratch`]
//! buffers) and, with the `candle` feature, [`candle::Candle`] (CUDA,
//! Metal or candle's CPU kernels).
//!
//! ```no_run
//! use std::sync::Arc;
//! use foehn_loader::GgufFile;
//! use foehn_model::{KvCacheOptions, LogitsMode, Transformer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = Arc::new(Transformer::from_gguf(Arc::new(GgufFile::open("model.gguf")?))?);
//! let mut cache = model.new_cache(KvCacheOptions::default())?;
//! let mut scratch = model.new_scratch(&cache);
//! let logits = model.prefill(&[1, 415, 2936], &mut cache, &mut scratch)?;
//! let next = foehn_model::argmax(logits);
//! let logits = model.forward(&[next], &mut cache, &mut scratch, LogitsMode::Last)?;
//! # let _ = logits; Ok(()) }
//! ```

mod backend;
mod cache;
#[cfg(feature = "candle")]
pub mod candle;
pub mod cpu;
mod decoder;
mod device;
mod error;
mod fp8;
mod isq;
pub mod moe;
mod naming;
mod rope;
mod session;
mod weights;

pub use backend::{Act, Backend, Head};
pub use cache::{
    KvCache, KvCacheOptions, KvCacheType, KvGeometry, KvStorage, KvTypes, DEFAULT_CHUNK,
    DEFAULT_CTX_LEN,
};
pub use cpu::{ops, Cpu, Scratch, Transformer};
pub use decoder::{LogitsMode, Model};
pub use device::CandleDevice;
pub use error::{ModelError, Result};
pub use foehn_kernels::{ActPrecision, Compute, Isa, QMatrix};
pub use isq::WeightOptions;
pub use rope::{Rope, RopeStyle};
pub use session::{Decoder, DecoderBatch, DecoderSession, SessionOptions};

/// Index of the largest value (the first one on ties; 0 for an empty slice).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}
