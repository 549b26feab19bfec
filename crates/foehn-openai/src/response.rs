//! Response bodies of both endpoints, whole (`chat.completion`,
//! `text_completion`) and streamed (`chat.completion.chunk`,
//! `text_completion`): one envelope, [`Response`], whose choices carry the
//! endpoint's logprobs ([`ChatLogprobs`] or [`TextLogprobs`]).
//!
//! Written as OpenAI writes them; read leniently (see the crate docs):
//! `choices` may be missing, `null` or hold junk, any field may be `null`.

use foehn_core::{TokenEvent, ToolCallDelta};
use serde::de::DeserializeOwned;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::lenient;

/// A whole answer or a stream chunk; `L` is the endpoint's logprobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "L: DeserializeOwned"))]
pub struct Response<L> {
    /// The response id (`chatcmpl-…`, `cmpl-…`), the same in every chunk.
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub id: String,
    /// `chat.completion`, `chat.completion.chunk` or `text_completion`.
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub object: String,
    /// Unix time of creation, in seconds.
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub created: u64,
    /// The model that answered.
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub model: String,
    /// The backend's configuration fingerprint (foehn sends `null`).
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub system_fingerprint: Option<String>,
    /// The choices (foehn makes one; a usage chunk has none).
    #[serde(default, deserialize_with = "lenient::items")]
    pub choices: Vec<Choice<L>>,
    /// Token counts: absent (outer `None`), `null` (`Some(None)`: a chunk
    /// before the last when `stream_options.include_usage` is set) or given.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::present"
    )]
    pub usage: Option<Option<CompletionUsage>>,
}

/// A chat answer or chunk.
pub type ChatResponse = Response<ChatLogprobs>;
/// A text-completion answer or chunk.
pub type TextResponse = Response<TextLogprobs>;

/// One choice. A whole chat answer has `message`, a chat chunk `delta`, a
/// text completion `text`; the others are left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "L: DeserializeOwned"))]
pub struct Choice<L> {
    /// Which choice (foehn reads choice 0; a missing index counts as 0).
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub index: u64,
    /// A whole chat answer's message.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub message: Option<ResponseMessage>,
    /// A chat chunk's increment.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub delta: Option<Delta>,
    /// A text completion's text (whole, or this chunk's piece).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub text: Option<String>,
    /// Log-probabilities, when asked for.
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub logprobs: Option<L>,
    /// Why generation ended (see [`crate::finish_reason_from_name`]); `null`
    /// until the last chunk.
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub finish_reason: Option<String>,
}

impl<L> Choice<L> {
    /// The text this choice carries: the delta's, the message's or `text`.
    pub fn content(&self) -> Option<&str> {
        self.delta
            .as_ref()
            .and_then(|d| d.content.as_deref())
            .or_else(|| self.message.as_ref().and_then(|m| m.content.as_deref()))
            .or(self.text.as_deref())
    }

    /// The reasoning this choice carries: the delta's or the message's
    /// `reasoning_content`.
    pub fn reasoning(&self) -> Option<&str> {
        self.delta
            .as_ref()
            .and_then(|d| d.reasoning_content.as_deref())
            .or_else(|| {
                self.message
                    .as_ref()
                    .and_then(|m| m.reasoning_content.as_deref())
            })
    }
}

impl<L> Choice<L> {
    /// The tool-call pieces this choice carries: the delta's, or the
    /// message's whole calls (index = place in the list).
    pub fn tool_calls(&self) -> Vec<ToolCallDelta> {
        let (list, whole) = match (&self.delta, &self.message) {
            (Some(d), _) if !d.tool_calls.is_empty() => (&d.tool_calls, false),
            (_, Some(m)) => (&m.tool_calls, true),
            _ => return Vec::new(),
        };
        list.iter()
            .enumerate()
            .map(|(i, c)| ToolCallDelta {
                index: if whole {
                    i as u32
                } else {
                    c.index.unwrap_or(i as u32)
                },
                id: c.id.clone(),
                name: c.function.name.clone(),
                arguments: c.function.arguments.clone().unwrap_or_default(),
            })
            .collect()
    }
}

/// A tool call in an answer (`message.tool_calls[i]`) or a piece of one in
/// a chunk (`delta.tool_calls[i]`, with its `index`; the id, type and name
/// only in a call's first piece).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallChunk {
    /// Which call a piece belongs to (chunks only).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub index: Option<u32>,
    /// The call's id.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub id: Option<String>,
    /// `function`.
    #[serde(
        rename = "type",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub kind: Option<String>,
    /// The function and (more of) its arguments.
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub function: FunctionChunk,
}

/// The function of a [`ToolCallChunk`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionChunk {
    /// Its name.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub name: Option<String>,
    /// Its arguments' JSON text (a chunk's piece of it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub arguments: Option<String>,
}

impl ToolCallChunk {
    /// A whole call of an answer.
    pub fn whole(call: &foehn_core::ToolCall) -> Self {
        Self {
            index: None,
            id: call.id.clone(),
            kind: Some("function".into()),
            function: FunctionChunk {
                name: Some(call.name.clone()),
                arguments: Some(call.arguments.clone()),
            },
        }
    }

    /// A piece of a call in a chunk.
    pub fn piece(delta: &ToolCallDelta) -> Self {
        Self {
            index: Some(delta.index),
            id: delta.id.clone(),
            kind: delta.id.as_ref().map(|_| "function".into()),
            function: FunctionChunk {
                name: delta.name.clone(),
                arguments: Some(delta.arguments.clone()),
            },
        }
    }
}

/// A whole chat answer's message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseMessage {
    /// `assistant`.
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub role: String,
    /// The text (`null` with tool calls).
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub content: Option<String>,
    /// The model's reasoning before its answer (`[THINK]` blocks), absent
    /// when there is none (the field of vLLM, DeepSeek and llama-server).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub reasoning_content: Option<String>,
    /// A refusal message (foehn sends `null`).
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub refusal: Option<String>,
    /// The tools the model called.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient::items"
    )]
    pub tool_calls: Vec<ToolCallChunk>,
}

/// A chat chunk's increment: the role in the first, text in the others,
/// nothing in the last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// `assistant`, in the first chunk.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub role: Option<String>,
    /// The next piece of text.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub content: Option<String>,
    /// The next piece of reasoning, in place of `content` while the model
    /// reasons (as [`ResponseMessage::reasoning_content`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub reasoning_content: Option<String>,
    /// Pieces of tool calls.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient::items"
    )]
    pub tool_calls: Vec<ToolCallChunk>,
}

/// `usage`. Written with all three counts; read with whichever are there
/// (a count that is not a `u32` reads as missing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionUsage {
    /// Tokens in the prompt.
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub prompt_tokens: Option<u32>,
    /// Tokens generated.
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub completion_tokens: Option<u32>,
    /// Their sum.
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub total_tokens: Option<u32>,
    /// Where the prompt's tokens came from (sent when some came from a cache).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens taken from a cache instead of computed.
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub cached_tokens: Option<u32>,
}

impl From<&foehn_core::Usage> for CompletionUsage {
    fn from(u: &foehn_core::Usage) -> Self {
        Self {
            prompt_tokens: Some(u.prompt_tokens),
            completion_tokens: Some(u.completion_tokens),
            total_tokens: Some(u.prompt_tokens.saturating_add(u.completion_tokens)),
            prompt_tokens_details: (u.cached_tokens > 0).then_some(PromptTokensDetails {
                cached_tokens: Some(u.cached_tokens),
            }),
        }
    }
}

impl CompletionUsage {
    /// foehn's usage, when the server gave either count (a missing one is 0).
    pub fn to_core(&self) -> Option<foehn_core::Usage> {
        let (p, c) = (self.prompt_tokens, self.completion_tokens);
        (p.is_some() || c.is_some()).then(|| foehn_core::Usage {
            prompt_tokens: p.unwrap_or(0),
            completion_tokens: c.unwrap_or(0),
            cached_tokens: self
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        })
    }
}

/// One token of a choice's logprobs: its text, log-probability and the
/// alternatives with theirs.
pub type LogprobEntry = (String, f32, Vec<(String, f32)>);

/// What both endpoints' logprobs do: be built from tokens, be read back per token.
pub trait Logprobs: Sized {
    /// The logprobs of a run of tokens; `offset` = the text's length in bytes
    /// before them (text completions' `text_offset`).
    fn from_tokens(tokens: &[TokenEvent], offset: usize) -> Self;
    /// The tokens that have a text and a log-probability, in order.
    fn entries(&self) -> Vec<LogprobEntry>;
}

/// A chat choice's `logprobs`: `{"content": [...], "refusal": null}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    /// One entry per token (entries without a token text are skipped on reading).
    #[serde(default, deserialize_with = "lenient::items")]
    pub content: Vec<TokenLogprob>,
    /// The refusal's tokens, as `content` (foehn sends `null`).
    #[serde(default, deserialize_with = "lenient::list")]
    pub refusal: Option<Vec<TokenLogprob>>,
}

/// One token of [`ChatLogprobs::content`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability (`null` when unknown).
    pub logprob: Option<f32>,
    /// Its UTF-8 bytes.
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub bytes: Option<Vec<u8>>,
    /// The most likely alternatives.
    #[serde(default, deserialize_with = "lenient::items")]
    pub top_logprobs: Vec<TopLogprob>,
}

/// One alternative of [`TokenLogprob::top_logprobs`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The alternative's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub bytes: Option<Vec<u8>>,
}

impl From<&TokenEvent> for TokenLogprob {
    fn from(t: &TokenEvent) -> Self {
        Self {
            token: t.text.clone(),
            logprob: t.logprob,
            bytes: Some(t.text.as_bytes().to_vec()),
            top_logprobs: t
                .top_logprobs
                .iter()
                .map(|(text, lp)| TopLogprob {
                    token: text.clone(),
                    logprob: *lp,
                    bytes: Some(text.as_bytes().to_vec()),
                })
                .collect(),
        }
    }
}

impl Logprobs for ChatLogprobs {
    fn from_tokens(tokens: &[TokenEvent], _offset: usize) -> Self {
        Self {
            content: tokens.iter().map(TokenLogprob::from).collect(),
            refusal: None,
        }
    }

    fn entries(&self) -> Vec<LogprobEntry> {
        self.content
            .iter()
            .filter_map(|e| {
                let top = e
                    .top_logprobs
                    .iter()
                    .map(|a| (a.token.clone(), a.logprob))
                    .collect();
                Some((e.token.clone(), e.logprob?, top))
            })
            .collect()
    }
}

/// A text-completion choice's `logprobs`: parallel lists, one item per token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextLogprobs {
    /// The tokens' texts (`None` where an item is not a string).
    #[serde(default, deserialize_with = "lenient::each")]
    pub tokens: Vec<Option<String>>,
    /// Their log-probabilities (`None` where unknown).
    #[serde(default, deserialize_with = "lenient::each")]
    pub token_logprobs: Vec<Option<f32>>,
    /// The alternatives of each token.
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub top_logprobs: Vec<TopLogprobs>,
    /// Where each token starts in the text, in bytes.
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub text_offset: Vec<usize>,
}

impl Logprobs for TextLogprobs {
    fn from_tokens(tokens: &[TokenEvent], mut offset: usize) -> Self {
        let mut out = Self::default();
        for t in tokens {
            out.tokens.push(Some(t.text.clone()));
            out.token_logprobs.push(t.logprob);
            out.top_logprobs.push(TopLogprobs(t.top_logprobs.clone()));
            out.text_offset.push(offset);
            offset += t.text.len();
        }
        out
    }

    fn entries(&self) -> Vec<LogprobEntry> {
        self.tokens
            .iter()
            .zip(&self.token_logprobs)
            .enumerate()
            .filter_map(|(i, (t, l))| {
                let top = self
                    .top_logprobs
                    .get(i)
                    .map(|m| m.0.clone())
                    .unwrap_or_default();
                Some((t.clone()?, (*l)?, top))
            })
            .collect()
    }
}

/// One token's alternatives in a text completion: `{"text": logprob, …}`, in
/// the order given. Read leniently (in the order of `serde_json`'s maps): a value that is not a number is skipped,
/// and anything but an object reads as no alternatives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopLogprobs(pub Vec<(String, f32)>);

impl Serialize for TopLogprobs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TopLogprobs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Object(m) => TopLogprobs(
                m.into_iter()
                    .filter_map(|(k, v)| Some((k, v.as_f64()? as f32)))
                    .collect(),
            ),
            _ => TopLogprobs::default(),
        })
    }
}
