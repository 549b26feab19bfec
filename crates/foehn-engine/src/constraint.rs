//! The model's vocabulary as llguidance sees it (each token's bytes, the
//! special tokens marked, the end tokens), and the per-model compiler of
//! output constraints built from it.

use std::sync::Arc;

use foehn_sampler::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use foehn_sampler::ConstraintCompiler;
use foehn_tokenizer::{EncodeOptions, Tokenizer};

use crate::{EngineError, Result};

/// A [`TokenizerEnv`] over the model's tokenizer: the trie of its tokens'
/// bytes, and its own tokenization for the tokens a constraint forces.
struct VocabEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
    /// Whether encoding a piece of text gives the tokens it has inside
    /// running text (not so where SentencePiece adds a dummy-prefix space).
    canonical: bool,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        let plain = EncodeOptions {
            add_bos: Some(false),
            parse_special: false,
        };
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| self.tokenizer.encode(text, plain).ok())
            .unwrap_or_else(|| self.trie.greedy_tokenize(bytes))
    }

    fn tokenize_is_canonical(&self) -> bool {
        self.canonical
    }
}

/// The constraint compiler for a model whose logits have `vocab_size` rows
/// (the tokenizer's tokens, then padding that is never allowed). Control
/// tokens end a generation, except the `markers` (`[THINK]`, tool-call
/// syntax), which a grammar names like any other token.
pub(crate) fn compiler(
    tokenizer: &Arc<Tokenizer>,
    vocab_size: usize,
    markers: &dyn Fn(u32) -> bool,
) -> Result<ConstraintCompiler> {
    let table = tokenizer.token_bytes_table();
    let bos = tokenizer.bos_id();
    let mut ends = Vec::new();
    let words: Vec<Vec<u8>> = (0..vocab_size as u32)
        .map(|id| match table.get(id as usize) {
            Some(Some(bytes)) if Some(id) != tokenizer.eos_id() => bytes.clone(),
            // Control tokens (and EOS): llguidance's special-token spelling,
            // 0xFF then the name; each but BOS ends a generation, as in
            // the engine's own check.
            Some(_) => {
                if Some(id) == tokenizer.eos_id() || (Some(id) != bos && !markers(id)) {
                    ends.push(id);
                }
                let name = tokenizer
                    .id_to_token(id)
                    .unwrap_or_else(|| format!("<[{id}]>"));
                let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                word.extend_from_slice(name.as_bytes());
                word
            }
            None => Vec::new(),
        })
        .collect();
    // The EOS first: llguidance reports it as the end token.
    ends.sort_by_key(|&id| (Some(id) != tokenizer.eos_id(), id));
    let Some(&eos) = ends.first() else {
        return Err(EngineError::Other(
            "structured output needs an end-of-sequence token, and this vocabulary has none".into(),
        ));
    };
    let vocab = u32::try_from(vocab_size)
        .map_err(|_| EngineError::Other(format!("a vocabulary of {vocab_size} tokens")))?;
    let trie = TokTrie::from(&TokRxInfo::new(vocab, eos), &words).with_eos_tokens(&ends);
    let canonical = encodes_mid_text(tokenizer, &table);
    let env: TokEnv = Arc::new(VocabEnv {
        trie,
        tokenizer: tokenizer.clone(),
        canonical,
    });
    Ok(ConstraintCompiler::new(&env)?)
}

/// Whether encoding text gives exactly its bytes back token by token (no
/// dummy-prefix space, no normalization), checked on a few probes.
fn encodes_mid_text(tokenizer: &Tokenizer, table: &[Option<Vec<u8>>]) -> bool {
    let plain = EncodeOptions {
        add_bos: Some(false),
        parse_special: false,
    };
    ["a", "{\"a\": 1}", " b\n"].iter().all(|probe| {
        tokenizer.encode(probe, plain).is_ok_and(|ids| {
            let mut bytes = Vec::new();
            for id in ids {
                match table.get(id as usize) {
                    Some(Some(b)) => bytes.extend_from_slice(b),
                    _ => return false,
                }
            }
            bytes == probe.as_bytes()
        })
    })
}
