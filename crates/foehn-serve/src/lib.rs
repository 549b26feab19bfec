//! An OpenAI-compatible HTTP server over any [`Generator`]: the local engine,
//! a remote provider, or a router over several.
//!
//! Routes: `POST /v1/chat/completions` and `POST /v1/completions` (whole
//! answers, or server-sent events with `stream: true`), `GET /v1/models`,
//! `GET /v1/models/{id}`, `GET /health`. Errors are OpenAI error objects
//! (`{"error": {"message", "type", "param", "code"}}`) with their HTTP status.
//!
//! Generators are blocking: each generation runs on a blocking thread and
//! streams its events to the response through a bounded channel. At most
//! [`ServeOptions::parallel`] generations run at once, each with its own
//! session over the shared model; up to [`ServeOptions::queue`] more requests
//! wait for a turn, and beyond that the server answers 429 with `Retry-After`.
//! A client that disconnects cancels its generation (between two tokens).
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn demo(generator: Arc<dyn foehn_core::Generator>) -> Result<(), foehn_serve::ServeError> {
//! let opts = foehn_serve::ServeOptions { models: vec!["my-model".into()], ..Default::default() };
//! foehn_serve::serve_blocking("127.0.0.1:8080".parse().unwrap(), generator, opts, |addr| {
//!     println!("listening on http://{addr}");
//! })
//! # }
//! ```

#![forbid(unsafe_code)]

mod bridge;
mod error;
mod queue;
mod request;
mod response;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use foehn_core::Generator;

pub use error::ApiError;
pub use queue::QueueStats;

/// How the server behaves. Every field has a default ([`ServeOptions::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// Model ids this server answers to, listed by `/v1/models`; a request
    /// naming another model gets a 404. Empty (the default) = accept any name
    /// and pass it to the generator (for routers and remotes); `/v1/models`
    /// then lists the generator's name.
    pub models: Vec<String>,
    /// The key clients must send as `Authorization: Bearer <key>` on `/v1/*`
    /// (`/health` stays open). Default: none.
    pub api_key: Option<String>,
    /// Most generations that run at once, each on its own blocking thread and
    /// session (default 4). A local model spreads each generation over all
    /// cores: without batching several at once share them, progressing side
    /// by side (a short request is not stuck behind a long one) at no gain
    /// in total tokens/s; a model made with
    /// `LocalModel::with_batching(parallel)` (as the `serve` example does)
    /// decodes them in one pass per step, which raises the total. Each holds
    /// its own KV cache.
    pub parallel: usize,
    /// Most requests that wait for a turn; more get 429 (default 64).
    pub queue: usize,
    /// Least `Retry-After` sent with a 429; the estimate from recent
    /// generation times is used when longer (default 1 s, capped at 60 s).
    pub retry_after: Duration,
    /// Largest request body accepted, in bytes (default 4 MiB; larger is 413).
    pub max_body_bytes: usize,
    /// Interval of SSE keep-alive comments while a stream is quiet (default 15 s).
    pub keep_alive: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            api_key: None,
            parallel: 4,
            queue: 64,
            retry_after: Duration::from_secs(1),
            max_body_bytes: 4 << 20,
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound (in use, no permission, …).
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket's error.
        source: std::io::Error,
    },
    /// The async runtime could not be started.
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    /// Serving failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// The server's routes over `generator`, ready to be served by axum (or
/// nested into a larger app).
pub fn app(generator: Arc<dyn Generator>, opts: ServeOptions) -> Router {
    let scheduler = Arc::new(queue::Scheduler::new(
        opts.parallel,
        opts.queue,
        opts.retry_after,
    ));
    let body_limit = opts.max_body_bytes;
    let state = Arc::new(routes::AppState {
        generator,
        opts,
        scheduler,
        started: response::unix_now(),
    });
    let v1 = Router::new()
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{id}", get(routes::model))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::require_key,
        ));
    Router::new()
        .route("/health", get(routes::health))
        .merge(v1)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::check_length,
        ))
        .with_state(state)
}

/// A bound server, not yet serving: bind first to learn the address (port 0
/// picks a free one), then [`Server::run`].
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    addr: SocketAddr,
}

impl Server {
    /// Binds `addr` and builds the routes over `generator`.
    pub async fn bind(
        addr: SocketAddr,
        generator: Arc<dyn Generator>,
        opts: ServeOptions,
    ) -> Result<Self, ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Self {
            listener,
            router: app(generator, opts),
            addr,
        })
    }

    /// The address it listens on (with the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until Ctrl-C or SIGTERM, then finishes the requests in flight.
    pub async fn run(self) -> Result<(), ServeError> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}

/// Binds `addr`, calls `on_bound` with the bound address, and serves until
/// Ctrl-C or SIGTERM, on a multi-threaded runtime of its own.
pub fn serve_blocking(
    addr: SocketAddr,
    generator: Arc<dyn Generator>,
    opts: ServeOptions,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(async move {
        let server = Server::bind(addr, generator, opts).await?;
        on_bound(server.local_addr());
        server.run().await
    })
}

/// Completes on Ctrl-C, or on SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
