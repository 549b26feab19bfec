//! OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`) and
//! their translation into a [`GenerateRequest`].

use foehn_core::{Capabilities, GenerateRequest, Message, Prompt, Role};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// Parses a JSON body into `T`, naming the offending field on a type error.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid(
            "the request body is empty: expected a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("the request body is not valid JSON: {inner}"))
        } else if path.is_empty() || path == "." {
            ApiError::invalid(format!("invalid request body: {inner}"))
        } else {
            ApiError::invalid_param(path.clone(), format!("invalid value for `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

/// `stop`: one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    /// Send a last chunk with the token counts (and `"usage": null` in the others).
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// A chat message's `content`: text, or a list of parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a multi-part message.
#[derive(Debug, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// One message of `messages`.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// The sampling fields both endpoints share (and foehn's extensions: `top_k`,
/// `min_p`, `repeat_penalty`).
#[derive(Debug, Default)]
pub(crate) struct Sampling {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub n: Option<u32>,
}

/// A request body struct with the [`Sampling`] fields inline (not
/// `#[serde(flatten)]`, which would hide the failing field's name from
/// error messages) and a `sampling()` method that moves them out.
macro_rules! with_sampling {
    ($(#[$meta:meta])* struct $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize)]
        pub(crate) struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            #[serde(default)] pub max_tokens: Option<u32>,
            #[serde(default)] pub temperature: Option<f32>,
            #[serde(default)] pub top_p: Option<f32>,
            #[serde(default)] pub top_k: Option<u32>,
            #[serde(default)] pub min_p: Option<f32>,
            #[serde(default)] pub repeat_penalty: Option<f32>,
            #[serde(default)] pub frequency_penalty: Option<f32>,
            #[serde(default)] pub presence_penalty: Option<f32>,
            #[serde(default)] pub seed: Option<i64>,
            #[serde(default)] pub stop: Option<StopField>,
            #[serde(default)] pub n: Option<u32>,
        }

        impl $name {
            /// Moves the sampling fields out.
            fn sampling(&mut self) -> Sampling {
                Sampling {
                    max_tokens: self.max_tokens.take(),
                    temperature: self.temperature.take(),
                    top_p: self.top_p.take(),
                    top_k: self.top_k.take(),
                    min_p: self.min_p.take(),
                    repeat_penalty: self.repeat_penalty.take(),
                    frequency_penalty: self.frequency_penalty.take(),
                    presence_penalty: self.presence_penalty.take(),
                    seed: self.seed.take(),
                    stop: self.stop.take(),
                    n: self.n.take(),
                }
            }
        }
    };
}

with_sampling! {
    /// A `POST /v1/chat/completions` body.
    struct ChatRequest {
        #[serde(default)]
        model: Option<String>,
        messages: Vec<ChatMessage>,
        #[serde(default)]
        max_completion_tokens: Option<u32>,
        #[serde(default)]
        stream: Option<bool>,
        #[serde(default)]
        stream_options: Option<StreamOptions>,
        #[serde(default)]
        logprobs: Option<bool>,
        #[serde(default)]
        top_logprobs: Option<u32>,
        #[serde(default)]
        response_format: Option<Value>,
        #[serde(default)]
        tools: Option<Value>,
    }
}

/// `prompt` of `/v1/completions`: text, token ids, or a batch of one of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum PromptField {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

with_sampling! {
    /// A `POST /v1/completions` body.
    struct CompletionRequest {
        #[serde(default)]
        model: Option<String>,
        prompt: PromptField,
        #[serde(default)]
        stream: Option<bool>,
        #[serde(default)]
        stream_options: Option<StreamOptions>,
        #[serde(default)]
        logprobs: Option<u32>,
        #[serde(default)]
        echo: Option<bool>,
        #[serde(default)]
        suffix: Option<String>,
        #[serde(default)]
        best_of: Option<u32>,
    }
}

/// Most alternatives per token that `top_logprobs` / `logprobs` may ask for.
const MAX_TOP_LOGPROBS: u32 = 20;

fn role(name: &str, index: usize) -> Result<Role, ApiError> {
    match name {
        "system" | "developer" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" | "function" => Ok(Role::Tool),
        other => Err(ApiError::invalid_param(
            format!("messages[{index}].role"),
            format!("unknown role {other:?}: expected system, developer, user, assistant or tool"),
        )),
    }
}

fn message(index: usize, m: ChatMessage) -> Result<Message, ApiError> {
    let role = role(&m.role, index)?;
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    ("text", None) => {
                        return Err(ApiError::invalid_param(
                            format!("messages[{index}].content[{j}].text"),
                            "a text part needs `text`",
                        ))
                    }
                    (other, _) => {
                        return Err(ApiError::invalid_param(
                            format!("messages[{index}].content[{j}].type"),
                            format!("content parts of type {other:?} are not supported: text only"),
                        ))
                    }
                }
            }
            text
        }
    };
    Ok(Message::new(role, content))
}

/// Checks one optional number against a closed range.
fn check_range(param: &str, value: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(ApiError::invalid_param(
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
) -> Result<(), ApiError> {
    if let Some(n) = s.n {
        if n != 1 {
            return Err(ApiError::invalid_param(
                "n",
                format!("`n` is {n}; this server makes one choice per request"),
            ));
        }
    }
    let max_tokens = max_tokens.or(s.max_tokens);
    if max_tokens == Some(0) {
        return Err(ApiError::invalid_param(
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
    let stop = s.stop.map(StopField::into_vec).unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param(
            "stop",
            "stop strings must not be empty",
        ));
    }
    req.max_tokens = max_tokens;
    req.temperature = s.temperature;
    req.top_p = s.top_p;
    req.top_k = s.top_k;
    req.min_p = s.min_p;
    req.repeat_penalty = s.repeat_penalty;
    req.frequency_penalty = s.frequency_penalty;
    req.presence_penalty = s.presence_penalty;
    // OpenAI seeds are signed 64-bit integers; keep their bits.
    req.seed = s.seed.map(|v| v as u64);
    req.stop = stop;
    Ok(())
}

/// Whether `response_format` asks for structured output (not plain text).
fn wants_structured_output(format: &Value) -> bool {
    !matches!(format.get("type").and_then(Value::as_str), Some("text"))
}

impl ChatRequest {
    /// The generator's request, checked against what the generator can honour.
    pub(crate) fn into_generate(
        mut self,
        caps: &Capabilities,
    ) -> Result<GenerateRequest, ApiError> {
        let sampling = self.sampling();
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must hold at least one message",
            ));
        }
        let messages = self
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut req = GenerateRequest::chat(messages);
        req.model = self.model;
        apply_sampling(&mut req, sampling, self.max_completion_tokens)?;
        if self.logprobs == Some(true) {
            let k = self.top_logprobs.unwrap_or(0);
            if k > MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    format!("`top_logprobs` is {k}; at most {MAX_TOP_LOGPROBS}"),
                ));
            }
            req.logprobs = Some(k);
        } else if self.top_logprobs.is_some_and(|k| k > 0) {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        if let Some(tools) = self.tools.filter(|t| !t.is_null()) {
            if !caps.tools {
                return Err(ApiError::invalid_param(
                    "tools",
                    "this model does not support tool calls",
                ));
            }
            req.tools = Some(tools);
        }
        if let Some(format) = self.response_format.filter(|f| !f.is_null()) {
            if wants_structured_output(&format) && !caps.json_schema {
                return Err(ApiError::invalid_param(
                    "response_format",
                    "this model does not support structured output (only {\"type\": \"text\"})",
                ));
            }
            req.response_format = Some(format);
        }
        Ok(req)
    }
}

impl CompletionRequest {
    /// The generator's request, checked against what the generator can honour.
    pub(crate) fn into_generate(
        mut self,
        caps: &Capabilities,
    ) -> Result<GenerateRequest, ApiError> {
        let sampling = self.sampling();
        let one = |n: usize| {
            if n == 1 {
                Ok(())
            } else {
                Err(ApiError::invalid_param(
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
                return Err(ApiError::invalid_param(
                    "prompt",
                    "the prompt has no tokens",
                ));
            }
            if !caps.token_prompts {
                return Err(ApiError::invalid_param(
                    "prompt",
                    "this model does not take token-id prompts",
                ));
            }
        }
        if self.echo == Some(true) {
            return Err(ApiError::invalid_param("echo", "`echo` is not supported"));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_param(
                "suffix",
                "`suffix` is not supported",
            ));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::invalid_param("best_of", "`best_of` must be 1"));
        }
        let mut req = GenerateRequest::new(prompt);
        req.model = self.model;
        apply_sampling(&mut req, sampling, None)?;
        if let Some(k) = self.logprobs {
            if k > MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid_param(
                    "logprobs",
                    format!("`logprobs` is {k}; at most {MAX_TOP_LOGPROBS}"),
                ));
            }
            req.logprobs = Some(k);
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(json: &str) -> Result<GenerateRequest, ApiError> {
        parse_body::<ChatRequest>(json.as_bytes())?.into_generate(&Capabilities::default())
    }

    fn completion(json: &str) -> Result<GenerateRequest, ApiError> {
        let caps = Capabilities {
            token_prompts: true,
            ..Capabilities::default()
        };
        parse_body::<CompletionRequest>(json.as_bytes())?.into_generate(&caps)
    }

    #[test]
    fn chat_fields_reach_the_generate_request() {
        let req = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
                "max_tokens":5,"temperature":0.5,"top_p":0.9,"seed":-1,"stop":"\n","logprobs":true,
                "top_logprobs":2,"response_format":{"type":"text"},"user":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(req.model.as_deref(), Some("m"));
        assert_eq!(
            req.prompt,
            Prompt::Chat(vec![Message::system("be brief"), Message::user("hi there")])
        );
        assert_eq!(
            (req.max_tokens, req.temperature, req.top_p),
            (Some(5), Some(0.5), Some(0.9))
        );
        assert_eq!(req.seed, Some(u64::MAX));
        assert_eq!(req.stop, vec!["\n".to_string()]);
        assert_eq!(req.logprobs, Some(2));
        // max_completion_tokens wins over max_tokens.
        let req = chat(
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":5,"max_completion_tokens":7}"#,
        );
        assert_eq!(req.unwrap().max_tokens, Some(7));
    }

    #[test]
    fn bad_chat_requests_name_the_field() {
        let cases = [
            (r#"{"messages":[]}"#, Some("messages")),
            (
                r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
                Some("messages[0].role"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                Some("temperature"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":99999999999}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#,
                Some("n"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"top_p":2}"#,
                Some("top_p"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
                Some("tools"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
                Some("response_format"),
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#,
                Some("messages[0].content[0].type"),
            ),
            (r#"{"messages":[{"role":"user","content":"x"}"#, None),
            (r#"[1,2]"#, None),
            (r#""#, None),
            (
                r#"{"messages":[{"role":"user","content":"x"}]} trailing"#,
                None,
            ),
        ];
        for (json, param) in cases {
            let e = chat(json).expect_err(json);
            assert_eq!(e.status.as_u16(), 400, "{json}: {e}");
            if param.is_some() {
                assert_eq!(e.param.as_deref(), param, "{json}: {e}");
            }
        }
        let e = parse_body::<ChatRequest>(b"{\"messages\": \"\xff\"}").unwrap_err();
        assert!(e.message.contains("UTF-8"), "{e}");
    }

    #[test]
    fn completion_prompts_take_text_ids_and_batches_of_one() {
        assert_eq!(
            completion(r#"{"prompt":"Once"}"#).unwrap().prompt,
            Prompt::Text("Once".into())
        );
        assert_eq!(
            completion(r#"{"prompt":["Once"]}"#).unwrap().prompt,
            Prompt::Text("Once".into())
        );
        assert_eq!(
            completion(r#"{"prompt":[1,2]}"#).unwrap().prompt,
            Prompt::Tokens(vec![1, 2])
        );
        assert_eq!(
            completion(r#"{"prompt":[[1,2]]}"#).unwrap().prompt,
            Prompt::Tokens(vec![1, 2])
        );
        assert_eq!(
            completion(r#"{"prompt":"x","logprobs":3}"#)
                .unwrap()
                .logprobs,
            Some(3)
        );
        for bad in [
            r#"{"prompt":["a","b"]}"#,
            r#"{"prompt":[]}"#,
            r#"{"prompt":"x","echo":true}"#,
            r#"{"prompt":"x","logprobs":50}"#,
            r#"{"prompt":{"x":1}}"#,
            r#"{}"#,
        ] {
            assert_eq!(
                completion(bad).expect_err(bad).status.as_u16(),
                400,
                "{bad}"
            );
        }
        let no_ids = parse_body::<CompletionRequest>(br#"{"prompt":[1]}"#).unwrap();
        assert!(no_ids.into_generate(&Capabilities::default()).is_err());
    }
}
