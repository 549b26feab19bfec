//! Chat templates for foehn: from a conversation to the model's prompt.
//!
//! * [`ChatTemplate`] renders Hugging Face Jinja chat templates (from
//!   `tokenizer_config.json` or GGUF `tokenizer.chat_template`) with minijinja,
//!   and the llama.cpp built-in formats GGUF files name instead of Jinja
//!   (`"chatml"`, `"mistral-v3"`, …, see [`NAMED_TEMPLATES`]).
//! * [`encode_mistral_chat`] produces the token ids Mistral's own
//!   `mistral-common` produces (control tokens by id, each message tokenized on
//!   its own), which rendering a Mistral template to text and tokenizing it does
//!   not, up to Mistral's v13 (tools, tool calls, `[THINK]` reasoning, see
//!   [`encode_mistral_chat_with_tools`]); [`mistral_version`] tells whether a
//!   model should take that path.
//! * [`ToolFormat`] is how a model calls tools (Mistral's tokens, Hermes'
//!   `<tool_call>`): the prompt that offers them, the grammar that holds the
//!   calls to their schemas, and [`ToolCallParser`], which turns the output
//!   into OpenAI-shaped calls as it streams.
//!
//! ```no_run
//! use foehn_chat::{encode_mistral_chat, mistral_version, ChatTemplate, Message};
//! use foehn_tokenizer::{EncodeOptions, Tokenizer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tokenizer = Tokenizer::from_file("model.gguf")?;
//! let messages = [Message::system("Be brief."), Message::user("Hello!")];
//! let prompt_ids = match mistral_version(&tokenizer, tokenizer.chat_template()) {
//!     Some(version) => encode_mistral_chat(&tokenizer, &messages, version)?,
//!     None => {
//!         // Build the template once per model and keep it.
//!         let text = ChatTemplate::for_tokenizer(&tokenizer)?.render(&messages, true)?;
//!         // The template wrote BOS and the other special tokens as text.
//!         tokenizer.encode(&text, EncodeOptions { add_bos: Some(false), parse_special: true })?
//!     }
//! };
//! # let _ = prompt_ids;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod error;
mod message;
mod mistral;
mod mistral_v11;
mod named;
mod pyjson;
mod pyrepr;
mod strftime;
mod template;
mod tojson;
mod tools;

pub use error::{ChatError, Result};
pub use message::{Message, Role};
pub use mistral::{
    encode_mistral_chat, encode_mistral_chat_with_tools, is_mistral_tokenizer, mistral_version,
    MistralVersion,
};
pub use named::{named_template_source, NAMED_TEMPLATES};
pub use template::{default_template_name, ChatTemplate, DEFAULT_TEMPLATE_NAME};
pub use tools::{Marker, Parsed, ToolCallParser, ToolFormat, ToolPrompt, ToolSyntax};
