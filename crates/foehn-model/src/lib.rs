//! The Mistral/Llama decoder on the CPU: weights as [`QMatrix`]es borrowed
//! from the model file, a per-session [`KvCache`] (f16 or f32, a ring with a
//! sliding window), preallocated [`Scratch`] buffers, and
//! [`Transformer::forward`] / [`Transformer::prefill`].
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

#![warn(missing_docs)]

mod attention;
mod cache;
pub mod candle;
mod error;
mod isq;
pub mod ops;
mod rope;
mod scratch;
mod transformer;
mod weights;

pub use cache::{KvCache, KvCacheOptions, KvCacheType, DEFAULT_CHUNK, DEFAULT_CTX_LEN};
pub use error::{ModelError, Result};
pub use foehn_kernels::{ActPrecision, QMatrix};
pub use isq::WeightOptions;
pub use rope::{Rope, RopeStyle};
pub use scratch::Scratch;
pub use transformer::{LogitsMode, Transformer};

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
