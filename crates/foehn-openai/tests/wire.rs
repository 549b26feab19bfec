//! The wire types against OpenAI's format and real servers' replies:
//! what is written is exactly OpenAI's JSON (a renamed field fails here),
//! what is written reads back equal, and replies of vLLM, TGI,
//! llama-server, Ollama and OpenAI itself read into the same types.

use foehn_core::{Capabilities, FinishReason, GenerateRequest, Message, Prompt, TokenEvent, Usage};
use foehn_openai::{
    error_in_json, finish_reason_from_name, parse_error_body, ChatLogprobs, ChatMessage,
    ChatRequest, ChatResponse, Choice, ClientOptions, CompletionRequest, CompletionUsage, Delta,
    Endpoint, ErrorBody, ErrorResponse, Logprobs, ModelList, ModelObject, RequestBody,
    ResponseMessage, TextLogprobs, TextResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// Serializes, checks the JSON, reads it back and checks it is equal.
fn round_trip<T>(value: &T, expected: Value)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let written = serde_json::to_value(value).unwrap();
    assert_eq!(written, expected);
    let text = serde_json::to_string(value).unwrap();
    let read: T = serde_json::from_str(&text).unwrap();
    assert_eq!(&read, value);
}

fn token(text: &str, logprob: Option<f32>, top: &[(&str, f32)]) -> TokenEvent {
    TokenEvent {
        text: text.into(),
        id: None,
        logprob,
        top_logprobs: top.iter().map(|(t, l)| (t.to_string(), *l)).collect(),
        reasoning: false,
        tool_calls: Vec::new(),
    }
}

fn full_request() -> GenerateRequest {
    let mut req = GenerateRequest::chat(vec![Message::system("be brief"), Message::user("hi")]);
    req.model = Some("ignored: the client names the model".into());
    req.max_tokens = Some(16);
    req.temperature = Some(0.5);
    req.top_p = Some(0.75);
    req.top_k = Some(40);
    req.min_p = Some(0.125);
    req.repeat_penalty = Some(1.25);
    req.frequency_penalty = Some(0.5);
    req.presence_penalty = Some(-0.5);
    req.seed = Some(u64::MAX);
    req.stop = vec!["\n".into(), "User:".into()];
    req.ignore_eos = true;
    req.logprobs = Some(2);
    req.response_format = Some(json!({"type": "json_object"}));
    req.tools = Some(json!([{"type": "function", "function": {"name": "f"}}]));
    req.tool_choice = Some(json!({"type": "function", "function": {"name": "f"}}));
    req.parallel_tool_calls = Some(false);
    req
}

#[test]
fn a_chat_request_is_openais_json_and_reads_back_as_the_same_request() {
    let req = full_request();
    let options = ClientOptions {
        include_usage: true,
        extended_sampling: true,
    };
    let body = RequestBody::streaming(&req, "org/model:fastest", options);
    assert_eq!(body.endpoint(), Endpoint::Chat);
    let RequestBody::Chat(chat) = &body else {
        panic!("{body:?}")
    };
    round_trip(
        chat,
        json!({
            "model": "org/model:fastest",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"}
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": 16,
            "temperature": 0.5,
            "top_p": 0.75,
            "top_k": 40,
            "min_p": 0.125,
            "repeat_penalty": 1.25,
            "repetition_penalty": 1.25,
            "frequency_penalty": 0.5,
            "presence_penalty": -0.5,
            "seed": u64::MAX,
            "stop": ["\n", "User:"],
            "ignore_eos": true,
            "logprobs": true,
            "top_logprobs": 2,
            "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": false
        }),
    );
    assert_eq!(
        serde_json::to_value(&body).unwrap(),
        serde_json::to_value(chat).unwrap()
    );
    // What the client sends, the server reads back as the same request.
    let caps = Capabilities {
        tools: true,
        json_schema: true,
        ..Capabilities::default()
    };
    let back = chat.clone().into_generate(&caps).unwrap();
    let expected = GenerateRequest {
        model: Some("org/model:fastest".into()),
        ..req
    };
    assert_eq!(back, expected);
}

#[test]
fn plain_requests_leave_out_what_is_not_set() {
    let mut req = GenerateRequest::text("Once");
    req.top_k = Some(3);
    req.logprobs = Some(1);
    let body = RequestBody::streaming(&req, "m", ClientOptions::default());
    assert_eq!(body.endpoint(), Endpoint::Completions);
    let RequestBody::Completion(completion) = &body else {
        panic!("{body:?}")
    };
    // No usage chunk asked for, no non-OpenAI sampling fields, no empty stop list.
    round_trip(
        completion,
        json!({"model": "m", "prompt": "Once", "stream": true, "logprobs": 1}),
    );
    let back = completion
        .clone()
        .into_generate(&Capabilities::default())
        .unwrap();
    assert_eq!(
        back,
        GenerateRequest {
            model: Some("m".into()),
            top_k: None,
            ..req
        }
    );
    let ids = RequestBody::streaming(
        &GenerateRequest::new(Prompt::Tokens(vec![1, 2])),
        "m",
        ClientOptions::default(),
    );
    assert_eq!(
        serde_json::to_value(&ids).unwrap(),
        json!({"model": "m", "prompt": [1, 2], "stream": true})
    );
}

#[test]
fn openai_sdk_request_bodies_read() {
    // As the OpenAI Python SDK sends them, with fields foehn ignores.
    let chat: ChatRequest = serde_json::from_value(json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}], "name": "me"},
            {"role": "assistant", "content": null, "tool_calls": []}
        ],
        "max_completion_tokens": 7,
        "seed": -1,
        "stop": "\n",
        "user": "u-1",
        "metadata": {"k": "v"},
        "parallel_tool_calls": false
    }))
    .unwrap();
    let req = chat.into_generate(&Capabilities::default()).unwrap();
    assert_eq!(
        req.prompt,
        Prompt::Chat(vec![
            Message::system("Be terse."),
            Message::user("Hello"),
            Message::assistant("")
        ])
    );
    assert_eq!(
        (req.max_tokens, req.seed, req.stop),
        (Some(7), Some(u64::MAX), vec!["\n".to_string()])
    );
    let completion: CompletionRequest = serde_json::from_value(
        json!({"model": "m", "prompt": ["Once"], "repetition_penalty": 1.1}),
    )
    .unwrap();
    let req = completion.into_generate(&Capabilities::default()).unwrap();
    assert_eq!(
        (req.prompt, req.repeat_penalty),
        (Prompt::Text("Once".into()), Some(1.1))
    );
    // A wrong type is an error (the server names the field).
    assert!(serde_json::from_value::<ChatRequest>(json!({"messages": [], "seed": 1.5})).is_err());
    assert!(serde_json::from_value::<ChatRequest>(json!({"model": "m"})).is_err());
}

fn usage() -> Usage {
    Usage {
        prompt_tokens: 5,
        completion_tokens: 2,
        cached_tokens: 0,
    }
}

#[test]
fn a_whole_chat_answer_is_openais_json() {
    let tokens = [
        token("Hi", Some(-0.25), &[("Hi", -0.25), ("Hey", -2.0)]),
        token("!", None, &[]),
    ];
    let answer = ChatResponse {
        id: "chatcmpl-1".into(),
        object: Endpoint::Chat.object().into(),
        created: 1_700_000_000,
        model: "m".into(),
        system_fingerprint: None,
        choices: vec![Choice {
            index: 0,
            message: Some(ResponseMessage {
                role: "assistant".into(),
                content: Some("Hi!".into()),
                reasoning_content: None,
                refusal: None,
                tool_calls: Vec::new(),
            }),
            logprobs: Some(ChatLogprobs::from_tokens(&tokens, 0)),
            finish_reason: Some("length".into()),
            ..Choice::default()
        }],
        usage: Some(Some(CompletionUsage::from(&usage()))),
    };
    round_trip(
        &answer,
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "m",
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hi!", "refusal": null},
                "logprobs": {
                    "content": [
                        {"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": [
                            {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
                            {"token": "Hey", "logprob": -2.0, "bytes": [72, 101, 121]}
                        ]},
                        {"token": "!", "logprob": null, "bytes": [33], "top_logprobs": []}
                    ],
                    "refusal": null
                },
                "finish_reason": "length"
            }],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        }),
    );
    // Read back per token: the one without a logprob is left out.
    let entries = answer.choices[0].logprobs.as_ref().unwrap().entries();
    assert_eq!(
        entries,
        vec![(
            "Hi".to_string(),
            -0.25,
            vec![("Hi".to_string(), -0.25), ("Hey".to_string(), -2.0)]
        )]
    );
    assert_eq!(answer.choices[0].content(), Some("Hi!"));
}

#[test]
fn stream_chunks_are_openais_json_with_usage_absent_null_or_given() {
    let chunk = |delta: Delta, finish: Option<&str>, usage| ChatResponse {
        id: "chatcmpl-2".into(),
        object: Endpoint::Chat.chunk_object().into(),
        created: 1,
        model: "m".into(),
        system_fingerprint: None,
        choices: vec![Choice {
            delta: Some(delta),
            finish_reason: finish.map(str::to_string),
            ..Choice::default()
        }],
        usage,
    };
    let text = Delta {
        role: None,
        content: Some("Hel".into()),
        reasoning_content: None,
        tool_calls: Vec::new(),
    };
    let envelope = |choice: Value| {
        json!({
            "id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "system_fingerprint": null, "choices": [choice]
        })
    };
    let mut with_null = envelope(
        json!({"index": 0, "delta": {"content": "Hel"}, "logprobs": null, "finish_reason": null}),
    );
    round_trip(&chunk(text.clone(), None, None), with_null.clone());
    with_null["usage"] = Value::Null;
    round_trip(&chunk(text, None, Some(None)), with_null);
    round_trip(
        &chunk(
            Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                reasoning_content: None,
                tool_calls: Vec::new(),
            },
            None,
            None,
        ),
        envelope(
            json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}),
        ),
    );
    round_trip(
        &chunk(Delta::default(), Some("stop"), None),
        envelope(json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"})),
    );
    let last = ChatResponse {
        choices: Vec::new(),
        usage: Some(Some(CompletionUsage::from(&Usage {
            prompt_tokens: 4,
            completion_tokens: 2,
            cached_tokens: 0,
        }))),
        ..chunk(Delta::default(), None, None)
    };
    let mut expected = envelope(Value::Null);
    expected["choices"] = json!([]);
    expected["usage"] = json!({"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6});
    round_trip(&last, expected);
}

#[test]
fn text_completion_chunks_carry_offsets_and_a_map_of_alternatives() {
    let tokens = [
        token("a", Some(-0.5), &[("a", -0.5)]),
        token(" b", Some(-1.0), &[(" b", -1.0), (" c", -2.0)]),
    ];
    let chunk = TextResponse {
        id: "cmpl-3".into(),
        object: Endpoint::Completions.chunk_object().into(),
        created: 2,
        model: "m".into(),
        system_fingerprint: None,
        choices: vec![Choice {
            text: Some("a b".into()),
            logprobs: Some(TextLogprobs::from_tokens(&tokens, 10)),
            ..Choice::default()
        }],
        usage: None,
    };
    round_trip(
        &chunk,
        json!({
            "id": "cmpl-3", "object": "text_completion", "created": 2, "model": "m",
            "system_fingerprint": null,
            "choices": [{
                "index": 0, "text": "a b", "finish_reason": null,
                "logprobs": {
                    "tokens": ["a", " b"],
                    "token_logprobs": [-0.5, -1.0],
                    "top_logprobs": [{"a": -0.5}, {" b": -1.0, " c": -2.0}],
                    "text_offset": [10, 11]
                }
            }]
        }),
    );
    let entries = chunk.choices[0].logprobs.as_ref().unwrap().entries();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        entries[1],
        (
            " b".to_string(),
            -1.0,
            vec![(" b".to_string(), -1.0), (" c".to_string(), -2.0)]
        )
    );
}

#[test]
fn openai_replies_read() {
    // From OpenAI's API reference: a chat completion and a streamed chunk.
    let answer: ChatResponse = serde_json::from_str(r#"{
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4.1-2025-04-14",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I assist you today?", "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default"
    }"#).unwrap();
    assert_eq!(answer.model, "gpt-4.1-2025-04-14");
    assert_eq!(answer.created, 1741569952);
    let choice = &answer.choices[0];
    assert_eq!(choice.content(), Some("Hello! How can I assist you today?"));
    assert_eq!(
        finish_reason_from_name(choice.finish_reason.as_deref().unwrap()),
        FinishReason::Stop
    );
    assert_eq!(
        answer.usage.flatten().and_then(|u| u.to_core()),
        Some(Usage {
            prompt_tokens: 19,
            completion_tokens: 10,
            cached_tokens: 0,
        })
    );

    let chunk: ChatResponse = serde_json::from_str(r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"logprobs":{"content":[{"token":"Hel","logprob":-0.31725305,"bytes":[72,101,108],"top_logprobs":[{"token":"Hel","logprob":-0.31725305,"bytes":[72,101,108]},{"token":"Hi","logprob":-1.3190403,"bytes":[72,105]}]}],"refusal":null},"finish_reason":null}]}"#).unwrap();
    assert_eq!(chunk.system_fingerprint.as_deref(), Some("fp_44709d6fcb"));
    assert_eq!(chunk.usage, None);
    let choice = &chunk.choices[0];
    assert_eq!(
        choice.delta.as_ref().unwrap().role.as_deref(),
        Some("assistant")
    );
    assert_eq!(choice.content(), Some("Hel"));
    let entries = choice.logprobs.as_ref().unwrap().entries();
    assert_eq!(entries[0].0, "Hel");
    assert_eq!(entries[0].2[1], ("Hi".to_string(), -1.3190403));
}

#[test]
fn other_servers_replies_read_with_their_extra_fields() {
    // vLLM: `stop_reason`, `prompt_logprobs`, `kv_transfer_params`, usage null or with details.
    let vllm: ChatResponse = serde_json::from_str(r#"{"id":"chatcmpl-9f1c","object":"chat.completion.chunk","created":1733850000,"model":"mistralai/Mistral-7B-Instruct-v0.3","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":"length","stop_reason":null}],"usage":{"prompt_tokens":7,"total_tokens":9,"completion_tokens":2,"prompt_tokens_details":null},"prompt_logprobs":null,"kv_transfer_params":null}"#).unwrap();
    let choice = &vllm.choices[0];
    assert_eq!(choice.content(), Some(" world"));
    assert_eq!(choice.finish_reason.as_deref(), Some("length"));
    assert_eq!(
        vllm.usage.flatten().and_then(|u| u.to_core()),
        Some(Usage {
            prompt_tokens: 7,
            completion_tokens: 2,
            cached_tokens: 0,
        })
    );
    // TGI: a version string as fingerprint, `eos_token` as finish reason.
    let tgi: ChatResponse = serde_json::from_str(r#"{"object":"chat.completion.chunk","id":"","created":1733850001,"model":"tgi","system_fingerprint":"3.0.1-sha-bb9095a","choices":[{"index":0,"delta":{"role":"assistant","content":"!"},"logprobs":null,"finish_reason":"eos_token"}],"usage":null}"#).unwrap();
    assert_eq!(tgi.usage, Some(None));
    assert_eq!(
        finish_reason_from_name(tgi.choices[0].finish_reason.as_deref().unwrap()),
        FinishReason::Stop
    );
    // llama-server: `timings` beside the choices, a usage chunk with choices empty.
    let llama: ChatResponse = serde_json::from_str(r#"{"choices":[],"created":1733850002,"id":"chatcmpl-x","model":"gpt-3.5-turbo","system_fingerprint":"b4277-c2a16c0b","object":"chat.completion.chunk","usage":{"completion_tokens":3,"prompt_tokens":9,"total_tokens":12},"timings":{"prompt_n":9,"prompt_ms":12.5,"predicted_n":3,"predicted_ms":30.1}}"#).unwrap();
    assert!(llama.choices.is_empty());
    assert_eq!(
        llama.usage.flatten().and_then(|u| u.to_core()),
        Some(Usage {
            prompt_tokens: 9,
            completion_tokens: 3,
            cached_tokens: 0,
        })
    );
    // Ollama's OpenAI endpoint: no usage, `finish_reason` null until the end.
    let ollama: ChatResponse = serde_json::from_str(r#"{"id":"chatcmpl-652","object":"chat.completion.chunk","created":1733850003,"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#).unwrap();
    assert_eq!(ollama.choices[0].content(), Some("Hi"));
    // Fields of the wrong type read as absent; junk choices are skipped.
    let odd: ChatResponse = serde_json::from_str(r#"{"id":7,"created":"now","choices":[null,5,{"index":"0","delta":{"content":5},"finish_reason":7}],"usage":{"prompt_tokens":-1,"completion_tokens":99999999999}}"#).unwrap();
    assert_eq!(odd.id, "");
    assert_eq!(odd.choices.len(), 1);
    assert_eq!(odd.choices[0].content(), None);
    assert_eq!(odd.choices[0].finish_reason, None);
    assert_eq!(odd.usage.flatten().and_then(|u| u.to_core()), None);
    let none: ChatResponse = serde_json::from_str(r#"{"choices":null}"#).unwrap();
    assert!(none.choices.is_empty() && none.usage.is_none());
    // A text completion from vLLM with logprobs that leave a token out.
    let text: TextResponse = serde_json::from_str(r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"a b","logprobs":{"tokens":["a",2],"token_logprobs":[-0.5,-1.0],"top_logprobs":[{"a":-0.5},null],"text_offset":[0,1]},"finish_reason":null,"stop_reason":null}]}"#).unwrap();
    assert_eq!(
        text.choices[0].logprobs.as_ref().unwrap().entries(),
        vec![("a".to_string(), -0.5, vec![("a".to_string(), -0.5)])]
    );
}

#[test]
fn error_bodies_are_openais_json_and_every_shape_reads() {
    let e = ErrorResponse::new(
        "the model \"x\" does not exist here",
        "invalid_request_error",
        Some("model".into()),
        Some("model_not_found"),
    );
    round_trip(
        &e,
        json!({"error": {
            "message": "the model \"x\" does not exist here",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found"
        }}),
    );
    round_trip(
        &ErrorResponse::new("busy", "server_error", None, None),
        json!({"error": {"message": "busy", "type": "server_error", "param": null, "code": null}}),
    );
    let written = serde_json::to_value(&e).unwrap();
    assert_eq!(
        error_in_json(&written),
        Some(ErrorBody {
            message: "the model \"x\" does not exist here".into(),
            kind: Some("invalid_request_error".into()),
            code: None
        })
    );
    // OpenAI's rate limit: a word code, no type.
    let body = parse_error_body(
        r#"{"error":{"message":"Rate limit reached","type":null,"param":null,"code":"rate_limit_exceeded"}}"#,
    );
    assert_eq!(body.kind.as_deref(), Some("rate_limit_exceeded"));
    // vLLM, TGI, and the HF router's plain-text answers.
    assert_eq!(
        parse_error_body(r#"{"object":"error","message":"too long","type":"BadRequestError","param":null,"code":400}"#).code,
        Some(400)
    );
    assert_eq!(
        parse_error_body(r#"{"error":"Model is overloaded","error_type":"overloaded"}"#),
        ErrorBody {
            message: "Model is overloaded".into(),
            kind: Some("overloaded".into()),
            code: None
        }
    );
    assert_eq!(parse_error_body("Bad Gateway").message, "Bad Gateway");
}

#[test]
fn model_lists_are_openais_json_and_ollamas_reads() {
    let list = ModelList::new(vec![ModelObject::new("m", 5, "foehn")]);
    round_trip(
        &list,
        json!({"object": "list", "data": [{"id": "m", "object": "model", "created": 5, "owned_by": "foehn"}]}),
    );
    let ollama: ModelList = serde_json::from_str(
        r#"{"models":[{"name":"llama3.2:latest","size":2019393189},{"size":1}]}"#,
    )
    .unwrap();
    let ids: Vec<_> = ollama
        .entries()
        .unwrap()
        .iter()
        .filter_map(ModelObject::model_id)
        .collect();
    assert_eq!(ids, ["llama3.2:latest"]);
    assert!(serde_json::from_str::<ModelList>("{}")
        .unwrap()
        .entries()
        .is_none());
}

#[test]
fn response_formats_are_checked_and_constraints_go_out_as_response_formats() {
    let caps = Capabilities {
        json_schema: true,
        ..Capabilities::default()
    };
    let chat = |format: Value| -> ChatRequest {
        serde_json::from_value(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": format,
        }))
        .unwrap()
    };
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let format = json!({"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": true}});
    let req = chat(format.clone()).into_generate(&caps).unwrap();
    assert_eq!(req.response_format, Some(format));
    assert_eq!(
        req.output_constraint().unwrap(),
        Some(foehn_core::Constraint::JsonSchema(schema.clone()))
    );
    for bad in [json!({"type": "yaml"}), json!({"type": "json_schema"})] {
        let e = chat(bad.clone()).into_generate(&caps).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format"), "{bad}: {e:?}");
    }
    // A Rust-API constraint is written as OpenAI's response_format.
    let mut constrained = GenerateRequest::chat(vec![Message::user("hi")]);
    constrained.constraint = Some(foehn_core::Constraint::JsonSchema(schema.clone()));
    let RequestBody::Chat(body) =
        RequestBody::streaming(&constrained, "m", ClientOptions::default())
    else {
        panic!("a chat goes to the chat endpoint")
    };
    let written = serde_json::to_value(&body).unwrap();
    assert_eq!(written["response_format"]["type"], "json_schema");
    assert_eq!(written["response_format"]["json_schema"]["schema"], schema);
}

#[test]
fn reasoning_content_is_written_only_when_there_is_some_and_reads_back() {
    let message = ResponseMessage {
        role: "assistant".into(),
        content: Some("51".into()),
        reasoning_content: Some("17*3 = 34 + 17".into()),
        refusal: None,
        tool_calls: Vec::new(),
    };
    round_trip(
        &message,
        json!({"role": "assistant", "content": "51", "reasoning_content": "17*3 = 34 + 17", "refusal": null}),
    );
    let delta = Delta {
        role: None,
        content: None,
        reasoning_content: Some("17*3".into()),
        tool_calls: Vec::new(),
    };
    round_trip(&delta, json!({"reasoning_content": "17*3"}));
    // A server that sends `null` for it reads as none.
    let read: Delta =
        serde_json::from_value(json!({"content": "x", "reasoning_content": null})).unwrap();
    assert_eq!(read.reasoning_content, None);
}

#[test]
fn chat_messages_carry_reasoning_and_tool_calls_both_ways() {
    let body = json!({
        "role": "assistant",
        "content": "",
        "reasoning_content": "I should call it.",
        "tool_calls": [{"id": "abc123def", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]
    });
    let chat: ChatMessage = serde_json::from_value(body.clone()).unwrap();
    let message = chat.into_message(0).unwrap();
    assert_eq!(message.reasoning.as_deref(), Some("I should call it."));
    assert_eq!(message.tool_calls.len(), 1);
    assert_eq!(message.tool_calls[0].id.as_deref(), Some("abc123def"));
    assert_eq!(message.tool_calls[0].name, "get_weather");
    assert_eq!(message.tool_calls[0].arguments, r#"{"city": "Rome"}"#);
    assert_eq!(
        serde_json::to_value(ChatMessage::from(&message)).unwrap(),
        body
    );
    let tool: ChatMessage = serde_json::from_value(
        json!({"role": "tool", "content": "sunny", "tool_call_id": "abc123def"}),
    )
    .unwrap();
    assert_eq!(
        tool.into_message(1).unwrap().tool_call_id.as_deref(),
        Some("abc123def")
    );
}
