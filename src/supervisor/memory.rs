//! `serve --max-memory-mb`: the daemon-wide memory limit (docs/reference.md §10).
//!
//! Each fresh resource sample's total RSS of all child trees is held
//! against the limit; above it, the largest tree's actor is told to restart
//! its child (a `memory limit` failure, so backoff and the breaker apply).
//! One restart per sample at most, and none until a sample taken after it
//! shows whether it was enough.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::actor::Command;
use super::Registry;
use crate::state::{ResourceSample, ResourceView, Timestamp};

/// Watches the samples every `every` until `cancel` fires.
pub async fn enforce(
    limit_mb: u64,
    resources: Arc<ResourceView>,
    registry: Arc<Registry>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut acted: Option<Timestamp> = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sample = resources.load();
        // Only a sample taken after the last restart says whether it helped.
        if sample.sampled_at.is_none() || sample.sampled_at <= acted {
            continue;
        }
        let Some((workspace, message)) = over(&sample, limit_mb) else { continue };
        let Some(entry) = registry.get(&workspace) else { continue };
        tracing::warn!(workspace, "{message}");
        if entry.handle.send(Command::OverDaemonMemory { message }).is_ok() {
            acted = Some(Timestamp::now());
        }
    }
}

/// The largest tree and why it must restart, when the total is over `limit_mb`.
fn over(sample: &ResourceSample, limit_mb: u64) -> Option<(String, String)> {
    let total = sample.totals.rss_bytes;
    if total <= limit_mb << 20 {
        return None;
    }
    let (workspace, largest) = sample.children.iter().max_by_key(|(_, r)| r.rss_bytes)?;
    let message = format!(
        "memory limit: all child trees use {} MiB, over the daemon's {limit_mb} MiB (--max-memory-mb); \
         this tree is the largest ({} MiB)",
        total >> 20,
        largest.rss_bytes >> 20
    );
    Some((workspace.clone(), message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Isolation, Resources};

    #[test]
    fn the_largest_tree_goes_when_the_total_is_over() {
        let mut sample = ResourceSample::default();
        for (name, mib) in [("small", 10u64), ("large", 30)] {
            let resources = Resources { rss_bytes: mib << 20, cpu_percent: 0.0, isolation: Isolation::ProcessGroup };
            sample.children.insert(name.into(), resources);
        }
        sample.totals.rss_bytes = 40 << 20;
        assert_eq!(over(&sample, 40), None, "at the limit is not over it");
        let (workspace, message) = over(&sample, 39).unwrap();
        assert_eq!(workspace, "large");
        assert!(message.starts_with("memory limit: all child trees use 40 MiB, over the daemon's 39 MiB"));
    }
}
