//! OpenAI error objects (`{"error": {"message", "type", "param", "code"}}`)
//! with their HTTP status, and how generator errors map onto them.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use foehn_core::GenerateError;
use foehn_openai::ErrorResponse;

use crate::response::to_json;

/// An error answered to an HTTP client as an OpenAI error object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
    /// OpenAI's error class (`invalid_request_error`, `server_error`, …).
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A stable machine-readable code (`context_length_exceeded`, …).
    pub code: Option<&'static str>,
    /// Sent as `Retry-After` (whole seconds, rounded up) with 429 and 503 answers.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with the given status, class and message.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: the request is malformed or asks for something unsupported.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 about one field.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::invalid(message)
        }
    }

    /// 401: a missing or wrong API key.
    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or invalid API key: send `Authorization: Bearer <key>`",
            )
        }
    }

    /// 404: no such route.
    pub fn unknown_route(method: &str, path: &str) -> Self {
        Self {
            code: Some("unknown_url"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("unknown route: {method} {path}"),
            )
        }
    }

    /// 404: the request names a model this server does not serve.
    pub fn unknown_model(model: &str, served: &[String]) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("the model {model:?} does not exist here; this server serves {served:?}"),
            )
        }
    }

    /// 429: the queue is full.
    pub fn queue_full(capacity: usize, retry_after: Duration) -> Self {
        Self {
            code: Some("queue_full"),
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!("the server is busy: {capacity} requests are already waiting; retry later"),
            )
        }
    }

    /// The body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        to_json(&ErrorResponse::new(
            self.message.clone(),
            self.kind,
            self.param.clone(),
            self.code,
        ))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.as_secs() == 0))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(d) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs(d).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<GenerateError> for ApiError {
    /// A generator's error as the client should see it: its own faults are 4xx,
    /// an upstream's or the engine's are 5xx (an upstream refusing this
    /// server's credentials is a 502, not a 401: the client's key was fine).
    fn from(e: GenerateError) -> Self {
        let message = e.to_string();
        match e {
            GenerateError::InvalidRequest(_) => Self::invalid(message),
            GenerateError::ContextOverflow { .. } => Self {
                param: Some("messages".into()),
                code: Some("context_length_exceeded"),
                ..Self::invalid(message)
            },
            GenerateError::Unavailable(_) => Self {
                code: Some("unavailable"),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            },
            GenerateError::Unauthorized(_) => Self {
                code: Some("upstream_unauthorized"),
                ..Self::new(StatusCode::BAD_GATEWAY, "server_error", message)
            },
            GenerateError::RateLimited { retry_after } => Self {
                code: Some("rate_limit_exceeded"),
                retry_after: Some(retry_after.unwrap_or(Duration::from_secs(1))),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
            },
            GenerateError::Timeout(_) => Self {
                code: Some("timeout"),
                ..Self::new(StatusCode::GATEWAY_TIMEOUT, "server_error", message)
            },
            // An upstream that judged the request itself bad: the client's fault here too.
            GenerateError::Remote {
                status: Some(s @ (400 | 404 | 413 | 422)),
                ..
            } => {
                let status = StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST);
                Self {
                    code: Some("upstream_rejected"),
                    ..Self::new(status, "invalid_request_error", message)
                }
            }
            GenerateError::Remote { .. } => Self {
                code: Some("upstream_error"),
                ..Self::new(StatusCode::BAD_GATEWAY, "server_error", message)
            },
            GenerateError::Backend(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_errors_map_to_their_statuses() {
        let cases = [
            (GenerateError::InvalidRequest("x".into()), 400),
            (
                GenerateError::ContextOverflow {
                    prompt_tokens: 10,
                    context: 8,
                },
                400,
            ),
            (GenerateError::Unavailable("x".into()), 503),
            (GenerateError::Unauthorized("x".into()), 502),
            (
                GenerateError::RateLimited {
                    retry_after: Some(Duration::from_millis(2500)),
                },
                429,
            ),
            (GenerateError::Timeout("x".into()), 504),
            (
                GenerateError::Remote {
                    status: Some(500),
                    message: "x".into(),
                },
                502,
            ),
            (
                GenerateError::Remote {
                    status: Some(422),
                    message: "x".into(),
                },
                422,
            ),
            (
                GenerateError::Remote {
                    status: None,
                    message: "x".into(),
                },
                502,
            ),
            (GenerateError::Backend("x".into()), 500),
        ];
        for (e, status) in cases {
            assert_eq!(ApiError::from(e.clone()).status.as_u16(), status, "{e:?}");
        }
        let overflow = ApiError::from(GenerateError::ContextOverflow {
            prompt_tokens: 10,
            context: 8,
        });
        assert_eq!(overflow.body()["error"]["code"], "context_length_exceeded");
        let limited = ApiError::from(GenerateError::RateLimited {
            retry_after: Some(Duration::from_millis(2500)),
        });
        assert_eq!(limited.retry_after.map(retry_after_secs), Some(3));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
