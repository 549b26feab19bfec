//! foehn's own remote client (`foehn::remote::OpenAiClient`) against the
//! `serve` example on the tiny-mistral fixture: streamed chat and text
//! completions give exactly the local engine's greedy text, the model list,
//! a refused key, and a router whose only route is the server.

mod common;
#[path = "serve/server.rs"]
mod server;

use std::sync::Arc;

use common::fixture;
use foehn::core::{GenerateError, GenerateRequest, Generator, Message, Prompt};
use foehn::engine::{LoadOptions, LocalModel};
use foehn::remote::{OpenAiClient, Policy, Route, Router, RouterConfig};
use server::ServeProcess;

const MODEL_ID: &str = "tiny-mistral-Q8_0";
const KEY: &str = "sk-test-remote";

fn greedy(prompt: Prompt) -> GenerateRequest {
    let mut r = GenerateRequest::new(prompt);
    r.temperature = Some(0.0);
    r.max_tokens = Some(32);
    r
}

#[test]
fn remote_client_against_serve() {
    let path = fixture("tiny-mistral/gguf/tiny-mistral-Q8_0.gguf");
    let server = ServeProcess::start(
        &["--model", path.to_str().unwrap(), "--model-id", MODEL_ID],
        &[("FOEHN_API_KEY", KEY)],
    );
    let client = OpenAiClient::new(server.url("/v1"))
        .with_api_key(KEY)
        .with_model(MODEL_ID);
    let local = LocalModel::load(Some(path.to_str().unwrap()), LoadOptions::default())
        .expect("load the fixture");

    let models = client.list_models().expect("GET /v1/models");
    assert!(models.iter().any(|m| m.id == MODEL_ID), "{models:?}");

    for prompt in [
        Prompt::Chat(vec![Message::user("How does a function return a value?")]),
        Prompt::Text("def function(x):".into()),
    ] {
        let (want, _) = local.generate_text(greedy(prompt.clone())).expect("local");
        let (got, done) = client.generate_text(greedy(prompt)).expect("remote");
        assert_eq!(got, want, "the server streams what the engine generates");
        assert!(!got.is_empty());
        assert!(done.usage.completion_tokens > 0, "{done:?}");
        assert!(done.timings.time_to_first_token.is_some());
    }

    // A wrong key is refused as unauthorized.
    let bad = OpenAiClient::new(server.url("/v1"))
        .with_api_key("wrong")
        .with_model(MODEL_ID);
    let err = bad
        .generate_text(greedy(Prompt::Text("x".into())))
        .unwrap_err();
    assert!(matches!(err, GenerateError::Unauthorized(_)), "{err:?}");

    // A router with the server as its only route says who served.
    let router = Router::new(
        vec![Route::remote(Arc::new(client)).with_name("serve")],
        RouterConfig::new(Policy::RemoteFirst),
    );
    let (text, done) = router
        .generate_text(greedy(Prompt::Text("The Apache License".into())))
        .expect("routed");
    assert!(!text.is_empty());
    assert_eq!(done.served_by.as_deref(), Some("serve"));
    assert_eq!(done.tried, vec!["serve".to_string()]);
}
