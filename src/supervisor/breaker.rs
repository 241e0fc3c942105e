//! The circuit breaker: closed / open / half-open (docs/reference.md §5).
//!
//! `failureThreshold` consecutive failures (an exit, a failed start, an
//! unhealthy kill) open it. After `openFor` (doubling per re-open, at most
//! `openMax`) one trial start runs half-open. A trial that fails re-opens it;
//! a child that stays up `stableAfter` closes it. An explicit start or
//! restart, or a config change, closes it at once.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerConfig;
use crate::state::BreakerState;

/// Breaker state machine; time comes in as a parameter, so it is pure logic.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    failures: u32,
    /// How many times it opened since it was last closed.
    opens: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker { config, state: BreakerState::Closed, failures: 0, opens: 0, open_until: None }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Consecutive failures counted since it was last closed.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When an open breaker allows its trial start.
    pub fn open_until(&self) -> Option<Instant> {
        self.open_until.filter(|_| self.state == BreakerState::Open)
    }

    /// Counts a failure; returns true when this failure opened the breaker.
    pub fn record_failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        let opens = match self.state {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => self.failures >= self.config.failure_threshold,
            BreakerState::Open => false,
        };
        if opens {
            let doublings = self.opens.min(31);
            let open_for = self
                .config
                .open_for
                .saturating_mul(1u32 << doublings)
                .min(self.config.open_max.max(self.config.open_for));
            self.opens = self.opens.saturating_add(1);
            self.state = BreakerState::Open;
            self.open_until = Some(now + open_for);
        }
        opens
    }

    /// Moves an open breaker whose time is up to half-open; returns whether a
    /// start may run now.
    pub fn allow_start(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed | BreakerState::HalfOpen => true,
            BreakerState::Open if self.open_until.is_some_and(|t| now >= t) => {
                self.state = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open => false,
        }
    }

    /// Closes the breaker and forgets every failure: after a stable run, an
    /// explicit start or restart, or a config change.
    pub fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.failures = 0;
        self.opens = 0;
        self.open_until = None;
    }

    /// How long the breaker stays open, for tests and the debug view.
    pub fn open_for(&self, now: Instant) -> Option<Duration> {
        self.open_until().map(|t| t.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
            open_max: Duration::from_secs(25),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_threshold_then_half_open_after_open_for() {
        let mut b = breaker();
        assert!(!b.record_failure(Instant::now()));
        assert!(!b.record_failure(Instant::now()));
        assert!(b.record_failure(Instant::now()));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow_start(Instant::now()));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!b.allow_start(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.allow_start(Instant::now()));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_trial_reopens_with_doubled_time_capped_at_max() {
        let mut b = breaker();
        for _ in 0..3 {
            b.record_failure(Instant::now());
        }
        let mut open_times = Vec::new();
        for _ in 0..3 {
            open_times.push(b.open_for(Instant::now()).unwrap().as_secs());
            tokio::time::advance(b.open_for(Instant::now()).unwrap()).await;
            assert!(b.allow_start(Instant::now()));
            assert!(b.record_failure(Instant::now()), "a failed trial re-opens");
        }
        assert_eq!(open_times, [10, 20, 25]);
    }

    #[tokio::test(start_paused = true)]
    async fn close_resets_everything() {
        let mut b = breaker();
        for _ in 0..3 {
            b.record_failure(Instant::now());
        }
        b.close();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.failures(), 0);
        assert!(!b.record_failure(Instant::now()));
        assert!(!b.record_failure(Instant::now()));
        assert!(b.record_failure(Instant::now()));
        assert_eq!(b.open_for(Instant::now()), Some(Duration::from_secs(10)), "first open again after a close");
    }
}
