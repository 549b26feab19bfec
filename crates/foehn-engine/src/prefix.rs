//! The prefix cache: sessions kept after their generations end, so a new
//! request whose prompt starts with tokens one of them already computed (a
//! shared system prompt, a RAG preamble, the earlier turns a stateless
//! OpenAI client sends again) continues from that session's keys and
//! values instead of prefilling them.
//!
//! A kept session is reused whole (its cache truncated to the common
//! prefix), so nothing is copied; at most `budget` bytes of KV caches are
//! kept, the least recently used dropped first.

use std::sync::Mutex;

use serde::Serialize;

use crate::session::Session;

/// What `/health` reports of the prefix cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PrefixCacheStats {
    /// Sessions kept now.
    pub entries: usize,
    /// Bytes of their KV caches.
    pub bytes: usize,
    /// The most bytes kept.
    pub budget_bytes: usize,
    /// Generations that looked for a prefix.
    pub lookups: u64,
    /// Those that found one.
    pub hits: u64,
    /// Prompt tokens not prefilled thanks to the cache.
    pub reused_tokens: u64,
}

/// A kept session and when it was last used.
struct Entry {
    session: Session,
    bytes: usize,
    stamp: u64,
}

#[derive(Default)]
struct Inner {
    entries: Vec<Entry>,
    clock: u64,
    stats: PrefixCacheStats,
}

/// Sessions kept for their prefixes, at most `budget` bytes of KV cache.
pub(crate) struct PrefixCache {
    budget: usize,
    inner: Mutex<Inner>,
}

impl PrefixCache {
    /// An empty cache of at most `budget` bytes (0: keeps nothing).
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner {
                stats: PrefixCacheStats {
                    budget_bytes: budget,
                    ..PrefixCacheStats::default()
                },
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the kept session sharing the longest prefix with `prompt` (at
    /// least one token), if any.
    pub(crate) fn take(&self, prompt: &[u32]) -> Option<Session> {
        if self.budget == 0 {
            return None;
        }
        let mut inner = self.lock();
        inner.stats.lookups += 1;
        let (at, common) = inner
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(e.session.cached_tokens(), prompt)))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))?;
        if common == 0 {
            return None;
        }
        inner.stats.hits += 1;
        let entry = inner.entries.swap_remove(at);
        inner.stats.entries = inner.entries.len();
        inner.stats.bytes -= entry.bytes;
        Some(entry.session)
    }

    /// Counts the prompt tokens a generation did not prefill.
    pub(crate) fn record_reuse(&self, tokens: usize) {
        self.lock().stats.reused_tokens += tokens as u64;
    }

    /// Keeps `session` for later prompts (an empty one, or one larger than
    /// the budget, is dropped), dropping the least recently used sessions
    /// past the budget.
    pub(crate) fn put(&self, session: Session) {
        let bytes = session.memory_bytes();
        if self.budget == 0 || session.cached_tokens().is_empty() || bytes > self.budget {
            return;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let stamp = inner.clock;
        // A session holding the same tokens as a kept one replaces it.
        if let Some(i) = inner
            .entries
            .iter()
            .position(|e| e.session.cached_tokens() == session.cached_tokens())
        {
            let old = inner.entries.swap_remove(i);
            inner.stats.bytes -= old.bytes;
        }
        while inner.stats.bytes + bytes > self.budget {
            let Some(oldest) = (0..inner.entries.len()).min_by_key(|&i| inner.entries[i].stamp)
            else {
                break;
            };
            let old = inner.entries.swap_remove(oldest);
            inner.stats.bytes -= old.bytes;
        }
        inner.entries.push(Entry {
            session,
            bytes,
            stamp,
        });
        inner.stats.bytes += bytes;
        inner.stats.entries = inner.entries.len();
    }

    /// The counters and sizes now.
    pub(crate) fn stats(&self) -> PrefixCacheStats {
        self.lock().stats
    }
}

/// How many tokens `a` and `b` share from the start.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
