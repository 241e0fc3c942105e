//! Both client transports for `stdio` children, served over the stdio
//! bridge's hub ([`crate::bridge`], docs/reference.md §9).
//!
//! `/workspaces/{name}/mcp` is a Streamable HTTP server of mcpvisor's own:
//! an `initialize` opens a client session on the hub and gets mcpvisor's
//! `Mcp-Session-Id` (the child's `InitializeResult` is the answer); a POST
//! without a session is a stateless exchange on a session of its own; a
//! POST with requests answers on an SSE stream (or as JSON when the client
//! accepts only that) that ends once every request is answered; GET opens
//! the session's stream for messages not tied to a request; DELETE ends the
//! session. `/workspaces/{name}/sse` opens a session whose one stream
//! carries everything, with `/messages?session_id=...` for the client's
//! messages.
//!
//! Client sessions are kept by mcpvisor's id, apart from the upstream they
//! use (a hub session, or a session on an HTTP child of the other
//! transport), so a later child can take them over (docs/reference.md
//! §11); a `per-session` one answers 404 once its child is gone, and the
//! client initializes again.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Extension;
use bytes::{Bytes, BytesMut};
use rmcp::model::ErrorCode;
use serde_json::Value;
use tokio::time::Instant;

use super::connections::{Exchange, Registration};
use super::continuity::{carry_refused, Replay};
use super::jsonrpc::{self, Peeked, SERVER_ERROR};
use super::relay::sleep_until;
use super::{body, peer, Proxy, ProxyError, Run};
use crate::bridge::{kind, BridgeError, Kind, Outbox, Sink, SseChild, StreamableChild, Upstream};
use crate::http::sse::KEEP_ALIVE_EVERY;
use crate::http::AppState;
use crate::sse::{Frame, KEEP_ALIVE};

const SESSION_HEADER: &str = "mcp-session-id";
/// Most client sessions kept per daemon; past it the oldest is ended.
const MAX_SESSIONS: usize = 10_000;

/// One client session on a stdio child, by mcpvisor's session id.
#[derive(Debug)]
pub struct ClientSession {
    id: String,
    workspace: String,
    /// The session on the current child; replaced when the session is
    /// carried over to a new child (docs/reference.md §11).
    upstream: Mutex<Arc<dyn Upstream>>,
    /// A legacy session's one stream, which takes every answer, and the
    /// exchange that lists the requests it waits on.
    legacy: Option<(Sink, Arc<Exchange>)>,
    created: u64,
    /// Whether the session outlives its child (not a `per-session` one).
    carryable: bool,
    /// What a new child must hear again, from the client's `initialize` on;
    /// `None` until then, and for an `initialize` too large to keep.
    replay: Mutex<Option<Replay>>,
    /// Held while the session is carried over, so concurrent requests do it once.
    rebinding: tokio::sync::Mutex<()>,
}

impl ClientSession {
    fn upstream(&self) -> Arc<dyn Upstream> {
        self.upstream.lock().unwrap().clone()
    }

    /// Whether the session outlives its child: it is carried over on its next use.
    fn carried(&self) -> bool {
        self.carryable && self.replay.lock().unwrap().is_some()
    }

    /// Notes what the client's POST `bytes` (`peeked`) tell a new child: the
    /// `initialize` starts the replay (a legacy session sends it after its
    /// stream opened), the rest is observed.
    fn observe(&self, bytes: &Bytes, peeked: &Peeked) {
        if !self.carryable {
            return;
        }
        Replay::follow(&mut self.replay.lock().unwrap(), bytes, peeked);
    }
}

/// The client sessions of stdio children.
#[derive(Debug, Default)]
pub struct Sessions {
    table: Mutex<HashMap<String, Arc<ClientSession>>>,
    created: std::sync::atomic::AtomicU64,
    /// mcpvisor's client of HTTP children whose transport a client does not speak.
    client: std::sync::OnceLock<reqwest::Client>,
}

impl Sessions {
    /// Keeps `session` under `id`.
    fn insert(
        &self,
        id: &str,
        workspace: &str,
        upstream: Box<dyn Upstream>,
        legacy: Option<(Sink, Arc<Exchange>)>,
        carryable: bool,
    ) -> Arc<ClientSession> {
        let created = self.created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = Arc::new(ClientSession {
            id: id.to_string(),
            workspace: workspace.to_string(),
            upstream: Mutex::new(Arc::from(upstream)),
            legacy,
            created,
            carryable,
            replay: Mutex::new(None),
            rebinding: tokio::sync::Mutex::new(()),
        });
        let mut table = self.table.lock().unwrap();
        // Sessions whose child went away are answered 404 and forgotten
        // when next used (unless carried over); those never used again go here.
        table.retain(|_, s| !gone(s));
        if table.len() >= MAX_SESSIONS {
            let oldest = table.iter().min_by_key(|(_, s)| s.created).map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                table.remove(&oldest);
            }
        }
        table.insert(id.to_string(), session.clone());
        session
    }

    /// The open session `id` of `workspace`; a closed one is forgotten.
    fn get(&self, workspace: &str, id: &str) -> Option<Arc<ClientSession>> {
        let mut table = self.table.lock().unwrap();
        let session = table.get(id).filter(|s| s.workspace == workspace)?.clone();
        if gone(&session) {
            table.remove(id);
            return None;
        }
        Some(session)
    }

    fn remove(&self, id: &str) -> Option<Arc<ClientSession>> {
        self.table.lock().unwrap().remove(id)
    }
}

/// Whether `session` ended for good: closed, and not to be carried over to
/// a new child.
fn gone(session: &ClientSession) -> bool {
    let upstream = session.upstream();
    upstream.is_closed() && !(session.carried() && upstream.child_gone())
}

/// What a stream keeps alive: a session of the table (with its upstream as
/// the stream began), or a session of its own.
enum Held {
    Shared(#[allow(dead_code)] Arc<ClientSession>, Arc<dyn Upstream>),
    Own(Arc<dyn Upstream>),
}

impl Held {
    fn shared(session: Arc<ClientSession>) -> Held {
        let upstream = session.upstream();
        Held::Shared(session, upstream)
    }

    fn upstream(&self) -> &dyn Upstream {
        match self {
            Held::Shared(_, upstream) | Held::Own(upstream) => upstream.as_ref(),
        }
    }
}

/// How long a request of a carried session waits for its workspace to run again.
const RESTART_HOLD: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a legacy stream waits for its workspace to run again.
const STREAM_HOLD: std::time::Duration = std::time::Duration::from_secs(300);
/// How long one replayed message may take on the new child.
const REPLAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The run for a request of `session`: as [`route`] gives it, or for a
/// session carried over, once its workspace is back (up to [`RESTART_HOLD`]).
///
/// # Errors
/// The workspace is not running and not coming back in time.
async fn routed(state: &AppState, name: &str, session: &ClientSession) -> Result<Arc<Run>, ProxyError> {
    match route(state, name).await {
        Err(_) if session.carried() => {
            let transport = state.ctx.bus.view().get(name).map_or("stdio", |r| r.status.transport);
            state.proxy.running(name, transport, RESTART_HOLD).await
        }
        routed => routed,
    }
}

/// Carries `session` over to the child of `run` when its own child is gone:
/// a new session there, told again what the client said (its `initialize`,
/// `notifications/initialized`, log level and subscriptions; the answers
/// stay here), then put in place (docs/reference.md §11).
///
/// # Errors
/// The new child could not be reached, or did not answer a replayed request.
async fn carry_over(state: &AppState, name: &str, session: &ClientSession, run: &Run) -> Result<(), ProxyError> {
    if !session.carried() || !session.upstream().child_gone() {
        return Ok(());
    }
    let _rebinding = session.rebinding.lock().await;
    if !session.upstream().child_gone() {
        return Ok(());
    }
    let upstream: Arc<dyn Upstream> = Arc::from(open_upstream(state, name, run).await?);
    let messages = session.replay.lock().unwrap().as_ref().map(Replay::messages).unwrap_or_default();
    let (sink, mut outbox) = upstream.channel();
    for message in messages {
        let value: Value = serde_json::from_slice(&message).map_err(|e| carry_refused(e.to_string()))?;
        let waits = value.get("id").is_some();
        upstream.send(value, &sink).map_err(|e| carry_refused(e.to_string()))?;
        if waits {
            // The answer, and whatever the child says before it, stay here.
            let answered = async {
                while let Some(answer) = outbox.recv().await {
                    if jsonrpc::response_id(&answer).is_some() {
                        return Ok(());
                    }
                }
                Err(carry_refused("the session closed"))
            };
            tokio::time::timeout(REPLAY_TIMEOUT, answered).await.map_err(|_| carry_refused("no answer in time"))??;
        }
    }
    // A legacy session's one stream takes what the new child says too.
    if let Some((sink, _)) = &session.legacy {
        upstream.standby(sink);
    }
    *session.upstream.lock().unwrap() = upstream;
    state.proxy.connections.carried_over(name, &session.id);
    tracing::info!(workspace = name, pid = run.pid(), "client session carried over to a new child");
    Ok(())
}

/// The workspace's current run, whatever its child speaks; a workspace that
/// starts on demand is started first (docs/reference.md §11).
///
/// # Errors
/// The workspace is unknown or not running.
async fn route(state: &AppState, name: &str) -> Result<Arc<Run>, ProxyError> {
    let transport = state.ctx.bus.view().get(name).ok_or_else(|| ProxyError::unknown(name))?.status.transport;
    super::demand::route(state, name, transport).await.map(|(_, run)| run)
}

/// A new session on the workspace's child: on its hub for a `stdio` child,
/// else a session of mcpvisor's own on the HTTP child.
///
/// # Errors
/// The child is gone, or an HTTP child could not be reached.
async fn open_upstream(state: &AppState, name: &str, run: &Run) -> Result<Box<dyn Upstream>, ProxyError> {
    let record = state.ctx.bus.view().get(name).ok_or_else(|| ProxyError::unknown(name))?;
    let unavailable = || ProxyError::unavailable(name, &record);
    let client = || {
        let client = state.proxy.bridged.client.get_or_init(|| reqwest::Client::builder().no_proxy().build().unwrap());
        client.clone()
    };
    let url = run.upstream.endpoint(None).map_err(|_| unavailable())?.to_string();
    match record.status.transport {
        "stdio" => {
            let pid = record.status.pid.unwrap_or(0);
            if let Some(pool) = state.ctx.hubs.pool(name, pid) {
                return match pool.open().await {
                    Ok(session) => Ok(Box::new(session)),
                    Err(BridgeError::Full(max)) => Err(ProxyError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        SERVER_ERROR,
                        format!("workspace {name:?} has {max} sessions, its stdio.maxSessions; end one first"),
                        Some(serde_json::json!({"workspace": name, "maxSessions": max})),
                    )),
                    Err(e) => Err(state.proxy.broken(name, run, &e.to_string()).await),
                };
            }
            let hub = state.ctx.hubs.get(name, pid);
            let session = hub.and_then(|hub| hub.open_session().ok()).ok_or_else(unavailable)?;
            Ok(Box::new(session))
        }
        "sse" => match SseChild::open(client(), url, run.ended.clone()).await {
            Ok(session) => Ok(Box::new(session)),
            Err(e) => Err(state.proxy.broken(name, run, &e.to_string()).await),
        },
        _ => Ok(Box::new(StreamableChild::open(client(), url, run.ended.clone()))),
    }
}

/// A new session id: 128 random bits in hex.
fn new_session_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn unknown_session() -> ProxyError {
    ProxyError::new(StatusCode::NOT_FOUND, ErrorCode(-32001), "session not found; initialize again".to_string(), None)
}

fn session_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok())
}

/// `/workspaces/{name}/mcp` for a `stdio` child.
pub async fn streamable(
    state: &Arc<AppState>,
    name: String,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let none = Peeked::default();
    match parts.method {
        Method::POST => {
            let bytes = match body::read(&parts.headers, body).await {
                Ok(bytes) => bytes,
                Err(response) => return response,
            };
            post(state, name, connect, &parts.headers, bytes).await
        }
        Method::GET => {
            let run = match route(state, &name).await {
                Ok(run) => run,
                Err(error) => return error.reply(&none),
            };
            let Some(id) = session_header(&parts.headers) else {
                let error = ProxyError::invalid(StatusCode::METHOD_NOT_ALLOWED, "GET needs an mcp-session-id".into());
                return error.reply(&none);
            };
            let Some(session) = state.proxy.bridged.get(&name, id) else { return unknown_session().reply(&none) };
            if let Err(error) = carry_over(state, &name, &session, &run).await {
                return error.reply(&none);
            }
            let upstream = session.upstream();
            let (sink, outbox) = upstream.channel();
            upstream.standby(&sink);
            let registration = state.proxy.connections.open(&name, "stdio", "GET", Some(id), peer(connect));
            let stream = ClientStream::new(state.proxy.clone(), name, run, outbox, registration, Held::shared(session));
            sse_response(StatusCode::OK, None, stream.into_body(None))
        }
        Method::DELETE => {
            let Some(id) = session_header(&parts.headers) else {
                return ProxyError::invalid(StatusCode::BAD_REQUEST, "DELETE needs an mcp-session-id".into())
                    .reply(&none);
            };
            match state.proxy.bridged.get(&name, id) {
                Some(_) => {
                    state.proxy.bridged.remove(id);
                    state.proxy.connections.end_session(&name, id);
                    Response::new(Body::empty())
                }
                None => unknown_session().reply(&none),
            }
        }
        _ => ProxyError::invalid(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not MCP", parts.method)).reply(&none),
    }
}

/// The messages of a POST body, one or a batch.
fn messages(bytes: &[u8]) -> Result<Vec<Value>, ProxyError> {
    let parse_error = |e: serde_json::Error| {
        ProxyError::new(StatusCode::BAD_REQUEST, ErrorCode::PARSE_ERROR, format!("reading a JSON-RPC body: {e}"), None)
    };
    match serde_json::from_slice::<Value>(bytes).map_err(parse_error)? {
        Value::Array(batch) => Ok(batch),
        one => Ok(vec![one]),
    }
}

async fn post(
    state: &Arc<AppState>,
    name: String,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
    bytes: Bytes,
) -> Response {
    let proxy = &state.proxy;
    let peeked = jsonrpc::peek(&bytes).unwrap_or_default();
    let known = session_header(headers).and_then(|id| proxy.bridged.get(&name, id));
    let run = match &known {
        Some(session) => routed(state, &name, session).await,
        None => route(state, &name).await,
    };
    let run = match run {
        Ok(run) => run,
        Err(error) => return error.reply(&peeked),
    };
    let messages = match messages(&bytes) {
        Ok(messages) => messages,
        Err(error) => return error.reply(&peeked),
    };
    // The session: the client's, a new one for an `initialize`, or one for
    // this exchange alone (stateless).
    let mut issued = None;
    let held = match session_header(headers) {
        Some(id) => match known {
            Some(session) => {
                if let Err(error) = carry_over(state, &name, &session, &run).await {
                    return error.reply(&peeked);
                }
                session.observe(&bytes, &peeked);
                proxy.connections.touch_session(&name, id);
                Held::shared(session)
            }
            None => return unknown_session().reply(&peeked),
        },
        None => {
            let upstream = match open_upstream(state, &name, &run).await {
                Ok(upstream) => upstream,
                Err(error) => return error.reply(&peeked),
            };
            if peeked.requests.iter().any(|r| r.method == "initialize") {
                let id = new_session_id();
                // Carried over to a new child when its initialize can be
                // replayed; not a `per-session` one, whose child is its own.
                let carryable = state.ctx.hubs.pool(&name, run.pid()).is_none();
                let session = proxy.bridged.insert(&id, &name, upstream, None, carryable);
                session.observe(&bytes, &peeked);
                let carried = session.carried();
                match carried {
                    true => proxy.connections.create_bridged(&name, &id, "stdio"),
                    false => proxy.connections.create_session(&name, &id, "stdio"),
                }
                issued = Some(id);
                Held::shared(session)
            } else {
                Held::Own(Arc::from(upstream))
            }
        }
    };
    let session_id = issued.clone().or_else(|| session_header(headers).map(str::to_string));
    let (sink, outbox) = held.upstream().channel();
    let registration = proxy.connections.open(&name, "stdio", "POST", session_id.as_deref(), peer(connect));
    registration.exchange.add_pending(&peeked.requests);
    for message in messages {
        if let Err(e) = held.upstream().send(message, &sink) {
            let error = match held.upstream().child_gone() {
                true => proxy.broken(&name, &run, &e.to_string()).await,
                false => ProxyError::new(StatusCode::NOT_FOUND, ErrorCode(-32001), e.to_string(), None),
            };
            return error.reply(&peeked);
        }
    }
    drop(sink);
    if peeked.requests.is_empty() {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::ACCEPTED;
        return response;
    }
    let stream = ClientStream::new(proxy.clone(), name, run, outbox, registration, held);
    let stream = stream.answering(proxy.request_timeout);
    let accepts_sse =
        headers.get_all(header::ACCEPT).iter().any(|v| v.as_bytes().windows(17).any(|w| w == b"text/event-stream"));
    if accepts_sse {
        return sse_response(StatusCode::OK, issued.as_deref(), stream.into_body(None));
    }
    stream.into_json(peeked.batch, issued.as_deref()).await
}

fn sse_response(status: StatusCode, session: Option<&str>, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(session) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert(SESSION_HEADER, session);
    }
    response
}

/// One stream of a session's messages to a client: a POST's answers, a GET
/// stream, or a legacy stream.
struct ClientStream {
    proxy: Arc<Proxy>,
    name: String,
    run: Arc<Run>,
    outbox: Outbox,
    /// Lists the stream for the debug view; its exchange holds the requests
    /// still waiting for an answer.
    registration: Registration,
    held: Held,
    /// A POST's stream ends once every request is answered, or fails them
    /// at this deadline.
    answering: Option<Instant>,
    /// A legacy stream's `workspace/statusChanged` notifications, after this seq.
    notifications: Option<(crate::state::Subscription, u64)>,
    /// A legacy stream that outlives its child: what carries its session
    /// over (docs/reference.md §11).
    carries: Option<Arc<AppState>>,
    /// The child is gone: carry the session over before the next message.
    carry_next: bool,
    finished: bool,
}

impl ClientStream {
    fn new(
        proxy: Arc<Proxy>,
        name: String,
        run: Arc<Run>,
        outbox: Outbox,
        registration: Registration,
        held: Held,
    ) -> ClientStream {
        ClientStream {
            proxy,
            name,
            run,
            outbox,
            registration,
            held,
            answering: None,
            notifications: None,
            carries: None,
            carry_next: false,
            finished: false,
        }
    }

    fn answering(self, timeout: std::time::Duration) -> ClientStream {
        ClientStream { answering: Some(Instant::now() + timeout), ..self }
    }

    /// The next message for the client, marking the request it answers;
    /// `Err` with the error for the requests still waiting once the child,
    /// the session or the time is gone.
    async fn next_message(&mut self) -> Result<Bytes, (ProxyError, Vec<jsonrpc::Request>)> {
        let outcome = tokio::select! {
            biased;
            message = self.outbox.recv() => message.ok_or(None),
            _ = self.held.upstream().closed() => Err(None),
            _ = self.run.ended.cancelled() => Err(None),
            _ = sleep_until(self.answering) => Err(Some(())),
        };
        match outcome {
            Ok(message) => {
                if let Some(id) = jsonrpc::response_id(&message) {
                    self.registration.exchange.answered(&id);
                }
                Ok(message)
            }
            Err(timed_out) => {
                let upstream = self.held.upstream();
                let child_gone = upstream.child_gone() || self.run.ended.is_cancelled();
                let carried = matches!(&self.held, Held::Shared(session, _) if session.carried());
                // A legacy stream of a session that outlives its child stays
                // open; only the requests in flight fail.
                self.carry_next = timed_out.is_none() && child_gone && carried && self.carries.is_some();
                self.finished = !self.carry_next;
                let error = if timed_out.is_some() {
                    self.proxy.timed_out(&self.name)
                } else if upstream.child_gone() || self.run.ended.is_cancelled() {
                    self.proxy.broken(&self.name, &self.run, "the child exited").await
                } else {
                    let reason = upstream.close_reason().unwrap_or_else(|| "the session ended".to_string());
                    ProxyError::new(StatusCode::GONE, SERVER_ERROR, format!("session {reason}"), None)
                };
                Err((error, self.registration.exchange.take_pending()))
            }
        }
    }

    /// Carries the stream's session over to the next run of its workspace
    /// once it runs (up to [`STREAM_HOLD`]); `None` when it does not come
    /// back or the new child refuses the session.
    async fn carry_over(&mut self) -> Option<()> {
        let state = self.carries.clone()?;
        let Held::Shared(session, _) = &self.held else { return None };
        let session = session.clone();
        let transport = state.ctx.bus.view().get(&self.name)?.status.transport;
        self.proxy.past(&self.run).await;
        let run = self.proxy.running(&self.name, transport, STREAM_HOLD).await.ok()?;
        carry_over(&state, &self.name, &session, &run)
            .await
            .inspect_err(|e| tracing::debug!(workspace = %self.name, "a legacy stream ends: {}", e.error.message))
            .ok()?;
        (self.held, self.run) = (Held::shared(session), run);
        Some(())
    }

    /// The status notifications already published and not yet sent.
    fn published_changes(&mut self) -> BytesMut {
        use futures::FutureExt;
        let mut out = BytesMut::new();
        if let Some((subscription, after)) = &mut self.notifications {
            while let Some(Some(change)) = subscription.next().now_or_never() {
                if change.seq > *after {
                    Frame::new(&change.json).event("message").encode_into(&mut out);
                }
            }
        }
        out
    }

    fn done(&self) -> bool {
        self.answering.is_some() && !self.registration.exchange.has_pending()
    }

    /// The stream as an SSE body: `first` (a legacy `endpoint` event), then
    /// each message as a `message` event, with a keep-alive comment every
    /// 15 s.
    fn into_body(self, first: Option<Bytes>) -> Body {
        let keep_alive = tokio::time::interval_at(Instant::now() + KEEP_ALIVE_EVERY, KEEP_ALIVE_EVERY);
        let stream = futures::stream::unfold((self, keep_alive, first), |(mut st, mut keep_alive, first)| async move {
            if let Some(first) = first {
                return Some((Ok::<Bytes, Infallible>(first), (st, keep_alive, None)));
            }
            if st.carry_next {
                st.carry_next = false;
                st.carry_over().await?;
            }
            if st.finished || st.done() {
                return None;
            }
            let mut notifications = st.notifications.take();
            let notification = async {
                match &mut notifications {
                    Some((subscription, after)) => subscription.next().await.filter(|e| e.seq > *after),
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                next = st.next_message() => Next::Message(next),
                Some(change) = notification => Next::Status(Frame::new(&change.json).event("message").encode()),
                _ = keep_alive.tick() => Next::Status(KEEP_ALIVE),
            };
            st.notifications = notifications;
            let bytes = match next {
                Next::Status(frame) => frame,
                Next::Message(Ok(message)) => event(&message),
                Next::Message(Err((error, pending))) => {
                    // The exit's own status changes, already published, go first.
                    let mut out = st.published_changes();
                    if !pending.is_empty() {
                        out.extend_from_slice(&error.sse_events(&pending));
                    }
                    match (out.is_empty(), st.carry_next) {
                        (true, true) => KEEP_ALIVE,
                        (true, false) => return None,
                        (false, _) => out.freeze(),
                    }
                }
            };
            Some((Ok(bytes), (st, keep_alive, None)))
        });
        Body::from_stream(stream)
    }

    /// Waits for every answer and sends them as one JSON body (an array for
    /// a batch). Messages that are not answers go to the session's stream.
    async fn into_json(mut self, batch: bool, session: Option<&str>) -> Response {
        let mut answers = Vec::new();
        let mut status = StatusCode::OK;
        while !self.done() {
            match self.next_message().await {
                Ok(message) if kind_of(&message) == Some(Kind::Response) => answers.push(message),
                Ok(message) => self.held.upstream().redeliver(message),
                Err((error, pending)) => {
                    for request in pending {
                        answers.push(jsonrpc::reply(&Peeked { requests: vec![request], batch: false }, &error.error));
                    }
                    status = error.http;
                    break;
                }
            }
        }
        let mut body = BytesMut::new();
        if batch {
            body.extend_from_slice(b"[");
        }
        for (i, answer) in answers.iter().enumerate() {
            if i > 0 {
                body.extend_from_slice(b",");
            }
            body.extend_from_slice(answer);
            if !batch {
                break;
            }
        }
        if batch {
            body.extend_from_slice(b"]");
        }
        let mut response = Response::new(Body::from(body.freeze()));
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(session) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
            response.headers_mut().insert(SESSION_HEADER, session);
        }
        response
    }
}

/// What a client stream sends next.
enum Next {
    Message(Result<Bytes, (ProxyError, Vec<jsonrpc::Request>)>),
    /// A status notification or a keep-alive, encoded.
    Status(Bytes),
}

fn kind_of(message: &[u8]) -> Option<Kind> {
    kind(&serde_json::from_slice(message).ok()?)
}

fn event(message: &[u8]) -> Bytes {
    Frame::new(&String::from_utf8_lossy(message)).event("message").encode()
}

/// `GET /workspaces/{name}/sse` for a `stdio` child: a session whose one
/// stream carries every message, announced by an `endpoint` event.
pub async fn legacy_sse(
    state: &Arc<AppState>,
    name: String,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    let none = Peeked::default();
    let run = match route(state, &name).await {
        Ok(run) => run,
        Err(error) => return error.reply(&none),
    };
    let upstream = match open_upstream(state, &name, &run).await {
        Ok(upstream) => upstream,
        Err(error) => return error.reply(&none),
    };
    let (sink, outbox) = upstream.channel();
    upstream.standby(&sink);
    let id = new_session_id();
    let registration = state.proxy.connections.open(&name, "sse", "sse", Some(&id), peer(connect));
    let carryable = state.ctx.hubs.pool(&name, run.pid()).is_none();
    let legacy = Some((sink, registration.exchange.clone()));
    let session = state.proxy.bridged.insert(&id, &name, upstream, legacy, carryable);
    match carryable {
        true => state.proxy.connections.create_bridged(&name, &id, "sse"),
        false => state.proxy.connections.create_session(&name, &id, "sse"),
    }
    let endpoint = format!("/workspaces/{name}/messages?session_id={id}");
    let first = Frame::new(&endpoint).event("endpoint").encode();
    let guard = LegacyGuard { proxy: state.proxy.clone(), name: name.clone(), id };
    // The workspace's status changes go on the stream too, from now on (docs/reference.md §8).
    let bus = &state.ctx.bus;
    let notifications = (bus.subscribe(Some(std::collections::BTreeSet::from([name.clone()])), None), bus.last_seq());
    let mut stream = ClientStream::new(state.proxy.clone(), name, run, outbox, registration, Held::shared(session));
    stream.notifications = Some(notifications);
    stream.carries = Some(state.clone());
    sse_response(
        StatusCode::OK,
        None,
        Body::new(crate::http::holding::Holding::new(stream.into_body(Some(first)), guard)),
    )
}

/// Ends a legacy session when its stream goes away.
struct LegacyGuard {
    proxy: Arc<Proxy>,
    name: String,
    id: String,
}

impl Drop for LegacyGuard {
    fn drop(&mut self) {
        self.proxy.bridged.remove(&self.id);
        self.proxy.connections.end_session(&self.name, &self.id);
    }
}

/// `POST /workspaces/{name}/messages?session_id=...` for a `stdio` child:
/// the client's messages, answered on the session's stream.
pub async fn legacy_message(state: &Arc<AppState>, name: String, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match body::read(&parts.headers, body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let peeked = jsonrpc::peek(&bytes).unwrap_or_default();
    let id = parts.uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("session_id=")));
    let Some(session) = id.and_then(|id| state.proxy.bridged.get(&name, id)) else {
        return unknown_session().reply(&peeked);
    };
    let run = match routed(state, &name, &session).await {
        Ok(run) => run,
        Err(error) => return error.reply(&peeked),
    };
    if let Err(error) = carry_over(state, &name, &session, &run).await {
        return error.reply(&peeked);
    }
    session.observe(&bytes, &peeked);
    let Some((sink, exchange)) = &session.legacy else { return unknown_session().reply(&peeked) };
    let messages = match messages(&bytes) {
        Ok(messages) => messages,
        Err(error) => return error.reply(&peeked),
    };
    if let Some(id) = id {
        state.proxy.connections.touch_session(&name, id);
    }
    // Listed before sending: the answer may reach the stream before the 202.
    exchange.add_pending(&peeked.requests);
    for message in messages {
        if let Err(e) = session.upstream().send(message, sink) {
            for request in &peeked.requests {
                exchange.answered(&request.id);
            }
            return state.proxy.broken(&name, &run, &e.to_string()).await.reply(&peeked);
        }
    }
    let mut response = Response::new(Body::from("Accepted"));
    *response.status_mut() = StatusCode::ACCEPTED;
    response
}
