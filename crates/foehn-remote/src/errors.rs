//! Turning what a server says went wrong — an HTTP status, an error body in
//! one of the common shapes, a `Retry-After` header, an error object inside a
//! 200 event stream — into a [`GenerateError`].
//!
//! The shapes of error bodies are read by [`foehn_openai::error`] (OpenAI's,
//! TGI's, vLLM's, FastAPI's, plain text and HTML); [`ErrorBody`],
//! [`error_in_json`] and [`parse_error_body`] are re-exported from there.
//!
//! Status mapping: 400/413/422 and other 4xx → [`GenerateError::InvalidRequest`];
//! 401/403 → [`GenerateError::Unauthorized`]; 402 (out of credit) and 404
//! (model not found) → [`GenerateError::Remote`] keeping the status, so a
//! router can fail over without retrying; 408/504 → [`GenerateError::Timeout`];
//! 429 → [`GenerateError::RateLimited`] with the `Retry-After`; other 5xx →
//! [`GenerateError::Remote`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foehn_core::GenerateError;
pub use foehn_openai::error::{error_in_json, parse_error_body, ErrorBody};

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
