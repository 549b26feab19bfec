//! Stop strings over streamed text.

/// What a [`StopStrings::push`] lets through.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopCheck {
    /// Text that is safe to emit now (possibly empty).
    pub text: String,
    /// The index, in the list given to [`StopStrings::new`], of the stop string
    /// that ended the stream; `None` while generation may go on.
    pub stopped: Option<usize>,
}

/// Watches streamed text for stop strings.
///
/// Each [`push`](Self::push) returns the text that can be emitted: text that
/// might be the start of a stop string is held back until the following pieces
/// decide, so a stop string split across tokens is still caught and never
/// partly shown. On a hit, the text before the stop string is emitted and
/// nothing after it. When several stop strings occur, the one that is complete
/// first in the stream wins (then the longest), so the result does not depend
/// on how the text was cut into pieces. Text is only ever cut at `char`
/// boundaries. Empty stop strings are ignored.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Length in bytes of the longest stop string.
    max_len: usize,
    /// Held-back text: a suffix of the stream that is a proper prefix of some
    /// stop string.
    held: String,
    stopped: Option<usize>,
}

impl StopStrings {
    /// Watches for the given stop strings.
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stops: Vec<String> = stops.into_iter().map(Into::into).collect();
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            max_len,
            held: String::new(),
            stopped: None,
        }
    }

    /// The stop strings, as given.
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// The index of the stop string that was hit, if any.
    pub fn stopped(&self) -> Option<usize> {
        self.stopped
    }

    /// The text currently held back.
    pub fn held(&self) -> &str {
        &self.held
    }

    /// Takes the next piece of streamed text and says what can be emitted now
    /// and whether a stop string ended the stream. After a stop, further
    /// pieces are swallowed.
    pub fn push(&mut self, piece: &str) -> StopCheck {
        if self.stopped.is_some() {
            return StopCheck {
                text: String::new(),
                stopped: self.stopped,
            };
        }
        self.held.push_str(piece);
        if let Some((start, index)) = self.first_match() {
            self.held.truncate(start);
            self.stopped = Some(index);
            return StopCheck {
                text: std::mem::take(&mut self.held),
                stopped: self.stopped,
            };
        }
        let keep_from = self.possible_start();
        let text = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        StopCheck {
            text,
            stopped: None,
        }
    }

    /// Ends the stream: releases the held-back text (none after a stop).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Forgets the held text and any stop, for a new stream.
    pub fn reset(&mut self) {
        self.held.clear();
        self.stopped = None;
    }

    /// The complete stop string in `held` that ends first (then starts first,
    /// then comes first in the list), as (start, index).
    fn first_match(&self) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize, usize)> = None; // (end, start, index)
        for (index, stop) in self.stops.iter().enumerate() {
            if stop.is_empty() {
                continue;
            }
            if let Some(start) = self.held.find(stop.as_str()) {
                let candidate = (start + stop.len(), start, index);
                if best.is_none_or(|b| candidate < b) {
                    best = Some(candidate);
                }
            }
        }
        best.map(|(_, start, index)| (start, index))
    }

    /// The earliest char boundary from which the rest of `held` is a proper
    /// prefix of some stop string (`held.len()` if there is none).
    fn possible_start(&self) -> usize {
        let len = self.held.len();
        let first = len.saturating_sub(self.max_len.saturating_sub(1));
        (first..len)
            .filter(|&s| self.held.is_char_boundary(s))
            .find(|&s| {
                let tail = &self.held[s..];
                self.stops
                    .iter()
                    .any(|stop| stop.len() > tail.len() && stop.starts_with(tail))
            })
            .unwrap_or(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Feeds `pieces` and returns (emitted text, stop index).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<usize>) {
        let mut s = StopStrings::new(stops.iter().copied());
        let mut out = String::new();
        for piece in pieces {
            let check = s.push(piece);
            out.push_str(&check.text);
            if check.stopped.is_some() {
                assert_eq!(s.finish(), "", "nothing is released after a stop");
                return (out, check.stopped);
            }
        }
        out.push_str(&s.finish());
        (out, None)
    }

    #[test]
    fn a_stop_string_split_across_pieces_is_caught() {
        let mut s = StopStrings::new(["llo"]);
        assert_eq!(
            s.push("Hel"),
            StopCheck {
                text: "He".into(),
                stopped: None
            }
        );
        assert_eq!(s.held(), "l");
        assert_eq!(
            s.push("lo world"),
            StopCheck {
                text: String::new(),
                stopped: Some(0)
            }
        );
        assert_eq!(
            s.push("more"),
            StopCheck {
                text: String::new(),
                stopped: Some(0)
            }
        );
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn held_text_is_released_once_it_cannot_start_a_stop() {
        let mut s = StopStrings::new(["llo"]);
        assert_eq!(s.push("Hel").text, "He");
        assert_eq!(s.push("l").text, "");
        assert_eq!(s.held(), "ll");
        assert_eq!(s.push("y").text, "lly");
        assert_eq!(s.push("wel").text, "we");
        assert_eq!(s.finish(), "l");
    }

    #[test]
    fn overlapping_candidates_are_followed() {
        assert_eq!(run(&["ab"], &["a", "a", "b", "c"]), ("a".into(), Some(0)));
        assert_eq!(run(&["ab"], &["aab"]), ("a".into(), Some(0)));
        assert_eq!(run(&["aab"], &["a", "a", "a", "b"]), ("a".into(), Some(0)));
        assert_eq!(run(&["abac"], &["ab", "ab", "ac"]), ("ab".into(), Some(0)));
        assert_eq!(run(&["abac"], &["ab", "ab", "ab"]), ("ababab".into(), None));
    }

    #[test]
    fn the_first_stop_to_complete_wins() {
        assert_eq!(run(&["abcd", "bc"], &["abcd"]), ("a".into(), Some(1)));
        assert_eq!(run(&["bc", "abc"], &["xabc"]), ("x".into(), Some(1)));
        assert_eq!(run(&["b", "ab"], &["a", "b"]), ("".into(), Some(1)));
    }

    #[test]
    fn multi_byte_characters_are_never_split() {
        assert_eq!(
            run(&["é!"], &["caf", "é", "!", "x"]),
            ("caf".into(), Some(0))
        );
        assert_eq!(run(&["é!"], &["café", " ok"]), ("café ok".into(), None));
        assert_eq!(run(&["日本"], &["日", "日本語"]), ("日".into(), Some(0)));
        // A stop string sharing only a byte prefix with the text ("é" = C3 A9, "ê" = C3 AA).
        let mut s = StopStrings::new(["ê"]);
        assert_eq!(s.push("é").text, "é");
        let mut s = StopStrings::new(["🙂 bye"]);
        assert_eq!(s.push("ok 🙂").text, "ok ");
        assert_eq!(s.held(), "🙂");
        assert_eq!(s.push("!").text, "🙂!");
    }

    #[test]
    fn no_or_empty_stops_let_everything_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), None));
        let mut s = StopStrings::new(["", "zz"]);
        assert_eq!(s.push("abc").text, "abc");
        assert_eq!(s.push("zz").stopped, Some(1));
    }

    #[test]
    fn reset_starts_a_new_stream() {
        let mut s = StopStrings::new(["x"]);
        assert_eq!(s.push("ax").stopped, Some(0));
        s.reset();
        assert_eq!(
            s.push("b"),
            StopCheck {
                text: "b".into(),
                stopped: None
            }
        );
    }

    #[test]
    fn the_result_does_not_depend_on_how_the_text_is_cut() {
        let mut rng = StdRng::seed_from_u64(7);
        let alphabet = ['a', 'b', 'é', '日'];
        let word = |rng: &mut StdRng, len: usize| -> String {
            (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect()
        };
        for _ in 0..2000 {
            let stops: Vec<String> = (0..rng.gen_range(1..4))
                .map(|_| {
                    let len = rng.gen_range(1..4);
                    word(&mut rng, len)
                })
                .collect();
            let text = word(&mut rng, 12);
            let stop_refs: Vec<&str> = stops.iter().map(String::as_str).collect();
            // Reference: the earliest-ending occurrence, scanning prefixes.
            let ends: Vec<usize> = text.char_indices().map(|(i, c)| i + c.len_utf8()).collect();
            let expected = ends
                .iter()
                .find_map(|&end| {
                    stops
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| text[..end].ends_with(s.as_str()))
                        .max_by_key(|(i, s)| (s.len(), std::cmp::Reverse(*i)))
                        .map(|(i, s)| (text[..end - s.len()].to_string(), Some(i)))
                })
                .unwrap_or((text.clone(), None));
            // Whole, char by char, and in random pieces.
            let chars: Vec<String> = text.chars().map(String::from).collect();
            let mut pieces = Vec::new();
            let mut rest = text.as_str();
            while !rest.is_empty() {
                let n = rng.gen_range(1..=rest.chars().count());
                let cut = rest.char_indices().nth(n).map_or(rest.len(), |(i, _)| i);
                pieces.push(&rest[..cut]);
                rest = &rest[cut..];
            }
            let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
            for cut in [vec![text.as_str()], chars, pieces] {
                assert_eq!(
                    run(&stop_refs, &cut),
                    expected,
                    "stops {stops:?}, pieces {cut:?}"
                );
            }
        }
    }
}
