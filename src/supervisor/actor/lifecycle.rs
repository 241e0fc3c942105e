//! On-demand start and idle stop (docs/reference.md §11): the rules the core
//! applies on top of the status model, kept apart so they read on their own.
//!
//! A workspace *wakes on demand* when a proxied request may start it: it is
//! enabled and either starts `on-demand` (whatever stopped it, an explicit
//! stop included) or was stopped for being idle. An eager workspace that was
//! stopped by hand stays stopped, as without a `lifecycle` key.
//!
//! The idle clock runs only while the child is `running` and `idleStop` is
//! set. At its deadline the core asks the driver for the proxy's activity
//! ([`super::state::Effect::CheckActivity`]) and decides on the answer: no
//! open request or stream, and no request for `idleStop` since the later of
//! the run's start and the last request, stops the child with reason `idle`.
//! An idle stop is a stop, not a failure: no breaker count, no restart.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{StartMode, WorkspaceConfig};

/// Whether a request may start the stopped child of `config`; `parked` when
/// the last stop was an idle stop.
pub(super) fn wakes_on_demand(config: &WorkspaceConfig, parked: bool) -> bool {
    config.enabled && (config.lifecycle.start == StartMode::OnDemand || parked)
}

/// Whether the daemon (or a first valid file) leaves the child to the first request.
pub(super) fn waits_for_demand(config: &WorkspaceConfig) -> bool {
    config.enabled && config.lifecycle.start == StartMode::OnDemand
}

/// The idle clock of the current run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct IdleClock {
    /// The latest activity seen: a request's start or end, or the moment a
    /// check found a request or stream open.
    seen: Option<Instant>,
    /// A check is out; no other is asked for until it is answered.
    asked: bool,
}

impl IdleClock {
    /// When to check the activity of a run that began at `since`; `None`
    /// without `idle_stop` or while a check is out.
    pub(super) fn deadline(&self, since: Instant, idle_stop: Option<Duration>) -> Option<Instant> {
        let idle_stop = idle_stop.filter(|_| !self.asked)?;
        Some(self.seen.map_or(since, |seen| seen.max(since)) + idle_stop)
    }

    /// Marks the check asked for at the deadline.
    pub(super) fn ask(&mut self) {
        self.asked = true;
    }

    /// Takes the answer to a check at `now`; returns whether the child is
    /// idle and stops.
    pub(super) fn answer(
        &mut self,
        since: Instant,
        idle_stop: Option<Duration>,
        last_request: Option<Instant>,
        open: u32,
        now: Instant,
    ) -> bool {
        self.asked = false;
        let Some(idle_stop) = idle_stop else { return false };
        let latest = if open > 0 { Some(now) } else { last_request };
        self.seen = self.seen.max(latest);
        let quiet_since = self.seen.map_or(since, |seen| seen.max(since));
        now.saturating_duration_since(quiet_since) >= idle_stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Option<Duration> = Some(Duration::from_secs(2));

    #[test]
    fn the_clock_counts_from_the_later_of_start_and_last_request() {
        let since = Instant::now();
        let mut clock = IdleClock::default();
        assert_eq!(clock.deadline(since, None), None, "no idleStop, no clock");
        assert_eq!(clock.deadline(since, IDLE), Some(since + Duration::from_secs(2)));
        clock.ask();
        assert_eq!(clock.deadline(since, IDLE), None, "one check at a time");
        let now = since + Duration::from_secs(2);
        let request = Some(since + Duration::from_secs(1));
        assert!(!clock.answer(since, IDLE, request, 0, now), "a request a second ago");
        assert_eq!(clock.deadline(since, IDLE), Some(since + Duration::from_secs(3)));
        assert!(clock.answer(since, IDLE, request, 0, since + Duration::from_secs(3)));
    }

    #[test]
    fn an_open_stream_keeps_the_child_and_restarts_the_clock() {
        let since = Instant::now();
        let mut clock = IdleClock::default();
        let now = since + Duration::from_secs(60);
        assert!(!clock.answer(since, IDLE, Some(since), 1, now));
        assert_eq!(clock.deadline(since, IDLE), Some(now + Duration::from_secs(2)));
        assert!(clock.answer(since, IDLE, Some(since), 0, now + Duration::from_secs(2)), "closed since");
    }
}
