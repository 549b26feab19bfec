//! Remote OpenAI-compatible providers and routing between generators.
//!
//! - [`OpenAiClient`]: a blocking client for any OpenAI-compatible server —
//!   the Hugging Face Inference Providers router ([`OpenAiClient::hf_router`]),
//!   vLLM, TGI, llama-server, Ollama — that implements
//!   [`foehn_core::Generator`], so a remote model streams the same events as
//!   the local engine.
//! - [`Router`]: a [`foehn_core::Generator`] over several routes with a
//!   [`Policy`] (local-first, remote-first, fastest, cheapest), retries with
//!   backoff and jitter, per-route circuit breakers and capability filtering.
//! - [`sse`]: the Server-Sent Events parser, [`errors`]: how error answers map
//!   to [`foehn_core::GenerateError`].

#![forbid(unsafe_code)]

pub mod errors;
mod openai;
mod router;
pub mod sse;

pub use openai::{OpenAiClient, RemoteError, RemoteModel, Timeouts, HF_ROUTER_BASE_URL};
pub use router::{
    classify, BreakerConfig, BreakerState, Clock, ErrorClass, FastestConfig, Policy, Price,
    RetryConfig, Route, RouteKind, RouteStats, Router, RouterConfig, SystemClock,
};
