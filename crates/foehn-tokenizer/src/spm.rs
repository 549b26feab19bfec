//! SentencePiece-BPE encoding: the merge loop shared by sentencepiece's `bpe::Model` and llama.cpp's `llm_tokenizer_spm`.
//!
//! Encoding a text segment:
//! 1. normalize (identity normalizer): optionally strip/collapse ASCII spaces, replace `' '` with `'▁'`
//!    (U+2581), prepend `'▁'` when `add_dummy_prefix`;
//! 2. split into code points (with `match_user_defined`, USER_DEFINED pieces found by longest prefix
//!    match become single frozen symbols first);
//! 3. repeatedly merge the adjacent pair whose concatenation is a mergeable piece with the highest
//!    score, leftmost first on ties (a priority queue over pairs, as both reference implementations do);
//! 4. map each symbol to its id, or to its UTF-8 bytes as `<0xNN>` pieces (byte fallback), or to unk.

use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// The space replacement symbol U+2581 ("▁").
const SPACE_SYMBOL: char = '\u{2581}';
/// What sentencepiece's decoder prints for the `<unk>` piece (trainer_spec.unk_surface default).
const UNK_SURFACE: &str = " \u{2047} ";

/// Errors from building a SentencePiece model or reading a `tokenizer.model` file.
#[derive(Debug, thiserror::Error)]
pub enum SpmError {
    /// The three per-piece vectors given to [`SpmModel::new`] differ in length.
    #[error("sentencepiece vocab: {pieces} pieces but {scores} scores and {kinds} kinds")]
    LengthMismatch {
        pieces: usize,
        scores: usize,
        kinds: usize,
    },
    /// The vocab has no pieces, or more than fit in a `u32` id.
    #[error("sentencepiece vocab has {0} pieces (must be between 1 and {max})", max = u32::MAX - 1)]
    VocabSize(usize),
    /// `unk_id` does not name a piece.
    #[error("unknown-token id {id} is out of range for a vocab of {len} pieces")]
    UnkOutOfRange { id: u32, len: usize },
    /// A piece of kind `Byte` whose text is not `<0xNN>`.
    #[error("byte piece {id} has text {piece:?}, expected <0xNN>")]
    BadBytePiece { id: u32, piece: String },
    /// Some text could map to nothing: no unknown piece and fewer than 256 byte pieces.
    #[error("sentencepiece vocab has no unknown piece and byte-fallback pieces for only {0} of 256 bytes")]
    NoFallback(usize),
    /// The protobuf bytes of a `tokenizer.model` are malformed.
    #[error("tokenizer.model is not a valid protobuf: {reason} at byte {offset}")]
    Protobuf { offset: usize, reason: &'static str },
    /// The `tokenizer.model` parses but is not a consistent sentencepiece model.
    #[error("tokenizer.model: {0}")]
    InvalidModel(String),
    /// The `tokenizer.model` asks for something this engine does not implement.
    #[error("{0}")]
    Unsupported(String),
}

/// Piece type, numbered as sentencepiece's `SentencePiece.Type` and GGUF's `tokenizer.ggml.token_type` (1..=6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PieceKind {
    /// An ordinary piece (1).
    Normal,
    /// The unknown piece `<unk>` (2).
    Unknown,
    /// A control piece such as `<s>` or `[INST]`, never produced from text (3).
    Control,
    /// A user-defined piece, matched whole in text by sentencepiece (4).
    UserDefined,
    /// A piece that takes part in merges but is split back into its halves (5).
    Unused,
    /// A byte-fallback piece `<0xNN>` (6).
    Byte,
}

impl PieceKind {
    /// The kind for a sentencepiece / GGUF type number, `None` outside 1..=6.
    pub fn from_type(t: i64) -> Option<Self> {
        Some(match t {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }

    /// Whether a merge may produce a piece of this kind (sentencepiece's `pieces_` map: NORMAL, USER_DEFINED, UNUSED).
    fn mergeable(self) -> bool {
        matches!(self, Self::Normal | Self::UserDefined | Self::Unused)
    }
}

/// Normalization and matching switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpmOptions {
    /// Prepend `'▁'` to every non-empty segment (sentencepiece `add_dummy_prefix`, GGUF `add_space_prefix`).
    pub add_dummy_prefix: bool,
    /// Strip leading/trailing ASCII spaces and collapse runs of them (sentencepiece `remove_extra_whitespaces`).
    pub remove_extra_whitespaces: bool,
    /// `true`: sentencepiece semantics (`tokenizer.model`): USER_DEFINED pieces are matched whole
    /// before merging and never merged with neighbours, and UNUSED pieces formed by a merge are split
    /// back into their halves. `false`: llama.cpp semantics (GGUF): every mergeable piece is an
    /// ordinary piece and UNUSED pieces are emitted as they are.
    pub match_user_defined: bool,
}

/// Where a detokenization stands: whether the dummy-prefix space may still be removed.
#[derive(Clone, Copy, Debug)]
pub struct SpmDecodeState {
    is_bos_ws: bool,
    bos_ws_seen: bool,
    produced: bool,
}

impl Default for SpmDecodeState {
    fn default() -> Self {
        Self {
            is_bos_ws: true,
            bos_ws_seen: false,
            produced: false,
        }
    }
}

impl SpmDecodeState {
    /// The state inside running text: no dummy-prefix space is removed any more.
    pub fn mid_text() -> Self {
        Self {
            is_bos_ws: false,
            bos_ws_seen: false,
            produced: true,
        }
    }
}

/// A SentencePiece-BPE vocabulary ready to encode text and to turn ids back into bytes.
#[derive(Clone, Debug)]
pub struct SpmModel {
    pieces: Vec<String>,
    /// Scores with -0.0 folded into 0.0 and NaN into -inf, so `total_cmp` orders them like C++'s `<`.
    scores: Vec<f32>,
    kinds: Vec<PieceKind>,
    unk_id: Option<u32>,
    opts: SpmOptions,
    /// Piece text -> ids; see [`Entry`].
    lookup: HashMap<Box<str>, Entry, FxBuild>,
    /// Longest mergeable piece in bytes: longer candidate pairs skip the lookup.
    max_merge_len: usize,
    /// Byte value -> its `<0xNN>` piece.
    byte_ids: [Option<u32>; 256],
    /// Whether unknown symbols become byte pieces (else unk).
    byte_fallback: bool,
    /// Longest-prefix matcher over USER_DEFINED pieces (empty unless `match_user_defined`).
    user_defined: ByteTrie,
    /// Concatenated `token_bytes` of every piece; piece `i` is `token_buf[token_off[i]..token_off[i + 1]]`.
    token_buf: Vec<u8>,
    token_off: Vec<usize>,
}

/// The ids behind one piece text.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The id `piece_to_id` gives (the last piece with this text, as llama.cpp's map).
    id: u32,
    /// The id a merge produces, [`NO_ID`] when no mergeable piece has this text.
    merge_id: u32,
}

const NO_ID: u32 = u32::MAX;

impl SpmModel {
    /// Builds the model from per-piece text, score and kind; `unk_id` is the piece unknown text maps to
    /// when there is no byte-fallback piece for it.
    ///
    /// Duplicate piece texts are allowed (the last one wins, as in llama.cpp); byte fallback is on
    /// when the vocab has `Byte` pieces.
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        kinds: Vec<PieceKind>,
        unk_id: Option<u32>,
        opts: SpmOptions,
    ) -> Result<Self, SpmError> {
        if pieces.len() != scores.len() || pieces.len() != kinds.len() {
            return Err(SpmError::LengthMismatch {
                pieces: pieces.len(),
                scores: scores.len(),
                kinds: kinds.len(),
            });
        }
        let n = pieces.len();
        if n == 0 || n >= NO_ID as usize {
            return Err(SpmError::VocabSize(n));
        }
        if let Some(id) = unk_id {
            if id as usize >= n {
                return Err(SpmError::UnkOutOfRange { id, len: n });
            }
        }
        let scores: Vec<f32> = scores
            .into_iter()
            .map(|s| {
                if s.is_nan() {
                    f32::NEG_INFINITY
                } else if s == 0.0 {
                    0.0
                } else {
                    s
                }
            })
            .collect();

        let mut lookup: HashMap<Box<str>, Entry, FxBuild> =
            HashMap::with_capacity_and_hasher(n, FxBuild::default());
        let mut max_merge_len = 0;
        let mut byte_ids = [None; 256];
        let mut user_defined = ByteTrie::default();
        let mut token_buf = Vec::new();
        let mut token_off = Vec::with_capacity(n + 1);
        token_off.push(0);
        for (i, (piece, &kind)) in pieces.iter().zip(&kinds).enumerate() {
            let id = i as u32;
            let entry = lookup.entry(piece.as_str().into()).or_insert(Entry {
                id,
                merge_id: NO_ID,
            });
            // llama.cpp: the last piece with a text wins. sentencepiece: a reserved (non-mergeable)
            // piece shadows a mergeable one of the same text in `PieceToId`.
            if !(opts.match_user_defined
                && kind.mergeable()
                && !kinds[entry.id as usize].mergeable())
            {
                entry.id = id;
            }
            if kind.mergeable() {
                entry.merge_id = id;
                max_merge_len = max_merge_len.max(piece.len());
            }
            match kind {
                PieceKind::Byte => {
                    let b = parse_byte_piece(piece).ok_or_else(|| SpmError::BadBytePiece {
                        id,
                        piece: piece.clone(),
                    })?;
                    byte_ids[b as usize] = Some(id);
                    token_buf.push(b);
                }
                PieceKind::Control | PieceKind::Unknown => {}
                PieceKind::Normal | PieceKind::UserDefined | PieceKind::Unused => {
                    push_unescaped(&mut token_buf, piece);
                }
            }
            if kind == PieceKind::UserDefined && opts.match_user_defined && !piece.is_empty() {
                user_defined.insert(piece.as_bytes());
            }
            token_off.push(token_buf.len());
        }
        let n_bytes = byte_ids.iter().filter(|b| b.is_some()).count();
        if unk_id.is_none() && n_bytes < 256 {
            return Err(SpmError::NoFallback(n_bytes));
        }
        user_defined.finish();
        Ok(Self {
            pieces,
            scores,
            kinds,
            unk_id,
            opts,
            lookup,
            max_merge_len,
            byte_ids,
            byte_fallback: n_bytes > 0,
            user_defined,
            token_buf,
            token_off,
        })
    }

    /// Overrides whether unknown symbols become byte pieces; sentencepiece takes this from
    /// `trainer_spec.byte_fallback`. Bytes without a piece still become unk.
    pub(crate) fn set_byte_fallback(&mut self, on: bool) {
        self.byte_fallback = on;
    }

    /// Number of pieces.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// The piece unknown text maps to when there is no byte fallback.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }

    /// The normalization and matching switches.
    #[cfg(test)]
    pub fn options(&self) -> &SpmOptions {
        &self.opts
    }

    /// The piece text of `id` (with `'▁'`, not spaces).
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    /// The kind of `id`.
    pub fn kind(&self, id: u32) -> Option<PieceKind> {
        self.kinds.get(id as usize).copied()
    }

    /// The id of the piece with exactly this text (the last one if several share it).
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.lookup.get(piece).map(|e| e.id)
    }

    /// The bytes `id` stands for in decoded text: `'▁'` becomes `' '`, `<0xNN>` that byte,
    /// Control and Unknown pieces nothing.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let (start, end) = (*self.token_off.get(i)?, *self.token_off.get(i + 1)?);
        Some(&self.token_buf[start..end])
    }

    /// Encodes one text segment, appending ids to `out` (no BOS/EOS; the dummy prefix is applied
    /// to this segment when the option is set and the text is non-empty).
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let normalized = self.normalize(text);
        if normalized.is_empty() {
            return;
        }
        let mut merger = Merger::new(self, &normalized);
        merger.run();
        merger.emit(out);
    }

    /// The normalized form of `text` that the merges run on (identity normalizer, spaces escaped).
    pub fn normalize(&self, text: &str) -> String {
        let remove_extra = self.opts.remove_extra_whitespaces;
        let input = if remove_extra {
            text.trim_start_matches(' ')
        } else {
            text
        };
        if input.is_empty() {
            return String::new();
        }
        let mut out = String::with_capacity(input.len() + input.len() / 2 + 3);
        if self.opts.add_dummy_prefix {
            out.push(SPACE_SYMBOL);
        }
        let mut prev_space = remove_extra;
        for ch in input.chars() {
            if ch == ' ' {
                if !prev_space {
                    out.push(SPACE_SYMBOL);
                }
                prev_space = remove_extra;
            } else {
                out.push(ch);
                prev_space = false;
            }
        }
        if remove_extra {
            // sentencepiece strips every trailing U+2581, whether it came from a space or not.
            while out.ends_with(SPACE_SYMBOL) {
                out.truncate(out.len() - SPACE_SYMBOL.len_utf8());
            }
        }
        out
    }

    /// Appends the bytes of one piece as sentencepiece's `DecodeIds` renders it:
    /// Byte pieces as their byte, Control pieces as nothing (or their text when
    /// `render_control`), Unknown as `" ⁇ "`, `'▁'` as a space — and the `'▁'` that
    /// starts the text removed when `add_dummy_prefix` (or `remove_extra_whitespaces`)
    /// is set. Ids out of range append nothing. Incremental: feed pieces one by one
    /// with the same `state`, as a streaming decoder does.
    pub fn decode_piece(
        &self,
        id: u32,
        state: &mut SpmDecodeState,
        render_control: bool,
        out: &mut Vec<u8>,
    ) {
        let Some(kind) = self.kind(id) else { return };
        if kind == PieceKind::Byte {
            out.extend_from_slice(self.token_bytes(id).unwrap_or_default());
            state.produced = true;
            return;
        }
        if state.bos_ws_seen || state.produced {
            state.is_bos_ws = false;
        }
        state.bos_ws_seen = false;
        let strip_ws = self.opts.add_dummy_prefix || self.opts.remove_extra_whitespaces;
        match kind {
            PieceKind::Control => {
                if render_control {
                    out.extend_from_slice(self.pieces[id as usize].as_bytes());
                    state.produced = true;
                }
            }
            PieceKind::Unknown => {
                out.extend_from_slice(UNK_SURFACE.as_bytes());
                state.produced = true;
            }
            _ => {
                let mut piece = self.pieces[id as usize].as_str();
                if state.is_bos_ws && strip_ws {
                    if let Some(rest) = piece.strip_prefix(SPACE_SYMBOL) {
                        piece = rest;
                        state.bos_ws_seen = !self.opts.remove_extra_whitespaces;
                    }
                }
                let before = out.len();
                let mut buf = [0u8; 4];
                for c in piece.chars() {
                    let c = if c == SPACE_SYMBOL { ' ' } else { c };
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                state.produced |= out.len() > before;
            }
        }
    }

    /// Decodes ids to text (control pieces dropped; invalid UTF-8 from byte
    /// pieces becomes U+FFFD, as `String::from_utf8_lossy` replaces it).
    #[cfg(test)]
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut state = SpmDecodeState::default();
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            self.decode_piece(id, &mut state, false, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Appends the id(s) of one final symbol, as sentencepiece's `PopulateSentencePieceText`:
    /// a piece is emitted as is; unknown text becomes byte pieces, or one unk for a run of unknowns.
    fn emit_symbol(&self, text: &str, out: &mut Vec<u32>, prev_unk: &mut bool) {
        let id = self.lookup.get(text).map(|e| e.id);
        if id.is_some() && id != self.unk_id {
            out.extend(id);
            *prev_unk = false;
            return;
        }
        if self.byte_fallback {
            // `new` guarantees an unk id whenever a byte piece is missing.
            out.extend(
                text.bytes()
                    .filter_map(|b| self.byte_ids[b as usize].or(self.unk_id)),
            );
        } else if !*prev_unk {
            out.extend(self.unk_id);
        }
        *prev_unk = true;
    }
}

/// One symbol of the segment being merged: a byte range of the normalized text in a linked list.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    /// 0 once merged into its left neighbour.
    len: usize,
    prev: usize,
    next: usize,
    /// A user-defined piece: never merged.
    frozen: bool,
}

const NONE: usize = usize::MAX;

/// A candidate merge of `left` with its right neighbour `right` into piece `id`.
#[derive(Clone, Copy, Debug)]
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged piece; a stale pair no longer adds up to it.
    size: usize,
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pair {
    /// Higher score first, then the leftmost pair (the comparator of both reference implementations).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// The state of one `encode` call.
struct Merger<'a> {
    model: &'a SpmModel,
    text: &'a str,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Pair>,
    /// UNUSED piece id -> (start, left length, total length) of the last pair that formed it
    /// (sentencepiece's `rev_merge`), only with `match_user_defined`.
    rev_merge: HashMap<u32, (usize, usize, usize), FxBuild>,
}

impl<'a> Merger<'a> {
    fn new(model: &'a SpmModel, text: &'a str) -> Self {
        let mut symbols = Vec::with_capacity(text.len());
        let bytes = text.as_bytes();
        let mut pos = 0;
        while pos < bytes.len() {
            let user = model.user_defined.longest_prefix(&bytes[pos..]);
            let len = if user > 0 {
                user
            } else {
                utf8_char_len(bytes[pos]).min(bytes.len() - pos)
            };
            let index = symbols.len();
            symbols.push(Symbol {
                start: pos,
                len,
                prev: if index == 0 { NONE } else { index - 1 },
                next: if pos + len < bytes.len() {
                    index + 1
                } else {
                    NONE
                },
                frozen: user > 0,
            });
            pos += len;
        }
        Self {
            model,
            text,
            symbols,
            queue: BinaryHeap::with_capacity(text.len()),
            rev_merge: HashMap::default(),
        }
    }

    /// Queues the merge of `left` and `right` if their concatenation is a mergeable piece.
    fn try_pair(&mut self, left: usize, right: usize) {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (self.symbols[left], self.symbols[right]);
        if l.frozen || r.frozen {
            return;
        }
        let size = l.len + r.len;
        if size > self.model.max_merge_len {
            return;
        }
        let Some(entry) = self.model.lookup.get(&self.text[l.start..l.start + size]) else {
            return;
        };
        let id = entry.merge_id;
        if id == NO_ID {
            return;
        }
        self.queue.push(Pair {
            score: self.model.scores[id as usize],
            left,
            right,
            size,
        });
        if self.model.opts.match_user_defined && self.model.kinds[id as usize] == PieceKind::Unused
        {
            self.rev_merge.insert(id, (l.start, l.len, size));
        }
    }

    fn run(&mut self) {
        for i in 1..self.symbols.len() {
            self.try_pair(i - 1, i);
        }
        while let Some(pair) = self.queue.pop() {
            let (l, r) = (self.symbols[pair.left], self.symbols[pair.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != pair.size {
                continue;
            }
            self.symbols[pair.left].len = pair.size;
            self.symbols[pair.left].next = r.next;
            if r.next != NONE {
                self.symbols[r.next].prev = pair.left;
            }
            self.symbols[pair.right].len = 0;
            self.try_pair(l.prev, pair.left);
            self.try_pair(pair.left, r.next);
        }
    }

    fn emit(&self, out: &mut Vec<u32>) {
        let mut prev_unk = false;
        let mut i = 0;
        while i != NONE {
            let s = self.symbols[i];
            self.resegment(s.start, s.len, out, &mut prev_unk);
            i = s.next;
        }
    }

    /// Emits a symbol, splitting an UNUSED piece back into the halves that formed it (sentencepiece only).
    fn resegment(&self, start: usize, len: usize, out: &mut Vec<u32>, prev_unk: &mut bool) {
        let text = &self.text[start..start + len];
        if self.model.opts.match_user_defined {
            if let Some(entry) = self.model.lookup.get(text) {
                if self.model.kinds[entry.id as usize] == PieceKind::Unused {
                    if let Some(&(s, left_len, total)) = self.rev_merge.get(&entry.id) {
                        if total == len && left_len > 0 && left_len < len {
                            // The recorded pair may sit elsewhere in the text; it has the same bytes.
                            self.resegment(s, left_len, out, prev_unk);
                            self.resegment(s + left_len, len - left_len, out, prev_unk);
                            return;
                        }
                    }
                }
            }
        }
        self.model.emit_symbol(text, out, prev_unk);
    }
}

/// Length of the UTF-8 sequence a lead byte starts (sentencepiece's `OneCharLen`).
fn utf8_char_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

/// `<0xNN>` -> NN (hex digits in either case, as llama.cpp's `strtol` accepts).
fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Appends `piece` with `'▁'` turned back into `' '`.
fn push_unescaped(buf: &mut Vec<u8>, piece: &str) {
    for (i, part) in piece.split(SPACE_SYMBOL).enumerate() {
        if i > 0 {
            buf.push(b' ');
        }
        buf.extend_from_slice(part.as_bytes());
    }
}

/// A byte trie answering "longest key that is a prefix of this text".
#[derive(Clone, Debug, Default)]
struct ByteTrie {
    /// Node 0 is the root once the first key is inserted.
    nodes: Vec<TrieNode>,
}

#[derive(Clone, Debug, Default)]
struct TrieNode {
    /// Sorted by byte after `finish`.
    edges: Vec<(u8, u32)>,
    terminal: bool,
}

impl ByteTrie {
    fn insert(&mut self, key: &[u8]) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut node = 0usize;
        for &b in key {
            node = match self.nodes[node].edges.iter().find(|(e, _)| *e == b) {
                Some(&(_, child)) => child as usize,
                None => {
                    let child = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[node].edges.push((b, child as u32));
                    child
                }
            };
        }
        self.nodes[node].terminal = true;
    }

    fn finish(&mut self) {
        for node in &mut self.nodes {
            node.edges.sort_unstable_by_key(|&(b, _)| b);
        }
    }

    /// Byte length of the longest key that prefixes `text`, 0 if none.
    fn longest_prefix(&self, text: &[u8]) -> usize {
        let mut best = 0;
        let mut node = 0usize;
        if self.nodes.is_empty() {
            return 0;
        }
        for (depth, &b) in text.iter().enumerate() {
            let edges = &self.nodes[node].edges;
            match edges.binary_search_by_key(&b, |&(e, _)| e) {
                Ok(k) => node = edges[k].1 as usize,
                Err(_) => break,
            }
            if self.nodes[node].terminal {
                best = depth + 1;
            }
        }
        best
    }
}

/// The rustc "Fx" hash: piece lookups dominate encoding, and keys are the vocab's own strings.
#[derive(Clone, Copy, Default)]
struct FxHasher {
    hash: u64,
}

type FxBuild = BuildHasherDefault<FxHasher>;

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while bytes.len() >= 8 {
            let (word, rest) = bytes.split_at(8);
            self.add(u64::from_le_bytes([
                word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
            ]));
            bytes = rest;
        }
        if bytes.len() >= 4 {
            let (word, rest) = bytes.split_at(4);
            self.add(u32::from_le_bytes([word[0], word[1], word[2], word[3]]) as u64);
            bytes = rest;
        }
        for &b in bytes {
            self.add(b as u64);
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(match_user_defined: bool) -> SpmOptions {
        SpmOptions {
            add_dummy_prefix: true,
            remove_extra_whitespaces: false,
            match_user_defined,
        }
    }

    /// A vocab: `<unk>`, `<s>`, the 256 byte pieces, then `(piece, score, kind)`.
    fn mini(extra: &[(&str, f32, PieceKind)], o: SpmOptions) -> SpmModel {
        let mut pieces = vec!["<unk>".to_string(), "<s>".to_string()];
        let mut scores = vec![0.0, 0.0];
        let mut kinds = vec![PieceKind::Unknown, PieceKind::Control];
        for b in 0..=255u8 {
            pieces.push(format!("<0x{b:02X}>"));
            scores.push(0.0);
            kinds.push(PieceKind::Byte);
        }
        for &(p, s, k) in extra {
            pieces.push(p.to_string());
            scores.push(s);
            kinds.push(k);
        }
        SpmModel::new(pieces, scores, kinds, Some(0), o).unwrap()
    }

    fn pieces_of(m: &SpmModel, text: &str) -> Vec<String> {
        let mut ids = Vec::new();
        m.encode(text, &mut ids);
        ids.iter()
            .map(|&i| m.piece(i).unwrap().to_string())
            .collect()
    }

    use PieceKind::*;

    #[test]
    fn highest_score_wins_and_ties_go_left() {
        let m = mini(
            &[
                ("▁", -1.0, Normal),
                ("a", -1.0, Normal),
                ("b", -1.0, Normal),
                ("ab", -5.0, Normal),
                ("ba", -5.0, Normal),
                ("bb", -2.0, Normal),
            ],
            opts(true),
        );
        // "▁abab": pairs ab(-5) ba(-5) ab(-5): leftmost "ab" first, then the next "ab".
        assert_eq!(pieces_of(&m, "abab"), ["▁", "ab", "ab"]);
        // "▁abba": bb (-2) beats ab/ba (-5).
        assert_eq!(pieces_of(&m, "abba"), ["▁", "a", "bb", "a"]);
        // "▁bab": ba and ab tie; the leftmost (ba) wins.
        assert_eq!(pieces_of(&m, "bab"), ["▁", "ba", "b"]);
    }

    #[test]
    fn byte_fallback_and_unk() {
        let m = mini(&[("▁", -1.0, Normal), ("a", -1.0, Normal)], opts(true));
        let mut ids = Vec::new();
        m.encode("aé", &mut ids);
        let e = m.piece_to_id("<0xC3>").unwrap();
        assert_eq!(
            ids,
            [
                m.piece_to_id("▁").unwrap(),
                m.piece_to_id("a").unwrap(),
                e,
                e - 0xC3 + 0xA9
            ]
        );
        assert_eq!(m.decode(&ids), "aé");
        // Without byte pieces, a run of unknown symbols is one unk.
        let pieces = vec!["<unk>".into(), "▁".into(), "a".into()];
        let m = SpmModel::new(
            pieces,
            vec![0.0, -1.0, -1.0],
            vec![Unknown, Normal, Normal],
            Some(0),
            opts(true),
        )
        .unwrap();
        let mut ids = Vec::new();
        m.encode("aéèa", &mut ids);
        assert_eq!(ids, [1, 2, 0, 2]);
        assert_eq!(m.decode(&ids), "a ⁇ a");
    }

    #[test]
    fn control_and_byte_pieces_are_never_merged() {
        let m = mini(
            &[
                ("<", -1.0, Normal),
                ("s", -1.0, Normal),
                (">", -1.0, Normal),
                ("<s", -1.0, Normal),
            ],
            opts(true),
        );
        let p = pieces_of(&m, "<s>");
        assert!(!p.contains(&"<s>".to_string()), "{p:?}");
        let p = pieces_of(&m, "<0x41>");
        assert!(!p.contains(&"<0x41>".to_string()), "{p:?}");
    }

    #[test]
    fn user_defined_matched_whole_only_with_the_option() {
        let extra = [
            ("▁", -1.0, Normal),
            ("x", -1.0, Normal),
            ("[", -1.0, Normal),
            ("]", -1.0, Normal),
            ("R", -1.0, Normal),
            ("[R]", 0.0, UserDefined),
            ("[RR]", 0.0, UserDefined),
            ("▁[", -0.5, Normal),
        ];
        let m = mini(&extra, opts(true));
        assert_eq!(pieces_of(&m, "x[RR]x[R]"), ["▁", "x", "[RR]", "x", "[R]"]);
        // The leading "▁" does not merge into a frozen symbol.
        assert_eq!(pieces_of(&m, "[R]"), ["▁", "[R]"]);
        let m = mini(&extra, opts(false));
        assert_eq!(pieces_of(&m, "x[RR]"), ["▁", "x", "[", "R", "R", "]"]);
    }

    #[test]
    fn unused_pieces_are_resegmented_by_sentencepiece_only() {
        let extra = [
            ("▁", -1.0, Normal),
            ("a", -1.0, Normal),
            ("b", -1.0, Normal),
            ("ab", -1.0, Unused),
            ("▁ab", -2.0, Normal),
        ];
        // sentencepiece: "ab" forms (Unused), then "▁ab" forms from "▁" + "ab".
        assert_eq!(pieces_of(&mini(&extra, opts(true)), "ab"), ["▁ab"]);
        assert_eq!(
            pieces_of(&mini(&extra, opts(true)), "xab"),
            ["▁", "<0x78>", "a", "b"]
        );
        assert_eq!(
            pieces_of(&mini(&extra, opts(false)), "xab"),
            ["▁", "<0x78>", "ab"]
        );
    }

    #[test]
    fn whitespace_options() {
        let mut o = opts(true);
        o.remove_extra_whitespaces = true;
        let m = mini(&[("▁", -1.0, Normal)], o);
        assert_eq!(m.normalize("  a  b  "), "▁a▁b");
        assert_eq!(m.normalize("   "), "");
        assert_eq!(m.normalize("a\u{2581}"), "▁a");
        let m = mini(&[("▁", -1.0, Normal)], opts(true));
        assert_eq!(m.normalize(" a  b "), "▁▁a▁▁b▁");
        assert_eq!(m.normalize(""), "");
        o.add_dummy_prefix = false;
        o.remove_extra_whitespaces = false;
        let m = mini(&[], o);
        assert_eq!(m.normalize("a b"), "a▁b");
    }

    /// sentencepiece drops the `'▁'` of the first text-producing piece only: `" a"` is `[▁, ▁a]`
    /// and decodes back to `" a"`; bytes or a piece without `'▁'` first means nothing is dropped.
    #[test]
    fn decode_drops_only_the_first_dummy_space() {
        let m = mini(
            &[
                ("▁", -1.0, Normal),
                ("a", -1.0, Normal),
                ("▁a", -2.0, Normal),
            ],
            opts(true),
        );
        let id = |p: &str| m.piece_to_id(p).unwrap();
        let mut ids = Vec::new();
        m.encode(" a", &mut ids);
        assert_eq!(ids, [id("▁"), id("▁a")]);
        let cases: [(&[&str], &str); 6] = [
            (&["▁", "▁a"], " a"),
            (&["<s>", "▁", "▁a"], " a"),
            (&["<0x20>", "▁a"], "  a"),
            (&["a", "▁a"], "a a"),
            (&["<unk>", "▁a"], " ⁇  a"),
            (&["▁"], ""),
        ];
        for (pieces, want) in cases {
            let ids: Vec<u32> = pieces.iter().map(|p| id(p)).collect();
            assert_eq!(m.decode(&ids), want, "{pieces:?}");
        }
        // Concatenated token bytes with one leading space dropped agree (bar <0x20> / <unk> first).
        let bytes: Vec<u8> = [id("▁"), id("▁a")]
            .iter()
            .flat_map(|&i| m.token_bytes(i).unwrap().to_vec())
            .collect();
        assert_eq!(&bytes[1..], b" a");
    }

    #[test]
    fn token_bytes_by_kind() {
        let m = mini(&[("▁a▁", -1.0, Normal)], opts(true));
        assert_eq!(m.token_bytes(0), Some(&b""[..]));
        assert_eq!(m.token_bytes(1), Some(&b""[..]));
        assert_eq!(m.token_bytes(2 + 0x41), Some(&b"A"[..]));
        assert_eq!(m.token_bytes(2 + 256), Some(&b" a "[..]));
        assert_eq!(m.token_bytes(2 + 257), None);
    }

    #[test]
    fn new_rejects_inconsistent_vocabs() {
        let o = opts(true);
        assert!(matches!(
            SpmModel::new(vec!["a".into()], vec![], vec![Normal], None, o),
            Err(SpmError::LengthMismatch { .. })
        ));
        assert!(matches!(
            SpmModel::new(vec![], vec![], vec![], None, o),
            Err(SpmError::VocabSize(0))
        ));
        assert!(matches!(
            SpmModel::new(vec!["a".into()], vec![0.0], vec![Normal], Some(1), o),
            Err(SpmError::UnkOutOfRange { .. })
        ));
        assert!(matches!(
            SpmModel::new(vec!["<0xZZ>".into()], vec![0.0], vec![Byte], None, o),
            Err(SpmError::BadBytePiece { .. })
        ));
        assert!(matches!(
            SpmModel::new(vec!["a".into()], vec![0.0], vec![Normal], None, o),
            Err(SpmError::NoFallback(0))
        ));
    }

    #[test]
    fn long_runs_encode_completely() {
        let mut extra = vec![("▁", -1.0, Normal), ("a", -1.0, Normal)];
        let runs: Vec<String> = (2..=16).map(|n| "a".repeat(n)).collect();
        for (i, r) in runs.iter().enumerate() {
            extra.push((r.as_str(), -2.0 - i as f32, Normal));
        }
        let m = mini(&extra, opts(true));
        let text = "a".repeat(100_000);
        let mut ids = Vec::new();
        m.encode(&text, &mut ids);
        let total: usize = ids.iter().map(|&i| m.token_bytes(i).unwrap().len()).sum();
        assert_eq!(total, 100_001);
    }
}
