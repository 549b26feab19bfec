//! [`Router`]: one [`Generator`] over several routes (the local engine,
//! remote providers, other routers), with a routing [`Policy`], retries with
//! exponential backoff and jitter, a circuit breaker per route, and
//! capability filtering.
//!
//! The rules, in the order they apply to a request:
//! 1. **Eligibility.** A route is skipped when the request needs what it
//!    lacks: tools, a `response_format`, token-id prompts, or a context longer
//!    than the route's (estimated prompt + `max_tokens`).
//! 2. **Order**, by [`Policy`].
//! 3. **Breakers.** A route whose circuit is open (or that asked to be left
//!    alone with `Retry-After`) is skipped; after the cool-down one probe goes through.
//! 4. **Attempts.** Each route is tried; an error is classified by
//!    [`classify`]: retried on the same route with backoff
//!    ([`ErrorClass::Retry`], remote routes only), passed to the next route
//!    ([`ErrorClass::FailOver`]), or returned at once ([`ErrorClass::Fatal`]).
//! 5. **Commitment.** Once a route produced its first event, the request
//!    belongs to it: a later error reaches the caller as is, unless
//!    [`RouterConfig::failover_after_first_token`] is set, in which case the
//!    next route is asked to *continue* the text already streamed (so nothing
//!    is repeated).
//!
//! The final [`Completion`] names the route that served (`served_by`) and
//! every attempt in order (`tried`, a route appears once per attempt).

mod breaker;
mod clock;
mod stats;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use foehn_core::{
    CancelToken, Capabilities, Completion, Event, EventStream, FinishReason, GenerateError,
    GenerateRequest, Generator, Message, Prompt, Timings, Usage,
};

pub use breaker::{BreakerConfig, BreakerState};
pub use clock::{Clock, SystemClock};

use breaker::Breaker;
use stats::LatencyWindow;

/// How the router orders the eligible routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Local routes first (in the order given), remote ones when local is
    /// missing, fails, or the prompt exceeds its context.
    LocalFirst,
    /// Remote routes first, local when offline, unauthorized, out of credit or rate-limited.
    RemoteFirst,
    /// By measured speed: a percentile of time to first token plus the
    /// expected tokens over a percentile of decode speed, over a sliding
    /// window; routes with no figures yet go first, and every
    /// [`FastestConfig::probe_every`]-th request tries the route with the
    /// stalest figures first.
    Fastest,
    /// By estimated price ([`Price`]; local routes cost 0, routes without a
    /// price go last), ties in the order given.
    Cheapest,
}

impl std::str::FromStr for Policy {
    type Err = String;

    /// Parses `local-first`, `remote-first`, `fastest` or `cheapest`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "local-first" | "local" => Ok(Policy::LocalFirst),
            "remote-first" | "remote" => Ok(Policy::RemoteFirst),
            "fastest" => Ok(Policy::Fastest),
            "cheapest" => Ok(Policy::Cheapest),
            other => Err(format!(
                "unknown route policy `{other}` (local-first, remote-first, fastest, cheapest)"
            )),
        }
    }
}

/// Whether a route runs here or over the network (it decides the order of
/// [`Policy::LocalFirst`]/[`Policy::RemoteFirst`] and whether errors are retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// On this machine: failures are deterministic, so never retried on the same route.
    Local,
    /// Over the network.
    Remote,
}

/// A price per token, in any currency unit as long as every route uses the same.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    /// Per prompt (input) token.
    pub prompt: f64,
    /// Per generated (output) token.
    pub completion: f64,
}

impl Price {
    /// Free (local routes).
    pub const FREE: Price = Price {
        prompt: 0.0,
        completion: 0.0,
    };

    /// A price from the usual "per million tokens" figures.
    pub fn per_million(prompt: f64, completion: f64) -> Self {
        Self {
            prompt: prompt / 1e6,
            completion: completion / 1e6,
        }
    }
}

/// One generator the router may send requests to.
#[derive(Clone)]
pub struct Route {
    generator: Arc<dyn Generator>,
    name: String,
    kind: RouteKind,
    price: Option<Price>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("price", &self.price)
            .finish()
    }
}

impl Route {
    /// A local route (free), named after its generator.
    pub fn local(generator: Arc<dyn Generator>) -> Self {
        let name = generator.name().to_string();
        Self {
            generator,
            name,
            kind: RouteKind::Local,
            price: Some(Price::FREE),
        }
    }

    /// A remote route with no price yet, named after its generator.
    pub fn remote(generator: Arc<dyn Generator>) -> Self {
        let name = generator.name().to_string();
        Self {
            generator,
            name,
            kind: RouteKind::Remote,
            price: None,
        }
    }

    /// Renames the route (names should be unique within a router).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the route's price (used by [`Policy::Cheapest`]).
    pub fn with_price(mut self, price: Price) -> Self {
        self.price = Some(price);
        self
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Local or remote.
    pub fn kind(&self) -> RouteKind {
        self.kind
    }
}

/// Retry settings (per route, per request).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// Retries of the same route after the first attempt. Default 2.
    pub max_retries: u32,
    /// The first backoff; it doubles each retry. Default 250 ms.
    pub base_delay: Duration,
    /// The longest backoff. Default 8 s.
    pub max_delay: Duration,
    /// The longest `Retry-After` the router waits for; a longer one moves on
    /// to the next route at once. Default 30 s.
    pub max_retry_after: Duration,
    /// Fraction of the backoff drawn at random (0 = none, 1 = "full jitter"). Default 0.5.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 2,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(30),
            jitter: 0.5,
        }
    }
}

/// [`Policy::Fastest`] settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FastestConfig {
    /// Samples kept per route. Default 32.
    pub window: usize,
    /// The percentile of time to first token used (the same tail of decode
    /// speed, `1 - percentile`, is used). Default 0.9.
    pub percentile: f64,
    /// Every n-th request tries the route with the stalest figures first, so
    /// slow routes keep being measured (0 = never). Default 10.
    pub probe_every: u32,
    /// Tokens assumed when a request sets no `max_tokens`. Default 256.
    pub expected_tokens: u32,
}

impl Default for FastestConfig {
    fn default() -> Self {
        Self {
            window: 32,
            percentile: 0.9,
            probe_every: 10,
            expected_tokens: 256,
        }
    }
}

/// Router settings; `RouterConfig::new(policy)` takes the defaults for the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterConfig {
    /// The routing policy.
    pub policy: Policy,
    /// Retries.
    pub retry: RetryConfig,
    /// Circuit breakers.
    pub breaker: BreakerConfig,
    /// [`Policy::Fastest`] settings.
    pub fastest: FastestConfig,
    /// After a route streamed its first event, may a failure still move the
    /// request to another route? The next route is then asked to continue
    /// the text already streamed. Default `false`: the error reaches the caller.
    pub failover_after_first_token: bool,
    /// Seed of the jitter generator (`None` = from the clock).
    pub jitter_seed: Option<u64>,
}

impl RouterConfig {
    /// The defaults with this policy.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            fastest: FastestConfig::default(),
            failover_after_first_token: false,
            jitter_seed: None,
        }
    }
}

/// What the router does after an error (see [`classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient: retry the same (remote) route after a backoff, then fail over.
    Retry,
    /// This route cannot serve it, another may: move on without retrying.
    FailOver,
    /// The request itself is wrong: no other route will do better.
    Fatal,
}

/// How the router treats an error:
/// - [`ErrorClass::Retry`]: connection failures ([`GenerateError::Unavailable`]),
///   timeouts, rate limits (429), 5xx and other server-side errors;
/// - [`ErrorClass::FailOver`]: unauthorized (401/403), out of credit (402),
///   model not found (404), a context overflow, an engine failure ([`GenerateError::Backend`]);
/// - [`ErrorClass::Fatal`]: invalid requests and other 4xx.
pub fn classify(error: &GenerateError) -> ErrorClass {
    match error {
        GenerateError::InvalidRequest(_) => ErrorClass::Fatal,
        GenerateError::ContextOverflow { .. }
        | GenerateError::Unauthorized(_)
        | GenerateError::Backend(_) => ErrorClass::FailOver,
        GenerateError::Unavailable(_)
        | GenerateError::RateLimited { .. }
        | GenerateError::Timeout(_) => ErrorClass::Retry,
        GenerateError::Remote { status, .. } => match status {
            Some(401..=404) => ErrorClass::FailOver,
            Some(408 | 429) => ErrorClass::Retry,
            Some(400..=499) => ErrorClass::Fatal,
            _ => ErrorClass::Retry,
        },
    }
}

/// A route's figures and health, for display and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteStats {
    /// The route's name.
    pub name: String,
    /// Its circuit breaker.
    pub breaker: BreakerState,
    /// Requests it served (committed).
    pub served: u64,
    /// Failed attempts.
    pub failures: u64,
    /// Latency samples in the window.
    pub samples: usize,
    /// The configured percentile of time to first token.
    pub ttft: Option<Duration>,
    /// The matching low percentile of decode speed, tokens per second.
    pub tokens_per_second: Option<f64>,
}

/// The router (see the module docs).
///
/// ```no_run
/// use std::sync::Arc;
/// use foehn_core::{GenerateRequest, Generator, Message};
/// use foehn_remote::{OpenAiClient, Policy, Route, Router, RouterConfig};
///
/// # fn local() -> Arc<dyn Generator> { unimplemented!() }
/// let remote = OpenAiClient::hf_router()?.with_model("mistralai/Mistral-7B-Instruct-v0.3");
/// let router = Router::new(
///     vec![Route::local(local()), Route::remote(Arc::new(remote))],
///     RouterConfig::new(Policy::LocalFirst),
/// );
/// let (text, done) = router.generate_text(GenerateRequest::chat(vec![Message::user("Hi")]))?;
/// println!("{text}\n(served by {:?}, tried {:?})", done.served_by, done.tried);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Router {
    name: String,
    inner: Arc<Inner>,
}

struct Inner {
    routes: Vec<Route>,
    config: RouterConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

struct State {
    routes: Vec<RouteState>,
    requests: u64,
    rng: u64,
}

struct RouteState {
    breaker: Breaker,
    /// A `Retry-After` asked us to stay away until then.
    not_before: Option<Instant>,
    latency: LatencyWindow,
    served: u64,
    failures: u64,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("name", &self.name)
            .field("routes", &self.inner.routes)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Router {
    /// A router named `router` over `routes`, on the system clock.
    pub fn new(routes: Vec<Route>, config: RouterConfig) -> Self {
        Self::with_clock(routes, config, Arc::new(SystemClock))
    }

    /// A router on a given clock (tests inject one that does not sleep).
    pub fn with_clock(routes: Vec<Route>, config: RouterConfig, clock: Arc<dyn Clock>) -> Self {
        let seed = config.jitter_seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15)
        });
        let state = State {
            routes: routes
                .iter()
                .map(|_| RouteState {
                    breaker: Breaker::new(config.breaker),
                    not_before: None,
                    latency: LatencyWindow::new(config.fastest.window),
                    served: 0,
                    failures: 0,
                })
                .collect(),
            requests: 0,
            rng: seed | 1,
        };
        Self {
            name: "router".into(),
            inner: Arc::new(Inner {
                routes,
                config,
                clock,
                state: Mutex::new(state),
            }),
        }
    }

    /// Renames the router (its own [`Generator::name`]; default `router`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The routes, in the order given.
    pub fn routes(&self) -> &[Route] {
        &self.inner.routes
    }

    /// The settings.
    pub fn config(&self) -> &RouterConfig {
        &self.inner.config
    }

    /// Each route's figures and health, in the order given.
    pub fn stats(&self) -> Vec<RouteStats> {
        let inner = &self.inner;
        let q = inner.config.fastest.percentile;
        let state = inner.lock();
        inner
            .routes
            .iter()
            .zip(&state.routes)
            .map(|(route, s)| RouteStats {
                name: route.name.clone(),
                breaker: s.breaker.state(),
                served: s.served,
                failures: s.failures,
                samples: s.latency.samples(),
                ttft: s.latency.ttft(q),
                tokens_per_second: s.latency.tokens_per_second(1.0 - q),
            })
            .collect()
    }

    /// The order in which routes would be tried for `request` now (names),
    /// after eligibility and policy, before breakers.
    pub fn plan(&self, request: &GenerateRequest) -> Vec<String> {
        let (eligible, _) = self.inner.eligible(request);
        let order = self.inner.order(request, &eligible, false);
        order
            .into_iter()
            .map(|i| self.inner.routes[i].name.clone())
            .collect()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Routes that can honour the request, and why the others cannot.
    fn eligible(&self, request: &GenerateRequest) -> (Vec<usize>, Vec<String>) {
        let mut ok = Vec::new();
        let mut refused = Vec::new();
        let needs_format = request.constraint.is_some()
            || request
                .response_format
                .as_ref()
                .is_some_and(|f| f.get("type").and_then(|t| t.as_str()) != Some("text"));
        let prompt_min = prompt_tokens_lower_bound(&request.prompt);
        for (i, route) in self.routes.iter().enumerate() {
            let caps = route.generator.capabilities();
            let why = if request.tools.is_some() && !caps.tools {
                Some("no tool calls")
            } else if needs_format && !caps.json_schema {
                Some("no structured output")
            } else if matches!(request.prompt, Prompt::Tokens(_)) && !caps.token_prompts {
                Some("no token-id prompts")
            } else if caps.context_length.is_some_and(|ctx| {
                u64::from(prompt_min) + u64::from(request.max_tokens.unwrap_or(0)) > u64::from(ctx)
            }) {
                Some("context too short")
            } else {
                None
            };
            match why {
                Some(why) => refused.push(format!("{}: {why}", route.name)),
                None => ok.push(i),
            }
        }
        (ok, refused)
    }

    /// The eligible routes in the order the policy tries them; `count`
    /// advances the request counter (probes of [`Policy::Fastest`]).
    fn order(&self, request: &GenerateRequest, eligible: &[usize], count: bool) -> Vec<usize> {
        let mut order = eligible.to_vec();
        match self.config.policy {
            Policy::LocalFirst => order.sort_by_key(|&i| self.routes[i].kind != RouteKind::Local),
            Policy::RemoteFirst => order.sort_by_key(|&i| self.routes[i].kind != RouteKind::Remote),
            Policy::Cheapest => {
                let prompt = f64::from(prompt_tokens_estimate(&request.prompt));
                let completion = f64::from(
                    request
                        .max_tokens
                        .unwrap_or(self.config.fastest.expected_tokens),
                );
                let cost = |i: usize| {
                    self.routes[i].price.map_or(f64::INFINITY, |p| {
                        prompt * p.prompt + completion * p.completion
                    })
                };
                order.sort_by(|&a, &b| cost(a).total_cmp(&cost(b)));
            }
            Policy::Fastest => {
                let mut state = self.lock();
                if count {
                    state.requests += 1;
                }
                let cfg = self.config.fastest;
                let tokens = f64::from(request.max_tokens.unwrap_or(cfg.expected_tokens));
                let score = |i: usize| -> f64 {
                    let w = &state.routes[i].latency;
                    if w.samples() == 0 {
                        return f64::NEG_INFINITY; // unmeasured: try it to get figures
                    }
                    let ttft = w.ttft(cfg.percentile).map_or(0.0, |d| d.as_secs_f64());
                    let decode = w
                        .tokens_per_second(1.0 - cfg.percentile)
                        .map_or(0.0, |tps| tokens / tps);
                    ttft + decode
                };
                order.sort_by(|&a, &b| score(a).total_cmp(&score(b)));
                let probe = cfg.probe_every > 0
                    && count
                    && state.requests.is_multiple_of(u64::from(cfg.probe_every));
                if probe && order.len() > 1 {
                    // The route (other than the best) whose figures are oldest goes first.
                    let stalest = (1..order.len())
                        .min_by_key(|&k| state.routes[order[k]].latency.last_sample);
                    if let Some(k) = stalest {
                        let route = order.remove(k);
                        order.insert(0, route);
                    }
                }
            }
        }
        order
    }

    fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let cfg = self.config.retry;
        let exp = cfg
            .base_delay
            .saturating_mul(1u32 << retry.min(20))
            .min(cfg.max_delay);
        let jitter = cfg.jitter.clamp(0.0, 1.0);
        let r = {
            let mut state = self.lock();
            // xorshift64*: plenty for jitter.
            state.rng ^= state.rng >> 12;
            state.rng ^= state.rng << 25;
            state.rng ^= state.rng >> 27;
            (state.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        };
        let delay = exp.mul_f64(1.0 - jitter * r);
        match retry_after {
            Some(ra) => ra.max(delay).min(cfg.max_retry_after),
            None => delay,
        }
    }

    /// Tries routes in `order` until one produces its first event.
    fn attempt(
        &self,
        request: &GenerateRequest,
        order: &[usize],
        tried: &mut Vec<String>,
        cancel: &CancelToken,
    ) -> Result<Attempt, AttemptError> {
        let mut last: Option<GenerateError> = None;
        let mut skipped: Vec<String> = Vec::new();
        for &idx in order {
            let route = &self.routes[idx];
            let mut retry = 0u32;
            loop {
                if cancel.is_cancelled() {
                    return Err(AttemptError::Cancelled);
                }
                let now = self.clock.now();
                {
                    let mut state = self.lock();
                    let rs = &mut state.routes[idx];
                    if let Some(t) = rs.not_before.filter(|t| now < *t) {
                        skipped.push(format!(
                            "{} (rate limited for {:.1}s)",
                            route.name,
                            (t - now).as_secs_f64()
                        ));
                        break;
                    }
                    if let Err(until) = rs.breaker.admit(now) {
                        skipped.push(format!(
                            "{} (circuit open for {:.1}s)",
                            route.name,
                            (until - now).as_secs_f64()
                        ));
                        break;
                    }
                }
                tried.push(route.name.clone());
                let started = self.clock.now();
                let result = route
                    .generator
                    .generate(request.clone(), cancel.clone())
                    .and_then(|mut stream| match stream.next() {
                        Some(Ok(first)) => Ok((stream, first)),
                        Some(Err(e)) => Err(e),
                        None => Err(GenerateError::Backend(format!(
                            "{}: empty event stream",
                            route.name
                        ))),
                    });
                match result {
                    Ok((stream, first)) => {
                        let first_at = self.clock.now();
                        let mut state = self.lock();
                        state.routes[idx].breaker.success();
                        state.routes[idx].served += 1;
                        return Ok(Attempt {
                            idx,
                            stream,
                            first,
                            started,
                            first_at,
                        });
                    }
                    Err(e) => {
                        let class = classify(&e);
                        self.record_failure(idx, &e, class);
                        match class {
                            ErrorClass::Fatal => return Err(AttemptError::Failed(e)),
                            ErrorClass::FailOver => {
                                last = Some(e);
                                break;
                            }
                            ErrorClass::Retry => {
                                let retry_after = match &e {
                                    GenerateError::RateLimited { retry_after } => *retry_after,
                                    _ => None,
                                };
                                let too_long = retry_after
                                    .is_some_and(|ra| ra > self.config.retry.max_retry_after);
                                let can_retry = route.kind == RouteKind::Remote
                                    && retry < self.config.retry.max_retries
                                    && !too_long;
                                last = Some(e);
                                if !can_retry {
                                    break;
                                }
                                let wait = self.backoff(retry, retry_after);
                                self.clock.sleep(wait, cancel);
                                retry += 1;
                            }
                        }
                    }
                }
            }
        }
        Err(AttemptError::Failed(match last {
            Some(e) if skipped.is_empty() => e,
            Some(e) => annotate(e, &format!("skipped: {}", skipped.join(", "))),
            None => {
                GenerateError::Unavailable(format!("no route available: {}", skipped.join(", ")))
            }
        }))
    }

    fn record_failure(&self, idx: usize, e: &GenerateError, class: ErrorClass) {
        let now = self.clock.now();
        let mut state = self.lock();
        let rs = &mut state.routes[idx];
        rs.failures += 1;
        // Request errors and context overflows say nothing about the route's health.
        if class == ErrorClass::Fatal || matches!(e, GenerateError::ContextOverflow { .. }) {
            return;
        }
        rs.breaker.failure(now);
        if let GenerateError::RateLimited {
            retry_after: Some(ra),
        } = e
        {
            rs.not_before = now.checked_add(*ra);
        }
    }

    fn record_served(&self, idx: usize, ttft: Duration, tokens: u32, decode: Duration) {
        let now = self.clock.now();
        let tps = (tokens > 1 && decode > Duration::ZERO)
            .then(|| f64::from(tokens - 1) / decode.as_secs_f64());
        self.lock().routes[idx].latency.record(now, ttft, tps);
    }
}

/// A route that answered.
struct Attempt {
    idx: usize,
    stream: EventStream,
    first: Event,
    started: Instant,
    first_at: Instant,
}

enum AttemptError {
    Cancelled,
    Failed(GenerateError),
}

fn annotate(e: GenerateError, note: &str) -> GenerateError {
    match e {
        GenerateError::Unavailable(m) => GenerateError::Unavailable(format!("{m}; {note}")),
        GenerateError::Timeout(m) => GenerateError::Timeout(format!("{m}; {note}")),
        GenerateError::Remote { status, message } => GenerateError::Remote {
            status,
            message: format!("{message}; {note}"),
        },
        GenerateError::Unauthorized(m) => GenerateError::Unauthorized(format!("{m}; {note}")),
        GenerateError::Backend(m) => GenerateError::Backend(format!("{m}; {note}")),
        other => other,
    }
}

/// Fewest tokens the prompt can be (for skipping routes whose context is too short).
fn prompt_tokens_lower_bound(prompt: &Prompt) -> u32 {
    match prompt {
        Prompt::Tokens(ids) => ids.len() as u32,
        // Few tokenizers average more than ~8 characters per token.
        other => prompt_chars(other) / 8,
    }
}

/// A typical token count of the prompt (for prices): ~4 characters per token.
fn prompt_tokens_estimate(prompt: &Prompt) -> u32 {
    match prompt {
        Prompt::Tokens(ids) => ids.len() as u32,
        other => prompt_chars(other).div_ceil(4),
    }
}

fn prompt_chars(prompt: &Prompt) -> u32 {
    let n = match prompt {
        Prompt::Chat(msgs) => msgs.iter().map(|m| m.content.chars().count() + 8).sum(),
        Prompt::Text(t) => t.chars().count(),
        Prompt::Tokens(ids) => ids.len(),
    };
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Generator for Router {
    fn name(&self) -> &str {
        &self.name
    }

    /// The union of the routes' capabilities (the longest context of any).
    fn capabilities(&self) -> Capabilities {
        self.inner
            .routes
            .iter()
            .map(|r| r.generator.capabilities())
            .fold(Capabilities::default(), |a, c| Capabilities {
                context_length: match (a.context_length, c.context_length) {
                    (Some(x), Some(y)) => Some(x.max(y)),
                    (x, y) => x.or(y),
                },
                tools: a.tools || c.tools,
                json_schema: a.json_schema || c.json_schema,
                token_prompts: a.token_prompts || c.token_prompts,
            })
    }

    fn generate(
        &self,
        request: GenerateRequest,
        cancel: CancelToken,
    ) -> Result<EventStream, GenerateError> {
        let inner = &self.inner;
        let started = inner.clock.now();
        let (eligible, refused) = inner.eligible(&request);
        if eligible.is_empty() {
            return Err(GenerateError::InvalidRequest(format!(
                "no route can honour this request ({})",
                if refused.is_empty() {
                    "no routes".to_string()
                } else {
                    refused.join("; ")
                }
            )));
        }
        let order = inner.order(&request, &eligible, true);
        let mut tried = Vec::new();
        match inner.attempt(&request, &order, &mut tried, &cancel) {
            Ok(attempt) => Ok(Box::new(RoutedStream::new(
                self.inner.clone(),
                request,
                cancel,
                order,
                tried,
                started,
                attempt,
            ))),
            Err(AttemptError::Cancelled) => {
                let done = Completion {
                    finish_reason: FinishReason::Cancelled,
                    usage: Usage::default(),
                    timings: Timings::default(),
                    served_by: None,
                    tried,
                    provider: None,
                };
                Ok(Box::new(std::iter::once(Ok(Event::Done(done)))))
            }
            Err(AttemptError::Failed(e)) => Err(e),
        }
    }
}

/// The caller's side of a routed generation.
struct RoutedStream {
    inner: Arc<Inner>,
    request: GenerateRequest,
    cancel: CancelToken,
    order: Vec<usize>,
    tried: Vec<String>,
    /// When the caller asked (for the caller-side time to first token).
    started: Instant,
    first_token_at: Option<Instant>,
    idx: usize,
    stream: EventStream,
    pending: Option<Event>,
    attempt_started: Instant,
    attempt_first_at: Instant,
    /// Tokens this attempt streamed.
    attempt_tokens: u32,
    /// Text and ids streamed to the caller so far (for continuations).
    text: String,
    ids: Vec<u32>,
    all_ids: bool,
    /// Tokens streamed by earlier attempts (continuations).
    earlier_tokens: u32,
    done: bool,
}

impl RoutedStream {
    fn new(
        inner: Arc<Inner>,
        request: GenerateRequest,
        cancel: CancelToken,
        order: Vec<usize>,
        tried: Vec<String>,
        started: Instant,
        a: Attempt,
    ) -> Self {
        Self {
            inner,
            request,
            cancel,
            order,
            tried,
            started,
            first_token_at: None,
            idx: a.idx,
            stream: a.stream,
            pending: Some(a.first),
            attempt_started: a.started,
            attempt_first_at: a.first_at,
            attempt_tokens: 0,
            text: String::new(),
            ids: Vec::new(),
            all_ids: true,
            earlier_tokens: 0,
            done: false,
        }
    }

    /// Passes an event to the caller, keeping the books.
    fn deliver(&mut self, event: Event) -> Event {
        match event {
            Event::Token(t) => {
                if self.first_token_at.is_none() {
                    self.first_token_at = Some(self.inner.clock.now());
                }
                self.attempt_tokens += 1;
                self.text.push_str(&t.text);
                match t.id {
                    Some(id) => self.ids.push(id),
                    None => self.all_ids = false,
                }
                Event::Token(t)
            }
            Event::Done(mut c) => {
                self.done = true;
                let now = self.inner.clock.now();
                let ttft = self.attempt_first_at - self.attempt_started;
                self.inner.record_served(
                    self.idx,
                    ttft,
                    self.attempt_tokens,
                    now - self.attempt_first_at,
                );
                c.served_by = Some(self.inner.routes[self.idx].name.clone());
                c.tried = std::mem::take(&mut self.tried);
                c.timings.time_to_first_token = self.first_token_at.map(|t| t - self.started);
                c.usage.completion_tokens = c
                    .usage
                    .completion_tokens
                    .saturating_add(self.earlier_tokens);
                Event::Done(c)
            }
        }
    }

    /// The request that continues what was streamed so far, if there is one.
    fn continuation(&self) -> Option<GenerateRequest> {
        let mut req = self.request.clone();
        req.prompt = match &self.request.prompt {
            Prompt::Text(t) => Prompt::Text(format!("{t}{}", self.text)),
            Prompt::Chat(msgs) if self.text.is_empty() => Prompt::Chat(msgs.clone()),
            Prompt::Chat(msgs) => {
                let mut msgs = msgs.clone();
                msgs.push(Message::assistant(self.text.clone()));
                Prompt::Chat(msgs)
            }
            Prompt::Tokens(ids) if self.all_ids => {
                Prompt::Tokens(ids.iter().chain(&self.ids).copied().collect())
            }
            Prompt::Tokens(_) => return None,
        };
        let streamed = self.earlier_tokens + self.attempt_tokens;
        if let Some(max) = req.max_tokens {
            req.max_tokens = Some(max.checked_sub(streamed).filter(|&m| m > 0)?);
        }
        Some(req)
    }

    /// A mid-stream failure: the error for the caller, or a continuation on another route.
    fn on_error(&mut self, e: GenerateError) -> Option<Result<Event, GenerateError>> {
        let class = classify(&e);
        self.inner.record_failure(self.idx, &e, class);
        if !self.inner.config.failover_after_first_token
            || class == ErrorClass::Fatal
            || self.cancel.is_cancelled()
        {
            self.done = true;
            return Some(Err(e));
        }
        let Some(request) = self.continuation() else {
            self.done = true;
            return Some(Err(e));
        };
        // The failed route goes last: the others are tried first.
        let pos = self.order.iter().position(|&i| i == self.idx).unwrap_or(0);
        let mut order: Vec<usize> = self.order[pos + 1..].to_vec();
        order.extend_from_slice(&self.order[..pos]);
        order.push(self.idx);
        match self
            .inner
            .attempt(&request, &order, &mut self.tried, &self.cancel)
        {
            Ok(a) => {
                self.earlier_tokens += self.attempt_tokens;
                self.attempt_tokens = 0;
                self.idx = a.idx;
                self.stream = a.stream;
                self.attempt_started = a.started;
                self.attempt_first_at = a.first_at;
                let first = self.deliver(a.first);
                Some(Ok(first))
            }
            Err(AttemptError::Cancelled) => {
                self.done = true;
                Some(Ok(Event::Done(Completion {
                    finish_reason: FinishReason::Cancelled,
                    usage: Usage {
                        prompt_tokens: 0,
                        completion_tokens: self.earlier_tokens + self.attempt_tokens,
                        cached_tokens: 0,
                    },
                    timings: Timings {
                        time_to_first_token: self.first_token_at.map(|t| t - self.started),
                        ..Timings::default()
                    },
                    served_by: Some(self.inner.routes[self.idx].name.clone()),
                    tried: std::mem::take(&mut self.tried),
                    provider: None,
                })))
            }
            Err(AttemptError::Failed(_)) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl Iterator for RoutedStream {
    type Item = Result<Event, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(event) = self.pending.take() {
            return Some(Ok(self.deliver(event)));
        }
        match self.stream.next() {
            Some(Ok(event)) => Some(Ok(self.deliver(event))),
            Some(Err(e)) => self.on_error(e),
            None => {
                let name = &self.inner.routes[self.idx].name;
                self.on_error(GenerateError::Backend(format!(
                    "{name}: the stream ended without a final event"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        use GenerateError as E;
        assert_eq!(classify(&E::InvalidRequest("x".into())), ErrorClass::Fatal);
        assert_eq!(classify(&E::Unauthorized("x".into())), ErrorClass::FailOver);
        assert_eq!(
            classify(&E::ContextOverflow {
                prompt_tokens: 9,
                context: 8
            }),
            ErrorClass::FailOver
        );
        assert_eq!(
            classify(&E::RateLimited { retry_after: None }),
            ErrorClass::Retry
        );
        assert_eq!(classify(&E::Timeout("x".into())), ErrorClass::Retry);
        assert_eq!(classify(&E::Unavailable("x".into())), ErrorClass::Retry);
        assert_eq!(
            classify(&E::Remote {
                status: Some(503),
                message: String::new()
            }),
            ErrorClass::Retry
        );
        assert_eq!(
            classify(&E::Remote {
                status: None,
                message: String::new()
            }),
            ErrorClass::Retry
        );
        assert_eq!(
            classify(&E::Remote {
                status: Some(402),
                message: String::new()
            }),
            ErrorClass::FailOver
        );
        assert_eq!(
            classify(&E::Remote {
                status: Some(404),
                message: String::new()
            }),
            ErrorClass::FailOver
        );
        assert_eq!(
            classify(&E::Remote {
                status: Some(409),
                message: String::new()
            }),
            ErrorClass::Fatal
        );
    }

    #[test]
    fn policy_parses() {
        assert_eq!("local-first".parse::<Policy>(), Ok(Policy::LocalFirst));
        assert_eq!("Remote_First".parse::<Policy>(), Ok(Policy::RemoteFirst));
        assert!("nearest".parse::<Policy>().is_err());
    }

    #[test]
    fn prompt_estimates() {
        let chat = Prompt::Chat(vec![Message::user("x".repeat(80))]);
        assert_eq!(prompt_tokens_lower_bound(&chat), 11);
        assert_eq!(prompt_tokens_estimate(&Prompt::Text("abcdefgh".into())), 2);
        assert_eq!(prompt_tokens_lower_bound(&Prompt::Tokens(vec![1, 2, 3])), 3);
    }
}
