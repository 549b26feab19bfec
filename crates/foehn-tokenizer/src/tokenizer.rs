//! `Tokenizer`: the one tokenizer type the engine uses, whatever file it came from.

use std::path::Path;

use crate::sentencepiece_model::SentencePieceModel;
use crate::special::{Fragment, SpecialTokens};
use crate::spm::{PieceKind, SpmDecodeState, SpmModel};
use crate::stream::StreamDecoder;
use crate::tekken::TekkenModel;
use crate::{Result, TokenizerError};

/// Options for [`Tokenizer::encode`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Prepend BOS: `None` follows the model's own setting (`add_bos_token`).
    pub add_bos: Option<bool>,
    /// Recognise control-token text such as `<s>` or `[INST]` as those tokens.
    /// Off by default: user text is always plain text.
    pub parse_special: bool,
}

/// Where a tokenizer came from (for messages and for route-specific behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// A Hugging Face `tokenizer.json`.
    HfJson,
    /// A SentencePiece `tokenizer.model`.
    SentencePiece,
    /// Mistral's `tekken.json`.
    Tekken,
    /// GGUF metadata with `tokenizer.ggml.model = llama` (SentencePiece, llama.cpp semantics).
    GgufLlama,
    /// GGUF metadata with `tokenizer.ggml.model = gpt2` (byte-level BPE).
    GgufGpt2,
}

pub(crate) enum Engine {
    Spm(Box<SpmModel>),
    Tekken(Box<TekkenModel>),
    /// A `tokenizers` pipeline; `plain` never parses special tokens, `parsing` does.
    /// `vocab_size` is counted once: `tokenizers` rebuilds its vocabulary map to count it.
    Hf {
        plain: Box<tokenizers::Tokenizer>,
        parsing: Box<tokenizers::Tokenizer>,
        post_processor_adds_bos: bool,
        vocab_size: usize,
    },
}

/// A tokenizer: text ⇄ token ids, with the model's special tokens.
///
/// Built from a `tokenizer.json`, a SentencePiece `tokenizer.model`, a Mistral
/// `tekken.json` ([`Tokenizer::from_file`]) or GGUF metadata
/// ([`Tokenizer::from_gguf`]). `Send + Sync`: share one across sessions.
pub struct Tokenizer {
    pub(crate) engine: Engine,
    pub(crate) kind: TokenizerKind,
    /// Special tokens recognised in text by the Spm and Tekken engines.
    pub(crate) specials: SpecialTokens,
    pub(crate) bos_id: Option<u32>,
    pub(crate) eos_id: Option<u32>,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    pub(crate) chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// Opens a tokenizer file, recognised by its name and content: `*.gguf`
    /// (GGUF metadata), `tokenizer.json`, `tekken*.json`, or a SentencePiece
    /// model (`tokenizer.model`, `*.model.v3`, …).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if name.ends_with(".gguf") {
            let gguf = foehn_loader::gguf::GgufFile::open(path)?;
            return Self::from_gguf(gguf.metadata());
        }
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.into(),
            source,
        })?;
        if bytes.starts_with(b"GGUF") {
            let gguf = foehn_loader::gguf::GgufFile::from_bytes(bytes)?;
            return Self::from_gguf(gguf.metadata());
        }
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'{') {
            /// The top-level keys that tell tekken.json from tokenizer.json.
            #[derive(serde::Deserialize)]
            struct Probe {
                config: Option<serde::de::IgnoredAny>,
                vocab: Option<serde::de::IgnoredAny>,
            }
            let probe: Probe =
                serde_json::from_slice(&bytes).map_err(|e| TokenizerError::BadFile {
                    path: path.into(),
                    reason: format!("invalid JSON: {e}"),
                })?;
            if probe.config.is_some() && probe.vocab.is_some() {
                return Self::tekken_from_model(TekkenModel::from_json(&bytes), path);
            }
            return crate::hf::from_tokenizer_json(&bytes, path);
        }
        Self::from_sentencepiece_bytes(&bytes, path)
    }

    /// Builds a tokenizer from a SentencePiece `ModelProto` (as sentencepiece
    /// encodes: user-defined pieces are matched in text, control pieces never);
    /// `path` names the source in errors.
    pub fn from_sentencepiece_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: String| TokenizerError::BadFile {
            path: path.into(),
            reason,
        };
        let proto = SentencePieceModel::parse(bytes).map_err(|e| bad(e.to_string()))?;
        let n = proto.pieces.len();
        let id_if_valid = |id: i32| u32::try_from(id).ok().filter(|&i| (i as usize) < n);
        let bos_id = id_if_valid(proto.bos_id);
        let eos_id = id_if_valid(proto.eos_id);
        let model = proto.into_spm().map_err(|e| bad(e.to_string()))?;
        let specials = spm_specials(&model, false);
        Ok(Self {
            engine: Engine::Spm(Box::new(model)),
            kind: TokenizerKind::SentencePiece,
            specials,
            bos_id,
            eos_id,
            add_bos: bos_id.is_some(),
            add_eos: false,
            chat_template: None,
        })
    }

    /// Builds a tokenizer from Mistral's `tekken.json` (special-token text in
    /// user input is plain text, as mistral_common encodes it).
    pub fn from_tekken(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::tekken_from_model(TekkenModel::from_file(path), path)
    }

    fn tekken_from_model(
        model: Result<TekkenModel, crate::tekken::TekkenError>,
        path: &Path,
    ) -> Result<Self> {
        let model = model.map_err(|e| TokenizerError::BadFile {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let specials = SpecialTokens::new(
            model
                .special_tokens()
                .map(|(id, t)| (t.to_string(), id, false)),
        );
        let (bos_id, eos_id) = (Some(model.bos_id()), Some(model.eos_id()));
        Ok(Self {
            engine: Engine::Tekken(Box::new(model)),
            kind: TokenizerKind::Tekken,
            specials,
            bos_id,
            eos_id,
            add_bos: true,
            add_eos: false,
            chat_template: None,
        })
    }

    /// Rebuilds the tokenizer stored in GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(meta: &foehn_loader::gguf::Metadata) -> Result<Self> {
        crate::gguf::from_gguf(meta)
    }

    /// Encodes text into token ids.
    ///
    /// Special-token text in `text` is plain text unless `opts.parse_special`;
    /// BOS is prepended when `opts.add_bos` (or, when `None`, the model) says so.
    pub fn encode(&self, text: &str, opts: EncodeOptions) -> Result<Vec<u32>> {
        let add_bos = opts.add_bos.unwrap_or(self.add_bos);
        match &self.engine {
            Engine::Hf {
                plain,
                parsing,
                post_processor_adds_bos,
                ..
            } => {
                let tok = if opts.parse_special { parsing } else { plain };
                // A tokenizer.json post-processor adds BOS (and whatever else the
                // model's template says) itself; otherwise we add it.
                let use_post = *post_processor_adds_bos && add_bos;
                let enc = tok
                    .encode(text, use_post)
                    .map_err(|e| TokenizerError::Hf(e.to_string()))?;
                let mut ids = Vec::with_capacity(enc.get_ids().len() + 2);
                if add_bos && !use_post {
                    ids.extend(self.bos_id);
                }
                ids.extend_from_slice(enc.get_ids());
                if self.add_eos && !use_post {
                    ids.extend(self.eos_id);
                }
                Ok(ids)
            }
            Engine::Spm(_) | Engine::Tekken(_) => {
                let mut ids = Vec::with_capacity(text.len() / 3 + 2);
                if add_bos {
                    ids.extend(self.bos_id);
                }
                for frag in self.specials.split(text, opts.parse_special) {
                    match frag {
                        Fragment::Token(id) => ids.push(id),
                        Fragment::Text(t) => match &self.engine {
                            Engine::Spm(m) => m.encode(t, &mut ids),
                            Engine::Tekken(m) => m.encode(t, &mut ids),
                            Engine::Hf { .. } => unreachable!("handled above"),
                        },
                    }
                }
                if self.add_eos {
                    ids.extend(self.eos_id);
                }
                Ok(ids)
            }
        }
    }

    /// Decodes token ids into text (invalid UTF-8 becomes U+FFFD).
    /// With `skip_special`, control tokens (BOS, EOS, `[INST]`, …) produce no text.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        match &self.engine {
            Engine::Hf { plain, .. } => {
                self.check_ids(ids)?;
                plain
                    .decode(ids, skip_special)
                    .map_err(|e| TokenizerError::Hf(e.to_string()))
            }
            _ => {
                let mut bytes = Vec::with_capacity(ids.len() * 4);
                let mut state = SpmDecodeState::default();
                for &id in ids {
                    self.append_token_bytes(id, skip_special, &mut state, &mut bytes)?;
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }

    /// The text one token stands for inside running text (`" the"` for `▁the`),
    /// for listings; a lone byte of a longer character shows as U+FFFD.
    pub fn token_text(&self, id: u32) -> Result<String> {
        if !self.decodes_by_bytes() {
            return self.decode(&[id], false);
        }
        let mut bytes = Vec::new();
        self.append_token_bytes(id, false, &mut SpmDecodeState::mid_text(), &mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// An incremental decoder for streaming generation (see [`StreamDecoder`]).
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder::new(self, skip_special)
    }

    /// Whether this tokenizer's tokens are byte strings decoded by us (rather
    /// than by a `tokenizers` decoder pipeline).
    pub(crate) fn decodes_by_bytes(&self) -> bool {
        !matches!(self.engine, Engine::Hf { .. })
    }

    /// Appends the bytes of one token; `state` carries SentencePiece's
    /// dummy-prefix rule across the tokens of one sequence.
    pub(crate) fn append_token_bytes(
        &self,
        id: u32,
        skip_special: bool,
        state: &mut SpmDecodeState,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.check_ids(&[id])?;
        match &self.engine {
            Engine::Spm(m) => m.decode_piece(id, state, !skip_special, out),
            Engine::Tekken(m) => match m.token_bytes(id) {
                Some(b) => out.extend_from_slice(b),
                None if !skip_special => {
                    if let Some((_, t)) = m.special_tokens().find(|&(sid, _)| sid == id) {
                        out.extend_from_slice(t.as_bytes());
                    }
                }
                None => {}
            },
            Engine::Hf { plain, .. } => {
                let s = plain
                    .decode(&[id], skip_special)
                    .map_err(|e| TokenizerError::Hf(e.to_string()))?;
                out.extend_from_slice(s.as_bytes());
            }
        }
        Ok(())
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab_size = self.vocab_size();
        match ids.iter().find(|&&id| id as usize >= vocab_size) {
            Some(&id) => Err(TokenizerError::InvalidId { id, vocab_size }),
            None => Ok(()),
        }
    }

    /// Number of token ids (including special tokens).
    pub fn vocab_size(&self) -> usize {
        match &self.engine {
            Engine::Spm(m) => m.len(),
            Engine::Tekken(m) => m.vocab_size(),
            Engine::Hf { vocab_size, .. } => *vocab_size,
        }
    }

    /// The token's text as the vocabulary stores it (`▁the`, `<0x0A>`, `<s>`, `Ġthe`, …).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.engine {
            Engine::Spm(m) => m.piece(id).map(str::to_string),
            Engine::Tekken(m) => match m.token_bytes(id) {
                Some(b) => Some(String::from_utf8_lossy(b).into_owned()),
                None => m
                    .special_tokens()
                    .find(|&(sid, _)| sid == id)
                    .map(|(_, t)| t.to_string()),
            },
            Engine::Hf { plain, .. } => plain.id_to_token(id),
        }
    }

    /// The id of a token given its vocabulary text (e.g. `[INST]`, `<|im_end|>`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.engine {
            Engine::Spm(m) => m.piece_to_id(token),
            Engine::Tekken(m) => m.special_id(token),
            Engine::Hf { plain, .. } => plain.token_to_id(token),
        }
    }

    /// Whether the id is a control token (BOS, EOS, `[INST]`, `<|im_end|>`, …):
    /// text that only the template or the engine produces, skipped by `decode(.., true)`.
    pub fn is_control(&self, id: u32) -> bool {
        match &self.engine {
            Engine::Spm(m) => m.kind(id) == Some(PieceKind::Control),
            Engine::Tekken(m) => (id as usize) < m.num_special_tokens(),
            Engine::Hf { plain, .. } => plain
                .id_to_token(id)
                .is_some_and(|t| plain.get_added_vocabulary().is_special_token(&t)),
        }
    }

    /// The unknown token, if the vocabulary has one.
    pub fn unk_id(&self) -> Option<u32> {
        match &self.engine {
            Engine::Spm(m) => m.unk_id(),
            Engine::Tekken(m) => Some(m.unk_id()),
            Engine::Hf { plain, .. } => plain.token_to_id("<unk>"),
        }
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The end-of-sequence token, if the model has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether `encode` adds BOS by default (the model's `add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The chat template shipped with the tokenizer (Jinja text, or a llama.cpp template name).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Which kind of file this tokenizer was built from.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// The instruct version a `tekken.json` declares (`"version": "v13"` → 13);
    /// `None` for other tokenizers and Tekken files without one.
    pub fn tekken_version(&self) -> Option<u32> {
        match &self.engine {
            Engine::Tekken(m) => m.version(),
            _ => None,
        }
    }
}

/// Special tokens of a SentencePiece vocabulary: control and unknown pieces
/// (parsed only on request) and, for llama.cpp semantics (`user_defined_always`),
/// user-defined pieces (always).
pub(crate) fn spm_specials(model: &SpmModel, user_defined_always: bool) -> SpecialTokens {
    SpecialTokens::new((0..model.len() as u32).filter_map(|id| {
        let always = match model.kind(id)? {
            PieceKind::Control | PieceKind::Unknown => false,
            PieceKind::UserDefined if user_defined_always => true,
            _ => return None,
        };
        Some((model.piece(id)?.to_string(), id, always))
    }))
}
