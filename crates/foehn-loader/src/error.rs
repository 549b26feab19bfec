//! The loader's error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading or writing a model file.
///
/// Every variant carries enough context (path, offset, key or tensor name) to
/// act on the message without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a well-formed GGUF file.
    #[error("malformed GGUF at byte {offset}: {reason}")]
    MalformedGguf {
        /// Byte offset in the file where the problem was found.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A GGUF version this reader does not support.
    #[error("unsupported GGUF version {0} (foehn reads versions 2 and 3)")]
    UnsupportedGgufVersion(u32),
    /// A tensor whose description is inconsistent (shape, offset, size).
    #[error("tensor '{name}': {reason}")]
    BadTensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor stored in a type the engine cannot compute with.
    #[error("tensor '{name}' has type {ty}, which foehn cannot compute")]
    UnsupportedTensorType {
        /// Tensor name.
        name: String,
        /// The type's name (or numeric id when unknown).
        ty: String,
    },
    /// A tensor the model needs is absent.
    #[error("tensor '{0}' not found")]
    MissingTensor(String),
    /// A metadata key the caller needs is absent.
    #[error("metadata key '{0}' is missing")]
    MissingKey(String),
    /// A metadata key holds a value of the wrong type.
    #[error("metadata key '{key}': expected {expected}, found {found}")]
    WrongType {
        /// The key.
        key: String,
        /// What the caller asked for.
        expected: &'static str,
        /// What the file holds.
        found: String,
    },
    /// The bytes are not a well-formed safetensors file.
    #[error("malformed safetensors file {}: {reason}", path.display())]
    MalformedSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A JSON file (config.json, a shard index) that does not parse.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A model configuration that is missing fields or inconsistent.
    #[error("model config: {0}")]
    Config(String),
}

/// Result alias for the loader.
pub type Result<T, E = LoadError> = std::result::Result<T, E>;
