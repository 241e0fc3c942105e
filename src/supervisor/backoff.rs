//! Restart backoff (docs/reference.md §5).
//!
//! The first restart after a stable run is immediate, so a rare crash costs
//! only the child's own start. Each further consecutive failure waits
//! `backoffInitial`, doubling up to `backoffMax`, with ±10 % jitter.

use std::time::Duration;

/// Consecutive-failure backoff; pure logic, no clock.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max: max.max(initial), failures: 0 }
    }

    /// Counts one more failure and returns how long to wait before the next start.
    ///
    /// `jitter` in `[0, 1)` spreads the delay by ±10 %; the result never
    /// passes `max`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        if self.failures == 1 {
            return Duration::ZERO;
        }
        let doublings = (self.failures - 2).min(31);
        let base = self.initial.saturating_mul(1u32 << doublings).min(self.max);
        base.mul_f64(0.9 + 0.2 * jitter.clamp(0.0, 1.0)).min(self.max)
    }

    /// Consecutive failures counted so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets the failures, after a stable run or an explicit start.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediate_then_doubling_to_max() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let delays: Vec<u128> = (0..6).map(|_| b.next_delay(0.5).as_millis()).collect();
        assert_eq!(delays, [0, 500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(0.5), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_max() {
        let mut lo = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut hi = lo.clone();
        lo.next_delay(0.0);
        hi.next_delay(0.0);
        assert_eq!(lo.next_delay(0.0), Duration::from_millis(900));
        assert_eq!(hi.next_delay(0.999_999).as_millis(), 1099);
        let mut capped = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        capped.next_delay(1.0);
        assert_eq!(capped.next_delay(1.0), Duration::from_secs(1));
    }
}
