//! Speculative decoding by prompt lookup: draft the tokens that followed the
//! latest earlier occurrence of the text's last few tokens (in the prompt or
//! the answer so far), run them through the model in one batched forward
//! pass, and keep the longest prefix the sampler itself would have chosen.
//!
//! Decode reads every weight once per forward pass whatever the number of
//! tokens in it, so checking `k` drafted tokens costs little more than
//! decoding one: every accepted draft is a token for free. The output is
//! token for token that of plain decoding, greedy or sampled: each verified
//! position's logits are those of a one-token pass, the sampler draws from
//! them in the same order with the same random numbers, and a draft is kept
//! only when the draw equals it — which, the drafter being deterministic, is
//! speculative sampling's rule (accept with probability `p(draft)`, else draw
//! from `p` without the draft). The draft length adapts: it grows while
//! drafts are accepted whole and shrinks to what was accepted when they are
//! not, and without an earlier occurrence nothing is drafted at all, so text
//! without repetition decodes as before.

use foehn_model::argmax;

use crate::local::LocalModel;
use crate::session::Session;
use crate::Result;

/// How a local model decodes (a [`crate::LoadOptions`] field).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Speculation {
    /// One token per forward pass.
    Off,
    /// Prompt lookup (n-gram matches in the prompt and the text so far).
    /// The default: the tokens are the same, and without repetition to
    /// draft from nothing is drafted.
    #[default]
    Ngram,
    /// Drafts by a smaller model with the same vocabulary (a path, catalog
    /// id or `hf://` spec, loaded with the same options), its greedy tokens.
    Draft(String),
}

impl std::str::FromStr for Speculation {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim() {
            "off" => Ok(Self::Off),
            "ngram" => Ok(Self::Ngram),
            other => match other.strip_prefix("draft:") {
                Some(model) if !model.is_empty() => Ok(Self::Draft(model.to_string())),
                _ => Err(format!(
                    "unknown speculation {other:?} (one of: ngram, draft:MODEL, off)"
                )),
            },
        }
    }
}

/// What a loaded model drafts with, [`Speculation`] resolved at load.
#[derive(Debug, Clone)]
pub(crate) enum Drafting {
    /// Prompt lookup.
    Ngram,
    /// A draft model.
    Model(LocalModel),
}

/// Longest n-gram looked up; longer matches are likelier to continue alike.
const MAX_NGRAM: usize = 3;
/// Shortest n-gram looked up while drafts are being accepted (single
/// tokens match too often by chance); after a draft rejected whole, only
/// `MAX_NGRAM` matches draft until one is accepted again: in text that does
/// not repeat, two-token matches are mostly chance, and every rejected draft
/// costs a wider pass (its rows of logits included).
const MIN_NGRAM: usize = 2;
/// Most tokens drafted at once.
pub(crate) const MAX_DRAFT: usize = 16;
/// Tokens drafted after a fresh start.
const START_DRAFT: usize = 4;

/// Drafts tokens, with an adaptive draft length.
pub(crate) struct Drafter {
    source: Source,
    /// Tokens to draft next time (1..=MAX_DRAFT).
    len: usize,
    /// Shortest n-gram that drafts next time (MIN_NGRAM..=MAX_NGRAM).
    min_ngram: usize,
}

/// Where drafts come from.
enum Source {
    Ngram,
    /// A draft model's session (kept with the target's session between
    /// generations, so its cache is reused) and its logits.
    Model {
        session: Box<Session>,
        logits: Vec<f32>,
    },
}

impl Drafter {
    /// A prompt-lookup drafter.
    pub(crate) fn ngram() -> Self {
        Self {
            source: Source::Ngram,
            len: START_DRAFT,
            min_ngram: MIN_NGRAM,
        }
    }

    /// A drafter running `session` (of a draft model).
    pub(crate) fn model(session: Box<Session>) -> Self {
        Self {
            source: Source::Model {
                session,
                logits: Vec::new(),
            },
            len: START_DRAFT,
            min_ngram: MIN_NGRAM,
        }
    }

    /// The draft model's session, if it drafts with one.
    pub(crate) fn into_session(self) -> Option<Box<Session>> {
        match self.source {
            Source::Model { session, .. } => Some(session),
            Source::Ngram => None,
        }
    }

    /// Appends to `out` up to `max` tokens (and at most the current draft
    /// length) to follow `history`.
    ///
    /// # Errors
    /// A draft model's forward pass failing.
    pub(crate) fn draft(&mut self, history: &[u32], max: usize, out: &mut Vec<u32>) -> Result<()> {
        let want = self.len.min(max);
        if want == 0 || history.is_empty() {
            return Ok(());
        }
        match &mut self.source {
            Source::Ngram => ngram_draft(history, self.min_ngram, want, out),
            Source::Model { session, logits } => {
                if history.len() + want > session.context_length() {
                    return Ok(());
                }
                // The draft model's cache keeps what it shares with the text
                // (its accepted drafts included) and runs the rest.
                let keep = session.reuse_prefix(history);
                session.feed_into(&history[keep..], logits)?;
                for i in 0..want {
                    let t = argmax(logits);
                    out.push(t);
                    if i + 1 < want {
                        session.feed_into(&[t], logits)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Adapts the draft length to the last verification: `accepted` of
    /// `drafted` tokens were the sampler's own choices.
    pub(crate) fn update(&mut self, drafted: usize, accepted: usize) {
        self.min_ngram = if accepted == 0 { MAX_NGRAM } else { MIN_NGRAM };
        self.len = if accepted >= drafted {
            (self.len * 2).min(MAX_DRAFT)
        } else {
            (accepted + 1).clamp(1, MAX_DRAFT)
        };
    }
}

/// Appends to `out` up to `want` tokens that followed the latest earlier
/// occurrence of `history`'s last `n` tokens, for the longest `n` in
/// `MAX_NGRAM..=min_ngram` that occurs.
fn ngram_draft(history: &[u32], min_ngram: usize, want: usize, out: &mut Vec<u32>) {
    for n in (min_ngram..=MAX_NGRAM).rev() {
        if history.len() <= n {
            continue;
        }
        let tail = &history[history.len() - n..];
        // Latest start `s` of an earlier occurrence, followed by at least
        // one token.
        let found = (0..history.len() - n)
            .rev()
            .find(|&s| &history[s..s + n] == tail);
        if let Some(s) = found {
            let from = s + n;
            let to = (from + want).min(history.len());
            out.extend_from_slice(&history[from..to]);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_what_followed_the_latest_match_of_the_longest_ngram() {
        let mut d = Drafter::ngram();
        d.len = MAX_DRAFT;
        let mut out = Vec::new();
        // "1 2 3" occurs at 0 (followed by 4 5) and its tail "2 3" also at
        // 6 (followed by 9): the 3-gram wins.
        let h = [1, 2, 3, 4, 5, 7, 2, 3, 9, 1, 2, 3];
        out.clear();
        d.draft(&h, 16, &mut out).unwrap();
        assert_eq!(out, [4, 5, 7, 2, 3, 9, 1, 2, 3]);
        // Capped by `max`.
        out.clear();
        d.draft(&h, 2, &mut out).unwrap();
        assert_eq!(out, [4, 5]);
        // Only a 2-gram matches: the latest occurrence.
        let h = [5, 6, 1, 5, 6, 2, 8, 5, 6];
        out.clear();
        d.draft(&h, 16, &mut out).unwrap();
        assert_eq!(out, [2, 8, 5, 6]);
        // No repetition: nothing.
        out.clear();
        d.draft(&[1, 2, 3, 4, 5], 16, &mut out).unwrap();
        assert!(out.is_empty());
        // Too short.
        out.clear();
        d.draft(&[1, 1], 16, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn the_draft_length_grows_on_success_and_shrinks_on_rejection() {
        let mut d = Drafter::ngram();
        d.update(4, 4);
        assert_eq!(d.len, 8);
        d.update(8, 8);
        assert_eq!(d.len, 16);
        d.update(16, 16);
        assert_eq!(d.len, MAX_DRAFT);
        d.update(16, 3);
        assert_eq!(d.len, 4);
        d.update(4, 0);
        assert_eq!(d.len, 1);
        // After a draft rejected whole, two-token matches no longer draft.
        let mut out = Vec::new();
        let h = [5, 6, 1, 5, 6];
        out.clear();
        d.draft(&h, 16, &mut out).unwrap();
        assert!(out.is_empty());
        d.update(1, 1);
        assert_eq!(d.len, 2);
        out.clear();
        d.draft(&h, 16, &mut out).unwrap();
        assert_eq!(out, [1, 5]);
    }

    #[test]
    fn speculation_parses() {
        assert_eq!("ngram".parse::<Speculation>(), Ok(Speculation::Ngram));
        assert_eq!("off".parse::<Speculation>(), Ok(Speculation::Off));
        assert_eq!(
            "draft:m.gguf".parse::<Speculation>(),
            Ok(Speculation::Draft("m.gguf".into()))
        );
        assert!("draft".parse::<Speculation>().is_err());
        assert!("draft:".parse::<Speculation>().is_err());
    }
}
