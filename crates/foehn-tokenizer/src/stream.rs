//! Incremental detokenization: text comes out as soon as it is complete UTF-8,
//! never as broken characters, and no byte is dropped.

use crate::spm::SpmDecodeState;
use crate::{Result, Tokenizer};

/// Turns a stream of token ids into text pieces.
///
/// Bytes of a character split across tokens (byte-fallback pieces, byte-level
/// BPE) are held back until the character is complete; [`StreamDecoder::finish`]
/// flushes whatever is left (an incomplete sequence becomes U+FFFD, as a lossy
/// decode of the whole sequence would give).
///
/// It does not borrow the tokenizer (so a generation can own both): pass the
/// same tokenizer to every call.
pub struct StreamDecoder {
    skip_special: bool,
    state: State,
}

enum State {
    /// Engines whose tokens are byte strings (SentencePiece, Tekken).
    Bytes {
        pending: Vec<u8>,
        state: SpmDecodeState,
    },
    /// `tokenizers`-library engines: decode a sliding window of ids and emit the
    /// new suffix once it no longer ends in U+FFFD (as `tokenizers::DecodeStream`
    /// does, plus a flush at the end).
    Window {
        ids: Vec<u32>,
        prefix: String,
        prefix_index: usize,
    },
}

impl StreamDecoder {
    pub(crate) fn new(tok: &Tokenizer, skip_special: bool) -> Self {
        let state = if tok.decodes_by_bytes() {
            State::Bytes {
                pending: Vec::new(),
                state: SpmDecodeState::default(),
            }
        } else {
            State::Window {
                ids: Vec::new(),
                prefix: String::new(),
                prefix_index: 0,
            }
        };
        Self {
            skip_special,
            state,
        }
    }

    /// Feeds one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        match &mut self.state {
            State::Bytes { pending, state } => {
                tok.append_token_bytes(id, self.skip_special, state, pending)?;
                Ok(take_complete_utf8(pending))
            }
            State::Window {
                ids,
                prefix,
                prefix_index,
            } => {
                ids.push(id);
                let text = tok.decode(ids, self.skip_special)?;
                if text.len() > prefix.len() && !text.ends_with('\u{FFFD}') {
                    let new_text = text.get(prefix.len()..).unwrap_or_default().to_string();
                    let new_prefix_index = ids.len() - *prefix_index;
                    ids.drain(..*prefix_index);
                    *prefix = tok.decode(ids, self.skip_special)?;
                    *prefix_index = new_prefix_index;
                    Ok(new_text)
                } else {
                    Ok(String::new())
                }
            }
        }
    }

    /// Flushes what is held back at the end of the stream.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        match &mut self.state {
            State::Bytes { pending, .. } => {
                let s = String::from_utf8_lossy(pending).into_owned();
                pending.clear();
                Ok(s)
            }
            State::Window {
                ids,
                prefix,
                prefix_index,
            } => {
                let text = tok.decode(ids, self.skip_special)?;
                let rest = text.get(prefix.len()..).unwrap_or_default().to_string();
                ids.clear();
                prefix.clear();
                *prefix_index = 0;
                Ok(rest)
            }
        }
    }
}

/// Removes and returns the longest prefix of `buf` that is complete text:
/// valid UTF-8, with invalid sequences (that no later byte can fix) replaced by
/// U+FFFD; an incomplete sequence at the end stays in `buf`.
fn take_complete_utf8(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&buf[start..]) {
            Ok(s) => {
                out.push_str(s);
                start = buf.len();
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&buf[start..start + valid]).unwrap_or_default());
                start += valid;
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        start += n;
                    }
                    None => break, // incomplete: wait for more bytes
                }
            }
        }
    }
    buf.drain(..start);
    out
}

#[cfg(test)]
mod tests {
    use super::take_complete_utf8;

    #[test]
    fn holds_back_incomplete_characters() {
        let mut buf = vec![b'a', 0xE2, 0x82];
        assert_eq!(take_complete_utf8(&mut buf), "a");
        assert_eq!(buf, vec![0xE2, 0x82]);
        buf.push(0xAC);
        assert_eq!(take_complete_utf8(&mut buf), "€");
        assert!(buf.is_empty());
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut buf = vec![0xFF, b'x', 0xC3];
        assert_eq!(take_complete_utf8(&mut buf), "\u{FFFD}x");
        assert_eq!(buf, vec![0xC3]);
    }
}
