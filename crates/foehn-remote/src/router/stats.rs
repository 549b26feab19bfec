//! Latency figures per route over a sliding window: time to first token
//! and decode speed, read back as percentiles.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The last `capacity` samples of one route.
#[derive(Debug, Clone)]
pub(crate) struct LatencyWindow {
    capacity: usize,
    ttft: VecDeque<Duration>,
    tokens_per_second: VecDeque<f64>,
    pub(crate) last_sample: Option<Instant>,
}

impl LatencyWindow {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            ttft: VecDeque::new(),
            tokens_per_second: VecDeque::new(),
            last_sample: None,
        }
    }

    /// Records one served request: its time to first token and, when it
    /// decoded more than one token, its speed.
    pub(crate) fn record(&mut self, now: Instant, ttft: Duration, tokens_per_second: Option<f64>) {
        push_bounded(&mut self.ttft, ttft, self.capacity);
        if let Some(tps) = tokens_per_second.filter(|t| t.is_finite() && *t > 0.0) {
            push_bounded(&mut self.tokens_per_second, tps, self.capacity);
        }
        self.last_sample = Some(now);
    }

    pub(crate) fn samples(&self) -> usize {
        self.ttft.len()
    }

    /// The `q`-quantile (0..=1) of the time to first token.
    pub(crate) fn ttft(&self, q: f64) -> Option<Duration> {
        let secs: Vec<f64> = self.ttft.iter().map(Duration::as_secs_f64).collect();
        quantile(secs, q).map(Duration::from_secs_f64)
    }

    /// The `q`-quantile (0..=1) of the decode speed.
    pub(crate) fn tokens_per_second(&self, q: f64) -> Option<f64> {
        quantile(self.tokens_per_second.iter().copied().collect(), q)
    }
}

fn push_bounded<T>(v: &mut VecDeque<T>, x: T, cap: usize) {
    if v.len() == cap {
        v.pop_front();
    }
    v.push_back(x);
}

/// The nearest-rank quantile of `values`.
pub(crate) fn quantile(mut values: Vec<f64>, q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let q = if q.is_finite() {
        q.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile(v.clone(), 0.5), Some(5.0));
        assert_eq!(quantile(v.clone(), 0.9), Some(9.0));
        assert_eq!(quantile(v.clone(), 1.0), Some(10.0));
        assert_eq!(quantile(v, 0.0), Some(1.0));
        assert_eq!(quantile(vec![], 0.5), None);
    }

    #[test]
    fn window_forgets_old_samples() {
        let now = Instant::now();
        let mut w = LatencyWindow::new(3);
        for ms in [1000, 10, 20, 30] {
            w.record(now, Duration::from_millis(ms), Some(ms as f64));
        }
        assert_eq!(w.samples(), 3);
        assert_eq!(w.ttft(1.0), Some(Duration::from_millis(30)));
        assert_eq!(w.tokens_per_second(0.0), Some(10.0));
        w.record(now, Duration::ZERO, None);
        assert_eq!(w.tokens_per_second(0.0), Some(10.0));
    }
}
