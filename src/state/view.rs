//! The lock-free, copy-on-write view of every workspace (docs/reference.md §1).

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::status::WorkspaceRecord;

/// An immutable picture of all workspaces at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub workspaces: BTreeMap<String, Arc<WorkspaceRecord>>,
}

/// Holds the latest [`Snapshot`].
///
/// Writers (one actor per workspace) replace their entry with `rcu`, which
/// copies the map of `Arc`s; readers `load` without locking and without ever
/// waiting on a writer.
#[derive(Debug, Default)]
pub struct StateView {
    current: ArcSwap<Snapshot>,
}

impl StateView {
    pub fn new() -> StateView {
        StateView::default()
    }

    /// The latest snapshot; cheap, never blocks.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The latest snapshot as an owned `Arc`, to keep or compare by pointer.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn get(&self, name: &str) -> Option<Arc<WorkspaceRecord>> {
        self.current.load().workspaces.get(name).cloned()
    }

    /// Replaces one workspace's record.
    pub(crate) fn put(&self, record: Arc<WorkspaceRecord>) {
        self.current.rcu(|snapshot| {
            let mut next = Snapshot::clone(snapshot);
            next.workspaces.insert(record.status.workspace.clone(), record.clone());
            next
        });
    }

    pub(crate) fn remove(&self, name: &str) {
        self.current.rcu(|snapshot| {
            let mut next = Snapshot::clone(snapshot);
            next.workspaces.remove(name);
            next
        });
    }
}
