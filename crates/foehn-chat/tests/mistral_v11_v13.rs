//! `encode_mistral_chat_with_tools` against mistral-common 1.13.1's v11 and v13
//! instruct tokenizers: system prompts, multi-turn chats, tools, tool calls
//! and results, and `[THINK]` reasoning. The reference ids and the small v13
//! Tekken file they were made with are in `tests/fixtures/mistral-chat/`,
//! written by `tests/tools/make_mistral_chat_v11_v13.py`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use foehn_chat::{
    encode_mistral_chat, encode_mistral_chat_with_tools, mistral_version, ChatError, Message,
    MistralVersion,
};
use foehn_tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    mistral_common_version: String,
    tokenizer: String,
    conversations: Vec<Conversation>,
}

#[derive(Deserialize)]
struct Conversation {
    messages: Vec<Message>,
    tools: Option<serde_json::Value>,
    ids: BTreeMap<String, Vec<u32>>,
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mistral-chat")
}

fn reference() -> Reference {
    let path = fixture_dir().join("chat_v11_v13.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("parse chat_v11_v13.json")
}

fn tokenizer(reference: &Reference) -> Tokenizer {
    Tokenizer::from_file(fixture_dir().join(&reference.tokenizer)).expect("load the tekken fixture")
}

/// Checks every reference conversation that has ids for `name`; returns how many.
fn check(name: &str, version: MistralVersion) -> usize {
    let reference = reference();
    assert_eq!(reference.mistral_common_version, "1.13.1");
    let tok = tokenizer(&reference);
    let mut checked = 0;
    for (i, conv) in reference.conversations.iter().enumerate() {
        let Some(want) = conv.ids.get(name) else {
            continue;
        };
        let got =
            encode_mistral_chat_with_tools(&tok, &conv.messages, conv.tools.as_ref(), version)
                .unwrap_or_else(|e| panic!("{name} #{i}: {e}"));
        assert_eq!(&got, want, "{name}, conversation {i}: {:?}", conv.messages);
        checked += 1;
    }
    checked
}

#[test]
fn v11_equals_mistral_common() {
    assert!(check("v11", MistralVersion::V11) >= 10);
}

#[test]
fn v13_equals_mistral_common() {
    assert!(check("v13", MistralVersion::V13) >= 10);
}

#[test]
fn v11_refuses_reasoning_and_v13_needs_call_ids() {
    let reference = reference();
    let tok = tokenizer(&reference);
    let mut answer = Message::assistant("51");
    answer.reasoning = Some("17*3".into());
    let chat = [Message::user("17*3?"), answer, Message::user("thanks")];
    assert!(matches!(
        encode_mistral_chat(&tok, &chat, MistralVersion::V11),
        Err(ChatError::InvalidConversation(_))
    ));
    // Up to v7 the reasoning would be lost: refused too.
    assert!(matches!(
        encode_mistral_chat(&tok, &chat, MistralVersion::V7),
        Err(ChatError::InvalidConversation(_))
    ));
    let mut call = Message::assistant("");
    call.tool_calls = vec![foehn_core::ToolCall {
        id: None,
        name: "f".into(),
        arguments: "{}".into(),
    }];
    let chat = [Message::user("call f"), call];
    assert!(encode_mistral_chat(&tok, &chat, MistralVersion::V11).is_ok());
    assert!(matches!(
        encode_mistral_chat(&tok, &chat, MistralVersion::V13),
        Err(ChatError::InvalidConversation(_))
    ));
}

#[test]
fn version_from_tekken_file_vocab_and_template() {
    let reference = reference();
    let tok = tokenizer(&reference);
    assert_eq!(tok.tekken_version(), Some(13));
    // The file's "version" decides without a template.
    assert_eq!(mistral_version(&tok, None), Some(MistralVersion::V13));
    // llama.cpp's test: [ARGS] with [CALL_ID] is Mistral Small 3.2's (v11)
    // template, without it Magistral's / Devstral's / Ministral 3's (v13).
    let small_3_2 =
        "{{ '[SYSTEM_PROMPT]' }}[INST]{{ '[TOOL_CALLS]' }}{{ name }}[CALL_ID]{{ id }}[ARGS]";
    let ministral_3 = "[SYSTEM_PROMPT][INST][THINK][/THINK][TOOL_CALLS]{{ name }}[ARGS]{{ args }}";
    assert_eq!(
        mistral_version(&tok, Some(small_3_2)),
        Some(MistralVersion::V11)
    );
    assert_eq!(
        mistral_version(&tok, Some(ministral_3)),
        Some(MistralVersion::V13)
    );
    // Older templates keep their versions on this vocabulary.
    assert_eq!(
        mistral_version(&tok, Some("[SYSTEM_PROMPT]{{ x }}[INST]")),
        Some(MistralVersion::V7)
    );
}

#[test]
fn llama_cpp_templates_are_recognized() {
    // The templates llama.cpp's converter writes for v11 and v13 Mistral-format
    // models, and Ministral 3 Reasoning's own.
    let dir = fixture_dir().join("templates");
    let reference = reference();
    let tok = tokenizer(&reference);
    for (file, version) in [
        (
            "Mistral-Small-3.2-24B-Instruct-2506.jinja",
            MistralVersion::V11,
        ),
        (
            "unsloth-mistral-Devstral-Small-2507.jinja",
            MistralVersion::V13,
        ),
        (
            "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
            MistralVersion::V13,
        ),
    ] {
        let template = std::fs::read_to_string(dir.join(file)).expect(file);
        assert_eq!(
            mistral_version(&tok, Some(&template)),
            Some(version),
            "{file}"
        );
    }
}
