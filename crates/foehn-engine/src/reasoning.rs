//! Reasoning blocks in generated text: Magistral and Ministral 3 Reasoning
//! write their thinking between the `[THINK]` and `[/THINK]` control tokens
//! before the answer; the generation's events mark that text as reasoning
//! (`TokenEvent::reasoning`) instead of answer text.

use foehn_tokenizer::Tokenizer;

/// Whether the generated tokens are inside a `[THINK]…[/THINK]` block.
#[derive(Debug, Clone)]
pub(crate) struct ThinkBlocks {
    begin: u32,
    end: u32,
    inside: bool,
}

impl ThinkBlocks {
    /// The tracker for a tokenizer whose vocabulary has `[THINK]` and
    /// `[/THINK]` as control tokens; `None` for every other model.
    pub(crate) fn for_tokenizer(tokenizer: &Tokenizer) -> Option<Self> {
        let control = |t: &str| {
            tokenizer
                .token_to_id(t)
                .filter(|&id| tokenizer.is_control(id))
        };
        Some(Self {
            begin: control("[THINK]")?,
            end: control("[/THINK]")?,
            inside: false,
        })
    }

    /// Takes a generated token: `Some(inside)` when it opens (`true`) or
    /// closes (`false`) a block, `None` for any other token.
    pub(crate) fn switch(&mut self, token: u32) -> Option<bool> {
        if token == self.begin {
            self.inside = true;
        } else if token == self.end {
            self.inside = false;
        } else {
            return None;
        }
        Some(self.inside)
    }

    /// Whether `token` opens or closes a block (without taking it).
    pub(crate) fn is_marker(&self, token: u32) -> bool {
        token == self.begin || token == self.end
    }

    /// Whether the text generated now is reasoning.
    pub(crate) fn inside(&self) -> bool {
        self.inside
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_think_tokens_of_a_v13_tekken_vocabulary() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/mistral-chat/tekken_v13_small.json"
        );
        let tok = Tokenizer::from_file(path).unwrap();
        let mut blocks = ThinkBlocks::for_tokenizer(&tok).unwrap();
        let (begin, end) = (
            tok.token_to_id("[THINK]").unwrap(),
            tok.token_to_id("[/THINK]").unwrap(),
        );
        assert!(!blocks.inside());
        assert_eq!(blocks.switch(1100), None);
        assert_eq!(blocks.switch(begin), Some(true));
        assert!(blocks.inside());
        assert_eq!(blocks.switch(1100), None);
        assert!(blocks.inside());
        assert_eq!(blocks.switch(end), Some(false));
        assert!(!blocks.inside());
        // The text "[THINK]" is not the control token.
        let text = tok
            .encode(
                "[THINK]",
                foehn_tokenizer::EncodeOptions {
                    add_bos: Some(false),
                    parse_special: false,
                },
            )
            .unwrap();
        assert!(text.iter().all(|&t| blocks.switch(t).is_none()));
    }

    #[test]
    fn absent_without_think_control_tokens() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/vocab/mistral-v3-spm.gguf"
        );
        let tok = Tokenizer::from_file(path).unwrap();
        assert!(ThinkBlocks::for_tokenizer(&tok).is_none());
    }
}
