//! A per-route circuit breaker: consecutive failures open it for a
//! cool-down, after which one probe request is let through (half-open).

use std::time::{Duration, Instant};

/// Circuit-breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit. Default 5; 0 disables the breaker.
    pub failure_threshold: u32,
    /// How long an open circuit refuses requests before a probe. Default 30 s.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// Where a route's circuit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; counts consecutive failures.
    Closed {
        /// Failures in a row so far.
        failures: u32,
    },
    /// Requests are refused until `until`.
    Open {
        /// When a probe may go through.
        until: Instant,
    },
    /// One probe request is in flight (since `since`); others are refused.
    HalfOpen {
        /// When the probe started.
        since: Instant,
    },
}

/// The breaker of one route.
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a request may go to the route now; moves an expired open
    /// circuit to half-open (this request is its probe). `Err` = refused until then.
    pub(crate) fn admit(&mut self, now: Instant) -> Result<(), Instant> {
        match self.state {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } if now < until => Err(until),
            // A probe that never reported (its caller vanished) does not block forever.
            BreakerState::HalfOpen { since } if now < self.after_cool_down(since) => {
                Err(self.after_cool_down(since))
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::HalfOpen { since: now };
                Ok(())
            }
        }
    }

    fn after_cool_down(&self, t: Instant) -> Instant {
        t.checked_add(self.config.cool_down).unwrap_or(t)
    }

    pub(crate) fn success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    pub(crate) fn failure(&mut self, now: Instant) {
        if self.config.failure_threshold == 0 {
            return;
        }
        self.state = match self.state {
            BreakerState::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                BreakerState::Closed {
                    failures: failures + 1,
                }
            }
            _ => BreakerState::Open {
                until: self.after_cool_down(now),
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_secs(10),
        });
        b.failure(t0);
        assert!(b.admit(t0).is_ok());
        b.failure(t0);
        assert_eq!(
            b.admit(t0 + Duration::from_secs(5)),
            Err(t0 + Duration::from_secs(10))
        );
        // Cool-down over: one probe goes through, the next is refused.
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.admit(t1).is_ok());
        assert!(b.admit(t1).is_err());
        // A failed probe re-opens it; a successful one closes it.
        b.failure(t1);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        let t2 = t1 + Duration::from_secs(10);
        assert!(b.admit(t2).is_ok());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn success_resets_the_count_and_zero_disables() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_secs(1),
        });
        b.failure(t0);
        b.success();
        b.failure(t0);
        assert!(b.admit(t0).is_ok());
        let mut off = Breaker::new(BreakerConfig {
            failure_threshold: 0,
            cool_down: Duration::from_secs(1),
        });
        for _ in 0..10 {
            off.failure(t0);
        }
        assert!(off.admit(t0).is_ok());
    }
}
