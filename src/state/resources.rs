//! Sampled resource use of every child's process tree, for readers
//! (docs/reference.md §6 `resources`, §5 `resources`).
//!
//! The sampler is the only writer: it publishes one immutable
//! [`ResourceSample`] at a time; the HTTP API and the metrics load the latest.

use std::collections::BTreeMap;
use std::sync::Arc;

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

/// Holds the latest [`ResourceSample`]; loads never block.
#[derive(Debug, Default)]
pub struct ResourceView {
    current: ArcSwap<ResourceSample>,
    /// The last minutes of samples per workspace, for the dashboard.
    pub history: ResourceHistory,
}

impl ResourceView {
    pub fn load(&self) -> Arc<ResourceSample> {
        self.current.load_full()
    }

    pub fn get(&self, workspace: &str) -> Option<Resources> {
        self.current.load().children.get(workspace).copied()
    }

    /// Replaces the sample and adds it to the history; only the sampler
    /// calls this.
    pub fn publish(&self, sample: ResourceSample) {
        self.history.record(sample.sampled_at.unwrap_or_else(Timestamp::now), &sample.children);
        self.current.store(Arc::new(sample));
    }
}
