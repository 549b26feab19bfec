//! Tool calls in a model's own syntax: which syntax it writes
//! ([`ToolFormat::detect`]), how the prompt offers it tools
//! ([`ToolPrompt`]), the grammar that holds its calls to the tools'
//! schemas ([`ToolFormat::grammar`]), and the parser that turns what it
//! writes into OpenAI-shaped calls as the tokens stream ([`ToolCallParser`]).
//!
//! Syntaxes:
//! * Mistral v3/v7: `[TOOL_CALLS]` then a JSON list of `{"name", "arguments"}`.
//! * Mistral v11/v13: `[TOOL_CALLS]name[ARGS]{…}` per call (v11 may put
//!   `[CALL_ID]id` before `[ARGS]`).
//! * Hermes (Qwen, SmolLM, Hermes, …): `<tool_call>\n{"name": …, "arguments":
//!   {…}}\n</tool_call>` per call, the markers being tokens or text.

use foehn_core::{ToolCallDelta, ToolCallIds, ToolChoice, ToolSpec};
use foehn_tokenizer::Tokenizer;
use serde_json::{json, Value};

use crate::{ChatTemplate, Message, MistralVersion, Role};

/// A marker of the call syntax: a token of its own, or text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// A single token (a control token, or an added token such as Qwen's `<tool_call>`).
    Token(u32),
    /// Text the model writes piece by piece.
    Text(String),
}

impl Marker {
    /// The marker for `text`: its token when the vocabulary has one, else the text.
    fn for_text(tokenizer: &Tokenizer, text: &str) -> Self {
        match tokenizer.token_to_id(text) {
            Some(id) => Marker::Token(id),
            None => Marker::Text(text.to_string()),
        }
    }

    /// The marker in llguidance's Lark: `<[id]>` or a string literal.
    fn lark(&self) -> String {
        match self {
            Marker::Token(id) => format!("<[{id}]>"),
            Marker::Text(t) => lark_string(t),
        }
    }
}

/// How a model writes its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolSyntax {
    /// Mistral v3/v7: `[TOOL_CALLS]` then a JSON list of `{"name", "arguments"}`.
    MistralJson {
        /// `[TOOL_CALLS]`.
        calls: u32,
    },
    /// Mistral v11/v13: `[TOOL_CALLS]name[ARGS]arguments` per call.
    MistralArgs {
        /// `[TOOL_CALLS]`.
        calls: u32,
        /// `[ARGS]`.
        args: u32,
        /// `[CALL_ID]`, which v11 may write before `[ARGS]`.
        call_id: Option<u32>,
    },
    /// `<tool_call>{"name": …, "arguments": …}</tool_call>` per call.
    Hermes {
        /// `<tool_call>`.
        open: Marker,
        /// `</tool_call>`.
        close: Marker,
    },
}

/// How the prompt offers the tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolPrompt {
    /// Mistral's own encoding ([`crate::encode_mistral_chat_with_tools`]).
    Mistral(MistralVersion),
    /// The chat template renders `tools` and `tool_calls` itself.
    Template,
    /// A ChatML template that knows nothing of tools: foehn writes the tools
    /// into the system message in the Hermes way (as Qwen's and Hermes'
    /// templates do), the calls into the assistant's text and the results
    /// between `<tool_response>` tags.
    Injected,
}

/// A model's tool-call format: its syntax and how its prompt offers tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolFormat {
    /// How the model writes calls.
    pub syntax: ToolSyntax,
    /// How the prompt offers the tools.
    pub prompt: ToolPrompt,
}

impl ToolFormat {
    /// The format of a model with this tokenizer, chat template and Mistral
    /// encoding (see [`crate::mistral_version`]): Mistral's from v3 on, the
    /// Hermes syntax for templates that write `<tool_call>` and for ChatML
    /// templates (offered as [`ToolPrompt::Injected`]); `None` for others
    /// (Mistral v1/v2, Llama 2, Gemma, … formats without tool calls here).
    pub fn detect(
        tokenizer: &Tokenizer,
        template: Option<&ChatTemplate>,
        mistral: Option<MistralVersion>,
    ) -> Option<Self> {
        if let Some(version) = mistral {
            let calls = tokenizer.token_to_id("[TOOL_CALLS]")?;
            let syntax = match version {
                MistralVersion::V3 | MistralVersion::V7 => ToolSyntax::MistralJson { calls },
                MistralVersion::V11 | MistralVersion::V13 => ToolSyntax::MistralArgs {
                    calls,
                    args: tokenizer.token_to_id("[ARGS]")?,
                    call_id: tokenizer
                        .token_to_id("[CALL_ID]")
                        .filter(|_| version == MistralVersion::V11),
                },
                MistralVersion::V1 | MistralVersion::V2 => return None,
            };
            return Some(Self {
                syntax,
                prompt: ToolPrompt::Mistral(version),
            });
        }
        let source = template?.source();
        let hermes = ToolSyntax::Hermes {
            open: Marker::for_text(tokenizer, "<tool_call>"),
            close: Marker::for_text(tokenizer, "</tool_call>"),
        };
        let prompt = if source.contains("<tool_call>") && source.contains("tools") {
            ToolPrompt::Template
        } else if source.contains("<|im_start|>") {
            ToolPrompt::Injected
        } else {
            return None;
        };
        Some(Self {
            syntax: hermes,
            prompt,
        })
    }

    /// Tokens of the syntax that must not end a generation (control tokens
    /// otherwise do).
    pub fn is_marker(&self, token: u32) -> bool {
        match &self.syntax {
            ToolSyntax::MistralJson { calls } => token == *calls,
            ToolSyntax::MistralArgs {
                calls,
                args,
                call_id,
            } => token == *calls || token == *args || Some(token) == *call_id,
            ToolSyntax::Hermes { open, close } => {
                [open, close].iter().any(|m| **m == Marker::Token(token))
            }
        }
    }

    /// The token that opens a call, when the syntax has one (a lazy
    /// grammar starts there).
    pub fn trigger_token(&self) -> Option<u32> {
        match &self.syntax {
            ToolSyntax::MistralJson { calls } | ToolSyntax::MistralArgs { calls, .. } => {
                Some(*calls)
            }
            ToolSyntax::Hermes {
                open: Marker::Token(id),
                ..
            } => Some(*id),
            ToolSyntax::Hermes { .. } => None,
        }
    }

    /// A Lark grammar (llguidance's dialect) for the calls `choice` asks
    /// for, from the first marker on: one call of any tool (`Required`,
    /// `Auto`; more when `parallel`), exactly one of the named function;
    /// each call's arguments valid under its tool's schema. `None` for
    /// [`ToolChoice::None`].
    pub fn grammar(
        &self,
        tools: &[ToolSpec],
        choice: &ToolChoice,
        parallel: bool,
    ) -> Option<String> {
        let (tools, many): (Vec<&ToolSpec>, bool) = match choice {
            ToolChoice::None => return None,
            ToolChoice::Auto | ToolChoice::Required => (tools.iter().collect(), parallel),
            ToolChoice::Function(name) => {
                (tools.iter().filter(|t| &t.name == name).collect(), false)
            }
        };
        let mut g = String::new();
        match &self.syntax {
            ToolSyntax::MistralJson { calls } => {
                let items: Vec<Value> = tools.iter().map(|t| call_object_schema(t)).collect();
                let mut list = json!({"type": "array", "minItems": 1, "items": {"anyOf": items}});
                if !many {
                    list["maxItems"] = json!(1);
                }
                let list = python_spacing(list);
                g.push_str(&format!("start: <[{calls}]> calls\ncalls: %json {list}\n"));
            }
            ToolSyntax::MistralArgs { calls, args, .. } => {
                let rep = if many { "+" } else { "" };
                g.push_str(&format!(
                    "start: call{rep}\ncall: <[{calls}]> function\nfunction: "
                ));
                let alts: Vec<String> = (0..tools.len())
                    .map(|i| format!("{} <[{args}]> args{i}", lark_string(&tools[i].name)))
                    .collect();
                g.push_str(&alts.join(" | "));
                g.push('\n');
                for (i, t) in tools.iter().enumerate() {
                    let args = python_spacing(strict_parameters(t));
                    g.push_str(&format!("args{i}: %json {args}\n"));
                }
            }
            ToolSyntax::Hermes { open, close } => {
                let items: Vec<Value> = tools.iter().map(|t| call_object_schema(t)).collect();
                let body = python_spacing(json!({"anyOf": items}));
                let more = if many { " (\"\\n\" call)*" } else { "" };
                g.push_str(&format!(
                    "start: call{more}\ncall: {} \"\\n\" body \"\\n\" {}\nbody: %json {body}\n",
                    open.lark(),
                    close.lark()
                ));
            }
        }
        Some(g)
    }

    /// The messages as the prompt gives them to the model, and the `tools`
    /// value for the template or the Mistral encoder (`None` where the
    /// tools went into the messages themselves).
    pub fn prompt_messages(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> (Vec<Message>, Option<Value>) {
        let value = tools_value(tools);
        if self.prompt != ToolPrompt::Injected {
            return (messages.to_vec(), Some(value));
        }
        let mut out = Vec::with_capacity(messages.len() + 1);
        let instructions = hermes_system_prompt(tools);
        match messages.first() {
            Some(m) if m.role == Role::System => {
                let mut first = m.clone();
                first.content = format!("{}\n\n{instructions}", first.content);
                out.push(first);
            }
            _ => out.push(Message::system(instructions)),
        }
        let skip = usize::from(messages.first().is_some_and(|m| m.role == Role::System));
        for m in &messages[skip..] {
            out.push(hermes_message(m));
        }
        (out, None)
    }
}

/// OpenAI's `tools` list for `tools`.
fn tools_value(tools: &[ToolSpec]) -> Value {
    Value::Array(tools.iter().map(tool_json).collect())
}

/// One tool as OpenAI's `tools` list (and the Hermes prompt) writes it.
fn tool_json(t: &ToolSpec) -> Value {
    json!({"type": "function", "function": {
        "name": t.name, "description": t.description, "parameters": t.parameters}})
}

/// `schema` with llguidance's options for the JSON models were trained on
/// (Python's `json.dumps`: `", "` and `": "`, no other whitespace), so a
/// call cannot wander off into whitespace.
fn python_spacing(mut schema: Value) -> Value {
    if let Value::Object(o) = &mut schema {
        o.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// A tool's parameter schema as its calls are held to it: an object schema
/// that does not say whether other keys may appear gets
/// `"additionalProperties": false` (what OpenAI's strict mode requires), so
/// a call writes the tool's own arguments and nothing else.
fn strict_parameters(tool: &ToolSpec) -> Value {
    let mut p = tool.parameters.clone();
    if let Value::Object(o) = &mut p {
        if !o.contains_key("additionalProperties") {
            o.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
    p
}

/// The schema of one call `{"name": <the tool's>, "arguments": {…}}`.
fn call_object_schema(tool: &ToolSpec) -> Value {
    json!({
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": strict_parameters(tool)},
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// `text` as a Lark string literal.
fn lark_string(text: &str) -> String {
    // JSON string escaping is a subset Lark's literals read the same way.
    Value::String(text.to_string()).to_string()
}

/// The Hermes-style tool instructions for a system message.
fn hermes_system_prompt(tools: &[ToolSpec]) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        s.push('\n');
        s.push_str(&tool_json(t).to_string());
    }
    s.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

/// A message as the injected Hermes format shows it: an assistant's calls
/// appended to its text as `<tool_call>` blocks, a tool result as a user
/// message wrapped in `<tool_response>` tags.
fn hermes_message(m: &Message) -> Message {
    let mut out = m.clone();
    match m.role {
        Role::Assistant if !m.tool_calls.is_empty() => {
            let mut text = m.content.clone();
            for c in &m.tool_calls {
                let arguments: Value = serde_json::from_str(&c.arguments)
                    .unwrap_or(Value::String(c.arguments.clone()));
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&format!(
                    "<tool_call>\n{}\n</tool_call>",
                    json!({"name": c.name, "arguments": arguments})
                ));
            }
            out.content = text;
            out.tool_calls.clear();
        }
        // As Qwen's template does: results come back in a user turn.
        Role::Tool => {
            out.role = Role::User;
            out.content = format!("<tool_response>\n{}\n</tool_response>", m.content);
        }
        _ => {}
    }
    out
}

/// What [`ToolCallParser`] made of a token: answer text, and pieces of calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Text of the answer (outside calls).
    pub text: String,
    /// Pieces of calls.
    pub calls: Vec<ToolCallDelta>,
}

/// Where the parser is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// In the answer's text.
    Text,
    /// Mistral v11/v13: reading a call's name (and id).
    Name { name: String, id: Option<String> },
    /// Mistral v11/v13: after `[CALL_ID]`, reading the id.
    CallId { name: String, id: String },
    /// Mistral v11/v13: streaming a call's arguments.
    Args,
    /// A call's JSON (Mistral v3/v7 list, Hermes object), gathered until it ends.
    Json(String),
}

/// Turns generated tokens into answer text and tool-call pieces as they
/// stream: Mistral v11/v13 arguments piece by piece, the JSON forms one
/// call at a time once complete. Ids are the model's when it writes valid
/// Mistral ids, else made by [`ToolCallIds`].
#[derive(Debug, Clone)]
pub struct ToolCallParser {
    /// Shared with each step, which reads it while it changes the state.
    format: std::sync::Arc<ToolFormat>,
    ids: ToolCallIds,
    state: State,
    /// Text held back: a possible start of a text marker, or whitespace
    /// between calls.
    held: String,
    /// Calls started so far.
    calls: u32,
}

impl ToolCallParser {
    /// A parser for `format`, making ids with `ids`.
    pub fn new(format: ToolFormat, ids: ToolCallIds) -> Self {
        Self {
            format: std::sync::Arc::new(format),
            ids,
            state: State::Text,
            held: String::new(),
            calls: 0,
        }
    }

    /// How many calls the output holds so far.
    pub fn calls(&self) -> u32 {
        self.calls
    }

    /// The format parsed.
    pub fn format(&self) -> &ToolFormat {
        &self.format
    }

    /// Reads one generated token and the text it decodes to.
    pub fn push(&mut self, token: u32, piece: &str) -> Parsed {
        self.read(Some(token), piece)
    }

    /// Reads text that no token of its own brought (such as the
    /// detokenizer's tail at the end of the output): it is no marker token.
    pub fn push_text(&mut self, piece: &str) -> Parsed {
        self.read(None, piece)
    }

    fn read(&mut self, token: Option<u32>, piece: &str) -> Parsed {
        let mut out = Parsed::default();
        let format = std::sync::Arc::clone(&self.format);
        match &format.syntax {
            &ToolSyntax::MistralJson { calls } => {
                if token == Some(calls) {
                    self.take_held(&mut out);
                    self.state = match std::mem::replace(&mut self.state, State::Text) {
                        State::Json(buf) => State::Json(buf),
                        _ => State::Json(String::new()),
                    };
                    return out;
                }
                match &mut self.state {
                    State::Json(buf) => buf.push_str(piece),
                    _ => self.text(piece, &mut out),
                }
            }
            &ToolSyntax::MistralArgs {
                calls,
                args,
                call_id,
            } => self.push_args(token, piece, calls, args, call_id, &mut out),
            ToolSyntax::Hermes { open, close } => {
                self.push_hermes(token, piece, open, close, &mut out)
            }
        }
        out
    }

    /// The end of the output: whatever was held back, and the call still
    /// open (a JSON form that never closed is parsed as it is; what does not
    /// parse is given back as text).
    pub fn finish(&mut self) -> Parsed {
        let mut out = Parsed::default();
        match std::mem::replace(&mut self.state, State::Text) {
            State::Json(buf) => {
                let opener = match &self.format.syntax {
                    ToolSyntax::Hermes {
                        open: Marker::Text(t),
                        ..
                    } => t.clone(),
                    _ => String::new(),
                };
                self.json_calls(&buf, &opener, &mut out);
            }
            State::Name { name, id } => self.start_call(name.trim(), id, &mut out),
            State::CallId { name, id } => self.start_call(name.trim(), Some(id), &mut out),
            State::Text | State::Args => {}
        }
        if self.calls == 0 || !self.held.trim().is_empty() {
            out.text.push_str(&self.held);
        }
        self.held.clear();
        out
    }

    /// Answer text: passed on, except a tail that may begin a text marker
    /// and, after a call, whitespace (until something else follows).
    fn text(&mut self, piece: &str, out: &mut Parsed) {
        self.held.push_str(piece);
        let keep = match &self.format.syntax {
            ToolSyntax::Hermes {
                open: Marker::Text(m),
                ..
            } => partial_suffix(&self.held, m),
            _ => 0,
        };
        let keep = if self.calls > 0 {
            // Whitespace after a call stays held with the marker's start.
            let body = &self.held[..self.held.len() - keep];
            let ws = body.len() - body.trim_end().len();
            if body.trim().is_empty() {
                self.held.len()
            } else {
                keep + ws
            }
        } else {
            keep
        };
        let cut = self.held.len() - keep;
        out.text.push_str(&self.held[..cut]);
        self.held.drain(..cut);
    }

    /// Moves the held text to the answer (before a call begins); whitespace
    /// between calls is dropped.
    fn take_held(&mut self, out: &mut Parsed) {
        if self.calls == 0 || !self.held.trim().is_empty() {
            out.text.push_str(&self.held);
        }
        self.held.clear();
    }

    /// Starts call number `self.calls` with its id and name (what is not
    /// a name's character, such as an incomplete character the decoder gave
    /// up on before a marker, is left out).
    fn start_call(&mut self, name: &str, id: Option<String>, out: &mut Parsed) {
        let name: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        let id = id
            .map(|i| i.trim().to_string())
            .filter(|i| foehn_core::is_mistral_call_id(i))
            .unwrap_or_else(|| self.ids.next_id());
        out.calls.push(ToolCallDelta {
            index: self.calls,
            id: Some(id),
            name: Some(name),
            arguments: String::new(),
        });
        self.calls += 1;
    }

    fn push_args(
        &mut self,
        token: Option<u32>,
        piece: &str,
        calls: u32,
        args: u32,
        call_id: Option<u32>,
        out: &mut Parsed,
    ) {
        if token == Some(calls) {
            match std::mem::replace(&mut self.state, State::Text) {
                // A call with no `[ARGS]`: it takes no arguments.
                State::Name { name, id } => self.start_call(name.trim(), id, out),
                State::CallId { name, id } => self.start_call(name.trim(), Some(id), out),
                _ => {}
            }
            self.take_held(out);
            self.state = State::Name {
                name: String::new(),
                id: None,
            };
            return;
        }
        let state = std::mem::replace(&mut self.state, State::Text);
        self.state = match state {
            State::Name { name, id } if token == Some(args) => {
                self.start_call(name.trim(), id, out);
                State::Args
            }
            State::Name { name, .. } if token.is_some() && token == call_id => State::CallId {
                name,
                id: String::new(),
            },
            State::Name { mut name, id } => {
                name.push_str(piece);
                State::Name { name, id }
            }
            State::CallId { name, id } if token == Some(args) => {
                self.start_call(name.trim(), Some(id), out);
                State::Args
            }
            State::CallId { name, mut id } => {
                id.push_str(piece);
                State::CallId { name, id }
            }
            State::Args => {
                if !piece.is_empty() {
                    out.calls.push(ToolCallDelta {
                        index: self.calls - 1,
                        arguments: piece.to_string(),
                        ..ToolCallDelta::default()
                    });
                }
                State::Args
            }
            other => {
                self.state = other;
                self.text(piece, out);
                return;
            }
        };
    }

    fn push_hermes(
        &mut self,
        token: Option<u32>,
        piece: &str,
        open: &Marker,
        close: &Marker,
        out: &mut Parsed,
    ) {
        if let State::Json(buf) = &mut self.state {
            let closed = match close {
                Marker::Token(id) => (token == Some(*id)).then(|| (buf.clone(), String::new())),
                Marker::Text(m) => {
                    buf.push_str(piece);
                    buf.find(m.as_str())
                        .map(|at| (buf[..at].to_string(), buf[at + m.len()..].to_string()))
                }
            };
            let Some((body, rest)) = closed else {
                if matches!(close, Marker::Token(_)) {
                    buf.push_str(piece);
                }
                return;
            };
            self.state = State::Text;
            let opener = match open {
                Marker::Text(t) => t.clone(),
                Marker::Token(_) => String::new(),
            };
            self.json_calls(&body, &opener, out);
            if !rest.is_empty() {
                self.push_hermes(None, &rest, open, close, out);
            }
            return;
        }
        match open {
            Marker::Token(id) if token == Some(*id) => {
                self.take_held(out);
                self.state = State::Json(String::new());
            }
            Marker::Token(_) => self.text(piece, out),
            Marker::Text(m) => {
                self.held.push_str(piece);
                if let Some(at) = self.held.find(m.as_str()) {
                    let rest = self.held[at + m.len()..].to_string();
                    self.held.truncate(at);
                    self.take_held(out);
                    self.state = State::Json(String::new());
                    if !rest.is_empty() {
                        self.push_hermes(None, &rest, open, close, out);
                    }
                } else {
                    let held = std::mem::take(&mut self.held);
                    self.text(&held, out);
                }
            }
        }
    }

    /// Calls from a JSON text: a list of call objects or one; what does
    /// not parse as calls goes back into the answer's text (after `opener`,
    /// the text marker that started it).
    fn json_calls(&mut self, body: &str, opener: &str, out: &mut Parsed) {
        let parsed: Option<Vec<(String, String, Option<String>)>> =
            serde_json::from_str::<Value>(body.trim())
                .ok()
                .and_then(|v| match v {
                    Value::Array(items) => items.iter().map(call_fields).collect(),
                    other => call_fields(&other).map(|c| vec![c]),
                });
        match parsed {
            Some(list) if !list.is_empty() => {
                for (name, arguments, id) in list {
                    self.start_call(&name, id, out);
                    out.calls.last_mut().expect("just started").arguments = arguments;
                }
            }
            _ => {
                out.text.push_str(opener);
                out.text.push_str(body);
            }
        }
    }
}

/// A call object's name, arguments (JSON text) and id.
fn call_fields(v: &Value) -> Option<(String, String, Option<String>)> {
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(a) => a.to_string(),
    };
    let id = v.get("id").and_then(Value::as_str).map(str::to_string);
    Some((name, arguments, id))
}

/// The length of the longest tail of `text` that begins `marker` (without being all of it).
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> ToolCallIds {
        ToolCallIds::new(1)
    }

    fn feed(p: &mut ToolCallParser, items: &[(u32, &str)]) -> Parsed {
        let mut all = Parsed::default();
        for &(t, s) in items {
            let r = p.push(t, s);
            all.text.push_str(&r.text);
            all.calls.extend(r.calls);
        }
        let r = p.finish();
        all.text.push_str(&r.text);
        all.calls.extend(r.calls);
        all
    }

    const CALLS: u32 = 9;
    const ARGS: u32 = 32;
    const CALL_ID: u32 = 33;

    fn v11() -> ToolFormat {
        ToolFormat {
            syntax: ToolSyntax::MistralArgs {
                calls: CALLS,
                args: ARGS,
                call_id: Some(CALL_ID),
            },
            prompt: ToolPrompt::Mistral(MistralVersion::V11),
        }
    }

    #[test]
    fn mistral_args_stream_piece_by_piece() {
        let mut p = ToolCallParser::new(v11(), ids());
        let got = feed(
            &mut p,
            &[
                (100, "Sure."),
                (CALLS, ""),
                (101, "get_"),
                (102, "weather"),
                (ARGS, ""),
                (103, "{\"city\":"),
                (104, " \"Paris\"}"),
                (CALLS, ""),
                (105, "now"),
                (CALL_ID, ""),
                (106, "abcDEF123"),
                (ARGS, ""),
                (107, "{}"),
            ],
        );
        assert_eq!(got.text, "Sure.");
        let calls = foehn_core::collect_tool_calls(&got.calls);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, "{\"city\": \"Paris\"}");
        assert!(foehn_core::is_mistral_call_id(
            calls[0].id.as_deref().unwrap()
        ));
        assert_eq!(calls[1].id.as_deref(), Some("abcDEF123"));
        assert_eq!(p.calls(), 2);
        // Arguments arrive as pieces, the first piece with id and name.
        assert_eq!(got.calls[1].arguments, "{\"city\":");
        assert!(got.calls[1].name.is_none());
    }

    #[test]
    fn mistral_json_lists() {
        let fmt = ToolFormat {
            syntax: ToolSyntax::MistralJson { calls: CALLS },
            prompt: ToolPrompt::Mistral(MistralVersion::V3),
        };
        let mut p = ToolCallParser::new(fmt.clone(), ids());
        let got = feed(&mut p, &[(CALLS, ""), (1, " [{\"name\": \"f\", \"arguments\": {\"b\": 1, \"a\": 2}, \"id\": \"Q1w2E3r4T\"},"), (2, " {\"name\": \"g\", \"arguments\": {}}]")]);
        let calls = foehn_core::collect_tool_calls(&got.calls);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments, "{\"b\":1,\"a\":2}");
        assert_eq!(calls[0].id.as_deref(), Some("Q1w2E3r4T"));
        assert_eq!(calls[1].name, "g");
        assert!(got.text.is_empty());
        // Not JSON: the text comes back.
        let mut p = ToolCallParser::new(fmt, ids());
        let got = feed(&mut p, &[(CALLS, ""), (1, "oops")]);
        assert!(got.calls.is_empty());
        assert_eq!(got.text, "oops");
    }

    #[test]
    fn hermes_text_markers_split_anywhere() {
        let fmt = ToolFormat {
            syntax: ToolSyntax::Hermes {
                open: Marker::Text("<tool_call>".into()),
                close: Marker::Text("</tool_call>".into()),
            },
            prompt: ToolPrompt::Injected,
        };
        let text = "Let me check. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
        for step in [1, 2, 3, 5, 7, 11, 64] {
            let chars: Vec<char> = text.chars().collect();
            let pieces: Vec<String> = chars.chunks(step).map(|c| c.iter().collect()).collect();
            let items: Vec<(u32, &str)> = pieces.iter().map(|s| (1, s.as_str())).collect();
            let mut p = ToolCallParser::new(fmt.clone(), ids());
            let got = feed(&mut p, &items);
            assert_eq!(got.text, "Let me check. ", "step {step}");
            let calls = foehn_core::collect_tool_calls(&got.calls);
            assert_eq!(calls.len(), 2, "step {step}");
            assert_eq!(calls[0].arguments, "{\"city\":\"Paris\"}");
            assert_eq!(calls[1].name, "now");
        }
        // A text that only looks like the start of a marker comes out whole.
        let mut p = ToolCallParser::new(fmt.clone(), ids());
        let got = feed(&mut p, &[(1, "a <tool"), (1, "box> b <")]);
        assert_eq!(got.text, "a <toolbox> b <");
        // An unclosed call at the end still counts when it parses.
        let mut p = ToolCallParser::new(fmt.clone(), ids());
        let got = feed(
            &mut p,
            &[(1, "<tool_call>{\"name\": \"now\", \"arguments\": {}}")],
        );
        assert_eq!(foehn_core::collect_tool_calls(&got.calls).len(), 1);
        let mut p = ToolCallParser::new(fmt, ids());
        let got = feed(&mut p, &[(1, "<tool_call>{broken")]);
        assert!(got.calls.is_empty());
        assert_eq!(got.text, "<tool_call>{broken");
    }

    #[test]
    fn hermes_token_markers() {
        let fmt = ToolFormat {
            syntax: ToolSyntax::Hermes {
                open: Marker::Token(7),
                close: Marker::Token(8),
            },
            prompt: ToolPrompt::Template,
        };
        assert!(fmt.is_marker(7) && fmt.is_marker(8) && !fmt.is_marker(9));
        assert_eq!(fmt.trigger_token(), Some(7));
        let mut p = ToolCallParser::new(fmt, ids());
        let got = feed(
            &mut p,
            &[
                (1, "Hi"),
                (7, ""),
                (2, "\n{\"name\": \"f\", "),
                (3, "\"arguments\": {\"x\": 1}}\n"),
                (8, ""),
                (4, "\n"),
            ],
        );
        assert_eq!(got.text, "Hi");
        assert_eq!(
            foehn_core::collect_tool_calls(&got.calls)[0].arguments,
            "{\"x\":1}"
        );
    }

    #[test]
    fn grammars_name_the_tools() {
        let tools = foehn_core::parse_tools(&json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}}])).unwrap();
        let g = v11().grammar(&tools, &ToolChoice::Required, true).unwrap();
        assert!(g.starts_with("start: call+\ncall: <[9]> function\nfunction: \"get_weather\" <[32]> args0 | \"now\" <[32]> args1\n"), "{g}");
        let g = v11()
            .grammar(&tools, &ToolChoice::Function("now".into()), true)
            .unwrap();
        assert!(
            g.contains("function: \"now\" <[32]> args0\n") && !g.contains("get_weather"),
            "{g}"
        );
        assert!(v11().grammar(&tools, &ToolChoice::None, true).is_none());
    }

    #[test]
    fn injected_prompts_carry_tools_calls_and_results() {
        let fmt = ToolFormat {
            syntax: ToolSyntax::Hermes {
                open: Marker::Text("<tool_call>".into()),
                close: Marker::Text("</tool_call>".into()),
            },
            prompt: ToolPrompt::Injected,
        };
        let tools = foehn_core::parse_tools(
            &json!([{"type": "function", "function": {"name": "now", "description": "Time now"}}]),
        )
        .unwrap();
        let mut call = Message::assistant("");
        call.tool_calls.push(foehn_core::ToolCall {
            id: Some("abcDEF123".into()),
            name: "now".into(),
            arguments: "{}".into(),
        });
        let mut result = Message::tool("12:00");
        result.tool_call_id = Some("abcDEF123".into());
        let (msgs, value) = fmt.prompt_messages(&[Message::user("time?"), call, result], &tools);
        assert!(value.is_none());
        assert_eq!(msgs[0].role, Role::System);
        assert!(
            msgs[0].content.contains("\"name\":\"now\"") && msgs[0].content.contains("<tools>")
        );
        assert_eq!(
            msgs[2].content,
            "<tool_call>\n{\"name\":\"now\",\"arguments\":{}}\n</tool_call>"
        );
        assert_eq!(msgs[3].content, "<tool_response>\n12:00\n</tool_response>");
        assert_eq!(msgs[3].role, Role::User);
    }
}
