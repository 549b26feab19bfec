//! The model crate's error type.

use foehn_kernels::KernelError;
use foehn_loader::LoadError;

/// Everything that can go wrong while building a model or running it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading the model file failed (missing tensor, malformed file, bad config).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A tensor stored in a type the engine cannot compute with.
    #[error("tensor '{tensor}' has type {ty}, which foehn cannot compute with")]
    UnsupportedTensorType {
        /// Tensor name as stored in the file.
        tensor: String,
        /// The type's name.
        ty: String,
    },
    /// A tensor whose shape does not match the model configuration.
    #[error(
        "tensor '{tensor}' has shape {found:?}, expected {expected:?} (from the model config)"
    )]
    Shape {
        /// Tensor name as stored in the file.
        tensor: String,
        /// The shape the configuration implies, in the file's dimension order.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The new tokens do not fit in the context.
    #[error(
        "context full: {position} tokens in the KV cache + {n_tokens} new tokens exceed the \
         context length of {ctx_len} (start a new session, truncate the cache or raise the context)"
    )]
    ContextOverflow {
        /// Tokens already in the cache.
        position: usize,
        /// Tokens of the chunk being added.
        n_tokens: usize,
        /// The cache's context length.
        ctx_len: usize,
    },
    /// A chunk longer than the scratch buffers or the KV cache were sized for.
    #[error("a chunk of {n_tokens} tokens exceeds the {max} tokens per forward pass that the {what} was sized for")]
    ChunkTooLarge {
        /// Tokens of the chunk.
        n_tokens: usize,
        /// The largest chunk accepted.
        max: usize,
        /// `KV cache` or `scratch`.
        what: &'static str,
    },
    /// A forward pass over no tokens.
    #[error("forward pass over an empty token list")]
    EmptyInput,
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    TokenOutOfRange {
        /// The token id.
        id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// A KV cache or scratch built for another model.
    #[error("{0}")]
    Mismatch(String),
    /// The KV cache cannot be truncated to that position.
    #[error(
        "cannot truncate the KV cache to position {to} (it holds {position} tokens): {reason}"
    )]
    Truncate {
        /// The requested position.
        to: usize,
        /// The cache's position.
        position: usize,
        /// Why.
        reason: String,
    },
    /// A configuration the model cannot run (bad options, inconsistent sizes).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A kernel refused its inputs (a bug if it happens after loading).
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// A candle operation failed (device, memory, kernel).
    #[cfg(feature = "candle")]
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for the model crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
