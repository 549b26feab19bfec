//! Core types shared by every foehn crate: the model configuration today; the
//! generation request, event stream and generation trait as the engine grows.

mod config;

pub use config::{ModelConfig, RopeScaling};
