//! Session continuity for Streamable HTTP children (docs/reference.md §11):
//! a client session through the proxy outlives the child it was made on.
//!
//! When a child issues an `Mcp-Session-Id` in answer to a client's
//! `initialize`, the proxy gives the client an id of its own instead and
//! keeps a [`ClientSession`]: which run of the child holds it (the child's
//! pid), the child's id for it, and a [`Replay`] of what the client said
//! that a new child must hear again (its `initialize`, its
//! `notifications/initialized`, its last `logging/setLevel`, its
//! `resources/subscribe` list). The first use of the session on a new run
//! (a request, or the client's GET stream once the workspace runs again)
//! re-establishes it there by sending those, then goes on; the client never
//! sees the restart. Requests in flight when a child dies still fail with
//! -32000: they may have had effects.
//!
//! The client's GET stream is carried too: the proxy holds the client's
//! stream and, on each new run, opens one to the new child and relays it,
//! before any request of the session reaches that child.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{cause, Proxy, ProxyError, Run, EXIT_GRACE};
use crate::sse::{Event, Frame, Parser};

/// The header that carries a session id, both ways.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The header that names the negotiated protocol version on every request
/// after `initialize`.
const PROTOCOL_HEADER: &str = "mcp-protocol-version";
/// The largest client `initialize` kept for replay, bytes; a session whose
/// `initialize` is larger is relayed, but not carried over.
pub const MAX_REPLAYED_INITIALIZE: usize = 64 * 1024;
/// The most subscriptions a session's replay keeps; later ones are relayed
/// but not carried over.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// The longest subscribed URI a replay keeps, bytes.
const MAX_URI: usize = 2048;
/// How long one replayed message may take on the new child.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a carried GET stream waits for its workspace to run again.
const STREAM_HOLD: Duration = Duration::from_secs(300);

/// The methods a session's replay keeps; every other message is only
/// relayed.
const REPLAYED: [&str; 4] =
    ["notifications/initialized", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"];

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
}

/// What a client session said that a new child must hear again, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// The client's own `initialize` message.
    initialize: Bytes,
    initialized: bool,
    /// The params of the last `logging/setLevel`.
    log_level: Option<Value>,
    /// The URIs of `resources/subscribe` not since unsubscribed.
    subscriptions: BTreeSet<String>,
}

impl Replay {
    /// A replay that starts with `initialize`, the client's message.
    pub fn new(initialize: Bytes) -> Replay {
        Replay { initialize, initialized: false, log_level: None, subscriptions: BTreeSet::new() }
    }

    /// Notes what the client's POST `body` (one message or a batch) changes.
    /// A quick substring check keeps the parse off the path of every other
    /// message.
    pub fn observe(&mut self, body: &[u8]) {
        let Ok(text) = std::str::from_utf8(body) else { return };
        if !REPLAYED.iter().any(|method| text.contains(method)) {
            return;
        }
        let messages = match text.trim_start().starts_with('[') {
            true => serde_json::from_str::<Vec<Message>>(text).unwrap_or_default(),
            false => serde_json::from_str::<Message>(text).map(|m| vec![m]).unwrap_or_default(),
        };
        for message in messages {
            let uri = || message.params.as_ref()?.get("uri")?.as_str().map(str::to_string);
            match message.method.as_deref() {
                Some("notifications/initialized") => self.initialized = true,
                Some("logging/setLevel") => self.log_level = message.params.clone(),
                Some("resources/subscribe") => {
                    let fits = self.subscriptions.len() < MAX_SUBSCRIPTIONS;
                    self.subscriptions.extend(uri().filter(|uri| fits && uri.len() <= MAX_URI));
                }
                Some("resources/unsubscribe") => {
                    if let Some(uri) = uri() {
                        self.subscriptions.remove(&uri);
                    }
                }
                _ => {}
            }
        }
    }

    /// The messages that re-establish the session on a new child, in order:
    /// the `initialize` first, then notifications and requests whose ids
    /// (`mcpvisor-replay-N`) no client uses.
    pub fn messages(&self) -> Vec<Bytes> {
        let mut out = vec![self.initialize.clone()];
        let request = |n: usize, method: &str, params: Value| {
            let id = format!("mcpvisor-replay-{n}");
            Bytes::from(serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string())
        };
        if self.initialized {
            out.push(Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#));
        }
        if let Some(level) = &self.log_level {
            out.push(request(out.len(), "logging/setLevel", level.clone()));
        }
        for uri in &self.subscriptions {
            out.push(request(out.len(), "resources/subscribe", serde_json::json!({"uri": uri})));
        }
        out
    }

    /// Notes what a client's message `bytes` (`peeked`) tell a new child in
    /// `replay`: one `initialize` of at most [`MAX_REPLAYED_INITIALIZE`]
    /// starts it (a legacy session sends it after its stream opened), the
    /// rest is observed.
    pub fn follow(replay: &mut Option<Replay>, bytes: &Bytes, peeked: &super::jsonrpc::Peeked) {
        match replay {
            Some(replay) => replay.observe(bytes),
            None if !peeked.batch
                && bytes.len() <= MAX_REPLAYED_INITIALIZE
                && peeked.requests.iter().any(|r| r.method == "initialize") =>
            {
                *replay = Some(Replay::new(bytes.clone()))
            }
            None => {}
        }
    }

    /// Bytes kept at most, for the session table's bound: the `initialize`
    /// and room for the subscriptions of a typical client.
    pub fn cost(&self) -> usize {
        self.initialize.len() + 4096
    }
}

/// Which run of the child holds the session, and the child's id for it.
#[derive(Debug, Clone)]
struct Binding {
    pid: u32,
    /// `None` when the child is stateless and issued no id.
    child: Option<HeaderValue>,
}

/// A client session through the proxy that can be carried to a new child.
#[derive(Debug)]
pub struct ClientSession {
    pub workspace: String,
    binding: Mutex<Binding>,
    replay: Mutex<Replay>,
    /// Held while the session is re-established on a new run, so that
    /// concurrent requests replay once.
    rebinding: tokio::sync::Mutex<()>,
    carried_over: AtomicU32,
    /// The intake of the client's carried GET stream, while one is open.
    stream: Mutex<Option<mpsc::Sender<(Arc<Run>, Incoming)>>>,
}

impl ClientSession {
    /// A session the child of `run` issued as `child` in answer to the
    /// client's `initialize`.
    pub fn new(workspace: &str, run: &Run, child: HeaderValue, initialize: Bytes) -> ClientSession {
        ClientSession {
            workspace: workspace.to_string(),
            binding: Mutex::new(Binding { pid: run.pid(), child: Some(child) }),
            replay: Mutex::new(Replay::new(initialize)),
            rebinding: tokio::sync::Mutex::new(()),
            carried_over: AtomicU32::new(0),
            stream: Mutex::new(None),
        }
    }

    /// How many times the session was carried to a new child.
    pub fn carried_over(&self) -> u32 {
        self.carried_over.load(Ordering::Relaxed)
    }

    pub fn cost(&self) -> usize {
        self.workspace.len() + self.replay.lock().unwrap().cost()
    }

    /// Notes what a POST body of the client changes in the replay.
    pub fn observe(&self, body: &[u8]) {
        self.replay.lock().unwrap().observe(body);
    }

    /// The child's id for the session on `run`, re-establishing the session
    /// there first when it was made on an earlier run. `client` is the
    /// headers of the client's request as passed upstream (see
    /// [`super::headers::upstream`]), sent with each replayed message.
    ///
    /// # Errors
    /// The new child refused or did not answer a replayed message.
    pub async fn bind(
        &self,
        proxy: &Proxy,
        run: &Arc<Run>,
        client: &HeaderMap,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        if let Some(child) = self.bound_to(run) {
            return Ok(child);
        }
        let _rebinding = self.rebinding.lock().await;
        if let Some(child) = self.bound_to(run) {
            return Ok(child);
        }
        let replay = self.replay.lock().unwrap().clone();
        // The `initialize` goes first, as the client sent it: with no
        // session and no protocol version; the rest with what it answered.
        let mut messages = replay.messages().into_iter();
        let initialize = messages.next().expect("a replay starts with initialize");
        let answer = post(proxy, run, client, None, None, initialize).await?;
        let (child, protocol) = (answer.session, answer.protocol);
        for message in messages {
            post(proxy, run, client, child.as_ref(), protocol.as_ref(), message).await?;
        }
        let stream = self.stream.lock().unwrap().clone();
        if let Some(intake) = stream {
            // Before any request reaches the new child, so that nothing it
            // says to the session is lost.
            match open_stream(proxy, run, client, child.as_ref()).await {
                Ok(response) if response.status().is_success() => {
                    if intake.try_send((run.clone(), response.into_body())).is_err() {
                        tracing::debug!(workspace = %self.workspace, "the session's GET stream is gone");
                    }
                }
                Ok(response) => {
                    tracing::debug!(workspace = %self.workspace, status = %response.status(), "the new child refused the session's GET stream")
                }
                Err(e) => {
                    tracing::debug!(workspace = %self.workspace, "opening the session's GET stream: {}", e.error.message)
                }
            }
        }
        *self.binding.lock().unwrap() = Binding { pid: run.pid(), child: child.clone() };
        self.carried_over.fetch_add(1, Ordering::Relaxed);
        crate::bridge::sessions_changed();
        tracing::info!(workspace = %self.workspace, pid = run.pid(), "client session carried over to a new child");
        Ok(child)
    }

    fn bound_to(&self, run: &Run) -> Option<Option<HeaderValue>> {
        let binding = self.binding.lock().unwrap();
        (binding.pid == run.pid()).then(|| binding.child.clone())
    }

    /// Ends the carried GET stream, if one is open.
    pub fn close_stream(&self) {
        self.stream.lock().unwrap().take();
    }
}

/// What the proxy learned from the answer to a replayed message.
struct Answer {
    session: Option<HeaderValue>,
    protocol: Option<HeaderValue>,
}

/// POSTs one replayed message to the child of `run` and reads its answer
/// whole (JSON or an event stream).
async fn post(
    proxy: &Proxy,
    run: &Run,
    client: &HeaderMap,
    session: Option<&HeaderValue>,
    protocol: Option<&HeaderValue>,
    message: Bytes,
) -> Result<Answer, ProxyError> {
    let mut request = axum::http::Request::new(Body::from(message));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = run.upstream.endpoint(None).map_err(|e| replay_error(&run.upstream.host, &e.to_string()))?;
    *request.headers_mut() = upstream_headers(run, client, session);
    request.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // The client's headers may be those of its GET stream.
    request.headers_mut().insert(header::ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
    match protocol {
        Some(protocol) => request.headers_mut().insert(PROTOCOL_HEADER, protocol.clone()),
        None => request.headers_mut().remove(PROTOCOL_HEADER),
    };
    let exchange = async {
        let response = proxy.client.request(request).await.map_err(|e| cause(&e))?;
        let status = response.status();
        let session = response.headers().get(SESSION_HEADER).cloned();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])));
        }
        let protocol = answer_json(&body)
            .and_then(|v| v.pointer("/result/protocolVersion")?.as_str().map(str::to_string))
            .and_then(|v| HeaderValue::from_str(&v).ok());
        Ok(Answer { session, protocol })
    };
    tokio::select! {
        answer = exchange => answer.map_err(|e| replay_error(&run.upstream.host, &e)),
        _ = run.ended.cancelled() => Err(replay_error(&run.upstream.host, "the child exited")),
        _ = tokio::time::sleep(REPLAY_TIMEOUT) => Err(replay_error(&run.upstream.host, "no answer in time")),
    }
}

/// The JSON-RPC message of an answer: the body itself, or the first
/// `message` event of an event stream.
fn answer_json(body: &[u8]) -> Option<Value> {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        return Some(value);
    }
    let mut parser = Parser::default();
    let mut found = None;
    let _ = parser.feed(body, |event| {
        if found.is_none() && !event.data.is_empty() {
            found = serde_json::from_str(&event.data).ok();
        }
    });
    found
}

fn replay_error(child: &HeaderValue, detail: &str) -> ProxyError {
    carry_refused(format!("{} refused: {detail}", child.to_str().unwrap_or("the child's session")))
}

/// The error for a session the new child did not take: HTTP 502 with
/// -32000 (docs/reference.md §11); the session stays, and its next use
/// tries again.
pub fn carry_refused(detail: impl std::fmt::Display) -> ProxyError {
    ProxyError::new(
        StatusCode::BAD_GATEWAY,
        super::jsonrpc::SERVER_ERROR,
        format!("carrying the session over to the new child: {detail}"),
        None,
    )
}

/// The client's headers for the child (`client`, already without hop-by-hop
/// ones), with the session id, `Host` and `Last-Event-ID` set for `run`.
fn upstream_headers(run: &Run, client: &HeaderMap, session: Option<&HeaderValue>) -> HeaderMap {
    let mut out = client.clone();
    out.insert(header::HOST, run.upstream.host.clone());
    out.remove(SESSION_HEADER);
    out.remove("last-event-id");
    if let Some(session) = session {
        out.insert(SESSION_HEADER, session.clone());
    }
    out
}

/// Opens a GET stream on the child of `run` for the session `child`.
async fn open_stream(
    proxy: &Proxy,
    run: &Run,
    client: &HeaderMap,
    child: Option<&HeaderValue>,
) -> Result<axum::http::Response<Incoming>, ProxyError> {
    let mut request = axum::http::Request::new(Body::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = run.upstream.endpoint(None).map_err(|e| replay_error(&run.upstream.host, &e.to_string()))?;
    *request.headers_mut() = upstream_headers(run, client, child);
    request.headers_mut().insert(header::ACCEPT, HeaderValue::from_static("text/event-stream"));
    tokio::select! {
        response = proxy.client.request(request) => response.map_err(|e| replay_error(&run.upstream.host, &cause(&e))),
        _ = run.ended.cancelled() => Err(replay_error(&run.upstream.host, "the child exited")),
    }
}

/// The client's GET stream for `session`, carried across runs: relays
/// `first` (the child's stream on the current run), and after each new run
/// the stream the session's rebinding opened there. Each child's events are
/// re-encoded whole, so a child that dies mid-event leaves no half event.
/// Ends when the client goes, the session ends, the workspace does not come
/// back within [`STREAM_HOLD`], or a child ends its stream while it runs.
pub fn carried_stream(
    proxy: Arc<Proxy>,
    session: Arc<ClientSession>,
    run: Arc<Run>,
    first: Incoming,
    client: HeaderMap,
) -> Body {
    let (intake, next) = mpsc::channel(1);
    *session.stream.lock().unwrap() = Some(intake);
    let state = Carried { proxy, session, run, upstream: Some(first), next, client, parser: Parser::default() };
    let stream = futures::stream::unfold(state, |mut st| async move {
        let shutdown = st.proxy.shutdown.clone();
        tokio::select! {
            item = carried_next(&mut st) => item.map(|bytes| (Ok::<Bytes, Infallible>(bytes), st)),
            _ = shutdown.cancelled() => None,
        }
    });
    Body::from_stream(stream)
}

/// The next bytes of a carried stream; `None` once it ends.
async fn carried_next(st: &mut Carried) -> Option<Bytes> {
    loop {
        let Some(upstream) = st.upstream.as_mut() else {
            // Between runs: wait for the next one, carry the session
            // there (unless a request did already), take its stream.
            let name = st.session.workspace.clone();
            st.proxy.past(&st.run).await;
            let next = tokio::select! {
                next = st.next.recv() => next,
                run = st.proxy.running(&name, "streamable-http", STREAM_HOLD) => {
                    let run = run
                        .inspect_err(|e| tracing::debug!(workspace = %name, "the session's GET stream ends: {}", e.error.message))
                        .ok()?;
                    st.session
                        .bind(&st.proxy, &run, &st.client)
                        .await
                        .inspect_err(|e| tracing::debug!(workspace = %name, "the session's GET stream ends: {}", e.error.message))
                        .ok()?;
                    // The rebinding (this one or a request's) sent the stream.
                    tokio::time::timeout(REPLAY_TIMEOUT, st.next.recv()).await.ok()?
                }
            };
            let (run, upstream) = next?;
            tracing::debug!(workspace = %name, pid = run.pid(), "the session's GET stream goes on with the new child");
            (st.run, st.upstream, st.parser) = (run, Some(upstream), Parser::default());
            continue;
        };
        let next = tokio::select! {
            biased;
            frame = upstream.frame() => Some(frame),
            _ = st.run.ended.cancelled() => None,
        };
        match next {
            Some(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else { continue };
                let mut out = BytesMut::new();
                let fed = st.parser.feed(&data, |event: Event| {
                    let id = (!event.id.is_empty()).then_some(event.id.as_str());
                    let kind = (!event.event.is_empty() && event.event != "message").then_some(event.event.as_str());
                    Frame { id, event: kind, data: &event.data }.encode_into(&mut out);
                });
                if fed.is_err() {
                    return None;
                }
                if !out.is_empty() {
                    return Some(out.freeze());
                }
            }
            // A clean end while the child still runs is the child's to
            // make: passed on, the client reconnects as it sees fit.
            Some(None) if tokio::time::timeout(EXIT_GRACE, st.run.ended.cancelled()).await.is_err() => {
                tracing::debug!(workspace = %st.session.workspace, "the child ended the session's GET stream");
                return None;
            }
            other => {
                tracing::debug!(workspace = %st.session.workspace, ended = other.is_none(), "the session's GET stream lost its child; waiting for the next");
                st.upstream = None
            }
        }
    }
}

/// A carried GET stream between polls.
struct Carried {
    proxy: Arc<Proxy>,
    session: Arc<ClientSession>,
    run: Arc<Run>,
    upstream: Option<Incoming>,
    next: mpsc::Receiver<(Arc<Run>, Incoming)>,
    client: HeaderMap,
    parser: Parser,
}
