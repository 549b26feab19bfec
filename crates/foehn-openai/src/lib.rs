//! The OpenAI wire format, written once for foehn's client
//! (`foehn-remote`) and server (`foehn-serve`): typed request, response,
//! stream-chunk, error and model-list bodies with serde, and their mapping
//! to and from [`foehn_core`]'s [`GenerateRequest`](foehn_core::GenerateRequest),
//! token events and [`FinishReason`].
//!
//! - [`request`]: `POST /v1/chat/completions` and `POST /v1/completions`
//!   bodies; a client builds them from a `GenerateRequest`
//!   ([`RequestBody::streaming`]), a server turns them into one, checked
//!   ([`ChatRequest::into_generate`]).
//! - [`response`]: whole answers and stream chunks of both endpoints
//!   ([`ChatResponse`], [`TextResponse`]), their usage and logprobs.
//! - [`error`]: OpenAI's error object, and [`error_in_json`] /
//!   [`parse_error_body`] for the other shapes servers answer with.
//! - [`models`]: `GET /v1/models`.
//!
//! What is written is OpenAI's format to the letter. What is read is lenient,
//! because the servers a client talks to (vLLM, TGI, llama-server, Ollama,
//! the Hugging Face router) add fields, leave some out or give them other
//! types: reply bodies ignore unknown fields, and a field of an unexpected
//! type reads as absent instead of failing the whole body. Request bodies are
//! read strictly (a wrong type names the field), as a server must.
//!
//! Why not `async-openai`'s types-only features (`chat-completion-types`,
//! `completion-types`): its reply types are strict (`id`, `created`,
//! `object`, `model` and a `choices` list are required, `finish_reason` is a
//! closed enum), so the usage chunks, `"choices": null` and `eos_token` of
//! the servers above would fail to parse; it has no `top_k`, `min_p` or
//! `repetition_penalty`; a server reading requests into its typed messages
//! could not give the field-by-field errors foehn's API promises; and it
//! brings `derive_builder` (with `darling` and `syn`) and `bytes` for what
//! is here a few hundred lines of serde.

#![forbid(unsafe_code)]

pub mod error;
mod lenient;
pub mod models;
pub mod request;
pub mod response;

use foehn_core::FinishReason;

pub use error::{
    error_in_json, parse_error_body, ErrorBody, ErrorCode, ErrorObject, ErrorResponse,
};
pub use models::{ModelList, ModelObject};
pub use request::{
    ChatMessage, ChatRequest, ChatToolCall, ClientOptions, CompletionRequest, Content, ContentPart,
    FunctionCall, PromptField, RequestBody, RequestError, StopField, StreamOptions,
};
pub use response::{
    ChatLogprobs, ChatResponse, Choice, CompletionUsage, Delta, FunctionChunk, LogprobEntry,
    Logprobs, PromptTokensDetails, Response, ResponseMessage, TextLogprobs, TextResponse,
    TokenLogprob, ToolCallChunk, TopLogprob, TopLogprobs,
};

/// Which OpenAI endpoint a request goes to and a response comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions` (raw text).
    Completions,
}

impl Endpoint {
    /// The path below the base URL (`…/v1`): `chat/completions` or `completions`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Completions => "completions",
        }
    }

    /// The `object` of a whole answer: `chat.completion` or `text_completion`.
    pub fn object(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completions => "text_completion",
        }
    }

    /// The `object` of a stream chunk: `chat.completion.chunk` or `text_completion`.
    pub fn chunk_object(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        }
    }

    /// The prefix of a response id: `chatcmpl` or `cmpl`.
    pub fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        }
    }
}

/// OpenAI's name for a finish reason. A cancelled generation is `stop`: its
/// client, whose disconnect caused it, never sees it, and `stop` keeps the
/// field valid if one does.
pub fn finish_reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

/// The finish reason a server named, in OpenAI's words or another server's
/// (`max_tokens`, `model_length`, `eos_token`, `stop_sequence`, `end_turn`,
/// `tool_use`, …); anything unknown is [`FinishReason::Stop`].
pub fn finish_reason_from_name(name: &str) -> FinishReason {
    match name {
        "length" | "max_tokens" | "model_length" => FinishReason::Length,
        "tool_calls" | "function_call" | "tool_use" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop, // stop, eos, eos_token, stop_sequence, end_turn, …
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_round_trip_and_read_other_servers_names() {
        for r in [
            FinishReason::Stop,
            FinishReason::Length,
            FinishReason::ToolCalls,
            FinishReason::ContentFilter,
        ] {
            assert_eq!(finish_reason_from_name(finish_reason_name(r)), r);
        }
        assert_eq!(finish_reason_name(FinishReason::Cancelled), "stop");
        for (name, r) in [
            ("max_tokens", FinishReason::Length),
            ("model_length", FinishReason::Length),
            ("function_call", FinishReason::ToolCalls),
            ("tool_use", FinishReason::ToolCalls),
            ("eos_token", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("", FinishReason::Stop),
        ] {
            assert_eq!(finish_reason_from_name(name), r, "{name}");
        }
    }

    #[test]
    fn endpoints_name_their_paths_and_objects() {
        assert_eq!(Endpoint::Chat.path(), "chat/completions");
        assert_eq!(Endpoint::Completions.path(), "completions");
        assert_eq!(Endpoint::Chat.object(), "chat.completion");
        assert_eq!(Endpoint::Chat.chunk_object(), "chat.completion.chunk");
        assert_eq!(Endpoint::Completions.object(), "text_completion");
        assert_eq!(Endpoint::Completions.chunk_object(), "text_completion");
        assert_eq!(
            (
                Endpoint::Chat.id_prefix(),
                Endpoint::Completions.id_prefix()
            ),
            ("chatcmpl", "cmpl")
        );
    }
}
