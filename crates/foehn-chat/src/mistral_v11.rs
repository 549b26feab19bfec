//! mistral-common 1.13's v11 and v13 instruct tokenizers (Tekken models with
//! tool calls as `[TOOL_CALLS]name[ARGS]arguments` and, from v13, reasoning in
//! `[THINK]…[/THINK]`), after its `InstructRequestNormalizerV13`, which both use.
//!
//! * System messages stay in place: `[SYSTEM_PROMPT]text[/SYSTEM_PROMPT]`.
//! * The tool definitions go before the `[INST]` of the last (v11) or first
//!   (v13) user message: `[AVAILABLE_TOOLS]json[/AVAILABLE_TOOLS]`.
//! * An assistant message: its reasoning (v13) as `[THINK]text[/THINK]`, its
//!   text, then each tool call as `[TOOL_CALLS]name[CALL_ID]id[ARGS]arguments`
//!   (v11; `[CALL_ID]id` only with an id) or `[TOOL_CALLS]name[ARGS]arguments`
//!   (v13), then EOS.
//! * A tool result: `[TOOL_RESULTS]id[TOOL_CONTENT]text[/TOOL_RESULTS]` (v11) or
//!   `[TOOL_RESULTS]text[/TOOL_RESULTS]` (v13); consecutive results are put in
//!   the order of the calls they answer.

use foehn_tokenizer::Tokenizer;

use crate::mistral::{required_id, TextEncoder};
use crate::pyjson::PyJson;
use crate::{ChatError, Message, Result, Role};

/// mistral-common's separator between texts of merged messages.
const JOIN: &str = "\n\n";

/// A piece of an assistant message's content.
#[derive(Debug, Clone, PartialEq)]
enum Chunk {
    Text(String),
    Think(String),
}

/// A message's content after merging: plain text, or chunks once any is not text.
#[derive(Debug, Clone, PartialEq)]
enum Content {
    Text(String),
    Chunks(Vec<Chunk>),
}

impl Content {
    fn is_empty(&self) -> bool {
        match self {
            Content::Text(t) => t.is_empty(),
            Content::Chunks(c) => c.is_empty(),
        }
    }
}

/// One tool call after normalization: `arguments` is the JSON text to tokenize.
struct Call {
    name: String,
    id: Option<String>,
    arguments: String,
}

/// One message after mistral-common's `InstructRequestNormalizerV13`.
enum Turn {
    System(String),
    User(String),
    Assistant { content: Content, calls: Vec<Call> },
    Tool { call_id: String, content: String },
}

/// A message's content as mistral-common sees it: a string, or (with
/// reasoning) a closed think chunk followed by the text.
fn message_content(m: &Message) -> Content {
    match &m.reasoning {
        None => Content::Text(m.content.clone()),
        Some(reasoning) => {
            let mut chunks = vec![Chunk::Think(reasoning.clone())];
            if !m.content.is_empty() {
                chunks.push(Chunk::Text(m.content.clone()));
            }
            Content::Chunks(chunks)
        }
    }
}

/// `_aggregate_content_chunks_impl`: texts of different messages joined by a
/// blank line, adjacent text chunks too; other chunks kept between them.
fn merge_contents(contents: impl IntoIterator<Item = Content>) -> Content {
    let mut chunks = Vec::new();
    let mut text = String::new();
    let mut has_text = false;
    for content in contents {
        match content {
            c if c.is_empty() => continue,
            Content::Text(t) => {
                if has_text {
                    text.push_str(JOIN);
                }
                text.push_str(&t);
                has_text = true;
            }
            Content::Chunks(list) => {
                for chunk in list {
                    match chunk {
                        Chunk::Text(t) if t.is_empty() => {}
                        Chunk::Text(t) => {
                            // Between messages and between chunks alike: both joins are "\n\n".
                            if has_text {
                                text.push_str(JOIN);
                            }
                            text.push_str(&t);
                            has_text = true;
                        }
                        think => {
                            if has_text {
                                chunks.push(Chunk::Text(std::mem::take(&mut text)));
                                has_text = false;
                            }
                            chunks.push(think);
                        }
                    }
                }
            }
        }
    }
    if chunks.is_empty() {
        return Content::Text(text);
    }
    if has_text {
        chunks.push(Chunk::Text(text));
    }
    Content::Chunks(chunks)
}

/// Tool-call arguments as mistral-common tokenizes them: `{}` for none, JSON
/// re-written by Python's `json.dumps`, other text as a JSON string.
fn arguments_json(arguments: &str) -> String {
    if arguments.is_empty() {
        return "{}".into();
    }
    PyJson::parse(arguments)
        .unwrap_or_else(|| PyJson::Str(arguments.to_owned()))
        .dumps()
}

/// The call id mistral-common uses for a call without one.
const NO_ID: &str = "null";

/// `InstructRequestNormalizerV13`: consecutive user or assistant messages
/// merged, system and tool messages kept one by one, each run of tool results
/// sorted by the order of the latest calls, an empty user message when
/// nothing is left.
fn normalize(messages: &[Message]) -> Result<Vec<Turn>> {
    let mut turns = Vec::new();
    let mut latest_call_ids: Vec<String> = Vec::new();
    for group in messages.chunk_by(|a, b| a.role == b.role) {
        match group[0].role {
            Role::System => turns.extend(group.iter().map(|m| Turn::System(m.content.clone()))),
            Role::User => {
                let texts: Vec<&str> = group
                    .iter()
                    .map(|m| m.content.as_str())
                    .filter(|t| !t.is_empty())
                    .collect();
                turns.push(Turn::User(texts.join(JOIN)));
            }
            Role::Assistant => {
                let content = merge_contents(group.iter().map(message_content));
                let calls: Vec<Call> = group
                    .iter()
                    .flat_map(|m| &m.tool_calls)
                    .map(|c| Call {
                        name: c.name.clone(),
                        id: c.id.clone().filter(|id| !id.is_empty() && id != NO_ID),
                        arguments: arguments_json(&c.arguments),
                    })
                    .collect();
                latest_call_ids.extend(
                    calls
                        .iter()
                        .map(|c| c.id.clone().unwrap_or_else(|| NO_ID.into())),
                );
                turns.push(Turn::Assistant { content, calls });
            }
            Role::Tool => {
                let mut results = Vec::with_capacity(group.len());
                for (i, m) in group.iter().enumerate() {
                    let call_id = m.tool_call_id.clone().ok_or_else(|| {
                        ChatError::InvalidConversation(format!(
                            "tool message {i} of a run has no tool_call_id, which Mistral's v11+ encodings need"
                        ))
                    })?;
                    results.push((call_id, m.content.clone()));
                }
                // Python's dicts keep the last index of a repeated id.
                let last_index = |ids: &[&str], id: &str| ids.iter().rposition(|x| *x == id);
                let call_ids: Vec<&str> = latest_call_ids.iter().map(String::as_str).collect();
                let result_ids: Vec<String> = results.iter().map(|(id, _)| id.clone()).collect();
                let result_ids: Vec<&str> = result_ids.iter().map(String::as_str).collect();
                results.sort_by_key(|(id, _)| {
                    (
                        last_index(&call_ids, id).unwrap_or(usize::MAX),
                        last_index(&result_ids, id),
                    )
                });
                turns.extend(
                    results
                        .into_iter()
                        .map(|(call_id, content)| Turn::Tool { call_id, content }),
                );
                latest_call_ids.clear();
            }
        }
    }
    if turns.is_empty() {
        turns.push(Turn::User(String::new()));
    }
    Ok(turns)
}

/// The tool definitions as mistral-common writes them: a JSON list of
/// `{"type": "function", "function": {"name", "description", "parameters"}}`.
pub(crate) fn tools_json(tools: &serde_json::Value) -> Result<Option<String>> {
    let invalid = |what: String| ChatError::InvalidConversation(format!("tools: {what}"));
    let list = tools
        .as_array()
        .ok_or_else(|| invalid("not a list".into()))?;
    if list.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let function = tool
            .get("function")
            .ok_or_else(|| invalid(format!("tool {i} has no \"function\"")))?;
        let name = function
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| invalid(format!("tool {i} has no function name")))?;
        let description = function
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or_default();
        let parameters = match function.get("parameters") {
            None | Some(serde_json::Value::Null) => PyJson::Object(Vec::new()),
            Some(p) => PyJson::from_value(p),
        };
        out.push(PyJson::Object(vec![
            ("type".into(), PyJson::Str("function".into())),
            (
                "function".into(),
                PyJson::Object(vec![
                    ("name".into(), PyJson::Str(name.into())),
                    ("description".into(), PyJson::Str(description.into())),
                    ("parameters".into(), parameters),
                ]),
            ),
        ]));
    }
    Ok(Some(PyJson::Array(out).dumps()))
}

/// The control tokens of the v11/v13 formats.
struct Controls {
    bos: u32,
    eos: u32,
    inst: (u32, u32),
    system: (u32, u32),
    tools: (u32, u32),
    results: (u32, u32),
    tool_content: u32,
    tool_calls: u32,
    args: u32,
    call_id: u32,
}

impl Controls {
    fn new(tokenizer: &Tokenizer) -> Result<Self> {
        let id = |token: &str| required_id(tokenizer, token);
        let pair = |a: &str, b: &str| Ok::<_, ChatError>((id(a)?, id(b)?));
        Ok(Self {
            bos: tokenizer
                .bos_id()
                .ok_or_else(|| ChatError::MissingToken("BOS".into()))?,
            eos: tokenizer
                .eos_id()
                .ok_or_else(|| ChatError::MissingToken("EOS".into()))?,
            inst: pair("[INST]", "[/INST]")?,
            system: pair("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]")?,
            tools: pair("[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]")?,
            results: pair("[TOOL_RESULTS]", "[/TOOL_RESULTS]")?,
            tool_content: id("[TOOL_CONTENT]")?,
            tool_calls: id("[TOOL_CALLS]")?,
            args: id("[ARGS]")?,
            call_id: id("[CALL_ID]")?,
        })
    }
}

/// Encodes a conversation as mistral-common's `InstructTokenizerV11` (or
/// `…V13` when `v13`) does; see the module's description.
pub(crate) fn encode_v11(
    tokenizer: &Tokenizer,
    messages: &[Message],
    tools: Option<&serde_json::Value>,
    v13: bool,
) -> Result<Vec<u32>> {
    let text = TextEncoder::new(tokenizer)?;
    let c = Controls::new(tokenizer)?;
    let tools = tools.map(tools_json).transpose()?.flatten();
    let turns = normalize(messages)?;
    let is_user = |t: &Turn| matches!(t, Turn::User(_));
    let tools_at = if v13 {
        turns.iter().position(is_user)
    } else {
        turns.iter().rposition(is_user)
    };

    let mut ids = vec![c.bos];
    for (i, turn) in turns.iter().enumerate() {
        match turn {
            Turn::System(content) => {
                ids.push(c.system.0);
                text.encode(content, &mut ids)?;
                ids.push(c.system.1);
            }
            Turn::User(content) => {
                if let Some(tools) = tools.as_deref().filter(|_| Some(i) == tools_at) {
                    ids.push(c.tools.0);
                    text.encode(tools, &mut ids)?;
                    ids.push(c.tools.1);
                }
                ids.push(c.inst.0);
                text.encode(content, &mut ids)?;
                ids.push(c.inst.1);
            }
            Turn::Tool { call_id, content } => {
                ids.push(c.results.0);
                if !v13 {
                    text.encode(call_id, &mut ids)?;
                    ids.push(c.tool_content);
                }
                text.encode(content, &mut ids)?;
                ids.push(c.results.1);
            }
            Turn::Assistant { content, calls } => {
                if content.is_empty() && calls.is_empty() {
                    return Err(ChatError::InvalidConversation(
                        "an assistant message has neither content nor tool calls".into(),
                    ));
                }
                match content {
                    Content::Text(t) => text.encode(t.trim_end_matches(' '), &mut ids)?,
                    Content::Chunks(chunks) => {
                        for chunk in chunks {
                            match chunk {
                                Chunk::Text(t) => text.encode(t, &mut ids)?,
                                Chunk::Think(t) if v13 => {
                                    ids.push(required_id(tokenizer, "[THINK]")?);
                                    text.encode(t, &mut ids)?;
                                    ids.push(required_id(tokenizer, "[/THINK]")?);
                                }
                                Chunk::Think(_) => {
                                    return Err(ChatError::InvalidConversation(
                                        "Mistral's v11 encoding has no reasoning blocks (v13 has)"
                                            .into(),
                                    ))
                                }
                            }
                        }
                    }
                }
                for call in calls {
                    ids.push(c.tool_calls);
                    text.encode(&call.name, &mut ids)?;
                    match (&call.id, v13) {
                        (Some(id), false) => {
                            ids.push(c.call_id);
                            text.encode(id, &mut ids)?;
                        }
                        (None, true) => {
                            return Err(ChatError::InvalidConversation(format!(
                                "tool call {:?} has no id, which Mistral's v13 encoding needs",
                                call.name
                            )))
                        }
                        _ => {}
                    }
                    ids.push(c.args);
                    text.encode(&call.arguments, &mut ids)?;
                }
                ids.push(c.eos);
            }
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_texts_and_keeps_think_chunks_apart() {
        let text = |t: &str| Content::Text(t.into());
        assert_eq!(
            merge_contents([text("a"), text(""), text("b")]),
            text("a\n\nb")
        );
        let think =
            |r: &str, t: &str| Content::Chunks(vec![Chunk::Think(r.into()), Chunk::Text(t.into())]);
        assert_eq!(
            merge_contents([text("x"), think("r1", "a1"), think("r2", "a2")]),
            Content::Chunks(vec![
                Chunk::Text("x".into()),
                Chunk::Think("r1".into()),
                Chunk::Text("a1".into()),
                Chunk::Think("r2".into()),
                Chunk::Text("a2".into()),
            ])
        );
    }

    #[test]
    fn arguments_are_rewritten_as_python_json() {
        assert_eq!(arguments_json(""), "{}");
        assert_eq!(
            arguments_json(r#"{"b":1,"a":[2]}"#),
            r#"{"b": 1, "a": [2]}"#
        );
        assert_eq!(arguments_json("not json"), r#""not json""#);
    }
}
