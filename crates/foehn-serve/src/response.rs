//! OpenAI response bodies ([`foehn_openai`]'s types): chat and text
//! completions, whole and as stream chunks, built from the generator's events.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use foehn_core::{collect_tool_calls, Completion, TokenEvent};
use foehn_openai::{
    finish_reason_name, ChatLogprobs, Choice, CompletionUsage, Delta, Endpoint, Logprobs, Response,
    ResponseMessage, TextLogprobs, ToolCallChunk,
};
use serde::Serialize;
use serde_json::Value;

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh response id (`chatcmpl-…`, `cmpl-…`): random per process, counted within it.
fn response_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    format!("{prefix}-{:016x}{n:x}", h.finish())
}

/// A body as JSON. The wire types have string keys only, so this does not
/// fail; if it did, the body would be `null`.
pub(crate) fn to_json(body: &impl Serialize) -> Value {
    serde_json::to_value(body).unwrap_or(Value::Null)
}

/// Builds the bodies of one response: all share its id, creation time and model.
#[derive(Debug, Clone)]
pub(crate) struct ResponseBuilder {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    /// Bytes of text streamed so far (text-completion `text_offset`).
    offset: usize,
}

impl ResponseBuilder {
    /// A builder for one response of `endpoint`.
    pub(crate) fn new(endpoint: Endpoint, model: &str, logprobs: bool) -> Self {
        Self {
            endpoint,
            id: response_id(endpoint.id_prefix()),
            created: unix_now(),
            model: model.to_string(),
            logprobs,
            offset: 0,
        }
    }

    /// The endpoint this response answers.
    pub(crate) fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The envelope around `choices`; `usage` as [`Response::usage`].
    fn envelope<L: Serialize>(
        &self,
        object: &str,
        choices: Vec<Choice<L>>,
        usage: Option<Option<CompletionUsage>>,
    ) -> Value {
        to_json(&Response {
            id: self.id.clone(),
            object: object.to_string(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage,
        })
    }

    /// The logprobs of `tokens` when they were asked for.
    fn logprobs<L: Logprobs>(&self, tokens: &[TokenEvent], offset: usize) -> Option<L> {
        self.logprobs.then(|| L::from_tokens(tokens, offset))
    }

    /// The whole response of a non-streaming request.
    pub(crate) fn full(&self, tokens: &[TokenEvent], done: &Completion) -> Value {
        // Chat answers keep reasoning apart; a text completion is all the text.
        let text_of = |reasoning: Option<bool>| -> String {
            tokens
                .iter()
                .filter(|t| reasoning.is_none_or(|r| t.reasoning == r))
                .map(|t| t.text.as_str())
                .collect()
        };
        let finish_reason = Some(finish_reason_name(done.finish_reason).to_string());
        let usage = Some(Some(CompletionUsage::from(&done.usage)));
        let object = self.endpoint.object();
        match self.endpoint {
            Endpoint::Chat => {
                let calls = collect_tool_calls(tokens.iter().flat_map(|t| &t.tool_calls));
                let content = text_of(Some(false));
                let choice = Choice::<ChatLogprobs> {
                    message: Some(ResponseMessage {
                        role: "assistant".into(),
                        // OpenAI: `null` content beside tool calls.
                        content: Some(content).filter(|c| !c.is_empty() || calls.is_empty()),
                        reasoning_content: Some(text_of(Some(true))).filter(|r| !r.is_empty()),
                        refusal: None,
                        tool_calls: calls.iter().map(ToolCallChunk::whole).collect(),
                    }),
                    logprobs: self.logprobs(tokens, 0),
                    finish_reason,
                    ..Choice::default()
                };
                self.envelope(object, vec![choice], usage)
            }
            Endpoint::Completions => {
                let choice = Choice::<TextLogprobs> {
                    text: Some(text_of(None)),
                    logprobs: self.logprobs(tokens, 0),
                    finish_reason,
                    ..Choice::default()
                };
                self.envelope(object, vec![choice], usage)
            }
        }
    }

    /// A chunk of one choice; with `with_usage`, its `"usage": null`
    /// (OpenAI sends it in every chunk but the last when usage is asked for).
    fn chunk<L: Serialize>(&self, choice: Choice<L>, with_usage: bool) -> Value {
        let usage = with_usage.then_some(None);
        self.envelope(self.endpoint.chunk_object(), vec![choice], usage)
    }

    /// A chat chunk with `delta`, or a text chunk with `text`.
    fn piece(
        &self,
        delta: Delta,
        tokens: &[TokenEvent],
        finish_reason: Option<String>,
        with_usage: bool,
    ) -> Value {
        // Chunks without a token (the role, the finish) have `"logprobs": null`.
        let logprobs = !tokens.is_empty();
        match self.endpoint {
            Endpoint::Chat => self.chunk(
                Choice::<ChatLogprobs> {
                    delta: Some(delta),
                    logprobs: self.logprobs(tokens, self.offset).filter(|_| logprobs),
                    finish_reason,
                    ..Choice::default()
                },
                with_usage,
            ),
            Endpoint::Completions => self.chunk(
                Choice::<TextLogprobs> {
                    text: Some(delta.content.unwrap_or_default()),
                    logprobs: self.logprobs(tokens, self.offset).filter(|_| logprobs),
                    finish_reason,
                    ..Choice::default()
                },
                with_usage,
            ),
        }
    }

    /// The first chat chunk: the assistant role, no text yet.
    pub(crate) fn role_chunk(&self, with_usage: bool) -> Value {
        let delta = Delta {
            role: Some("assistant".into()),
            content: Some(String::new()),
            ..Delta::default()
        };
        self.piece(delta, &[], None, with_usage)
    }

    /// A chunk carrying a token's text (and its logprobs when asked for); in
    /// a chat, reasoning goes in the delta's `reasoning_content`, not `content`.
    pub(crate) fn token_chunk(&mut self, t: &TokenEvent, with_usage: bool) -> Value {
        let chat = self.endpoint == Endpoint::Chat;
        // A token that only adds to tool calls has no `content`.
        let text =
            Some(t.text.clone()).filter(|x| !x.is_empty() || t.tool_calls.is_empty() || !chat);
        let mut delta = if t.reasoning && chat {
            Delta {
                reasoning_content: text,
                ..Delta::default()
            }
        } else {
            Delta {
                content: text,
                ..Delta::default()
            }
        };
        if chat {
            delta.tool_calls = t.tool_calls.iter().map(ToolCallChunk::piece).collect();
        }
        let chunk = self.piece(delta, std::slice::from_ref(t), None, with_usage);
        self.offset += t.text.len();
        chunk
    }

    /// The chunk with the finish reason.
    pub(crate) fn finish_chunk(&self, done: &Completion, with_usage: bool) -> Value {
        let reason = Some(finish_reason_name(done.finish_reason).to_string());
        self.piece(Delta::default(), &[], reason, with_usage)
    }

    /// The last chunk when `stream_options.include_usage` is set: no choices, the usage.
    pub(crate) fn usage_chunk(&self, done: &Completion) -> Value {
        let usage = Some(Some(CompletionUsage::from(&done.usage)));
        self.envelope::<ChatLogprobs>(self.endpoint.chunk_object(), Vec::new(), usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foehn_core::{FinishReason, Timings, Usage};
    use serde_json::json;

    fn token(text: &str, lp: Option<f32>) -> TokenEvent {
        TokenEvent {
            text: text.into(),
            id: Some(1),
            logprob: lp,
            top_logprobs: vec![(text.into(), lp.unwrap_or(0.0))],
            reasoning: false,
            tool_calls: Vec::new(),
        }
    }

    fn done() -> Completion {
        Completion {
            finish_reason: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                cached_tokens: 0,
            },
            timings: Timings::default(),
            served_by: Some("local".into()),
            tried: vec![],
            provider: None,
        }
    }

    #[test]
    fn chat_response_has_openais_shape() {
        let b = ResponseBuilder::new(Endpoint::Chat, "m", true);
        let v = b.full(
            &[token("He", Some(-0.5)), token("llo", Some(-1.0))],
            &done(),
        );
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "m");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["choices"][0]["logprobs"]["content"][1]["logprob"], -1.0);
        assert_eq!(v["usage"]["total_tokens"], 5);
    }

    #[test]
    fn chat_reasoning_is_reasoning_content() {
        let think = |text: &str| TokenEvent {
            reasoning: true,
            ..token(text, None)
        };
        let tokens = [think("Let me"), think(" see."), token("Yes", None)];
        let b = ResponseBuilder::new(Endpoint::Chat, "m", false);
        let message = &b.full(&tokens, &done())["choices"][0]["message"];
        assert_eq!(message["content"], "Yes");
        assert_eq!(message["reasoning_content"], "Let me see.");
        // Without reasoning the field is absent.
        let plain = &b.full(&tokens[2..], &done())["choices"][0]["message"];
        assert!(plain.get("reasoning_content").is_none());
        let mut b = ResponseBuilder::new(Endpoint::Chat, "m", false);
        let delta = b.token_chunk(&tokens[0], false)["choices"][0]["delta"].clone();
        assert_eq!(delta, json!({"reasoning_content": "Let me"}));
        let delta = b.token_chunk(&tokens[2], false)["choices"][0]["delta"].clone();
        assert_eq!(delta, json!({"content": "Yes"}));
        // A text completion is the whole continuation.
        let b = ResponseBuilder::new(Endpoint::Completions, "m", false);
        assert_eq!(
            b.full(&tokens, &done())["choices"][0]["text"],
            "Let me see.Yes"
        );
    }

    #[test]
    fn text_chunks_count_offsets() {
        let mut b = ResponseBuilder::new(Endpoint::Completions, "m", true);
        let first = b.token_chunk(&token("ab", Some(-0.5)), true);
        let second = b.token_chunk(&token("c", Some(-0.25)), true);
        assert_eq!(first["object"], "text_completion");
        assert_eq!(first["choices"][0]["text"], "ab");
        assert_eq!(second["choices"][0]["logprobs"]["text_offset"][0], 2);
        assert!(second["usage"].is_null() && second.get("usage").is_some());
        assert_eq!(
            b.finish_chunk(&done(), false)["choices"][0]["finish_reason"],
            "length"
        );
        let usage = b.usage_chunk(&done());
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 2);
        assert_ne!(
            ResponseBuilder::new(Endpoint::Completions, "m", false).id,
            b.id,
            "ids are unique"
        );
    }
}
