//! Turning what a server says went wrong — an HTTP status, an error body in
//! one of the common shapes, a `Retry-After` header, an error object inside a
//! 200 event stream — into a [`GenerateError`].
//!
//! Shapes understood:
//! - OpenAI: `{"error": {"message": "…", "type": "…", "code": …}}`
//! - TGI: `{"error": "…", "error_type": "…"}`
//! - vLLM / FastChat: `{"object": "error", "message": "…", "type": "…", "code": 400}`
//! - `{"detail": …}` (FastAPI), `{"message": "…"}`, and plain text or HTML bodies.
//!
//! Status mapping: 400/413/422 and other 4xx → [`GenerateError::InvalidRequest`];
//! 401/403 → [`GenerateError::Unauthorized`]; 402 (out of credit) and 404
//! (model not found) → [`GenerateError::Remote`] keeping the status, so a
//! router can fail over without retrying; 408/504 → [`GenerateError::Timeout`];
//! 429 → [`GenerateError::RateLimited`] with the `Retry-After`; other 5xx →
//! [`GenerateError::Remote`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foehn_core::GenerateError;
use serde_json::Value;

/// The most characters of a server's message kept in an error.
const MAX_MESSAGE_CHARS: usize = 1000;

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

/// Finds an error object in a JSON value, in any of the shapes the module
/// docs list; `None` when the value does not look like an error.
pub fn error_in_json(value: &Value) -> Option<ErrorBody> {
    let obj = value.as_object()?;
    match obj.get("error") {
        Some(Value::Object(inner)) => {
            let message = inner
                .get("message")
                .map(text_of)
                .unwrap_or_else(|| Value::Object(inner.clone()).to_string());
            let kind = inner
                .get("type")
                .and_then(Value::as_str)
                .map(str::to_string);
            let code = inner
                .get("code")
                .and_then(code_of)
                .or_else(|| inner.get("status").and_then(code_of));
            // OpenAI puts a string code (`rate_limit_exceeded`) where others put a number.
            let kind = kind.or_else(|| {
                inner
                    .get("code")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            return Some(ErrorBody {
                message: clip(&message),
                kind,
                code,
            });
        }
        Some(Value::String(message)) => {
            let kind = obj
                .get("error_type")
                .and_then(Value::as_str)
                .map(str::to_string);
            let code = obj
                .get("code")
                .and_then(code_of)
                .or_else(|| obj.get("status").and_then(code_of));
            return Some(ErrorBody {
                message: clip(message),
                kind,
                code,
            });
        }
        Some(Value::Null) | None => {}
        Some(other) => {
            return Some(ErrorBody {
                message: clip(&other.to_string()),
                kind: None,
                code: None,
            })
        }
    }
    if obj.get("object").and_then(Value::as_str) == Some("error") {
        let message = obj.get("message").map(text_of).unwrap_or_default();
        let kind = obj.get("type").and_then(Value::as_str).map(str::to_string);
        let code = obj.get("code").and_then(code_of);
        return Some(ErrorBody {
            message: clip(&message),
            kind,
            code,
        });
    }
    None
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
                    return ErrorBody {
                        message: clip(&text_of(v)),
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

/// The error for a non-2xx HTTP answer.
pub fn error_for_status(status: u16, body: &str, retry_after: Option<&str>) -> GenerateError {
    let parsed = parse_error_body(body);
    let message = if parsed.message.is_empty() {
        reason_phrase(status).to_string()
    } else {
        parsed.message
    };
    match status {
        401 | 403 => GenerateError::Unauthorized(format!("HTTP {status}: {message}")),
        402 => GenerateError::Remote {
            status: Some(402),
            message: format!("out of credit: {message}"),
        },
        404 => GenerateError::Remote {
            status: Some(404),
            message: format!("not found (is the model id right?): {message}"),
        },
        408 | 504 => GenerateError::Timeout(format!("HTTP {status}: {message}")),
        429 => GenerateError::RateLimited {
            retry_after: retry_after.and_then(parse_retry_after),
        },
        400..=499 => GenerateError::InvalidRequest(format!("HTTP {status}: {message}")),
        _ => GenerateError::Remote {
            status: Some(status),
            message,
        },
    }
}

/// The error for an error object that arrived inside a 200 event stream.
pub fn error_in_stream(body: ErrorBody) -> GenerateError {
    if let Some(code) = body.code.filter(|c| (400..600).contains(c)) {
        return error_for_status(
            code,
            &serde_json::json!({"error": body.message}).to_string(),
            None,
        );
    }
    let kind = body.kind.as_deref().unwrap_or("").to_ascii_lowercase();
    let message = if body.kind.is_some() {
        format!("{} ({kind})", body.message)
    } else {
        body.message
    };
    if kind.contains("rate_limit") || kind.contains("too_many") {
        GenerateError::RateLimited { retry_after: None }
    } else if kind.contains("insufficient_quota")
        || kind.contains("credit")
        || kind.contains("billing")
    {
        GenerateError::Remote {
            status: Some(402),
            message: format!("out of credit: {message}"),
        }
    } else if kind.contains("auth") || kind.contains("permission") {
        GenerateError::Unauthorized(message)
    } else if kind.contains("invalid_request")
        || kind.contains("validation")
        || kind == "badrequesterror"
    {
        GenerateError::InvalidRequest(message)
    } else if kind.contains("timeout") {
        GenerateError::Timeout(message)
    } else {
        // overloaded, generation, server_error, unknown: a server-side failure.
        GenerateError::Remote {
            status: None,
            message,
        }
    }
}

/// Parses a `Retry-After` value: delay seconds (`"30"`, also `"1.5"`) or an
/// HTTP-date (IMF-fixdate, RFC 850 or asctime). A date in the past is zero.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_retry_after_at(value, SystemTime::now())
}

/// [`parse_retry_after`] against a given "now" (for tests).
pub fn parse_retry_after_at(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the Unix epoch of an HTTP-date (RFC 9110 §5.6.7).
pub fn parse_http_date(value: &str) -> Option<u64> {
    let parts: Vec<&str> = value.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    let (day, month, year, time) = match parts.as_slice() {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        [_, d, m, y, t, "GMT"] if y.len() == 4 => {
            (d.parse::<u64>().ok()?, *m, y.parse::<u64>().ok()?, *t)
        }
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        [_, dmy, t, "GMT"] => {
            let mut it = dmy.split('-');
            let (d, m, y) = (it.next()?, it.next()?, it.next()?);
            let y: u64 = y.parse().ok()?;
            // Two-digit years: RFC 9110 says a year that looks more than 50
            // years in the future is in the past.
            let y = if y < 100 {
                if y < 70 {
                    2000 + y
                } else {
                    1900 + y
                }
            } else {
                y
            };
            (d.parse().ok()?, m, y, *t)
        }
        // asctime: Sun Nov  6 08:49:37 1994
        [_, m, d, t, y] => (d.parse().ok()?, *m, y.parse().ok()?, *t),
        _ => return None,
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let mut hms = time.split(':').map(|s| s.parse::<u64>().ok());
    let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some()
        || !(1..=31).contains(&day)
        || h > 23
        || mi > 59
        || s > 60
        || !(1970..=9999).contains(&year)
    {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn code_of(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
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

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        401 => "unauthorized",
        402 => "payment required",
        403 => "forbidden",
        404 => "not found",
        408 => "request timeout",
        413 => "payload too large",
        422 => "unprocessable entity",
        429 => "too many requests",
        500 => "internal server error",
        502 => "bad gateway",
        503 => "service unavailable",
        504 => "gateway timeout",
        _ => "HTTP error",
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
    }

    #[test]
    fn tgi_shape() {
        let e = parse_error_body(
            r#"{"error":"Input validation error: `inputs` must have less than 4096 tokens","error_type":"validation"}"#,
        );
        assert!(e.message.starts_with("Input validation error"));
        assert_eq!(e.kind.as_deref(), Some("validation"));
    }

    #[test]
    fn vllm_shape() {
        let e = parse_error_body(
            r#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}"#,
        );
        assert_eq!(e.message, "The model `x` does not exist.");
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
    fn statuses_map_to_variants() {
        assert!(matches!(
            error_for_status(401, "", None),
            GenerateError::Unauthorized(_)
        ));
        assert!(
            matches!(error_for_status(403, "{\"error\":\"no\"}", None), GenerateError::Unauthorized(m) if m.contains("no"))
        );
        assert!(matches!(
            error_for_status(402, "", None),
            GenerateError::Remote {
                status: Some(402),
                ..
            }
        ));
        assert!(matches!(
            error_for_status(404, "", None),
            GenerateError::Remote {
                status: Some(404),
                ..
            }
        ));
        assert!(matches!(
            error_for_status(408, "", None),
            GenerateError::Timeout(_)
        ));
        assert!(matches!(
            error_for_status(504, "", None),
            GenerateError::Timeout(_)
        ));
        assert!(
            matches!(error_for_status(400, "", None), GenerateError::InvalidRequest(m) if m.contains("bad request"))
        );
        assert!(matches!(
            error_for_status(422, "", None),
            GenerateError::InvalidRequest(_)
        ));
        assert!(
            matches!(error_for_status(500, "boom", None), GenerateError::Remote { status: Some(500), message } if message == "boom")
        );
        assert!(matches!(
            error_for_status(503, "", None),
            GenerateError::Remote {
                status: Some(503),
                ..
            }
        ));
        assert_eq!(
            error_for_status(429, "", Some("7")),
            GenerateError::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            error_for_status(429, "", Some("soon")),
            GenerateError::RateLimited { retry_after: None }
        );
    }

    #[test]
    fn in_stream_errors_map_by_code_then_type() {
        let e = |s: &str| error_in_stream(parse_error_body(s));
        assert!(matches!(
            e(r#"{"error":{"message":"m","code":429}}"#),
            GenerateError::RateLimited { .. }
        ));
        assert!(matches!(
            e(r#"{"error":"overloaded","error_type":"overloaded"}"#),
            GenerateError::Remote { status: None, .. }
        ));
        assert!(matches!(
            e(r#"{"error":"bad","error_type":"validation"}"#),
            GenerateError::InvalidRequest(_)
        ));
        assert!(matches!(
            e(r#"{"error":{"message":"q","type":"insufficient_quota"}}"#),
            GenerateError::Remote {
                status: Some(402),
                ..
            }
        ));
        assert!(matches!(
            e(r#"{"object":"error","message":"x","type":"InternalServerError","code":500}"#),
            GenerateError::Remote {
                status: Some(500),
                ..
            }
        ));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after_at("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after_at(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after_at("-1", now), None);
        assert_eq!(
            parse_retry_after_at("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after_at("Sunday, 06-Nov-94 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after_at("Sun Nov  6 08:49:57 1994", now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            parse_retry_after_at("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after_at("Sun, 36 Nov 1994 08:00:00 GMT", now),
            None
        );
        assert_eq!(parse_retry_after_at("tomorrow", now), None);
        assert_eq!(
            parse_retry_after_at("Sun, 06 Nov 99999999999999 08:00:00 GMT", now),
            None
        );
        assert_eq!(
            parse_retry_after_at("1e300", now),
            Some(Duration::from_secs(1_000_000_000))
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
    }
}
