//! A Server-Sent Events parser written to the WHATWG HTML specification
//! ("9.2 Server-sent events", the event stream interpretation).
//!
//! The parser is incremental: feed it bytes exactly as they come off the
//! socket, split anywhere (inside a line ending, inside a UTF-8 character),
//! and it hands back each complete item. Lines end with `\r\n`, `\n` or `\r`;
//! a leading byte-order mark is dropped; invalid UTF-8 becomes U+FFFD.

/// One dispatched event: what a blank line completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `"message"` when the event did not set one.
    pub event: String,
    /// The `data:` lines joined by `\n` (without the final `\n`).
    pub data: String,
    /// The last event id seen so far on the stream (`id:` persists across events).
    pub id: String,
}

/// What the parser recognised in the bytes it was fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A complete event.
    Event(SseEvent),
    /// A comment line (`: keep-alive`), without the leading colon.
    Comment(String),
    /// A valid `retry:` field: the reconnection time the server asks for, in milliseconds.
    Retry(u64),
}

/// Why the parser gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line or an event grew beyond the parser's limit (a broken or hostile server).
    #[error("an SSE line or event exceeds {limit} bytes")]
    TooLong {
        /// The limit, in bytes.
        limit: usize,
    },
}

/// The default bound on one line and on one event's data, in bytes.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// An incremental SSE parser (see the module docs).
#[derive(Debug, Clone)]
pub struct SseParser {
    /// Bytes of the line being read (no line ending).
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` starting this one belongs to it.
    after_cr: bool,
    /// Still at the very start of the stream (a BOM may follow).
    at_start: bool,
    /// BOM bytes matched so far at the start of the stream.
    bom_seen: usize,
    event_type: String,
    data: String,
    /// Whether a `data` field was seen for the pending event (data may be empty).
    has_data: bool,
    last_event_id: String,
    max_bytes: usize,
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser with the default size limit ([`DEFAULT_MAX_EVENT_BYTES`]).
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser that refuses lines or events longer than `max_bytes`.
    pub fn with_limit(max_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            bom_seen: 0,
            event_type: String::new(),
            data: String::new(),
            has_data: false,
            last_event_id: String::new(),
            max_bytes,
        }
    }

    /// The last event id the stream set (what a reconnect would send as `Last-Event-ID`).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Feeds the next bytes of the stream; returns the items they complete, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<SseItem>, SseError> {
        let mut items = Vec::new();
        // The stream may start with a UTF-8 BOM, possibly split across chunks.
        while self.at_start {
            let Some((&b, rest)) = bytes.split_first() else {
                return Ok(items);
            };
            if b == BOM[self.bom_seen] {
                self.bom_seen += 1;
                bytes = rest;
                if self.bom_seen == BOM.len() {
                    self.at_start = false;
                }
            } else {
                // Not a BOM after all: the bytes matched so far are content.
                self.at_start = false;
                self.line.extend_from_slice(&BOM[..self.bom_seen]);
            }
        }
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line, &mut items)?;
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() >= self.max_bytes {
                        return Err(SseError::TooLong {
                            limit: self.max_bytes,
                        });
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(items)
    }

    /// Ends the stream. Per the specification an event not completed by a
    /// blank line is discarded; this returns whether such a partial event (or
    /// an unterminated line) was pending, so callers can report truncation.
    pub fn finish(&mut self) -> bool {
        let pending = !self.line.is_empty() || self.has_data;
        self.line.clear();
        self.data.clear();
        self.event_type.clear();
        self.has_data = false;
        pending
    }

    fn process_line(&mut self, line: &[u8], items: &mut Vec<SseItem>) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch(items);
            return Ok(());
        }
        let line = String::from_utf8_lossy(line);
        if let Some(comment) = line.strip_prefix(':') {
            items.push(SseItem::Comment(comment.to_string()));
            return Ok(());
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (&line[..], ""),
        };
        match field {
            "event" => self.event_type = value.to_string(),
            "data" => {
                if self.data.len() + value.len() + 1 > self.max_bytes {
                    return Err(SseError::TooLong {
                        limit: self.max_bytes,
                    });
                }
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_event_id = value.to_string(),
            "retry" if !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) => {
                // All digits but too large for u64: ignored, like any invalid value.
                if let Ok(ms) = value.parse::<u64>() {
                    items.push(SseItem::Retry(ms));
                }
            }
            _ => {} // unknown fields are ignored
        }
        Ok(())
    }

    fn dispatch(&mut self, items: &mut Vec<SseItem>) {
        let event_type = std::mem::take(&mut self.event_type);
        if !self.has_data {
            self.data.clear();
            return;
        }
        self.has_data = false;
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        items.push(SseItem::Event(SseEvent {
            event: if event_type.is_empty() {
                "message".to_string()
            } else {
                event_type
            },
            data,
            id: self.last_event_id.clone(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> SseItem {
        SseItem::Event(SseEvent {
            event: "message".into(),
            data: data.into(),
            id: String::new(),
        })
    }

    fn parse_all(input: &[u8]) -> Vec<SseItem> {
        let mut p = SseParser::new();
        p.feed(input).unwrap()
    }

    /// Feeding the input one byte at a time, and split at every position,
    /// gives the same items as feeding it whole.
    fn assert_split_invariant(input: &[u8]) -> Vec<SseItem> {
        let whole = parse_all(input);
        let mut p = SseParser::new();
        let mut bytewise = Vec::new();
        for b in input {
            bytewise.extend(p.feed(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(bytewise, whole, "byte-by-byte feeding differs");
        for cut in 0..=input.len() {
            let mut p = SseParser::new();
            let mut items = p.feed(&input[..cut]).unwrap();
            items.extend(p.feed(&input[cut..]).unwrap());
            assert_eq!(items, whole, "split at {cut} differs");
        }
        whole
    }

    #[test]
    fn data_with_and_without_the_space() {
        let items = assert_split_invariant(b"data: a\n\ndata:b\n\ndata:  c\n\n");
        assert_eq!(items, vec![ev("a"), ev("b"), ev(" c")]);
    }

    #[test]
    fn all_three_line_endings() {
        for input in [
            &b"data: x\r\n\r\ndata: y\r\n\r\n"[..],
            b"data: x\n\ndata: y\n\n",
            b"data: x\r\rdata: y\r\r",
        ] {
            assert_eq!(
                assert_split_invariant(input),
                vec![ev("x"), ev("y")],
                "{input:?}"
            );
        }
        // Mixed endings, and a CR LF split across two feeds.
        assert_eq!(
            assert_split_invariant(b"data: x\r\n\rdata: y\n\r\n"),
            vec![ev("x"), ev("y")]
        );
    }

    #[test]
    fn a_lone_cr_then_lf_is_two_line_ends_only_when_separated_by_content() {
        // "\r\n" is one line end; "\r" "\n" with nothing between is still one.
        assert_eq!(assert_split_invariant(b"data: a\r\n\n"), vec![ev("a")]);
        // "\n\r" is two line ends: it dispatches.
        assert_eq!(assert_split_invariant(b"data: a\n\r"), vec![ev("a")]);
    }

    #[test]
    fn multi_line_data_is_joined_by_newlines() {
        let items = assert_split_invariant(b"data: first\ndata: second\ndata\ndata: third\n\n");
        assert_eq!(items, vec![ev("first\nsecond\n\nthird")]);
    }

    #[test]
    fn comments_and_keep_alives() {
        let items = assert_split_invariant(b": keep-alive\n\n:\ndata: x\n: in the middle\n\n");
        assert_eq!(
            items,
            vec![
                SseItem::Comment(" keep-alive".into()),
                SseItem::Comment(String::new()),
                SseItem::Comment(" in the middle".into()),
                ev("x")
            ]
        );
    }

    #[test]
    fn event_id_and_retry_fields() {
        let input = b"event: error\nid: 7\nretry: 1500\ndata: {}\n\nretry: 12x\nid\ndata: y\n\nid: a\0b\ndata: z\n\n";
        let items = assert_split_invariant(input);
        assert_eq!(
            items,
            vec![
                SseItem::Retry(1500),
                SseItem::Event(SseEvent {
                    event: "error".into(),
                    data: "{}".into(),
                    id: "7".into()
                }),
                // An empty `id` resets the last event id; the event type resets after dispatch.
                SseItem::Event(SseEvent {
                    event: "message".into(),
                    data: "y".into(),
                    id: String::new()
                }),
                // An id with NUL is ignored.
                SseItem::Event(SseEvent {
                    event: "message".into(),
                    data: "z".into(),
                    id: String::new()
                }),
            ]
        );
    }

    #[test]
    fn events_without_data_are_not_dispatched_and_unknown_fields_ignored() {
        let items = assert_split_invariant(b"event: ping\n\nfoo: bar\n\ndata\n\n");
        // `data` with no colon is a data field with an empty value: an empty event.
        assert_eq!(items, vec![ev("")]);
    }

    #[test]
    fn bom_is_dropped_only_at_the_start() {
        let mut input = BOM.to_vec();
        input.extend_from_slice(b"data: x\n\n");
        assert_eq!(assert_split_invariant(&input), vec![ev("x")]);
        // A partial BOM is content: "\xEF\xBBdata" is an unknown field, so nothing.
        assert_eq!(
            assert_split_invariant(b"\xEF\xBBdata: x\n\ndata: y\n\n"),
            vec![ev("y")]
        );
    }

    #[test]
    fn utf8_split_across_chunks_and_invalid_bytes() {
        let text = "data: héllo → 世界\n\n".as_bytes();
        assert_eq!(assert_split_invariant(text), vec![ev("héllo → 世界")]);
        assert_eq!(parse_all(b"data: a\xFFb\n\n"), vec![ev("a\u{FFFD}b")]);
    }

    #[test]
    fn done_and_openai_chunks_pass_through_verbatim() {
        let input = b"data: {\"choices\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\ndata: [DONE]\n\n";
        let items = assert_split_invariant(input);
        assert_eq!(
            items,
            vec![
                ev("{\"choices\":null}"),
                ev("{\"choices\":[],\"usage\":{\"prompt_tokens\":3}}"),
                ev("[DONE]")
            ]
        );
    }

    #[test]
    fn unterminated_event_is_discarded_but_reported() {
        let mut p = SseParser::new();
        assert_eq!(p.feed(b"data: a\n\ndata: partial").unwrap(), vec![ev("a")]);
        assert!(p.finish());
        let mut p = SseParser::new();
        p.feed(b"data: a\n\n").unwrap();
        assert!(!p.finish());
    }

    #[test]
    fn random_bytes_never_panic_and_splitting_never_matters() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Bytes biased towards the ones the parser cares about.
        let alphabet = b"data:event:id:retry: \r\n\r\n\n::{}[DONE]\xEF\xBB\xBF\xFF\x00abc0123";
        for _ in 0..300 {
            let len = (next() % 200) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            assert_split_invariant(&input);
        }
    }

    #[test]
    fn over_long_lines_are_an_error_not_a_panic() {
        let mut p = SseParser::with_limit(16);
        assert!(p.feed(b"data: 0123456789").is_ok());
        assert_eq!(p.feed(b"abcdef"), Err(SseError::TooLong { limit: 16 }));
        let mut p = SseParser::with_limit(16);
        assert!(matches!(
            p.feed(b"data: 0123456789\ndata: 0123456789\n"),
            Err(SseError::TooLong { .. })
        ));
    }
}
