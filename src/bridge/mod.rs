//! The stdio bridge (docs/reference.md §9): mcpvisor owns a `stdio`
//! child's stdin and stdout and serves it to many HTTP client sessions.
//!
//! One [`Hub`] per running `stdio` child multiplexes the client sessions
//! over its newline-delimited JSON-RPC. The supervisor starts a hub with
//! each stdio child, records it in [`Hubs`], initializes and pings the child
//! through it; the proxy looks the hub up for each client session. Client
//! sessions hold a [`HubSession`]: send a message, receive the messages for
//! this session on a channel ([`Sink`], [`Outbox`]).
//!
//! This layer sits above `process/` (it takes the child's pipes) and below
//! `supervisor/` and `http/`, which it knows nothing of.

mod channel;
mod http_child;
mod hub;
mod message;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use channel::{Outbox, Sink, SESSION_BUFFER};
pub use http_child::{SseChild, StreamableChild};
pub use hub::{BridgeError, Hub, HubSession};
pub use message::{kind, Kind};
pub use upstream::Upstream;

/// The hub of each workspace's current stdio child.
///
/// The supervisor inserts a hub when it starts a stdio child and removes it
/// when the child exits; the proxy reads it. Locks are held for a map
/// operation only.
#[derive(Debug, Default)]
pub struct Hubs {
    table: Mutex<HashMap<String, Arc<Hub>>>,
}

impl Hubs {
    pub fn insert(&self, hub: Arc<Hub>) {
        if let Some(old) = self.table.lock().unwrap().insert(hub.workspace.clone(), hub) {
            old.close();
        }
    }

    /// The hub of `workspace`'s child `pid`, if it is still open.
    pub fn get(&self, workspace: &str, pid: u32) -> Option<Arc<Hub>> {
        self.table.lock().unwrap().get(workspace).filter(|h| h.pid == pid && !h.is_closed()).cloned()
    }

    /// Closes and forgets the hub of `workspace`'s child `pid`.
    pub fn remove(&self, workspace: &str, pid: u32) {
        let mut table = self.table.lock().unwrap();
        if table.get(workspace).is_some_and(|h| h.pid == pid) {
            if let Some(hub) = table.remove(workspace) {
                hub.close();
            }
        }
    }

    /// Open client sessions by workspace, for status and debug.
    pub fn sessions(&self) -> Vec<(String, usize)> {
        self.table.lock().unwrap().values().map(|h| (h.workspace.clone(), h.n_sessions())).collect()
    }
}
