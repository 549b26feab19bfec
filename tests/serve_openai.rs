//! The `serve` example on the default model (SmolLM2-135M, through the
//! catalog and its PyPI mirror): the official OpenAI Python client against
//! it, and a client that hangs up cancelling its generation.

mod common;
#[path = "serve/server.rs"]
mod server;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server::{concurrent_streams, stream, Job, ServeProcess};

/// The default model's catalog id, the id `serve` gives it.
const MODEL_ID: &str = "smollm2-135m-instruct-q4_1";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The cargo target directory this test runs from (`target/<profile>/deps/<exe>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("target directory")
        .to_path_buf()
}

/// FNV-1a, a stable key for the venv of one requirements file.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A venv with the pinned `openai` client (`tests/serve/requirements.txt`),
/// made once per version of that file under the target directory; `$FOEHN_PYTHON`
/// overrides the `python3` that makes it.
fn openai_venv() -> PathBuf {
    let requirements = repo_file("tests/serve/requirements.txt");
    let pins = std::fs::read(&requirements).expect("tests/serve/requirements.txt");
    let venv = target_dir().join(format!("serve-openai-venv-{:016x}", fnv1a(&pins)));
    let python = venv.join("bin").join("python");
    if python.exists() {
        return python;
    }
    let staging = venv.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let base = std::env::var("FOEHN_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&base)
        .args(["-m", "venv"])
        .arg(&staging)
        .status()
        .expect("run python3 -m venv");
    assert!(
        status.success(),
        "{base} -m venv {} failed",
        staging.display()
    );
    let status = Command::new(staging.join("bin").join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements)
        .status()
        .expect("run pip install");
    assert!(
        status.success(),
        "pip install -r {} failed",
        requirements.display()
    );
    // Rename into place only when complete; a concurrent run may have won.
    if std::fs::rename(&staging, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    assert!(
        python.exists(),
        "{} missing after install",
        python.display()
    );
    python
}

/// The official client: models, chat and completions, streamed and not,
/// logprobs, structured output, tool calls, and its exceptions for 404, 400,
/// context overflow and a bad key.
#[test]
fn the_official_openai_client_talks_to_serve() {
    let python = openai_venv();
    let key = "sk-foehn-test";
    let server = ServeProcess::start(&["--ctx", "1024", "--api-key", key], &[]);
    let out = Command::new(&python)
        .arg(repo_file("tests/serve/openai_client.py"))
        .args([&server.url("/v1"), MODEL_ID, key])
        .output()
        .expect("run the openai client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the openai client failed:\n{}\n{stdout}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );
    let summary: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON summary");
    eprintln!("{summary}");
    assert_eq!(
        summary["errors"],
        json!({"unknown_model": 404, "n=2": 400, "context": 400, "bad_key": 401, "bad_schema": 400,
               "unknown_tool": 400})
    );
    // The server answers what the engine answers: the `generate` example's greedy text.
    let out = Command::new(common::example_bin("generate"))
        .args([
            "--prompt",
            "What is the capital of France?",
            "--temp",
            "0",
            "-n",
            "24",
            "--json",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local: Value = serde_json::from_slice(&out.stdout).expect("generate --json");
    assert_eq!(summary["chat"], local["text"]);
}

/// Sends a streaming completion on a raw socket and reads until `tokens`
/// chunks with text arrived.
fn open_stream(addr: SocketAddr, body: &Value, tokens: usize) -> BufReader<TcpStream> {
    let mut sock = TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    write!(
        sock,
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(sock);
    let (mut line, mut seen) = (String::new(), 0);
    while seen < tokens {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream ended early"
        );
        if line.starts_with("data: {") && !line.contains("\"text\":\"\"") {
            seen += 1;
        }
    }
    reader
}

/// One slot, one waiting place: a third client gets 429; hanging up cancels
/// the running generation (its slot goes to the waiter at once), then the
/// waiter's. Counting to 2000 would keep the model busy for many seconds.
#[test]
fn a_client_that_hangs_up_cancels_its_generation() {
    let server = ServeProcess::start(&["--parallel", "1", "--queue", "1", "--ctx", "2048"], &[]);
    let counting = json!({"prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 2000, "temperature": 0, "stream": true});
    let first = open_stream(server.addr, &counting, 3);
    server.wait_for("the first generation", Duration::from_secs(5), |h| {
        h["queue"]["running"] == 1
    });
    // The waiter's first chunk comes only once it has the slot.
    let waiter = {
        let (addr, body) = (server.addr, counting.clone());
        std::thread::spawn(move || open_stream(addr, &body, 1))
    };
    server.wait_for("the second to wait", Duration::from_secs(5), |h| {
        h["queue"]["waiting"] == 1
    });
    let third = stream(&server.url("/v1/completions"), &counting.to_string());
    assert_eq!(third.status, 429, "{third:?}");
    assert!(third.retry_after.is_some());

    let hung_up = Instant::now();
    drop(first);
    let second = waiter.join().expect("the waiter gets the slot");
    let freed = hung_up.elapsed();
    let h = server.wait_for(
        "the first to count as cancelled",
        Duration::from_secs(5),
        |h| h["queue"]["cancelled"] == 1,
    );
    assert_eq!(h["queue"]["running"], 1, "the waiter runs: {h}");
    drop(second);
    server.wait_for(
        "the waiter's generation to stop",
        Duration::from_secs(5),
        |h| h["queue"]["running"] == 0 && h["queue"]["cancelled"] == 2,
    );
    eprintln!(
        "slot freed {:.0} ms after the hang-up",
        freed.as_secs_f64() * 1e3
    );
    assert!(freed < Duration::from_secs(3), "{freed:?}");
    assert_eq!(server.health()["queue"]["completed"], 0);
}

/// 32 concurrent streaming clients on SmolLM2 (queue 64; `--parallel` from
/// `$FOEHN_SERVE_PARALLEL`, default 4 as `serve`'s; `$FOEHN_SERVE_CLIENTS` changes the 32),
/// for the timings in the issue note.
/// Slow on 2 cores: run with
/// `cargo test --release --test serve_openai -- --ignored --nocapture`.
#[test]
#[ignore]
fn thirty_two_streaming_clients_on_the_default_model() {
    let parallel = std::env::var("FOEHN_SERVE_PARALLEL").unwrap_or_else(|_| "4".into());
    let server = ServeProcess::start(&["--parallel", &parallel], &[]);
    let jobs: Vec<Job> = [
        "Why is the sky blue?",
        "Name three fruits.",
        "What is Rust?",
        "Say hello in French.",
    ]
    .iter()
    .map(|q| Job {
        path: "/v1/chat/completions",
        body: json!({"model": MODEL_ID, "messages": [{"role": "user", "content": q}],
                         "temperature": 0, "max_tokens": 64}),
    })
    .collect();
    let clients = std::env::var("FOEHN_SERVE_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32);
    let run = concurrent_streams(&server, &jobs, clients);
    eprintln!("SmolLM2-135M Q4_1, parallel {parallel}: {}", run.summary());
    for (i, (job, s)) in run.results.iter().enumerate() {
        assert_eq!(s.status, 200, "client {i}: {:?}", s.error);
        assert!(s.done && !s.text.is_empty(), "client {i}: {s:?}");
        let first = run
            .results
            .iter()
            .find(|(j, _)| j == job)
            .map(|(_, s)| &s.text)
            .unwrap();
        assert_eq!(
            &s.text, first,
            "client {i}: same greedy answer as the first client with job {job}"
        );
    }
}
