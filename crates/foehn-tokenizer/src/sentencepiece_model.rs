//! Reader for sentencepiece's `tokenizer.model`: a `ModelProto` protobuf, read by hand.
//!
//! Only the fields encoding needs are kept; every other field, of any wire type, is skipped.
//! Every length is checked against the bytes left, so a malformed file gives an error, never a
//! panic, a huge allocation or a hang.

use super::spm::{PieceKind, SpmError, SpmModel, SpmOptions};
use std::collections::HashSet;

/// `TrainerSpec.model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    /// Unigram language model, Viterbi segmentation (1, the protobuf default).
    Unigram,
    /// Byte-pair encoding by piece scores (2).
    Bpe,
    /// Whitespace-delimited words (3).
    Word,
    /// One piece per character (4).
    Char,
    /// Any other value.
    Other(i32),
}

impl ModelType {
    fn from_i32(v: i32) -> Self {
        match v {
            1 => Self::Unigram,
            2 => Self::Bpe,
            3 => Self::Word,
            4 => Self::Char,
            v => Self::Other(v),
        }
    }
}

/// The parts of a sentencepiece `ModelProto` that encoding and decoding need.
#[derive(Clone, Debug, PartialEq)]
pub struct SentencePieceModel {
    /// `pieces`: (text, score, type), in id order.
    pub pieces: Vec<(String, f32, PieceKind)>,
    /// `trainer_spec.model_type` (default Unigram).
    pub model_type: ModelType,
    /// `trainer_spec.byte_fallback` (default false).
    pub byte_fallback: bool,
    /// `trainer_spec.unk_id` (default 0).
    pub unk_id: i32,
    /// `trainer_spec.bos_id` (default 1; -1 means none).
    pub bos_id: i32,
    /// `trainer_spec.eos_id` (default 2; -1 means none).
    pub eos_id: i32,
    /// `trainer_spec.pad_id` (default -1, none).
    pub pad_id: i32,
    /// `trainer_spec.treat_whitespace_as_suffix` (default false).
    pub treat_whitespace_as_suffix: bool,
    /// `normalizer_spec.name` (e.g. "identity", "nmt_nfkc").
    pub normalizer_name: String,
    /// `normalizer_spec.add_dummy_prefix` (default true).
    pub add_dummy_prefix: bool,
    /// `normalizer_spec.remove_extra_whitespaces` (default true).
    pub remove_extra_whitespaces: bool,
    /// `normalizer_spec.escape_whitespaces` (default true).
    pub escape_whitespaces: bool,
    /// Whether `normalizer_spec.precompiled_charsmap` is non-empty (a real normalizer, not identity).
    pub has_precompiled_charsmap: bool,
}

impl Default for SentencePieceModel {
    /// The protobuf defaults of every field.
    fn default() -> Self {
        Self {
            pieces: Vec::new(),
            model_type: ModelType::Unigram,
            byte_fallback: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            treat_whitespace_as_suffix: false,
            normalizer_name: String::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
            has_precompiled_charsmap: false,
        }
    }
}

// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// How deeply groups may nest inside skipped fields (protobuf's own recursion limit is 100).
const MAX_GROUP_DEPTH: usize = 64;

impl SentencePieceModel {
    /// Reads a serialized `ModelProto` (the bytes of a `tokenizer.model` file).
    pub fn parse(bytes: &[u8]) -> Result<Self, SpmError> {
        let mut model = Self::default();
        let mut r = Reader::new(bytes, 0);
        while let Some((field, wire)) = r.key()? {
            match (field, wire) {
                (1, LEN) => {
                    let mut sub = r.message()?;
                    let index = model.pieces.len();
                    model.pieces.push(parse_piece(&mut sub, index)?);
                }
                (2, LEN) => model.parse_trainer_spec(&mut r.message()?)?,
                (3, LEN) => model.parse_normalizer_spec(&mut r.message()?)?,
                _ => r.skip(field, wire)?,
            }
        }
        Ok(model)
    }

    /// Merges a `TrainerSpec` into `self` (a repeated embedded message merges, as protobuf does).
    fn parse_trainer_spec(&mut self, r: &mut Reader<'_>) -> Result<(), SpmError> {
        while let Some((field, wire)) = r.key()? {
            match (field, wire) {
                (3, VARINT) => self.model_type = ModelType::from_i32(r.varint()? as i32),
                (24, VARINT) => self.treat_whitespace_as_suffix = r.varint()? != 0,
                (35, VARINT) => self.byte_fallback = r.varint()? != 0,
                (40, VARINT) => self.unk_id = r.varint()? as i32,
                (41, VARINT) => self.bos_id = r.varint()? as i32,
                (42, VARINT) => self.eos_id = r.varint()? as i32,
                (43, VARINT) => self.pad_id = r.varint()? as i32,
                _ => r.skip(field, wire)?,
            }
        }
        Ok(())
    }

    /// Merges a `NormalizerSpec` into `self`.
    fn parse_normalizer_spec(&mut self, r: &mut Reader<'_>) -> Result<(), SpmError> {
        while let Some((field, wire)) = r.key()? {
            match (field, wire) {
                (1, LEN) => {
                    let at = r.offset();
                    self.normalizer_name =
                        String::from_utf8(r.bytes()?.to_vec()).map_err(|_| SpmError::Protobuf {
                            offset: at,
                            reason: "normalizer name is not UTF-8",
                        })?;
                }
                (2, LEN) => self.has_precompiled_charsmap = !r.bytes()?.is_empty(),
                (3, VARINT) => self.add_dummy_prefix = r.varint()? != 0,
                (4, VARINT) => self.remove_extra_whitespaces = r.varint()? != 0,
                (5, VARINT) => self.escape_whitespaces = r.varint()? != 0,
                _ => r.skip(field, wire)?,
            }
        }
        Ok(())
    }

    /// Checks the model the way sentencepiece's `ModelInterface::InitializePieces` does and builds
    /// the encoder; refuses what this engine does not implement (UNIGRAM/WORD/CHAR models, a
    /// precompiled normalization charsmap, unescaped whitespace, whitespace as suffix).
    ///
    /// Only the charsmap decides normalization at run time (sentencepiece compiles every named rule
    /// into it), so an empty charsmap is the identity normalizer whatever the name says.
    pub fn into_spm(self) -> Result<SpmModel, SpmError> {
        match self.model_type {
            ModelType::Bpe => {}
            ModelType::Unigram => {
                return Err(SpmError::Unsupported(
                    "unigram sentencepiece models are not supported yet".into(),
                ))
            }
            ModelType::Word => {
                return Err(SpmError::Unsupported(
                    "word sentencepiece models are not supported".into(),
                ))
            }
            ModelType::Char => {
                return Err(SpmError::Unsupported(
                    "char sentencepiece models are not supported".into(),
                ))
            }
            ModelType::Other(t) => {
                return Err(SpmError::Unsupported(format!(
                    "sentencepiece model type {t} is not supported"
                )))
            }
        }
        if self.has_precompiled_charsmap {
            return Err(SpmError::Unsupported(format!(
                "sentencepiece normalizer {:?} (precompiled charsmap) is not supported; only identity is",
                self.normalizer_name
            )));
        }
        if !self.escape_whitespaces {
            return Err(SpmError::Unsupported(
                "sentencepiece models with escape_whitespaces=false are not supported".into(),
            ));
        }
        if self.treat_whitespace_as_suffix {
            return Err(SpmError::Unsupported(
                "sentencepiece models with treat_whitespace_as_suffix=true are not supported"
                    .into(),
            ));
        }

        let mut mergeable = HashSet::new();
        let mut reserved = HashSet::new();
        let mut unk = None;
        let mut bytes_found = [false; 256];
        for (i, (piece, _, kind)) in self.pieces.iter().enumerate() {
            if piece.is_empty() {
                return Err(SpmError::InvalidModel(format!("piece {i} is empty")));
            }
            let set = if matches!(
                kind,
                PieceKind::Normal | PieceKind::UserDefined | PieceKind::Unused
            ) {
                &mut mergeable
            } else {
                &mut reserved
            };
            if !set.insert(piece.as_str()) {
                return Err(SpmError::InvalidModel(format!(
                    "piece {piece:?} is defined twice"
                )));
            }
            match kind {
                PieceKind::Unknown if unk.is_some() => {
                    return Err(SpmError::InvalidModel(format!(
                        "a second unknown piece {piece:?} (id {i})"
                    )))
                }
                PieceKind::Unknown => unk = Some(i as u32),
                PieceKind::Byte => {
                    if !self.byte_fallback {
                        return Err(SpmError::InvalidModel(format!(
                            "byte piece {piece:?} although byte_fallback is false"
                        )));
                    }
                    match canonical_byte_piece(piece) {
                        Some(b) => bytes_found[b as usize] = true,
                        None => {
                            return Err(SpmError::InvalidModel(format!(
                                "byte piece {piece:?} is not <0xNN>"
                            )))
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(unk) = unk else {
            return Err(SpmError::InvalidModel("no unknown piece".into()));
        };
        if self.byte_fallback && bytes_found.contains(&false) {
            return Err(SpmError::InvalidModel(
                "byte_fallback is true but there are not 256 byte pieces".into(),
            ));
        }

        let opts = SpmOptions {
            add_dummy_prefix: self.add_dummy_prefix,
            remove_extra_whitespaces: self.remove_extra_whitespaces,
            match_user_defined: true,
        };
        let n = self.pieces.len();
        let (mut texts, mut scores, mut kinds) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (text, score, kind) in self.pieces {
            texts.push(text);
            scores.push(score);
            kinds.push(kind);
        }
        let mut model = SpmModel::new(texts, scores, kinds, Some(unk), opts)?;
        model.set_byte_fallback(self.byte_fallback);
        Ok(model)
    }
}

/// `<0xNN>` with upper-case hex, the only spelling sentencepiece's `PieceToByte` accepts.
fn canonical_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Reads one `SentencePiece` message: piece = 1, score = 2, type = 3.
fn parse_piece(r: &mut Reader<'_>, index: usize) -> Result<(String, f32, PieceKind), SpmError> {
    let mut piece = String::new();
    let mut score = 0.0f32;
    let mut kind = PieceKind::Normal;
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, LEN) => {
                let at = r.offset();
                piece = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| SpmError::Protobuf {
                    offset: at,
                    reason: "piece text is not UTF-8",
                })?;
            }
            (2, FIXED32) => score = f32::from_bits(r.fixed32()?),
            (3, VARINT) => {
                let t = r.varint()? as i32;
                kind = PieceKind::from_type(t as i64).ok_or_else(|| {
                    SpmError::InvalidModel(format!("piece {index} has unknown type {t}"))
                })?;
            }
            _ => r.skip(field, wire)?,
        }
    }
    Ok((piece, score, kind))
}

/// A cursor over protobuf bytes; `base` is where `buf` starts in the file, for error offsets.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn err(&self, reason: &'static str) -> SpmError {
        SpmError::Protobuf {
            offset: self.offset(),
            reason,
        }
    }

    fn varint(&mut self) -> Result<u64, SpmError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize, reason: &'static str) -> Result<&'a [u8], SpmError> {
        if n > self.buf.len() - self.pos {
            return Err(self.err(reason));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn fixed32(&mut self) -> Result<u32, SpmError> {
        let s = self.take(4, "truncated fixed32")?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// A length-delimited payload.
    fn bytes(&mut self) -> Result<&'a [u8], SpmError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| self.err("length exceeds the input"))?;
        self.take(len, "length exceeds the input")
    }

    /// A length-delimited embedded message, as a reader of its own.
    fn message(&mut self) -> Result<Reader<'a>, SpmError> {
        let len = self.varint()?;
        let base = self.offset();
        let len = usize::try_from(len).map_err(|_| self.err("length exceeds the input"))?;
        Ok(Reader::new(
            self.take(len, "length exceeds the input")?,
            base,
        ))
    }

    /// The next field key as (field number, wire type), `None` at the end of the message.
    fn key(&mut self) -> Result<Option<(u32, u8)>, SpmError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let at = self.offset();
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > (1 << 29) - 1 {
            return Err(SpmError::Protobuf {
                offset: at,
                reason: "invalid field number",
            });
        }
        Ok(Some((field as u32, (key & 7) as u8)))
    }

    /// Skips the value of a field whose key was just read.
    fn skip(&mut self, field: u32, wire: u8) -> Result<(), SpmError> {
        self.skip_value(field, wire, 0)
    }

    fn skip_value(&mut self, field: u32, wire: u8, depth: usize) -> Result<(), SpmError> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8, "truncated fixed64").map(drop),
            LEN => self.bytes().map(drop),
            FIXED32 => self.take(4, "truncated fixed32").map(drop),
            START_GROUP => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(self.err("groups nested too deeply"));
                }
                loop {
                    let Some((f, w)) = self.key()? else {
                        return Err(self.err("unterminated group"));
                    };
                    if w == END_GROUP {
                        if f != field {
                            return Err(self.err("mismatched end of group"));
                        }
                        return Ok(());
                    }
                    self.skip_value(f, w, depth + 1)?;
                }
            }
            END_GROUP => Err(self.err("end of group without a start")),
            _ => Err(self.err("invalid wire type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Where the test inputs live; the one place to change when they move.
    fn test_file(name: &str) -> PathBuf {
        let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
        let pypi = |spec| foehn_hub::pypi_file(spec).expect("fetching the mistral-common wheel");
        match name {
            "v1.model" => pypi(&foehn_hub::known::MISTRAL_TOKENIZER_V1),
            "v3.model" => pypi(&foehn_hub::known::MISTRAL_TOKENIZER_V3),
            "v7.model" => pypi(&foehn_hub::known::MISTRAL_TOKENIZER_V7),
            "tiny.model" => repo.join("tests/fixtures/tiny-mistral/hf/tokenizer.model"),
            "vocab_check.json" => repo.join("tests/fixtures/vocab/vocab_check.json"),
            jsonl => repo.join("tests/fixtures/tokenizers").join(jsonl),
        }
    }

    /// The bytes of a test input (always `Some`: a missing input fails the test).
    fn read_test_file(name: &str) -> Option<Vec<u8>> {
        let path = test_file(name);
        Some(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    fn load(model: &str) -> Option<SpmModel> {
        let bytes = read_test_file(model)?;
        Some(
            SentencePieceModel::parse(&bytes)
                .unwrap()
                .into_spm()
                .unwrap(),
        )
    }

    /// Every line of `jsonl`: ids byte-exact, and both decodings equal `decoded`.
    fn check_jsonl(model: &str, jsonl: &str) {
        let Some(m) = load(model) else { return };
        let lines = String::from_utf8(read_test_file(jsonl).expect("ground-truth jsonl")).unwrap();
        let (mut n, mut exact) = (0, 0);
        let mut failures = Vec::new();
        for line in lines.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["text"].as_str().unwrap();
            let want: Vec<u32> = v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let decoded = v["decoded"].as_str().unwrap();
            let mut got = Vec::new();
            m.encode(text, &mut got);
            n += 1;
            if got == want {
                exact += 1;
            } else {
                failures.push(format!("{}: got {got:?} want {want:?}", v["key"]));
            }
            assert_eq!(m.decode(&want), decoded, "decode {}", v["key"]);
            let mut bytes: Vec<u8> = want
                .iter()
                .flat_map(|&id| m.token_bytes(id).unwrap().to_vec())
                .collect();
            if m.options().add_dummy_prefix && bytes.first() == Some(&b' ') {
                bytes.remove(0);
            }
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                decoded,
                "token_bytes {}",
                v["key"]
            );
        }
        eprintln!("{jsonl}: {exact}/{n} exact");
        assert!(
            failures.is_empty(),
            "{jsonl}: {exact}/{n} exact\n{}",
            failures.join("\n")
        );
        assert!(n >= 100, "{jsonl}: only {n} lines");
    }

    #[test]
    fn mistral_v1_matches_sentencepiece() {
        check_jsonl("v1.model", "mistral_v1_spm.jsonl");
    }

    #[test]
    fn mistral_v3_matches_sentencepiece() {
        check_jsonl("v3.model", "mistral_v3_spm.jsonl");
    }

    #[test]
    fn mistral_v7_matches_sentencepiece() {
        check_jsonl("v7.model", "mistral_v7_spm.jsonl");
    }

    #[test]
    fn tiny_mistral_matches_sentencepiece() {
        assert!(
            test_file("tiny.model").exists(),
            "the tiny-mistral fixture is part of the repo"
        );
        check_jsonl("tiny.model", "tiny_mistral_spm.jsonl");
    }

    /// The GGUF route (user-defined pieces as ordinary pieces) gives llama.cpp's ids.
    #[test]
    fn v3_without_user_defined_matching_matches_llama_cpp() {
        let Some(bytes) = read_test_file("v3.model") else {
            return;
        };
        let proto = SentencePieceModel::parse(&bytes).unwrap();
        let (mut texts, mut scores, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
        for (t, s, k) in proto.pieces {
            texts.push(t);
            scores.push(s);
            kinds.push(k);
        }
        let opts = SpmOptions {
            add_dummy_prefix: true,
            remove_extra_whitespaces: false,
            match_user_defined: false,
        };
        let m = SpmModel::new(texts, scores, kinds, Some(0), opts).unwrap();
        let check: serde_json::Value =
            serde_json::from_slice(&read_test_file("vocab_check.json").expect("vocab_check.json"))
                .unwrap();
        let mismatches = check["mistral-v3-spm.gguf"]["mismatches"]
            .as_array()
            .unwrap();
        assert_eq!(mismatches.len(), 2);
        for mm in mismatches {
            let want: Vec<u32> = mm["llama_cpp"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let mut got = Vec::new();
            m.encode(mm["text"].as_str().unwrap(), &mut got);
            assert_eq!(got, want, "{}", mm["key"]);
        }
        // Everything else is the same as sentencepiece.
        let lines = String::from_utf8(read_test_file("mistral_v3_spm.jsonl").unwrap()).unwrap();
        for line in lines.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if mismatches.iter().any(|mm| mm["key"] == v["key"]) {
                continue;
            }
            let want: Vec<u32> = v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let mut got = Vec::new();
            m.encode(v["text"].as_str().unwrap(), &mut got);
            assert_eq!(got, want, "{}", v["key"]);
        }
    }

    #[test]
    fn reads_the_model_fields() {
        let Some(bytes) = read_test_file("v7.model") else {
            return;
        };
        let m = SentencePieceModel::parse(&bytes).unwrap();
        assert_eq!(m.pieces.len(), 32768);
        assert_eq!(m.model_type, ModelType::Bpe);
        assert!(m.byte_fallback);
        assert_eq!((m.unk_id, m.bos_id, m.eos_id, m.pad_id), (0, 1, 2, -1));
        assert_eq!(m.normalizer_name, "identity");
        assert!(m.add_dummy_prefix && !m.remove_extra_whitespaces && m.escape_whitespaces);
        assert!(!m.has_precompiled_charsmap && !m.treat_whitespace_as_suffix);
        assert_eq!(m.pieces[0], ("<unk>".to_string(), 0.0, PieceKind::Unknown));
        assert_eq!(m.pieces[1].2, PieceKind::Control);
        assert!(m
            .pieces
            .iter()
            .any(|p| p.0 == "[REF]" && p.2 == PieceKind::UserDefined));
        assert_eq!(
            m.pieces.iter().filter(|p| p.2 == PieceKind::Byte).count(),
            256
        );
    }

    /// A hand-made `ModelProto` with unknown fields of every wire type in every message.
    fn handmade() -> Vec<u8> {
        fn key(field: u32, wire: u8) -> Vec<u8> {
            varint(((field as u64) << 3) | wire as u64)
        }
        fn varint(mut v: u64) -> Vec<u8> {
            let mut out = Vec::new();
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    out.push(b);
                    return out;
                }
                out.push(b | 0x80);
            }
        }
        fn len_field(field: u32, payload: &[u8]) -> Vec<u8> {
            [
                key(field, LEN),
                varint(payload.len() as u64),
                payload.to_vec(),
            ]
            .concat()
        }
        fn junk() -> Vec<u8> {
            [
                key(100, VARINT),
                varint(u64::MAX),
                key(101, FIXED64),
                vec![1; 8],
                key(102, FIXED32),
                vec![2; 4],
                len_field(103, b"skip me"),
                key(104, START_GROUP),
                key(1, VARINT),
                varint(5),
                key(2, START_GROUP),
                key(2, END_GROUP),
                key(104, END_GROUP),
            ]
            .concat()
        }
        fn piece(text: &str, score: f32, kind: Option<i32>) -> Vec<u8> {
            let mut p = [
                len_field(1, text.as_bytes()),
                key(2, FIXED32),
                score.to_le_bytes().to_vec(),
                junk(),
            ]
            .concat();
            if let Some(k) = kind {
                p.extend([key(3, VARINT), varint(k as i64 as u64)].concat());
            }
            p
        }
        let mut pieces: Vec<(String, f32, Option<i32>)> = vec![
            ("<unk>".into(), 0.0, Some(2)),
            ("<s>".into(), 0.0, Some(3)),
            ("</s>".into(), 0.0, Some(3)),
        ];
        for b in 0..=255u8 {
            pieces.push((format!("<0x{b:02X}>"), 0.0, Some(6)));
        }
        for (i, p) in ["▁", "a", "b", "ab", "▁ab"].iter().enumerate() {
            pieces.push((p.to_string(), -(i as f32), None));
        }
        pieces.push(("<X>".into(), 0.0, Some(4)));
        let trainer = [
            key(3, VARINT),
            varint(2),
            junk(),
            key(35, VARINT),
            varint(1),
            key(43, VARINT),
            varint(-1i64 as u64),
            key(41, VARINT),
            varint(1),
        ]
        .concat();
        let normalizer = [len_field(1, b"identity"), key(4, VARINT), varint(0), junk()].concat();
        let mut out = junk();
        for (t, s, k) in &pieces {
            out.extend(len_field(1, &piece(t, *s, *k)));
        }
        out.extend(len_field(2, &trainer));
        out.extend(junk());
        out.extend(len_field(3, &normalizer));
        out
    }

    #[test]
    fn skips_unknown_fields_of_every_wire_type() {
        let m = SentencePieceModel::parse(&handmade()).unwrap();
        assert_eq!(m.pieces.len(), 3 + 256 + 5 + 1);
        assert_eq!(
            m.pieces[3 + 256 + 3],
            ("ab".to_string(), -3.0, PieceKind::Normal)
        );
        assert_eq!(m.model_type, ModelType::Bpe);
        assert!(m.byte_fallback && m.add_dummy_prefix && !m.remove_extra_whitespaces);
        assert_eq!((m.unk_id, m.bos_id, m.eos_id, m.pad_id), (0, 1, 2, -1));
        let spm = m.into_spm().unwrap();
        let mut ids = Vec::new();
        spm.encode("ab<X>", &mut ids);
        let names: Vec<&str> = ids.iter().map(|&i| spm.piece(i).unwrap()).collect();
        assert_eq!(names, ["▁ab", "<X>"]);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let inputs: Vec<Vec<u8>> = vec![
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], // length far past the end
            vec![
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ], // length near u64::MAX
            vec![0x80; 11],                           // endless varint
            vec![0x00, 0x01],                         // field 0
            vec![0x0e],                               // wire type 6
            vec![0x0c],                               // end group without start
            vec![0x0b; 200],                          // deeply nested groups
            vec![0x0b, 0x08, 0x01],                   // unterminated group
            vec![0x0a, 0x02, 0x0a, 0x05],             // piece text past the end of the piece
            vec![0x0a, 0x03, 0x0a, 0x01, 0xff],       // piece text not UTF-8
            vec![0x0a, 0x02, 0x18, 0x09],             // unknown piece type
        ];
        for bytes in &inputs {
            assert!(SentencePieceModel::parse(bytes).is_err(), "{bytes:02x?}");
        }
        let real = read_test_file("tiny.model").expect("tiny-mistral tokenizer.model");
        // Every truncation of a real model either parses (at a field boundary) or errors.
        let step = (real.len() / 3000).max(1);
        for cut in (0..real.len())
            .step_by(step)
            .chain(real.len() - 64..real.len())
        {
            if let Ok(m) = SentencePieceModel::parse(&real[..cut]) {
                let _ = m.into_spm();
            }
        }
        // Flipping bytes must not panic either.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bytes = real.clone();
            let at = (seed as usize) % bytes.len();
            bytes[at] = (seed >> 32) as u8;
            if let Ok(spm) =
                SentencePieceModel::parse(&bytes).and_then(SentencePieceModel::into_spm)
            {
                let mut ids = Vec::new();
                spm.encode("Hello world", &mut ids);
            }
        }
        assert!(SentencePieceModel::parse(&[]).unwrap().pieces.is_empty());
    }

    #[test]
    fn into_spm_refuses_what_is_not_implemented() {
        let base = SentencePieceModel::parse(&handmade()).unwrap();
        let err = |m: SentencePieceModel| m.into_spm().unwrap_err().to_string();
        let m = SentencePieceModel {
            model_type: ModelType::Unigram,
            ..base.clone()
        };
        assert_eq!(err(m), "unigram sentencepiece models are not supported yet");
        let m = SentencePieceModel {
            has_precompiled_charsmap: true,
            normalizer_name: "nmt_nfkc".into(),
            ..base.clone()
        };
        assert!(err(m).contains("nmt_nfkc"));
        let m = SentencePieceModel {
            byte_fallback: false,
            ..base.clone()
        };
        assert!(err(m).contains("byte_fallback"));
        let mut m = base.clone();
        m.pieces[0].2 = PieceKind::Normal;
        assert!(err(m).contains("no unknown piece"));
        let mut m = base.clone();
        m.pieces.pop();
        m.pieces.push(("ab".into(), 0.0, PieceKind::Normal));
        assert!(err(m).contains("defined twice"));
        let mut m = base.clone();
        m.pieces.retain(|p| p.0 != "<0x41>");
        assert!(err(m).contains("256 byte pieces"));
    }
}
