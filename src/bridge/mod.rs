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
mod pool;
mod upstream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::state::StdioSessions;

pub use channel::{Outbox, Sink, SESSION_BUFFER};
pub use http_child::{SseChild, StreamableChild};
pub use hub::{BridgeError, Hub, HubSession};
pub use message::{kind, Kind};
pub use pool::{PoolSpec, PooledSession, SessionPool};
pub use upstream::Upstream;

/// Counts every change of the client sessions a status shows
/// ([`Hubs::sessions`]), so a reader that caches rendered statuses knows
/// when to render them again.
static SESSIONS_CHANGED: AtomicU64 = AtomicU64::new(0);

pub(crate) fn sessions_changed() {
    SESSIONS_CHANGED.fetch_add(1, Ordering::Release);
}

/// How many times the client sessions a status shows have changed.
pub fn sessions_version() -> u64 {
    SESSIONS_CHANGED.load(Ordering::Acquire)
}

/// The hub of each workspace's current stdio child.
///
/// The supervisor inserts a hub when it starts a stdio child and removes it
/// when the child exits; the proxy reads it. Locks are held for a map
/// operation only.
#[derive(Debug, Default)]
pub struct Hubs {
    table: Mutex<HashMap<String, Arc<Hub>>>,
    /// The session children of `per-session` workspaces, by workspace.
    pools: Mutex<HashMap<String, Arc<SessionPool>>>,
}

impl Hubs {
    pub fn insert(&self, hub: Arc<Hub>) {
        if let Some(old) = self.table.lock().unwrap().insert(hub.workspace.clone(), hub) {
            old.close();
        }
        sessions_changed();
    }

    /// The hub of `workspace`'s child `pid`, if it is still open.
    pub fn get(&self, workspace: &str, pid: u32) -> Option<Arc<Hub>> {
        self.table.lock().unwrap().get(workspace).filter(|h| h.pid == pid && !h.is_closed()).cloned()
    }

    /// Closes and forgets the hub of `workspace`'s child `pid`, and stops
    /// its session children.
    pub fn remove(&self, workspace: &str, pid: u32) {
        let mut table = self.table.lock().unwrap();
        if table.get(workspace).is_some_and(|h| h.pid == pid) {
            if let Some(hub) = table.remove(workspace) {
                hub.close();
            }
        }
        drop(table);
        let mut pools = self.pools.lock().unwrap();
        if pools.get(workspace).is_some_and(|p| p.pid == pid) {
            if let Some(pool) = pools.remove(workspace) {
                pool.close();
            }
        }
        sessions_changed();
    }

    /// Records the session pool of a `per-session` workspace's run.
    pub fn insert_pool(&self, pool: Arc<SessionPool>) {
        if let Some(old) = self.pools.lock().unwrap().insert(pool.workspace.clone(), pool) {
            old.close();
        }
        sessions_changed();
    }

    /// The session pool of `workspace`'s child `pid`, if it is `per-session`.
    pub fn pool(&self, workspace: &str, pid: u32) -> Option<Arc<SessionPool>> {
        self.pools.lock().unwrap().get(workspace).filter(|p| p.pid == pid && !p.is_closed()).cloned()
    }

    /// Session children by workspace: (workspace, [(session number, pid)]).
    pub fn session_children(&self) -> Vec<(String, Vec<(u64, u32)>)> {
        self.pools.lock().unwrap().values().map(|p| (p.workspace.clone(), p.children())).collect()
    }

    /// The client sessions of `workspace`'s stdio child, for its status:
    /// how many, and with `per-session` the pid of each session's child.
    pub fn sessions(&self, workspace: &str) -> Option<StdioSessions> {
        if let Some(pool) = self.pools.lock().unwrap().get(workspace) {
            let session_pids: Vec<u32> = pool.children().into_iter().map(|(_, pid)| pid).collect();
            return Some(StdioSessions { sessions: session_pids.len(), session_pids });
        }
        let hub = self.table.lock().unwrap().get(workspace).cloned()?;
        Some(StdioSessions { sessions: hub.n_sessions(), session_pids: vec![] })
    }
}
