//! The tokenizer crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while building or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A tokenizer file that does not parse or is inconsistent.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// GGUF tokenizer metadata that is missing or inconsistent.
    #[error("GGUF tokenizer metadata: {0}")]
    BadMetadata(String),
    /// A tokenizer kind or option this crate does not implement.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// An error reported by the `tokenizers` library.
    #[error("tokenizer.json: {0}")]
    Hf(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    InvalidId {
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
}

impl From<foehn_loader::LoadError> for TokenizerError {
    fn from(e: foehn_loader::LoadError) -> Self {
        TokenizerError::BadMetadata(e.to_string())
    }
}

/// Result alias for the tokenizer crate.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;
