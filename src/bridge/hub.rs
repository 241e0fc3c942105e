//! The hub: one per running `stdio` child. It owns the child's stdin and
//! stdout and multiplexes many client sessions over them
//! (docs/reference.md §9).
//!
//! Client to child: each request gets an id of the hub's own (a counter),
//! and its `progressToken` is replaced by that id, so two sessions that both
//! send `id: 1` never meet at the child. Child to client: answers and
//! progress go back to the request's reply channel with the client's id and
//! token restored; `resources/updated` to the subscribed sessions; other
//! notifications to every session; a request of the child (sampling,
//! elicitation, roots) to the session whose request is in flight, else the
//! most recently active one, and its answer back to the child unchanged.
//!
//! The stdout reader never waits for a client: each session's queued bytes
//! are counted against [`SESSION_BUFFER`], and a session past it is closed
//! alone. Routing state sits under one mutex held only for memory
//! operations; writes to stdin go through a channel to a writer task.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use rmcp::model::{ErrorCode, ProtocolVersion};
use serde_json::{json, Value};
use thiserror::Error;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

pub use super::channel::SESSION_BUFFER;
use tokio_util::sync::CancellationToken;

use super::channel::{deliver, Budget, Outbox, Sink};
use super::message::{self, Kind};
use crate::process::{LogSink, StdioPipes, Stream};

/// The longest line read from a child's stdout (64 MiB); a longer one is
/// dropped as a protocol error.
const MAX_LINE: usize = 64 << 20;

/// Why the bridge could not do something.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BridgeError {
    #[error("the stdio child of workspace {0:?} is gone")]
    Closed(String),
    #[error("session closed: {0}")]
    SessionClosed(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the child answered {method} with an error: {error}")]
    Refused { method: String, error: String },
    #[error("all {0} session children of the workspace are in use (stdio.maxSessions)")]
    Full(usize),
    #[error("{0}")]
    Spawn(String),
}

/// What a session shares with its handle.
#[derive(Debug, Default)]
struct SessionShared {
    closed: CancellationToken,
    reason: OnceLock<String>,
}

struct SessionEntry {
    shared: Arc<SessionShared>,
    budget: Arc<Budget>,
    /// Where messages not tied to a request go (a GET or legacy stream).
    standby: Option<mpsc::UnboundedSender<Bytes>>,
    /// Such messages while no stream is open, within the budget.
    backlog: VecDeque<Bytes>,
    /// Hub ids of the session's requests in flight.
    in_flight: BTreeSet<u64>,
    subscriptions: HashSet<String>,
    /// A logical clock of the session's last request.
    last_active: u64,
}

/// A client request in flight at the child.
struct Pending {
    session: u64,
    client_id: Value,
    client_token: Option<Value>,
    reply: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct Routing {
    next_id: u64,
    clock: u64,
    sessions: HashMap<u64, SessionEntry>,
    pending: HashMap<u64, Pending>,
    /// The hub's own requests (initialize, ping, unsubscribe).
    own: HashMap<u64, oneshot::Sender<Value>>,
    /// Requests of the child awaiting a client's answer: their id (as JSON
    /// text) and the session they went to.
    from_child: HashMap<String, u64>,
}

/// The multiplexer of one `stdio` child.
pub struct Hub {
    pub workspace: String,
    pub pid: u32,
    stdin: mpsc::UnboundedSender<Vec<u8>>,
    routing: Mutex<Routing>,
    closed: CancellationToken,
    /// The child's own `InitializeResult`, once mcpvisor initialized it.
    initialized: OnceLock<Arc<Value>>,
    logs: LogSink,
    protocol_errors: Counter,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("workspace", &self.workspace).field("pid", &self.pid).finish_non_exhaustive()
    }
}

/// Where a delivery goes.
enum Route {
    Pending(u64),
    Unrelated(u64),
}

impl Hub {
    /// Takes over `pipes` of the child `pid` of `workspace`: a reader task
    /// routes its stdout lines, a writer task feeds its stdin. Lines that are
    /// not JSON-RPC go to `logs` and count in `protocol_errors`.
    ///
    /// The hub closes when the child's stdout ends or [`Hub::close`] is
    /// called; closing ends its stdin.
    pub fn start(workspace: &str, pid: u32, pipes: StdioPipes, logs: LogSink, protocol_errors: Counter) -> Arc<Hub> {
        let (stdin, lines) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            workspace: workspace.to_string(),
            pid,
            stdin,
            routing: Mutex::new(Routing { next_id: 1, ..Routing::default() }),
            closed: CancellationToken::new(),
            initialized: OnceLock::new(),
            logs,
            protocol_errors,
        });
        tokio::spawn(write_stdin(pipes.stdin, lines, hub.closed.clone()));
        tokio::spawn(read_stdout(hub.clone(), BufReader::with_capacity(64 << 10, pipes.stdout)));
        hub
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves once the hub is closed.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Closes the hub: every session ends, every request of the hub fails,
    /// the child's stdin closes.
    pub fn close(&self) {
        if self.closed.is_cancelled() {
            return;
        }
        self.closed.cancel();
        let mut routing = self.routing.lock().unwrap();
        routing.own.clear();
        routing.pending.clear();
        routing.from_child.clear();
        for (_, session) in routing.sessions.drain() {
            let _ = session.shared.reason.set("the child exited".to_string());
            session.shared.closed.cancel();
        }
    }

    /// The child's `InitializeResult`, once it is initialized.
    pub fn initialize_result(&self) -> Option<Arc<Value>> {
        self.initialized.get().cloned()
    }

    /// Initializes the child as mcpvisor: `initialize` (declaring roots,
    /// sampling and elicitation, so the child offers what needs them), then
    /// `notifications/initialized`. Keeps the child's result for clients.
    ///
    /// # Errors
    /// The child answered with an error, did not answer within `timeout`,
    /// or is gone.
    pub async fn initialize(&self, timeout: Duration) -> Result<(), BridgeError> {
        if self.initialized.get().is_some() {
            return Ok(());
        }
        let params = json!({
            "protocolVersion": ProtocolVersion::LATEST_WITH_INITIALIZE,
            "capabilities": {"roots": {"listChanged": true}, "sampling": {}, "elicitation": {}},
            "clientInfo": {"name": "mcpvisor", "version": env!("CARGO_PKG_VERSION")},
        });
        let result = self.request("initialize", params, timeout).await?;
        self.write(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        let _ = self.initialized.set(Arc::new(result));
        Ok(())
    }

    /// Liveness: one MCP `ping`.
    ///
    /// # Errors
    /// No answer within `timeout`, an error, or the hub is closed.
    pub async fn ping(&self, timeout: Duration) -> Result<(), BridgeError> {
        self.request("ping", json!({}), timeout).await.map(drop)
    }

    /// Sends a request of the hub's own and waits for its result.
    async fn request(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, BridgeError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut routing = self.routing.lock().unwrap();
            if self.is_closed() {
                return Err(self.gone());
            }
            let id = routing.take_id();
            routing.own.insert(id, tx);
            id
        };
        self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let answer = tokio::select! {
            answer = rx => answer.map_err(|_| self.gone()),
            _ = tokio::time::sleep(timeout) => Err(BridgeError::Timeout(timeout)),
        };
        self.routing.lock().unwrap().own.remove(&id);
        let answer = answer?;
        match (answer.get("result"), answer.get("error")) {
            (Some(result), _) => Ok(result.clone()),
            (_, error) => Err(BridgeError::Refused {
                method: method.to_string(),
                error: error.map_or_else(|| "no result".to_string(), Value::to_string),
            }),
        }
    }

    fn gone(&self) -> BridgeError {
        BridgeError::Closed(self.workspace.clone())
    }

    fn write(&self, message: &Value) {
        let _ = self.stdin.send(message::line(message));
    }

    /// Opens a client session on the child.
    ///
    /// # Errors
    /// The hub is closed.
    pub fn open_session(self: &Arc<Self>) -> Result<HubSession, BridgeError> {
        let mut routing = self.routing.lock().unwrap();
        if self.is_closed() {
            return Err(self.gone());
        }
        let id = routing.take_id();
        let shared = Arc::new(SessionShared::default());
        routing.clock += 1;
        let entry = SessionEntry {
            shared: shared.clone(),
            budget: Arc::default(),
            standby: None,
            backlog: VecDeque::new(),
            in_flight: BTreeSet::new(),
            subscriptions: HashSet::new(),
            last_active: routing.clock,
        };
        let budget = entry.budget.clone();
        routing.sessions.insert(id, entry);
        super::sessions_changed();
        Ok(HubSession { hub: self.clone(), id, shared, budget })
    }

    /// Number of open client sessions.
    pub fn n_sessions(&self) -> usize {
        self.routing.lock().unwrap().sessions.len()
    }

    /// Ends session `id`: its requests in flight are cancelled at the child,
    /// requests of the child routed to it are refused, and subscriptions no
    /// other session holds are dropped.
    fn end_session(&self, id: u64, reason: &str) {
        let mut routing = self.routing.lock().unwrap();
        let Some(entry) = routing.sessions.remove(&id) else { return };
        super::sessions_changed();
        let _ = entry.shared.reason.set(reason.to_string());
        entry.shared.closed.cancel();
        if self.is_closed() {
            return;
        }
        let mut out = Vec::new();
        for hub_id in &entry.in_flight {
            routing.pending.remove(hub_id);
            out.push(json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": hub_id, "reason": format!("client session {reason}")}}));
        }
        let refused: Vec<String> =
            routing.from_child.iter().filter(|(_, s)| **s == id).map(|(child_id, _)| child_id.clone()).collect();
        for child_id in refused {
            routing.from_child.remove(&child_id);
            let child_id: Value = serde_json::from_str(&child_id).unwrap_or(Value::Null);
            out.push(message::error_response(child_id, ErrorCode::INTERNAL_ERROR, format!("client session {reason}")));
        }
        for uri in &entry.subscriptions {
            if !routing.sessions.values().any(|s| s.subscriptions.contains(uri)) {
                let hub_id = routing.take_id();
                out.push(
                    json!({"jsonrpc": "2.0", "id": hub_id, "method": "resources/unsubscribe", "params": {"uri": uri}}),
                );
            }
        }
        drop(routing);
        for message in &out {
            self.write(message);
        }
    }

    /// One message of client session `id` for the child; answers and the
    /// messages about a request go to `reply`.
    fn client_message(&self, id: u64, mut message: Value, reply: &Sink) -> Result<(), BridgeError> {
        let mut routing = self.routing.lock().unwrap();
        if self.is_closed() {
            return Err(self.gone());
        }
        let Some(session) = routing.sessions.get(&id) else {
            return Err(BridgeError::SessionClosed("the session ended".to_string()));
        };
        let shared = session.shared.clone();
        let local = match message::kind(&message) {
            Some(Kind::Request) => self.client_request(&mut routing, id, &mut message, reply),
            Some(Kind::Notification) => client_notification(&routing, id, &mut message),
            Some(Kind::Response) => {
                let key = message.get("id").map(Value::to_string).unwrap_or_default();
                match routing.from_child.get(&key) {
                    Some(session) if *session == id => {
                        routing.from_child.remove(&key);
                        Forward::Child
                    }
                    _ => Forward::Drop("an answer to no request of the child"),
                }
            }
            None => Forward::Drop("not a JSON-RPC message"),
        };
        match local {
            Forward::Child => {
                drop(routing);
                self.write(&message);
            }
            Forward::Answer(answer) => {
                let overflow = deliver(&reply.tx, &reply.budget, message::bytes(&answer));
                drop(routing);
                if overflow {
                    self.overflow(id);
                    return Err(BridgeError::SessionClosed(shared.reason.get().cloned().unwrap_or_default()));
                }
            }
            Forward::Drop(why) => {
                tracing::debug!(workspace = %self.workspace, "dropping a client message: {why}");
            }
        }
        Ok(())
    }

    fn client_request(&self, routing: &mut Routing, id: u64, message: &mut Value, reply: &Sink) -> Forward {
        let client_id = message["id"].clone();
        match message::method(message) {
            "initialize" => {
                return match self.initialized.get() {
                    Some(result) => Forward::Answer(message::result_response(client_id, (**result).clone())),
                    None => Forward::Answer(message::error_response(
                        client_id,
                        ErrorCode::INTERNAL_ERROR,
                        "the child is not initialized yet".to_string(),
                    )),
                };
            }
            "resources/subscribe" | "resources/unsubscribe" => {
                let uri = message.pointer("/params/uri").and_then(Value::as_str).unwrap_or_default().to_string();
                let subscribe = message::method(message) == "resources/subscribe";
                let session = routing.sessions.get_mut(&id).expect("checked by the caller");
                if subscribe {
                    session.subscriptions.insert(uri.clone());
                } else {
                    session.subscriptions.remove(&uri);
                }
                let others = routing.sessions.iter().any(|(s, e)| *s != id && e.subscriptions.contains(&uri));
                // The child holds one subscription for all sessions.
                if others {
                    return Forward::Answer(message::result_response(client_id, json!({})));
                }
            }
            _ => {}
        }
        let hub_id = routing.take_id();
        let client_token = message::progress_token(message).cloned();
        if client_token.is_some() {
            message::set_progress_token(message, json!(hub_id));
        }
        message["id"] = json!(hub_id);
        routing.clock += 1;
        let clock = routing.clock;
        let session = routing.sessions.get_mut(&id).expect("checked by the caller");
        session.in_flight.insert(hub_id);
        session.last_active = clock;
        routing.pending.insert(hub_id, Pending { session: id, client_id, client_token, reply: reply.tx.clone() });
        Forward::Child
    }

    /// Closes session `id` for not reading its messages.
    fn overflow(&self, id: u64) {
        tracing::warn!(workspace = %self.workspace, "closing a client session that left {SESSION_BUFFER} bytes unread");
        self.end_session(id, &format!("closed: the client left {} MiB of messages unread", SESSION_BUFFER >> 20));
    }

    /// Routes one line of the child's stdout.
    fn on_line(&self, line: &[u8]) {
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
        }
        let parsed: Option<Value> = serde_json::from_slice(line).ok();
        let Some((mut message, kind)) = parsed.and_then(|m| message::kind(&m).map(|k| (m, k))) else {
            self.protocol_errors.inc();
            let text = String::from_utf8_lossy(line).into_owned();
            tracing::debug!(workspace = %self.workspace, "the child wrote a line that is not JSON-RPC: {text}");
            self.logs.push(Stream::Stdout, text);
            return;
        };
        let mut routing = self.routing.lock().unwrap();
        let mut overflowed = Vec::new();
        let mut to_child = None;
        match kind {
            Kind::Response => {
                let hub_id = message["id"].as_u64().unwrap_or(0);
                if let Some(own) = routing.own.remove(&hub_id) {
                    let _ = own.send(message);
                } else if let Some(pending) = routing.pending.remove(&hub_id) {
                    if let Some(session) = routing.sessions.get_mut(&pending.session) {
                        session.in_flight.remove(&hub_id);
                    }
                    message["id"] = pending.client_id.clone();
                    routing.send(&Route::Pending(hub_id), Some(&pending), message::bytes(&message), &mut overflowed);
                }
            }
            Kind::Notification => {
                routing.child_notification(&mut message, &mut overflowed);
            }
            Kind::Request if message::method(&message) == "ping" => {
                // mcpvisor is the child's client: it answers pings itself.
                to_child = Some(message::result_response(message["id"].clone(), json!({})));
            }
            Kind::Request => match routing.session_for_request() {
                Some(session) => {
                    routing.from_child.insert(message["id"].to_string(), session);
                    let route = match routing.sessions[&session].in_flight.last() {
                        Some(hub_id) => Route::Pending(*hub_id),
                        None => Route::Unrelated(session),
                    };
                    routing.send(&route, None, message::bytes(&message), &mut overflowed);
                }
                None => {
                    let method = message::method(&message).to_string();
                    to_child = Some(message::error_response(
                        message["id"].clone(),
                        ErrorCode::METHOD_NOT_FOUND,
                        format!("no client session can take {method}"),
                    ));
                }
            },
        }
        drop(routing);
        if let Some(answer) = to_child {
            self.write(&answer);
        }
        for session in overflowed {
            self.overflow(session);
        }
    }
}

/// What to do with a client's message.
enum Forward {
    Child,
    /// Answered by the hub itself.
    Answer(Value),
    Drop(&'static str),
}

fn client_notification(routing: &Routing, id: u64, message: &mut Value) -> Forward {
    match message::method(message) {
        // The child was initialized once, by mcpvisor.
        "notifications/initialized" => Forward::Drop("the child is initialized already"),
        "notifications/cancelled" => {
            let target = message.pointer("/params/requestId").cloned().unwrap_or(Value::Null);
            let found = routing.pending.iter().find(|(_, p)| p.session == id && p.client_id == target);
            match found {
                Some((hub_id, _)) => {
                    message["params"]["requestId"] = json!(hub_id);
                    Forward::Child
                }
                None => Forward::Drop("a cancellation of no request in flight"),
            }
        }
        _ => Forward::Child,
    }
}

impl Routing {
    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The session a request of the child goes to: the one with requests in
    /// flight when there is exactly one, else the most recently active.
    fn session_for_request(&self) -> Option<u64> {
        let busy: BTreeSet<u64> = self.pending.values().map(|p| p.session).collect();
        if busy.len() == 1 {
            return busy.first().copied();
        }
        self.sessions.iter().max_by_key(|(_, s)| s.last_active).map(|(id, _)| *id)
    }

    fn child_notification(&mut self, message: &mut Value, overflowed: &mut Vec<u64>) {
        match message::method(message) {
            "notifications/progress" => {
                let Some(hub_id) = message.pointer("/params/progressToken").and_then(Value::as_u64) else { return };
                let Some(pending) = self.pending.get(&hub_id) else { return };
                let token = pending.client_token.clone().unwrap_or(Value::Null);
                message["params"]["progressToken"] = token;
                let route = Route::Pending(hub_id);
                let bytes = message::bytes(message);
                self.send(&route, None, bytes, overflowed);
            }
            "notifications/cancelled" => {
                let key = message.pointer("/params/requestId").map(Value::to_string).unwrap_or_default();
                if let Some(session) = self.from_child.remove(&key) {
                    self.send(&Route::Unrelated(session), None, message::bytes(message), overflowed);
                }
            }
            "notifications/resources/updated" => {
                let uri = message.pointer("/params/uri").and_then(Value::as_str).unwrap_or_default();
                let subscribed: Vec<u64> =
                    self.sessions.iter().filter(|(_, s)| s.subscriptions.contains(uri)).map(|(id, _)| *id).collect();
                let bytes = message::bytes(message);
                for session in subscribed {
                    self.send(&Route::Unrelated(session), None, bytes.clone(), overflowed);
                }
            }
            _ => {
                let bytes = message::bytes(message);
                let all: Vec<u64> = self.sessions.keys().copied().collect();
                for session in all {
                    self.send(&Route::Unrelated(session), None, bytes.clone(), overflowed);
                }
            }
        }
    }

    /// Delivers `bytes` by `route`; a session past its budget is added to
    /// `overflowed`. `removed` is the pending entry of an answer, already
    /// taken out of the table.
    fn send(&mut self, route: &Route, removed: Option<&Pending>, bytes: Bytes, overflowed: &mut Vec<u64>) {
        let (session_id, tx) = match route {
            Route::Pending(hub_id) => match removed.or_else(|| self.pending.get(hub_id)) {
                Some(pending) => (pending.session, Some(pending.reply.clone())),
                None => return,
            },
            Route::Unrelated(session) => (*session, None),
        };
        let Some(session) = self.sessions.get_mut(&session_id) else { return };
        // A request's reply channel whose client left: the session's stream
        // takes its messages instead.
        let tx = tx.filter(|tx| !tx.is_closed());
        let tx = tx.or_else(|| session.standby.clone().filter(|tx| !tx.is_closed()));
        let tx = tx.or_else(|| {
            let newest = session.in_flight.last()?;
            Some(self.pending.get(newest)?.reply.clone()).filter(|tx| !tx.is_closed())
        });
        let over = match tx {
            Some(tx) => deliver(&tx, &session.budget, bytes),
            None => {
                let over = session.budget.add(bytes.len());
                session.backlog.push_back(bytes);
                over
            }
        };
        if over {
            overflowed.push(session_id);
        }
    }
}

/// A client session on a hub. Dropping it ends the session.
#[derive(Debug)]
pub struct HubSession {
    hub: Arc<Hub>,
    id: u64,
    shared: Arc<SessionShared>,
    budget: Arc<Budget>,
}

impl HubSession {
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// A channel for this session's messages, counted against its budget.
    pub fn channel(&self) -> (Sink, Outbox) {
        super::channel::pair(&self.budget)
    }

    /// Sends one client message to the child; a request's answer and the
    /// messages about it (progress, requests of the child) go to `reply`.
    ///
    /// # Errors
    /// The hub or the session is closed.
    pub fn send(&self, message: Value, reply: &Sink) -> Result<(), BridgeError> {
        self.hub.client_message(self.id, message, reply)
    }

    /// Makes `sink` the session's stream for messages not tied to a request;
    /// what waited for one is sent there first.
    pub fn standby(&self, sink: &Sink) {
        let mut routing = self.hub.routing.lock().unwrap();
        let Some(session) = routing.sessions.get_mut(&self.id) else { return };
        for bytes in session.backlog.drain(..) {
            session.budget.release(bytes.len());
            deliver(&sink.tx, &sink.budget, bytes);
        }
        session.standby = Some(sink.tx.clone());
    }

    /// Passes a message that reached a channel that cannot carry it (a
    /// JSON answer) on to the session's stream.
    pub fn redeliver(&self, bytes: Bytes) {
        let mut overflowed = Vec::new();
        self.hub.routing.lock().unwrap().send(&Route::Unrelated(self.id), None, bytes, &mut overflowed);
        for session in overflowed {
            self.hub.overflow(session);
        }
    }

    /// Resolves once the session or its hub is closed.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Why the session closed, once it did.
    pub fn close_reason(&self) -> Option<String> {
        self.shared.reason.get().cloned()
    }
}

impl Drop for HubSession {
    fn drop(&mut self) {
        self.hub.end_session(self.id, "ended");
    }
}

async fn write_stdin(
    mut stdin: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    mut lines: mpsc::UnboundedReceiver<Vec<u8>>,
    closed: CancellationToken,
) {
    loop {
        let line = tokio::select! {
            biased;
            _ = closed.cancelled() => break,
            line = lines.recv() => line,
        };
        let Some(line) = line else { break };
        let written = tokio::select! {
            _ = closed.cancelled() => break,
            written = stdin.write_all(&line) => written,
        };
        if written.is_err() {
            break;
        }
    }
    // Dropping stdin closes the child's end: a stdio server then exits.
}

async fn read_stdout(hub: Arc<Hub>, mut stdout: impl AsyncBufRead + Unpin) {
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        let read = tokio::select! {
            _ = hub.closed.cancelled() => break,
            read = read_line(&mut stdout, &mut line) => read,
        };
        match read {
            Ok(0) => break,
            Ok(_) if line.len() > MAX_LINE => {
                hub.protocol_errors.inc();
                tracing::warn!(workspace = %hub.workspace, bytes = line.len(), "dropping an overlong line of the child");
            }
            Ok(_) => hub.on_line(&line),
            Err(e) => {
                tracing::debug!(workspace = %hub.workspace, "reading the child's stdout: {e}");
                break;
            }
        }
    }
    hub.close();
}

/// Reads one line into `line`, keeping at most [`MAX_LINE`] + 1 bytes of it;
/// the count of bytes read, 0 at the end.
async fn read_line(reader: &mut (impl AsyncBufRead + Unpin), line: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(total);
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(at) => (&buf[..=at], true),
            None => (buf, false),
        };
        let n = chunk.len();
        if line.len() <= MAX_LINE {
            line.extend_from_slice(&chunk[..n.min(MAX_LINE + 1 - line.len())]);
        }
        reader.consume(n);
        total += n;
        if done {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    /// A hub over in-memory pipes; the test plays the child.
    struct FakeChild {
        hub: Arc<Hub>,
        lines: tokio::io::Lines<BufReader<tokio::io::DuplexStream>>,
        stdout: tokio::io::DuplexStream,
        _dir: tempfile::TempDir,
    }

    impl FakeChild {
        fn start() -> FakeChild {
            let (hub_stdin, child_stdin) = tokio::io::duplex(1 << 20);
            let (child_stdout, hub_stdout) = tokio::io::duplex(1 << 20);
            let dir = tempfile::tempdir().unwrap();
            let pipes = StdioPipes { stdin: Box::new(hub_stdin), stdout: Box::new(hub_stdout) };
            let hub = Hub::start("t", 1, pipes, LogSink::open(dir.path(), "t"), Counter::default());
            FakeChild { hub, lines: BufReader::new(child_stdin).lines(), stdout: child_stdout, _dir: dir }
        }

        async fn read(&mut self) -> Value {
            let line = tokio::time::timeout(Duration::from_secs(5), self.lines.next_line()).await;
            serde_json::from_str(&line.unwrap().unwrap().unwrap()).unwrap()
        }

        async fn write(&mut self, message: Value) {
            self.stdout.write_all(format!("{message}\n").as_bytes()).await.unwrap();
        }
    }

    async fn next(outbox: &mut Outbox) -> Value {
        let bytes = tokio::time::timeout(Duration::from_secs(5), outbox.recv()).await.unwrap().unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn ids_and_progress_tokens_are_the_hubs_towards_the_child() {
        let mut child = FakeChild::start();
        let (a, b) = (child.hub.open_session().unwrap(), child.hub.open_session().unwrap());
        let ((a_sink, mut a_out), (b_sink, mut b_out)) = (a.channel(), b.channel());
        let call =
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"_meta": {"progressToken": "t"}}});
        a.send(call.clone(), &a_sink).unwrap();
        b.send(call, &b_sink).unwrap();
        let (first, second) = (child.read().await, child.read().await);
        assert_ne!(first["id"], second["id"]);
        assert_eq!(first["params"]["_meta"]["progressToken"], first["id"]);

        child
            .write(json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": second["id"], "progress": 1}}))
            .await;
        child.write(json!({"jsonrpc": "2.0", "id": second["id"], "result": {"who": "b"}})).await;
        child.write(json!({"jsonrpc": "2.0", "id": first["id"], "result": {"who": "a"}})).await;
        let progress = next(&mut b_out).await;
        assert_eq!(progress["params"]["progressToken"], "t");
        assert_eq!(next(&mut b_out).await, json!({"jsonrpc": "2.0", "id": 1, "result": {"who": "b"}}));
        assert_eq!(next(&mut a_out).await, json!({"jsonrpc": "2.0", "id": 1, "result": {"who": "a"}}));
    }

    #[tokio::test]
    async fn cancellations_name_the_hubs_id_and_only_the_senders_requests() {
        let mut child = FakeChild::start();
        let (a, b) = (child.hub.open_session().unwrap(), child.hub.open_session().unwrap());
        let ((a_sink, _a_out), (b_sink, _b_out)) = (a.channel(), b.channel());
        a.send(json!({"jsonrpc": "2.0", "id": "x", "method": "tools/call"}), &a_sink).unwrap();
        let sent = child.read().await;
        let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "x"}});
        b.send(cancel.clone(), &b_sink).unwrap(); // Not b's request: dropped.
        a.send(cancel, &a_sink).unwrap();
        let cancelled = child.read().await;
        assert_eq!(cancelled["params"]["requestId"], sent["id"]);
    }

    #[tokio::test]
    async fn subscriptions_are_kept_per_session() {
        let mut child = FakeChild::start();
        let (a, b, c) =
            (child.hub.open_session().unwrap(), child.hub.open_session().unwrap(), child.hub.open_session().unwrap());
        let ((a_sink, mut a_out), (b_sink, mut b_out), (c_sink, mut c_out)) = (a.channel(), b.channel(), c.channel());
        for (session, sink) in [(&a, &a_sink), (&b, &b_sink), (&c, &c_sink)] {
            session.standby(sink);
        }
        let subscribe = json!({"jsonrpc": "2.0", "id": 1, "method": "resources/subscribe", "params": {"uri": "r"}});
        a.send(subscribe.clone(), &a_sink).unwrap();
        let forwarded = child.read().await;
        assert_eq!(forwarded["method"], "resources/subscribe");
        child.write(json!({"jsonrpc": "2.0", "id": forwarded["id"], "result": {}})).await;
        assert_eq!(next(&mut a_out).await["id"], 1);
        // The child holds the subscription already: b's is answered by the hub.
        b.send(subscribe, &b_sink).unwrap();
        assert_eq!(next(&mut b_out).await, json!({"jsonrpc": "2.0", "id": 1, "result": {}}));

        child
            .write(json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "r"}}))
            .await;
        child.write(json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})).await;
        assert_eq!(next(&mut a_out).await["method"], "notifications/resources/updated");
        assert_eq!(next(&mut b_out).await["method"], "notifications/resources/updated");
        assert_eq!(next(&mut c_out).await["method"], "notifications/tools/list_changed", "c is not subscribed");

        // The last subscriber gone, the child's subscription is dropped.
        drop(a);
        drop(b);
        let unsubscribe = child.read().await;
        assert_eq!(unsubscribe["method"], "resources/unsubscribe", "{unsubscribe}");
        assert_eq!(unsubscribe["params"]["uri"], "r");
    }

    #[tokio::test]
    async fn requests_of_the_child_go_to_the_busy_session_or_are_refused() {
        let mut child = FakeChild::start();
        child.write(json!({"jsonrpc": "2.0", "id": "s1", "method": "sampling/createMessage", "params": {}})).await;
        let refused = child.read().await;
        assert_eq!(refused["id"], "s1");
        assert_eq!(refused["error"]["code"], -32601, "{refused}");
        child.write(json!({"jsonrpc": "2.0", "id": "p", "method": "ping"})).await;
        assert_eq!(child.read().await, json!({"jsonrpc": "2.0", "id": "p", "result": {}}));

        let (a, b) = (child.hub.open_session().unwrap(), child.hub.open_session().unwrap());
        let ((a_sink, mut a_out), (b_sink, _b_out)) = (a.channel(), b.channel());
        b.send(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}), &b_sink).unwrap();
        a.send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}), &a_sink).unwrap();
        let (ping, _) = (child.read().await, child.read().await);
        child.write(json!({"jsonrpc": "2.0", "id": ping["id"], "result": {}})).await;
        // Only a has a request in flight now.
        child.write(json!({"jsonrpc": "2.0", "id": "s2", "method": "sampling/createMessage", "params": {}})).await;
        let request = next(&mut a_out).await;
        assert_eq!(request["id"], "s2");
        a.send(json!({"jsonrpc": "2.0", "id": "s2", "result": {"ok": true}}), &a_sink).unwrap();
        assert_eq!(child.read().await, json!({"jsonrpc": "2.0", "id": "s2", "result": {"ok": true}}));
    }
}
