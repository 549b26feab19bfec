//! Request bodies of `POST /v1/chat/completions` and `POST /v1/completions`:
//! how a client words a [`GenerateRequest`] ([`RequestBody::streaming`]) and
//! how a server reads one back, checked against what its generator can
//! honour ([`ChatRequest::into_generate`], [`CompletionRequest::into_generate`]).
//!
//! Unknown fields (`user`, `metadata`, …) are ignored; a known field of the
//! wrong type is an error that names it (with `serde_path_to_error`).

use foehn_core::{Capabilities, Constraint, GenerateRequest, Message, Prompt, Role, ToolCall};
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Endpoint;

/// A request the server refuses: what is wrong, and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The request field at fault (`messages[0].role`, `top_p`, …), when one is.
    pub param: Option<String>,
    /// What is wrong, for people.
    pub message: String,
}

impl RequestError {
    fn param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestError {}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// `"stop": "\n"`.
    One(String),
    /// `"stop": ["\n", "User:"]`.
    Many(Vec<String>),
}

impl StopField {
    /// The stop strings as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the token counts (and `"usage": null` in the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

/// A chat message's `content`: text, or a list of parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts (`{"type": "text", "text": …}`, images, …); foehn reads text parts only.
    Parts(Vec<ContentPart>),
}

/// One part of a multi-part message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentPart {
    /// The part's type (`text`, `image_url`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// One message of `messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant`, `tool` (or `function`).
    pub role: String,
    /// The message's content (absent or `null` for some assistant turns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// An assistant message's reasoning (as servers return it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// An assistant message's tool calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ChatToolCall>,
    /// The call a tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// One of an assistant message's `tool_calls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatToolCall {
    /// The call's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// The function called.
    pub function: FunctionCall,
}

/// The function of a [`ChatToolCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Its name.
    pub name: String,
    /// Its arguments, JSON text.
    #[serde(default)]
    pub arguments: String,
}

fn function_kind() -> String {
    "function".into()
}

impl From<&Message> for ChatMessage {
    fn from(m: &Message) -> Self {
        Self {
            role: m.role.as_str().to_string(),
            content: Some(Content::Text(m.content.clone())),
            reasoning_content: m.reasoning.clone(),
            tool_calls: m
                .tool_calls
                .iter()
                .map(|c| ChatToolCall {
                    id: c.id.clone(),
                    kind: function_kind(),
                    function: FunctionCall {
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                    },
                })
                .collect(),
            tool_call_id: m.tool_call_id.clone(),
        }
    }
}

impl ChatMessage {
    /// The message as foehn's, `index` being its place in `messages` (for errors).
    pub fn into_message(self, index: usize) -> Result<Message, RequestError> {
        let role = role(&self.role, index)?;
        let content = match self.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.into_iter().enumerate() {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        ("text", None) => {
                            return Err(RequestError::param(
                                format!("messages[{index}].content[{j}].text"),
                                "a text part needs `text`",
                            ))
                        }
                        (other, _) => {
                            return Err(RequestError::param(
                                format!("messages[{index}].content[{j}].type"),
                                format!(
                                    "content parts of type {other:?} are not supported: text only"
                                ),
                            ))
                        }
                    }
                }
                text
            }
        };
        let mut message = Message::new(role, content);
        message.reasoning = self.reasoning_content;
        message.tool_call_id = self.tool_call_id;
        message.tool_calls = self
            .tool_calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.function.name,
                arguments: c.function.arguments,
            })
            .collect();
        Ok(message)
    }
}

fn role(name: &str, index: usize) -> Result<Role, RequestError> {
    match name {
        "system" | "developer" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" | "function" => Ok(Role::Tool),
        other => Err(RequestError::param(
            format!("messages[{index}].role"),
            format!("unknown role {other:?}: expected system, developer, user, assistant or tool"),
        )),
    }
}

/// `seed`: OpenAI's is a signed 64-bit integer, foehn's unsigned; either is
/// read, keeping its bits (`-1` is `u64::MAX`).
fn seed<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Seed;
    impl Visitor<'_> for Seed {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a 64-bit integer")
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v as u64))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Seed)
}

/// The sampling fields both endpoints share, moved out of a body or into one.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sampling {
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<StopField>,
    n: Option<u32>,
    ignore_eos: Option<bool>,
}

/// A request body struct with the [`Sampling`] fields inline (not
/// `#[serde(flatten)]`, which would hide the failing field's name from
/// error messages) and methods that move them out and in.
macro_rules! with_sampling {
    ($(#[$meta:meta])* struct $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Most tokens to generate.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub max_tokens: Option<u32>,
            /// Sampling temperature (0 = greedy).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub temperature: Option<f32>,
            /// Nucleus sampling mass.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub top_p: Option<f32>,
            /// Keep the k most likely tokens (not OpenAI's: vLLM, TGI, llama-server, foehn).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub top_k: Option<u32>,
            /// Min-p sampling (not OpenAI's: vLLM, llama-server, foehn).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub min_p: Option<f32>,
            /// llama.cpp's repetition penalty (llama-server, foehn).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub repeat_penalty: Option<f32>,
            /// The same penalty as vLLM and TGI spell it.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub repetition_penalty: Option<f32>,
            /// OpenAI's frequency penalty.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub frequency_penalty: Option<f32>,
            /// OpenAI's presence penalty.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub presence_penalty: Option<f32>,
            /// Random seed (signed on OpenAI's side: `-1` reads as `u64::MAX`).
            #[serde(default, deserialize_with = "seed", skip_serializing_if = "Option::is_none")]
            pub seed: Option<u64>,
            /// Stop strings.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub stop: Option<StopField>,
            /// How many choices to make.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub n: Option<u32>,
            /// Generate past end-of-generation tokens (not OpenAI's: vLLM,
            /// llama-server, foehn).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub ignore_eos: Option<bool>,
        }

        impl $name {
            /// Moves the sampling fields out.
            fn take_sampling(&mut self) -> Sampling {
                Sampling {
                    max_tokens: self.max_tokens.take(),
                    temperature: self.temperature.take(),
                    top_p: self.top_p.take(),
                    top_k: self.top_k.take(),
                    min_p: self.min_p.take(),
                    repeat_penalty: self.repeat_penalty.take(),
                    repetition_penalty: self.repetition_penalty.take(),
                    frequency_penalty: self.frequency_penalty.take(),
                    presence_penalty: self.presence_penalty.take(),
                    seed: self.seed.take(),
                    stop: self.stop.take(),
                    n: self.n.take(),
                    ignore_eos: self.ignore_eos.take(),
                }
            }

            /// Sets the sampling fields.
            fn set_sampling(&mut self, s: Sampling) {
                self.max_tokens = s.max_tokens;
                self.temperature = s.temperature;
                self.top_p = s.top_p;
                self.top_k = s.top_k;
                self.min_p = s.min_p;
                self.repeat_penalty = s.repeat_penalty;
                self.repetition_penalty = s.repetition_penalty;
                self.frequency_penalty = s.frequency_penalty;
                self.presence_penalty = s.presence_penalty;
                self.seed = s.seed;
                self.stop = s.stop;
                self.n = s.n;
                self.ignore_eos = s.ignore_eos;
            }
        }
    };
}

with_sampling! {
    /// A `POST /v1/chat/completions` body.
    struct ChatRequest {
        /// The model id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// The conversation.
        messages: Vec<ChatMessage>,
        /// Newer name of `max_tokens`; wins over it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_completion_tokens: Option<u32>,
        /// Answer as server-sent events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<bool>,
        /// Streaming options.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream_options: Option<StreamOptions>,
        /// Return each token's log-probability.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logprobs: Option<bool>,
        /// And this many alternatives (needs `logprobs: true`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        top_logprobs: Option<u32>,
        /// Structured output (`{"type": "json_schema", …}`), passed through.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response_format: Option<Value>,
        /// Tool definitions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tools: Option<Value>,
        /// Which tools the model may or must call (`auto`, `none`,
        /// `required`, or a named function).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tool_choice: Option<Value>,
        /// Whether an answer may call several tools (default true).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parallel_tool_calls: Option<bool>,
    }
}

/// `prompt` of `/v1/completions`: text, token ids, or a batch of one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// `"prompt": "Once"`.
    Text(String),
    /// `"prompt": [1, 2]`.
    Tokens(Vec<u32>),
    /// `"prompt": ["Once", …]`.
    Texts(Vec<String>),
    /// `"prompt": [[1, 2], …]`.
    TokenLists(Vec<Vec<u32>>),
}

impl Default for PromptField {
    fn default() -> Self {
        PromptField::Text(String::new())
    }
}

with_sampling! {
    /// A `POST /v1/completions` body.
    struct CompletionRequest {
        /// The model id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// What to continue.
        prompt: PromptField,
        /// Answer as server-sent events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<bool>,
        /// Streaming options.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream_options: Option<StreamOptions>,
        /// Return each token's log-probability and this many alternatives.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logprobs: Option<u32>,
        /// Repeat the prompt in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        echo: Option<bool>,
        /// Text after the completion (insertion).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        suffix: Option<String>,
        /// Generate this many and return the best.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        best_of: Option<u32>,
    }
}

/// How a client words a request beyond what the [`GenerateRequest`] says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// Ask for the final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Also send the sampling fields OpenAI does not know (`top_k`, `min_p`,
    /// `repetition_penalty` and `repeat_penalty`).
    pub extended_sampling: bool,
}

/// A request body for either endpoint, as a client sends it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RequestBody {
    /// For `/v1/chat/completions`.
    Chat(ChatRequest),
    /// For `/v1/completions`.
    Completion(CompletionRequest),
}

impl RequestBody {
    /// The streamed (`stream: true`) request for `request`, to `model`: a chat
    /// prompt goes to the chat endpoint, text or token ids to completions.
    pub fn streaming(request: &GenerateRequest, model: &str, options: ClientOptions) -> Self {
        let extended = options.extended_sampling;
        let sampling = Sampling {
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            top_p: request.top_p,
            top_k: request.top_k.filter(|_| extended),
            min_p: request.min_p.filter(|_| extended),
            repeat_penalty: request.repeat_penalty.filter(|_| extended),
            repetition_penalty: request.repeat_penalty.filter(|_| extended),
            frequency_penalty: request.frequency_penalty,
            presence_penalty: request.presence_penalty,
            seed: request.seed,
            stop: (!request.stop.is_empty()).then(|| StopField::Many(request.stop.clone())),
            n: None,
            ignore_eos: (request.ignore_eos && extended).then_some(true),
        };
        let stream_options = options.include_usage.then_some(StreamOptions {
            include_usage: Some(true),
        });
        let prompt = match &request.prompt {
            Prompt::Chat(messages) => {
                let mut body = ChatRequest {
                    model: Some(model.to_string()),
                    messages: messages.iter().map(ChatMessage::from).collect(),
                    stream: Some(true),
                    stream_options,
                    logprobs: request.logprobs.map(|_| true),
                    top_logprobs: request.logprobs,
                    response_format: match &request.constraint {
                        Some(c) => c.to_response_format(),
                        None => request.response_format.clone(),
                    },
                    tools: request.tools.clone(),
                    tool_choice: request.tool_choice.clone(),
                    parallel_tool_calls: request.parallel_tool_calls,
                    ..ChatRequest::default()
                };
                body.set_sampling(sampling);
                return RequestBody::Chat(body);
            }
            Prompt::Text(text) => PromptField::Text(text.clone()),
            Prompt::Tokens(ids) => PromptField::Tokens(ids.clone()),
        };
        let mut body = CompletionRequest {
            model: Some(model.to_string()),
            prompt,
            stream: Some(true),
            stream_options,
            logprobs: request.logprobs,
            ..CompletionRequest::default()
        };
        body.set_sampling(sampling);
        RequestBody::Completion(body)
    }

    /// The endpoint the body goes to.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            RequestBody::Chat(_) => Endpoint::Chat,
            RequestBody::Completion(_) => Endpoint::Completions,
        }
    }
}

/// Most alternatives per token that `top_logprobs` / `logprobs` may ask for.
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// Checks one optional number against a closed range.
fn check_range(param: &str, value: Option<f32>, lo: f32, hi: f32) -> Result<(), RequestError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(RequestError::param(
            param,
            format!("`{param}` is {v}; it must be between {lo} and {hi}"),
        )),
        _ => Ok(()),
    }
}

/// Fills `req` with the shared sampling fields, after checking them.
fn apply_sampling(
    req: &mut GenerateRequest,
    s: Sampling,
    max_tokens: Option<u32>,
) -> Result<(), RequestError> {
    if let Some(n) = s.n {
        if n != 1 {
            return Err(RequestError::param(
                "n",
                format!("`n` is {n}; this server makes one choice per request"),
            ));
        }
    }
    let max_tokens = max_tokens.or(s.max_tokens);
    if max_tokens == Some(0) {
        return Err(RequestError::param(
            "max_tokens",
            "`max_tokens` must be at least 1",
        ));
    }
    check_range("temperature", s.temperature, 0.0, 100.0)?;
    check_range("top_p", s.top_p, 0.0, 1.0)?;
    check_range("min_p", s.min_p, 0.0, 1.0)?;
    check_range("frequency_penalty", s.frequency_penalty, -2.0, 2.0)?;
    check_range("presence_penalty", s.presence_penalty, -2.0, 2.0)?;
    check_range("repeat_penalty", s.repeat_penalty, 0.0, 100.0)?;
    check_range("repetition_penalty", s.repetition_penalty, 0.0, 100.0)?;
    let stop = s.stop.map(StopField::into_vec).unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(RequestError::param(
            "stop",
            "stop strings must not be empty",
        ));
    }
    req.max_tokens = max_tokens;
    req.temperature = s.temperature;
    req.top_p = s.top_p;
    req.top_k = s.top_k;
    req.min_p = s.min_p;
    req.repeat_penalty = s.repeat_penalty.or(s.repetition_penalty);
    req.frequency_penalty = s.frequency_penalty;
    req.presence_penalty = s.presence_penalty;
    req.seed = s.seed;
    req.stop = stop;
    req.ignore_eos = s.ignore_eos.unwrap_or(false);
    Ok(())
}

/// Whether `response_format` asks for structured output (not plain text).
fn wants_structured_output(format: &Value) -> bool {
    !matches!(format.get("type").and_then(Value::as_str), Some("text"))
}

impl ChatRequest {
    /// The generator's request, checked against what the generator can honour.
    pub fn into_generate(mut self, caps: &Capabilities) -> Result<GenerateRequest, RequestError> {
        let sampling = self.take_sampling();
        if self.messages.is_empty() {
            return Err(RequestError::param(
                "messages",
                "`messages` must hold at least one message",
            ));
        }
        let messages = self
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| m.into_message(i))
            .collect::<Result<Vec<_>, _>>()?;
        let mut req = GenerateRequest::chat(messages);
        req.model = self.model;
        apply_sampling(&mut req, sampling, self.max_completion_tokens)?;
        if self.logprobs == Some(true) {
            let k = self.top_logprobs.unwrap_or(0);
            if k > MAX_TOP_LOGPROBS {
                return Err(RequestError::param(
                    "top_logprobs",
                    format!("`top_logprobs` is {k}; at most {MAX_TOP_LOGPROBS}"),
                ));
            }
            req.logprobs = Some(k);
        } else if self.top_logprobs.is_some_and(|k| k > 0) {
            return Err(RequestError::param(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        let tools = self.tools.filter(|t| !t.is_null());
        let choice = self.tool_choice.filter(|c| !c.is_null());
        // Checked here so that a bad list or choice is a 400 naming its field.
        foehn_core::tool_request(tools.as_ref(), choice.as_ref()).map_err(|e| {
            let param =
                if choice.is_some() && foehn_core::tool_request(tools.as_ref(), None).is_ok() {
                    "tool_choice"
                } else {
                    "tools"
                };
            RequestError::param(param, e.to_string())
        })?;
        if tools
            .as_ref()
            .is_some_and(|t| t.as_array().is_some_and(|l| !l.is_empty()))
            && !caps.tools
        {
            return Err(RequestError::param(
                "tools",
                "this model does not support tool calls",
            ));
        }
        req.tools = tools;
        req.tool_choice = choice;
        req.parallel_tool_calls = self.parallel_tool_calls;
        if let Some(format) = self.response_format.filter(|f| !f.is_null()) {
            if wants_structured_output(&format) && !caps.json_schema {
                return Err(RequestError::param(
                    "response_format",
                    "this model does not support structured output (only {\"type\": \"text\"})",
                ));
            }
            Constraint::from_response_format(&format)
                .map_err(|e| RequestError::param("response_format", e.to_string()))?;
            req.response_format = Some(format);
        }
        Ok(req)
    }
}

impl CompletionRequest {
    /// The generator's request, checked against what the generator can honour.
    pub fn into_generate(mut self, caps: &Capabilities) -> Result<GenerateRequest, RequestError> {
        let sampling = self.take_sampling();
        let one = |n: usize| {
            if n == 1 {
                Ok(())
            } else {
                Err(RequestError::param(
                    "prompt",
                    format!("`prompt` holds {n} prompts; this server takes one"),
                ))
            }
        };
        let prompt = match self.prompt {
            PromptField::Text(t) => Prompt::Text(t),
            PromptField::Tokens(ids) => Prompt::Tokens(ids),
            PromptField::Texts(mut v) => {
                one(v.len())?;
                Prompt::Text(v.remove(0))
            }
            PromptField::TokenLists(mut v) => {
                one(v.len())?;
                Prompt::Tokens(v.remove(0))
            }
        };
        if let Prompt::Tokens(ids) = &prompt {
            if ids.is_empty() {
                return Err(RequestError::param("prompt", "the prompt has no tokens"));
            }
            if !caps.token_prompts {
                return Err(RequestError::param(
                    "prompt",
                    "this model does not take token-id prompts",
                ));
            }
        }
        if self.echo == Some(true) {
            return Err(RequestError::param("echo", "`echo` is not supported"));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(RequestError::param("suffix", "`suffix` is not supported"));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(RequestError::param("best_of", "`best_of` must be 1"));
        }
        let mut req = GenerateRequest::new(prompt);
        req.model = self.model;
        apply_sampling(&mut req, sampling, None)?;
        if let Some(k) = self.logprobs {
            if k > MAX_TOP_LOGPROBS {
                return Err(RequestError::param(
                    "logprobs",
                    format!("`logprobs` is {k}; at most {MAX_TOP_LOGPROBS}"),
                ));
            }
            req.logprobs = Some(k);
        }
        Ok(req)
    }
}
