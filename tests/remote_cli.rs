//! The `generate` and `chat` examples with `--remote` and `--route`, against a
//! tiny fake OpenAI-compatible server on loopback (no network beyond it).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{example_bin, fixture};

/// The text the fake server streams, in pieces.
const PIECES: [&str; 4] = ["Hello", " from", " the fake", " server"];

/// What the fake server answers to every request.
#[derive(Clone, Copy)]
enum Answer {
    /// A 200 event stream of [`PIECES`] (chat or completions chunks, by path).
    Stream,
    /// `503 Service Unavailable` with an OpenAI error object.
    Unavailable,
}

/// One request the server received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    authorization: Option<String>,
    body: serde_json::Value,
}

/// A minimal OpenAI-compatible server: one thread accepting connections, one
/// per connection answering a single request, then closing.
struct FakeServer {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl FakeServer {
    fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        // The thread ends with the test process.
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = log.clone();
                thread::spawn(move || serve(conn, answer, &log));
            }
        });
        Self { addr, received }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn serve(mut conn: TcpStream, answer: Answer, log: &Mutex<Vec<Received>>) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let Some(request) = read_request(&mut conn) else {
        return;
    };
    let chat = request.path.ends_with("/chat/completions");
    log.lock().unwrap().push(request);
    let response = match answer {
        Answer::Unavailable => {
            let body = r#"{"error":{"message":"the fake server is overloaded","type":"server_error","code":503}}"#;
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        Answer::Stream => {
            let mut out = String::from(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                 x-inference-provider: fake-provider\r\nConnection: close\r\n\r\n",
            );
            out.push_str(": keep-alive comment\n\n");
            for piece in PIECES {
                let chunk = if chat {
                    serde_json::json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})
                } else {
                    serde_json::json!({"object": "text_completion", "choices": [{"index": 0, "text": piece, "finish_reason": null}]})
                };
                out.push_str(&format!("data: {chunk}\n\n"));
            }
            let last = if chat {
                serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            } else {
                serde_json::json!({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
            };
            out.push_str(&format!("data: {last}\n\n"));
            let usage = serde_json::json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": PIECES.len(), "total_tokens": 7 + PIECES.len()}});
            out.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
            out
        }
    };
    let _ = conn
        .write_all(response.as_bytes())
        .and_then(|_| conn.flush());
    let _ = conn.shutdown(std::net::Shutdown::Write);
    // Let the client read to the end before the socket goes away.
    conn.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let _ = conn.read(&mut [0u8; 64]);
}

fn read_request(conn: &mut TcpStream) -> Option<Received> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split_whitespace().nth(1)?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let len = header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).ok()?;
    Some(Received {
        path,
        authorization: header("authorization"),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    })
}

fn command(example: &str) -> Command {
    let mut cmd = Command::new(example_bin(example));
    cmd.env("HF_HUB_OFFLINE", "1").env_remove("HF_TOKEN");
    cmd
}

fn generate(args: &[&str]) -> Output {
    command("generate")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run generate")
}

fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "one JSON object ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn tiny_model() -> String {
    fixture("tiny-mistral/gguf/tiny-mistral-Q8_0.gguf")
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn remote_only_streams_the_servers_text() {
    let server = FakeServer::start(Answer::Stream);
    let url = server.base_url();
    let out = json(&generate(&[
        "--remote",
        &url,
        "--model-id",
        "fake",
        "--api-key",
        "sk-test",
        "-n",
        "8",
        "--prompt",
        "Hi",
        "--json",
    ]));
    assert_eq!(out["text"], PIECES.concat());
    assert_eq!(out["served_by"], "remote");
    assert_eq!(out["provider"], "fake-provider");
    assert_eq!(out["finish_reason"], "stop");
    assert_eq!(out["usage"]["completion_tokens"], PIECES.len());

    let received = server.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let r = &received[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(r.body["model"], "fake");
    assert_eq!(r.body["max_tokens"], 8);
    assert_eq!(r.body["stream"], true);
    assert_eq!(
        r.body["messages"],
        serde_json::json!([{"role": "user", "content": "Hi"}])
    );

    // Without --json the text streams to stdout, the route to stderr.
    let o = generate(&[
        "--remote",
        &url,
        "--model-id",
        "fake",
        "--raw",
        "--prompt",
        "Once",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim_end(),
        PIECES.concat()
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("served by remote via fake-provider"));
    assert_eq!(
        server.received()[1].path,
        "/v1/completions",
        "--raw goes to the completions endpoint"
    );
}

#[test]
fn remote_first_falls_back_to_local_when_the_remote_is_unavailable() {
    let server = FakeServer::start(Answer::Unavailable);
    let model = tiny_model();
    let out = json(&generate(&[
        "--remote",
        &server.base_url(),
        "--model-id",
        "fake",
        "--route",
        "remote-first",
        "--model",
        &model,
        "--raw",
        "--prompt",
        "Once upon a time",
        "--temp",
        "0",
        "-n",
        "8",
        "--json",
    ]));
    assert_eq!(out["served_by"], "local");
    let tried = strings(&out["tried"]);
    assert_eq!(
        tried.first().map(String::as_str),
        Some("remote"),
        "{tried:?}"
    );
    assert_eq!(tried.last().map(String::as_str), Some("local"), "{tried:?}");
    assert_eq!(
        tried.iter().filter(|t| *t == "remote").count(),
        server.received().len(),
        "one try per request sent"
    );
    assert_eq!(out["ids"].as_array().map(Vec::len), Some(8), "{out}");
    assert!(
        out["timings"]["load_ms"].as_f64().is_some(),
        "the local model was loaded: {out}"
    );
}

#[test]
fn local_first_goes_remote_when_the_local_model_is_missing() {
    let server = FakeServer::start(Answer::Stream);
    let missing =
        std::env::temp_dir().join(format!("foehn-missing-{}/model.gguf", std::process::id()));
    let out = json(&generate(&[
        "--remote",
        &server.base_url(),
        "--model-id",
        "fake",
        "--route",
        "local-first",
        "--model",
        missing.to_str().unwrap(),
        "--prompt",
        "Hi",
        "-n",
        "8",
        "--json",
    ]));
    assert_eq!(out["served_by"], "remote");
    assert_eq!(strings(&out["tried"]), ["local", "remote"]);
    assert_eq!(out["text"], PIECES.concat());
    assert_eq!(out["provider"], "fake-provider");
    assert!(out["timings"]["load_ms"].is_null(), "{out}");
}

#[test]
fn local_only_flags_are_refused_for_a_remote_only_run() {
    // Nothing listens there: the flags are refused before any connection.
    let url = "http://127.0.0.1:9/v1";
    for (extra, flag) in [
        (&["--prompt-ids", "1,2,3"][..], "--prompt-ids"),
        (&["--prompt", "Hi", "--top-logits", "3"][..], "--top-logits"),
        (&["--prompt", "Hi", "--backend", "candle"][..], "--backend"),
    ] {
        let o = generate(&[&["--remote", url, "--model-id", "fake"][..], extra].concat());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && stderr.contains(flag) && stderr.contains("local"),
            "{flag}: {stderr}"
        );
    }
    // --model with --remote says which flag is missing.
    let o = generate(&[
        "--remote",
        url,
        "--model-id",
        "fake",
        "--model",
        "x.gguf",
        "--prompt",
        "Hi",
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--route"));
    // --route needs --remote; --remote needs --model-id.
    assert!(!generate(&["--route", "local-first", "--prompt", "Hi"])
        .status
        .success());
    assert!(!generate(&["--remote", url, "--prompt", "Hi"])
        .status
        .success());
}

#[test]
fn chat_talks_to_the_remote() {
    let server = FakeServer::start(Answer::Stream);
    let mut child = command("chat")
        .args([
            "--remote",
            &server.base_url(),
            "--model-id",
            "fake",
            "--system",
            "Be brief.",
            "-n",
            "8",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hi there\nAgain\n/exit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.matches(&PIECES.concat()).count(), 2, "{stdout}");
    assert_eq!(stderr.matches("served by remote").count(), 2, "{stderr}");
    let received = server.received();
    assert_eq!(received.len(), 2);
    // The second turn carries the history: system, user, assistant, user.
    assert_eq!(
        received[1].body["messages"],
        serde_json::json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": PIECES.concat()},
            {"role": "user", "content": "Again"},
        ])
    );
}
