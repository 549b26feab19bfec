//! Routing policies, capability filtering, retries and breakers, with
//! in-process fake generators and a clock that does not sleep.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foehn_core::{
    CancelToken, Capabilities, Completion, Event, EventStream, FinishReason, GenerateError,
    GenerateRequest, Generator, Message, Prompt, Timings, TokenEvent, Usage,
};
use foehn_remote::{BreakerState, Clock, Policy, Price, RetryConfig, Route, Router, RouterConfig};

/// A clock where sleeping only moves time forward.
struct FakeClock {
    base: Instant,
    offset: Mutex<Duration>,
    sleeps: Mutex<Vec<Duration>>,
}

impl FakeClock {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
            sleeps: Mutex::new(vec![]),
        })
    }
    fn advance(&self, d: Duration) {
        *self.offset.lock().unwrap() += d;
    }
    fn sleeps(&self) -> Vec<Duration> {
        self.sleeps.lock().unwrap().clone()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock().unwrap()
    }
    fn sleep(&self, d: Duration, _: &CancelToken) {
        self.advance(d);
        self.sleeps.lock().unwrap().push(d);
    }
}

/// What a fake does on one call.
#[derive(Clone)]
enum Behaviour {
    /// Stream these pieces, `ttft` before the first and `per_token` between them (fake time).
    Stream {
        pieces: Vec<&'static str>,
        ttft: Duration,
        per_token: Duration,
    },
    /// Fail at `generate`.
    Fail(GenerateError),
    /// Stream `pieces`, then fail.
    FailAfter(Vec<&'static str>, GenerateError),
}

fn ok(pieces: &[&'static str]) -> Behaviour {
    Behaviour::Stream {
        pieces: pieces.to_vec(),
        ttft: Duration::ZERO,
        per_token: Duration::ZERO,
    }
}

/// A generator that plays behaviours in order (the last one repeats) and records its requests.
struct Fake {
    name: String,
    caps: Capabilities,
    clock: Arc<FakeClock>,
    script: Mutex<VecDeque<Behaviour>>,
    last: Mutex<Option<Behaviour>>,
    calls: Mutex<Vec<GenerateRequest>>,
}

impl Fake {
    fn new(
        name: &str,
        caps: Capabilities,
        clock: &Arc<FakeClock>,
        script: Vec<Behaviour>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            caps,
            clock: clock.clone(),
            script: Mutex::new(script.into()),
            last: Mutex::new(None),
            calls: Mutex::new(vec![]),
        })
    }
    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

fn local_caps() -> Capabilities {
    Capabilities {
        context_length: Some(4096),
        tools: false,
        json_schema: false,
        token_prompts: true,
    }
}

fn remote_caps() -> Capabilities {
    Capabilities {
        context_length: Some(32768),
        tools: true,
        json_schema: true,
        token_prompts: false,
    }
}

impl Generator for Fake {
    fn name(&self) -> &str {
        &self.name
    }
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    fn generate(
        &self,
        request: GenerateRequest,
        _cancel: CancelToken,
    ) -> Result<EventStream, GenerateError> {
        self.calls.lock().unwrap().push(request);
        let behaviour = {
            let mut script = self.script.lock().unwrap();
            let mut last = self.last.lock().unwrap();
            if let Some(b) = script.pop_front() {
                *last = Some(b);
            }
            last.clone().expect("a fake needs a script")
        };
        let (pieces, ttft, per_token, tail) = match behaviour {
            Behaviour::Fail(e) => return Err(e),
            Behaviour::Stream {
                pieces,
                ttft,
                per_token,
            } => (pieces, ttft, per_token, None),
            Behaviour::FailAfter(pieces, e) => (pieces, Duration::ZERO, Duration::ZERO, Some(e)),
        };
        let clock = self.clock.clone();
        let name = self.name.clone();
        let n = pieces.len() as u32;
        let mut events: VecDeque<Result<Event, GenerateError>> = pieces
            .into_iter()
            .map(|p| {
                Ok(Event::Token(TokenEvent {
                    text: p.into(),
                    id: None,
                    logprob: None,
                    top_logprobs: vec![],
                    reasoning: false,
                    tool_calls: Vec::new(),
                }))
            })
            .collect();
        match tail {
            Some(e) => events.push_back(Err(e)),
            None => events.push_back(Ok(Event::Done(Completion {
                finish_reason: FinishReason::Stop,
                usage: Usage {
                    prompt_tokens: 1,
                    completion_tokens: n,
                    cached_tokens: 0,
                },
                timings: Timings::default(),
                served_by: Some(name),
                tried: vec![],
                provider: None,
            }))),
        }
        let mut first = true;
        Ok(Box::new(std::iter::from_fn(move || {
            let e = events.pop_front()?;
            if matches!(e, Ok(Event::Token(_))) {
                clock.advance(if first { ttft } else { per_token });
                first = false;
            }
            Some(e)
        })))
    }
}

fn config(policy: Policy) -> RouterConfig {
    let mut cfg = RouterConfig::new(policy);
    cfg.retry = RetryConfig {
        max_retries: 2,
        base_delay: Duration::from_millis(100),
        jitter: 0.0,
        ..RetryConfig::default()
    };
    cfg
}

fn chat() -> GenerateRequest {
    GenerateRequest::chat(vec![Message::user("Hello there")])
}

/// Text, served_by, tried.
fn serve(r: &Router, req: GenerateRequest) -> (String, String, Vec<String>) {
    let (text, done) = r.generate_text(req).unwrap();
    (text, done.served_by.unwrap_or_default(), done.tried)
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn local_first_serves_locally_and_goes_remote_on_failure() {
    let clock = FakeClock::new();
    let local = Fake::new(
        "local",
        local_caps(),
        &clock,
        vec![
            ok(&["from ", "local"]),
            Behaviour::Fail(GenerateError::ContextOverflow {
                prompt_tokens: 5000,
                context: 4096,
            }),
            Behaviour::Fail(GenerateError::Unavailable("model not loaded".into())),
        ],
    );
    let remote = Fake::new("hf", remote_caps(), &clock, vec![ok(&["from ", "remote"])]);
    let r = Router::with_clock(
        vec![Route::remote(remote.clone()), Route::local(local.clone())],
        config(Policy::LocalFirst),
        clock.clone(),
    );
    assert_eq!(
        serve(&r, chat()),
        ("from local".into(), "local".into(), names(&["local"]))
    );
    // Context overflow: straight to remote.
    assert_eq!(
        serve(&r, chat()),
        ("from remote".into(), "hf".into(), names(&["local", "hf"]))
    );
    // Local missing: not retried (local failures are deterministic), remote serves.
    assert_eq!(
        serve(&r, chat()),
        ("from remote".into(), "hf".into(), names(&["local", "hf"]))
    );
    assert!(clock.sleeps().is_empty());
}

#[test]
fn remote_first_goes_local_when_unauthorized_out_of_credit_rate_limited_or_offline() {
    for (err, remote_calls) in [
        (GenerateError::Unauthorized("401".into()), 1),
        (
            GenerateError::Remote {
                status: Some(402),
                message: "out of credit".into(),
            },
            1,
        ),
        (GenerateError::RateLimited { retry_after: None }, 3),
        (GenerateError::Unavailable("connection refused".into()), 3),
    ] {
        let clock = FakeClock::new();
        let local = Fake::new("local", local_caps(), &clock, vec![ok(&["local ", "text"])]);
        let remote = Fake::new(
            "hf",
            remote_caps(),
            &clock,
            vec![Behaviour::Fail(err.clone())],
        );
        let r = Router::with_clock(
            vec![Route::local(local), Route::remote(remote.clone())],
            config(Policy::RemoteFirst),
            clock.clone(),
        );
        let (text, served, tried) = serve(&r, chat());
        assert_eq!(
            (text.as_str(), served.as_str()),
            ("local text", "local"),
            "{err:?}"
        );
        let mut expect = vec!["hf"; remote_calls];
        expect.push("local");
        assert_eq!(tried, names(&expect), "{err:?}");
        assert_eq!(remote.calls(), remote_calls);
        // Retries back off exponentially (no jitter here).
        let want: Vec<Duration> = (0..remote_calls - 1)
            .map(|i| Duration::from_millis(100 << i))
            .collect();
        assert_eq!(clock.sleeps(), want, "{err:?}");
    }
}

#[test]
fn jitter_stays_within_its_band() {
    let clock = FakeClock::new();
    let remote = Fake::new(
        "hf",
        remote_caps(),
        &clock,
        vec![Behaviour::Fail(GenerateError::Timeout("t".into()))],
    );
    let mut cfg = config(Policy::RemoteFirst);
    cfg.retry = RetryConfig {
        max_retries: 5,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(800),
        jitter: 0.5,
        ..RetryConfig::default()
    };
    cfg.jitter_seed = Some(42);
    cfg.breaker.failure_threshold = 0;
    let r = Router::with_clock(vec![Route::remote(remote)], cfg, clock.clone());
    assert!(matches!(
        r.generate_text(chat()),
        Err(GenerateError::Timeout(_))
    ));
    let sleeps = clock.sleeps();
    assert_eq!(sleeps.len(), 5);
    for (i, s) in sleeps.iter().enumerate() {
        let full = Duration::from_millis((100u64 << i).min(800));
        assert!(
            *s <= full && *s >= full / 2,
            "retry {i}: {s:?} outside [{:?}, {full:?}]",
            full / 2
        );
    }
    assert!(
        sleeps.windows(2).any(|w| w[0] != w[1] / 2),
        "jitter should perturb the doubling: {sleeps:?}"
    );
}

#[test]
fn capability_filtering() {
    let clock = FakeClock::new();
    let local = Fake::new("local", local_caps(), &clock, vec![ok(&["l"])]);
    let remote = Fake::new("hf", remote_caps(), &clock, vec![ok(&["r"])]);
    let r = Router::with_clock(
        vec![Route::local(local.clone()), Route::remote(remote.clone())],
        config(Policy::LocalFirst),
        clock,
    );

    let mut tools = chat();
    tools.tools = Some(serde_json::json!([{"type": "function", "function": {"name": "f"}}]));
    assert_eq!(
        serve(&r, tools).2,
        names(&["hf"]),
        "local cannot call tools: not tried"
    );

    let mut schema = chat();
    schema.response_format = Some(
        serde_json::json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
    );
    assert_eq!(serve(&r, schema).2, names(&["hf"]));
    let mut plain = chat();
    plain.response_format = Some(serde_json::json!({"type": "text"}));
    assert_eq!(serve(&r, plain).2, names(&["local"]));

    let mut long = chat();
    long.max_tokens = Some(8000);
    assert_eq!(
        serve(&r, long).2,
        names(&["hf"]),
        "8000 tokens do not fit local's 4096"
    );
    let mut huge_prompt = GenerateRequest::text("word ".repeat(40_000));
    huge_prompt.max_tokens = Some(16);
    assert_eq!(serve(&r, huge_prompt).2, names(&["hf"]));

    let tokens = GenerateRequest::new(Prompt::Tokens(vec![1, 2, 3]));
    assert_eq!(
        serve(&r, tokens).2,
        names(&["local"]),
        "token prompts only locally"
    );

    let mut impossible = GenerateRequest::new(Prompt::Tokens(vec![1]));
    impossible.tools = Some(serde_json::json!([]));
    match r.generate(impossible, CancelToken::new()) {
        Err(GenerateError::InvalidRequest(m)) => assert!(
            m.contains("no route") && m.contains("local: no tool calls"),
            "{m}"
        ),
        _ => panic!("expected InvalidRequest"),
    }
    assert_eq!(r.plan(&chat()), names(&["local", "hf"]));
}

#[test]
fn cheapest_orders_by_price_local_is_free_unpriced_last() {
    let clock = FakeClock::new();
    let a = Fake::new("pricey", remote_caps(), &clock, vec![ok(&["a"])]);
    let b = Fake::new("cheap", remote_caps(), &clock, vec![ok(&["b"])]);
    let c = Fake::new("unpriced", remote_caps(), &clock, vec![ok(&["c"])]);
    let l = Fake::new("local", local_caps(), &clock, vec![ok(&["l"])]);
    let routes = vec![
        Route::remote(c.clone()),
        Route::remote(a.clone()).with_price(Price::per_million(3.0, 15.0)),
        Route::remote(b.clone()).with_price(Price::per_million(0.2, 0.6)),
        Route::local(l.clone()),
    ];
    let r = Router::with_clock(routes, config(Policy::Cheapest), clock);
    assert_eq!(
        r.plan(&chat()),
        names(&["local", "cheap", "pricey", "unpriced"])
    );
    let mut tools = chat();
    tools.tools = Some(serde_json::json!([]));
    assert_eq!(serve(&r, tools).1, "cheap");
    // Output-heavy vs input-heavy requests can reorder routes with different prompt/completion prices.
    let r2 = Router::with_clock(
        vec![
            Route::remote(a).with_name("cheap-in").with_price(Price {
                prompt: 1.0,
                completion: 10.0,
            }),
            Route::remote(b).with_name("cheap-out").with_price(Price {
                prompt: 10.0,
                completion: 1.0,
            }),
        ],
        config(Policy::Cheapest),
        FakeClock::new(),
    );
    let mut long_answer = GenerateRequest::text("hi");
    long_answer.max_tokens = Some(1000);
    assert_eq!(r2.plan(&long_answer), names(&["cheap-out", "cheap-in"]));
    let mut long_prompt = GenerateRequest::text("x".repeat(40_000));
    long_prompt.max_tokens = Some(1);
    assert_eq!(r2.plan(&long_prompt), names(&["cheap-in", "cheap-out"]));
}

#[test]
fn fastest_measures_explores_and_probes() {
    let clock = FakeClock::new();
    let slow = Behaviour::Stream {
        pieces: vec!["s"; 10],
        ttft: Duration::from_millis(800),
        per_token: Duration::from_millis(50),
    };
    let fast = Behaviour::Stream {
        pieces: vec!["f"; 10],
        ttft: Duration::from_millis(100),
        per_token: Duration::from_millis(10),
    };
    let a = Fake::new("slow", remote_caps(), &clock, vec![slow]);
    let b = Fake::new("fast", remote_caps(), &clock, vec![fast]);
    let mut cfg = config(Policy::Fastest);
    cfg.fastest.probe_every = 4;
    let r = Router::with_clock(vec![Route::remote(a), Route::remote(b)], cfg, clock);
    let served: Vec<String> = (0..8).map(|_| serve(&r, chat()).1).collect();
    // 1: nothing measured, order given; 2: `fast` unmeasured, tried; 3: fastest;
    // 4: probe of the stalest (`slow`); 5-7: fastest; 8: probe again.
    assert_eq!(
        served,
        names(&["slow", "fast", "fast", "slow", "fast", "fast", "fast", "slow"])
    );
    let stats = r.stats();
    assert_eq!(stats[0].name, "slow");
    assert_eq!(stats[0].samples, 3);
    assert_eq!(stats[0].ttft, Some(Duration::from_millis(800)));
    assert_eq!(stats[1].ttft, Some(Duration::from_millis(100)));
    let tps = stats[1].tokens_per_second.unwrap();
    assert!((tps - 100.0).abs() < 1.0, "{tps}");
}

#[test]
fn breaker_opens_half_opens_and_closes() {
    let clock = FakeClock::new();
    let remote = Fake::new(
        "hf",
        remote_caps(),
        &clock,
        vec![
            Behaviour::Fail(GenerateError::Remote {
                status: Some(500),
                message: "x".into(),
            }),
            Behaviour::Fail(GenerateError::Remote {
                status: Some(500),
                message: "x".into(),
            }),
            ok(&["back"]),
        ],
    );
    let local = Fake::new("local", local_caps(), &clock, vec![ok(&["local"])]);
    let mut cfg = config(Policy::RemoteFirst);
    cfg.retry.max_retries = 0;
    cfg.breaker.failure_threshold = 2;
    cfg.breaker.cool_down = Duration::from_secs(60);
    let r = Router::with_clock(
        vec![Route::remote(remote.clone()), Route::local(local)],
        cfg,
        clock.clone(),
    );
    assert_eq!(serve(&r, chat()).2, names(&["hf", "local"]));
    assert_eq!(serve(&r, chat()).2, names(&["hf", "local"]));
    assert!(matches!(r.stats()[0].breaker, BreakerState::Open { .. }));
    // Open: remote is not tried at all.
    assert_eq!(serve(&r, chat()).2, names(&["local"]));
    assert_eq!(remote.calls(), 2);
    // After the cool-down a probe goes through, succeeds, and closes the circuit.
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        serve(&r, chat()),
        ("back".into(), "hf".into(), names(&["hf"]))
    );
    assert_eq!(r.stats()[0].breaker, BreakerState::Closed { failures: 0 });
}

#[test]
fn mid_stream_errors_reach_the_caller_unless_opted_in() {
    let clock = FakeClock::new();
    let make = |clock: &Arc<FakeClock>| {
        let a = Fake::new(
            "a",
            remote_caps(),
            clock,
            vec![Behaviour::FailAfter(
                vec!["one ", "two "],
                GenerateError::Unavailable("reset".into()),
            )],
        );
        let b = Fake::new("b", remote_caps(), clock, vec![ok(&["three"])]);
        (a, b)
    };
    let (a, b) = make(&clock);
    let r = Router::with_clock(
        vec![Route::remote(a), Route::remote(b.clone())],
        config(Policy::RemoteFirst),
        clock.clone(),
    );
    let mut text = String::new();
    let mut error = None;
    for e in r
        .generate(GenerateRequest::text("Count: "), CancelToken::new())
        .unwrap()
    {
        match e {
            Ok(Event::Token(t)) => text.push_str(&t.text),
            Ok(Event::Done(_)) => panic!("must not complete"),
            Err(e) => error = Some(e),
        }
    }
    assert_eq!(text, "one two ");
    assert!(matches!(error, Some(GenerateError::Unavailable(_))));
    assert_eq!(b.calls(), 0);

    // Opted in: `b` continues from the text already streamed.
    let (a, b) = make(&clock);
    let mut cfg = config(Policy::RemoteFirst);
    cfg.failover_after_first_token = true;
    let r = Router::with_clock(vec![Route::remote(a), Route::remote(b.clone())], cfg, clock);
    let mut req = GenerateRequest::text("Count: ");
    req.max_tokens = Some(5);
    let (text, done) = r.generate_text(req).unwrap();
    assert_eq!(text, "one two three");
    assert_eq!(done.served_by.as_deref(), Some("b"));
    assert_eq!(done.tried, names(&["a", "b"]));
    assert_eq!(done.usage.completion_tokens, 3);
    let sent = b.calls.lock().unwrap()[0].clone();
    assert_eq!(sent.prompt, Prompt::Text("Count: one two ".into()));
    assert_eq!(sent.max_tokens, Some(3));
}

#[test]
fn fatal_errors_stop_at_once_and_cancel_before_an_answer() {
    let clock = FakeClock::new();
    let a = Fake::new(
        "a",
        remote_caps(),
        &clock,
        vec![Behaviour::Fail(GenerateError::InvalidRequest("bad".into()))],
    );
    let b = Fake::new("b", remote_caps(), &clock, vec![ok(&["x"])]);
    let r = Router::with_clock(
        vec![Route::remote(a), Route::remote(b.clone())],
        config(Policy::RemoteFirst),
        clock.clone(),
    );
    assert!(matches!(
        r.generate_text(chat()),
        Err(GenerateError::InvalidRequest(_))
    ));
    assert_eq!(b.calls(), 0);

    let cancel = CancelToken::new();
    cancel.cancel();
    let events: Vec<_> = r.generate(chat(), cancel).unwrap().collect();
    assert!(
        matches!(events.as_slice(), [Ok(Event::Done(c))] if c.finish_reason == FinishReason::Cancelled && c.served_by.is_none())
    );
}

#[test]
fn router_reports_caller_side_ttft_and_union_capabilities() {
    let clock = FakeClock::new();
    let a = Fake::new(
        "a",
        remote_caps(),
        &clock,
        vec![
            Behaviour::Fail(GenerateError::Timeout("t".into())),
            ok(&["x", "y"]),
        ],
    );
    let l = Fake::new("local", local_caps(), &clock, vec![ok(&["z"])]);
    let mut cfg = config(Policy::RemoteFirst);
    cfg.retry.max_retries = 1;
    let r = Router::with_clock(vec![Route::remote(a), Route::local(l)], cfg, clock);
    let (_, done) = r.generate_text(chat()).unwrap();
    assert_eq!(done.tried, names(&["a", "a"]));
    // The caller waited for the backoff too.
    assert_eq!(
        done.timings.time_to_first_token,
        Some(Duration::from_millis(100))
    );
    let caps = r.capabilities();
    assert_eq!(
        caps,
        Capabilities {
            context_length: Some(32768),
            tools: true,
            json_schema: true,
            token_prompts: true
        }
    );
    assert_eq!(r.name(), "router");
}
