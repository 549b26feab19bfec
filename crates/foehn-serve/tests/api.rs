//! The server over a scripted generator: response shapes, error objects,
//! the API key, the queue's 429, and cancellation on disconnect.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foehn_core::{
    CancelToken, Capabilities, Completion, Event, EventStream, FinishReason, GenerateError,
    GenerateRequest, Generator, Prompt, Timings, TokenEvent, ToolCallDelta, Usage,
};
use foehn_serve::{ServeOptions, Server};
use serde_json::{json, Value};

/// Streams the words of the prompt (the last message of a chat), one token
/// each, cycling through them up to `max_tokens`. `seed` = milliseconds to
/// sleep before each token. A prompt `error:KIND` fails as that kind.
struct Scripted {
    /// Generations alive now (their stream not yet dropped).
    alive: Arc<AtomicUsize>,
    /// Generations that saw their cancel token set.
    cancelled: Arc<AtomicUsize>,
}

struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Generator for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            context_length: Some(64),
            token_prompts: true,
            tools: true,
            ..Capabilities::default()
        }
    }

    fn generate(
        &self,
        request: GenerateRequest,
        cancel: CancelToken,
    ) -> Result<EventStream, GenerateError> {
        let text = match &request.prompt {
            Prompt::Text(t) => t.clone(),
            Prompt::Chat(m) => m.last().map(|m| m.content.clone()).unwrap_or_default(),
            Prompt::Tokens(ids) => ids.iter().map(|i| format!("t{i} ")).collect(),
        };
        match text.as_str() {
            "error:overflow" => {
                return Err(GenerateError::ContextOverflow {
                    prompt_tokens: 100,
                    context: 64,
                })
            }
            "error:ratelimit" => {
                return Err(GenerateError::RateLimited {
                    retry_after: Some(Duration::from_millis(2500)),
                })
            }
            "error:unavailable" => return Err(GenerateError::Unavailable("no route".into())),
            "error:backend" => return Err(GenerateError::Backend("boom".into())),
            "error:panic" => panic!("a generator bug"),
            "call:weather" => return Ok(Box::new(tool_call_events().into_iter().map(Ok))),
            _ => {}
        }
        let midstream_error = text == "error:midstream";
        let words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
        let total = request.max_tokens.map_or(words.len(), |m| m as usize);
        let delay = Duration::from_millis(request.seed.unwrap_or(0));
        let prompt_tokens = words.len() as u32;
        self.alive.fetch_add(1, Ordering::SeqCst);
        let alive = Alive(self.alive.clone());
        let cancelled = self.cancelled.clone();
        let logprobs = request.logprobs;
        let mut i = 0;
        let mut done = false;
        Ok(Box::new(std::iter::from_fn(move || {
            let _alive = &alive;
            if done {
                return None;
            }
            std::thread::sleep(delay);
            if cancel.is_cancelled() {
                cancelled.fetch_add(1, Ordering::SeqCst);
                done = true;
                return Some(Ok(done_event(
                    FinishReason::Cancelled,
                    prompt_tokens,
                    i as u32,
                )));
            }
            if midstream_error && i == 1 {
                done = true;
                return Some(Err(GenerateError::Backend("the model fell over".into())));
            }
            if i == total {
                done = true;
                let reason = if request.max_tokens.is_some() {
                    FinishReason::Length
                } else {
                    FinishReason::Stop
                };
                return Some(Ok(done_event(reason, prompt_tokens, i as u32)));
            }
            let text = words[i % words.len()].clone();
            i += 1;
            let top = logprobs.map_or(vec![], |k| {
                (0..k)
                    .map(|j| (format!("alt{j}"), -1.0 - j as f32))
                    .collect()
            });
            Some(Ok(Event::Token(TokenEvent {
                text,
                id: Some(i as u32),
                logprob: logprobs.map(|_| -0.5),
                top_logprobs: top,
                reasoning: false,
                tool_calls: Vec::new(),
            })))
        })))
    }
}

/// Text, then a call streamed in three pieces, then the end.
fn tool_call_events() -> Vec<Event> {
    let piece = |text: &str, delta: Option<ToolCallDelta>| {
        Event::Token(TokenEvent {
            text: text.into(),
            tool_calls: delta.into_iter().collect(),
            ..TokenEvent::default()
        })
    };
    let args = |a: &str| ToolCallDelta {
        index: 0,
        arguments: a.into(),
        ..ToolCallDelta::default()
    };
    vec![
        piece("Checking.", None),
        piece(
            "",
            Some(ToolCallDelta {
                index: 0,
                id: Some("abcDEF123".into()),
                name: Some("get_weather".into()),
                arguments: String::new(),
            }),
        ),
        piece("", Some(args("{\"city\": "))),
        piece("", Some(args("\"Paris\"}"))),
        done_event(FinishReason::ToolCalls, 5, 4),
    ]
}

fn done_event(finish_reason: FinishReason, prompt_tokens: u32, completion_tokens: u32) -> Event {
    Event::Done(Completion {
        finish_reason,
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            cached_tokens: 0,
        },
        timings: Timings::default(),
        served_by: Some("scripted".into()),
        tried: vec![],
        provider: None,
    })
}

/// A server on a free loopback port, running on its own thread.
struct TestServer {
    addr: SocketAddr,
    alive: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
}

fn start(opts: ServeOptions) -> TestServer {
    let alive = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let generator = Arc::new(Scripted {
        alive: alive.clone(),
        cancelled: cancelled.clone(),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = Server::bind("127.0.0.1:0".parse().unwrap(), generator, opts)
                .await
                .unwrap();
            tx.send(server.local_addr()).unwrap();
            server.run_until(std::future::pending()).await.unwrap();
        });
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server starts");
    TestServer {
        addr,
        alive,
        cancelled,
    }
}

fn default_server() -> TestServer {
    start(ServeOptions {
        models: vec!["scripted-1".into()],
        ..ServeOptions::default()
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Status, `Retry-After`, and body of one request.
fn call(
    s: &TestServer,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    key: Option<&str>,
) -> (u16, Option<String>, String) {
    let url = format!("http://{}{path}", s.addr);
    let agent = agent();
    let auth = key.map(|k| format!("Bearer {k}"));
    let response = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            r.call()
        }
        (_, body) => {
            let mut r = agent.post(&url).header("content-type", "application/json");
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            r.send(body.unwrap_or_default())
        }
    }
    .expect("an HTTP answer");
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = response.into_body().read_to_string().expect("a body");
    (status, retry, text)
}

fn post_json(s: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, text) = call(s, "POST", path, Some(body.to_string().as_bytes()), None);
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

fn health(s: &TestServer) -> Value {
    serde_json::from_str(&call(s, "GET", "/health", None, None).2).unwrap()
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(str::to_string)
        .collect()
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert!(e["message"].is_string() && e["type"].is_string(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
    if let Some(code) = want_code {
        assert_eq!(e["code"], code, "{body}");
    }
}

#[test]
fn chat_completion_has_openais_shape() {
    let s = default_server();
    let (status, v) = post_json(
        &s,
        "/v1/chat/completions",
        &json!({"model": "scripted-1", "messages": [{"role": "user", "content": "hello big world"}]}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "scripted-1");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role": "assistant", "content": "hello big world", "refusal": null})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
    );
    // No model named: the first served model.
    let (_, v) = post_json(
        &s,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "a"}]}),
    );
    assert_eq!(v["model"], "scripted-1");
}

#[test]
fn text_completion_with_logprobs() {
    let s = default_server();
    let (status, v) = post_json(
        &s,
        "/v1/completions",
        &json!({"prompt": "one two", "max_tokens": 3, "logprobs": 2}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "one twoone ");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!(["one ", "two", "one "]));
    assert_eq!(lp["text_offset"], json!([0, 4, 7]));
    assert_eq!(lp["token_logprobs"], json!([-0.5, -0.5, -0.5]));
    assert_eq!(lp["top_logprobs"][0]["alt1"], -2.0);
    let (status, v) = post_json(&s, "/v1/completions", &json!({"prompt": [5, 6]}));
    assert_eq!(
        (status, v["choices"][0]["text"].as_str()),
        (200, Some("t5 t6 "))
    );
}

#[test]
fn chat_stream_sends_role_tokens_finish_usage_and_done() {
    let s = default_server();
    let body = json!({"messages": [{"role": "user", "content": "a b c"}], "stream": true,
                      "stream_options": {"include_usage": true}});
    let (status, _, text) = call(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(body.to_string().as_bytes()),
        None,
    );
    assert_eq!(status, 200, "{text}");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let id = &chunks[0]["id"];
    assert!(
        chunks.iter().all(|c| &c["id"] == id),
        "one id for all chunks"
    );
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str())
        .collect::<String>();
    assert_eq!(content, "a b c");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(finish["usage"].is_null());
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
}

#[test]
fn text_stream_without_usage() {
    let s = default_server();
    let body = json!({"prompt": "x y", "stream": true, "max_tokens": 4});
    let (status, _, text) = call(
        &s,
        "POST",
        "/v1/completions",
        Some(body.to_string().as_bytes()),
        None,
    );
    assert_eq!(status, 200);
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "text_completion" && c.get("usage").is_none()));
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "x yx y");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

#[test]
fn bad_requests_get_openai_error_objects() {
    let s = default_server();
    let chat = |b: &[u8]| {
        let (status, _, text) = call(&s, "POST", "/v1/chat/completions", Some(b), None);
        (
            status,
            serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
        )
    };
    for bad in [
        &b"{not json"[..],
        b"",
        b"\xff\xfe{}",
        b"[]",
        b"{\"messages\": []}",
        b"{\"messages\": [{\"role\": \"user\", \"content\": 5}]}",
        b"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 1e30}",
        b"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stream\": \"yes\"}",
    ] {
        let (status, v) = chat(bad);
        assert_error(status, &v, 400, None);
    }
    let (status, v) =
        chat(br#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#);
    assert_error(status, &v, 400, None);
    assert_eq!(v["error"]["param"], "temperature");
    let (status, v) =
        chat(br#"{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}"#);
    assert_error(status, &v, 404, Some("model_not_found"));
    let (status, _, text) = call(&s, "GET", "/v2/nothing", None, None);
    assert_error(
        status,
        &serde_json::from_str(&text).unwrap(),
        404,
        Some("unknown_url"),
    );
    let (status, _, text) = call(&s, "GET", "/v1/chat/completions", None, None);
    assert_error(status, &serde_json::from_str(&text).unwrap(), 405, None);
    // A body over the limit is refused from its length alone (sending it
    // whole would race the server's early answer and close).
    let mut sock = TcpStream::connect(s.addr).unwrap();
    write!(
        sock,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        5 << 20
    )
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#""type":"invalid_request_error""#),
        "{answer}"
    );
    // The server is still fine.
    let (status, _) = chat(br#"{"messages": [{"role": "user", "content": "x"}]}"#);
    assert_eq!(status, 200);
}

#[test]
fn generator_errors_get_their_statuses() {
    let s = default_server();
    let ask = |content: &str| {
        let body = json!({"messages": [{"role": "user", "content": content}]}).to_string();
        let (status, retry, text) = call(
            &s,
            "POST",
            "/v1/chat/completions",
            Some(body.as_bytes()),
            None,
        );
        (status, retry, serde_json::from_str::<Value>(&text).unwrap())
    };
    let (status, _, v) = ask("error:overflow");
    assert_error(status, &v, 400, Some("context_length_exceeded"));
    let (status, retry, v) = ask("error:ratelimit");
    assert_error(status, &v, 429, None);
    assert_eq!(retry.as_deref(), Some("3"));
    let (status, _, v) = ask("error:unavailable");
    assert_error(status, &v, 503, None);
    let (status, _, v) = ask("error:backend");
    assert_error(status, &v, 500, None);
    let (status, _, v) = ask("error:panic");
    assert_error(status, &v, 500, None);
    let (status, _, v) = ask("error:midstream");
    assert_error(status, &v, 500, None);
    // Mid-stream in a stream: the 200 carries an error event.
    let body =
        json!({"messages": [{"role": "user", "content": "error:midstream"}], "stream": true})
            .to_string();
    let (status, _, text) = call(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(body.as_bytes()),
        None,
    );
    assert_eq!(status, 200);
    let last: Value = serde_json::from_str(sse_data(&text).last().unwrap()).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fell over"),
        "{text}"
    );
    // A generation's thread ends just after its last event reached the client.
    wait_for("the generations to end", Duration::from_secs(5), || {
        health(&s)["queue"]["running"] == 0
    });
    let q = &health(&s)["queue"];
    assert!(q["failed"].as_u64().unwrap() >= 6, "{q}");
}

#[test]
fn api_key_guards_v1_but_not_health() {
    let s = start(ServeOptions {
        api_key: Some("sesame".into()),
        ..ServeOptions::default()
    });
    let (status, _, text) = call(&s, "GET", "/v1/models", None, None);
    assert_error(
        status,
        &serde_json::from_str(&text).unwrap(),
        401,
        Some("invalid_api_key"),
    );
    let (status, _, _) = call(&s, "GET", "/v1/models", None, Some("wrong"));
    assert_eq!(status, 401);
    let (status, _, text) = call(&s, "GET", "/v1/models", None, Some("sesame"));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(
        v["data"][0]["id"], "scripted",
        "no model list: the generator's name"
    );
    assert_eq!(v["data"][0]["object"], "model");
    let body = json!({"messages": [{"role": "user", "content": "x"}]}).to_string();
    let (status, _, _) = call(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(body.as_bytes()),
        None,
    );
    assert_eq!(status, 401);
    let (status, _, _) = call(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(body.as_bytes()),
        Some("sesame"),
    );
    assert_eq!(status, 200);
    assert_eq!(call(&s, "GET", "/health", None, None).0, 200);
}

/// Sends a raw HTTP request and returns the open socket.
fn raw_post(s: &TestServer, path: &str, body: &Value) -> TcpStream {
    let mut sock = TcpStream::connect(s.addr).unwrap();
    let body = body.to_string();
    write!(
        sock,
        "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        s.addr,
        body.len()
    )
    .unwrap();
    sock
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let s = start(ServeOptions {
        parallel: 1,
        queue: 1,
        ..ServeOptions::default()
    });
    // A long generation (50 ms a token, 1000 tokens) holds the only slot ...
    let slow = json!({"prompt": "z ", "max_tokens": 1000, "seed": 50, "stream": true});
    let running = raw_post(&s, "/v1/completions", &slow);
    wait_for(
        "the first generation to run",
        Duration::from_secs(5),
        || health(&s)["queue"]["running"] == 1,
    );
    // ... a second waits ...
    let waiting = raw_post(&s, "/v1/completions", &slow);
    wait_for("the second to wait", Duration::from_secs(5), || {
        health(&s)["queue"]["waiting"] == 1
    });
    // ... and a third finds the queue full.
    let (status, retry, text) = call(
        &s,
        "POST",
        "/v1/completions",
        Some(slow.to_string().as_bytes()),
        None,
    );
    assert_error(
        status,
        &serde_json::from_str(&text).unwrap(),
        429,
        Some("queue_full"),
    );
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry));
    // Hanging up frees the slot for the waiter, then its own hang-up frees everything.
    drop(running);
    wait_for("the waiter to run", Duration::from_secs(5), || {
        let q = health(&s)["queue"].clone();
        q["waiting"] == 0 && q["running"] == 1 && q["cancelled"] == 1
    });
    drop(waiting);
    wait_for("both to end", Duration::from_secs(5), || {
        let q = health(&s)["queue"].clone();
        q["running"] == 0 && q["cancelled"] == 2
    });
    assert_eq!(health(&s)["queue"]["rejected"], 1);
}

#[test]
fn a_disconnected_stream_cancels_its_generation() {
    let s = default_server();
    let body = json!({"messages": [{"role": "user", "content": "tick "}], "max_tokens": 100000, "seed": 10, "stream": true});
    let sock = raw_post(&s, "/v1/chat/completions", &body);
    let mut reader = BufReader::new(sock);
    let mut line = String::new();
    let mut tokens = 0;
    while tokens < 3 {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream ended early"
        );
        if line.contains("tick") {
            tokens += 1;
        }
    }
    assert_eq!(s.alive.load(Ordering::SeqCst), 1);
    let hung_up = Instant::now();
    drop(reader);
    wait_for("the generation to stop", Duration::from_secs(5), || {
        s.alive.load(Ordering::SeqCst) == 0
    });
    // 100000 tokens at 10 ms each would take 1000 s.
    assert!(hung_up.elapsed() < Duration::from_secs(5));
    wait_for("the health counters", Duration::from_secs(5), || {
        let q = health(&s)["queue"].clone();
        q["running"] == 0 && q["cancelled"] == 1
    });
}

#[test]
fn a_disconnected_non_streaming_request_cancels_its_generation() {
    let s = default_server();
    let body = json!({"prompt": "tock ", "max_tokens": 100000, "seed": 10});
    let mut sock = raw_post(&s, "/v1/completions", &body);
    wait_for("the generation to start", Duration::from_secs(5), || {
        s.alive.load(Ordering::SeqCst) == 1
    });
    sock.shutdown(std::net::Shutdown::Both).unwrap();
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest);
    drop(sock);
    wait_for("the generation to stop", Duration::from_secs(5), || {
        s.alive.load(Ordering::SeqCst) == 0
    });
    assert_eq!(
        s.cancelled.load(Ordering::SeqCst),
        1,
        "it saw the cancel token"
    );
}

#[test]
fn concurrent_requests_each_get_their_own_answer() {
    let s = start(ServeOptions {
        parallel: 3,
        ..ServeOptions::default()
    });
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let addr = s.addr;
            std::thread::spawn(move || {
                let body = json!({"prompt": format!("c{i} "), "max_tokens": 5, "seed": 5, "stream": i % 2 == 0});
                let url = format!("http://{addr}/v1/completions");
                let text = agent().post(&url).send(body.to_string()).unwrap().into_body().read_to_string().unwrap();
                (i, text)
            })
        })
        .collect();
    for h in handles {
        let (i, text) = h.join().unwrap();
        let want = format!("c{i} ").repeat(5);
        if i % 2 == 0 {
            let got: String = sse_data(&text)
                .iter()
                .filter(|d| *d != "[DONE]")
                .map(|d| {
                    serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            assert_eq!(got, want);
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["choices"][0]["text"], want);
        }
    }
    wait_for("the generations to end", Duration::from_secs(5), || {
        health(&s)["queue"]["running"] == 0
    });
    assert_eq!(health(&s)["queue"]["completed"], 12);
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

#[test]
fn tool_calls_have_openais_shape_whole_and_streamed() {
    let s = default_server();
    let body = json!({"messages": [{"role": "user", "content": "call:weather"}],
        "tools": weather_tools(), "tool_choice": "required"});
    let (status, v) = post_json(&s, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role": "assistant", "content": "Checking.", "refusal": null, "tool_calls": [
            {"id": "abcDEF123", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]})
    );
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, _, text) = call(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(streamed.to_string().as_bytes()),
        None,
    );
    assert_eq!(status, 200);
    let chunks: Vec<Value> = sse_data(&text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
    assert_eq!(deltas[1], &json!({"content": "Checking."}));
    assert_eq!(
        deltas[2],
        &json!({"tool_calls": [{"index": 0, "id": "abcDEF123", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]})
    );
    assert_eq!(
        deltas[3],
        &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]})
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[test]
fn bad_tools_and_tool_choices_are_400s_naming_the_field() {
    let s = default_server();
    let user = json!([{"role": "user", "content": "hi"}]);
    for (extra, param) in [
        (json!({"tools": {"name": "x"}}), "tools"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]}),
            "tools",
        ),
        (
            json!({"tools": weather_tools(), "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
    ] {
        let mut body = json!({"messages": user});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, v) = post_json(&s, "/v1/chat/completions", &body);
        assert_error(status, &v, 400, None);
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
}
