//! Constrained decoding with llguidance: a [`ConstraintCompiler`] per
//! vocabulary turns a [`Constraint`] into a [`TokenConstraint`], which masks
//! each step's logits to the tokens the constraint allows, follows the
//! tokens chosen, and tells which tokens it forces and when it is complete.

use std::sync::Arc;

use foehn_core::Constraint;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::json;

use crate::error::{Result, SamplerError};

/// The vocabulary-side part of llguidance that [`ConstraintCompiler::new`]
/// takes: a token trie (each token's bytes, special tokens marked, the end
/// tokens) and the tokenizer, behind [`TokenizerEnv`](llguidance::toktrie::TokenizerEnv).
pub use llguidance::toktrie;

/// Compiles constraints for one vocabulary; build it once per model (it
/// precomputes the vocabulary's token classes) and share it.
#[derive(Clone)]
pub struct ConstraintCompiler {
    factory: Arc<ParserFactory>,
}

impl std::fmt::Debug for ConstraintCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintCompiler")
            .field(
                "vocab_size",
                &self.factory.tok_env().tok_trie().vocab_size(),
            )
            .finish()
    }
}

impl ConstraintCompiler {
    /// A compiler for the vocabulary of `env`.
    pub fn new(env: &TokEnv) -> Result<Self> {
        let mut factory = ParserFactory::new_simple(env).map_err(|e| {
            SamplerError::Constraint(format!("the vocabulary does not fit llguidance: {e}"))
        })?;
        // Errors come back as values; nothing is printed.
        factory.quiet();
        Ok(Self {
            factory: Arc::new(factory),
        })
    }

    /// The state of `constraint` before any token; an error names what does
    /// not compile (a malformed schema, regex or grammar).
    pub fn compile(&self, constraint: &Constraint) -> Result<TokenConstraint> {
        let grammar = match constraint {
            Constraint::JsonSchema(schema) => TopLevelGrammar::from_json_schema(bounded(schema)),
            Constraint::JsonObject => {
                TopLevelGrammar::from_json_schema(bounded(&json!({"type": "object"})))
            }
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| {
            SamplerError::Constraint(format!("the {} does not compile: {e}", constraint.kind()))
        })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(SamplerError::Constraint(format!(
                "the {} does not compile: {e}",
                constraint.kind()
            )));
        }
        let vocab_size = self.factory.tok_env().tok_trie().vocab_size();
        Ok(TokenConstraint {
            matcher,
            mask: SimpleVob::alloc(vocab_size),
            mask_ready: false,
        })
    }
}

/// One generation's constraint: which tokens may come next, and whether the
/// text so far is complete.
///
/// Per step: [`compute_mask`](Self::compute_mask) (the slow part, ~µs to
/// ms; it may run on another thread while the model computes the logits),
/// [`apply_mask`](Self::apply_mask) to the logits, sample, then
/// [`commit`](Self::commit) the token and take the [`forced`](Self::forced)
/// tokens that follow it.
pub struct TokenConstraint {
    matcher: Matcher,
    mask: SimpleVob,
    /// Whether `mask` is the one for the current state.
    mask_ready: bool,
}

impl std::fmt::Debug for TokenConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConstraint")
            .field("finished", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl TokenConstraint {
    /// Computes the tokens allowed next (a no-op if already computed for
    /// this state). An error means no token can continue the text.
    pub fn compute_mask(&mut self) -> Result<()> {
        if self.mask_ready {
            return Ok(());
        }
        self.mask = self
            .matcher
            .compute_mask()
            .map_err(|e| SamplerError::Constraint(format!("computing the token mask: {e}")))?;
        if self.mask.is_zero() {
            return Err(SamplerError::Constraint(
                "the constraint allows no token here".into(),
            ));
        }
        self.mask_ready = true;
        Ok(())
    }

    /// Sets the logits of the tokens the constraint does not allow to -inf,
    /// so neither sampling nor greedy decoding picks them (computing the mask
    /// first if needed).
    pub fn apply_mask(&mut self, logits: &mut [f32]) -> Result<()> {
        self.compute_mask()?;
        let words = self.mask.as_slice();
        for (chunk, &word) in logits.chunks_mut(32).zip(words) {
            if word == u32::MAX {
                continue;
            }
            for (bit, logit) in chunk.iter_mut().enumerate() {
                if word & (1 << bit) == 0 {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
        // Logits past the vocabulary's mask (padding rows) are never allowed.
        for logit in logits.iter_mut().skip(words.len() * 32) {
            *logit = f32::NEG_INFINITY;
        }
        Ok(())
    }

    /// Whether the last computed mask allows `token`.
    pub fn allows(&self, token: u32) -> bool {
        self.mask_ready && self.mask.is_allowed(token)
    }

    /// Advances past `token`, which the mask allowed.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        self.mask_ready = false;
        self.matcher.consume_token(token).map_err(|e| {
            SamplerError::Constraint(format!("token {token} breaks the constraint: {e}"))
        })
    }

    /// The tokens the constraint forces next (none if the next token is a
    /// choice), already committed: run them through the model as one chunk.
    pub fn forced(&mut self) -> Result<Vec<u32>> {
        let tokens = self.matcher.consume_ff_tokens();
        if let Some(e) = self.matcher.get_error() {
            return Err(SamplerError::Constraint(format!("forcing tokens: {e}")));
        }
        if !tokens.is_empty() {
            self.mask_ready = false;
        }
        Ok(tokens)
    }

    /// Whether the text is complete and nothing may follow (the generation
    /// ends here).
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// Whitespace a JSON constraint allows between tokens, as llama.cpp's
/// JSON-schema grammars: one space, or a newline and up to 20 spaces or
/// tabs. llguidance's default (any run of whitespace) lets a small model
/// sample whitespace until `max_tokens` (SmolLM2-135M did, under a schema
/// at temperature 0.8).
const JSON_WHITESPACE: &str = r"( |\n[ \t]{0,20})";

/// `schema` with [`JSON_WHITESPACE`] as its whitespace, unless the schema
/// sets llguidance's options itself (`x-guidance`) or is not an object.
fn bounded(schema: &serde_json::Value) -> serde_json::Value {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance")
            .or_insert_with(|| json!({ "whitespace_pattern": JSON_WHITESPACE }));
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use llguidance::toktrie::ApproximateTokEnv;

    /// A vocabulary of the 256 bytes and a few special tokens, the last of
    /// them the end token.
    fn compiler() -> ConstraintCompiler {
        let env: TokEnv = Arc::new(ApproximateTokEnv::single_byte());
        ConstraintCompiler::new(&env).unwrap()
    }

    fn allowed(c: &mut TokenConstraint, vocab: usize) -> Vec<u32> {
        let mut logits = vec![0.0; vocab];
        c.apply_mask(&mut logits).unwrap();
        (0..vocab as u32)
            .filter(|&t| logits[t as usize].is_finite())
            .collect()
    }

    #[test]
    fn a_regex_masks_each_step_and_finishes_at_its_end() {
        let compiler = compiler();
        let vocab = 262;
        let mut c = compiler.compile(&Constraint::Regex("ab+c".into())).unwrap();
        assert_eq!(allowed(&mut c, vocab), vec![u32::from(b'a')]);
        c.commit(u32::from(b'a')).unwrap();
        assert_eq!(allowed(&mut c, vocab), vec![u32::from(b'b')]);
        c.commit(u32::from(b'b')).unwrap();
        assert_eq!(
            allowed(&mut c, vocab),
            vec![u32::from(b'b'), u32::from(b'c')]
        );
        assert!(!c.is_finished());
        c.commit(u32::from(b'c')).unwrap();
        assert!(c.is_finished());
    }

    #[test]
    fn a_json_schema_allows_only_its_shape() {
        let compiler = compiler();
        let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}},
                            "required": ["ok"], "additionalProperties": false});
        let mut c = compiler.compile(&Constraint::JsonSchema(schema)).unwrap();
        let first = allowed(&mut c, 262);
        assert!(first.contains(&u32::from(b'{')));
        assert!(!first.contains(&u32::from(b'[')));
        assert!(!first.contains(&u32::from(b'a')));
        for b in br#"{"ok":true}"# {
            assert!(
                allowed(&mut c, 262).contains(&u32::from(*b)),
                "{}",
                *b as char
            );
            c.commit(u32::from(*b)).unwrap();
        }
        assert!(c.is_finished());
    }

    /// Between JSON tokens: one space, or a newline and up to 20 spaces or
    /// tabs; never a 21st, nor two spaces.
    #[test]
    fn json_whitespace_is_bounded() {
        let compiler = compiler();
        let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}});
        let (space, tab) = (u32::from(b' '), u32::from(b'\t'));
        let mut c = compiler.compile(&Constraint::JsonSchema(schema)).unwrap();
        for b in b"{\n" {
            c.commit(u32::from(*b)).unwrap();
        }
        for _ in 0..20 {
            assert!(allowed(&mut c, 262).contains(&tab));
            c.commit(tab).unwrap();
        }
        let next = allowed(&mut c, 262);
        assert!(!next.contains(&tab) && !next.contains(&space), "a 21st");
        assert!(next.contains(&u32::from(b'"')));
        let mut c = compiler.compile(&Constraint::JsonObject).unwrap();
        for b in b"{ " {
            c.commit(u32::from(*b)).unwrap();
        }
        assert!(!allowed(&mut c, 262).contains(&space), "two spaces");
    }

    #[test]
    fn a_token_outside_the_mask_is_an_error() {
        let mut c = compiler().compile(&Constraint::Regex("a".into())).unwrap();
        c.compute_mask().unwrap();
        assert!(matches!(
            c.commit(u32::from(b'z')),
            Err(SamplerError::Constraint(_))
        ));
    }

    #[test]
    fn what_does_not_compile_is_an_error() {
        let compiler = compiler();
        for bad in [
            Constraint::Regex("a(".into()),
            Constraint::Lark("start: ( \"a\"".into()),
            Constraint::JsonSchema(json!({"type": "no-such-type"})),
        ] {
            match compiler.compile(&bad) {
                Err(SamplerError::Constraint(msg)) => {
                    assert!(msg.contains(bad.kind()), "{msg}")
                }
                other => panic!("{bad:?} compiled: {other:?}"),
            }
        }
    }
}
