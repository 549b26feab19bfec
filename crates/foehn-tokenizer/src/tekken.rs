//! Mistral's Tekken tokenizer (`tekken.json`): tiktoken-style byte-level BPE.
//!
//! This reproduces mistral_common's `Tekkenizer` (1.13.1) for plain text:
//!
//! - the normal vocabulary is the first `default_vocab_size - default_num_special_tokens`
//!   entries of `vocab`; an entry's rank is its position, its bytes are `token_bytes` (base64);
//! - special tokens come first in id space: the file's `special_tokens` list (or, for files
//!   of version <= v7 without one, mistral_common's built-in legacy list), padded with
//!   `<SPECIAL_{i}>` up to `default_num_special_tokens`; a normal token's id is
//!   `rank + num_special_tokens`;
//! - encoding is tiktoken's `encode_ordinary`: split the text with the file's `pattern`, emit a
//!   piece directly when its bytes are a token, otherwise byte-pair-merge it (repeatedly merge
//!   the leftmost adjacent pair whose concatenation has the lowest rank).
//!
//! Special-token text such as `</s>` or `[INST]` in the input is encoded as ordinary text,
//! exactly as `Tekkenizer.encode` does; control tokens are added by the caller by id.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// Everything that can go wrong while loading a `tekken.json`.
#[derive(Debug, thiserror::Error)]
pub enum TekkenError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that was read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not valid JSON or lacks a required field.
    #[error("invalid tekken.json: {0}")]
    Json(#[from] serde_json::Error),
    /// `config.version` is not of the form `v<N>`.
    #[error("unknown tekken version {0:?}")]
    UnknownVersion(String),
    /// The file has no `special_tokens` list and is too new (> v7) to use the legacy one.
    #[error("tekken.json has no special_tokens list (version {version:?}); files newer than v7 must define them")]
    MissingSpecialTokenList {
        /// `config.version`, if any.
        version: Option<String>,
    },
    /// The configured sizes do not fit the vocabulary in the file.
    #[error(
        "vocab size {vocab_size} does not fit {num_vocab} vocab entries + {num_special} special tokens \
         (need num_special <= vocab_size <= num_vocab + num_special and at least 256 normal tokens)"
    )]
    VocabSize {
        /// `config.default_vocab_size`.
        vocab_size: usize,
        /// Number of entries in `vocab`.
        num_vocab: usize,
        /// `config.default_num_special_tokens`.
        num_special: usize,
    },
    /// A vocab entry's `rank` is not its position in the list.
    #[error("vocab entry {index} has rank {rank}; ranks must equal positions")]
    VocabRank {
        /// Position in the list.
        index: usize,
        /// The rank it claims.
        rank: u64,
    },
    /// A vocab entry's `token_bytes` is not valid base64.
    #[error("vocab entry {rank}: bad base64 in token_bytes: {source}")]
    Base64 {
        /// Rank of the entry.
        rank: usize,
        /// The decoding error.
        source: base64::DecodeError,
    },
    /// One of the first 256 entries is not the single byte equal to its rank.
    #[error("vocab entry {rank} must be the single byte {rank:#04x}")]
    ByteToken {
        /// Rank of the entry.
        rank: usize,
    },
    /// Two used vocab entries have the same bytes.
    #[error("vocab entries {first} and {second} have the same bytes")]
    DuplicateToken {
        /// The earlier rank.
        first: u32,
        /// The later rank.
        second: u32,
    },
    /// The special-token list is longer than `default_num_special_tokens`.
    #[error("{defined} special tokens defined but default_num_special_tokens is {num_special}")]
    TooManySpecialTokens {
        /// Length of the file's list.
        defined: usize,
        /// `config.default_num_special_tokens`.
        num_special: usize,
    },
    /// A special token's `rank` is not its position in the list.
    #[error("special token {index} ({text:?}) has rank {rank}; ranks must equal positions")]
    SpecialRank {
        /// Position in the list.
        index: usize,
        /// The rank it claims.
        rank: u64,
        /// Its text.
        text: String,
    },
    /// Two special tokens (after padding with `<SPECIAL_{i}>`) have the same text.
    #[error("special token {0:?} is defined twice")]
    DuplicateSpecialToken(String),
    /// `<s>`, `</s>` or `<unk>` is not among the special tokens.
    #[error("special token {0:?} is missing")]
    MissingSpecialToken(&'static str),
    /// `config.pattern` does not compile.
    #[error("bad pre-tokenizer pattern: {0}")]
    Pattern(#[from] Box<fancy_regex::Error>),
}

/// A loaded Tekken tokenizer: vocabulary, special tokens and the compiled pre-tokenizer.
///
/// Immutable after loading, so it is `Send + Sync` and can be shared behind an `Arc`.
pub struct TekkenModel {
    /// The pre-tokenizer regex (tiktoken's `pat_str`).
    pattern: fancy_regex::Regex,
    /// Token bytes → rank, for the used part of the vocabulary.
    ranks: HashMap<Box<[u8]>, u32, FxBuildHasher>,
    /// Bytes of every normal token, concatenated in rank order.
    token_data: Vec<u8>,
    /// `token_data[offsets[r]..offsets[r + 1]]` are the bytes of rank `r`.
    offsets: Vec<u32>,
    /// Text of each special token, indexed by id.
    specials: Vec<Box<str>>,
    /// `config.version`'s number (`"v13"` → 13), if the file says.
    version: Option<u32>,
    bos_id: u32,
    eos_id: u32,
    unk_id: u32,
}

impl std::fmt::Debug for TekkenModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TekkenModel")
            .field("vocab_size", &self.vocab_size())
            .field("num_special_tokens", &self.specials.len())
            .field("pattern", &self.pattern.as_str())
            .finish_non_exhaustive()
    }
}

/// mistral_common's `Tekkenizer.DEPRECATED_SPECIAL_TOKENS`: the special tokens of tekken files
/// (version <= v7) that do not list their own.
const LEGACY_SPECIAL_TOKENS: [&str; 20] = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
];

/// Rank of "no such token" in the merge loops (real ranks are all smaller).
const NO_RANK: u32 = u32::MAX;

/// Pieces longer than this are merged with a heap (O(n log n)) instead of tiktoken's
/// rescan-every-step loop (O(n²)); both give identical tokens. Typical pieces are a few bytes,
/// where the plain loop is faster.
const LINEAR_MERGE_MAX_LEN: usize = 128;

#[derive(Deserialize)]
struct FileJson<'a> {
    #[serde(borrow)]
    vocab: Vec<VocabJson<'a>>,
    #[serde(default)]
    special_tokens: Option<Vec<SpecialJson>>,
    config: ConfigJson,
}

#[derive(Deserialize)]
struct VocabJson<'a> {
    rank: u64,
    #[serde(borrow)]
    token_bytes: Cow<'a, str>,
}

#[derive(Deserialize)]
struct SpecialJson {
    rank: u64,
    token_str: String,
}

#[derive(Deserialize)]
struct ConfigJson {
    pattern: String,
    default_vocab_size: usize,
    default_num_special_tokens: usize,
    #[serde(default)]
    version: Option<String>,
}

impl TekkenModel {
    /// Parses a `tekken.json` from memory and validates it as mistral_common does.
    pub fn from_json(bytes: &[u8]) -> Result<Self, TekkenError> {
        let file: FileJson<'_> = serde_json::from_slice(bytes)?;
        Self::from_parsed(file, None)
    }

    /// Reads and parses a `tekken.json` file.
    pub fn from_file(path: &Path) -> Result<Self, TekkenError> {
        let bytes = std::fs::read(path).map_err(|source| TekkenError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&bytes)
    }

    /// Builds the model from the parsed file; `backtrack_limit` overrides fancy_regex's
    /// default (only tests need to).
    fn from_parsed(
        file: FileJson<'_>,
        backtrack_limit: Option<usize>,
    ) -> Result<Self, TekkenError> {
        let cfg = &file.config;
        let num_special = cfg.default_num_special_tokens;
        let vocab_size = cfg.default_vocab_size;
        let size_error = || TekkenError::VocabSize {
            vocab_size,
            num_vocab: file.vocab.len(),
            num_special,
        };
        let num_normal = vocab_size.checked_sub(num_special).ok_or_else(size_error)?;
        // Every single byte must be a token, or byte-pair merging could get stuck.
        if num_normal > file.vocab.len() || num_normal < 256 || vocab_size > u32::MAX as usize {
            return Err(size_error());
        }

        let version = parse_version(cfg.version.as_deref())?;
        let specials = special_token_texts(
            file.special_tokens,
            cfg.version.as_deref(),
            version,
            num_special,
        )?;
        let find = |text: &'static str| {
            specials
                .iter()
                .position(|s| &**s == text)
                .map(|i| i as u32)
                .ok_or(TekkenError::MissingSpecialToken(text))
        };
        let (bos_id, eos_id, unk_id) = (find("<s>")?, find("</s>")?, find("<unk>")?);

        let b64 = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let mut token_data = Vec::new();
        let mut offsets = Vec::with_capacity(num_normal + 1);
        offsets.push(0u32);
        let mut ranks: HashMap<Box<[u8]>, u32, FxBuildHasher> =
            HashMap::with_capacity_and_hasher(num_normal, FxBuildHasher::default());
        let mut buf = Vec::new();
        for (index, entry) in file.vocab.iter().take(num_normal).enumerate() {
            if entry.rank != index as u64 {
                return Err(TekkenError::VocabRank {
                    index,
                    rank: entry.rank,
                });
            }
            buf.clear();
            b64.decode_vec(entry.token_bytes.as_bytes(), &mut buf)
                .map_err(|source| TekkenError::Base64 {
                    rank: index,
                    source,
                })?;
            if index < 256 && buf != [index as u8] {
                return Err(TekkenError::ByteToken { rank: index });
            }
            let rank = index as u32;
            if let Some(&first) = ranks.get(buf.as_slice()) {
                return Err(TekkenError::DuplicateToken {
                    first,
                    second: rank,
                });
            }
            ranks.insert(buf.as_slice().into(), rank);
            token_data.extend_from_slice(&buf);
            let end = u32::try_from(token_data.len()).map_err(|_| size_error())?;
            offsets.push(end);
        }

        let mut builder = fancy_regex::RegexBuilder::new(&cfg.pattern);
        if let Some(limit) = backtrack_limit {
            builder.backtrack_limit(limit);
        }
        let pattern = builder.build().map_err(Box::new)?;

        Ok(Self {
            pattern,
            ranks,
            token_data,
            offsets,
            specials,
            version,
            bos_id,
            eos_id,
            unk_id,
        })
    }

    /// Appends the ids of `text` to `out`, without BOS/EOS.
    ///
    /// Same ids as mistral_common's `Tekkenizer.encode(text, bos=False, eos=False)`: special-token
    /// text in `text` is treated as ordinary text.
    ///
    /// If the pre-tokenizer regex gives up (fancy_regex's backtrack limit; with the stock
    /// pattern only on a single piece of about a million characters, where tiktoken would
    /// panic), the rest of the text from the end of the last match is byte-pair-merged as one
    /// piece, so encoding still succeeds and still decodes back to the input. fancy_regex keeps
    /// returning the same error once it fails, so there is no resuming the split.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let offset = self.specials.len() as u32;
        let first_new = out.len();
        let mut done = 0;
        for found in self.pattern.find_iter(text) {
            match found {
                Ok(m) => {
                    self.encode_piece(m.as_str().as_bytes(), out);
                    done = m.end();
                }
                Err(_) => {
                    self.encode_piece(&text.as_bytes()[done..], out);
                    break;
                }
            }
        }
        for id in &mut out[first_new..] {
            *id += offset;
        }
    }

    /// Raw bytes of the normal token `id`; `None` for special-token ids and ids out of range.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let rank = (id as usize).checked_sub(self.specials.len())?;
        let start = *self.offsets.get(rank)? as usize;
        let end = *self.offsets.get(rank + 1)? as usize;
        Some(&self.token_data[start..end])
    }

    /// `(id, text)` of every special token in id order, including the `<SPECIAL_{i}>` fillers.
    pub fn special_tokens(&self) -> impl Iterator<Item = (u32, &str)> {
        self.specials
            .iter()
            .enumerate()
            .map(|(id, text)| (id as u32, &**text))
    }

    /// Id of the special token whose text is exactly `text` (e.g. `"[INST]"`), if any.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.specials
            .iter()
            .position(|s| &**s == text)
            .map(|i| i as u32)
    }

    /// Number of special tokens (ids `0..num_special_tokens()`).
    pub fn num_special_tokens(&self) -> usize {
        self.specials.len()
    }

    /// Total number of ids: special tokens plus the normal tokens in use.
    pub fn vocab_size(&self) -> usize {
        self.specials.len() + self.offsets.len() - 1
    }

    /// The file's `config.version` as a number (`"v13"` → 13): which of
    /// mistral_common's instruct tokenizers the model was trained with.
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// Id of `<s>`.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Id of `</s>`.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Id of `<unk>`.
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// Rank of `bytes`, or [`NO_RANK`].
    fn rank(&self, bytes: &[u8]) -> u32 {
        self.ranks.get(bytes).copied().unwrap_or(NO_RANK)
    }

    /// Appends the ranks of one pre-tokenized piece.
    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        match self.ranks.get(piece) {
            Some(&rank) => out.push(rank),
            None if piece.is_empty() => {}
            None if piece.len() <= LINEAR_MERGE_MAX_LEN => self.merge_linear(piece, out),
            None if piece.len() <= u32::MAX as usize => self.merge_heap(piece, out),
            // A single piece over 4 GiB: merge it in chunks rather than fail.
            None => {
                for chunk in piece.chunks(u32::MAX as usize) {
                    self.encode_piece(chunk, out);
                }
            }
        }
    }

    /// tiktoken's `_byte_pair_merge`: rescan for the lowest-ranked pair after every merge.
    /// `piece` has at least two bytes.
    fn merge_linear(&self, piece: &[u8], out: &mut Vec<u32>) {
        // parts[k] = (start of part k, rank of part k merged with part k + 1); two sentinels.
        let mut parts: Vec<(usize, u32)> = Vec::with_capacity(piece.len() + 1);
        let mut min = (NO_RANK, usize::MAX);
        for i in 0..piece.len() - 1 {
            let rank = self.rank(&piece[i..i + 2]);
            if rank < min.0 {
                min = (rank, i);
            }
            parts.push((i, rank));
        }
        parts.push((piece.len() - 1, NO_RANK));
        parts.push((piece.len(), NO_RANK));

        // Rank of parts i and i + 1 merged, once part i + 1 has absorbed part i + 2.
        let rank_after = |parts: &[(usize, u32)], i: usize| {
            if i + 3 < parts.len() {
                self.rank(&piece[parts[i].0..parts[i + 3].0])
            } else {
                NO_RANK
            }
        };
        while min.0 != NO_RANK {
            let i = min.1;
            if i > 0 {
                parts[i - 1].1 = rank_after(&parts, i - 1);
            }
            parts[i].1 = rank_after(&parts, i);
            parts.remove(i + 1);
            min = (NO_RANK, usize::MAX);
            for (k, &(_, rank)) in parts[..parts.len() - 1].iter().enumerate() {
                if rank < min.0 {
                    min = (rank, k);
                }
            }
        }
        out.extend(parts.windows(2).map(|w| self.rank(&piece[w[0].0..w[1].0])));
    }

    /// Same merges as [`Self::merge_linear`] in O(n log n), for long pieces.
    ///
    /// A min-heap of `(rank, start)` pops the lowest rank and, among equal ranks, the leftmost
    /// pair, which is exactly the pair tiktoken's rescan picks. Entries go stale when a
    /// neighbour merges; an entry is current iff it matches `pair_rank[start]`, which is sound
    /// because token bytes are unique, so `(rank, start)` fixes the pair's span.
    /// `piece` has at least two and at most `u32::MAX` bytes.
    fn merge_heap(&self, piece: &[u8], out: &mut Vec<u32>) {
        // (rank, start) packed into one u64 that orders the same way: half the heap traffic.
        let key = |rank: u32, start: u32| Reverse((u64::from(rank) << 32) | u64::from(start));
        let n = piece.len() as u32;
        let span = |from: u32, to: u32| &piece[from as usize..to as usize];
        // Parts are named by their start byte; part i covers piece[i..next[i]].
        let mut next: Vec<u32> = (1..=n).collect();
        let mut prev: Vec<u32> = (0..n).map(|i| i.saturating_sub(1)).collect();
        // Rank of part i merged with its right neighbour (NO_RANK if none or dead).
        let mut pair_rank: Vec<u32> = (0..n - 1).map(|i| self.rank(span(i, i + 2))).collect();
        pair_rank.push(NO_RANK);
        let mut heap: BinaryHeap<_> = (0..n)
            .filter(|&i| pair_rank[i as usize] != NO_RANK)
            .map(|i| key(pair_rank[i as usize], i))
            .collect();
        while let Some(Reverse(packed)) = heap.pop() {
            let (rank, i) = ((packed >> 32) as u32, packed as u32);
            if pair_rank[i as usize] != rank {
                continue;
            }
            let absorbed = next[i as usize];
            let after = next[absorbed as usize];
            next[i as usize] = after;
            pair_rank[absorbed as usize] = NO_RANK;
            pair_rank[i as usize] = if after < n {
                prev[after as usize] = i;
                self.rank(span(i, next[after as usize]))
            } else {
                NO_RANK
            };
            if pair_rank[i as usize] != NO_RANK {
                heap.push(key(pair_rank[i as usize], i));
            }
            if i > 0 {
                let left = prev[i as usize];
                pair_rank[left as usize] = self.rank(span(left, after));
                if pair_rank[left as usize] != NO_RANK {
                    heap.push(key(pair_rank[left as usize], left));
                }
            }
        }
        let mut i = 0;
        while i < n {
            out.push(self.rank(span(i, next[i as usize])));
            i = next[i as usize];
        }
    }
}

/// The number of a `config.version` (`"v13"` → 13).
fn parse_version(version: Option<&str>) -> Result<Option<u32>, TekkenError> {
    version
        .map(|v| {
            v.strip_prefix('v')
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| TekkenError::UnknownVersion(v.to_owned()))
        })
        .transpose()
}

/// The special tokens, indexed by id, as mistral_common builds them.
fn special_token_texts(
    listed: Option<Vec<SpecialJson>>,
    version: Option<&str>,
    version_num: Option<u32>,
    num_special: usize,
) -> Result<Vec<Box<str>>, TekkenError> {
    let mut texts: Vec<Box<str>> = match listed {
        Some(list) => list
            .into_iter()
            .enumerate()
            .map(|(index, s)| {
                if s.rank == index as u64 {
                    Ok(s.token_str.into_boxed_str())
                } else {
                    Err(TekkenError::SpecialRank {
                        index,
                        rank: s.rank,
                        text: s.token_str,
                    })
                }
            })
            .collect::<Result<_, _>>()?,
        None if version_num.is_some_and(|v| v <= 7) => {
            LEGACY_SPECIAL_TOKENS.iter().map(|&s| s.into()).collect()
        }
        None => {
            return Err(TekkenError::MissingSpecialTokenList {
                version: version.map(str::to_owned),
            })
        }
    };
    if texts.len() > num_special {
        return Err(TekkenError::TooManySpecialTokens {
            defined: texts.len(),
            num_special,
        });
    }
    for i in texts.len()..num_special {
        texts.push(format!("<SPECIAL_{i}>").into_boxed_str());
    }
    let mut seen = std::collections::HashSet::with_capacity(texts.len());
    for text in &texts {
        if !seen.insert(&**text) {
            return Err(TekkenError::DuplicateSpecialToken(text.to_string()));
        }
    }
    Ok(texts)
}

type FxBuildHasher = BuildHasherDefault<FxHasher>;

/// rustc's Fx hash: a few cycles per word, far cheaper than SipHash for the short byte strings
/// looked up in the merge loops. Its weak mixing does not matter here: the table holds a fixed,
/// trusted vocabulary and user text only performs lookups, which cannot degrade it.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tokenizers/mistral_tekken_240911.jsonl"
    );

    /// The real tekken_240911 model (always `Some`: fetched from the pinned PyPI wheel).
    fn real_model() -> Option<TekkenModel> {
        let path = foehn_hub::pypi_file(&foehn_hub::known::TEKKEN_240911)
            .expect("fetching tekken_240911.json");
        Some(TekkenModel::from_file(&path).expect("tekken_240911.json loads"))
    }

    fn decode(model: &TekkenModel, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter_map(|&id| model.token_bytes(id))
            .flatten()
            .copied()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A tekken.json with the 256 byte tokens followed by `merged`, and `num_special` specials.
    fn tiny_json(
        merged: &[&[u8]],
        special_tokens: Option<&[&str]>,
        num_special: usize,
        version: &str,
    ) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let vocab: Vec<serde_json::Value> = (0u8..=255)
            .map(|b| vec![b])
            .chain(merged.iter().map(|m| m.to_vec()))
            .enumerate()
            .map(|(rank, bytes)| {
                serde_json::json!({
                    "rank": rank,
                    "token_bytes": b64.encode(&bytes),
                    "token_str": String::from_utf8(bytes).ok(),
                })
            })
            .collect();
        let mut file = serde_json::json!({
            "config": {
                "pattern": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
                "num_vocab_tokens": vocab.len(),
                "default_vocab_size": vocab.len() + num_special,
                "default_num_special_tokens": num_special,
                "version": version,
            },
            "vocab": vocab,
        });
        if let Some(specials) = special_tokens {
            file["special_tokens"] = specials
                .iter()
                .enumerate()
                .map(|(rank, s)| serde_json::json!({"rank": rank, "token_str": s, "is_control": true}))
                .collect();
        }
        serde_json::to_vec(&file).unwrap()
    }

    /// 256 bytes + "ab" (256), "bc" (257), "abc" (258), "aa" (259), " a" (260), 5 specials.
    fn tiny_model() -> TekkenModel {
        let json = tiny_json(
            &[b"ab", b"bc", b"abc", b"aa", b" a"],
            Some(&["<unk>", "<s>", "</s>"]),
            5,
            "v13",
        );
        TekkenModel::from_json(&json).unwrap()
    }

    #[test]
    fn model_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<TekkenModel>();
    }

    #[test]
    fn tiny_model_merges_like_tiktoken() {
        let model = tiny_model();
        assert_eq!(model.vocab_size(), 5 + 261);
        assert_eq!((model.unk_id(), model.bos_id(), model.eos_id()), (0, 1, 2));
        let specials: Vec<_> = model.special_tokens().collect();
        assert_eq!(
            specials,
            [
                (0, "<unk>"),
                (1, "<s>"),
                (2, "</s>"),
                (3, "<SPECIAL_3>"),
                (4, "<SPECIAL_4>")
            ]
        );
        assert_eq!(model.special_id("<SPECIAL_4>"), Some(4));
        assert_eq!(model.special_id("[INST]"), None);

        let enc = |text: &str| {
            let mut ids = vec![];
            model.encode(text, &mut ids);
            ids
        };
        // "abc" is a whole token.
        assert_eq!(enc("abc"), [258 + 5]);
        // "abcb": ab (256) beats bc (257), then "abc" (258); the trailing "b" stays a byte.
        assert_eq!(enc("abcb"), [258 + 5, b'b' as u32 + 5]);
        // "aaa": the leftmost of two equal-rank pairs merges first.
        assert_eq!(enc("aaa"), [259 + 5, b'a' as u32 + 5]);
        // " aaa" is one piece; "aa" (259) has a lower rank than " a" (260), so it merges first.
        assert_eq!(enc(" aaa"), [b' ' as u32 + 5, 259 + 5, b'a' as u32 + 5]);
        // Special-token text is plain text.
        assert_eq!(
            enc("</s>"),
            [
                b'<' as u32 + 5,
                b'/' as u32 + 5,
                b's' as u32 + 5,
                b'>' as u32 + 5
            ]
        );
        // Multi-byte characters fall back to bytes and decode back.
        let ids = enc("é€");
        assert_eq!(ids.len(), 5);
        assert_eq!(decode(&model, &ids), "é€");
        assert_eq!(enc(""), Vec::<u32>::new());

        assert_eq!(model.token_bytes(258 + 5), Some(&b"abc"[..]));
        assert_eq!(model.token_bytes(5), Some(&[0u8][..]));
        assert_eq!(model.token_bytes(1), None);
        assert_eq!(model.token_bytes(261 + 5), None);
    }

    #[test]
    fn legacy_special_tokens_and_vocab_cut() {
        // No special_tokens list: v3 uses mistral_common's legacy 20, padded to 25; the vocab
        // size keeps only the first 257 normal tokens, so "abc" and "bc" are unused.
        let mut json: serde_json::Value =
            serde_json::from_slice(&tiny_json(&[b"ab", b"bc", b"abc"], None, 25, "v3")).unwrap();
        json["config"]["default_vocab_size"] = (25 + 257).into();
        let model = TekkenModel::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(model.vocab_size(), 25 + 257);
        assert_eq!(model.special_id("[INST]"), Some(3));
        assert_eq!(model.special_id("[TOOL_CONTENT]"), Some(19));
        assert_eq!(model.special_id("<SPECIAL_24>"), Some(24));
        assert_eq!(model.token_bytes(25 + 257), None);
        let mut ids = vec![];
        model.encode("abc", &mut ids);
        assert_eq!(ids, [256 + 25, b'c' as u32 + 25]);
    }

    #[test]
    fn rejects_bad_files() {
        let newer_without_specials = tiny_json(&[], None, 25, "v11");
        assert!(matches!(
            TekkenModel::from_json(&newer_without_specials),
            Err(TekkenError::MissingSpecialTokenList { .. })
        ));
        let too_many = tiny_json(&[], Some(&["<unk>", "<s>", "</s>"]), 2, "v13");
        assert!(matches!(
            TekkenModel::from_json(&too_many),
            Err(TekkenError::TooManySpecialTokens {
                defined: 3,
                num_special: 2
            })
        ));
        let dup = tiny_json(&[b"ab", b"ab"], Some(&["<unk>", "<s>", "</s>"]), 3, "v13");
        assert!(matches!(
            TekkenModel::from_json(&dup),
            Err(TekkenError::DuplicateToken {
                first: 256,
                second: 257
            })
        ));
        let no_bos = tiny_json(&[], Some(&["<unk>", "</s>"]), 3, "v13");
        assert!(matches!(
            TekkenModel::from_json(&no_bos),
            Err(TekkenError::MissingSpecialToken("<s>"))
        ));
        let filler_clash = tiny_json(
            &[],
            Some(&["<unk>", "<s>", "</s>", "<SPECIAL_4>"]),
            5,
            "v13",
        );
        assert!(matches!(
            TekkenModel::from_json(&filler_clash),
            Err(TekkenError::DuplicateSpecialToken(_))
        ));
        assert!(matches!(
            TekkenModel::from_json(b"{}"),
            Err(TekkenError::Json(_))
        ));
        assert!(matches!(
            TekkenModel::from_file(Path::new("/nonexistent/tekken.json")),
            Err(TekkenError::Io { .. })
        ));
    }

    #[test]
    fn regex_failure_falls_back_to_one_piece() {
        let json = tiny_json(
            &[b"ab", b"bc", b"abc", b"aa", b" a"],
            Some(&["<unk>", "<s>", "</s>"]),
            3,
            "v13",
        );
        let file: FileJson<'_> = serde_json::from_slice(&json).unwrap();
        // A backtrack limit of 0 makes the first match attempt fail.
        let model = TekkenModel::from_parsed(file, Some(0)).unwrap();
        let text = "abc abc    \n x";
        let mut ids = vec![];
        model.encode(text, &mut ids);
        let mut whole = vec![];
        model.encode_piece(text.as_bytes(), &mut whole);
        assert_eq!(ids, whole.iter().map(|r| r + 3).collect::<Vec<_>>());
        assert_eq!(decode(&model, &ids), text);
    }

    #[test]
    fn heap_merge_equals_linear_merge() {
        let tiny = tiny_model();
        let real = real_model();
        let mut models = vec![&tiny];
        models.extend(real.as_ref());
        // Deterministic pseudo-random pieces over small alphabets, so merges happen a lot.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabets: [&[u8]; 4] = [b"ab", b"abc ", b"aeiou nrst", b"0123456789abcdef"];
        for model in models {
            for round in 0..400 {
                let alphabet = alphabets[round % alphabets.len()];
                let len = 2 + (next() % 300) as usize;
                let piece: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                let (mut linear, mut heap) = (vec![], vec![]);
                model.merge_linear(&piece, &mut linear);
                model.merge_heap(&piece, &mut heap);
                assert_eq!(linear, heap, "piece {:?}", String::from_utf8_lossy(&piece));
            }
        }
    }

    #[derive(Deserialize)]
    struct FixtureLine {
        key: String,
        text: String,
        ids: Vec<u32>,
        decoded: String,
    }

    #[test]
    fn matches_mistral_common_240911() {
        let Some(model) = real_model() else { return };
        assert_eq!(model.vocab_size(), 131_072);
        assert_eq!(model.num_special_tokens(), 1000);
        assert_eq!((model.unk_id(), model.bos_id(), model.eos_id()), (0, 1, 2));
        assert_eq!(model.special_id("[INST]"), Some(3));
        assert_eq!(model.token_bytes(1000), Some(&[0u8][..]));
        assert_eq!(model.token_bytes(131_072), None);

        let fixture = std::fs::read_to_string(FIXTURE).expect("fixture present");
        let lines: Vec<FixtureLine> = fixture
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("fixture line parses"))
            .collect();
        assert!(lines.len() >= 100);
        let mut failures = vec![];
        let mut ids = vec![];
        let start = Instant::now();
        let mut total_ids = 0;
        for line in &lines {
            ids.clear();
            model.encode(&line.text, &mut ids);
            total_ids += ids.len();
            if ids != line.ids {
                failures.push(format!("{}: got {:?}, want {:?}", line.key, ids, line.ids));
            }
            let decoded = decode(&model, &line.ids);
            if decoded != line.decoded {
                failures.push(format!(
                    "{}: decoded {decoded:?}, want {:?}",
                    line.key, line.decoded
                ));
            }
        }
        eprintln!(
            "{}/{} fixture lines, {total_ids} ids in {:?}",
            lines.len() - failures.len(),
            lines.len(),
            start.elapsed()
        );
        assert!(
            failures.is_empty(),
            "{} mismatches:\n{}",
            failures.len(),
            failures.join("\n")
        );

        // Special ids decode to nothing in this path.
        assert_eq!(decode(&model, &[1, 22177, 2, 4304]), "Hello world");
    }

    #[test]
    fn long_single_pieces_round_trip() {
        let Some(model) = real_model() else { return };
        for text in [
            "a".repeat(1000),
            " ".repeat(1000),
            "a".repeat(100_000),
            "ab".repeat(50_000),
        ] {
            let start = Instant::now();
            let mut ids = vec![];
            model.encode(&text, &mut ids);
            let took = start.elapsed();
            eprintln!(
                "{} bytes of {:?}…: {} ids in {took:?}",
                text.len(),
                &text[..2],
                ids.len()
            );
            assert_eq!(decode(&model, &ids), text);
        }
    }
}
