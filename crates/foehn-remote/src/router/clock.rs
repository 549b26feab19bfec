//! Time as the router sees it: injectable, so backoff, cool-downs and
//! latency figures can be tested without waiting.

use std::time::{Duration, Instant};

use foehn_core::CancelToken;

/// A source of time for the router.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;

    /// Waits `duration`, returning early when `cancel` is set.
    fn sleep(&self, duration: Duration, cancel: &CancelToken);
}

/// The real clock: [`Instant::now`] and a sleep that wakes every 20 ms to look at the cancel token.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration, cancel: &CancelToken) {
        let end = Instant::now() + duration;
        loop {
            let now = Instant::now();
            if now >= end || cancel.is_cancelled() {
                return;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
        }
    }
}
