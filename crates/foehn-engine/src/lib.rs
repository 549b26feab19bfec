//! The local engine: a model file loaded once ([`LocalModel`], shared by
//! `Arc`), sessions that own a KV cache ([`Session`]), and the
//! [`foehn_core::Generator`] implementation that streams events.

#![forbid(unsafe_code)]

mod batch;
mod constraint;
mod error;
mod isq;
mod local;
mod prefix;
mod reasoning;
mod session;
mod spec;

pub use batch::{BatchStats, Batcher};
pub use error::{EngineError, Result};
pub use foehn_model::CandleDevice;
pub use isq::Isq;
pub use local::{Backend, LoadOptions, LocalModel, DEFAULT_PREFIX_CACHE_BYTES};
pub use prefix::PrefixCacheStats;
pub use session::{top_k, Generation, Session};
pub use spec::Speculation;
