//! foehn: on-device Mistral-family LLM inference, with the same request handed
//! to hosted providers when local is not enough.
//!
//! This facade re-exports the crates a user needs; each lives in `crates/`.

pub use foehn_chat as chat;
pub use foehn_core as core;
pub use foehn_engine as engine;
pub use foehn_hub as hub;
pub use foehn_kernels as kernels;
pub use foehn_loader as loader;
pub use foehn_model as model;
pub use foehn_sampler as sampler;
pub use foehn_tokenizer as tokenizer;

pub use foehn_core::{
    CancelToken, Capabilities, Completion, Event, EventStream, FinishReason, GenerateError, GenerateRequest,
    Generator, Message, ModelConfig, Prompt, Role, TokenEvent, Usage,
};
pub use foehn_engine::{LoadOptions, LocalModel, Session};
pub use foehn_tokenizer::{EncodeOptions, Tokenizer};

