//! The `loadtest` example: against `serve` on the default model (SmolLM2,
//! through the catalog and its PyPI mirror) its counts add up; against tiny
//! loopback servers that answer garbage, hang up or never answer, every
//! request is reported as an error and the run ends.

mod common;
#[path = "serve/server.rs"]
mod server;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::example_bin;
use serde_json::Value;
use server::ServeProcess;

/// Runs `loadtest` with `args`; fails the test if it runs past `limit`
/// (a hang guard, not a timing assertion).
fn loadtest(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(example_bin("loadtest"))
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadtest");
    let start = Instant::now();
    // Drain the pipes while waiting, so a large report cannot block the child.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for loadtest") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadtest {args:?} still ran after {limit:?}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn json_report(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "loadtest failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "loadtest --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

#[test]
fn counts_add_up_against_serve() {
    let server = ServeProcess::start(&["--parallel", "2"], &[]);
    let url = server.url("/v1");
    let o = loadtest(
        &[
            "--url",
            &url,
            "--clients",
            "2",
            "--requests",
            "2",
            "--max-tokens",
            "12",
            "--temperature",
            "0.7",
            "--seed",
            "5",
            "--json",
        ],
        Duration::from_secs(300),
    );
    let report = json_report(&o);
    assert_eq!(report["model"], "smollm2-135m-instruct-q4_1", "{report}");
    let levels = report["levels"].as_array().expect("levels");
    assert_eq!(levels.len(), 1);
    let level = &levels[0];
    assert_eq!(level["clients"], 2);
    assert_eq!(level["requests"], 4);
    assert_eq!(level["errors"], 0, "{level}");
    let records = level["records"].as_array().expect("records");
    assert_eq!(records.len(), 4);
    let mut pairs: Vec<(u64, u64)> = Vec::new();
    let mut sum = 0;
    for r in records {
        assert!(r["error"].is_null(), "{r}");
        let tokens = r["tokens"].as_u64().expect("tokens");
        assert!((1..=12).contains(&tokens), "{r}");
        assert!(r["deltas"].as_u64().expect("deltas") >= 1, "{r}");
        let (ttft, total) = (
            r["ttft_s"].as_f64().expect("ttft"),
            r["total_s"].as_f64().unwrap(),
        );
        assert!(ttft > 0.0 && ttft <= total, "{r}");
        pairs.push((r["client"].as_u64().unwrap(), r["index"].as_u64().unwrap()));
        sum += tokens;
    }
    pairs.sort_unstable();
    assert_eq!(pairs, [(0, 0), (0, 1), (1, 0), (1, 1)]);
    assert_eq!(level["tokens"].as_u64(), Some(sum), "{level}");
    let wall = level["wall_s"].as_f64().expect("wall");
    let rate = level["tokens_per_s"].as_f64().expect("rate");
    assert!(
        (rate * wall - sum as f64).abs() < 1e-6 * sum as f64,
        "{level}"
    );
    assert!(level["ttft"]["p50_ms"].as_f64().unwrap() <= level["ttft"]["p99_ms"].as_f64().unwrap());
    assert!(level["itl"]["p50_ms"].is_number(), "{level}");

    // The markdown report: one row per level with the same counts.
    let o = loadtest(
        &[
            "--url",
            &url,
            "--clients",
            "1,2",
            "--requests",
            "1",
            "--max-tokens",
            "4",
        ],
        Duration::from_secs(300),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("| clients | requests | errors | tokens |"),
        "{table}"
    );
    for prefix in ["| 1 | 1 | 0 | ", "| 2 | 2 | 0 | "] {
        assert!(table.lines().any(|l| l.starts_with(prefix)), "{table}");
    }
}

/// How a fake server misbehaves on every connection.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Answers bytes that are not HTTP, then closes.
    Garbage,
    /// Reads the request and closes without a word.
    Close,
    /// Starts a 200 event stream, sends one chunk and closes mid-stream.
    Truncate,
    /// Reads the request and never answers (the client must time out).
    Silent,
}

/// A loopback server with `fault` on every connection; its thread ends
/// with the test process.
fn faulty_server(fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || misbehave(conn, fault));
        }
    });
    addr
}

fn misbehave(mut conn: TcpStream, fault: Fault) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    // Read the request head (and whatever of the body came with it).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    match fault {
        Fault::Garbage => {
            let _ = conn.write_all(b"SSH-2.0-not-an-http-server\r\n\xff\xfe garbage\r\n\r\n");
        }
        Fault::Close => {}
        Fault::Truncate => {
            let chunk =
                r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#;
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: {chunk}\n\n"
                )
                .as_bytes(),
            );
        }
        Fault::Silent => thread::sleep(Duration::from_secs(60)),
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

#[test]
fn faulty_servers_are_counted_as_errors() {
    for fault in [Fault::Garbage, Fault::Close, Fault::Truncate, Fault::Silent] {
        let addr = faulty_server(fault);
        let url = format!("http://{addr}/v1");
        let o = loadtest(
            &[
                "--url",
                &url,
                "--model",
                "fake",
                "--clients",
                "2",
                "--requests",
                "2",
                "--timeout",
                "1",
                "--json",
            ],
            Duration::from_secs(60),
        );
        let report = json_report(&o);
        let level = &report["levels"][0];
        assert_eq!(level["requests"], 4, "{fault:?}: {level}");
        assert_eq!(level["errors"], 4, "{fault:?}: {level}");
        assert_eq!(level["tokens"], 0, "{fault:?}: {level}");
        assert!(level["ttft"].is_null(), "{fault:?}: {level}");
        let messages = level["error_messages"].as_array().expect("messages");
        assert!(!messages.is_empty(), "{fault:?}: {level}");
        for r in level["records"].as_array().expect("records") {
            assert!(
                r["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{fault:?}: {r}"
            );
        }
        if let Fault::Silent = fault {
            assert!(
                messages
                    .iter()
                    .all(|m| m.as_str().unwrap_or("").contains("timeout")
                        || m.as_str().unwrap_or("").contains("timed out")),
                "{level}"
            );
        }
    }
    // The markdown report lists the errors under the table.
    let url = format!("http://{}/v1", faulty_server(Fault::Close));
    let o = loadtest(
        &[
            "--url",
            &url,
            "--model",
            "fake",
            "--requests",
            "1",
            "--timeout",
            "1",
        ],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("| 1 | 1 | 1 | 0 |")),
        "{text}"
    );
    assert!(text.contains("errors with 1 clients:\n- "), "{text}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    for (args, want) in [
        (&["--clients", "0"][..], "--clients"),
        (&["--requests", "0"][..], "--requests"),
        (&["--timeout", "0"][..], "--timeout"),
    ] {
        let o = loadtest(args, Duration::from_secs(60));
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // No server: listing the models fails with a message, not a panic.
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{free}/v1");
    let o = loadtest(&["--url", &url, "--timeout", "2"], Duration::from_secs(60));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--model") && !err.contains("panicked"),
        "{err}"
    );
}
