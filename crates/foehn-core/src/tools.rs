//! Tool calling as OpenAI words it: the tool definitions (`tools`), which of
//! them the model may or must call (`tool_choice`), the calls streamed back
//! piece by piece ([`ToolCallDelta`]) and put together again
//! ([`collect_tool_calls`]), and Mistral's call ids ([`ToolCallIds`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{GenerateError, ToolCall};

/// One function the model may call (an entry of OpenAI's `tools`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// The function's name (`^[a-zA-Z0-9_-]{1,64}$`).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// The JSON schema of its arguments (`{"type": "object", …}`).
    pub parameters: Value,
}

/// Which tools the model may call (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// The model decides between answering and calling (the default).
    #[default]
    Auto,
    /// The model answers without calling any tool.
    None,
    /// The model calls one tool or more.
    Required,
    /// The model calls this function.
    Function(String),
}

impl ToolChoice {
    /// Reads `"auto"`, `"none"`, `"required"` (also `"any"`, Mistral's word)
    /// or `{"type": "function", "function": {"name": …}}`.
    pub fn from_value(value: &Value) -> Result<Self, GenerateError> {
        let bad = |what: &str| {
            GenerateError::InvalidRequest(format!(
                "tool_choice: {what}; expected \"auto\", \"none\", \"required\" or \
                 {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"
            ))
        };
        match value {
            Value::Null => Ok(ToolChoice::Auto),
            Value::String(s) => match s.as_str() {
                "auto" => Ok(ToolChoice::Auto),
                "none" => Ok(ToolChoice::None),
                "required" | "any" => Ok(ToolChoice::Required),
                other => Err(bad(&format!("unknown choice {other:?}"))),
            },
            Value::Object(o) => {
                if o.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
                    return Err(bad("the type is not \"function\""));
                }
                o.get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .map(|n| ToolChoice::Function(n.to_string()))
                    .ok_or_else(|| bad("no function name"))
            }
            _ => Err(bad("neither a string nor an object")),
        }
    }
}

/// Whether `name` is a valid function name (`^[a-zA-Z0-9_-]{1,64}$`, as
/// OpenAI and Mistral require).
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Reads OpenAI's `tools`: a list of `{"type": "function", "function":
/// {"name", "description"?, "parameters"?}}`. A tool without parameters
/// takes an empty object. Errors name the tool at fault.
pub fn parse_tools(tools: &Value) -> Result<Vec<ToolSpec>, GenerateError> {
    let bad = |what: String| GenerateError::InvalidRequest(format!("tools: {what}"));
    let list = tools.as_array().ok_or_else(|| bad("not a list".into()))?;
    let mut specs: Vec<ToolSpec> = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let kind = tool
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("function");
        if kind != "function" {
            return Err(bad(format!(
                "tool {i} has type {kind:?}; only functions are supported"
            )));
        }
        let function = tool
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| bad(format!("tool {i} has no \"function\" object")))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("tool {i} has no function name")))?;
        if !valid_name(name) {
            return Err(bad(format!(
                "tool {i}'s name {name:?} must be 1 to 64 of a-z, A-Z, 0-9, _ and -"
            )));
        }
        if specs.iter().any(|s| s.name == name) {
            return Err(bad(format!("two tools are named {name:?}")));
        }
        let parameters = match function.get("parameters") {
            None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(bad(format!(
                    "tool {name:?}: `parameters` must be a JSON schema object"
                )))
            }
        };
        specs.push(ToolSpec {
            name: name.to_string(),
            description: function
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            parameters,
        });
    }
    Ok(specs)
}

/// The tools a request offers and what it asks of them, checked together:
/// `None` when it offers none or says `tool_choice: "none"`; an error for a
/// malformed list, an unknown choice, or a named function that is not offered.
pub fn tool_request(
    tools: Option<&Value>,
    choice: Option<&Value>,
) -> Result<Option<(Vec<ToolSpec>, ToolChoice)>, GenerateError> {
    let choice = choice.map(ToolChoice::from_value).transpose()?;
    let specs = match tools.filter(|t| !t.is_null()) {
        Some(t) => parse_tools(t)?,
        None => Vec::new(),
    };
    match choice.unwrap_or_default() {
        ToolChoice::None => Ok(None),
        ToolChoice::Auto if specs.is_empty() => Ok(None),
        ToolChoice::Required if specs.is_empty() => Err(GenerateError::InvalidRequest(
            "tool_choice is \"required\" but no tools are given".into(),
        )),
        ToolChoice::Function(name) if !specs.iter().any(|s| s.name == name) => {
            Err(GenerateError::InvalidRequest(format!(
                "tool_choice names the function {name:?}, which is not among the tools"
            )))
        }
        choice => Ok(Some((specs, choice))),
    }
}

/// A piece of a tool call, as a stream carries it (OpenAI's
/// `delta.tool_calls[i]`): the first piece of a call has its id and name,
/// the later ones more of its arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    /// Which call of the answer (0, 1, …).
    pub index: u32,
    /// The call's id, in its first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The function's name, in its first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More of the arguments' JSON text.
    #[serde(default)]
    pub arguments: String,
}

/// The calls the pieces make, in index order: ids and names from the pieces
/// that have them, arguments concatenated.
pub fn collect_tool_calls<'a>(
    deltas: impl IntoIterator<Item = &'a ToolCallDelta>,
) -> Vec<ToolCall> {
    let mut calls: Vec<(u32, ToolCall)> = Vec::new();
    for d in deltas {
        let at = match calls.iter().position(|(i, _)| *i == d.index) {
            Some(at) => at,
            None => {
                calls.push((
                    d.index,
                    ToolCall {
                        id: None,
                        name: String::new(),
                        arguments: String::new(),
                    },
                ));
                calls.len() - 1
            }
        };
        let call = &mut calls[at].1;
        if d.id.is_some() {
            call.id.clone_from(&d.id);
        }
        if let Some(name) = &d.name {
            call.name.push_str(name);
        }
        call.arguments.push_str(&d.arguments);
    }
    calls.sort_by_key(|(i, _)| *i);
    calls.into_iter().map(|(_, c)| c).collect()
}

/// Tool-call ids in Mistral's form: 9 characters of a-z, A-Z and 0-9 (what
/// its chat templates and mistral-common accept; other forms break the
/// next turn), from a small seeded generator, so a seeded generation gives
/// the same ids.
#[derive(Debug, Clone)]
pub struct ToolCallIds(u64);

impl ToolCallIds {
    /// Ids from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Ids from the clock (for unseeded generations).
    pub fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::new(nanos)
    }

    /// The next id.
    pub fn next_id(&mut self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (0..9)
            .map(|i| ALPHABET[((z >> (i * 7)) % ALPHABET.len() as u64) as usize] as char)
            .collect()
    }
}

/// Whether `id` is in Mistral's form (9 of a-z, A-Z, 0-9).
pub fn is_mistral_call_id(id: &str) -> bool {
    id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather",
            "description": "Weather now", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn choices_are_read_and_checked() {
        let tools = weather();
        let (specs, choice) = tool_request(Some(&tools), None).unwrap().unwrap();
        assert_eq!(specs[0].name, "get_weather");
        assert_eq!(choice, ToolChoice::Auto);
        assert!(tool_request(Some(&tools), Some(&json!("none")))
            .unwrap()
            .is_none());
        assert!(tool_request(None, None).unwrap().is_none());
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        assert_eq!(
            tool_request(Some(&tools), Some(&named)).unwrap().unwrap().1,
            ToolChoice::Function("get_weather".into())
        );
        for bad in [
            json!("sometimes"),
            json!(3),
            json!({"type": "function", "function": {"name": "nope"}}),
            json!({"type": "function"}),
        ] {
            let err = tool_request(Some(&tools), Some(&bad)).unwrap_err();
            assert!(matches!(err, GenerateError::InvalidRequest(_)), "{bad}");
        }
        assert!(tool_request(None, Some(&json!("required"))).is_err());
    }

    #[test]
    fn malformed_tools_are_refused() {
        for bad in [
            json!({"name": "x"}),
            json!([{"type": "function"}]),
            json!([{"type": "retrieval", "function": {"name": "x"}}]),
            json!([{"type": "function", "function": {"name": "has space"}}]),
            json!([{"type": "function", "function": {"name": "x", "parameters": 3}}]),
            json!([{"type": "function", "function": {"name": "x"}},
                   {"type": "function", "function": {"name": "x"}}]),
        ] {
            assert!(parse_tools(&bad).is_err(), "{bad}");
        }
        let no_params = parse_tools(&json!([{"function": {"name": "now"}}])).unwrap();
        assert_eq!(no_params[0].parameters["type"], "object");
    }

    #[test]
    fn deltas_make_calls() {
        let deltas = [
            ToolCallDelta {
                index: 0,
                id: Some("abcdefghi".into()),
                name: Some("f".into()),
                arguments: String::new(),
            },
            ToolCallDelta {
                index: 0,
                arguments: "{\"a\":".into(),
                ..Default::default()
            },
            ToolCallDelta {
                index: 1,
                id: Some("ABCDEFGHI".into()),
                name: Some("g".into()),
                arguments: "{}".into(),
            },
            ToolCallDelta {
                index: 0,
                arguments: " 1}".into(),
                ..Default::default()
            },
        ];
        let calls = collect_tool_calls(&deltas);
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("f", "{\"a\": 1}")
        );
        assert_eq!(calls[1].id.as_deref(), Some("ABCDEFGHI"));
    }

    #[test]
    fn ids_are_mistral_shaped_and_seeded() {
        let mut a = ToolCallIds::new(7);
        let mut b = ToolCallIds::new(7);
        let ids: Vec<String> = (0..100).map(|_| a.next_id()).collect();
        assert!(ids.iter().all(|id| is_mistral_call_id(id)), "{ids:?}");
        assert_eq!(ids[0], b.next_id());
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 100);
        assert!(!is_mistral_call_id("call_abc12"));
    }
}
