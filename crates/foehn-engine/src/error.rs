//! The engine's error type.

use foehn_core::GenerateError;

/// Why loading a model or running a generation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file could not be found or fetched.
    #[error(transparent)]
    Fetch(#[from] foehn_hub::HubError),
    /// The model file could not be read.
    #[error(transparent)]
    Load(#[from] foehn_loader::LoadError),
    /// The model could not be built or run.
    #[error(transparent)]
    Model(#[from] foehn_model::ModelError),
    /// The tokenizer could not be built or used.
    #[error(transparent)]
    Tokenizer(#[from] foehn_tokenizer::TokenizerError),
    /// The chat template failed.
    #[error(transparent)]
    Chat(#[from] foehn_chat::ChatError),
    /// Bad sampling settings.
    #[error(transparent)]
    Sampler(#[from] foehn_sampler::SamplerError),
    /// The request cannot be served (too long, bad ids, …).
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// Anything else, with its context.
    #[error("{0}")]
    Other(String),
}

impl From<EngineError> for GenerateError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Generate(g) => g,
            EngineError::Sampler(s) => GenerateError::InvalidRequest(s.to_string()),
            EngineError::Chat(c) => GenerateError::InvalidRequest(c.to_string()),
            other => GenerateError::Backend(other.to_string()),
        }
    }
}

/// Result alias for the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
