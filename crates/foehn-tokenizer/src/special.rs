//! Splitting text on special-token text (`<s>`, `[INST]`, …), as llama.cpp's
//! `tokenizer_st_partition` does: longest tokens first, every occurrence.

/// A piece of input after special-token splitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment<'a> {
    /// Ordinary text, to be run through the model's encoder.
    Text(&'a str),
    /// A special token recognised in the text.
    Token(u32),
}

/// One special token that may be recognised in text.
#[derive(Debug, Clone)]
struct Special {
    text: String,
    id: u32,
    /// Recognised even when the caller did not ask to parse specials
    /// (llama.cpp's USER_DEFINED tokens); control tokens are not.
    always: bool,
}

/// The special tokens of a vocabulary, ordered for matching.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpecialTokens {
    tokens: Vec<Special>,
}

impl SpecialTokens {
    /// Builds the matcher from `(text, id, always)` triples; empty texts are ignored.
    pub(crate) fn new(tokens: impl IntoIterator<Item = (String, u32, bool)>) -> Self {
        let mut tokens: Vec<Special> = tokens
            .into_iter()
            .filter(|(t, _, _)| !t.is_empty())
            .map(|(text, id, always)| Special { text, id, always })
            .collect();
        // Longest first so that e.g. "[/INST]" wins over a shorter token inside it;
        // ties by id for a deterministic order.
        tokens.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
        Self { tokens }
    }

    /// Splits `text` into fragments: control tokens only when `parse_special`,
    /// "always" tokens in any case.
    pub(crate) fn split<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut frags = vec![Fragment::Text(text)];
        for sp in self.tokens.iter().filter(|s| s.always || parse_special) {
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(sp.text.as_str())))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Fragment::Text(t) => {
                        let mut rest = t;
                        while let Some(pos) = rest.find(sp.text.as_str()) {
                            if pos > 0 {
                                next.push(Fragment::Text(&rest[..pos]));
                            }
                            next.push(Fragment::Token(sp.id));
                            rest = &rest[pos + sp.text.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Fragment::Text(rest));
                        }
                    }
                    tok => next.push(tok),
                }
            }
            frags = next;
        }
        frags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specials() -> SpecialTokens {
        SpecialTokens::new([
            ("<s>".to_string(), 1, false),
            ("[INST]".to_string(), 3, false),
            ("[/INST]".to_string(), 4, false),
            ("<tool>".to_string(), 9, true),
        ])
    }

    #[test]
    fn control_tokens_only_when_asked() {
        let s = specials();
        assert_eq!(
            s.split("<s>[INST] hi", false),
            vec![Fragment::Text("<s>[INST] hi")]
        );
        assert_eq!(
            s.split("<s>[INST] hi [/INST]", true),
            vec![
                Fragment::Token(1),
                Fragment::Token(3),
                Fragment::Text(" hi "),
                Fragment::Token(4)
            ]
        );
    }

    #[test]
    fn always_tokens_split_without_parse_special() {
        let s = specials();
        assert_eq!(
            s.split("a<tool>b<tool>", false),
            vec![
                Fragment::Text("a"),
                Fragment::Token(9),
                Fragment::Text("b"),
                Fragment::Token(9)
            ]
        );
    }

    #[test]
    fn empty_text_gives_one_empty_fragment() {
        assert_eq!(specials().split("", true), vec![Fragment::Text("")]);
    }
}
