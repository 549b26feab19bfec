//! The chat crate's error type.

/// Everything that can go wrong while rendering or encoding a conversation.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The Jinja source does not compile (syntax error, unknown tag, …).
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    /// The template called `raise_exception(message)`.
    #[error("chat template raised an exception: {0}")]
    Raised(String),
    /// Any other failure while rendering (a missing filter, a type error, …).
    #[error("chat template failed to render: {0}")]
    Render(String),
    /// A bare word that is neither Jinja nor a llama.cpp template name we know.
    #[error("unknown chat template name {0:?}")]
    UnknownName(String),
    /// The tokenizer lacks a control token the chat format needs.
    #[error("the tokenizer has no control token {0}")]
    MissingToken(String),
    /// A conversation the chat format cannot express.
    #[error("invalid conversation: {0}")]
    InvalidConversation(String),
    /// An error from the tokenizer.
    #[error(transparent)]
    Tokenizer(#[from] foehn_tokenizer::TokenizerError),
}

/// Result alias for the chat crate.
pub type Result<T, E = ChatError> = std::result::Result<T, E>;
