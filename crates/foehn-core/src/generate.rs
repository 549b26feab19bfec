//! The generation contract shared by the local engine and remote providers:
//! a request, a stream of events, and the [`Generator`] trait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Constraint, ToolCallDelta};

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The person talking to the model.
    User,
    /// The model.
    Assistant,
    /// A tool's answer to a tool call.
    Tool,
}

impl Role {
    /// The role's name as chat templates see it (`"user"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: String,
    /// An assistant message's reasoning ("thinking") before its answer, kept
    /// apart from `content` (Magistral's `[THINK]…[/THINK]`, OpenAI-style
    /// `reasoning_content`); `None` when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// The tool calls an assistant message made (empty for other messages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers (`ToolCall::id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// A function call the assistant made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, which the tool's answer repeats (`Message::tool_call_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The function's name.
    pub name: String,
    /// The arguments as the model wrote them (JSON text, as OpenAI carries them).
    pub arguments: String,
}

impl Message {
    /// A message with the given role and text.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            reasoning: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// A tool-result message.
    pub fn tool(content: impl Into<String>) -> Self {
        Self::new(Role::Tool, content)
    }
}

/// What the model continues from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<Message>),
    /// Raw text, no template (OpenAI `/v1/completions`).
    Text(String),
    /// Raw token ids, no template and no tokenizer (local models only).
    Tokens(Vec<u32>),
}

/// A generation request with the OpenAI-style fields.
///
/// Sampling fields left `None` take the generator's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The model to use: a remote model id (`owner/model:provider`) or a local
    /// model name; `None` = the generator's own model.
    pub model: Option<String>,
    /// What to continue.
    pub prompt: Prompt,
    /// Most tokens to generate (`None` = until a stop condition or the context is full).
    pub max_tokens: Option<u32>,
    /// Sampling temperature (0 = greedy).
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens.
    pub top_k: Option<u32>,
    /// Drop tokens less likely than `min_p` × the most likely one.
    pub min_p: Option<f32>,
    /// llama.cpp-style repetition penalty (1 = off).
    pub repeat_penalty: Option<f32>,
    /// OpenAI frequency penalty.
    pub frequency_penalty: Option<f32>,
    /// OpenAI presence penalty.
    pub presence_penalty: Option<f32>,
    /// Random seed: the same seed gives the same tokens on the same machine.
    pub seed: Option<u64>,
    /// Stop strings: generation ends before the first occurrence, which is not emitted.
    pub stop: Vec<String>,
    /// Generate past end-of-generation tokens (EOS, end of turn) until
    /// `max_tokens`, a stop string or a full context: answers of a fixed
    /// length, for benchmarks (vLLM's and llama-server's `ignore_eos`).
    pub ignore_eos: bool,
    /// Return the log-probability of each token and this many alternatives.
    pub logprobs: Option<u32>,
    /// OpenAI `response_format`, passed through to remotes that support it.
    pub response_format: Option<serde_json::Value>,
    /// OpenAI `tools`: the functions the model may call (see
    /// [`crate::parse_tools`]); passed through to remotes.
    pub tools: Option<serde_json::Value>,
    /// OpenAI `tool_choice` (see [`crate::ToolChoice`]; `None` = `auto`);
    /// passed through to remotes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<serde_json::Value>,
    /// OpenAI `parallel_tool_calls`: `Some(false)` allows one call per
    /// answer (`None` = several, OpenAI's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// What the output must match (`None`: what `response_format` asks for,
    /// if anything); see [`GenerateRequest::output_constraint`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<Constraint>,
}

impl GenerateRequest {
    /// A request for a chat with default settings.
    pub fn chat(messages: Vec<Message>) -> Self {
        Self::new(Prompt::Chat(messages))
    }

    /// A request for a raw-text completion with default settings.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(Prompt::Text(text.into()))
    }

    /// A request with every optional field unset.
    pub fn new(prompt: Prompt) -> Self {
        Self {
            model: None,
            prompt,
            max_tokens: None,
            temperature: None,
            top_p: None,
            top_k: None,
            min_p: None,
            repeat_penalty: None,
            frequency_penalty: None,
            presence_penalty: None,
            seed: None,
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            response_format: None,
            tools: None,
            tool_choice: None,
            parallel_tool_calls: None,
            constraint: None,
        }
    }

    /// The constraint the output must match: [`GenerateRequest::constraint`]
    /// when set, else the one `response_format` asks for; an error when
    /// `response_format` is malformed.
    pub fn output_constraint(&self) -> Result<Option<Constraint>, GenerateError> {
        match (&self.constraint, &self.response_format) {
            (Some(c), _) => Ok(Some(c.clone())),
            (None, Some(format)) if !format.is_null() => Constraint::from_response_format(format),
            (None, _) => Ok(None),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// The caller cancelled.
    Cancelled,
    /// The model called tools (its answer's [`TokenEvent::tool_calls`]).
    ToolCalls,
    /// The provider filtered the content.
    ContentFilter,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt (after templating).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Prompt tokens whose keys and values came from a cache (a session's
    /// own, or the model's prefix cache) instead of a prefill.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_tokens: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where the time went (what the generator could measure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// From the request to the first token event.
    pub time_to_first_token: Option<Duration>,
    /// Prompt processing time (local engine).
    pub prefill: Option<Duration>,
    /// Time spent generating after the first token.
    pub decode: Option<Duration>,
}

/// One generated token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenEvent {
    /// The text it adds (may be empty while a character or a stop string is incomplete).
    pub text: String,
    /// The token id, when the generator knows it (local engine).
    pub id: Option<u32>,
    /// Its log-probability, when asked for.
    pub logprob: Option<f32>,
    /// The most likely alternatives `(token text, logprob)`, when asked for.
    pub top_logprobs: Vec<(String, f32)>,
    /// Whether `text` is the model's reasoning rather than its answer: text
    /// between the `[THINK]` and `[/THINK]` control tokens of Magistral and
    /// Ministral 3 Reasoning, or a remote's `reasoning_content`. The two
    /// tokens' own events carry no text of theirs, only text held back for
    /// stop strings before them, marked as the side they end. Servers send
    /// reasoning as `reasoning_content`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reasoning: bool,
    /// Pieces of tool calls this token adds (then `text` is the answer's
    /// text before them, if any): the model's call syntax parsed into
    /// OpenAI's shape; [`crate::collect_tool_calls`] puts them together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// The last event of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Timings.
    pub timings: Timings,
    /// The route that served the request (`local`, or a remote's name), set by generators and routers.
    pub served_by: Option<String>,
    /// Every route tried, in order, when a router was involved.
    pub tried: Vec<String>,
    /// The upstream provider, when a remote router reports it (HF `x-inference-provider`).
    pub provider: Option<String>,
}

/// What a generator streams back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A token (or a piece of text for remotes that do not expose tokens).
    Token(TokenEvent),
    /// The end of the stream.
    Done(Completion),
}

/// A cancellation flag shared between the caller and a running generation.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the generation to stop; it ends with [`FinishReason::Cancelled`].
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a generator can honour; a router sends a request only where it fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// Longest prompt + generation, in tokens (`None` = unknown).
    pub context_length: Option<u32>,
    /// Tool calls (`tools`).
    pub tools: bool,
    /// Structured output (`response_format` with a JSON schema).
    pub json_schema: bool,
    /// Raw token-id prompts.
    pub token_prompts: bool,
}

/// Why a generation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    /// The request is malformed or asks for something this generator cannot do.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The prompt does not fit the context.
    #[error("the prompt has {prompt_tokens} tokens, more than the context of {context} allows")]
    ContextOverflow {
        /// Tokens in the prompt.
        prompt_tokens: u32,
        /// Context length.
        context: u32,
    },
    /// The generator cannot be reached or is not loaded.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The credentials were refused.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The provider says to slow down, or the credit is spent.
    #[error("rate limited{}", retry_after.map(|d| format!(" (retry after {:.1}s)", d.as_secs_f64())).unwrap_or_default())]
    RateLimited {
        /// The provider's `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// No answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// An error reported by a remote server.
    #[error("remote error{}: {message}", status.map(|s| format!(" {s}")).unwrap_or_default())]
    Remote {
        /// HTTP status, when there was one.
        status: Option<u16>,
        /// The server's message.
        message: String,
    },
    /// A failure inside the engine.
    #[error("{0}")]
    Backend(String),
}

/// The events of one generation, in order, ending with [`Event::Done`] or an error.
pub type EventStream = Box<dyn Iterator<Item = Result<Event, GenerateError>> + Send>;

/// Anything that turns a request into a stream of events: the local engine, a
/// remote provider, or a router over several of them.
pub trait Generator: Send + Sync {
    /// A short name for messages and for `Completion::served_by` (`local`, `hf-router`, …).
    fn name(&self) -> &str;

    /// What this generator can honour.
    fn capabilities(&self) -> Capabilities;

    /// What the generator reports of its state (caches, counters) for a
    /// server's `/health`; `None` by default.
    fn status(&self) -> Option<serde_json::Value> {
        None
    }

    /// Starts a generation. Events arrive as the iterator is driven; `cancel`
    /// stops it between tokens.
    fn generate(
        &self,
        request: GenerateRequest,
        cancel: CancelToken,
    ) -> Result<EventStream, GenerateError>;

    /// Runs a generation to the end and returns the assistant's message
    /// (text, reasoning and tool calls, ready to append to the conversation)
    /// and the final event.
    fn generate_message(
        &self,
        request: GenerateRequest,
    ) -> Result<(Message, Completion), GenerateError> {
        let (mut text, mut reasoning) = (String::new(), String::new());
        let mut deltas = Vec::new();
        for event in self.generate(request, CancelToken::new())? {
            match event? {
                Event::Token(t) => {
                    if t.reasoning {
                        &mut reasoning
                    } else {
                        &mut text
                    }
                    .push_str(&t.text);
                    deltas.extend(t.tool_calls);
                }
                Event::Done(c) => {
                    let mut message = Message::assistant(text);
                    message.reasoning = Some(reasoning).filter(|r| !r.is_empty());
                    message.tool_calls = crate::collect_tool_calls(&deltas);
                    return Ok((message, c));
                }
            }
        }
        Err(GenerateError::Backend(
            "the event stream ended without a final event".into(),
        ))
    }

    /// Runs a generation to the end and returns its text and final event.
    fn generate_text(
        &self,
        request: GenerateRequest,
    ) -> Result<(String, Completion), GenerateError> {
        let mut text = String::new();
        for event in self.generate(request, CancelToken::new())? {
            match event? {
                Event::Token(t) => text.push_str(&t.text),
                Event::Done(c) => return Ok((text, c)),
            }
        }
        Err(GenerateError::Backend(
            "the event stream ended without a final event".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generator that streams the words of its prompt.
    struct Echo;

    impl Generator for Echo {
        fn name(&self) -> &str {
            "echo"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        fn generate(
            &self,
            request: GenerateRequest,
            cancel: CancelToken,
        ) -> Result<EventStream, GenerateError> {
            let Prompt::Text(text) = request.prompt else {
                return Err(GenerateError::InvalidRequest("text prompts only".into()));
            };
            let words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
            let n = words.len() as u32;
            let mut done = false;
            let mut iter = words.into_iter();
            Ok(Box::new(std::iter::from_fn(move || {
                if done {
                    return None;
                }
                match iter.next() {
                    Some(w) if !cancel.is_cancelled() => Some(Ok(Event::Token(TokenEvent {
                        text: w,
                        ..TokenEvent::default()
                    }))),
                    rest => {
                        done = true;
                        let finish_reason = if rest.is_some() {
                            FinishReason::Cancelled
                        } else {
                            FinishReason::Stop
                        };
                        Some(Ok(Event::Done(Completion {
                            finish_reason,
                            usage: Usage {
                                prompt_tokens: n,
                                completion_tokens: n,
                                cached_tokens: 0,
                            },
                            timings: Timings::default(),
                            served_by: Some("echo".into()),
                            tried: vec![],
                            provider: None,
                        })))
                    }
                }
            })))
        }
    }

    #[test]
    fn generate_text_collects_the_stream() {
        let (text, done) = Echo.generate_text(GenerateRequest::text("a b c")).unwrap();
        assert_eq!(text, "a b c");
        assert_eq!(done.finish_reason, FinishReason::Stop);
        assert!(Echo.generate_text(GenerateRequest::chat(vec![])).is_err());
    }

    #[test]
    fn cancel_ends_the_stream_with_cancelled() {
        let cancel = CancelToken::new();
        let mut stream = Echo
            .generate(GenerateRequest::text("a b c"), cancel.clone())
            .unwrap();
        assert!(matches!(stream.next(), Some(Ok(Event::Token(_)))));
        cancel.cancel();
        match stream.next() {
            Some(Ok(Event::Done(c))) => assert_eq!(c.finish_reason, FinishReason::Cancelled),
            other => panic!("expected Done, got {other:?}"),
        }
        assert!(stream.next().is_none());
    }

    #[test]
    fn requests_round_trip_through_json() {
        let mut req = GenerateRequest::chat(vec![Message::new(Role::User, "hi")]);
        req.stop = vec!["\n".into()];
        req.seed = Some(7);
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains("\"role\":\"user\""));
        assert_eq!(serde_json::from_str::<GenerateRequest>(&json).unwrap(), req);
    }
}
