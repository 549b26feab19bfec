//! What a generation's output must match (structured output), and its
//! mapping to and from OpenAI's `response_format`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::GenerateError;

/// A constraint on the generated text, enforced token by token by the local
/// engine; a generation under one ends when the constraint is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// JSON that validates against this JSON schema (OpenAI's
    /// `response_format: {"type": "json_schema", …}`).
    JsonSchema(Value),
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// Text that matches this regular expression, whole.
    Regex(String),
    /// Text in the language of this Lark grammar (llguidance's dialect).
    Lark(String),
}

impl Constraint {
    /// The constraint an OpenAI `response_format` asks for: `None` for
    /// `{"type": "text"}`, an error for a format that is malformed or unknown.
    pub fn from_response_format(format: &Value) -> Result<Option<Self>, GenerateError> {
        let bad = |why: &str| GenerateError::InvalidRequest(format!("response_format: {why}"));
        let kind = format
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("expected an object with a string `type`"))?;
        match kind {
            "text" => Ok(None),
            "json_object" => Ok(Some(Constraint::JsonObject)),
            "json_schema" => {
                let spec = format
                    .get("json_schema")
                    .filter(|s| s.is_object())
                    .ok_or_else(|| bad("`json_schema` must be an object with a `schema`"))?;
                // A schema left out allows any JSON value, as the empty schema does.
                let schema = spec.get("schema").cloned().unwrap_or_else(|| json!({}));
                if !(schema.is_object() || schema.is_boolean()) {
                    return Err(bad(
                        "`json_schema.schema` must be a JSON schema (an object)",
                    ));
                }
                Ok(Some(Constraint::JsonSchema(schema)))
            }
            other => Err(bad(&format!(
                "unknown type `{other}` (expected text, json_object or json_schema)"
            ))),
        }
    }

    /// The OpenAI `response_format` that asks for this constraint; `None`
    /// for regular expressions and grammars, which that format cannot say.
    pub fn to_response_format(&self) -> Option<Value> {
        match self {
            Constraint::JsonSchema(schema) => Some(json!({
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": schema, "strict": true},
            })),
            Constraint::JsonObject => Some(json!({"type": "json_object"})),
            Constraint::Regex(_) | Constraint::Lark(_) => None,
        }
    }

    /// A short name for messages (`json schema`, `regex`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "json schema",
            Constraint::JsonObject => "json object",
            Constraint::Regex(_) => "regex",
            Constraint::Lark(_) => "lark grammar",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_formats_map_to_constraints_and_back() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let format = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}});
        let c = Constraint::from_response_format(&format).unwrap().unwrap();
        assert_eq!(c, Constraint::JsonSchema(schema.clone()));
        let back = c.to_response_format().unwrap();
        assert_eq!(back["json_schema"]["schema"], schema);
        assert_eq!(
            Constraint::from_response_format(&json!({"type": "json_object"})).unwrap(),
            Some(Constraint::JsonObject)
        );
        assert_eq!(
            Constraint::from_response_format(&json!({"type": "text"})).unwrap(),
            None
        );
        assert_eq!(Constraint::Regex("a+".into()).to_response_format(), None);
    }

    #[test]
    fn malformed_response_formats_are_errors() {
        for bad in [
            json!("json"),
            json!({"type": "yaml"}),
            json!({"type": "json_schema"}),
            json!({"type": "json_schema", "json_schema": {"schema": 3}}),
        ] {
            assert!(
                matches!(
                    Constraint::from_response_format(&bad),
                    Err(GenerateError::InvalidRequest(_))
                ),
                "{bad}"
            );
        }
    }
}
