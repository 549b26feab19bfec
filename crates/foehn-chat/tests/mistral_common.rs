//! `encode_mistral_chat` against mistral-common 1.13.1 itself, over the real
//! Mistral tokenizers its wheel ships (fetched and cached by foehn-hub):
//! v1, v3 and v7 SentencePiece, and Tekken 240911 (v3). The reference ids are in
//! `tests/data/mistral_common_chat.json`, written by `make_mistral_common_chat.py`.

use std::path::PathBuf;

use foehn_chat::{
    encode_mistral_chat, is_mistral_tokenizer, mistral_version, ChatError, Message, MistralVersion,
};
use foehn_hub::known;
use foehn_tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    conversations: Vec<Conversation>,
}

#[derive(Deserialize)]
struct Conversation {
    messages: Vec<Message>,
    ids: std::collections::BTreeMap<String, Vec<u32>>,
}

fn reference() -> Reference {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/mistral_common_chat.json");
    serde_json::from_slice(&std::fs::read(&path).expect("read mistral_common_chat.json"))
        .expect("parse it")
}

fn pypi_tokenizer(spec: &foehn_hub::PypiFile<'static>) -> Tokenizer {
    let path = foehn_hub::pypi_file(spec).expect("fetching the mistral-common wheel");
    Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Checks every reference conversation for one tokenizer.
fn check(name: &str, tok: &Tokenizer, version: MistralVersion) {
    let reference = reference();
    assert_eq!(reference.conversations.len(), 11);
    for (i, conv) in reference.conversations.iter().enumerate() {
        let want = &conv.ids[name];
        let got = encode_mistral_chat(tok, &conv.messages, version)
            .unwrap_or_else(|e| panic!("{name} #{i}: {e}"));
        assert_eq!(&got, want, "{name}, conversation {i}: {:?}", conv.messages);
    }
}

#[test]
fn v1_sentencepiece() {
    let tok = pypi_tokenizer(&known::MISTRAL_TOKENIZER_V1);
    // v1 has no [INST] control token: only its template name can say it is Mistral.
    assert!(!is_mistral_tokenizer(&tok));
    assert_eq!(mistral_version(&tok, None), None);
    assert_eq!(
        mistral_version(&tok, Some("mistral-v1")),
        Some(MistralVersion::V1)
    );
    check("v1_spm", &tok, MistralVersion::V1);
    // v2+ formats need the control tokens.
    assert!(matches!(
        encode_mistral_chat(&tok, &[Message::user("hi")], MistralVersion::V3),
        Err(ChatError::MissingToken(t)) if t == "[INST]"
    ));
}

#[test]
fn v3_sentencepiece() {
    let tok = pypi_tokenizer(&known::MISTRAL_TOKENIZER_V3);
    assert_eq!(mistral_version(&tok, None), Some(MistralVersion::V3));
    check("v3_spm", &tok, MistralVersion::V3);
}

#[test]
fn v3_sentencepiece_through_gguf_metadata() {
    // The same vocabulary as llama.cpp's converter writes it (no add_space_prefix key).
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/vocab/mistral-v3-spm.gguf");
    let tok = Tokenizer::from_file(path).unwrap();
    assert_eq!(
        mistral_version(&tok, tok.chat_template()),
        Some(MistralVersion::V3)
    );
    check("v3_spm", &tok, MistralVersion::V3);
}

#[test]
fn v7_sentencepiece() {
    let tok = pypi_tokenizer(&known::MISTRAL_TOKENIZER_V7);
    assert_eq!(mistral_version(&tok, None), Some(MistralVersion::V7));
    check("v7_spm", &tok, MistralVersion::V7);
    // A v3 template name on a v7 vocabulary keeps v3.
    assert_eq!(
        mistral_version(&tok, Some("mistral-v3")),
        Some(MistralVersion::V3)
    );
}

#[test]
fn tekken_v3() {
    let tok = pypi_tokenizer(&known::TEKKEN_240911);
    // Tekken files carry [SYSTEM_PROMPT] whatever their version: without a template, v3.
    assert_eq!(mistral_version(&tok, None), Some(MistralVersion::V3));
    assert_eq!(
        mistral_version(&tok, Some("mistral-v7-tekken")),
        Some(MistralVersion::V7)
    );
    check("tekken_240911", &tok, MistralVersion::V3);
}
