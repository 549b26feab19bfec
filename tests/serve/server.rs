//! Test support for the `serve` example: start it on a free loopback port,
//! talk HTTP to it, read SSE streams.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::example_bin;

/// A running `serve` example, killed on drop.
pub struct ServeProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl ServeProcess {
    /// Starts `serve` with `args` (plus `--port 0`) and waits for its
    /// `listening on http://…` line. `envs` are added to its environment.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(example_bin("serve"));
        cmd.args(args)
            .args(["--port", "0"])
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("FOEHN_API_KEY");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let pipe = child.stderr.take().expect("stderr");
            let sink = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        // Loading the default model may fetch it (pip) on a cold cache.
        let addr = match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(a) => a.parse().expect("a socket address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve did not start: {}", stderr.lock().unwrap());
            }
        };
        Self {
            child,
            addr,
            stderr,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET /health` as JSON.
    pub fn health(&self) -> Value {
        let (status, _, body) = get(&self.url("/health"), None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("health JSON")
    }

    /// Polls `/health` until `cond` holds (panics after `timeout`).
    pub fn wait_for(&self, what: &str, timeout: Duration, cond: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let h = self.health();
            if cond(&h) {
                return h;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}: {h}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Status, `Retry-After` and body of a GET.
pub fn get(url: &str, key: Option<&str>) -> (u16, Option<String>, String) {
    let mut req = agent().get(url);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    finish(req.call().expect("an HTTP answer"))
}

/// Status, `Retry-After` and body of a POST with a JSON body.
pub fn post(url: &str, body: &str, key: Option<&str>) -> (u16, Option<String>, String) {
    let mut req = agent().post(url).header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    finish(req.send(body).expect("an HTTP answer"))
}

fn finish(r: ureq::http::Response<ureq::Body>) -> (u16, Option<String>, String) {
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = String::new();
    r.into_body()
        .into_reader()
        .read_to_string(&mut body)
        .expect("a UTF-8 body");
    (status, retry, body)
}

/// A streamed answer, as a client saw it.
#[derive(Debug, Default)]
pub struct Streamed {
    /// The HTTP status.
    pub status: u16,
    /// `Retry-After`, when sent.
    pub retry_after: Option<String>,
    /// The body when the status is not 200.
    pub error: Option<Value>,
    /// The JSON chunks, in order.
    pub chunks: Vec<Value>,
    /// Whether `data: [DONE]` ended the stream.
    pub done: bool,
    /// The concatenated text (chat deltas or completion text).
    pub text: String,
    /// From the request to the first chunk with text.
    pub first_token: Option<Duration>,
    /// From the request to the end of the stream.
    pub total: Duration,
}

impl Streamed {
    /// The finish reason of the chunk that carries one.
    pub fn finish_reason(&self) -> Option<String> {
        self.chunks.iter().find_map(|c| {
            c["choices"].get(0)?["finish_reason"]
                .as_str()
                .map(str::to_string)
        })
    }

    /// The usage chunk's `completion_tokens`.
    pub fn completion_tokens(&self) -> Option<u64> {
        self.chunks
            .iter()
            .find_map(|c| c["usage"]["completion_tokens"].as_u64())
    }
}

/// POSTs a streaming request and reads the SSE stream to its end.
pub fn stream(url: &str, body: &str) -> Streamed {
    let start = Instant::now();
    let r = agent()
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .expect("an HTTP answer");
    let mut out = Streamed {
        status: r.status().as_u16(),
        ..Streamed::default()
    };
    out.retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut reader = BufReader::new(r.into_body().into_reader());
    if out.status != 200 {
        let mut text = String::new();
        reader.read_to_string(&mut text).expect("a UTF-8 body");
        out.error = serde_json::from_str(&text).ok();
        out.total = start.elapsed();
        return out;
    }
    for line in reader.lines() {
        let line = line.expect("a UTF-8 line");
        let Some(data) = line
            .strip_prefix("data: ")
            .or_else(|| line.strip_prefix("data:"))
        else {
            continue;
        };
        if data == "[DONE]" {
            out.done = true;
            break;
        }
        let chunk: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
        let piece = chunk["choices"]
            .get(0)
            .and_then(|c| {
                c["delta"]["content"]
                    .as_str()
                    .or_else(|| c["text"].as_str())
            })
            .unwrap_or_default()
            .to_string();
        if !piece.is_empty() && out.first_token.is_none() {
            out.first_token = Some(start.elapsed());
        }
        out.text.push_str(&piece);
        out.chunks.push(chunk);
    }
    out.total = start.elapsed();
    out
}

/// One kind of request the concurrency tests send.
#[derive(Debug, Clone)]
pub struct Job {
    /// `/v1/chat/completions` or `/v1/completions`.
    pub path: &'static str,
    /// The JSON body without `stream`.
    pub body: Value,
}

impl Job {
    /// The body with `stream: true` and the usage chunk asked for.
    pub fn streaming_body(&self) -> String {
        let mut b = self.body.clone();
        b["stream"] = Value::Bool(true);
        b["stream_options"] = serde_json::json!({"include_usage": true});
        b.to_string()
    }
}

/// What `n` concurrent streaming clients saw, client `i` sending `jobs[i % jobs.len()]`.
pub struct Concurrent {
    /// Each client's job index and answer, in client order.
    pub results: Vec<(usize, Streamed)>,
    /// From the start of the first to the end of the last.
    pub wall: Duration,
}

/// Starts `n` clients at once (a barrier) and waits for all of them.
pub fn concurrent_streams(server: &ServeProcess, jobs: &[Job], n: usize) -> Concurrent {
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let start = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let job = i % jobs.len();
            let url = server.url(jobs[job].path);
            let body = jobs[job].streaming_body();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                (job, stream(&url, &body))
            })
        })
        .collect();
    let results = handles
        .into_iter()
        .map(|h| h.join().expect("a client thread"))
        .collect();
    Concurrent {
        results,
        wall: start.elapsed(),
    }
}

impl Concurrent {
    /// A one-line summary: wall time, time to first token and per-client time (median, max), tokens/s overall.
    pub fn summary(&self) -> String {
        let mut ttft: Vec<f64> = self
            .results
            .iter()
            .filter_map(|(_, s)| s.first_token)
            .map(|d| d.as_secs_f64())
            .collect();
        let mut total: Vec<f64> = self
            .results
            .iter()
            .map(|(_, s)| s.total.as_secs_f64())
            .collect();
        ttft.sort_by(f64::total_cmp);
        total.sort_by(f64::total_cmp);
        let tokens: u64 = self
            .results
            .iter()
            .filter_map(|(_, s)| s.completion_tokens())
            .sum();
        let med = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(0.0);
        let max = |v: &[f64]| v.last().copied().unwrap_or(0.0);
        format!(
            "{} clients: wall {:.2} s; first token median {:.3} s, max {:.3} s; per client median {:.2} s, max {:.2} s; {} tokens, {:.1} tok/s",
            self.results.len(),
            self.wall.as_secs_f64(),
            med(&ttft),
            max(&ttft),
            med(&total),
            max(&total),
            tokens,
            tokens as f64 / self.wall.as_secs_f64().max(1e-9)
        )
    }
}
