//! Model files: GGUF (v2/v3, memory-mapped, read and write) and Hugging Face
//! safetensors (single or sharded) with `config.json`, and the `ModelConfig`
//! derived from either. The loader knows files; it does not know the model.

mod error;
pub mod gguf;

pub use error::{LoadError, Result};
