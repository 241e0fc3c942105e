//! Sampled resource use of every child's process tree, for readers
//! (docs/reference.md §6 `resources`, §5 `resources`).
//!
//! The sampler is the only writer: it publishes one immutable
//! [`ResourceSample`] at a time; the HTTP API and the metrics load the latest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::resource_history::ResourceHistory;
use super::status::Timestamp;

/// How a child's process tree is held together (docs/reference.md §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// A cgroup per workspace: every descendant is a member, whatever it
    /// does to its session, group or environment.
    Cgroup,
    /// The child's process group, its descendants and the orphans adopted
    /// from it.
    ProcessGroup,
}

/// Sampled resource use of a child's process tree.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub rss_bytes: u64,
    /// Percent of one core, averaged since the previous sample.
    pub cpu_percent: f32,
    /// How the tree is tracked.
    pub isolation: Isolation,
}

/// Totals over every child tree.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceTotals {
    pub processes: usize,
    pub rss_bytes: u64,
    pub cpu_percent: f32,
}

/// One sample of every workspace's tree.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSample {
    pub children: BTreeMap<String, Resources>,
    pub totals: ResourceTotals,
    pub sampled_at: Option<Timestamp>,
}

/// How long one read of resources keeps the sampler at its full rate: long
/// enough for a Prometheus scraper at its default minute.
pub const DEMAND_WINDOW: Duration = Duration::from_secs(60);

/// Holds the latest [`ResourceSample`]; loads never block.
///
/// Every read ([`Self::load`], [`Self::get`], [`Self::want`]) counts as
/// demand: the sampler measures at its full rate only while someone read in
/// the last [`DEMAND_WINDOW`], and the first read after a quiet spell wakes
/// it at once.
#[derive(Debug, Default)]
pub struct ResourceView {
    current: ArcSwap<ResourceSample>,
    /// The last minutes of samples per workspace, for the dashboard.
    pub history: ResourceHistory,
    /// Milliseconds since the Unix epoch of the last read; 0 before any.
    wanted_at_ms: AtomicU64,
    /// Wakes the sampler when demand comes back.
    demand: tokio::sync::Notify,
}

fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl ResourceView {
    pub fn load(&self) -> Arc<ResourceSample> {
        self.want();
        self.current.load_full()
    }

    pub fn get(&self, workspace: &str) -> Option<Resources> {
        self.want();
        self.current.load().children.get(workspace).copied()
    }

    /// The latest sample without counting as a reader (for the sampler's
    /// own checks).
    pub fn peek(&self) -> Arc<ResourceSample> {
        self.current.load_full()
    }

    /// Records a reader of resources. Cheap: one atomic load, and a store
    /// at most every 100 ms.
    pub fn want(&self) {
        let now = epoch_ms();
        let last = self.wanted_at_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 100 {
            return;
        }
        self.wanted_at_ms.store(now, Ordering::Relaxed);
        if now.saturating_sub(last) >= DEMAND_WINDOW.as_millis() as u64 {
            self.demand.notify_one();
        }
    }

    /// Whether someone read resources in the last [`DEMAND_WINDOW`].
    pub fn wanted(&self) -> bool {
        epoch_ms().saturating_sub(self.wanted_at_ms.load(Ordering::Relaxed)) < DEMAND_WINDOW.as_millis() as u64
    }

    /// Resolves when a read comes after a quiet spell (or came since the
    /// last call).
    pub async fn demand_returns(&self) {
        self.demand.notified().await
    }

    /// Replaces the sample and adds it to the history; only the sampler
    /// calls this.
    pub fn publish(&self, sample: ResourceSample) {
        self.history.record(sample.sampled_at.unwrap_or_else(Timestamp::now), &sample.children);
        self.current.store(Arc::new(sample));
    }
}
