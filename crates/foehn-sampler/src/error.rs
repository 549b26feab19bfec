//! The sampler's error type.

/// Why a sampler could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// A numeric setting is outside its allowed range.
    #[error("invalid sampler setting {name} = {value}: expected {expected}")]
    InvalidSetting {
        /// The field of [`SamplerConfig`](crate::SamplerConfig).
        name: &'static str,
        /// The value given.
        value: f32,
        /// The allowed range, in words.
        expected: &'static str,
    },
    /// A logit bias names a token the vocabulary does not have.
    #[error("logit_bias names token {token}, but the vocabulary has {vocab_size} tokens")]
    BiasTokenOutOfRange {
        /// The token id.
        token: u32,
        /// The vocabulary size the sampler was built for.
        vocab_size: usize,
    },
    /// A logit bias is NaN or +inf.
    #[error("logit_bias for token {token} is {bias}: use -inf to forbid a token and a large finite value (e.g. 100) to force one")]
    InvalidBias {
        /// The token id.
        token: u32,
        /// The bias given.
        bias: f32,
    },
    /// The vocabulary size is 0 or does not fit token ids (`u32`).
    #[error("vocabulary size must be between 1 and 2^32, got {0}")]
    InvalidVocabSize(usize),
    /// A constraint does not compile, or the text can no longer satisfy it.
    #[error("constraint: {0}")]
    Constraint(String),
}

/// `Result` with a [`SamplerError`].
pub type Result<T> = std::result::Result<T, SamplerError>;
