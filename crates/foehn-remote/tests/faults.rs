//! Fault injection over loopback: the OpenAI client and the router against a
//! scripted server. Every case checks what the caller sees and that the text
//! is exactly what the serving route sent — nothing repeated, nothing lost.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foehn_core::{
    CancelToken, Event, FinishReason, GenerateError, GenerateRequest, Generator, Message, Usage,
};
use foehn_remote::{
    Clock, OpenAiClient, Policy, RetryConfig, Route, Router, RouterConfig, Timeouts,
};
use support::*;

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        first_byte: Duration::from_millis(400),
        idle: Duration::from_millis(300),
    }
}

fn client(server: &FaultServer, name: &str) -> OpenAiClient {
    OpenAiClient::new(server.base_url())
        .with_name(name)
        .with_model("test-model")
        .with_timeouts(timeouts())
}

fn chat() -> GenerateRequest {
    GenerateRequest::chat(vec![Message::user("Hi")])
}

/// Everything a stream produced: the text, the final event, or the error that ended it.
#[derive(Debug)]
struct Outcome {
    text: String,
    pieces: Vec<String>,
    done: Option<foehn_core::Completion>,
    error: Option<GenerateError>,
}

fn drain(stream: foehn_core::EventStream) -> Outcome {
    let mut out = Outcome {
        text: String::new(),
        pieces: vec![],
        done: None,
        error: None,
    };
    for (n, event) in stream.enumerate() {
        assert!(n < 10_000, "runaway stream");
        match event {
            Ok(Event::Token(t)) => {
                out.text.push_str(&t.text);
                out.pieces.push(t.text);
            }
            Ok(Event::Done(c)) => out.done = Some(c),
            Err(e) => out.error = Some(e),
        }
    }
    out
}

/// Runs a request to the end; with `--nocapture` each outcome is logged (the fault log).
fn run(g: &dyn Generator, req: GenerateRequest) -> Result<Outcome, GenerateError> {
    let t = Instant::now();
    let out = g.generate(req, CancelToken::new()).map(drain);
    let case = std::thread::current().name().unwrap_or("?").to_string();
    match &out {
        Ok(o) => eprintln!(
            "[fault-log] {case}: {:?} text={:?} error={:?} served_by={:?} tried={:?} ({:.0} ms)",
            g.name(),
            o.text,
            o.error,
            o.done.as_ref().and_then(|d| d.served_by.clone()),
            o.done.as_ref().map(|d| d.tried.clone()),
            t.elapsed().as_secs_f64() * 1e3
        ),
        Err(e) => eprintln!(
            "[fault-log] {case}: {:?} generate() = Err({e:?}) ({:.0} ms)",
            g.name(),
            t.elapsed().as_secs_f64() * 1e3
        ),
    }
    out
}

/// A clock whose sleeps are recorded and return at once (time jumps ahead).
#[derive(Default)]
struct RecordingClock {
    offset: Mutex<Duration>,
    sleeps: Mutex<Vec<Duration>>,
}

impl Clock for RecordingClock {
    fn now(&self) -> Instant {
        base() + *self.offset.lock().unwrap()
    }
    fn sleep(&self, d: Duration, _cancel: &CancelToken) {
        *self.offset.lock().unwrap() += d;
        self.sleeps.lock().unwrap().push(d);
    }
}

fn base() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn router(routes: Vec<Route>, policy: Policy, clock: Arc<RecordingClock>) -> Router {
    let mut cfg = RouterConfig::new(policy);
    cfg.retry = RetryConfig {
        max_retries: 2,
        base_delay: Duration::from_millis(10),
        jitter: 0.0,
        ..RetryConfig::default()
    };
    Router::with_clock(routes, cfg, clock)
}

fn remote(server: &FaultServer, name: &str) -> Route {
    Route::remote(Arc::new(client(server, name)))
}

// ---------------------------------------------------------------- client

#[test]
fn normal_stream_close_delimited() {
    let server = FaultServer::always(good_stream(&["Hel", "lo, ", "world", "!"]));
    let c = client(&server, "remote")
        .with_api_key("sk-test")
        .with_bill_to("my-org");
    let out = run(&c, chat()).unwrap();
    assert_eq!(out.text, "Hello, world!");
    assert_eq!(out.pieces, ["Hel", "lo, ", "world", "!"]);
    assert!(out.error.is_none());
    let done = out.done.unwrap();
    assert_eq!(done.finish_reason, FinishReason::Stop);
    assert_eq!(
        done.usage,
        Usage {
            prompt_tokens: 5,
            completion_tokens: 4,
            cached_tokens: 0,
        }
    );
    assert_eq!(done.served_by.as_deref(), Some("remote"));
    assert_eq!(done.provider.as_deref(), Some("fake-provider"));
    assert!(done.timings.time_to_first_token.is_some());
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].request_line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(reqs[0].header("authorization"), Some("Bearer sk-test"));
    assert_eq!(reqs[0].header("x-hf-bill-to"), Some("my-org"));
    let body = reqs[0].json();
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["messages"][0]["content"], "Hi");
}

#[test]
fn normal_stream_chunked_crlf_and_split_anywhere() {
    // CRLF line ends, a keep-alive comment, chunks cut mid-line and mid-UTF-8, and `choices: null`.
    let body = format!(
        ": keep-alive\r\n\r\n{}{}{}{}{}",
        chat_chunk("h\u{e9}").replace('\n', "\r\n"),
        data(r#"{"choices":null}"#),
        chat_chunk("llo \u{4e16}\u{754c}"),
        finish_chunk("length"),
        done_marker()
    );
    let bytes = body.as_bytes();
    let mut script = vec![sse_head_chunked()];
    let cuts = [3usize, 17, 40, 41, 42, 90, 91, 150];
    let mut at = 0;
    for &cut in cuts.iter().filter(|&&c| c < bytes.len()) {
        script.push(Step::Chunk(bytes[at..cut].to_vec()));
        script.push(sleep_ms(5));
        at = cut;
    }
    script.push(Step::Chunk(bytes[at..].to_vec()));
    script.push(Step::LastChunk);
    let server = FaultServer::always(script);
    let out = run(&client(&server, "r"), chat()).unwrap();
    assert_eq!(out.text, "h\u{e9}llo \u{4e16}\u{754c}");
    let done = out.done.unwrap();
    assert_eq!(done.finish_reason, FinishReason::Length);
    // No usage chunk: the piece count stands in for the completion tokens.
    assert_eq!(
        done.usage,
        Usage {
            prompt_tokens: 0,
            completion_tokens: 2,
            cached_tokens: 0,
        }
    );
}

#[test]
fn text_completions_endpoint() {
    let script = vec![
        sse_head(),
        raw(data(
            r#"{"choices":[{"index":0,"text":"Once","finish_reason":null}]}"#,
        )),
        raw(data(
            r#"{"choices":[{"index":0,"text":" upon","finish_reason":"length"}],"usage":{"prompt_tokens":2,"completion_tokens":2}}"#,
        )),
        raw(done_marker()),
    ];
    let server = FaultServer::always(script);
    let out = run(&client(&server, "r"), GenerateRequest::text("Tell:")).unwrap();
    assert_eq!(out.text, "Once upon");
    assert_eq!(
        out.done.unwrap().usage,
        Usage {
            prompt_tokens: 2,
            completion_tokens: 2,
            cached_tokens: 0,
        }
    );
    let req = &server.requests()[0];
    assert_eq!(req.request_line, "POST /v1/completions HTTP/1.1");
    assert_eq!(req.json()["prompt"], "Tell:");
}

#[test]
fn slow_first_byte_is_a_timeout() {
    let mut script = vec![sleep_ms(1500)];
    script.extend(good_stream(&["late"]));
    let server = FaultServer::always(script);
    let t = Instant::now();
    let err = run(&client(&server, "r"), chat()).unwrap_err();
    assert!(matches!(err, GenerateError::Timeout(_)), "{err:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn headers_then_no_first_event_is_a_timeout() {
    let server = FaultServer::always(vec![
        sse_head(),
        sleep_ms(1500),
        raw(chat_chunk("late")),
        raw(done_marker()),
    ]);
    let t = Instant::now();
    let out = run(&client(&server, "r"), chat()).unwrap();
    assert_eq!(out.text, "");
    assert!(
        matches!(out.error, Some(GenerateError::Timeout(ref m)) if m.contains("first-byte")),
        "{:?}",
        out.error
    );
    assert!(t.elapsed() < Duration::from_millis(1200));
}

#[test]
fn idle_stall_mid_stream_is_a_timeout_after_the_text_so_far() {
    let server = FaultServer::always(vec![
        sse_head(),
        raw(chat_chunk("Hel")),
        sleep_ms(2000),
        raw(chat_chunk("lo")),
        raw(done_marker()),
    ]);
    let t = Instant::now();
    let out = run(&client(&server, "r"), chat()).unwrap();
    assert_eq!(out.text, "Hel");
    assert!(
        matches!(out.error, Some(GenerateError::Timeout(ref m)) if m.contains("idle")),
        "{:?}",
        out.error
    );
    assert!(out.done.is_none());
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn keep_alive_comments_hold_an_idle_stream_open() {
    let mut script = vec![sse_head(), raw(chat_chunk("a"))];
    for _ in 0..6 {
        script.push(sleep_ms(120));
        script.push(raw(": keep-alive\n\n"));
    }
    script.extend([
        raw(chat_chunk("b")),
        raw(finish_chunk("stop")),
        raw(done_marker()),
    ]);
    let server = FaultServer::always(script);
    // Silent for 720 ms in all, never more than ~120 ms without a comment.
    let c = client(&server, "r").with_timeouts(Timeouts {
        idle: Duration::from_millis(500),
        ..timeouts()
    });
    let out = run(&c, chat()).unwrap();
    assert_eq!(out.text, "ab");
    assert!(out.error.is_none(), "{:?}", out.error);
}

#[test]
fn rate_limited_with_retry_after_seconds_and_date() {
    let server = FaultServer::start(vec![
        vec![status(
            429,
            "Retry-After: 7\r\n",
            "application/json",
            r#"{"error":{"message":"slow down","type":"rate_limit_exceeded"}}"#,
        )],
        vec![status(
            429,
            "Retry-After: Thu, 01 Jan 2099 00:00:00 GMT\r\n",
            "text/plain",
            "busy",
        )],
    ]);
    let c = client(&server, "r");
    assert_eq!(
        run(&c, chat()).unwrap_err(),
        GenerateError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    match run(&c, chat()).unwrap_err() {
        GenerateError::RateLimited {
            retry_after: Some(d),
        } => assert!(d > Duration::from_secs(365 * 86400)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn status_codes_and_error_shapes() {
    type Check = fn(&GenerateError) -> bool;
    let cases: Vec<(Script, Check)> = vec![
        (
            vec![status(
                500,
                "",
                "application/json",
                r#"{"error":{"message":"boom","type":"server_error"}}"#,
            )],
            |e| matches!(e, GenerateError::Remote { status: Some(500), message } if message == "boom"),
        ),
        (
            vec![status(
                503,
                "",
                "application/json",
                r#"{"error":"Model is overloaded","error_type":"overloaded"}"#,
            )],
            |e| matches!(e, GenerateError::Remote { status: Some(503), message } if message == "Model is overloaded"),
        ),
        (
            vec![status(
                502,
                "",
                "text/html",
                "<html><body><h1>502 Bad Gateway</h1></body></html>",
            )],
            |e| matches!(e, GenerateError::Remote { status: Some(502), message } if message == "502 Bad Gateway"),
        ),
        (
            vec![status(
                401,
                "",
                "application/json",
                r#"{"error":"Invalid credentials in Authorization header"}"#,
            )],
            |e| matches!(e, GenerateError::Unauthorized(m) if m.contains("Invalid credentials")),
        ),
        (
            vec![status(
                402,
                "",
                "application/json",
                r#"{"error":"You have exceeded your monthly included credits"}"#,
            )],
            |e| matches!(e, GenerateError::Remote { status: Some(402), message } if message.contains("out of credit")),
        ),
        (
            vec![status(
                404,
                "",
                "application/json",
                r#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","code":404}"#,
            )],
            |e| matches!(e, GenerateError::Remote { status: Some(404), message } if message.contains("does not exist")),
        ),
        (
            vec![status(
                400,
                "",
                "application/json",
                r#"{"object":"error","message":"max_tokens is too large","type":"BadRequestError","code":400}"#,
            )],
            |e| matches!(e, GenerateError::InvalidRequest(m) if m.contains("max_tokens is too large")),
        ),
        (
            vec![status(504, "", "text/plain", "upstream timed out")],
            |e| matches!(e, GenerateError::Timeout(_)),
        ),
    ];
    for (i, (script, check)) in cases.into_iter().enumerate() {
        let server = FaultServer::always(script);
        let err = run(&client(&server, "r"), chat()).unwrap_err();
        assert!(check(&err), "case {i}: {err:?}");
    }
}

#[test]
fn connection_reset_mid_stream_keeps_the_text_so_far() {
    let server = FaultServer::always(vec![
        sse_head(),
        raw(chat_chunk("Hel")),
        raw(chat_chunk("lo")),
        sleep_ms(50),
        Step::Reset,
    ]);
    let out = run(&client(&server, "r"), chat()).unwrap();
    assert_eq!(out.text, "Hello");
    assert!(
        matches!(out.error, Some(GenerateError::Unavailable(_))),
        "{:?}",
        out.error
    );
    assert!(out.done.is_none());
}

#[test]
fn connection_reset_mid_chunked_stream() {
    let server = FaultServer::always(vec![
        sse_head_chunked(),
        Step::Chunk(chat_chunk("Hel").into_bytes()),
        Step::Chunk(chat_chunk("lo").into_bytes()),
        sleep_ms(50),
        Step::Reset,
    ]);
    let out = run(&client(&server, "r"), chat()).unwrap();
    assert_eq!(out.text, "Hello");
    assert!(
        matches!(out.error, Some(GenerateError::Unavailable(_))),
        "{:?}",
        out.error
    );
}

#[test]
fn clean_close_before_done_is_an_incomplete_stream() {
    let server = FaultServer::always(vec![
        sse_head(),
        raw(chat_chunk("Hel")),
        raw("data: {\"choi"),
    ]);
    let out = run(&client(&server, "r"), chat()).unwrap();
    assert_eq!(out.text, "Hel");
    assert!(
        matches!(out.error, Some(GenerateError::Unavailable(ref m)) if m.contains("middle of an event")),
        "{:?}",
        out.error
    );
}

#[test]
fn connection_refused_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = OpenAiClient::new(format!("http://127.0.0.1:{port}/v1"))
        .with_model("m")
        .with_timeouts(timeouts());
    assert!(matches!(
        run(&c, chat()).unwrap_err(),
        GenerateError::Unavailable(_)
    ));
}

#[test]
fn malformed_sse_is_an_error_and_junk_lines_are_ignored() {
    // Raw JSON lines with no `data:` field: not events; the stream ends with nothing.
    let server = FaultServer::always(vec![
        sse_head(),
        raw(r#"{"choices":[{"delta":{"content":"x"}}]}"#),
        raw("\n\n"),
    ]);
    let out = run(&client(&server, "r"), chat()).unwrap();
    assert_eq!(out.text, "");
    assert!(
        matches!(out.error, Some(GenerateError::Unavailable(ref m)) if m.contains("before [DONE]")),
        "{:?}",
        out.error
    );
    // Junk lines between good events are unknown fields, ignored per the spec.
    let server = FaultServer::always(vec![
        sse_head(),
        raw(chat_chunk("a")),
        raw("garbage line\n\n\u{1}\u{2}binary: junk\n\n"),
        raw(chat_chunk("b")),
        raw(finish_chunk("stop")),
        raw(done_marker()),
    ]);
    let out = run(&client(&server, "r"), chat()).unwrap();
    assert_eq!(out.text, "ab");
    assert!(out.error.is_none());
}

#[test]
fn invalid_json_chunk_is_a_clear_error() {
    let server = FaultServer::always(vec![
        sse_head(),
        raw(chat_chunk("Hel")),
        raw(data("{\"choices\": [oops")),
        raw(chat_chunk("lo")),
    ]);
    let out = run(&client(&server, "r"), chat()).unwrap();
    assert_eq!(out.text, "Hel");
    assert!(
        matches!(out.error, Some(GenerateError::Remote { status: None, ref message }) if message.contains("invalid JSON")),
        "{:?}",
        out.error
    );
}

#[test]
fn error_objects_inside_a_200_stream() {
    let cases = [
        data(
            r#"{"error":{"message":"The server is overloaded","type":"server_error","code":null}}"#,
        ),
        data(r#"{"error":"Request failed during generation: CUDA OOM","error_type":"generation"}"#),
        format!(
            "event: error\n{}",
            data(
                r#"{"object":"error","message":"engine died","type":"InternalServerError","code":500}"#
            )
        ),
    ];
    for body in cases {
        let server = FaultServer::always(vec![
            sse_head(),
            raw(chat_chunk("Hel")),
            raw(body.clone()),
            raw(chat_chunk("lo")),
        ]);
        let out = run(&client(&server, "r"), chat()).unwrap();
        assert_eq!(out.text, "Hel", "{body}");
        assert!(
            matches!(out.error, Some(GenerateError::Remote { .. })),
            "{body}: {:?}",
            out.error
        );
    }
    // A rate-limit error object (code 429) in the stream.
    let server = FaultServer::always(vec![
        sse_head(),
        raw(data(r#"{"error":{"message":"too many","code":429}}"#)),
    ]);
    let out = run(&client(&server, "r"), chat()).unwrap();
    assert!(
        matches!(out.error, Some(GenerateError::RateLimited { .. })),
        "{:?}",
        out.error
    );
}

#[test]
fn non_streamed_json_answer_is_accepted() {
    let body = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"whole answer"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
    let server = FaultServer::always(vec![status(200, "", "application/json", body)]);
    let out = run(&client(&server, "r"), chat()).unwrap();
    assert_eq!(out.text, "whole answer");
    assert_eq!(
        out.done.unwrap().usage,
        Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            cached_tokens: 0,
        }
    );
}

#[test]
fn cancel_mid_stream_ends_with_cancelled_quickly() {
    let mut script = vec![sse_head()];
    for i in 0..50 {
        script.push(raw(chat_chunk(&format!("{i} "))));
        script.push(sleep_ms(100));
    }
    let server = FaultServer::always(script);
    let cancel = CancelToken::new();
    let mut stream = client(&server, "r")
        .generate(chat(), cancel.clone())
        .unwrap();
    assert!(matches!(stream.next(), Some(Ok(Event::Token(t))) if t.text == "0 "));
    let t = Instant::now();
    cancel.cancel();
    let out = drain(stream);
    assert_eq!(out.done.unwrap().finish_reason, FinishReason::Cancelled);
    assert!(t.elapsed() < Duration::from_millis(200));
}

#[test]
fn tokens_prompt_is_refused_and_list_models_works() {
    let server = FaultServer::always(vec![status(
        200,
        "",
        "application/json",
        r#"{"object":"list","data":[{"id":"a/b","object":"model","owned_by":"me"},{"id":"c"}]}"#,
    )]);
    let c = client(&server, "r");
    let req = GenerateRequest::new(foehn_core::Prompt::Tokens(vec![1, 2]));
    assert!(matches!(
        c.generate(req, CancelToken::new()),
        Err(GenerateError::InvalidRequest(_))
    ));
    let models = c.list_models().unwrap();
    assert_eq!(
        models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["a/b", "c"]
    );
    assert_eq!(models[0].owned_by.as_deref(), Some("me"));
    assert_eq!(server.requests()[0].request_line, "GET /v1/models HTTP/1.1");
}

// ---------------------------------------------------------------- router

#[test]
fn router_retries_a_slow_first_byte_then_fails_over() {
    let mut slow_script = vec![sleep_ms(1500)];
    slow_script.extend(good_stream(&["late"]));
    let slow = FaultServer::always(slow_script);
    let good = FaultServer::always(good_stream(&["fine"]));
    let clock = Arc::new(RecordingClock::default());
    let r = router(
        vec![remote(&slow, "slow"), remote(&good, "good")],
        Policy::RemoteFirst,
        clock.clone(),
    );
    let out = run(&r, chat()).unwrap();
    assert_eq!(out.text, "fine");
    let done = out.done.unwrap();
    assert_eq!(done.served_by.as_deref(), Some("good"));
    assert_eq!(done.tried, ["slow", "slow", "slow", "good"]);
    assert_eq!(slow.connections(), 3);
    assert_eq!(
        *clock.sleeps.lock().unwrap(),
        [Duration::from_millis(10), Duration::from_millis(20)]
    );
}

#[test]
fn router_honours_retry_after_and_then_succeeds() {
    let server = FaultServer::start(vec![
        vec![status(429, "Retry-After: 2\r\n", "text/plain", "")],
        good_stream(&["ok"]),
    ]);
    let clock = Arc::new(RecordingClock::default());
    let r = router(
        vec![remote(&server, "a")],
        Policy::RemoteFirst,
        clock.clone(),
    );
    let out = run(&r, chat()).unwrap();
    assert_eq!(out.text, "ok");
    assert_eq!(out.done.unwrap().tried, ["a", "a"]);
    assert_eq!(*clock.sleeps.lock().unwrap(), [Duration::from_secs(2)]);
}

#[test]
fn router_skips_a_route_whose_retry_after_is_too_long() {
    let limited = FaultServer::always(vec![status(429, "Retry-After: 3600\r\n", "text/plain", "")]);
    let good = FaultServer::always(good_stream(&["x"]));
    let clock = Arc::new(RecordingClock::default());
    let r = router(
        vec![remote(&limited, "a"), remote(&good, "b")],
        Policy::RemoteFirst,
        clock.clone(),
    );
    assert_eq!(run(&r, chat()).unwrap().done.unwrap().tried, ["a", "b"]);
    assert!(
        clock.sleeps.lock().unwrap().is_empty(),
        "no waiting for an hour-long Retry-After"
    );
    // The next request does not even try `a` while its Retry-After runs.
    assert_eq!(run(&r, chat()).unwrap().done.unwrap().tried, ["b"]);
    assert_eq!(limited.connections(), 1);
}

#[test]
fn router_on_500_and_503() {
    // 500 three times: retried twice, then the next route.
    let broken = FaultServer::always(vec![status(500, "", "text/plain", "boom")]);
    let good = FaultServer::always(good_stream(&["Hello"]));
    let clock = Arc::new(RecordingClock::default());
    let r = router(
        vec![remote(&broken, "a"), remote(&good, "b")],
        Policy::RemoteFirst,
        clock.clone(),
    );
    let out = run(&r, chat()).unwrap();
    assert_eq!(
        (out.text.as_str(), out.done.unwrap().tried),
        (
            "Hello",
            vec!["a".to_string(), "a".into(), "a".into(), "b".into()]
        )
    );
    // 503 once, then fine: served by the same route on the retry.
    let flaky = FaultServer::start(vec![
        vec![status(503, "", "text/plain", "")],
        good_stream(&["again"]),
    ]);
    let r = router(vec![remote(&flaky, "a")], Policy::RemoteFirst, clock);
    let out = run(&r, chat()).unwrap();
    let done = out.done.unwrap();
    assert_eq!(
        (out.text.as_str(), done.served_by.as_deref(), done.tried),
        ("again", Some("a"), vec!["a".to_string(), "a".into()])
    );
}

#[test]
fn router_fails_over_on_401_without_retrying_and_stops_on_400() {
    let denied = FaultServer::always(vec![status(
        401,
        "",
        "application/json",
        r#"{"error":"bad token"}"#,
    )]);
    let good = FaultServer::always(good_stream(&["yes"]));
    let clock = Arc::new(RecordingClock::default());
    let r = router(
        vec![remote(&denied, "a"), remote(&good, "b")],
        Policy::RemoteFirst,
        clock.clone(),
    );
    assert_eq!(run(&r, chat()).unwrap().done.unwrap().tried, ["a", "b"]);
    assert_eq!(denied.connections(), 1);

    let bad = FaultServer::always(vec![status(
        400,
        "",
        "application/json",
        r#"{"error":{"message":"bad temperature"}}"#,
    )]);
    let good = FaultServer::always(good_stream(&["no"]));
    let r = router(
        vec![remote(&bad, "a"), remote(&good, "b")],
        Policy::RemoteFirst,
        clock,
    );
    assert!(matches!(
        run(&r, chat()),
        Err(GenerateError::InvalidRequest(_))
    ));
    assert_eq!(
        good.connections(),
        0,
        "a request error is not sent elsewhere"
    );
}

#[test]
fn router_does_not_fail_over_after_the_first_token() {
    let cases: Vec<Script> = vec![
        vec![
            sse_head(),
            raw(chat_chunk("Hel")),
            raw(chat_chunk("lo")),
            sleep_ms(50),
            Step::Reset,
        ],
        vec![
            sse_head(),
            raw(chat_chunk("Hel")),
            raw(chat_chunk("lo")),
            raw(data("{broken")),
        ],
        vec![
            sse_head(),
            raw(chat_chunk("Hel")),
            raw(chat_chunk("lo")),
            raw(data(r#"{"error":"died","error_type":"generation"}"#)),
        ],
        vec![
            sse_head(),
            raw(chat_chunk("Hel")),
            raw(chat_chunk("lo")),
            sleep_ms(1500),
        ],
    ];
    for script in cases {
        let first = FaultServer::always(script);
        let second = FaultServer::always(good_stream(&["other"]));
        let r = router(
            vec![remote(&first, "a"), remote(&second, "b")],
            Policy::RemoteFirst,
            Arc::new(RecordingClock::default()),
        );
        let out = run(&r, chat()).unwrap();
        assert_eq!(out.text, "Hello", "the caller keeps exactly what `a` sent");
        assert!(out.error.is_some() && out.done.is_none());
        assert_eq!(second.connections(), 0, "no failover after the first token");
    }
}

#[test]
fn router_fails_over_before_the_first_token_on_stream_faults() {
    let cases: Vec<Script> = vec![
        vec![sse_head(), Step::Reset],
        vec![sse_head(), raw(data("{broken"))],
        vec![
            sse_head(),
            raw(data(
                r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
            )),
        ],
        vec![sse_head(), sleep_ms(1500)],
        vec![sse_head(), raw("no sse here\n")],
    ];
    for script in cases {
        let first = FaultServer::always(script);
        let second = FaultServer::always(good_stream(&["Hi", " there"]));
        let mut cfg = RouterConfig::new(Policy::RemoteFirst);
        cfg.retry.max_retries = 0;
        let r = Router::with_clock(
            vec![remote(&first, "a"), remote(&second, "b")],
            cfg,
            Arc::new(RecordingClock::default()),
        );
        let out = run(&r, chat()).unwrap();
        assert_eq!(out.text, "Hi there");
        let done = out.done.unwrap();
        assert_eq!(
            (done.served_by.as_deref(), done.tried),
            (Some("b"), vec!["a".to_string(), "b".into()])
        );
        assert_eq!(done.provider.as_deref(), Some("fake-provider"));
    }
}

#[test]
fn router_opt_in_continues_mid_stream_on_another_route() {
    let first = FaultServer::always(vec![
        sse_head(),
        raw(chat_chunk("Hel")),
        raw(chat_chunk("lo")),
        sleep_ms(50),
        Step::Reset,
    ]);
    let second = FaultServer::always(good_stream(&[", world"]));
    let mut cfg = RouterConfig::new(Policy::RemoteFirst);
    cfg.failover_after_first_token = true;
    cfg.retry.max_retries = 0;
    let r = Router::with_clock(
        vec![remote(&first, "a"), remote(&second, "b")],
        cfg,
        Arc::new(RecordingClock::default()),
    );
    let mut req = chat();
    req.max_tokens = Some(10);
    let out = run(&r, req).unwrap();
    assert_eq!(out.text, "Hello, world");
    let done = out.done.unwrap();
    assert_eq!(
        (done.served_by.as_deref(), done.tried),
        (Some("b"), vec!["a".to_string(), "b".into()])
    );
    // `b` was asked to continue after "Hello", with the tokens left.
    let body = second.requests()[0].json();
    assert_eq!(
        body["messages"][1],
        serde_json::json!({"role": "assistant", "content": "Hello"})
    );
    assert_eq!(body["max_tokens"], 8);
    assert_eq!(done.usage.completion_tokens, 1 + 2);
}

#[test]
fn router_breaker_opens_on_a_single_dead_route() {
    let dead = FaultServer::always(vec![status(503, "", "text/plain", "")]);
    let clock = Arc::new(RecordingClock::default());
    let mut cfg = RouterConfig::new(Policy::RemoteFirst);
    cfg.retry = RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    };
    cfg.breaker.failure_threshold = 2;
    cfg.breaker.cool_down = Duration::from_secs(30);
    let r = Router::with_clock(vec![remote(&dead, "a")], cfg, clock.clone());
    for _ in 0..2 {
        assert!(matches!(
            run(&r, chat()),
            Err(GenerateError::Remote {
                status: Some(503),
                ..
            })
        ));
    }
    let err = run(&r, chat()).unwrap_err();
    assert!(
        matches!(err, GenerateError::Unavailable(ref m) if m.contains("circuit open")),
        "{err:?}"
    );
    assert_eq!(dead.connections(), 2, "an open circuit sends nothing");
    *clock.offset.lock().unwrap() += Duration::from_secs(31);
    assert!(run(&r, chat()).is_err()); // the half-open probe goes through and fails
    assert_eq!(dead.connections(), 3);
    assert!(matches!(
        run(&r, chat()),
        Err(GenerateError::Unavailable(_))
    ));
    assert_eq!(dead.connections(), 3);
}
