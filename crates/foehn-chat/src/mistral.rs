//! Mistral chat encoding as `mistral-common` does it: control tokens by id,
//! each message's text tokenized on its own.
//!
//! Rendering a Mistral template to text and tokenizing that text does not give
//! Mistral's ids with SentencePiece vocabularies: the text after `[INST]` /
//! `[/INST]` gets its own dummy prefix on top of the template's space
//! (`▁▁Hello` instead of `▁Hello`). This module follows mistral-common 1.13's
//! request normalizer and its v1/v2/v3/v7 instruct tokenizers instead, and
//! hands v11/v13 (tools, reasoning) to `mistral_v11`.

use foehn_tokenizer::{EncodeOptions, Tokenizer, TokenizerKind};

use crate::pyjson::PyJson;
use crate::{ChatError, Message, Result, Role};
use foehn_core::ToolCall;

/// Which of mistral-common's instruct tokenizers to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MistralVersion {
    /// v1 (Mistral 7B v0.1/v0.2): `[INST]` is plain text; `"[INST] {text} [/INST]"`
    /// is tokenized as one string; the system prompt goes before the first user message.
    V1,
    /// v2 (Mixtral 8x22B): `[INST]`/`[/INST]` control tokens; the system prompt
    /// goes before the last user message. Same ids as v3 for plain messages.
    V2,
    /// v3 (Mistral 7B v0.3, Nemo with Tekken, …): as v2 (they differ only in tool encoding).
    V3,
    /// v7 (Mistral Large 2411, Small 3, …): system prompts in place, between
    /// `[SYSTEM_PROMPT]` and `[/SYSTEM_PROMPT]`.
    V7,
    /// v11 (Mistral Small 3.2, Tekken): as v7, plus tool definitions before the
    /// last user message and tool calls as `[TOOL_CALLS]name[CALL_ID]id[ARGS]arguments`.
    V11,
    /// v13 (Magistral Small/Medium 1.1+, Devstral 2507, Ministral 3, Tekken): as
    /// v11 with the tool definitions before the first user message, no call ids,
    /// and an assistant's reasoning as `[THINK]…[/THINK]` before its answer.
    V13,
}

impl MistralVersion {
    /// The version a llama.cpp template name stands for (`"mistral-v3"` → v3).
    pub fn from_template_name(name: &str) -> Option<Self> {
        match name.trim() {
            "mistral-v1" => Some(Self::V1),
            "mistral-v3" | "mistral-v3-tekken" => Some(Self::V3),
            "mistral-v7" | "mistral-v7-tekken" => Some(Self::V7),
            _ => None,
        }
    }
}

/// The id of a vocabulary entry that is a control token (not plain text).
pub(crate) fn control_id(tokenizer: &Tokenizer, token: &str) -> Option<u32> {
    tokenizer
        .token_to_id(token)
        .filter(|&id| tokenizer.is_control(id))
}

/// Whether the tokenizer is a Mistral instruct one: `[INST]` and `[/INST]`
/// are control tokens (v2 and later; v1 vocabularies have no such tokens).
pub fn is_mistral_tokenizer(tokenizer: &Tokenizer) -> bool {
    control_id(tokenizer, "[INST]").is_some() && control_id(tokenizer, "[/INST]").is_some()
}

fn has_system_prompt_tokens(tokenizer: &Tokenizer) -> bool {
    control_id(tokenizer, "[SYSTEM_PROMPT]").is_some()
        && control_id(tokenizer, "[/SYSTEM_PROMPT]").is_some()
}

fn has_all_controls(tokenizer: &Tokenizer, tokens: &[&str]) -> bool {
    tokens.iter().all(|t| control_id(tokenizer, t).is_some())
}

/// The control tokens v11 and v13 need besides v7's.
const V11_TOKENS: [&str; 4] = ["[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[ARGS]", "[CALL_ID]"];

/// Whether a model should be prompted with [`encode_mistral_chat`], and with
/// which version; `None` means "render the chat template and tokenize it".
///
/// `template` is the model's chat template (`Tokenizer::chat_template`), a
/// llama.cpp name or Jinja:
/// * a Mistral name (`mistral-v1`, `mistral-v3[-tekken]`, `mistral-v7[-tekken]`)
///   gives its version (v3/v7 only when the vocabulary has the control tokens
///   they need); any other name gives `None`;
/// * Jinja that never writes `[INST]` is not a Mistral format (a fine-tune
///   with its own format keeps it); Mistral's official v1 template gives v1;
///   Jinja that writes `[SYSTEM_PROMPT]` and `[ARGS]` gives v11 when it also
///   writes `[CALL_ID]` (Mistral Small 3.2's template) and v13 when it does not
///   (Magistral's, Devstral 2507's, Ministral 3's: llama.cpp tells them apart
///   the same way), provided the vocabulary has those control tokens;
///   otherwise Jinja that writes `[SYSTEM_PROMPT]` gives v7 and other Jinja v3,
///   provided `[INST]`/`[/INST]` are control tokens;
/// * without a template, a `tekken.json`'s `"version"` decides (v3, v7, v11,
///   v13; a newer one gives `None`); otherwise `[INST]`/`[/INST]` control
///   tokens give v13 when `[THINK]`/`[/THINK]` and v11's tokens are control
///   tokens too, v11 with `[ARGS]`/`[CALL_ID]`, v7 for a SentencePiece
///   vocabulary that has `[SYSTEM_PROMPT]`/`[/SYSTEM_PROMPT]` (v7 added them
///   there), and v3 otherwise (Tekken vocabularies carry `[SYSTEM_PROMPT]`
///   whatever their version).
pub fn mistral_version(tokenizer: &Tokenizer, template: Option<&str>) -> Option<MistralVersion> {
    let by_vocab = |v7: bool| {
        if !is_mistral_tokenizer(tokenizer) {
            None
        } else if v7 && has_system_prompt_tokens(tokenizer) {
            Some(MistralVersion::V7)
        } else {
            Some(MistralVersion::V3)
        }
    };
    let v11_vocab = is_mistral_tokenizer(tokenizer) && has_all_controls(tokenizer, &V11_TOKENS);
    let Some(template) = template.map(str::trim).filter(|t| !t.is_empty()) else {
        if let Some(version) = tokenizer.tekken_version() {
            return match version {
                0..=3 => by_vocab(false),
                4..=7 => by_vocab(true),
                8..=11 => v11_vocab.then_some(MistralVersion::V11),
                12..=13 => v11_vocab.then_some(MistralVersion::V13),
                _ => None,
            };
        }
        if v11_vocab {
            let think = has_all_controls(tokenizer, &["[THINK]", "[/THINK]"]);
            return Some(if think {
                MistralVersion::V13
            } else {
                MistralVersion::V11
            });
        }
        let sentencepiece = matches!(
            tokenizer.kind(),
            TokenizerKind::SentencePiece | TokenizerKind::GgufLlama
        );
        return by_vocab(sentencepiece);
    };
    if crate::NAMED_TEMPLATES.contains(&template) {
        return match MistralVersion::from_template_name(template)? {
            MistralVersion::V1 => Some(MistralVersion::V1),
            version => by_vocab(version == MistralVersion::V7),
        };
    }
    if !template.contains("[INST]") {
        return None;
    }
    // llama.cpp's test for Mistral's official v1 template.
    if template.contains("' [INST] ' + system_message") {
        return Some(MistralVersion::V1);
    }
    if v11_vocab && template.contains("[SYSTEM_PROMPT]") && template.contains("[ARGS]") {
        return Some(if template.contains("[CALL_ID]") {
            MistralVersion::V11
        } else {
            MistralVersion::V13
        });
    }
    by_vocab(template.contains("[SYSTEM_PROMPT]"))
}

/// One message after mistral-common's normalization.
struct Turn {
    role: Role,
    content: String,
    /// An assistant turn's tool calls (v3, v7).
    calls: Vec<ToolCall>,
    /// The call a tool result answers.
    call_id: Option<String>,
}

impl Turn {
    fn new(role: Role, content: String) -> Self {
        Self {
            role,
            content,
            calls: Vec::new(),
            call_id: None,
        }
    }
}

/// mistral-common's `InstructRequestNormalizer` (v1–v3) / `…V7`: consecutive
/// messages of the same role merged (non-empty texts joined by a blank line,
/// tool calls gathered), tool messages kept apart; before v7 the system
/// messages are taken out and joined into one system prompt, and the
/// conversation must start with a user message (an empty one is inserted if
/// it does not).
fn normalize(messages: &[Message], version: MistralVersion) -> (Option<String>, Vec<Turn>) {
    let v7 = version == MistralVersion::V7;
    let mut system_parts = Vec::new();
    let mut turns = Vec::new();
    for group in messages.chunk_by(|a, b| a.role == b.role) {
        let role = group[0].role;
        match role {
            Role::System if v7 => {
                turns.extend(group.iter().map(|m| Turn::new(role, m.content.clone())))
            }
            Role::System => system_parts.extend(
                group
                    .iter()
                    .filter(|m| !m.content.is_empty())
                    .map(|m| m.content.clone()),
            ),
            Role::Tool => turns.extend(group.iter().map(|m| Turn {
                call_id: m.tool_call_id.clone(),
                ..Turn::new(role, m.content.clone())
            })),
            Role::User | Role::Assistant => {
                let texts: Vec<&str> = group
                    .iter()
                    .map(|m| m.content.as_str())
                    .filter(|c| !c.is_empty())
                    .collect();
                turns.push(Turn {
                    calls: group.iter().flat_map(|m| m.tool_calls.clone()).collect(),
                    ..Turn::new(role, texts.join("\n\n"))
                });
            }
        }
    }
    if turns.is_empty() || (!v7 && turns[0].role != Role::User) {
        turns.insert(0, Turn::new(Role::User, String::new()));
    }
    let system = (!system_parts.is_empty()).then(|| system_parts.join("\n\n"));
    (system, turns)
}

/// A JSON text as mistral-common's normalizer and v3 tokenizer read it
/// (`_normalize_json_content` then `_parse_json_content`): `{}` when empty,
/// the parsed value when it is JSON, else the text as a string.
fn json_or_text(text: &str) -> PyJson {
    if text.is_empty() {
        return PyJson::Object(Vec::new());
    }
    PyJson::parse(text).unwrap_or_else(|| PyJson::Str(text.to_owned()))
}

/// v3/v7 tool calls: `[TOOL_CALLS]` and the JSON list of `{"name",
/// "arguments", "id"}` (the id only when there is one).
fn encode_calls_json(
    text: &TextEncoder<'_>,
    tool_calls: u32,
    calls: &[ToolCall],
    ids: &mut Vec<u32>,
) -> Result<()> {
    let list = calls
        .iter()
        .map(|c| {
            let mut fields = vec![
                ("name".to_string(), PyJson::Str(c.name.clone())),
                ("arguments".to_string(), json_or_text(&c.arguments)),
            ];
            if let Some(id) = c.id.as_deref().filter(|id| !id.is_empty() && *id != "null") {
                fields.push(("id".to_string(), PyJson::Str(id.to_string())));
            }
            PyJson::Object(fields)
        })
        .collect();
    ids.push(tool_calls);
    text.encode(&PyJson::Array(list).dumps(), ids)
}

/// Tokenizes message text as mistral-common does: no BOS, no EOS, special-token
/// text as plain text, and nothing for an empty string.
pub(crate) struct TextEncoder<'a> {
    tokenizer: &'a Tokenizer,
    /// The EOS the tokenizer appends by itself (`add_eos_token`), to remove.
    appended_eos: Option<u32>,
}

impl<'a> TextEncoder<'a> {
    const OPTIONS: EncodeOptions = EncodeOptions {
        add_bos: Some(false),
        parse_special: false,
    };

    pub(crate) fn new(tokenizer: &'a Tokenizer) -> Result<Self> {
        let probe = tokenizer.encode("a", Self::OPTIONS)?;
        let appended_eos = tokenizer
            .eos_id()
            .filter(|&eos| probe.len() > 1 && probe.last() == Some(&eos));
        Ok(Self {
            tokenizer,
            appended_eos,
        })
    }

    pub(crate) fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let mut ids = self.tokenizer.encode(text, Self::OPTIONS)?;
        if self.appended_eos.is_some() && ids.last() == self.appended_eos.as_ref() {
            ids.pop();
        }
        out.extend_from_slice(&ids);
        Ok(())
    }
}

pub(crate) fn required_id(tokenizer: &Tokenizer, token: &str) -> Result<u32> {
    tokenizer
        .token_to_id(token)
        .ok_or_else(|| ChatError::MissingToken(token.to_string()))
}

/// Encodes a conversation into the token ids mistral-common's instruct
/// tokenizer of `version` gives (`encode_chat_completion(...).tokens`):
/// BOS; each user turn as `[INST]` + its text + `[/INST]` (v1: the text
/// `"[INST] {text} [/INST]"`); each assistant turn as its text (trailing
/// spaces removed from v2 on) + EOS; the system prompt before the first (v1)
/// or last (v2, v3) user message, or in place between `[SYSTEM_PROMPT]` and
/// `[/SYSTEM_PROMPT]` (v7). Every text is tokenized on its own, with
/// SentencePiece's dummy prefix for SentencePiece vocabularies and without
/// for Tekken, exactly as the tokenizer encodes a plain string.
///
/// v11 and v13 are described in [`encode_mistral_chat_with_tools`]; up to
/// v7, tool messages, tool calls and reasoning are refused, and so are
/// assistant messages without text.
///
/// A conversation ending with a user message is a prompt for the next answer.
pub fn encode_mistral_chat(
    tokenizer: &Tokenizer,
    messages: &[Message],
    version: MistralVersion,
) -> Result<Vec<u32>> {
    encode_mistral_chat_with_tools(tokenizer, messages, None, version)
}

/// [`encode_mistral_chat`] with the tool definitions the model may call
/// (OpenAI's `tools`: a list of `{"type": "function", "function": {"name",
/// "description", "parameters"}}`), from v3 on.
///
/// v3 and v7 follow mistral-common's `InstructTokenizerV3` / `…V7`: the
/// tools between `[AVAILABLE_TOOLS]` and `[/AVAILABLE_TOOLS]` before the
/// last user message; an assistant's tool calls as `[TOOL_CALLS]` and the
/// JSON list of `{"name", "arguments", "id"}` (v3: instead of text; v7:
/// after it); a tool result as `[TOOL_RESULTS]{"content": …, "call_id":
/// …}[/TOOL_RESULTS]` (v3, the content read as JSON where it is) or
/// `[TOOL_RESULTS]id[TOOL_CONTENT]text[/TOOL_RESULTS]` (v7).
///
/// v11 and v13 follow mistral-common's `InstructTokenizerV11` / `…V13` after
/// its `InstructRequestNormalizerV13`: system messages in place between
/// `[SYSTEM_PROMPT]` and `[/SYSTEM_PROMPT]`; the tools as Python's
/// `json.dumps` writes them between `[AVAILABLE_TOOLS]` and
/// `[/AVAILABLE_TOOLS]`, before the last (v11) or first (v13) user message;
/// an assistant message as its reasoning (v13: `[THINK]…[/THINK]`; refused by
/// v11), its text, its tool calls (`[TOOL_CALLS]name[CALL_ID]id[ARGS]arguments`
/// in v11, `[TOOL_CALLS]name[ARGS]arguments` in v13, arguments re-written as
/// Python's `json.dumps` does) and EOS; a tool message as
/// `[TOOL_RESULTS]id[TOOL_CONTENT]text[/TOOL_RESULTS]` (v11) or
/// `[TOOL_RESULTS]text[/TOOL_RESULTS]` (v13), each run of results in the
/// order of the calls they answer.
///
/// Object keys are written in the order `tools` holds them, as
/// mistral-common does (foehn's `serde_json` keeps insertion order).
pub fn encode_mistral_chat_with_tools(
    tokenizer: &Tokenizer,
    messages: &[Message],
    tools: Option<&serde_json::Value>,
    version: MistralVersion,
) -> Result<Vec<u32>> {
    match version {
        MistralVersion::V11 => {
            return crate::mistral_v11::encode_v11(tokenizer, messages, tools, false)
        }
        MistralVersion::V13 => {
            return crate::mistral_v11::encode_v11(tokenizer, messages, tools, true)
        }
        _ => {}
    }
    let tool_format = matches!(version, MistralVersion::V3 | MistralVersion::V7);
    if !tool_format {
        if tools
            .and_then(|t| t.as_array())
            .is_some_and(|t| !t.is_empty())
        {
            return Err(ChatError::InvalidConversation(
                "tool definitions need Mistral's v3 encoding or later".into(),
            ));
        }
        if messages
            .iter()
            .any(|m| !m.tool_calls.is_empty() || m.role == Role::Tool)
        {
            return Err(ChatError::InvalidConversation(
                "tool calls and tool results need Mistral's v3 encoding or later".into(),
            ));
        }
    }
    if messages.iter().any(|m| m.reasoning.is_some()) {
        return Err(ChatError::InvalidConversation(
            "reasoning needs Mistral's v13 encoding".into(),
        ));
    }
    encode_up_to_v7(tokenizer, messages, tools, version)
}

/// v1, v2, v3 and v7; tools, tool calls and tool results from v3 on.
fn encode_up_to_v7(
    tokenizer: &Tokenizer,
    messages: &[Message],
    tools: Option<&serde_json::Value>,
    version: MistralVersion,
) -> Result<Vec<u32>> {
    let text = TextEncoder::new(tokenizer)?;
    let bos = tokenizer
        .bos_id()
        .ok_or_else(|| ChatError::MissingToken("BOS".into()))?;
    let eos = tokenizer
        .eos_id()
        .ok_or_else(|| ChatError::MissingToken("EOS".into()))?;
    let inst = match version {
        MistralVersion::V1 => None,
        _ => Some((
            required_id(tokenizer, "[INST]")?,
            required_id(tokenizer, "[/INST]")?,
        )),
    };
    let tools = tools
        .map(crate::mistral_v11::tools_json)
        .transpose()?
        .flatten();
    let (system, turns) = normalize(messages, version);
    let first_user = turns.iter().position(|t| t.role == Role::User);
    let last_user = turns.iter().rposition(|t| t.role == Role::User);

    let mut ids = vec![bos];
    for (i, turn) in turns.iter().enumerate() {
        match turn.role {
            Role::User => {
                let system_here = match version {
                    MistralVersion::V1 => Some(i) == first_user,
                    MistralVersion::V2 | MistralVersion::V3 => Some(i) == last_user,
                    MistralVersion::V7 | MistralVersion::V11 | MistralVersion::V13 => false,
                };
                let content = match &system {
                    Some(system) if system_here => format!("{system}\n\n{}", turn.content),
                    _ => turn.content.clone(),
                };
                if let Some(tools) = tools.as_deref().filter(|_| Some(i) == last_user) {
                    ids.push(required_id(tokenizer, "[AVAILABLE_TOOLS]")?);
                    text.encode(tools, &mut ids)?;
                    ids.push(required_id(tokenizer, "[/AVAILABLE_TOOLS]")?);
                }
                match inst {
                    None => text.encode(&format!("[INST] {content} [/INST]"), &mut ids)?,
                    Some((begin, end)) => {
                        ids.push(begin);
                        text.encode(&content, &mut ids)?;
                        ids.push(end);
                    }
                }
            }
            Role::Assistant => {
                if turn.content.is_empty() && turn.calls.is_empty() {
                    return Err(ChatError::InvalidConversation(
                        "an assistant message has neither content nor tool calls".into(),
                    ));
                }
                if !turn.content.is_empty()
                    && !turn.calls.is_empty()
                    && version != MistralVersion::V7
                {
                    return Err(ChatError::InvalidConversation(
                        "Mistral's v3 encoding cannot have text and tool calls in one assistant \
                         message"
                            .into(),
                    ));
                }
                let content = match version {
                    MistralVersion::V1 => turn.content.as_str(),
                    _ => turn.content.trim_end_matches(' '),
                };
                text.encode(content, &mut ids)?;
                if !turn.calls.is_empty() {
                    let marker = required_id(tokenizer, "[TOOL_CALLS]")?;
                    encode_calls_json(&text, marker, &turn.calls, &mut ids)?;
                }
                ids.push(eos);
            }
            Role::System => {
                ids.push(required_id(tokenizer, "[SYSTEM_PROMPT]")?);
                text.encode(&turn.content, &mut ids)?;
                ids.push(required_id(tokenizer, "[/SYSTEM_PROMPT]")?);
            }
            Role::Tool => {
                let call_id = turn.call_id.as_deref().ok_or_else(|| {
                    ChatError::InvalidConversation(
                        "a tool message has no tool_call_id, which Mistral's encoding needs".into(),
                    )
                })?;
                ids.push(required_id(tokenizer, "[TOOL_RESULTS]")?);
                if version == MistralVersion::V7 {
                    // `[TOOL_RESULTS]id[TOOL_CONTENT]text[/TOOL_RESULTS]`, the text as given.
                    text.encode(call_id, &mut ids)?;
                    ids.push(required_id(tokenizer, "[TOOL_CONTENT]")?);
                    text.encode(&turn.content, &mut ids)?;
                } else {
                    // v3: `{"content": …, "call_id": …}`, the content read as JSON when it is.
                    let result = PyJson::Object(vec![
                        ("content".into(), json_or_text(&turn.content)),
                        ("call_id".into(), PyJson::Str(call_id.to_string())),
                    ]);
                    text.encode(&result.dumps(), &mut ids)?;
                }
                ids.push(required_id(tokenizer, "[/TOOL_RESULTS]")?);
            }
        }
    }
    Ok(ids)
}
