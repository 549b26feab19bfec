//! The HTTP handlers: completions (whole and streamed), models, health, and
//! the OpenAI-shaped answers for unknown routes and bad keys.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use foehn_core::{Event, GenerateError, GenerateRequest, Generator, TokenEvent};
use foehn_openai::{ChatRequest, CompletionRequest, Endpoint, ModelList, ModelObject};
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};

use crate::bridge::{self, Running};
use crate::error::ApiError;
use crate::queue::Scheduler;
use crate::request::parse_body;
use crate::response::{to_json, unix_now, ResponseBuilder};
use crate::ServeOptions;

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) generator: Arc<dyn Generator>,
    pub(crate) opts: ServeOptions,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) started: u64,
}

type Shared = State<Arc<AppState>>;

/// A parsed request, ready to run.
struct Job {
    request: GenerateRequest,
    model: String,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(State(app): Shared, body: Result<Bytes, BytesRejection>) -> Response {
    let job = body.map_err(rejection).and_then(|b| {
        let req: ChatRequest = parse_body(&b)?;
        let stream = req.stream.unwrap_or(false);
        let include_usage = req
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let request = req.into_generate(&app.generator.capabilities())?;
        job(&app, request, stream, include_usage)
    });
    match job {
        Ok(job) => run(app, Endpoint::Chat, job).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(app): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let job = body.map_err(rejection).and_then(|b| {
        let req: CompletionRequest = parse_body(&b)?;
        let stream = req.stream.unwrap_or(false);
        let include_usage = req
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let request = req.into_generate(&app.generator.capabilities())?;
        job(&app, request, stream, include_usage)
    });
    match job {
        Ok(job) => run(app, Endpoint::Completions, job).await,
        Err(e) => e.into_response(),
    }
}

/// Checks the model name and fills in the rest of the job.
fn job(
    app: &AppState,
    request: GenerateRequest,
    stream: bool,
    include_usage: bool,
) -> Result<Job, ApiError> {
    let served = &app.opts.models;
    let model = match (&request.model, served.first()) {
        (Some(m), _) if served.is_empty() || served.contains(m) => m.clone(),
        (Some(m), _) => return Err(ApiError::unknown_model(m, served)),
        (None, Some(first)) => first.clone(),
        (None, None) => app.generator.name().to_string(),
    };
    let logprobs = request.logprobs.is_some();
    Ok(Job {
        request,
        model,
        stream,
        include_usage,
        logprobs,
    })
}

/// An unreadable body (too large, cut off) as an OpenAI error.
fn rejection(r: BytesRejection) -> ApiError {
    let status = r.status();
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    ApiError::new(
        status,
        kind,
        format!("could not read the request body: {}", r.body_text()),
    )
}

/// Waits for a turn, starts the generation, and answers once its first event
/// (or error) is known, so errors before any token get their own status.
async fn run(app: Arc<AppState>, endpoint: Endpoint, job: Job) -> Response {
    let permit = match app.scheduler.admit().await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let mut running = bridge::start(
        app.generator.clone(),
        job.request,
        permit,
        app.scheduler.clone(),
    );
    let first = match running.events.recv().await {
        Some(Ok(event)) => event,
        Some(Err(e)) => return ApiError::from(e).into_response(),
        None => return stopped().into_response(),
    };
    let builder = ResponseBuilder::new(endpoint, &job.model, job.logprobs);
    if job.stream {
        let events = sse_events(running, first, builder, job.include_usage, job.logprobs);
        Sse::new(events)
            .keep_alive(KeepAlive::new().interval(app.opts.keep_alive))
            .into_response()
    } else {
        match collect(running, first).await {
            Ok((tokens, done)) => Json(builder.full(&tokens, &done)).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// The generation stopped without saying why (its thread panicked).
fn stopped() -> ApiError {
    ApiError::from(GenerateError::Backend(
        "the generation stopped without a final event".into(),
    ))
}

/// All tokens and the final event of a non-streaming request.
async fn collect(
    mut running: Running,
    first: Event,
) -> Result<(Vec<TokenEvent>, foehn_core::Completion), ApiError> {
    let mut tokens = Vec::new();
    let mut next = Some(Ok(first));
    loop {
        match next {
            Some(Ok(Event::Token(t))) => tokens.push(t),
            Some(Ok(Event::Done(done))) => return Ok((tokens, done)),
            Some(Err(e)) => return Err(ApiError::from(e)),
            None => return Err(stopped()),
        }
        next = running.events.recv().await;
    }
}

/// What the SSE stream still has to do.
struct SseState {
    running: Running,
    builder: ResponseBuilder,
    include_usage: bool,
    logprobs: bool,
    /// Events decided but not yet sent.
    pending: std::collections::VecDeque<SseEvent>,
    /// The first event, received before the response started.
    first: Option<Event>,
    finished: bool,
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

impl SseState {
    /// Turns one generator item into chunks; returns whether the stream is over.
    fn push(&mut self, item: Option<Result<Event, GenerateError>>) {
        match item {
            Some(Ok(Event::Token(t))) => {
                // Text held back (a split character, a possible stop string) needs no chunk.
                if !t.text.is_empty() || !t.tool_calls.is_empty() || self.logprobs {
                    let chunk = self.builder.token_chunk(&t, self.include_usage);
                    self.pending.push_back(data(&chunk));
                }
            }
            Some(Ok(Event::Done(done))) => {
                self.pending
                    .push_back(data(&self.builder.finish_chunk(&done, self.include_usage)));
                if self.include_usage {
                    self.pending
                        .push_back(data(&self.builder.usage_chunk(&done)));
                }
                self.pending.push_back(SseEvent::default().data("[DONE]"));
                self.finished = true;
            }
            Some(Err(e)) => {
                // Headers are gone: the error travels as an event, as OpenAI's do.
                self.pending.push_back(data(&ApiError::from(e).body()));
                self.finished = true;
            }
            None => {
                self.pending.push_back(data(&stopped().body()));
                self.finished = true;
            }
        }
    }
}

/// The SSE events of a streaming response: (chat: a role chunk), the token
/// chunks, the finish chunk, the usage chunk when asked for, `[DONE]`.
/// Dropping the stream (the client went away) cancels the generation.
fn sse_events(
    running: Running,
    first: Event,
    builder: ResponseBuilder,
    include_usage: bool,
    logprobs: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    let mut pending = std::collections::VecDeque::new();
    if builder.endpoint() == Endpoint::Chat {
        pending.push_back(data(&builder.role_chunk(include_usage)));
    }
    let state = SseState {
        running,
        builder,
        include_usage,
        logprobs,
        pending,
        first: Some(first),
        finished: false,
    };
    stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.pending.pop_front() {
                return Some((Ok(event), s));
            }
            if s.finished {
                return None;
            }
            let item = match s.first.take() {
                Some(first) => Some(Ok(first)),
                None => s.running.events.recv().await,
            };
            s.push(item);
        }
    })
}

/// `GET /v1/models`.
pub(crate) async fn models(State(app): Shared) -> Json<Value> {
    let data = model_ids(&app)
        .iter()
        .map(|id| model_object(&app, id))
        .collect();
    Json(to_json(&ModelList::new(data)))
}

/// `GET /v1/models/{id}`.
pub(crate) async fn model(State(app): Shared, Path(id): Path<String>) -> Response {
    let ids = model_ids(&app);
    if ids.contains(&id) || app.opts.models.is_empty() {
        Json(to_json(&model_object(&app, &id))).into_response()
    } else {
        ApiError::unknown_model(&id, &ids).into_response()
    }
}

fn model_ids(app: &AppState) -> Vec<String> {
    if app.opts.models.is_empty() {
        vec![app.generator.name().to_string()]
    } else {
        app.opts.models.clone()
    }
}

fn model_object(app: &AppState, id: &str) -> ModelObject {
    ModelObject::new(id, app.started, "foehn")
}

/// `GET /health`: liveness, the models, the queue's counters, and what the
/// generator reports of itself (the local engine: its prefix cache).
pub(crate) async fn health(State(app): Shared) -> Json<Value> {
    let stats = app.scheduler.stats();
    let caps = app.generator.capabilities();
    let mut body = json!({
        "status": "ok",
        "generator": app.generator.name(),
        "models": model_ids(&app),
        "context_length": caps.context_length,
        "uptime_s": unix_now().saturating_sub(app.started),
        "queue": stats,
    });
    if let Some(status) = app.generator.status() {
        body["engine"] = status;
    }
    Json(body)
}

/// Any other route: a 404 error object.
pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::unknown_route(method.as_str(), uri.path())
}

/// A known route with the wrong method: a 405 error object.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{} does not take {method} requests", uri.path()),
    )
}

/// Refuses a body whose declared `Content-Length` is over the limit before
/// reading any of it (the body extractor alone would wait for the bytes).
pub(crate) async fn check_length(State(app): Shared, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let limit = app.opts.max_body_bytes;
    match declared {
        Some(n) if n > limit as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body has {n} bytes, more than the limit of {limit}"),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Checks `Authorization: Bearer <key>` when the server has a key.
pub(crate) async fn require_key(State(app): Shared, request: Request, next: Next) -> Response {
    if let Some(key) = &app.opts.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference (no timing hint about the key).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
