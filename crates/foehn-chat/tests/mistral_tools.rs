//! Tool conversations (definitions, calls, parallel calls, results in any
//! order, multi-round loops) through `encode_mistral_chat_with_tools`, against
//! mistral-common 1.13.1's v3, v7, v11 and v13 instruct tokenizers. The ids
//! are in `tests/data/mistral_common_tools.json`, written by
//! `make_mistral_common_tools.py` over the tokenizers of the mistral-common
//! wheel (v3 and v7 SentencePiece, Tekken 240911) and the small Tekken file
//! of `tests/fixtures/mistral-chat` (v11, v13).

use std::collections::BTreeMap;
use std::path::PathBuf;

use foehn_chat::{encode_mistral_chat_with_tools, Message, MistralVersion};
use foehn_hub::known;
use foehn_tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    mistral_common_version: String,
    conversations: Vec<Conversation>,
}

#[derive(Deserialize)]
struct Conversation {
    tools: Option<serde_json::Value>,
    messages: Vec<Message>,
    ids: BTreeMap<String, Vec<u32>>,
    errors: BTreeMap<String, String>,
}

fn reference() -> Reference {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/mistral_common_tools.json");
    let r: Reference =
        serde_json::from_slice(&std::fs::read(&path).expect("read mistral_common_tools.json"))
            .expect("parse it");
    assert_eq!(r.mistral_common_version, "1.13.1");
    assert_eq!(r.conversations.len(), 13);
    r
}

fn small_tekken() -> Tokenizer {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/mistral-chat/tekken_v13_small.json");
    Tokenizer::from_file(path).expect("the small tekken fixture")
}

fn pypi_tokenizer(spec: &foehn_hub::PypiFile<'static>) -> Tokenizer {
    let path = foehn_hub::pypi_file(spec).expect("fetching the mistral-common wheel");
    Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every conversation for one tokenizer: the same ids, or an error where
/// mistral-common refuses; returns how many were compared by ids.
fn check(name: &str, tok: &Tokenizer, version: MistralVersion) -> usize {
    let mut compared = 0;
    for (i, conv) in reference().conversations.iter().enumerate() {
        let got = encode_mistral_chat_with_tools(tok, &conv.messages, conv.tools.as_ref(), version);
        match (conv.ids.get(name), conv.errors.get(name)) {
            (Some(want), _) => {
                let got = got.unwrap_or_else(|e| panic!("{name} #{i}: {e}"));
                assert_eq!(&got, want, "{name}, conversation {i}: {:?}", conv.messages);
                compared += 1;
            }
            (None, Some(why)) => {
                assert!(got.is_err(), "{name} #{i} encodes, mistral-common: {why}")
            }
            (None, None) => panic!("{name} #{i}: no reference"),
        }
    }
    compared
}

#[test]
fn v3_sentencepiece() {
    let tok = pypi_tokenizer(&known::MISTRAL_TOKENIZER_V3);
    assert_eq!(check("v3_spm", &tok, MistralVersion::V3), 12);
}

#[test]
fn v3_tekken() {
    let tok = pypi_tokenizer(&known::TEKKEN_240911);
    assert_eq!(check("tekken_240911", &tok, MistralVersion::V3), 12);
}

#[test]
fn v7_sentencepiece() {
    let tok = pypi_tokenizer(&known::MISTRAL_TOKENIZER_V7);
    assert_eq!(check("v7_spm", &tok, MistralVersion::V7), 13);
}

#[test]
fn v11_and_v13() {
    let tok = small_tekken();
    assert_eq!(check("small_v11", &tok, MistralVersion::V11), 13);
    assert_eq!(check("small_v13", &tok, MistralVersion::V13), 13);
}
