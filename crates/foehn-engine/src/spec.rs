//! Speculative decoding by prompt lookup: draft the tokens that followed the
//! earlier occurrence of the text's last tokens that matches them longest
//! (in the prompt or the answer so far; a copy with an edit in it matches
//! past the edit), run them through the model in one batched forward pass,
//! and keep the longest prefix the sampler itself would have chosen.
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

/// Shortest match that drafts after a draft rejected whole.
const WARY_MATCH: usize = 3;
/// Longest match compared: the earlier occurrence matching the text's end
/// longest is drafted from.
const MAX_MATCH: usize = 32;
/// Shortest match that drafts while drafts are being accepted (single
/// tokens match too often by chance); after a draft rejected whole, only
/// `WARY_MATCH` matches draft until one is accepted again: in text that does
/// not repeat, two-token matches are mostly chance, and every rejected draft
/// costs a wider pass (its rows of logits included).
const MIN_MATCH: usize = 2;
/// Most tokens drafted at once.
pub(crate) const MAX_DRAFT: usize = 16;
/// Tokens drafted after a fresh start.
const START_DRAFT: usize = 4;

/// Drafts tokens, with an adaptive draft length.
pub(crate) struct Drafter {
    source: Source,
    /// Tokens to draft next time (1..=MAX_DRAFT).
    len: usize,
    /// Shortest match that drafts next time (MIN_MATCH or WARY_MATCH).
    min_match: usize,
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
            min_match: MIN_MATCH,
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
            min_match: MIN_MATCH,
        }
    }

    /// The draft model's session, if it drafts with one.
    pub(crate) fn into_session(self) -> Option<Box<Session>> {
        match self.source {
            Source::Model { session, .. } => Some(session),
            Source::Ngram => None,
        }
    }

    /// Appends to `out` up to `max` tokens to follow `history`: at most the
    /// current draft length, or for prompt lookup half its match's length
    /// when that is more.
    ///
    /// # Errors
    /// A draft model's forward pass failing.
    pub(crate) fn draft(&mut self, history: &[u32], max: usize, out: &mut Vec<u32>) -> Result<()> {
        let want = self.len.min(max);
        if want == 0 || history.is_empty() {
            return Ok(());
        }
        match &mut self.source {
            Source::Ngram => ngram_draft(history, self.min_match, want, max, out),
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
        self.min_match = if accepted == 0 { WARY_MATCH } else { MIN_MATCH };
        self.len = if accepted >= drafted {
            (self.len * 2).min(MAX_DRAFT)
        } else {
            (accepted + 1).clamp(1, MAX_DRAFT)
        };
    }
}

/// Appends to `out` up to `want` tokens (or half the match's length when
/// that is more, never over `max`) that followed the earlier occurrence of
/// `history`'s end that matches it best, if that match is at least
/// `min_match` tokens long. Candidates end with the text's last
/// token; a candidate's match is the run of tokens before it equal to the
/// text's, and where that run ends at a token the text changed, inserted
/// or dropped (a copy with an edit: "river" rewritten as "stream", a comma
/// added), the run that continues past the edit too (counted when at least
/// two tokens long). The longest match wins (compared up to `MAX_MATCH`
/// tokens; the latest among equals): it is where the text is being copied
/// from, where a shorter one (a common pair of tokens) mostly continues
/// elsewhere.
fn ngram_draft(history: &[u32], min_match: usize, want: usize, max: usize, out: &mut Vec<u32>) {
    let h = history.len();
    let Some(&last) = history.last() else {
        return;
    };
    // Equal tokens before `a` and before `b` (exclusive ends), counted back.
    let run = |a: usize, b: usize, cap: usize| {
        (0..cap.min(a).min(b))
            .take_while(|&l| history[a - 1 - l] == history[b - 1 - l])
            .count()
    };
    // (match length, end of the match), the end followed by a token.
    let mut best = (0, 0);
    for e in (1..h).rev() {
        if history[e - 1] != last {
            continue;
        }
        let exact = run(h, e, MAX_MATCH);
        let mut len = exact;
        if exact < MAX_MATCH && exact < e {
            // The text's token at `a` differs from the source's at `b`:
            // replaced, inserted in the text, or dropped from it.
            let (a, b) = (h - 1 - exact, e - 1 - exact);
            let cap = MAX_MATCH - exact;
            // (A text token inserted right after the source's end would
            // compare the text with itself.)
            let inserted = if b + 1 < a { run(a, b + 1, cap) } else { 0 };
            let past = run(a, b, cap).max(inserted).max(run(a + 1, b, cap));
            if past >= 2 {
                len += past;
            }
        }
        if len > best.0 {
            best = (len, e);
            if len >= MAX_MATCH {
                break;
            }
        }
    }
    let (len, from) = best;
    if len >= min_match {
        // What followed the match, the drafts themselves past the text's
        // end (a repeating pattern drafts on repeating).
        let want = want.max(len / 2).min(max);
        let start = out.len();
        for i in from..from + want {
            let t = if i < h {
                history[i]
            } else {
                out[start + i - h]
            };
            out.push(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `d`'s draft (up to `max` tokens) after `h`.
    fn drafted(d: &mut Drafter, h: &[u32], max: usize) -> Vec<u32> {
        let mut out = Vec::new();
        d.draft(h, max, &mut out).unwrap();
        out
    }

    #[test]
    fn drafts_what_followed_the_longest_match() {
        let mut d = Drafter::ngram();
        d.len = 9;
        // "1 2 3" occurs at 0 (followed by 4 5) and its tail "2 3" also at
        // 6 (followed by 9): the longer match wins.
        let h = [1, 2, 3, 4, 5, 7, 2, 3, 9, 1, 2, 3];
        assert_eq!(drafted(&mut d, &h, 16), [4, 5, 7, 2, 3, 9, 1, 2, 3]);
        // Capped by `max`.
        assert_eq!(drafted(&mut d, &h, 2), [4, 5]);
        // Two equal matches: the latest; past the text's end the drafts
        // repeat what they copied.
        let h = [5, 6, 1, 5, 6, 2, 8, 5, 6];
        assert_eq!(drafted(&mut d, &h, 16), [2, 8, 5, 6, 2, 8, 5, 6, 2]);
        // No repetition: nothing.
        assert!(drafted(&mut d, &[1, 2, 3, 4, 5], 16).is_empty());
        // Too short.
        assert!(drafted(&mut d, &[1, 1], 16).is_empty());
        // A run of one token does not match itself shifted by one as a
        // copy with an inserted token.
        assert!(drafted(&mut d, &[4, 7, 9, 9], 16).is_empty());
    }

    #[test]
    fn a_copy_with_an_edit_drafts_from_past_the_edit() {
        let mut d = Drafter::ngram();
        d.len = 4;
        // The source 10..=19 copied with 14 replaced by 40: after "40 15"
        // only "15" matches exactly, but "11 12 13" before the edit match
        // the source too, and 16 17 18 19 followed it.
        let source: Vec<u32> = (10..20).collect();
        let mut h = source.clone();
        h.extend([99, 10, 11, 12, 13, 40, 15]);
        assert_eq!(drafted(&mut d, &h, 16), [16, 17, 18, 19]);
        // A token inserted (a comma): "13 50 14" continues as 15 16 17 18.
        let mut h = source.clone();
        h.extend([99, 10, 11, 12, 13, 50, 14]);
        assert_eq!(drafted(&mut d, &h, 16), [15, 16, 17, 18]);
        // A token dropped: "12 14" continues as 15 16 17 18.
        let mut h = source.clone();
        h.extend([99, 10, 11, 12, 14]);
        assert_eq!(drafted(&mut d, &h, 16), [15, 16, 17, 18]);
        // A long match drafts at least half its length.
        d.len = 1;
        let mut h: Vec<u32> = (100..140).collect();
        h.push(99);
        h.extend(100..120);
        assert_eq!(drafted(&mut d, &h, 16), (120..130).collect::<Vec<_>>());
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
