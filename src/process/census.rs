//! The launcher's list of live children, for the resource sampler: it
//! measures each tree without knowing how the tree is tracked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::tracking::Tracking;

/// Every live child's tree, by leader pid. A child is listed from its spawn
/// until it is dropped.
#[derive(Debug, Default)]
pub struct Census {
    live: Mutex<BTreeMap<i32, Arc<Tracking>>>,
}

impl Census {
    /// The trees of every live child.
    pub fn trees(&self) -> Vec<Arc<Tracking>> {
        self.live.lock().unwrap().values().cloned().collect()
    }

    pub(crate) fn insert(&self, tracking: Arc<Tracking>) {
        self.live.lock().unwrap().insert(tracking.leader(), tracking);
    }

    pub(crate) fn remove(&self, leader: i32) {
        self.live.lock().unwrap().remove(&leader);
    }
}
