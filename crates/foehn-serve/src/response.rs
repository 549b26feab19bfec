//! OpenAI response bodies: chat and text completions, whole and as stream
//! chunks, built from the generator's events.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use foehn_core::{Completion, FinishReason, TokenEvent, Usage};
use serde_json::{json, Value};

/// Which endpoint a response belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Text,
}

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

/// OpenAI's name for a finish reason (a cancelled generation never reaches a
/// client, whose disconnect caused it; `stop` keeps the field valid if one does).
pub(crate) fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

/// `usage` with its total.
pub(crate) fn usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens.saturating_add(u.completion_tokens),
    })
}

/// One chat `logprobs.content` entry.
fn chat_logprob(t: &TokenEvent) -> Value {
    let top: Vec<Value> = t
        .top_logprobs
        .iter()
        .map(|(text, lp)| json!({"token": text, "logprob": lp, "bytes": text.as_bytes()}))
        .collect();
    json!({"token": t.text, "logprob": t.logprob, "bytes": t.text.as_bytes(), "top_logprobs": top})
}

/// Text-completion `logprobs` for a run of tokens, `offset` = the text length before them.
fn text_logprobs(tokens: &[TokenEvent], mut offset: usize) -> Value {
    let (mut texts, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for t in tokens {
        texts.push(t.text.clone());
        lps.push(t.logprob);
        let top: serde_json::Map<String, Value> = t
            .top_logprobs
            .iter()
            .map(|(s, lp)| (s.clone(), json!(lp)))
            .collect();
        tops.push(Value::Object(top));
        offsets.push(offset);
        offset += t.text.len();
    }
    json!({"tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
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
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Text => "cmpl",
        };
        Self {
            endpoint,
            id: response_id(prefix),
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

    fn envelope(&self, object: &str, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }

    /// The whole response of a non-streaming request.
    pub(crate) fn full(&self, tokens: &[TokenEvent], done: &Completion) -> Value {
        let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
        let reason = finish_reason(done.finish_reason);
        let mut body = match self.endpoint {
            Endpoint::Chat => {
                let logprobs = if self.logprobs {
                    json!({"content": tokens.iter().map(chat_logprob).collect::<Vec<_>>(), "refusal": null})
                } else {
                    Value::Null
                };
                self.envelope(
                    "chat.completion",
                    json!([{
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": null},
                        "logprobs": logprobs,
                        "finish_reason": reason,
                    }]),
                )
            }
            Endpoint::Text => {
                let logprobs = if self.logprobs {
                    text_logprobs(tokens, 0)
                } else {
                    Value::Null
                };
                self.envelope(
                    "text_completion",
                    json!([{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}]),
                )
            }
        };
        body["usage"] = usage(&done.usage);
        body
    }

    fn chunk(&self, choice: Value, with_usage: bool) -> Value {
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Text => "text_completion",
        };
        let mut chunk = self.envelope(object, json!([choice]));
        if with_usage {
            // OpenAI sends `"usage": null` in every chunk but the last when usage is asked for.
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The first chat chunk: the assistant role, no text yet.
    pub(crate) fn role_chunk(&self, with_usage: bool) -> Value {
        let choice = json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null});
        self.chunk(choice, with_usage)
    }

    /// A chunk carrying tokens' text (and their logprobs when asked for).
    pub(crate) fn token_chunk(&mut self, t: &TokenEvent, with_usage: bool) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let logprobs = if self.logprobs {
                    json!({"content": [chat_logprob(t)], "refusal": null})
                } else {
                    Value::Null
                };
                json!({"index": 0, "delta": {"content": t.text}, "logprobs": logprobs, "finish_reason": null})
            }
            Endpoint::Text => {
                let logprobs = if self.logprobs {
                    text_logprobs(std::slice::from_ref(t), self.offset)
                } else {
                    Value::Null
                };
                json!({"index": 0, "text": t.text, "logprobs": logprobs, "finish_reason": null})
            }
        };
        self.offset += t.text.len();
        self.chunk(choice, with_usage)
    }

    /// The chunk with the finish reason.
    pub(crate) fn finish_chunk(&self, done: &Completion, with_usage: bool) -> Value {
        let reason = finish_reason(done.finish_reason);
        let choice = match self.endpoint {
            Endpoint::Chat => {
                json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason})
            }
            Endpoint::Text => {
                json!({"index": 0, "text": "", "logprobs": null, "finish_reason": reason})
            }
        };
        self.chunk(choice, with_usage)
    }

    /// The last chunk when `stream_options.include_usage` is set: no choices, the usage.
    pub(crate) fn usage_chunk(&self, done: &Completion) -> Value {
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Text => "text_completion",
        };
        let mut chunk = self.envelope(object, json!([]));
        chunk["usage"] = usage(&done.usage);
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foehn_core::Timings;

    fn token(text: &str, lp: Option<f32>) -> TokenEvent {
        TokenEvent {
            text: text.into(),
            id: Some(1),
            logprob: lp,
            top_logprobs: vec![(text.into(), lp.unwrap_or(0.0))],
        }
    }

    fn done() -> Completion {
        Completion {
            finish_reason: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
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
    fn text_chunks_count_offsets() {
        let mut b = ResponseBuilder::new(Endpoint::Text, "m", true);
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
            ResponseBuilder::new(Endpoint::Text, "m", false).id,
            b.id,
            "ids are unique"
        );
    }
}
