//! [`OpenAiClient`]: a blocking client for OpenAI-compatible servers (the
//! Hugging Face Inference Providers router, vLLM, TGI, llama-server, Ollama,
//! OpenAI itself) that implements [`Generator`].
//!
//! Every generation streams (`stream: true`). The HTTP exchange runs on a
//! reader thread that parses SSE and hands items over a channel, so the
//! consumer can enforce the first-byte and idle timeouts precisely and notice
//! a cancellation while the server is silent.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use foehn_core::{
    CancelToken, Capabilities, Completion, Event, EventStream, FinishReason, GenerateError,
    GenerateRequest, Generator, Prompt, Timings, TokenEvent, Usage,
};
use foehn_openai::{
    finish_reason_from_name, ChatResponse, ClientOptions, Endpoint, LogprobEntry, Logprobs,
    ModelList, RequestBody, Response, TextResponse,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::errors::{error_for_status, error_in_json, error_in_stream, parse_error_body};
use crate::sse::{SseEvent, SseItem, SseParser};

/// The Hugging Face Inference Providers router's OpenAI-compatible base URL.
pub const HF_ROUTER_BASE_URL: &str = "https://router.huggingface.co/v1";

/// The most bytes of an error body read before giving up on the rest.
const MAX_ERROR_BODY: u64 = 64 * 1024;
/// The most bytes of a non-streamed JSON answer.
const MAX_JSON_BODY: u64 = 16 * 1024 * 1024;
/// How often a waiting consumer looks at its cancel token.
const POLL: Duration = Duration::from_millis(20);

/// Why a client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// A token was needed from the environment and the variable is not set.
    #[error("{0} is not set: the Hugging Face router needs an access token (https://huggingface.co/settings/tokens)")]
    MissingToken(&'static str),
}

/// How long the client waits, per phase of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the connection, TLS included. Default 10 s.
    pub connect: Duration,
    /// From sending the request to the response headers, and again from the
    /// headers to the first SSE line (prompt processing happens here). Default 60 s.
    pub first_byte: Duration,
    /// Between two SSE lines once the stream has started (comments and
    /// keep-alives count as activity). Default 30 s.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(30),
        }
    }
}

/// A model a server lists at `GET /models`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteModel {
    /// The model id to put in requests.
    pub id: String,
    /// Its owner, when the server says.
    pub owned_by: Option<String>,
}

/// An OpenAI-compatible HTTP client (see the module docs).
///
/// ```no_run
/// use foehn_core::{GenerateRequest, Generator, Message};
/// use foehn_remote::OpenAiClient;
///
/// let client = OpenAiClient::new("http://127.0.0.1:8080/v1").with_model("my-model");
/// let (text, done) = client.generate_text(GenerateRequest::chat(vec![Message::user("Hi")]))?;
/// println!("{text} ({:?}, served by {:?})", done.finish_reason, done.served_by);
/// # Ok::<_, foehn_core::GenerateError>(())
/// ```
#[derive(Clone)]
pub struct OpenAiClient {
    name: String,
    base_url: String,
    api_key: Option<String>,
    model: Option<String>,
    bill_to: Option<String>,
    headers: Vec<(String, String)>,
    timeouts: Timeouts,
    capabilities: Capabilities,
    include_usage: bool,
    extended_sampling: bool,
    agent: ureq::Agent,
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("OpenAiClient")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("bill_to", &self.bill_to)
            .field("timeouts", &self.timeouts)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl OpenAiClient {
    /// A client for the server at `base_url` (the part before
    /// `/chat/completions`, e.g. `http://127.0.0.1:8000/v1`), named `remote`,
    /// with no token, the default [`Timeouts`], and capabilities that assume
    /// tools and JSON schemas are supported and the context is unknown.
    pub fn new(base_url: impl Into<String>) -> Self {
        let timeouts = Timeouts::default();
        Self {
            name: "remote".to_string(),
            base_url: base_url.into().trim_end_matches('/').to_string(),
            api_key: None,
            model: None,
            bill_to: None,
            headers: Vec::new(),
            timeouts,
            capabilities: Capabilities {
                context_length: None,
                tools: true,
                json_schema: true,
                token_prompts: false,
            },
            include_usage: true,
            extended_sampling: false,
            agent: build_agent(&timeouts),
        }
    }

    /// The Hugging Face Inference Providers router, named `hf-router`, with
    /// the token from `HF_TOKEN`. Model ids may carry a `:provider`,
    /// `:fastest` or `:cheapest` suffix; they are passed through.
    ///
    /// ```no_run
    /// let client = foehn_remote::OpenAiClient::hf_router()?
    ///     .with_model("mistralai/Mistral-7B-Instruct-v0.3:fastest");
    /// # Ok::<_, foehn_remote::RemoteError>(())
    /// ```
    pub fn hf_router() -> Result<Self, RemoteError> {
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        let token = token.ok_or(RemoteError::MissingToken("HF_TOKEN"))?;
        Ok(Self::hf_router_with_token(token.trim()))
    }

    /// The Hugging Face router with an explicit token.
    pub fn hf_router_with_token(token: impl Into<String>) -> Self {
        Self::new(HF_ROUTER_BASE_URL)
            .with_name("hf-router")
            .with_api_key(token)
    }

    /// Sends `Authorization: Bearer <key>`.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The model used when a request does not name one.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The name reported in `Completion::served_by` and used by routers.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Bills an organization on the Hugging Face router (`X-HF-Bill-To`).
    pub fn with_bill_to(mut self, org: impl Into<String>) -> Self {
        self.bill_to = Some(org.into());
        self
    }

    /// Sends an extra header with every request.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the timeouts.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self.agent = build_agent(&timeouts);
        self
    }

    /// Declares what the remote model can honour (context length, tools, …).
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Whether to ask for the final usage chunk (`stream_options.include_usage`,
    /// default on); turn off for servers that reject `stream_options`.
    pub fn with_usage_chunk(mut self, on: bool) -> Self {
        self.include_usage = on;
        self
    }

    /// Also sends the non-OpenAI sampling fields `top_k`, `min_p` and
    /// `repetition_penalty`/`repeat_penalty` (vLLM, TGI, llama-server accept
    /// them; OpenAI rejects them). Off by default.
    pub fn with_extended_sampling(mut self, on: bool) -> Self {
        self.extended_sampling = on;
        self
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Lists the server's models (`GET {base}/models`).
    pub fn list_models(&self) -> Result<Vec<RemoteModel>, GenerateError> {
        let url = format!("{}/models", self.base_url);
        let mut req = self.agent.get(&url).header("Accept", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.call().map_err(|e| map_ureq_error(e, &url))?;
        let status = resp.status().as_u16();
        let retry_after = header(&resp, "retry-after");
        let limit = if (200..300).contains(&status) {
            MAX_JSON_BODY
        } else {
            MAX_ERROR_BODY
        };
        let body = read_limited(resp.into_body().into_reader(), limit)
            .map_err(|e| map_io_error(&e, "reading the model list"))?;
        if !(200..300).contains(&status) {
            return Err(error_for_status(status, &body, retry_after.as_deref()));
        }
        let list: ModelList = serde_json::from_str(&body).map_err(|e| GenerateError::Remote {
            status: Some(status),
            message: format!("invalid JSON from GET /models: {e}"),
        })?;
        let entries = list.entries().ok_or_else(|| GenerateError::Remote {
            status: Some(status),
            message: "GET /models: no `data` list in the answer".into(),
        })?;
        Ok(entries
            .iter()
            .filter_map(|m| {
                Some(RemoteModel {
                    id: m.model_id()?.to_string(),
                    owned_by: m.owned_by.clone(),
                })
            })
            .collect())
    }

    /// The body for a request (its endpoint: [`RequestBody::endpoint`]).
    fn request_body(&self, request: &GenerateRequest) -> Result<RequestBody, GenerateError> {
        let model = request
            .model
            .as_ref()
            .or(self.model.as_ref())
            .ok_or_else(|| {
                GenerateError::InvalidRequest(format!(
                    "{}: no model id (set it on the request or with `with_model`)",
                    self.name
                ))
            })?;
        if let Prompt::Tokens(_) = request.prompt {
            return Err(GenerateError::InvalidRequest(format!(
                "{}: token-id prompts are not supported by remote providers; send text or a chat",
                self.name
            )));
        }
        // A constraint travels as `response_format`, which only chats carry
        // and which says JSON only: anything else is refused, not dropped.
        if let Some(constraint) = request.output_constraint()? {
            if constraint.to_response_format().is_none() {
                return Err(GenerateError::InvalidRequest(format!(
                    "{}: a {} constraint is for the local engine; remote providers take JSON \
                     schemas and JSON objects (response_format)",
                    self.name,
                    constraint.kind()
                )));
            }
            if !matches!(request.prompt, Prompt::Chat(_)) {
                return Err(GenerateError::InvalidRequest(format!(
                    "{}: structured output (response_format) needs a chat prompt",
                    self.name
                )));
            }
        }
        let options = ClientOptions {
            include_usage: self.include_usage,
            extended_sampling: self.extended_sampling,
        };
        Ok(RequestBody::streaming(request, model, options))
    }
}

/// `t + d`, with absurd durations capped at a year instead of overflowing.
fn later(t: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 86_400);
    t.checked_add(d.min(YEAR)).unwrap_or(t)
}

fn build_agent(t: &Timeouts) -> ureq::Agent {
    // The consumer enforces first-byte and idle timeouts; the per-read limit
    // is a backstop so an abandoned reader thread always ends.
    let backstop = t
        .first_byte
        .max(t.idle)
        .saturating_add(Duration::from_secs(1));
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(t.connect))
        .timeout_recv_response(Some(t.first_byte))
        .timeout_per_read(Some(backstop))
        .build()
        .into()
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

fn read_limited(reader: impl Read, limit: u64) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    reader.take(limit).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn map_ureq_error(e: ureq::Error, url: &str) -> GenerateError {
    match e {
        ureq::Error::Timeout(t) => GenerateError::Timeout(format!("{url}: {}", timeout_phase(t))),
        ureq::Error::BadUri(u) => GenerateError::InvalidRequest(format!("bad URL {u}")),
        ureq::Error::Io(io) => map_io_error(&io, url),
        other => GenerateError::Unavailable(format!("{url}: {other}")),
    }
}

fn timeout_phase(t: ureq::Timeout) -> &'static str {
    match t {
        ureq::Timeout::Connect | ureq::Timeout::Resolve => {
            "no connection within the connect timeout"
        }
        ureq::Timeout::RecvResponse => "no response within the first-byte timeout",
        ureq::Timeout::PerRead | ureq::Timeout::RecvBody => "the server stalled",
        _ => "timed out",
    }
}

fn map_io_error(e: &std::io::Error, context: &str) -> GenerateError {
    if let Some(ureq::Error::Timeout(t)) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ureq::Error>())
    {
        return GenerateError::Timeout(format!("{context}: {}", timeout_phase(*t)));
    }
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            GenerateError::Timeout(format!("{context}: {e}"))
        }
        _ => GenerateError::Unavailable(format!("{context}: {e}")),
    }
}

/// What the reader thread hands the consumer.
enum Msg {
    /// 2xx response headers: the event stream follows.
    Head { provider: Option<String> },
    /// A 2xx answer that is one JSON document instead of a stream.
    Json {
        provider: Option<String>,
        body: String,
    },
    /// One SSE item.
    Item(SseItem),
    /// The body ended; `truncated` = a partial line or event was pending.
    End { truncated: bool },
    /// The exchange failed.
    Fail(GenerateError),
}

/// Runs one HTTP exchange on the reader thread.
fn exchange(
    request: ureq::RequestBuilder<ureq::typestate::WithBody>,
    body: String,
    url: String,
    tx: Sender<Msg>,
) {
    let resp = match request.send(body.as_bytes()) {
        Ok(resp) => resp,
        Err(e) => {
            let _ = tx.send(Msg::Fail(map_ureq_error(e, &url)));
            return;
        }
    };
    let status = resp.status().as_u16();
    let provider = header(&resp, "x-inference-provider");
    if !(200..300).contains(&status) {
        let retry_after = header(&resp, "retry-after");
        let err = match read_limited(resp.into_body().into_reader(), MAX_ERROR_BODY) {
            Ok(body) => error_for_status(status, &body, retry_after.as_deref()),
            Err(_) => error_for_status(status, "", retry_after.as_deref()),
        };
        let _ = tx.send(Msg::Fail(err));
        return;
    }
    let content_type = header(&resp, "content-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut reader = resp.into_body().into_reader();
    if content_type.starts_with("application/json") {
        let msg = match read_limited(reader, MAX_JSON_BODY) {
            Ok(body) => Msg::Json { provider, body },
            Err(e) => Msg::Fail(map_io_error(&e, &url)),
        };
        let _ = tx.send(msg);
        return;
    }
    if tx.send(Msg::Head { provider }).is_err() {
        return;
    }
    let mut parser = SseParser::new();
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => {
                let _ = tx.send(Msg::End {
                    truncated: parser.finish(),
                });
                return;
            }
            Ok(n) => match parser.feed(&buf[..n]) {
                Ok(items) => {
                    for item in items {
                        if tx.send(Msg::Item(item)).is_err() {
                            return; // the consumer is gone: dropping the reader closes the connection
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Msg::Fail(GenerateError::Remote {
                        status: Some(status),
                        message: e.to_string(),
                    }));
                    return;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Msg::Fail(map_io_error(
                    &e,
                    "connection lost while reading the event stream",
                )));
                return;
            }
        }
    }
}

impl Generator for OpenAiClient {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn generate(
        &self,
        request: GenerateRequest,
        cancel: CancelToken,
    ) -> Result<EventStream, GenerateError> {
        let started = Instant::now();
        let body = self.request_body(&request)?;
        let endpoint = body.endpoint();
        let url = format!("{}/{}", self.base_url, endpoint.path());
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Accept", "text/event-stream");
        if let Some(key) = &self.api_key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        if let Some(org) = &self.bill_to {
            req = req.header("X-HF-Bill-To", org.as_str());
        }
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let body = serde_json::to_string(&body).map_err(|e| {
            GenerateError::InvalidRequest(format!("{}: cannot write the request: {e}", self.name))
        })?;
        let (tx, rx) = mpsc::channel();
        let thread_url = url.clone();
        std::thread::Builder::new()
            .name("foehn-remote-sse".into())
            .spawn(move || exchange(req, body, thread_url, tx))
            .map_err(|e| {
                GenerateError::Backend(format!("cannot start the HTTP reader thread: {e}"))
            })?;

        let mut stream = ChunkStream {
            rx: Some(rx),
            cancel,
            timeouts: self.timeouts,
            name: self.name.clone(),
            endpoint,
            started,
            last_activity: started,
            seen_line: false,
            first_token: None,
            pending: VecDeque::new(),
            finish_reason: None,
            usage: None,
            pieces: 0,
            provider: None,
            done: false,
        };
        // Wait for the response headers here, so HTTP errors (401, 429, 5xx…)
        // come back from `generate` itself and a router can fail over.
        let deadline = later(
            started,
            self.timeouts
                .connect
                .saturating_add(self.timeouts.first_byte)
                + Duration::from_secs(1),
        );
        loop {
            if stream.cancel.is_cancelled() {
                stream.rx = None;
                stream
                    .pending
                    .push_back(stream.done_event(FinishReason::Cancelled));
                stream.done = true;
                return Ok(Box::new(stream));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(GenerateError::Timeout(format!(
                    "{url}: no response within the first-byte timeout"
                )));
            }
            let Some(rx) = &stream.rx else { break };
            match rx.recv_timeout(POLL.min(deadline - now)) {
                Ok(Msg::Head { provider }) => {
                    stream.provider = provider;
                    stream.last_activity = Instant::now();
                    return Ok(Box::new(stream));
                }
                Ok(Msg::Json { provider, body }) => {
                    stream.provider = provider;
                    stream.rx = None;
                    stream.non_streamed(&body)?;
                    return Ok(Box::new(stream));
                }
                Ok(Msg::Fail(e)) => return Err(e),
                Ok(Msg::Item(_) | Msg::End { .. }) => {
                    return Err(GenerateError::Backend(
                        "the HTTP reader sent events before headers".into(),
                    ))
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Err(GenerateError::Backend(
            "the HTTP reader thread ended without an answer".into(),
        ))
    }
}

/// The consumer side of one streamed generation.
struct ChunkStream {
    rx: Option<Receiver<Msg>>,
    cancel: CancelToken,
    timeouts: Timeouts,
    name: String,
    endpoint: Endpoint,
    started: Instant,
    last_activity: Instant,
    /// Whether any SSE line arrived (after it, the idle timeout applies).
    seen_line: bool,
    first_token: Option<Instant>,
    pending: VecDeque<Event>,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
    /// Text pieces streamed (the completion-token estimate when no usage comes).
    pieces: u32,
    provider: Option<String>,
    done: bool,
}

impl ChunkStream {
    fn done_event(&self, reason: FinishReason) -> Event {
        let now = Instant::now();
        let usage = self.usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: self.pieces,
            cached_tokens: 0,
        });
        Event::Done(Completion {
            finish_reason: reason,
            usage,
            timings: Timings {
                time_to_first_token: self.first_token.map(|t| t - self.started),
                prefill: None,
                decode: self.first_token.map(|t| now - t),
            },
            served_by: Some(self.name.clone()),
            tried: Vec::new(),
            provider: self.provider.clone(),
        })
    }

    /// Ends the stream normally; the connection is dropped.
    fn finish(&mut self) {
        self.rx = None;
        self.done = true;
        let reason = self.finish_reason.unwrap_or(FinishReason::Stop);
        let event = self.done_event(reason);
        self.pending.push_back(event);
    }

    /// Ends the stream with an error; the connection is dropped.
    fn fail(&mut self, e: GenerateError) -> Option<Result<Event, GenerateError>> {
        self.rx = None;
        self.done = true;
        self.pending.clear();
        Some(Err(e))
    }

    /// A server that ignored `stream: true` and answered with one JSON document.
    fn non_streamed(&mut self, body: &str) -> Result<(), GenerateError> {
        let value: Value = serde_json::from_str(body).map_err(|e| GenerateError::Remote {
            status: Some(200),
            message: format!("invalid JSON answer: {e}"),
        })?;
        if let Some(err) = error_in_json(&value) {
            return Err(error_in_stream(err));
        }
        match self.endpoint {
            Endpoint::Chat => self.whole(reply::<ChatResponse>(&value).unwrap_or_default()),
            Endpoint::Completions => self.whole(reply::<TextResponse>(&value).unwrap_or_default()),
        }
        Ok(())
    }

    /// Takes a whole answer's first choice as the stream.
    fn whole<L>(&mut self, answer: Response<L>) {
        let choice = answer.choices.first();
        if let Some(reasoning) = choice.and_then(|c| c.reasoning()) {
            self.push_reasoning(reasoning);
        }
        let text = choice.and_then(|c| c.content()).unwrap_or_default();
        if let Some(reason) = choice.and_then(|c| c.finish_reason.as_deref()) {
            self.finish_reason = Some(finish_reason_from_name(reason));
        }
        self.usage = answer.usage.flatten().and_then(|u| u.to_core());
        if !text.is_empty() {
            self.first_token.get_or_insert_with(Instant::now);
            self.pieces += 1;
            self.pending
                .push_back(token(text.to_string(), None, Vec::new()));
        }
        if let Some(choice) = choice {
            self.push_tool_calls(choice.tool_calls());
        }
        self.finish();
    }

    /// Handles one SSE event; `Err` ends the stream.
    fn on_event(&mut self, event: SseEvent) -> Result<(), GenerateError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.finish();
            return Ok(());
        }
        if event.event == "error" {
            let body = parse_error_body(data);
            return Err(error_in_stream(body));
        }
        if data.is_empty() {
            return Ok(());
        }
        let value: Value = serde_json::from_str(data).map_err(|e| GenerateError::Remote {
            status: None,
            message: format!("invalid JSON in a stream chunk ({e}): {}", clip(data, 200)),
        })?;
        if let Some(err) = error_in_json(&value) {
            return Err(error_in_stream(err));
        }
        if !value.is_object() {
            return Err(GenerateError::Remote {
                status: None,
                message: format!("a stream chunk is not a JSON object: {}", clip(data, 200)),
            });
        }
        let not_a_chunk = |e: String| GenerateError::Remote {
            status: None,
            message: format!("an unreadable stream chunk ({e}): {}", clip(data, 200)),
        };
        match self.endpoint {
            Endpoint::Chat => self.chunk(reply::<ChatResponse>(&value).map_err(not_a_chunk)?),
            Endpoint::Completions => {
                self.chunk(reply::<TextResponse>(&value).map_err(not_a_chunk)?)
            }
        }
        Ok(())
    }

    /// Takes one chunk's usage, choice 0's text and its finish reason.
    fn chunk<L: Logprobs>(&mut self, chunk: Response<L>) {
        if let Some(usage) = chunk.usage.flatten().and_then(|u| u.to_core()) {
            self.usage = Some(usage);
        }
        // `choices` may be missing, `null` (some providers' usage chunks) or empty.
        let Some(choice) = chunk.choices.iter().find(|c| c.index == 0) else {
            return;
        };
        if let Some(reasoning) = choice.reasoning() {
            self.push_reasoning(reasoning);
        }
        let text = choice.content().unwrap_or_default();
        if !text.is_empty() {
            let entries = choice
                .logprobs
                .as_ref()
                .map(Logprobs::entries)
                .unwrap_or_default();
            self.push_text(text, entries);
        }
        self.push_tool_calls(choice.tool_calls());
        if let Some(reason) = &choice.finish_reason {
            self.finish_reason = Some(finish_reason_from_name(reason));
        }
    }

    /// Emits pieces of tool calls (`delta.tool_calls`, `message.tool_calls`).
    fn push_tool_calls(&mut self, tool_calls: Vec<foehn_core::ToolCallDelta>) {
        if tool_calls.is_empty() {
            return;
        }
        self.first_token.get_or_insert_with(Instant::now);
        self.pieces += 1;
        self.pending.push_back(Event::Token(TokenEvent {
            tool_calls,
            ..TokenEvent::default()
        }));
    }

    /// Emits a piece of the model's reasoning (`reasoning_content`).
    fn push_reasoning(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.first_token.get_or_insert_with(Instant::now);
        self.pieces += 1;
        self.pending.push_back(Event::Token(TokenEvent {
            text: text.to_string(),
            id: None,
            logprob: None,
            top_logprobs: Vec::new(),
            reasoning: true,
            tool_calls: Vec::new(),
        }));
    }

    /// Emits a text piece, split per token when the logprobs spell it out exactly.
    fn push_text(&mut self, text: &str, entries: Vec<LogprobEntry>) {
        if self.first_token.is_none() {
            self.first_token = Some(Instant::now());
        }
        self.pieces += 1;
        let joined: String = entries.iter().map(|e| e.0.as_str()).collect();
        if entries.len() > 1 && joined == text {
            for (tok, lp, top) in entries {
                self.pending.push_back(token(tok, Some(lp), top));
            }
        } else if let Some((_, lp, top)) = entries.into_iter().next() {
            self.pending
                .push_back(token(text.to_string(), Some(lp), top));
        } else {
            self.pending
                .push_back(token(text.to_string(), None, Vec::new()));
        }
    }
}

/// A reply body as `T`; an error names what is wrong (a reply that is not
/// a JSON object, mostly: fields of the wrong type read as absent).
fn reply<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    T::deserialize(value).map_err(|e| e.to_string())
}

impl Iterator for ChunkStream {
    type Item = Result<Event, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if self.cancel.is_cancelled() {
                self.finish_reason = Some(FinishReason::Cancelled);
                self.finish();
                continue;
            }
            let limit = if self.seen_line {
                self.timeouts.idle
            } else {
                self.timeouts.first_byte
            };
            let deadline = later(self.last_activity, limit);
            let now = Instant::now();
            if now >= deadline {
                if self.finish_reason.is_some() {
                    // Everything arrived but `[DONE]`: end normally.
                    self.finish();
                    continue;
                }
                let what = if self.seen_line {
                    "idle timeout: no data"
                } else {
                    "first-byte timeout: no event"
                };
                return self.fail(GenerateError::Timeout(format!(
                    "{}: {what} for {:.1}s",
                    self.name,
                    limit.as_secs_f64()
                )));
            }
            let Some(rx) = &self.rx else {
                return self.fail(GenerateError::Backend("the event stream was closed".into()));
            };
            match rx.recv_timeout(POLL.min(deadline - now)) {
                Ok(Msg::Item(item)) => {
                    self.seen_line = true;
                    self.last_activity = Instant::now();
                    if let SseItem::Event(event) = item {
                        if let Err(e) = self.on_event(event) {
                            return self.fail(e);
                        }
                    }
                }
                Ok(Msg::End { truncated }) => {
                    if self.finish_reason.is_some() && !truncated {
                        self.finish();
                    } else {
                        let why = if truncated {
                            "in the middle of an event"
                        } else {
                            "before [DONE]"
                        };
                        return self.fail(GenerateError::Unavailable(format!(
                            "{}: the connection closed {why} (the stream is incomplete)",
                            self.name
                        )));
                    }
                }
                Ok(Msg::Fail(e)) => {
                    if self.finish_reason.is_some() && matches!(e, GenerateError::Unavailable(_)) {
                        // Lost the connection after the last chunk: nothing is missing.
                        self.finish();
                    } else {
                        return self.fail(e);
                    }
                }
                Ok(Msg::Head { .. } | Msg::Json { .. }) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return self.fail(GenerateError::Backend(
                        "the HTTP reader thread stopped".into(),
                    ));
                }
            }
        }
    }
}

fn token(text: String, logprob: Option<f32>, top_logprobs: Vec<(String, f32)>) -> Event {
    Event::Token(TokenEvent {
        text,
        id: None,
        logprob,
        top_logprobs,
        reasoning: false,
        tool_calls: Vec::new(),
    })
}

fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foehn_core::{Constraint, Message};
    use serde_json::json;

    /// The body as JSON, and its endpoint.
    fn body_of(
        client: &OpenAiClient,
        req: &GenerateRequest,
    ) -> Result<(Value, Endpoint), GenerateError> {
        let body = client.request_body(req)?;
        Ok((serde_json::to_value(&body).unwrap(), body.endpoint()))
    }

    fn stream(endpoint: Endpoint) -> ChunkStream {
        let now = Instant::now();
        ChunkStream {
            rx: None,
            cancel: CancelToken::new(),
            timeouts: Timeouts::default(),
            name: "t".into(),
            endpoint,
            started: now,
            last_activity: now,
            seen_line: true,
            first_token: None,
            pending: VecDeque::new(),
            finish_reason: None,
            usage: None,
            pieces: 0,
            provider: None,
            done: false,
        }
    }

    fn data(s: &str) -> SseEvent {
        SseEvent {
            event: "message".into(),
            data: s.into(),
            id: String::new(),
        }
    }

    fn texts(s: &ChunkStream) -> Vec<String> {
        s.pending
            .iter()
            .filter_map(|e| match e {
                Event::Token(t) => Some(t.text.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn request_body_has_the_openai_fields() {
        let client = OpenAiClient::new("http://x/v1/").with_model("m:fastest");
        assert_eq!(client.base_url(), "http://x/v1");
        let mut req = GenerateRequest::chat(vec![Message::system("s"), Message::user("u")]);
        req.max_tokens = Some(5);
        req.seed = Some(1);
        req.stop = vec!["\n".into()];
        req.logprobs = Some(2);
        req.top_k = Some(3);
        req.ignore_eos = true;
        req.tools = Some(json!([{"type": "function"}]));
        let (body, ep) = body_of(&client, &req).unwrap();
        assert_eq!(ep, Endpoint::Chat);
        assert_eq!(body["model"], "m:fastest");
        assert_eq!(body["messages"][1], json!({"role": "user", "content": "u"}));
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_tokens"], 5);
        assert_eq!(body["stop"], json!(["\n"]));
        assert_eq!(body["logprobs"], true);
        assert_eq!(body["top_logprobs"], 2);
        assert_eq!(body["tools"], json!([{"type": "function"}]));
        assert!(body.get("top_k").is_none() && body.get("temperature").is_none());
        assert!(body.get("ignore_eos").is_none());
        req.repeat_penalty = Some(1.5);
        let (body, _) = body_of(&client.clone().with_extended_sampling(true), &req).unwrap();
        assert_eq!(body["top_k"], 3);
        assert_eq!(body["ignore_eos"], true);
        assert_eq!(
            (&body["repeat_penalty"], &body["repetition_penalty"]),
            (&json!(1.5), &json!(1.5))
        );

        req.prompt = Prompt::Text("once".into());
        req.model = Some("other".into());
        let (body, ep) = body_of(&client, &req).unwrap();
        assert_eq!(
            (ep, &body["prompt"], &body["model"], &body["logprobs"]),
            (
                Endpoint::Completions,
                &json!("once"),
                &json!("other"),
                &json!(2)
            )
        );
        req.prompt = Prompt::Tokens(vec![1]);
        assert!(matches!(
            client.request_body(&req),
            Err(GenerateError::InvalidRequest(_))
        ));
        // A constraint goes out as response_format on chats, and is refused
        // where it cannot go.
        let mut chat = GenerateRequest::chat(vec![Message::user("hi")]);
        chat.constraint = Some(Constraint::JsonObject);
        let (body, _) = body_of(&client, &chat).unwrap();
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
        chat.constraint = Some(Constraint::Regex("a+".into()));
        assert!(matches!(
            client.request_body(&chat),
            Err(GenerateError::InvalidRequest(_))
        ));
        let mut text = GenerateRequest::text("a");
        text.constraint = Some(Constraint::JsonObject);
        assert!(matches!(
            client.request_body(&text),
            Err(GenerateError::InvalidRequest(_))
        ));
        assert!(matches!(
            OpenAiClient::new("http://x").request_body(&GenerateRequest::text("a")),
            Err(GenerateError::InvalidRequest(_))
        ));
    }

    #[test]
    fn chat_chunks_usage_chunk_and_done() {
        let mut s = stream(Endpoint::Chat);
        s.on_event(data(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#)).unwrap();
        s.on_event(data(r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}],"usage":null}"#)).unwrap();
        s.on_event(data(r#"{"choices":null}"#)).unwrap();
        s.on_event(data(
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"length"}]}"#,
        ))
        .unwrap();
        s.on_event(data(
            r#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#,
        ))
        .unwrap();
        assert!(!s.done);
        s.on_event(data("[DONE]")).unwrap();
        assert!(s.done);
        assert_eq!(texts(&s), ["Hel", "lo"]);
        match s.pending.back() {
            Some(Event::Done(c)) => {
                assert_eq!(c.finish_reason, FinishReason::Length);
                assert_eq!(
                    c.usage,
                    Usage {
                        prompt_tokens: 4,
                        completion_tokens: 2,
                        cached_tokens: 0,
                    }
                );
                assert_eq!(c.served_by.as_deref(), Some("t"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn completion_chunks_with_logprobs_split_per_token() {
        let mut s = stream(Endpoint::Completions);
        s.on_event(data(r#"{"choices":[{"index":0,"text":"a b","logprobs":{"tokens":["a"," b"],"token_logprobs":[-0.5,-1.0],"top_logprobs":[{"a":-0.5},{" b":-1.0," c":-2.0}]},"finish_reason":null}]}"#)).unwrap();
        assert_eq!(texts(&s), ["a", " b"]);
        let mut s = stream(Endpoint::Chat);
        s.on_event(data(r#"{"choices":[{"index":0,"delta":{"content":"x"},"logprobs":{"content":[{"token":"x","logprob":-0.25,"top_logprobs":[{"token":"x","logprob":-0.25},{"token":"y","logprob":-2}]}]}}]}"#)).unwrap();
        match s.pending.front() {
            Some(Event::Token(t)) => {
                assert_eq!(t.logprob, Some(-0.25));
                assert_eq!(
                    t.top_logprobs,
                    vec![("x".to_string(), -0.25), ("y".to_string(), -2.0)]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tool_call_deltas_become_tool_call_events() {
        let calls = |s: &ChunkStream| -> Vec<foehn_core::ToolCall> {
            foehn_core::collect_tool_calls(s.pending.iter().flat_map(|e| match e {
                Event::Token(t) => t.tool_calls.as_slice(),
                _ => &[],
            }))
        };
        let mut s = stream(Endpoint::Chat);
        for chunk in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":" \"Paris\"}"}},{"index":1,"id":"call_2","function":{"name":"now","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        ] {
            s.on_event(data(chunk)).unwrap();
        }
        let got = calls(&s);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id.as_deref(), Some("call_1"));
        assert_eq!(got[0].arguments, "{\"city\": \"Paris\"}");
        assert_eq!(got[1].name, "now");
        assert_eq!(s.finish_reason, Some(FinishReason::ToolCalls));
        // A whole answer (a server that ignored `stream`).
        let mut s = stream(Endpoint::Chat);
        s.on_event(data(r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"abcDEF123","type":"function","function":{"name":"now","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#))
            .unwrap();
        assert_eq!(calls(&s)[0].id.as_deref(), Some("abcDEF123"));
    }

    #[test]
    fn reasoning_content_becomes_reasoning_events() {
        let reasoning = |s: &ChunkStream| -> Vec<bool> {
            s.pending
                .iter()
                .filter_map(|e| match e {
                    Event::Token(t) => Some(t.reasoning),
                    _ => None,
                })
                .collect()
        };
        let mut s = stream(Endpoint::Chat);
        s.on_event(data(
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#,
        ))
        .unwrap();
        s.on_event(data(
            r#"{"choices":[{"index":0,"delta":{"content":"x","reasoning_content":null}}]}"#,
        ))
        .unwrap();
        assert_eq!(texts(&s), ["hm", "x"]);
        assert_eq!(reasoning(&s), [true, false]);
        let mut s = stream(Endpoint::Chat);
        s.on_event(data(r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"51","reasoning_content":"17*3"},"finish_reason":"stop"}]}"#))
            .unwrap();
        assert_eq!(texts(&s), ["17*3", "51"]);
        assert_eq!(reasoning(&s), [true, false]);
    }

    #[test]
    fn errors_inside_a_200_stream() {
        let mut s = stream(Endpoint::Chat);
        assert!(matches!(
            s.on_event(data(
                r#"{"error":{"message":"overloaded","type":"server_error"}}"#
            )),
            Err(GenerateError::Remote { .. })
        ));
        assert!(matches!(
            s.on_event(data(
                r#"{"error":"Input validation error","error_type":"validation"}"#
            )),
            Err(GenerateError::InvalidRequest(_))
        ));
        let ev = SseEvent {
            event: "error".into(),
            data: "upstream died".into(),
            id: String::new(),
        };
        assert!(
            matches!(s.on_event(ev), Err(GenerateError::Remote { message, .. }) if message.contains("upstream died"))
        );
        assert!(
            matches!(s.on_event(data("{not json")), Err(GenerateError::Remote { message, .. }) if message.contains("invalid JSON"))
        );
        assert!(matches!(
            s.on_event(data("42")),
            Err(GenerateError::Remote { .. })
        ));
    }

    #[test]
    fn arbitrary_chunks_never_panic() {
        let chunks = [
            "null",
            "[]",
            "\"text\"",
            "{}",
            r#"{"choices":"x"}"#,
            r#"{"choices":[null]}"#,
            r#"{"choices":[{"delta":null}]}"#,
            r#"{"choices":[{"delta":{"content":5}}]}"#,
            r#"{"choices":[{"index":-1,"delta":{"content":"x"}}]}"#,
            r#"{"choices":[{"delta":{"content":"x"},"logprobs":{"content":[{"token":1},{"token":"x","logprob":"no"}]}}]}"#,
            r#"{"choices":[{"text":"x","logprobs":{"tokens":["x",2],"token_logprobs":[null],"top_logprobs":[5]}}]}"#,
            r#"{"usage":{"prompt_tokens":-1,"completion_tokens":99999999999}}"#,
            r#"{"error":null}"#,
            r#"{"error":[1,2]}"#,
            r#"{"object":"error"}"#,
            r#"{"choices":[{"finish_reason":7}]}"#,
            "{\"a\":",
            "\u{0}",
            "",
        ];
        for endpoint in [Endpoint::Chat, Endpoint::Completions] {
            let mut s = stream(endpoint);
            for c in chunks {
                let _ = s.on_event(data(c));
                let _ = s.non_streamed(c);
                s.done = false;
            }
        }
    }

    #[test]
    fn non_streamed_json_answer() {
        let mut s = stream(Endpoint::Chat);
        s.non_streamed(r#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#).unwrap();
        assert_eq!(texts(&s), ["hi"]);
        assert!(s.done);
    }

    #[test]
    fn hf_router_constructor() {
        let c = OpenAiClient::hf_router_with_token("hf_x").with_bill_to("org");
        assert_eq!(c.name(), "hf-router");
        assert_eq!(c.base_url(), HF_ROUTER_BASE_URL);
        assert!(!c.capabilities().token_prompts);
        assert!(
            !format!("{c:?}").contains("hf_x"),
            "the token must not leak into Debug output"
        );
    }
}
