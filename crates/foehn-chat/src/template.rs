//! `ChatTemplate`: a Hugging Face-style Jinja chat template, compiled once.

use std::sync::Arc;

use foehn_tokenizer::{Tokenizer, TokenizerKind};
use minijinja::{context, Environment, ErrorKind, Value};

use crate::named::named_template_source;
use crate::{ChatError, Message, Result};

/// The name the template is stored under in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// The template used when a model ships none: Mistral's `[INST]` format.
pub const DEFAULT_TEMPLATE_NAME: &str = "mistral-v3";

/// A chat template: Jinja source compiled once, rendered per request.
///
/// Rendering follows Hugging Face `transformers` (`apply_chat_template`):
/// jinja2 with `trim_blocks` and `lstrip_blocks`, loop controls, the variables
/// `messages`, `bos_token`, `eos_token`, `add_generation_prompt`, `tools` and
/// `documents` (both `none`), and the helpers `raise_exception(msg)`,
/// `strftime_now(fmt)` (UTC), `tojson` (Python `json.dumps` spacing) and
/// Python string/dict methods (`.strip()`, `.startswith()`, `.items()`, …).
///
/// The rendered text contains whatever special-token text the template writes
/// (BOS included when it writes `bos_token`): tokenize it with special tokens
/// parsed and without adding another BOS. `Send + Sync`: share one.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    source: Arc<str>,
    name: Option<&'static str>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("source_len", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

/// The marker `raise_exception` attaches to its error, so that `render` can
/// tell the template's own message from other failures.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(Raised(message)),
    )
}

/// An environment with the settings and helpers Hugging Face templates expect.
fn hf_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", |format: String| {
        crate::strftime::strftime_now(&format)
    });
    env.add_filter("tojson", crate::tojson::tojson_filter);
    env.add_filter("string", crate::pyrepr::string_filter);
    env.set_formatter(|out, state, value| match crate::pyrepr::python_str(value) {
        Some(text) => out.write_str(&text).map_err(minijinja::Error::from),
        None => minijinja::escape_formatter(out, state, value),
    });
    env
}

impl ChatTemplate {
    /// Compiles a Jinja chat template; `bos_token` / `eos_token` are the texts
    /// the template sees for those variables (e.g. `"<s>"`, `"</s>"`).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        Self::build(source, None, bos_token, eos_token)
    }

    /// The template of a llama.cpp built-in format name (`"chatml"`, `"mistral-v3"`, …;
    /// see [`crate::NAMED_TEMPLATES`]).
    pub fn from_name(name: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let key = crate::NAMED_TEMPLATES
            .iter()
            .find(|&&n| n == name.trim())
            .ok_or_else(|| ChatError::UnknownName(name.to_string()))?;
        let source =
            named_template_source(key).ok_or_else(|| ChatError::UnknownName(name.to_string()))?;
        Self::build(&source, Some(key), bos_token, eos_token)
    }

    /// What GGUF `tokenizer.chat_template` may hold: a llama.cpp format name
    /// (`"mistral-v3"`) or Jinja source. A bare word that is neither is an
    /// error rather than a template that prints that word.
    pub fn from_name_or_source(template: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let trimmed = template.trim();
        if crate::NAMED_TEMPLATES.contains(&trimmed) {
            return Self::from_name(trimmed, bos_token, eos_token);
        }
        let looks_like_name = !trimmed.is_empty()
            && trimmed.len() <= 64
            && trimmed
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if looks_like_name {
            return Err(ChatError::UnknownName(trimmed.to_string()));
        }
        Self::new(template, bos_token, eos_token)
    }

    /// The template for a tokenizer: its own (`Tokenizer::chat_template`, a
    /// name or Jinja) or, when it has none, Mistral's `[INST]` format
    /// (`mistral-v7` / `mistral-v3`, `-tekken` for Tekken vocabularies);
    /// `bos_token` / `eos_token` are the tokenizer's BOS / EOS texts.
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Result<Self> {
        let token_text = |id: Option<u32>| {
            id.and_then(|id| tokenizer.id_to_token(id))
                .unwrap_or_default()
        };
        let (bos, eos) = (
            token_text(tokenizer.bos_id()),
            token_text(tokenizer.eos_id()),
        );
        match tokenizer.chat_template().filter(|t| !t.trim().is_empty()) {
            Some(template) => Self::from_name_or_source(template, &bos, &eos),
            None => Self::from_name(default_template_name(tokenizer), &bos, &eos),
        }
    }

    fn build(
        source: &str,
        name: Option<&'static str>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self> {
        let mut env = hf_environment();
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| ChatError::Syntax(describe_syntax(&e)))?;
        Ok(Self {
            env: Arc::new(env),
            source: source.into(),
            name,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends with
    /// the opening of the assistant's turn (for templates that have one).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`ChatTemplate::render`] with the tools the model may call (OpenAI's
    /// `tools` list) as the template's `tools`. Messages reach the template
    /// in Hugging Face's shape: an assistant's `tool_calls` as `{"id",
    /// "type": "function", "function": {"name", "arguments"}}` with the
    /// arguments parsed (templates write them with `tojson`).
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatError::Render(describe(&e)))?;
        let messages: Vec<serde_json::Value> = messages.iter().map(hf_message).collect();
        let ctx = context! {
            messages => Value::from_serialize(&messages),
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            add_generation_prompt => add_generation_prompt,
            tools => tools.map_or(Value::from(()), Value::from_serialize),
            documents => Value::from(()),
        };
        template.render(ctx).map_err(|e| render_error(&e))
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The llama.cpp format name, when the template was built from one.
    pub fn name(&self) -> Option<&str> {
        self.name
    }

    /// The text the template sees as `bos_token`.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The text the template sees as `eos_token`.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }
}

/// A message as Hugging Face templates read it.
fn hf_message(m: &Message) -> serde_json::Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                let arguments = serde_json::from_str(&c.arguments)
                    .unwrap_or_else(|_| serde_json::Value::String(c.arguments.clone()));
                serde_json::json!({"id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": arguments}})
            })
            .collect();
    }
    v
}

/// The llama.cpp name of the Mistral format for a tokenizer without a template.
pub fn default_template_name(tokenizer: &Tokenizer) -> &'static str {
    let is_control = |t: &str| {
        tokenizer
            .token_to_id(t)
            .is_some_and(|id| tokenizer.is_control(id))
    };
    let tekken = tokenizer.kind() == TokenizerKind::Tekken;
    match (
        is_control("[SYSTEM_PROMPT]") && is_control("[/SYSTEM_PROMPT]"),
        tekken,
    ) {
        (true, true) => "mistral-v7-tekken",
        (true, false) => "mistral-v7",
        (false, true) => "mistral-v3-tekken",
        (false, false) => DEFAULT_TEMPLATE_NAME,
    }
}

/// A compile error as "syntax error: what (line N)".
fn describe_syntax(e: &minijinja::Error) -> String {
    match (e.detail(), e.line()) {
        (Some(detail), Some(line)) => format!("{}: {detail} (line {line})", e.kind()),
        _ => describe(e),
    }
}

/// A minijinja error with its position and its causes, on one line.
fn describe(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn render_error(e: &minijinja::Error) -> ChatError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(raised) = err.downcast_ref::<Raised>() {
            return ChatError::Raised(raised.0.clone());
        }
        source = err.source();
    }
    ChatError::Render(describe(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Vec<Message> {
        vec![Message::user(text)]
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ChatTemplate>();
    }

    #[test]
    fn raise_exception_is_an_error_with_the_message() {
        let t = ChatTemplate::new(
            "a{{ raise_exception('No ' ~ messages[0].role ~ ' here!') }}b",
            "",
            "",
        )
        .unwrap();
        match t.render(&user("x"), true) {
            Err(ChatError::Raised(m)) => assert_eq!(m, "No user here!"),
            other => panic!("{other:?}"),
        }
        // Inside a loop and a macro too.
        let t = ChatTemplate::new(
            "{% macro fail(m) %}{{ raise_exception(m) }}{% endmacro %}{% for m in messages %}{{ fail(m.content) }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert!(matches!(t.render(&user("deep"), true), Err(ChatError::Raised(m)) if m == "deep"));
    }

    #[test]
    fn malformed_templates_fail_at_construction() {
        for (source, hint) in [
            (
                "{% for m in messages %}{{ m.content }}",
                "unexpected end of input",
            ),
            ("line one\n{{ messages[0]['content' }}", "line 2"),
            ("{% endif %}", "unknown statement"),
            ("{{ 'a' + }}", "unexpected"),
        ] {
            match ChatTemplate::new(source, "<s>", "</s>") {
                Err(ChatError::Syntax(m)) => assert!(m.contains(hint), "{source:?}: {m}"),
                other => panic!("{source:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_render_failures_are_render_errors() {
        let t = ChatTemplate::new("{{ no_such_function() }}", "", "").unwrap();
        assert!(
            matches!(t.render(&user("x"), true), Err(ChatError::Render(m)) if m.contains("no_such_function"))
        );
        let t = ChatTemplate::new("{{ messages[0].content.no_such_method() }}", "", "").unwrap();
        assert!(matches!(
            t.render(&user("x"), true),
            Err(ChatError::Render(_))
        ));
    }

    #[test]
    fn variables_and_helpers() {
        let t = ChatTemplate::new(
            "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools is none }}|{{ documents }}|\
             {{ messages[0].role }}|{{ messages[0].content.strip().upper() }}|{{ '  a b '.split() }}|\
             {{ messages[0].content.lstrip().startswith('hi') }}|{{ {'k': 'v'}.items()|list }}|{{ undefined_var }}|\
             {% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(
            t.render(&user("  hi there "), false).unwrap(),
            "<s>|</s>|False|True|None|user|HI THERE|['a', 'b']|True|[['k', 'v']]||02"
        );
    }

    #[test]
    fn strftime_now_formats_the_current_utc_time() {
        let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}", "", "").unwrap();
        let before = crate::strftime::UtcTime::now().format("%Y-%m-%d");
        let got = t.render(&[], false).unwrap();
        let after = crate::strftime::UtcTime::now().format("%Y-%m-%d");
        assert!(got == before || got == after, "{got}");
        assert_eq!(got.len(), 10);
    }

    #[test]
    fn blocks_are_trimmed_as_transformers_does() {
        // trim_blocks + lstrip_blocks: tag lines leave no blank lines or indentation behind.
        let t = ChatTemplate::new("{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n", "", "")
            .unwrap();
        assert_eq!(
            t.render(
                &[
                    Message::user("a"),
                    Message::assistant("b"),
                    Message::user("c")
                ],
                false
            )
            .unwrap(),
            "[a]\n[c]\n"
        );
    }

    #[test]
    fn for_tokenizer_without_a_template_uses_mistral() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-mistral/hf/tokenizer.model");
        let tok = Tokenizer::from_file(path).unwrap();
        assert_eq!(default_template_name(&tok), "mistral-v3");
        let t = ChatTemplate::for_tokenizer(&tok).unwrap();
        assert_eq!(
            (t.name(), t.bos_token(), t.eos_token()),
            (Some("mistral-v3"), "<s>", "</s>")
        );
    }
}
