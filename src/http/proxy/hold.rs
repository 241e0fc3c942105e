//! Holding a request while its workspace comes back (docs/reference.md §11):
//! a request of a session that can be carried over waits for the next run
//! instead of failing, as long as a run is on its way.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Proxy, ProxyError, Run};
use crate::state::{Status, WorkspaceRecord};

/// How long a workspace that should run may show `stopped`, or `error` with
/// no restart scheduled, and still count as coming back: a restart passes
/// through those while the old tree is reaped and the new child spawned.
const TRANSIENT_GRACE: Duration = Duration::from_secs(2);

/// Whether a run of `record` can start before `deadline` without anyone
/// asking: the workspace should run, and it is starting, stopping on its
/// way to a restart, in `error` with a restart due by then, or `stopped` or
/// `error` for less than [`TRANSIENT_GRACE`] of the wait (`transient_by`).
fn coming_back(record: &WorkspaceRecord, deadline: SystemTime, transient_by: SystemTime) -> bool {
    let status = &record.status;
    record.desired == "running"
        && status.enabled
        && match status.status {
            Status::Starting | Status::Stopping => true,
            Status::Error if status.breaker.next_retry_at.is_some() => {
                status.breaker.next_retry_at.is_some_and(|at| at.0 <= deadline)
            }
            Status::Error | Status::Stopped => SystemTime::now() < transient_by,
            _ => false,
        }
}

/// How long a request or stream whose child broke off waits for the actor to
/// see that run end before it looks for the next one.
const OLD_RUN_GRACE: Duration = Duration::from_secs(5);

impl Proxy {
    /// Waits (up to [`OLD_RUN_GRACE`]) until the bus shows `old` ended: a
    /// connection can break before the actor sees the child go, and the
    /// next run is one that starts after this one.
    pub async fn past(&self, old: &Run) {
        let _ = tokio::time::timeout(OLD_RUN_GRACE, old.ended.cancelled()).await;
    }

    /// The current run of `name`: at once when it runs; while a run is on
    /// its way, once it starts, waiting up to `within`.
    ///
    /// # Errors
    /// What [`Proxy::route`] answers, once no run is coming (the workspace
    /// is stopped, failed for good, removed, or not back by `within`).
    pub async fn running(&self, name: &str, transport: &'static str, within: Duration) -> Result<Arc<Run>, ProxyError> {
        let deadline = Instant::now() + within;
        let wall_deadline = SystemTime::now() + within;
        let transient_by = SystemTime::now() + TRANSIENT_GRACE;
        // Subscribed before the first look, so no change between is missed.
        let mut changes = self.bus.subscribe(Some(BTreeSet::from([name.to_string()])), Some(self.bus.last_seq()));
        loop {
            let error = match self.route(name, transport) {
                Ok((_, run)) => return Ok(run),
                Err(error) => error,
            };
            match self.bus.view().get(name) {
                Some(record) if coming_back(&record, wall_deadline, transient_by) => {}
                _ => return Err(error),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(error),
                change = changes.next() => if change.is_none() { return Err(error) },
                _ = tokio::time::sleep_until(deadline) => return Err(error),
                // To look again once the grace runs out.
                _ = tokio::time::sleep(TRANSIENT_GRACE) => {}
            }
        }
    }
}
