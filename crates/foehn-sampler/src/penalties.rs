//! Repetition, frequency and presence penalties over a window of recent tokens.

use std::collections::VecDeque;

/// The last `window` accepted tokens, with per-token counts, and the penalties
/// they cause.
///
/// Applying costs O(distinct tokens in the window), not O(vocabulary).
#[derive(Debug, Clone)]
pub(crate) struct PenaltyHistory {
    window: usize,
    repeat: f32,
    frequency: f32,
    presence: f32,
    /// The window, oldest first.
    recent: VecDeque<u32>,
    /// Occurrences of each token id in `recent` (dense over the vocabulary).
    counts: Vec<u32>,
    /// The tokens whose count is non-zero, in no particular order.
    distinct: Vec<u32>,
}

impl PenaltyHistory {
    /// A history for `vocab_size` tokens; `window` 0 or all penalties at their
    /// neutral value make it inert (and allocation-free).
    pub(crate) fn new(
        vocab_size: usize,
        window: usize,
        repeat: f32,
        frequency: f32,
        presence: f32,
    ) -> Self {
        let active = window > 0 && (repeat != 1.0 || frequency != 0.0 || presence != 0.0);
        let window = if active { window } else { 0 };
        Self {
            window,
            repeat,
            frequency,
            presence,
            recent: VecDeque::with_capacity(window),
            counts: if active {
                vec![0; vocab_size]
            } else {
                Vec::new()
            },
            distinct: Vec::with_capacity(window),
        }
    }

    /// Records a token, forgetting the oldest one once the window is full.
    /// Ids outside the vocabulary are ignored.
    pub(crate) fn accept(&mut self, token: u32) {
        if self.window == 0 || token as usize >= self.counts.len() {
            return;
        }
        if self.recent.len() == self.window {
            if let Some(old) = self.recent.pop_front() {
                let count = &mut self.counts[old as usize];
                *count -= 1;
                if *count == 0 {
                    if let Some(pos) = self.distinct.iter().position(|&t| t == old) {
                        self.distinct.swap_remove(pos);
                    }
                }
            }
        }
        self.recent.push_back(token);
        let count = &mut self.counts[token as usize];
        if *count == 0 {
            self.distinct.push(token);
        }
        *count += 1;
    }

    /// Forgets every token.
    pub(crate) fn clear(&mut self) {
        for &t in &self.distinct {
            self.counts[t as usize] = 0;
        }
        self.distinct.clear();
        self.recent.clear();
    }

    /// Penalizes the logits of the tokens in the window, as llama.cpp does:
    /// the repetition penalty divides a positive logit and multiplies a
    /// non-positive one, then `count × frequency + presence` is subtracted.
    pub(crate) fn apply(&self, logits: &mut [f32]) {
        for &t in &self.distinct {
            let count = self.counts[t as usize];
            let Some(logit) = logits.get_mut(t as usize) else {
                continue;
            };
            if *logit <= 0.0 {
                *logit *= self.repeat;
            } else {
                *logit /= self.repeat;
            }
            *logit -= count as f32 * self.frequency + self.presence;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_follow_llama_cpp_and_openai() {
        let mut h = PenaltyHistory::new(6, 64, 2.0, 0.5, 0.25);
        for t in [1, 2, 2, 3, 2] {
            h.accept(t);
        }
        let mut logits = [1.0, 4.0, 3.0, -1.0, 0.0, 5.0];
        h.apply(&mut logits);
        // token 1 once: 4/2 - 0.5 - 0.25; token 2 three times: 3/2 - 1.5 - 0.25;
        // token 3 once, negative: -1*2 - 0.5 - 0.25; tokens 0, 4, 5 unseen.
        assert_eq!(logits, [1.0, 1.25, -0.25, -2.75, 0.0, 5.0]);
    }

    #[test]
    fn only_the_last_window_tokens_count() {
        let mut h = PenaltyHistory::new(4, 3, 1.0, 1.0, 0.0);
        for t in [0, 0, 1, 2, 3] {
            h.accept(t); // window ends as [1, 2, 3]
        }
        let mut logits = [0.0; 4];
        h.apply(&mut logits);
        assert_eq!(logits, [0.0, -1.0, -1.0, -1.0]);
        h.accept(3); // [2, 3, 3]
        let mut logits = [0.0; 4];
        h.apply(&mut logits);
        assert_eq!(logits, [0.0, 0.0, -1.0, -2.0]);
        h.clear();
        h.apply(&mut logits);
        assert_eq!(logits, [0.0, 0.0, -1.0, -2.0]);
    }

    #[test]
    fn neutral_settings_record_nothing() {
        let mut h = PenaltyHistory::new(1000, 64, 1.0, 0.0, 0.0);
        h.accept(5);
        assert!(h.counts.is_empty() && h.recent.is_empty());
        let mut h = PenaltyHistory::new(10, 0, 1.3, 0.0, 0.0);
        h.accept(5);
        let mut logits = [1.0; 10];
        h.apply(&mut logits);
        assert_eq!(logits, [1.0; 10]);
    }

    #[test]
    fn out_of_vocabulary_tokens_are_ignored() {
        let mut h = PenaltyHistory::new(3, 4, 1.0, 1.0, 0.0);
        h.accept(3);
        h.accept(u32::MAX);
        assert!(h.distinct.is_empty());
    }
}
