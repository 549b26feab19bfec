//! A scripted HTTP/1.1 server on loopback for fault injection: each
//! connection plays one [`Script`] of raw writes, pauses, resets and closes.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// One thing the server does on a connection.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes as they are.
    Raw(Vec<u8>),
    /// Write these bytes as one HTTP chunk (`Transfer-Encoding: chunked`).
    Chunk(Vec<u8>),
    /// The terminating zero-length chunk.
    LastChunk,
    /// Pause.
    Sleep(Duration),
    /// Abort the connection with a TCP reset (SO_LINGER 0).
    Reset,
}

/// What a connection does, in order; the connection closes at the end.
pub type Script = Vec<Step>;

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `POST /v1/chat/completions`
    pub request_line: String,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Recorded {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// The server; connection `i` plays `scripts[min(i, len - 1)]`.
pub struct FaultServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FaultServer {
    /// Starts a server playing `scripts`.
    pub fn start(scripts: Vec<Script>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, c, r) = (stop.clone(), connections.clone(), requests.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let i = c.fetch_add(1, Ordering::SeqCst);
                let script = scripts[i.min(scripts.len() - 1)].clone();
                let r = r.clone();
                thread::spawn(move || serve(conn, script, r));
            }
        });
        Self {
            addr,
            stop,
            connections,
            requests,
        }
    }

    /// Starts a server that plays the same script on every connection.
    pub fn always(script: Script) -> Self {
        Self::start(vec![script])
    }

    /// The base URL (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

fn serve(mut conn: TcpStream, script: Script, requests: Arc<Mutex<Vec<Recorded>>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    if let Some(rec) = read_request(&mut conn) {
        if let Ok(mut r) = requests.lock() {
            r.push(rec);
        }
    }
    for step in script {
        let ok = match step {
            Step::Raw(bytes) => conn.write_all(&bytes).and_then(|_| conn.flush()).is_ok(),
            Step::Chunk(bytes) => {
                let mut out = format!("{:x}\r\n", bytes.len()).into_bytes();
                out.extend_from_slice(&bytes);
                out.extend_from_slice(b"\r\n");
                conn.write_all(&out).and_then(|_| conn.flush()).is_ok()
            }
            Step::LastChunk => conn
                .write_all(b"0\r\n\r\n")
                .and_then(|_| conn.flush())
                .is_ok(),
            Step::Sleep(d) => {
                thread::sleep(d);
                true
            }
            Step::Reset => {
                let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
                return; // dropping with linger 0 sends RST
            }
        };
        if !ok {
            return;
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Write);
    // Let the client read to the end before the socket goes away.
    let mut sink = [0u8; 64];
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = conn.read(&mut sink);
}

fn read_request(conn: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).ok()?;
    Some(Recorded {
        request_line,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

// ---- building responses ----

/// Raw bytes.
pub fn raw(s: impl AsRef<[u8]>) -> Step {
    Step::Raw(s.as_ref().to_vec())
}

/// A pause of `ms` milliseconds.
pub fn sleep_ms(ms: u64) -> Step {
    Step::Sleep(Duration::from_millis(ms))
}

/// Headers of a close-delimited 200 event stream (with an `x-inference-provider`).
pub fn sse_head() -> Step {
    raw("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nx-inference-provider: fake-provider\r\nConnection: close\r\n\r\n")
}

/// Headers of a chunked 200 event stream.
pub fn sse_head_chunked() -> Step {
    raw("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
}

/// A complete error answer.
pub fn status(code: u16, extra_headers: &str, content_type: &str, body: &str) -> Step {
    raw(format!(
        "HTTP/1.1 {code} Whatever\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// One SSE `data:` event.
pub fn data(json: &str) -> String {
    format!("data: {json}\n\n")
}

/// A chat chunk carrying `text`.
pub fn chat_chunk(text: &str) -> String {
    data(&serde_json::json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]}).to_string())
}

/// A chat chunk with a finish reason and no text.
pub fn finish_chunk(reason: &str) -> String {
    data(&serde_json::json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}).to_string())
}

/// The usage chunk (empty choices).
pub fn usage_chunk(prompt: u32, completion: u32) -> String {
    data(&serde_json::json!({"id": "c", "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}).to_string())
}

/// The end marker.
pub fn done_marker() -> String {
    data("[DONE]")
}

/// A complete, well-formed chat stream of `pieces` (close-delimited).
pub fn good_stream(pieces: &[&str]) -> Script {
    let mut s = vec![
        sse_head(),
        raw(data(
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        )),
    ];
    for p in pieces {
        s.push(raw(chat_chunk(p)));
    }
    s.push(raw(finish_chunk("stop")));
    s.push(raw(usage_chunk(5, pieces.len() as u32)));
    s.push(raw(done_marker()));
    s
}
