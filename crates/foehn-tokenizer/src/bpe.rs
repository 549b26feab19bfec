//! Byte-level BPE vocabularies stored in GGUF (`tokenizer.ggml.model = gpt2`),
//! rebuilt as a `tokenizers` pipeline with llama.cpp's pre-tokenizer regexes.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::{Result, TokenizerError};

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's Tekken pattern (tekken.json), of which llama.cpp's is an approximation.
pub(crate) const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How llama.cpp pre-tokenizes for one `tokenizer.ggml.pre` name.
pub(crate) struct PreTokenizer {
    /// Regexes applied in sequence; each splits every piece the previous ones left.
    pub regexes: Vec<&'static str>,
    /// Whether a word that is itself a token skips the merges (llama.cpp `ignore_merges`).
    pub ignore_merges: bool,
    /// Whether BOS is added when the file does not say (`add_bos_token` absent).
    pub default_add_bos: bool,
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` name, as llama.cpp's `llama_vocab::load` maps it.
pub(crate) fn pre_tokenizer(pre: &str) -> Result<PreTokenizer> {
    let p = |regexes: Vec<&'static str>, ignore_merges, default_add_bos| PreTokenizer {
        regexes,
        ignore_merges,
        default_add_bos,
    };
    Ok(match pre {
        "default" => p(
            vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
            false,
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => p(vec![LLAMA3], true, true),
        "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" => p(vec![GPT2], false, false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            p(vec![r"\p{N}", GPT2], false, false)
        }
        "falcon" => p(vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"], false, false),
        "qwen2" | "stablelm2" | "hunyuan" => p(vec![QWEN2], false, false),
        "tekken" => p(vec![TEKKEN], true, true),
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "GGUF pre-tokenizer '{other}' (known: default, llama3/llama-bpe, gpt2, smollm, qwen2, falcon, tekken, …)"
            )))
        }
    })
}

/// One vocabulary entry of a GGUF byte-level BPE vocabulary.
pub(crate) struct AddedSpecial {
    pub text: String,
    /// Control tokens are parsed only on request; user-defined ones always.
    pub control: bool,
}

/// Builds a `tokenizers::Tokenizer` from GGUF's tokens, merges and pre-tokenizer name.
pub(crate) fn build(
    tokens: &[&str],
    merges: &[&str],
    pre: &PreTokenizer,
    specials: &[AddedSpecial],
) -> Result<tokenizers::Tokenizer> {
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let mut pairs = Vec::with_capacity(merges.len());
    for m in merges {
        // As llama.cpp: split at the first space after the first character.
        let pos = m
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(i, _)| i)
            .ok_or_else(|| TokenizerError::BadMetadata(format!("merge without a space: {m:?}")))?;
        pairs.push((m[..pos].to_string(), m[pos + 1..].to_string()));
    }
    let model = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| TokenizerError::BadMetadata(format!("BPE vocabulary: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(model);
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for re in &pre.regexes {
        let split = Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Hf(format!("pre-tokenizer regex: {e}")))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    tok.with_pre_tokenizer(Some(Sequence::new(steps)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let control: Vec<AddedToken> = specials
        .iter()
        .filter(|s| s.control)
        .map(|s| AddedToken::from(s.text.clone(), true).normalized(false))
        .collect();
    let user: Vec<AddedToken> = specials
        .iter()
        .filter(|s| !s.control)
        .map(|s| AddedToken::from(s.text.clone(), false).normalized(false))
        .collect();
    tok.add_special_tokens(&control);
    tok.add_tokens(&user);
    Ok(tok)
}
