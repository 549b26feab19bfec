//! foehn: on-device Mistral-family LLM inference, with the same request handed
//! to hosted providers when local is not enough.
//!
//! Load a model (a path, a catalog id such as `smollm2-135m-instruct-q4_1`, or
//! `hf://owner/repo/file.gguf`), open a session, and stream events:
//!
//! ```
//! use foehn::{CancelToken, Event, GenerateRequest, LoadOptions, LocalModel, Message};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-mistral/gguf/tiny-mistral-Q8_0.gguf");
//! let model = LocalModel::load(Some(path), LoadOptions::default())?;
//! let mut request = GenerateRequest::chat(vec![Message::user("Why is the sky blue?")]);
//! request.max_tokens = Some(32);
//! request.seed = Some(42);
//!
//! let cancel = CancelToken::new();
//! let session = model.session()?;
//! let mut generation = session.into_generation(request, cancel.clone())?;
//! for event in &mut generation {
//!     match event? {
//!         Event::Token(t) => {
//!             print!("{}", t.text);
//!             if t.text.contains('\n') {
//!                 cancel.cancel(); // stops before the next token
//!             }
//!         }
//!         Event::Done(done) => {
//!             println!("\n[{:?}, {} tokens]", done.finish_reason, done.usage.completion_tokens)
//!         }
//!     }
//! }
//! // The session keeps its KV cache: a follow-up only prefills new tokens.
//! let _session = generation.into_session();
//! # Ok(()) }
//! ```
//!
//! The same request goes to any [`Generator`]: the local engine (above, or
//! `LocalModel` as a `Generator`), a remote OpenAI-compatible provider, or a
//! router between them ([`remote`]), which names the route that served:
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use foehn::remote::{OpenAiClient, Policy, Route, Router, RouterConfig};
//! use foehn::{GenerateRequest, Generator, LoadOptions, LocalModel, Message};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let local = LocalModel::load(None, LoadOptions::default())?; // the default model
//! // https://router.huggingface.co/v1, with the token from HF_TOKEN
//! let remote = OpenAiClient::hf_router()?.with_model("mistralai/Mistral-7B-Instruct-v0.3:fastest");
//! let router = Router::new(
//!     vec![Route::local(Arc::new(local)), Route::remote(Arc::new(remote))],
//!     RouterConfig::new(Policy::LocalFirst),
//! );
//! let (text, done) = router.generate_text(GenerateRequest::chat(vec![Message::user("Hi")]))?;
//! println!("{text}\n[served by {:?}, tried {:?}, provider {:?}]", done.served_by, done.tried, done.provider);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub use foehn_chat as chat;
pub use foehn_core as core;
pub use foehn_engine as engine;
pub use foehn_hub as hub;
pub use foehn_kernels as kernels;
pub use foehn_loader as loader;
pub use foehn_model as model;
pub use foehn_remote as remote;
pub use foehn_sampler as sampler;
pub use foehn_tokenizer as tokenizer;

pub use foehn_core::{
    CancelToken, Capabilities, Completion, Constraint, Event, EventStream, FinishReason,
    GenerateError, GenerateRequest, Generator, Message, ModelConfig, Prompt, Role, TokenEvent,
    Usage,
};
pub use foehn_engine::{Isq, LoadOptions, LocalModel, Session};
pub use foehn_tokenizer::{EncodeOptions, Tokenizer};

/// The README's Rust examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
