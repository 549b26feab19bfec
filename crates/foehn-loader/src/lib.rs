//! Model files: GGUF (v2/v3, memory-mapped, read and write) and Hugging Face
//! safetensors (single or sharded) with `config.json`, and the `ModelConfig`
//! derived from either. The loader knows files; it does not know the model.

pub mod config;
mod error;
pub mod gguf;
pub mod safetensors;

pub use config::{config_from_gguf, config_from_hf, config_from_hf_json};
pub use error::{LoadError, Result};
pub use gguf::GgufFile;
pub use safetensors::{SafetensorsModel, StDtype, StTensor};
