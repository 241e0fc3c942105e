//! The open proxied exchanges and sessions, for
//! `/api/debug/state/connections` (DESIGN §6).
//!
//! An exchange is one proxied HTTP request while its response is open: a
//! POST awaiting its answer, a GET stream, a legacy SSE stream. It lists the
//! JSON-RPC requests still waiting on the child. A session is an
//! `Mcp-Session-Id` (or a legacy `session_id`) seen on a workspace; it ends
//! with a DELETE or when the child that issued it goes away.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use rmcp::model::RequestId;

use super::jsonrpc::Request;
use crate::state::Timestamp;

/// Sessions kept per daemon; the least recently active go first.
const MAX_SESSIONS: usize = 10_000;

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
}

/// Every open exchange and known session.
#[derive(Debug, Default)]
pub struct Connections {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Exchange>>>,
    sessions: Mutex<BTreeMap<(String, String), Session>>,
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

impl Connections {
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

    /// Notes activity on a session, creating it when new.
    pub fn touch_session(&self, workspace: &str, session: &str, transport: &'static str) {
        let now = Timestamp::now();
        let mut sessions = self.sessions.lock().unwrap();
        let key = (workspace.to_string(), session.to_string());
        if let Some(s) = sessions.get_mut(&key) {
            s.last_activity = now;
            return;
        }
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions.iter().min_by_key(|(_, s)| s.last_activity).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(key, Session { transport, created_at: now, last_activity: now });
    }

    pub fn end_session(&self, workspace: &str, session: &str) {
        self.sessions.lock().unwrap().remove(&(workspace.to_string(), session.to_string()));
    }

    /// Forgets every session of `workspace`: its child is gone.
    pub fn end_workspace(&self, workspace: &str) {
        self.sessions.lock().unwrap().retain(|(w, _), _| w != workspace);
    }

    /// `{"sessions": [...], "streams": [...]}`: sessions with their open
    /// streams and pending requests, and every open exchange.
    pub fn render(&self) -> (Value, Value) {
        let open: Vec<Arc<Exchange>> = self.open.lock().unwrap().values().cloned().collect();
        let sessions = self.sessions.lock().unwrap();
        let sessions: Vec<Value> = sessions
            .iter()
            .map(|((workspace, id), s)| {
                let mine: Vec<&Arc<Exchange>> = open
                    .iter()
                    .filter(|e| &e.workspace == workspace && e.session.lock().unwrap().as_deref() == Some(id.as_str()))
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
                    "pending": pending,
                })
            })
            .collect();
        let streams = open.iter().map(|e| e.render()).collect();
        (Value::Array(sessions), Value::Array(streams))
    }
}
