//! Hugging Face `tokenizer.json` (the `tokenizers` library), with BOS/EOS and the
//! chat template from a `tokenizer_config.json` beside it when there is one.

use std::path::Path;

use serde_json::Value;

use crate::special::SpecialTokens;
use crate::tokenizer::{Engine, TokenizerKind};
use crate::{Result, Tokenizer, TokenizerError};

/// A token named in tokenizer_config.json: a string or `{"content": "..."}`.
fn token_text(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// The `chat_template` of tokenizer_config.json: a string, or a list of named
/// templates of which we take `default`.
fn chat_template(cfg: &Value) -> Option<String> {
    match cfg.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

pub(crate) fn from_tokenizer_json(bytes: &[u8], path: &Path) -> Result<Tokenizer> {
    let parsing =
        tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::BadFile {
            path: path.into(),
            reason: e.to_string(),
        })?;
    let cfg_path = path.with_file_name("tokenizer_config.json");
    let cfg: Value = match std::fs::read(&cfg_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| TokenizerError::BadFile {
            path: cfg_path.clone(),
            reason: format!("invalid JSON: {e}"),
        })?,
        Err(_) => Value::Null,
    };
    let lookup = |key: &str, fallbacks: &[&str]| -> Option<u32> {
        match token_text(cfg.get(key)) {
            Some(t) => parsing.token_to_id(t),
            None => fallbacks.iter().find_map(|t| parsing.token_to_id(t)),
        }
    };
    let bos_id = lookup("bos_token", &["<s>", "<|begin_of_text|>"]);
    let eos_id = lookup(
        "eos_token",
        &["</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>"],
    );
    let with = parsing
        .encode("a", true)
        .map_err(|e| TokenizerError::Hf(e.to_string()))?;
    let without = parsing
        .encode("a", false)
        .map_err(|e| TokenizerError::Hf(e.to_string()))?;
    let post_processor_adds_bos = with.get_ids().len() > without.get_ids().len();
    let add_bos = cfg
        .get("add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(post_processor_adds_bos)
        && (bos_id.is_some() || post_processor_adds_bos);
    let add_eos = cfg
        .get("add_eos_token")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        && eos_id.is_some();
    let mut plain = parsing.clone();
    plain.set_encode_special_tokens(true);
    Ok(Tokenizer {
        engine: Engine::Hf {
            vocab_size: plain.get_vocab_size(true),
            plain: Box::new(plain),
            parsing: Box::new(parsing),
            post_processor_adds_bos,
        },
        kind: TokenizerKind::HfJson,
        specials: SpecialTokens::default(),
        bos_id,
        eos_id,
        add_bos,
        add_eos: add_eos && !post_processor_adds_bos,
        chat_template: chat_template(&cfg),
    })
}
