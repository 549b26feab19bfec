//! Tokenizers rebuilt from GGUF metadata (`tokenizer.ggml.*`), with llama.cpp's
//! semantics: its defaults for missing keys and its special-token rules.

use foehn_loader::gguf::Metadata;

use crate::bpe::{self, AddedSpecial};
use crate::special::SpecialTokens;
use crate::spm::{PieceKind, SpmModel, SpmOptions};
use crate::tokenizer::{spm_specials, Engine, TokenizerKind};
use crate::{Result, Tokenizer, TokenizerError};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
fn piece_kind(t: i64) -> PieceKind {
    match t {
        2 => PieceKind::Unknown,
        3 => PieceKind::Control,
        4 => PieceKind::UserDefined,
        5 => PieceKind::Unused,
        6 => PieceKind::Byte,
        _ => PieceKind::Normal,
    }
}

fn bad(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::BadMetadata(msg.into())
}

/// Builds the tokenizer described by GGUF metadata.
pub(crate) fn from_gguf(meta: &Metadata) -> Result<Tokenizer> {
    let model = meta.get_str("tokenizer.ggml.model")?;
    let tokens = meta.get_str_array("tokenizer.ggml.tokens")?;
    let n = tokens.len();
    if n == 0 {
        return Err(bad("tokenizer.ggml.tokens is empty"));
    }
    let kinds: Vec<PieceKind> = if meta.contains("tokenizer.ggml.token_type") {
        let types = meta.get_i64_array("tokenizer.ggml.token_type")?;
        if types.len() != n {
            return Err(bad(format!("{} token types for {n} tokens", types.len())));
        }
        types.into_iter().map(piece_kind).collect()
    } else {
        vec![PieceKind::Normal; n]
    };
    let token_id = |key: &str| -> Result<Option<u32>> {
        match meta.opt_usize(key)? {
            Some(id) if id < n => Ok(Some(id as u32)),
            Some(id) => Err(bad(format!(
                "{key} = {id} is outside the vocabulary ({n} tokens)"
            ))),
            None => Ok(None),
        }
    };
    let bos_id = token_id("tokenizer.ggml.bos_token_id")?;
    let eos_id = token_id("tokenizer.ggml.eos_token_id")?;
    let unk_id = token_id("tokenizer.ggml.unknown_token_id")?;
    let add_eos = meta
        .opt_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let add_bos_key = meta.opt_bool("tokenizer.ggml.add_bos_token")?;
    let chat_template = meta.opt_str("tokenizer.chat_template")?.map(str::to_string);

    let (engine, kind, specials, default_add_bos) = match model {
        "llama" => {
            let scores: Vec<f32> = if meta.contains("tokenizer.ggml.scores") {
                let s = meta.get_f64_array("tokenizer.ggml.scores")?;
                if s.len() != n {
                    return Err(bad(format!("{} scores for {n} tokens", s.len())));
                }
                s.into_iter().map(|v| v as f32).collect()
            } else {
                vec![0.0; n]
            };
            // llama.cpp's SPM default: a space prefix unless the file says otherwise.
            let add_dummy_prefix = meta
                .opt_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true);
            let opts = SpmOptions {
                add_dummy_prefix,
                remove_extra_whitespaces: false,
                match_user_defined: false,
            };
            let pieces = tokens.iter().map(|t| t.to_string()).collect();
            let spm = SpmModel::new(pieces, scores, kinds, unk_id, opts)
                .map_err(|e| bad(e.to_string()))?;
            let specials = spm_specials(&spm, true);
            (
                Engine::Spm(Box::new(spm)),
                TokenizerKind::GgufLlama,
                specials,
                true,
            )
        }
        "gpt2" => {
            let merges = meta.get_str_array("tokenizer.ggml.merges")?;
            let pre_name = meta.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
            let pre = bpe::pre_tokenizer(pre_name)?;
            let added: Vec<AddedSpecial> = tokens
                .iter()
                .zip(&kinds)
                .filter(|(_, k)| matches!(k, PieceKind::Control | PieceKind::UserDefined))
                .map(|(t, k)| AddedSpecial {
                    text: t.to_string(),
                    control: *k == PieceKind::Control,
                })
                .collect();
            let parsing = bpe::build(&tokens, &merges, &pre, &added)?;
            let mut plain = parsing.clone();
            plain.set_encode_special_tokens(true);
            let engine = Engine::Hf {
                vocab_size: plain.get_vocab_size(true),
                plain: Box::new(plain),
                parsing: Box::new(parsing),
                post_processor_adds_bos: false,
            };
            (
                engine,
                TokenizerKind::GgufGpt2,
                SpecialTokens::default(),
                pre.default_add_bos,
            )
        }
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "GGUF tokenizer model '{other}' (foehn reads 'llama' and 'gpt2')"
            )))
        }
    };
    Ok(Tokenizer {
        engine,
        kind,
        specials,
        bos_id,
        eos_id,
        add_bos: add_bos_key.unwrap_or(default_add_bos) && bos_id.is_some(),
        add_eos: add_eos && eos_id.is_some(),
        chat_template,
    })
}
