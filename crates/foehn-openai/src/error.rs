//! Error bodies: OpenAI's error object, which foehn's server answers with
//! ([`ErrorResponse`]), and the shapes a client meets in the wild, read into
//! one [`ErrorBody`] ([`error_in_json`], [`parse_error_body`]):
//!
//! - OpenAI: `{"error": {"message": "…", "type": "…", "param": …, "code": …}}`
//! - TGI: `{"error": "…", "error_type": "…"}`
//! - vLLM / FastChat: `{"object": "error", "message": "…", "type": "…", "code": 400}`
//! - `{"detail": …}` (FastAPI), `{"message": "…"}`, and plain text or HTML bodies.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lenient;

/// The most characters of a server's message kept in an [`ErrorBody`].
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// An error answer: `{"error": {…}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorObject,
}

/// OpenAI's error object. Read leniently: a field of another type is absent,
/// a `message` that is not a string is its JSON text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// What went wrong, for people.
    #[serde(default, deserialize_with = "lenient::text")]
    pub message: Option<String>,
    /// The error class (`invalid_request_error`, `server_error`, …).
    #[serde(rename = "type", default, deserialize_with = "lenient::or_none")]
    pub kind: Option<String>,
    /// The request field at fault, when one is.
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub param: Option<String>,
    /// A code: a word in OpenAI's (`rate_limit_exceeded`), often the HTTP
    /// status in others'.
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub code: Option<ErrorCode>,
    /// The HTTP status, which some servers put here instead of in `code`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::or_none"
    )]
    pub status: Option<ErrorCode>,
}

impl ErrorResponse {
    /// An error with its message, class, field at fault and code.
    pub fn new(
        message: impl Into<String>,
        kind: impl Into<String>,
        param: Option<String>,
        code: Option<&str>,
    ) -> Self {
        Self {
            error: ErrorObject {
                message: Some(message.into()),
                kind: Some(kind.into()),
                param,
                code: code.map(|c| ErrorCode::Text(c.to_string())),
                status: None,
            },
        }
    }
}

/// An error object's `code`: a number or a word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ErrorCode {
    /// A number, usually an HTTP status (vLLM: `400`).
    Number(u64),
    /// A word (OpenAI: `rate_limit_exceeded`), or a number written as text.
    Text(String),
}

impl ErrorCode {
    /// The code as an HTTP-status-sized number, when it is one (`"429"` included).
    pub fn status(&self) -> Option<u16> {
        match self {
            ErrorCode::Number(n) => u16::try_from(*n).ok(),
            ErrorCode::Text(s) => s.parse().ok(),
        }
    }

    /// The code when it is a word.
    pub fn word(&self) -> Option<&str> {
        match self {
            ErrorCode::Text(s) => Some(s),
            ErrorCode::Number(_) => None,
        }
    }
}

/// An error as a server described it, whatever the shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorBody {
    /// The human-readable message.
    pub message: String,
    /// The error type or class (`invalid_request_error`, `overloaded`, …), when given.
    pub kind: Option<String>,
    /// A numeric code (often the HTTP status), when given.
    pub code: Option<u16>,
}

/// The top level of a reply that may be an error, in any shape the module docs list.
#[derive(Debug, Default, Deserialize)]
struct Reply {
    /// OpenAI's object, TGI's message, or something else.
    #[serde(default)]
    error: Option<Value>,
    /// TGI's error class.
    #[serde(default, deserialize_with = "lenient::or_none")]
    error_type: Option<String>,
    /// `error` in vLLM's shape.
    #[serde(default, deserialize_with = "lenient::or_none")]
    object: Option<String>,
    /// vLLM's fields (and TGI's `code` / `status`) at the top level.
    #[serde(flatten)]
    fields: ErrorObject,
}

/// Finds an error object in a JSON value, in any of the shapes the module
/// docs list; `None` when the value does not look like an error.
pub fn error_in_json(value: &Value) -> Option<ErrorBody> {
    if !value.is_object() {
        return None;
    }
    let reply = Reply::deserialize(value).unwrap_or_default();
    let status = |e: &ErrorObject| {
        (e.code.as_ref().and_then(ErrorCode::status))
            .or_else(|| e.status.as_ref().and_then(ErrorCode::status))
    };
    match reply.error {
        Some(inner @ Value::Object(_)) => {
            let e = ErrorObject::deserialize(&inner).unwrap_or_default();
            let code = status(&e);
            // OpenAI puts a word code (`rate_limit_exceeded`) where others put a number.
            let kind = e.kind.or_else(|| {
                e.code
                    .as_ref()
                    .and_then(ErrorCode::word)
                    .map(str::to_string)
            });
            let message = e.message.unwrap_or_else(|| inner.to_string());
            Some(ErrorBody {
                message: clip(&message),
                kind,
                code,
            })
        }
        Some(Value::String(message)) => Some(ErrorBody {
            message: clip(&message),
            kind: reply.error_type,
            code: status(&reply.fields),
        }),
        Some(Value::Null) | None if reply.object.as_deref() == Some("error") => Some(ErrorBody {
            message: clip(&reply.fields.message.unwrap_or_default()),
            kind: reply.fields.kind,
            code: reply.fields.code.as_ref().and_then(ErrorCode::status),
        }),
        Some(Value::Null) | None => None,
        Some(other) => Some(ErrorBody {
            message: clip(&other.to_string()),
            kind: None,
            code: None,
        }),
    }
}

/// Reads an error body of any shape (JSON or not) into an [`ErrorBody`].
pub fn parse_error_body(body: &str) -> ErrorBody {
    let trimmed = body.trim();
    if let Ok(value) = serde_json::from_str::<Value>(trimmed) {
        if let Some(e) = error_in_json(&value) {
            return e;
        }
        if let Some(obj) = value.as_object() {
            for key in ["detail", "message", "msg"] {
                if let Some(v) = obj.get(key) {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    return ErrorBody {
                        message: clip(&text),
                        ..ErrorBody::default()
                    };
                }
            }
        }
    }
    ErrorBody {
        message: clip(&plain_text(trimmed)),
        ..ErrorBody::default()
    }
}

/// Plain text from a body that may be HTML: tags dropped, whitespace folded.
fn plain_text(body: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let e = parse_error_body(
            r#"{"error":{"message":"Invalid model","type":"invalid_request_error","code":"model_not_found","param":null}}"#,
        );
        assert_eq!(e.message, "Invalid model");
        assert_eq!(e.kind.as_deref(), Some("invalid_request_error"));
        assert_eq!(e.code, None);
        let e = parse_error_body(
            r#"{"error":{"message":"slow down","type":null,"code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(e.kind.as_deref(), Some("rate_limit_exceeded"));
        // No message: the whole object is the message.
        let e = parse_error_body(r#"{"error":{"type":"x"}}"#);
        assert_eq!(e.message, r#"{"type":"x"}"#);
        // A status instead of a code.
        assert_eq!(
            parse_error_body(r#"{"error":{"message":"m","status":"503"}}"#).code,
            Some(503)
        );
    }

    #[test]
    fn tgi_shape() {
        let e = parse_error_body(
            r#"{"error":"Input validation error: `inputs` must have less than 4096 tokens","error_type":"validation"}"#,
        );
        assert!(e.message.starts_with("Input validation error"));
        assert_eq!(e.kind.as_deref(), Some("validation"));
        assert_eq!(
            parse_error_body(r#"{"error":"busy","status":429}"#).code,
            Some(429)
        );
    }

    #[test]
    fn vllm_shape() {
        let e = parse_error_body(
            r#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}"#,
        );
        assert_eq!(e.message, "The model `x` does not exist.");
        assert_eq!(e.kind.as_deref(), Some("NotFoundError"));
        assert_eq!(e.code, Some(404));
        // Newer vLLM nests it OpenAI-style with a numeric code.
        let e = parse_error_body(
            r#"{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}"#,
        );
        assert_eq!(e.code, Some(400));
    }

    #[test]
    fn fastapi_plain_and_html_bodies() {
        assert_eq!(
            parse_error_body(r#"{"detail":"Not Found"}"#).message,
            "Not Found"
        );
        assert_eq!(
            parse_error_body(r#"{"detail":[{"msg":"field required"}]}"#).message,
            r#"[{"msg":"field required"}]"#
        );
        assert_eq!(
            parse_error_body("upstream connect error\n").message,
            "upstream connect error"
        );
        let html = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>";
        assert_eq!(
            parse_error_body(html).message,
            "502 Bad Gateway 502 Bad Gateway"
        );
        assert_eq!(parse_error_body("").message, "");
        assert!(
            parse_error_body(&"x".repeat(5000)).message.chars().count() <= MAX_MESSAGE_CHARS + 1
        );
    }

    #[test]
    fn odd_error_fields_are_not_errors_or_panics() {
        assert_eq!(error_in_json(&serde_json::json!({"error": null})), None);
        assert_eq!(error_in_json(&serde_json::json!({"choices": []})), None);
        assert_eq!(error_in_json(&serde_json::json!([1])), None);
        assert_eq!(
            error_in_json(&serde_json::json!({"error": [1, 2]})).map(|e| e.message),
            Some("[1,2]".to_string())
        );
        assert_eq!(
            error_in_json(&serde_json::json!({"object": "error"})).map(|e| e.message),
            Some(String::new())
        );
        let e = error_in_json(&serde_json::json!({"error": {"message": 5, "code": -1, "type": 3}}));
        assert_eq!(
            e,
            Some(ErrorBody {
                message: "5".into(),
                kind: None,
                code: None
            })
        );
    }
}
