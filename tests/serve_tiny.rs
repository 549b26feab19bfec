//! The `serve` example on the tiny-mistral fixture: 32 concurrent streaming
//! clients, a burst over a small queue, error answers through the binary, and
//! the prefix cache.

mod common;
#[path = "serve/server.rs"]
mod server;

use std::time::Duration;

use common::fixture;
use serde_json::{json, Value};
use server::{concurrent_streams, get, post, Job, ServeProcess};

const MODEL_ID: &str = "tiny-mistral-Q8_0";

fn model_path() -> String {
    fixture("tiny-mistral/gguf/tiny-mistral-Q8_0.gguf")
        .to_string_lossy()
        .into_owned()
}

fn jobs() -> Vec<Job> {
    let chat = |content: &str| Job {
        path: "/v1/chat/completions",
        body: json!({"model": MODEL_ID, "messages": [{"role": "user", "content": content}],
                     "temperature": 0, "max_tokens": 48}),
    };
    let text = |prompt: &str| Job {
        path: "/v1/completions",
        body: json!({"model": MODEL_ID, "prompt": prompt, "temperature": 0, "max_tokens": 48}),
    };
    vec![
        chat("How does a function return a value?"),
        chat("Explain the license terms."),
        text("def function(x):"),
        text("The Apache License"),
    ]
}

/// The whole (non-streaming) answer to a job: its text and completion tokens.
fn answer(server: &ServeProcess, job: &Job) -> (String, u64) {
    let (status, _, body) = post(&server.url(job.path), &job.body.to_string(), None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let choice = &v["choices"][0];
    let text = choice["message"]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
        .unwrap()
        .to_string();
    (text, v["usage"]["completion_tokens"].as_u64().unwrap())
}

/// 32 clients stream at once (4 run, 28 wait); each gets exactly the greedy
/// answer its request gets alone, so sessions do not leak into each other.
#[test]
fn thirty_two_concurrent_streaming_clients_all_complete() {
    let server = ServeProcess::start(&["--model", &model_path(), "--parallel", "4"], &[]);
    let jobs = jobs();
    let alone: Vec<(String, u64)> = jobs.iter().map(|j| answer(&server, j)).collect();
    assert!(
        alone.iter().all(|(t, n)| !t.is_empty() && *n > 0),
        "{alone:?}"
    );
    let run = concurrent_streams(&server, &jobs, 32);
    eprintln!("tiny-mistral Q8_0, 2 cores, parallel 4: {}", run.summary());
    for (i, (job, s)) in run.results.iter().enumerate() {
        assert_eq!(s.status, 200, "client {i}: {:?}", s.error);
        assert!(s.done, "client {i}: no [DONE]");
        assert!(
            matches!(s.finish_reason().as_deref(), Some("stop" | "length")),
            "client {i}"
        );
        assert_eq!(s.text, alone[*job].0, "client {i} (job {job})");
        assert_eq!(s.completion_tokens(), Some(alone[*job].1), "client {i}");
        let ids: Vec<&Value> = s.chunks.iter().map(|c| &c["id"]).collect();
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "client {i}: one id per stream"
        );
    }
    let q = server.wait_for("idle", Duration::from_secs(5), |h| {
        h["queue"]["running"] == 0
    })["queue"]
        .clone();
    assert_eq!(q["completed"], 36, "{q}");
    assert_eq!(q["rejected"], 0, "{q}");
}

/// With one slot and one waiting place, a burst of 32 gets 429s (with
/// `Retry-After` and an OpenAI error object); the admitted ones complete.
#[test]
fn a_burst_over_a_small_queue_gets_429_with_retry_after() {
    let server = ServeProcess::start(
        &["--model", &model_path(), "--parallel", "1", "--queue", "1"],
        &[],
    );
    let job = Job {
        path: "/v1/completions",
        body: json!({"prompt": "The Apache License", "max_tokens": 400, "temperature": 0.8, "seed": 1}),
    };
    let run = concurrent_streams(&server, &[job], 32);
    let (mut ok, mut rejected) = (0, 0);
    for (_, s) in &run.results {
        match s.status {
            200 => {
                assert!(s.done && s.finish_reason().is_some(), "{s:?}");
                ok += 1;
            }
            429 => {
                let secs: u64 = s
                    .retry_after
                    .as_deref()
                    .expect("Retry-After")
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&secs), "Retry-After {secs}");
                let e = &s.error.as_ref().expect("an error object")["error"];
                assert_eq!(e["code"], "queue_full", "{e}");
                assert_eq!(e["type"], "rate_limit_error", "{e}");
                rejected += 1;
            }
            other => panic!("unexpected status {other}: {s:?}"),
        }
    }
    assert!(
        rejected >= 1,
        "no 429 in a burst of 32 over 1 slot + 1 place ({ok} served)"
    );
    assert!(
        ok >= 2,
        "the slot and the waiting place were both served: {ok}"
    );
    let q = server.wait_for("idle", Duration::from_secs(5), |h| {
        h["queue"]["running"] == 0
    })["queue"]
        .clone();
    assert_eq!(q["rejected"], rejected, "{q}");
    assert_eq!(q["completed"], ok, "{q}");
}

/// Error answers through the real binary and model: the key from the
/// environment, bad bodies, an unknown model, a prompt over the context.
#[test]
fn errors_and_the_api_key_through_the_binary() {
    let key = "test-key-123";
    let server = ServeProcess::start(&["--model", &model_path()], &[("FOEHN_API_KEY", key)]);
    let chat = server.url("/v1/chat/completions");
    let error = |(status, _, body): (u16, Option<String>, String), want: u16| -> Value {
        assert_eq!(status, want, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert!(v["error"]["message"].is_string(), "{v}");
        v["error"].clone()
    };
    let ok_body =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).to_string();
    error(post(&chat, &ok_body, None), 401);
    error(post(&chat, &ok_body, Some("nope")), 401);
    assert_eq!(
        get(&server.url("/health"), None).0,
        200,
        "health needs no key"
    );
    let (status, _, body) = get(&server.url("/v1/models"), Some(key));
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["data"][0]["id"], MODEL_ID, "{models}");
    let (status, _, body) = post(&chat, &ok_body, Some(key));
    assert_eq!(status, 200, "{body}");

    error(post(&chat, "{\"messages\": [", Some(key)), 400);
    error(post(&chat, "{\"messages\": []}", Some(key)), 400);
    error(
        post(
            &chat,
            "{\"messages\": [{\"role\": \"user\", \"content\": [1]}]}",
            Some(key),
        ),
        400,
    );
    let e = error(
        post(
            &chat,
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}).to_string(),
            Some(key),
        ),
        404,
    );
    assert_eq!(e["code"], "model_not_found");
    // The fixture's context is 512 tokens.
    let long =
        json!({"messages": [{"role": "user", "content": "function ".repeat(600)}]}).to_string();
    let e = error(post(&chat, &long, Some(key)), 400);
    assert_eq!(e["code"], "context_length_exceeded", "{e}");
    // A huge max_tokens stops at the context's end.
    let huge =
        json!({"prompt": "def", "max_tokens": u32::MAX, "temperature": 0.8, "seed": 3}).to_string();
    let (status, _, body) = post(&server.url("/v1/completions"), &huge, Some(key));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        matches!(
            v["choices"][0]["finish_reason"].as_str(),
            Some("length" | "stop")
        ),
        "{v}"
    );
    // Invalid UTF-8 in the body.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent
        .post(&chat)
        .header("authorization", format!("Bearer {key}"))
        .send(&b"{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}"[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    error(get(&server.url("/v1/nothing"), Some(key)), 404);
    // Still serving after all that.
    assert_eq!(post(&chat, &ok_body, Some(key)).0, 200);
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

#[test]
fn a_shared_prompt_prefix_comes_from_the_prefix_cache() {
    let server = ServeProcess::start(&["--model", &model_path(), "--cache-mb", "64"], &[]);
    let system = "You answer questions about the notes. ".repeat(12);
    let ask = |q: &str| {
        let body = json!({"messages": [
            {"role": "system", "content": system}, {"role": "user", "content": q}],
            "max_tokens": 4, "temperature": 0});
        let (status, _, text) = post(&server.url("/v1/chat/completions"), &body.to_string(), None);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()
    };
    let first = ask("first question");
    assert!(
        first["usage"].get("prompt_tokens_details").is_none(),
        "{first}"
    );
    let second = ask("second question");
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cached tokens: {second}"));
    let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        cached > prompt / 2 && cached < prompt,
        "{cached} of {prompt}"
    );
    let health = server.health();
    assert_eq!(health["engine"]["prefix_cache"]["hits"], 1, "{health}");
    assert_eq!(health["engine"]["prefix_cache"]["budget_bytes"], 64 << 20);
}
