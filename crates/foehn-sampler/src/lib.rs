//! Token sampling, stop conditions and output constraints.
//!
//! [`Sampler`] turns one step's logits into a token id with llama.cpp's default
//! chain — logit bias → repetition/frequency/presence penalties → top-k → top-p
//! → min-p → temperature → draw — using partial selection rather than sorting
//! the vocabulary, and without allocating per token. [`StopStrings`] watches the
//! streamed text for stop strings, holding back text that might start one.
//! [`TokenConstraint`] (llguidance) masks the logits to the tokens a JSON
//! schema, regex or Lark grammar allows, built by a [`ConstraintCompiler`]
//! per vocabulary.
//!
//! ```
//! use foehn_sampler::{Sampler, SamplerConfig, StopStrings};
//!
//! let config = SamplerConfig { seed: Some(42), ..SamplerConfig::default() };
//! let mut sampler = Sampler::new(config, 4)?;
//! let mut logits = vec![0.1, 2.5, -1.0, 0.3]; // one decode step's output
//! let token = sampler.sample(&mut logits);
//! sampler.accept(token); // feeds the repetition penalties
//!
//! let mut stops = StopStrings::new(["</s>"]);
//! let mut text = String::new();
//! for piece in ["Hello", " world</", "s> never shown"] {
//!     let check = stops.push(piece);
//!     text.push_str(&check.text);
//!     if check.stopped.is_some() {
//!         break;
//!     }
//! }
//! text.push_str(&stops.finish());
//! assert_eq!(text, "Hello world");
//! # Ok::<(), foehn_sampler::SamplerError>(())
//! ```

#![forbid(unsafe_code)]

mod config;
mod constraint;
mod error;
mod penalties;
mod sampler;
mod select;
mod stop;

pub use config::SamplerConfig;
pub use constraint::{toktrie, ConstraintCompiler, TokenConstraint};
pub use error::{Result, SamplerError};
pub use sampler::Sampler;
pub use stop::{StopCheck, StopStrings};
