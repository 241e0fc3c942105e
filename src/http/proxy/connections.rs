//! The open proxied exchanges and sessions, for
//! `/api/debug/state/connections` (docs/reference.md §6).
//!
//! An exchange is one proxied HTTP request while its response is open: a
//! POST awaiting its answer, a GET stream, a legacy SSE stream. It lists the
//! JSON-RPC requests still waiting on the child. A session is an
//! `Mcp-Session-Id` that a child issued in answer to an `initialize` (or the
//! `session_id` of a legacy endpoint); an id a client merely sends is never
//! recorded. A session ends with a DELETE, or when the child that issued it
//! goes away unless it can be carried over to the next one
//! ([`super::continuity`]), or when its workspace is removed.
//!
//! Both tables are bounded: exchanges by the connections the server allows,
//! sessions by [`MAX_SESSIONS`] entries and [`MAX_SESSION_BYTES`] bytes, the
//! least recently active evicted first.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use rmcp::model::RequestId;

use super::continuity::ClientSession;
use super::jsonrpc::Request;
use crate::state::{CarriedSession, Timestamp, MAX_LISTED_SESSIONS};

/// Most sessions kept per daemon.
pub const MAX_SESSIONS: usize = 10_000;
/// Most bytes of sessions kept per daemon: their ids and workspace names,
/// plus [`SESSION_OVERHEAD`] each.
pub const MAX_SESSION_BYTES: usize = 2 << 20;
/// What one session costs besides its id and workspace name, about.
const SESSION_OVERHEAD: usize = 96;

/// A request waiting for its answer.
#[derive(Debug, Clone)]
pub struct Pending {
    pub request: Request,
    pub started_at: Timestamp,
}

/// One open proxied request/response.
#[derive(Debug)]
pub struct Exchange {
    pub id: u64,
    pub workspace: String,
    /// `streamable-http` or `sse`.
    pub transport: &'static str,
    /// `POST`, `GET`, `DELETE`, `sse`.
    pub kind: String,
    pub session: Mutex<Option<String>>,
    pub peer: Option<String>,
    pub started_at: Timestamp,
    pending: Mutex<Vec<Pending>>,
}

impl Exchange {
    pub fn add_pending(&self, requests: &[Request]) {
        let now = Timestamp::now();
        let mut pending = self.pending.lock().unwrap();
        pending.extend(requests.iter().map(|r| Pending { request: r.clone(), started_at: now }));
    }

    /// Marks the request with `id` answered.
    pub fn answered(&self, id: &RequestId) {
        self.pending.lock().unwrap().retain(|p| &p.request.id != id);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.lock().unwrap().is_empty()
    }

    /// Removes and returns every request still waiting.
    pub fn take_pending(&self) -> Vec<Request> {
        self.pending.lock().unwrap().drain(..).map(|p| p.request).collect()
    }

    pub fn set_session(&self, session: &str) {
        *self.session.lock().unwrap() = Some(session.to_string());
    }

    fn render(&self) -> Value {
        json!({
            "id": self.id,
            "workspace": self.workspace,
            "transport": self.transport,
            "kind": self.kind,
            "sessionId": *self.session.lock().unwrap(),
            "peer": self.peer,
            "startedAt": self.started_at,
            "pending": render_pending(&self.pending.lock().unwrap()),
        })
    }
}

fn render_pending(pending: &[Pending]) -> Vec<Value> {
    pending.iter().map(|p| json!({"id": p.request.id, "method": p.request.method, "startedAt": p.started_at})).collect()
}

#[derive(Debug)]
struct Session {
    transport: &'static str,
    created_at: Timestamp,
    last_activity: Timestamp,
    /// What carries the session over to a new child, when it can be.
    carried: Option<Arc<ClientSession>>,
    /// Times a session of the stdio bridge was carried over, when it can be.
    bridged_carries: Option<u32>,
    /// Bytes counted for it against [`MAX_SESSION_BYTES`].
    cost: usize,
}

impl Session {
    fn new(workspace: &str, id: &str, transport: &'static str, carried: Option<Arc<ClientSession>>) -> Session {
        let now = Timestamp::now();
        let cost = workspace.len() + id.len() + SESSION_OVERHEAD + carried.as_ref().map_or(0, |c| c.cost());
        Session { transport, created_at: now, last_activity: now, carried, bridged_carries: None, cost }
    }

    /// How many times it was carried over; `None` when it cannot be.
    fn carried_over(&self) -> Option<u32> {
        self.carried.as_ref().map(|c| c.carried_over()).or(self.bridged_carries)
    }

    fn end(&self) {
        if let Some(carried) = &self.carried {
            carried.close_stream();
        }
    }
}

/// The known sessions by workspace and id, within their bounds.
#[derive(Debug)]
struct Sessions {
    by_workspace: BTreeMap<String, BTreeMap<String, Session>>,
    count: usize,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Sessions {
    fn get_mut(&mut self, workspace: &str, id: &str) -> Option<&mut Session> {
        self.by_workspace.get_mut(workspace)?.get_mut(id)
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str, &Session)> {
        self.by_workspace.iter().flat_map(|(w, ids)| ids.iter().map(move |(id, s)| (w.as_str(), id.as_str(), s)))
    }

    /// Adds a session, first evicting the least recently active ones until
    /// it fits. A linear scan: evictions are rare, since only a child's
    /// `initialize` answer adds a session.
    fn insert(&mut self, workspace: &str, id: &str, session: Session) {
        if let Some(known) = self.get_mut(workspace, id) {
            known.last_activity = session.last_activity;
            return;
        }
        let needed = session.cost;
        while self.count > 0 && (self.count >= self.max_entries || self.bytes + needed > self.max_bytes) {
            let idlest =
                self.iter().min_by_key(|(_, _, s)| s.last_activity).map(|(w, id, _)| (w.to_string(), id.to_string()));
            if let Some((w, id)) = idlest {
                self.remove(&w, &id);
            }
        }
        self.count += 1;
        self.bytes += needed;
        if session.carried_over().is_some() {
            crate::bridge::sessions_changed();
        }
        self.by_workspace.entry(workspace.to_string()).or_default().insert(id.to_string(), session);
    }

    fn remove(&mut self, workspace: &str, id: &str) {
        self.remove_where(workspace, |known, _| known == id);
    }

    /// Removes the sessions of `workspace` that `which` picks.
    fn remove_where(&mut self, workspace: &str, which: impl Fn(&str, &Session) -> bool) {
        let Some(ids) = self.by_workspace.get_mut(workspace) else { return };
        let gone: Vec<String> = ids.iter().filter(|(id, s)| which(id, s)).map(|(id, _)| id.clone()).collect();
        for id in gone {
            if let Some(session) = ids.remove(&id) {
                self.count -= 1;
                self.bytes -= session.cost;
                if session.carried_over().is_some() {
                    crate::bridge::sessions_changed();
                }
                session.end();
            }
        }
        if ids.is_empty() {
            self.by_workspace.remove(workspace);
        }
    }
}

/// Every open exchange and known session.
#[derive(Debug)]
pub struct Connections {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Exchange>>>,
    sessions: Mutex<Sessions>,
}

impl Default for Connections {
    fn default() -> Connections {
        Connections::with_limits(MAX_SESSIONS, MAX_SESSION_BYTES)
    }
}

/// Keeps its exchange listed until dropped (with the response body).
#[derive(Debug)]
pub struct Registration {
    connections: Arc<Connections>,
    pub exchange: Arc<Exchange>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.open.lock().unwrap().remove(&self.exchange.id);
    }
}

/// One page of a list, and how long the whole list is.
#[derive(Debug)]
pub struct Listed {
    pub items: Vec<Value>,
    pub total: usize,
}

impl Connections {
    /// Keeps at most `max_entries` sessions of at most `max_bytes` in all.
    pub fn with_limits(max_entries: usize, max_bytes: usize) -> Connections {
        Connections {
            next_id: AtomicU64::new(0),
            open: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(Sessions {
                by_workspace: BTreeMap::new(),
                count: 0,
                bytes: 0,
                max_entries,
                max_bytes,
            }),
        }
    }

    /// Lists a new exchange until the returned registration is dropped.
    pub fn open(
        self: &Arc<Self>,
        workspace: &str,
        transport: &'static str,
        kind: &str,
        session: Option<&str>,
        peer: Option<String>,
    ) -> Registration {
        let exchange = Arc::new(Exchange {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            workspace: workspace.to_string(),
            transport,
            kind: kind.to_string(),
            session: Mutex::new(session.map(str::to_string)),
            peer,
            started_at: Timestamp::now(),
            pending: Mutex::new(Vec::new()),
        });
        self.open.lock().unwrap().insert(exchange.id, exchange.clone());
        Registration { connections: self.clone(), exchange }
    }

    /// Records a session that the child of `workspace` issued.
    pub fn create_session(&self, workspace: &str, session: &str, transport: &'static str) {
        self.sessions.lock().unwrap().insert(workspace, session, Session::new(workspace, session, transport, None));
    }

    /// Records a session of the stdio bridge that is carried over to each new
    /// child of `workspace`.
    pub fn create_bridged(&self, workspace: &str, id: &str, transport: &'static str) {
        let mut session = Session::new(workspace, id, transport, None);
        session.bridged_carries = Some(0);
        self.sessions.lock().unwrap().insert(workspace, id, session);
    }

    /// Counts one carry-over of the bridged session `id`.
    pub fn carried_over(&self, workspace: &str, id: &str) {
        if let Some(known) = self.sessions.lock().unwrap().get_mut(workspace, id) {
            known.bridged_carries = known.bridged_carries.map(|n| n + 1);
            crate::bridge::sessions_changed();
        }
    }

    /// The sessions of `workspace` that are carried over to each new child,
    /// as its status lists them: at most [`MAX_LISTED_SESSIONS`], most
    /// recently active first.
    pub fn carried_sessions(&self, workspace: &str) -> Vec<CarriedSession> {
        let sessions = self.sessions.lock().unwrap();
        let Some(ids) = sessions.by_workspace.get(workspace) else { return Vec::new() };
        let mut carried: Vec<(Timestamp, CarriedSession)> = ids
            .iter()
            .filter_map(|(id, s)| {
                let carried_over = s.carried_over()?;
                let listed = CarriedSession { session_id: id.clone(), transport: s.transport.into(), carried_over };
                Some((s.last_activity, listed))
            })
            .collect();
        carried.sort_by(|a, b| b.0.cmp(&a.0));
        carried.into_iter().take(MAX_LISTED_SESSIONS).map(|(_, listed)| listed).collect()
    }

    /// Records a session under the id mcpvisor gave the client, carried over
    /// to each new child of `workspace`.
    pub fn create_carried(&self, workspace: &str, id: &str, carried: Arc<ClientSession>) {
        let session = Session::new(workspace, id, "streamable-http", Some(carried));
        self.sessions.lock().unwrap().insert(workspace, id, session);
    }

    /// The carried session `id` of `workspace`, noting activity on it.
    pub fn carried(&self, workspace: &str, id: &str) -> Option<Arc<ClientSession>> {
        let mut sessions = self.sessions.lock().unwrap();
        let known = sessions.get_mut(workspace, id)?;
        known.last_activity = Timestamp::now();
        known.carried.clone()
    }

    /// Notes activity on a known session; an unknown one stays unknown.
    pub fn touch_session(&self, workspace: &str, session: &str) {
        if let Some(known) = self.sessions.lock().unwrap().get_mut(workspace, session) {
            known.last_activity = Timestamp::now();
        }
    }

    pub fn end_session(&self, workspace: &str, session: &str) {
        self.sessions.lock().unwrap().remove(workspace, session);
    }

    /// Forgets every session of `workspace`: it was removed.
    pub fn end_workspace(&self, workspace: &str) {
        self.sessions.lock().unwrap().remove_where(workspace, |_, _| true);
    }

    /// Forgets the sessions of `workspace` that its ended run took with it:
    /// all but those carried over to the next run.
    pub fn end_run(&self, workspace: &str) {
        self.sessions
            .lock()
            .unwrap()
            .remove_where(workspace, |_, s| s.carried.is_none() && s.bridged_carries.is_none());
    }

    /// How many sessions are known, and how many bytes they count for.
    pub fn session_usage(&self) -> (usize, usize) {
        let sessions = self.sessions.lock().unwrap();
        (sessions.count, sessions.bytes)
    }

    /// `limit` sessions from `offset`, each with its open streams and
    /// pending requests.
    pub fn sessions(&self, offset: usize, limit: usize) -> Listed {
        let open: Vec<Arc<Exchange>> = self.open.lock().unwrap().values().cloned().collect();
        let sessions = self.sessions.lock().unwrap();
        let items = sessions
            .iter()
            .skip(offset)
            .take(limit)
            .map(|(workspace, id, s)| {
                let mine: Vec<&Arc<Exchange>> = open
                    .iter()
                    .filter(|e| e.workspace == workspace && e.session.lock().unwrap().as_deref() == Some(id))
                    .collect();
                let pending: Vec<Value> =
                    mine.iter().flat_map(|e| render_pending(&e.pending.lock().unwrap())).collect();
                json!({
                    "workspace": workspace,
                    "sessionId": id,
                    "transport": s.transport,
                    "createdAt": s.created_at,
                    "lastActivity": s.last_activity,
                    "openStreams": mine.len(),
                    "carriedOver": s.carried_over(),
                    "pending": pending,
                })
            })
            .collect();
        Listed { items, total: sessions.count }
    }

    /// `limit` open exchanges from `offset`, oldest first.
    pub fn streams(&self, offset: usize, limit: usize) -> Listed {
        let open = self.open.lock().unwrap();
        Listed { items: open.values().skip(offset).take(limit).map(|e| e.render()).collect(), total: open.len() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_stay_within_their_bounds_evicting_the_idlest() {
        let connections = Connections::with_limits(3, 10 * SESSION_OVERHEAD);
        for id in ["a", "b", "c"] {
            connections.create_session("w", id, "streamable-http");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        connections.touch_session("w", "a");
        connections.create_session("w", "d", "streamable-http");
        let ids = |c: &Connections| -> Vec<String> {
            c.sessions(0, 10).items.iter().map(|s| s["sessionId"].as_str().unwrap().to_string()).collect()
        };
        assert_eq!(ids(&connections), ["a", "c", "d"], "b was the idlest");

        let big = "x".repeat(5 * SESSION_OVERHEAD);
        connections.create_session("w", &big, "streamable-http");
        let (n, bytes) = connections.session_usage();
        assert!(bytes <= 10 * SESSION_OVERHEAD, "{n} sessions, {bytes} bytes");
        assert!(ids(&connections).contains(&big));

        connections.touch_session("w", "never-issued");
        assert!(!ids(&connections).contains(&"never-issued".to_string()), "touching never creates");
        connections.end_workspace("w");
        assert_eq!(connections.session_usage(), (0, 0));
    }

    #[test]
    fn lists_page_by_page_with_the_total() {
        let connections = Connections::default();
        for i in 0..25 {
            connections.create_session("w", &format!("s{i:02}"), "sse");
        }
        let page = connections.sessions(20, 10);
        assert_eq!((page.items.len(), page.total), (5, 25));
        assert_eq!(page.items[0]["sessionId"], "s20");
    }
}
