//! The last few minutes of resource samples per workspace, for the
//! dashboard's sparklines (`GET /api/workspaces/{name}/resources`).
//!
//! The sampler appends one point per sampled child tree each round; each
//! workspace keeps a ring of the newest [`DEFAULT_CAPACITY`] points. A
//! workspace missing from as many consecutive rounds as the ring holds (its
//! child stopped long ago, or the workspace was removed) is forgotten, so
//! memory stays bounded by the workspaces that ran recently. Readers copy a
//! ring under a lock that only this memory work takes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use super::resources::Resources;
use super::status::Timestamp;

/// Points kept per workspace: 6 minutes at the sampler's default 2 s.
pub const DEFAULT_CAPACITY: usize = 180;

/// One sample of one workspace's process tree.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePoint {
    pub at: Timestamp,
    pub rss_bytes: u64,
    pub cpu_percent: f32,
}

#[derive(Debug, Default)]
struct Ring {
    points: VecDeque<ResourcePoint>,
    /// Consecutive rounds this workspace was not sampled in.
    missed: usize,
}

/// Per-workspace rings of recent [`ResourcePoint`]s.
#[derive(Debug)]
pub struct ResourceHistory {
    capacity: usize,
    rings: Mutex<HashMap<String, Ring>>,
}

impl Default for ResourceHistory {
    fn default() -> Self {
        ResourceHistory::new(DEFAULT_CAPACITY)
    }
}

impl ResourceHistory {
    /// An empty history keeping `capacity` (at least 1) points per workspace.
    pub fn new(capacity: usize) -> ResourceHistory {
        ResourceHistory { capacity: capacity.max(1), rings: Mutex::new(HashMap::new()) }
    }

    /// Appends one sampling round taken `at`: a point for each workspace in
    /// `children`; every other workspace counts a missed round and is
    /// forgotten once it missed as many rounds as its ring holds.
    pub fn record(&self, at: Timestamp, children: &BTreeMap<String, Resources>) {
        let mut rings = self.rings.lock().unwrap();
        rings.retain(|name, ring| {
            if children.contains_key(name) {
                return true;
            }
            ring.missed += 1;
            ring.missed < self.capacity
        });
        for (name, usage) in children {
            let ring = rings.entry(name.clone()).or_default();
            ring.missed = 0;
            if ring.points.len() == self.capacity {
                ring.points.pop_front();
            }
            ring.points.push_back(ResourcePoint { at, rss_bytes: usage.rss_bytes, cpu_percent: usage.cpu_percent });
        }
    }

    /// The points of `workspace`, oldest first; empty when it has none.
    pub fn get(&self, workspace: &str) -> Vec<ResourcePoint> {
        self.rings.lock().unwrap().get(workspace).map(|r| r.points.iter().copied().collect()).unwrap_or_default()
    }

    /// How many workspaces have a ring.
    pub fn len(&self) -> usize {
        self.rings.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn at(seconds: u64) -> Timestamp {
        Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
    }

    fn round(entries: &[(&str, u64)]) -> BTreeMap<String, Resources> {
        entries
            .iter()
            .map(|(name, rss)| {
                (
                    name.to_string(),
                    Resources {
                        rss_bytes: *rss,
                        cpu_percent: *rss as f32 / 10.0,
                        isolation: crate::state::Isolation::Cgroup,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn keeps_the_newest_points_oldest_first() {
        let history = ResourceHistory::new(3);
        for i in 0..5 {
            history.record(at(i), &round(&[("a", i * 100)]));
        }
        let points = history.get("a");
        assert_eq!(points.iter().map(|p| p.rss_bytes).collect::<Vec<_>>(), [200, 300, 400]);
        assert_eq!(points[0].at, at(2));
        assert_eq!(points[2].cpu_percent, 40.0);
    }

    #[test]
    fn each_workspace_has_its_own_ring() {
        let history = ResourceHistory::new(4);
        history.record(at(0), &round(&[("a", 1), ("b", 10)]));
        history.record(at(1), &round(&[("a", 2)]));
        assert_eq!(history.get("a").len(), 2);
        assert_eq!(history.get("b").iter().map(|p| p.rss_bytes).collect::<Vec<_>>(), [10]);
        assert!(history.get("nobody").is_empty());
    }

    #[test]
    fn a_workspace_absent_for_a_whole_ring_is_forgotten() {
        let history = ResourceHistory::new(3);
        history.record(at(0), &round(&[("gone", 1), ("stays", 1)]));
        history.record(at(1), &round(&[("stays", 2)]));
        history.record(at(2), &round(&[("stays", 3)]));
        assert_eq!(history.get("gone").len(), 1, "a short absence (a restart) keeps the history");
        history.record(at(3), &round(&[("stays", 4)]));
        assert!(history.get("gone").is_empty());
        assert_eq!(history.len(), 1);
    }

    #[test]
    fn coming_back_resets_the_missed_count() {
        let history = ResourceHistory::new(2);
        history.record(at(0), &round(&[("a", 1)]));
        history.record(at(1), &round(&[]));
        history.record(at(2), &round(&[("a", 2)]));
        history.record(at(3), &round(&[]));
        assert_eq!(history.get("a").iter().map(|p| p.rss_bytes).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn serializes_in_the_api_shape() {
        let point = ResourcePoint { at: at(0), rss_bytes: 5, cpu_percent: 1.5 };
        assert_eq!(
            serde_json::to_value(point).unwrap(),
            serde_json::json!({"at": "1970-01-01T00:00:00.000Z", "rssBytes": 5, "cpuPercent": 1.5})
        );
    }
}
