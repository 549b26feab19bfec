//! Admission: at most `parallel` generations run at once, at most `queue`
//! requests wait for a turn, and the rest are answered 429 with `Retry-After`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Longest `Retry-After` the estimate gives.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The queue and the counters `/health` reports.
#[derive(Debug)]
pub(crate) struct Scheduler {
    permits: Arc<Semaphore>,
    parallel: usize,
    capacity: usize,
    min_retry_after: Duration,
    waiting: AtomicUsize,
    running: AtomicUsize,
    completed: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    /// Moving average of a generation's duration, in milliseconds (0 = none yet).
    avg_ms: AtomicU64,
}

/// A snapshot of the queue, as `/health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Generations running now.
    pub running: usize,
    /// Requests waiting for a turn.
    pub waiting: usize,
    /// Most generations that run at once.
    pub parallel: usize,
    /// Most requests that wait (more are answered 429).
    pub queue_capacity: usize,
    /// Generations that ran to their end.
    pub completed: u64,
    /// Generations stopped because their client went away.
    pub cancelled: u64,
    /// Generations that ended with an error.
    pub failed: u64,
    /// Requests answered 429 because the queue was full.
    pub rejected: u64,
}

/// How a generation ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Cancelled,
    Failed,
}

impl Scheduler {
    /// A scheduler running `parallel` generations (at least 1) with `capacity` waiting places.
    pub(crate) fn new(parallel: usize, capacity: usize, min_retry_after: Duration) -> Self {
        let parallel = parallel.max(1);
        Self {
            permits: Arc::new(Semaphore::new(parallel)),
            parallel,
            capacity,
            min_retry_after,
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            avg_ms: AtomicU64::new(0),
        }
    }

    /// Waits for a turn; a full queue is an immediate 429. The turn lasts as
    /// long as the permit (a future dropped while waiting leaves the queue).
    pub(crate) async fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let reserved = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < self.capacity).then_some(w + 1)
            });
        if reserved.is_err() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::queue_full(self.capacity, self.retry_after()));
        }
        let _place = WaitingPlace(&self.waiting);
        self.permits.clone().acquire_owned().await.map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "shutting down",
            )
        })
    }

    /// When a rejected client should come back: the queue's expected drain
    /// time from the average generation, between the configured minimum and a minute.
    pub(crate) fn retry_after(&self) -> Duration {
        let avg = Duration::from_millis(self.avg_ms.load(Ordering::Relaxed));
        let rounds = (self.waiting.load(Ordering::Relaxed) / self.parallel + 1) as u32;
        (avg * rounds).clamp(
            self.min_retry_after,
            MAX_RETRY_AFTER.max(self.min_retry_after),
        )
    }

    /// Marks a generation as running until the guard drops.
    pub(crate) fn running(self: &Arc<Self>) -> RunningGuard {
        self.running.fetch_add(1, Ordering::SeqCst);
        RunningGuard {
            scheduler: self.clone(),
            started: Instant::now(),
            outcome: Outcome::Failed,
        }
    }

    /// The counters now.
    pub(crate) fn stats(&self) -> QueueStats {
        QueueStats {
            running: self.running.load(Ordering::SeqCst),
            waiting: self.waiting.load(Ordering::SeqCst),
            parallel: self.parallel,
            queue_capacity: self.capacity,
            completed: self.completed.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// A place in the queue, given back on drop.
struct WaitingPlace<'a>(&'a AtomicUsize);

impl Drop for WaitingPlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running generation: counted until dropped, then filed under its outcome
/// (failed unless told otherwise, so a panicking generator counts as failed).
pub(crate) struct RunningGuard {
    scheduler: Arc<Scheduler>,
    started: Instant,
    outcome: Outcome,
}

impl RunningGuard {
    /// Records how the generation ended.
    pub(crate) fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let s = &self.scheduler;
        let counter = match self.outcome {
            Outcome::Completed => {
                let ms = self.started.elapsed().as_millis().min(u128::from(u32::MAX)) as u64;
                // An exponential moving average (weight 1/8) of completed generations.
                let _ = s
                    .avg_ms
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                        Some(if avg == 0 {
                            ms.max(1)
                        } else {
                            (avg * 7 + ms) / 8
                        })
                    });
                &s.completed
            }
            Outcome::Cancelled => &s.cancelled,
            Outcome::Failed => &s.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        s.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_answers_429_and_a_dropped_waiter_leaves_it() {
        let s = Arc::new(Scheduler::new(1, 1, Duration::from_secs(2)));
        let first = s.admit().await.unwrap();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.admit().await.map(drop) })
        };
        while s.stats().waiting == 0 {
            tokio::task::yield_now().await;
        }
        let e = s.admit().await.unwrap_err();
        assert_eq!(e.status.as_u16(), 429);
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(s.stats().rejected, 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(
            s.stats().waiting,
            0,
            "an aborted waiter gives its place back"
        );
        drop(first);
        let _again = s.admit().await.unwrap();
    }

    #[test]
    fn guards_count_running_and_outcomes() {
        let s = Arc::new(Scheduler::new(2, 4, Duration::from_secs(1)));
        let mut a = s.running();
        let b = s.running();
        assert_eq!(s.stats().running, 2);
        a.set_outcome(Outcome::Cancelled);
        drop(a);
        drop(b);
        let st = s.stats();
        assert_eq!(
            (st.running, st.cancelled, st.failed, st.completed),
            (0, 1, 1, 0)
        );
    }
}
