//! One `Tokenizer` for every route: Hugging Face `tokenizer.json`, SentencePiece
//! `tokenizer.model`, Mistral Tekken (`tekken.json`) and GGUF metadata
//! (`tokenizer.ggml.model` = `llama` or `gpt2`).
//!
//! Literal special-token text in user input ("[INST]", "</s>") is encoded as
//! text unless the caller asks to parse specials; decoding is streaming-safe
//! ([`StreamDecoder`]).

#![forbid(unsafe_code)]

mod bpe;
mod error;
mod gguf;
mod hf;
mod sentencepiece_model;
mod special;
mod spm;
mod stream;
mod tekken;
mod tokenizer;
mod vocab;

pub use error::{Result, TokenizerError};
pub use stream::StreamDecoder;
pub use tokenizer::{EncodeOptions, Tokenizer, TokenizerKind};
