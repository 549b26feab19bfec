//! Each token's bytes, for code that works on the vocabulary as byte strings
//! (constrained decoding builds its token trie from them).

use std::collections::HashMap;

use tokenizers::DecoderWrapper;

use crate::tokenizer::{Engine, Tokenizer};

/// How a `tokenizers` vocabulary spells bytes in its token strings.
enum Spelling {
    /// GPT-2's byte-level alphabet: each byte is one printable character.
    ByteLevel(HashMap<char, u8>),
    /// SentencePiece-style: `▁` is a space, `<0xNN>` a byte, the rest UTF-8.
    Metaspace,
}

impl Tokenizer {
    /// The bytes of every token as it appears inside running text (`" the"`
    /// for `▁the` or `Ġthe`; one raw byte for `<0x0A>` or a byte-level piece),
    /// indexed by id; `None` for control tokens (BOS, EOS, `<|im_end|>`, …),
    /// which stand for no text.
    pub fn token_bytes_table(&self) -> Vec<Option<Vec<u8>>> {
        let n = self.vocab_size() as u32;
        match &self.engine {
            Engine::Spm(_) | Engine::Tekken(_) => (0..n)
                .map(|id| {
                    let mut bytes = Vec::new();
                    let mut state = crate::spm::SpmDecodeState::mid_text();
                    let special = self.is_control(id);
                    (!special
                        && self
                            .append_token_bytes(id, true, &mut state, &mut bytes)
                            .is_ok())
                    .then_some(bytes)
                })
                .collect(),
            Engine::Hf { plain, .. } => {
                let spelling = if decodes_byte_level(plain.get_decoder()) {
                    Spelling::ByteLevel(byte_level_alphabet())
                } else {
                    Spelling::Metaspace
                };
                let added = plain.get_added_tokens_decoder();
                (0..n)
                    .map(|id| {
                        if self.is_control(id) {
                            return None;
                        }
                        if let Some(token) = added.get(&id) {
                            return Some(token.content.as_bytes().to_vec());
                        }
                        plain.id_to_token(id).map(|t| spell(&t, &spelling))
                    })
                    .collect()
            }
        }
    }
}

/// Whether the decoder (or one in its sequence) is byte-level.
fn decodes_byte_level(decoder: Option<&DecoderWrapper>) -> bool {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => true,
        Some(DecoderWrapper::Sequence(seq)) => seq
            .get_decoders()
            .iter()
            .any(|d| decodes_byte_level(Some(d))),
        _ => false,
    }
}

/// The bytes a vocabulary string stands for.
fn spell(token: &str, spelling: &Spelling) -> Vec<u8> {
    match spelling {
        Spelling::ByteLevel(alphabet) => {
            // A character outside the alphabet (none in a well-formed
            // vocabulary) is kept as its UTF-8.
            let mut out = Vec::with_capacity(token.len());
            for c in token.chars() {
                match alphabet.get(&c) {
                    Some(&b) => out.push(b),
                    None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            out
        }
        Spelling::Metaspace => {
            if let Some(byte) = token
                .strip_prefix("<0x")
                .and_then(|h| h.strip_suffix('>'))
                .filter(|h| h.len() == 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                return vec![byte];
            }
            token.replace('\u{2581}', " ").into_bytes()
        }
    }
}

/// GPT-2's map from the printable characters of byte-level BPE to bytes:
/// printable Latin-1 bytes stand for themselves, the others for 256 + n.
fn byte_level_alphabet() -> HashMap<char, u8> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
                next += 1;
                c
            };
            (c, b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_level_alphabet_maps_space_and_newline_as_gpt2_does() {
        let a = byte_level_alphabet();
        assert_eq!(a.len(), 256);
        assert_eq!(a[&'Ġ'], b' ');
        assert_eq!(a[&'Ċ'], b'\n');
        assert_eq!(a[&'a'], b'a');
        assert_eq!(spell("Ġthe", &Spelling::ByteLevel(a)), b" the");
    }

    /// Each fixture vocabulary's token bytes, in order, spell the text the
    /// tokens encode (after SentencePiece's dummy-prefix space).
    #[test]
    fn token_bytes_spell_encoded_text() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vocab");
        let text = "Hello, wörld! {\"a\": [1, 22]}\n\ttabs 🙂";
        for file in [
            "smollm2-bpe.gguf",
            "mistral-v3-spm.gguf",
            "../tiny-mistral/hf/tokenizer.json",
        ] {
            let tok = Tokenizer::from_file(dir.join(file)).unwrap();
            let table = tok.token_bytes_table();
            assert_eq!(table.len(), tok.vocab_size());
            let ids = tok
                .encode(
                    text,
                    crate::EncodeOptions {
                        add_bos: Some(false),
                        parse_special: false,
                    },
                )
                .unwrap();
            let bytes: Vec<u8> = ids
                .iter()
                .flat_map(|&id| table[id as usize].clone().unwrap())
                .collect();
            let spelled = String::from_utf8(bytes).unwrap();
            assert_eq!(
                spelled.strip_prefix(' ').unwrap_or(&spelled),
                text,
                "{file}"
            );
            for id in [tok.eos_id(), tok.bos_id()].into_iter().flatten() {
                assert_eq!(table[id as usize], None, "{file}: control token {id}");
            }
        }
    }

    #[test]
    fn metaspace_pieces_spell_spaces_and_bytes() {
        assert_eq!(spell("▁the", &Spelling::Metaspace), b" the");
        assert_eq!(spell("<0x0A>", &Spelling::Metaspace), b"\n");
        assert_eq!(spell("<0xZZ>", &Spelling::Metaspace), b"<0xZZ>");
    }
}
