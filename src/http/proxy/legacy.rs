//! `/workspaces/{name}/sse` and `/workspaces/{name}/messages`: the HTTP+SSE
//! transport of 2024-11-05, relayed to children that speak it.
//!
//! The child's stream is read event by event and sent on re-encoded: its
//! `endpoint` event rewritten to `/workspaces/{name}/messages?<its query>`
//! (the proxy remembers the child's own path for that query), every other
//! event as it came, its comments replaced by mcpvisor's own keep-alive. The
//! workspace's `workspace/statusChanged` notifications are added to the
//! stream as `event: message` events, from the moment the stream opens: the
//! initial snapshot is left out, since the client just saw the workspace
//! running. Answers to POSTed requests come back on the stream; when the
//! child goes away, each request still waiting gets a JSON-RPC error event
//! there.
//!
//! Then the stream stays open and the session is carried over to the next
//! child (docs/reference.md §11): the proxy opens a stream on it, reads its
//! endpoint, replays what the client said (its `initialize`,
//! `notifications/initialized`, log level and subscriptions; the answers
//! stay here), and the client's endpoint now leads to the new child's. A
//! session that sent no `initialize` to replay, or whose workspace is not
//! coming back, ends its stream instead.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::FutureExt;
use http_body_util::BodyExt;
use tokio::sync::watch;

use super::connections::{Exchange, Registration};
use super::continuity::{carry_refused, Replay};
use super::jsonrpc::{self, Peeked};
use super::relay::{error_events, note_answer};
use super::{body, cause, headers, peer, Proxy, ProxyError, Run};
use crate::http::holding::Holding;
use crate::http::sse::KEEP_ALIVE_EVERY;
use crate::http::AppState;
use crate::sse::{Event, Frame, Parser, KEEP_ALIVE};

/// The open legacy sessions, by workspace and the query of their endpoint.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<(String, String), Arc<LegacySession>>>,
}

struct LegacySession {
    /// The child's own endpoint, path and query, on the run it is bound to.
    target: Mutex<PathAndQuery>,
    /// The stream's exchange, which holds the requests awaiting answers.
    exchange: Arc<Exchange>,
    /// What a new child must hear again, from the client's `initialize` on.
    replay: Mutex<Option<Replay>>,
    /// The pid of the run the session is bound to; a message waits for the
    /// stream to carry the session over to its run.
    bound: watch::Sender<u32>,
}

impl LegacySession {
    /// Notes what the client's message `bytes` tell a new child.
    fn observe(&self, bytes: &Bytes, peeked: &Peeked) {
        Replay::follow(&mut self.replay.lock().unwrap(), bytes, peeked);
    }

    /// The messages that re-establish the session, when it can be carried.
    fn replay(&self) -> Option<Vec<Bytes>> {
        self.replay.lock().unwrap().as_ref().map(Replay::messages)
    }

    /// Waits (up to `within`) until the session is bound to `run`.
    async fn bound_to(&self, run: &Run, within: Duration) -> bool {
        let mut bound = self.bound.subscribe();
        tokio::time::timeout(within, bound.wait_for(|pid| *pid == run.pid())).await.is_ok_and(|r| r.is_ok())
    }
}

/// Removes a session when its stream goes away.
struct SessionGuard {
    proxy: Arc<Proxy>,
    key: Option<(String, String)>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.proxy.sessions.open.lock().unwrap().remove(&key);
            self.proxy.connections.end_session(&key.0, &key.1);
        }
    }
}

/// `GET /workspaces/{name}/sse`: the child's event stream, relayed; an open
/// stream counts as activity of the workspace.
pub async fn sse(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
) -> Response {
    let active = super::demand::begin(&state, &name);
    super::demand::hold(relay_sse(&state, name, connect, request).await, active)
}

async fn relay_sse(
    state: &Arc<AppState>,
    name: String,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
) -> Response {
    let proxy = state.proxy.clone();
    if proxy.bridged(&name, "sse") {
        return super::bridged::legacy_sse(&state, name, connect).await;
    }
    let none = Peeked::default();
    let run = match super::demand::route(state, &name, "sse").await {
        Ok((_, run)) => run,
        Err(error) => return error.reply(&none),
    };
    let uri = match run.upstream.endpoint(request.uri().query()) {
        Ok(uri) => uri,
        Err(e) => return ProxyError::invalid(StatusCode::BAD_REQUEST, format!("query string: {e}")).reply(&none),
    };
    let mut upstream = axum::http::Request::new(Body::empty());
    *upstream.method_mut() = Method::GET;
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = headers::upstream(request.headers(), &run.upstream.host, state.token.is_some());

    // Subscribe before the child can say anything, so no change is missed.
    let start_seq = proxy.bus.last_seq();
    let subscription = proxy.bus.subscribe(Some(BTreeSet::from([name.clone()])), None);
    let response = tokio::select! {
        biased;
        response = proxy.client.request(upstream) => response,
        _ = run.ended.cancelled() => return proxy.broken(&name, &run, "the child exited").await.reply(&none),
    };
    let response = match response {
        Ok(response) => response,
        Err(e) => return proxy.broken(&name, &run, &cause(&e)).await.reply(&none),
    };
    let (mut parts, incoming) = response.into_parts();
    headers::downstream(&mut parts);
    let registration = proxy.connections.open(&name, "sse", "sse", None, peer(connect));
    if !parts.status.is_success() || !headers::is_event_stream(&parts.headers) {
        return Response::from_parts(parts, Body::new(Holding::new(incoming, registration)));
    }
    parts.headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let relay = LegacyRelay {
        session: SessionGuard { proxy: proxy.clone(), key: None },
        proxy,
        name,
        upstream: incoming,
        run,
        registration,
        subscription,
        start_seq,
        parser: Parser::default(),
        held: VecDeque::new(),
        finished: false,
        legacy: None,
        client: request.headers().clone(),
        token: state.token.is_some(),
        carrying: None,
    };
    Response::from_parts(parts, relay.into_body())
}

/// One legacy stream on its way to the client.
struct LegacyRelay {
    proxy: Arc<Proxy>,
    name: String,
    upstream: hyper::body::Incoming,
    run: Arc<Run>,
    registration: Registration,
    subscription: crate::state::Subscription,
    start_seq: u64,
    parser: Parser,
    session: SessionGuard,
    /// Notifications held until the client has its endpoint.
    held: VecDeque<Bytes>,
    finished: bool,
    /// The session, once the child named its endpoint.
    legacy: Option<Arc<LegacySession>>,
    /// The client's request headers, to open the stream on a new child.
    client: HeaderMap,
    /// Whether the daemon has an API token (kept from the child).
    token: bool,
    /// The session on its way to the next child.
    carrying: Option<BoxFuture<'static, Result<Reopened, ProxyError>>>,
}

enum Next {
    Frame(Option<Result<http_body::Frame<Bytes>, hyper::Error>>),
    Notification(Option<Arc<crate::state::Event>>),
    KeepAlive,
    Ended,
    Carried(Result<Reopened, ProxyError>),
}

/// How long a legacy stream waits for its workspace to run again.
const STREAM_HOLD: Duration = Duration::from_secs(300);
/// How long a message of a carried session waits for its workspace to run
/// again and for the stream to carry the session over.
const RESTART_HOLD: Duration = Duration::from_secs(30);
/// How long the new child may take to name its endpoint or to answer one
/// replayed request.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// A session's stream on the next child, re-established.
struct Reopened {
    run: Arc<Run>,
    upstream: hyper::body::Incoming,
    parser: Parser,
    /// The new child's endpoint for the session.
    target: PathAndQuery,
    /// What the new child said meanwhile, besides its endpoint and the
    /// answers to the replay: for the client.
    early: Vec<Event>,
}

impl LegacyRelay {
    fn into_body(self) -> Body {
        let keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE_EVERY, KEEP_ALIVE_EVERY);
        let body = futures::stream::unfold((self, keep_alive), |(mut st, mut keep_alive)| async move {
            let bytes = st.next(&mut keep_alive).await?;
            Some((Ok::<Bytes, Infallible>(bytes), (st, keep_alive)))
        });
        Body::from_stream(body)
    }

    /// The next bytes for the client; `None` once the stream is over.
    async fn next(&mut self, keep_alive: &mut tokio::time::Interval) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        loop {
            let carrying = self.carrying.is_some();
            let next = tokio::select! {
                biased;
                reopened = async { self.carrying.as_mut().expect("carrying").await }, if carrying => {
                    Next::Carried(reopened)
                }
                frame = self.upstream.frame(), if !carrying => Next::Frame(frame),
                event = self.subscription.next() => Next::Notification(event),
                _ = self.run.ended.cancelled(), if !carrying => Next::Ended,
                _ = keep_alive.tick() => Next::KeepAlive,
            };
            match next {
                Next::Frame(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    let mut events = Vec::new();
                    if let Err(e) = self.parser.feed(&data, |event| events.push(event)) {
                        return self.finish(&e.to_string()).await;
                    }
                    let mut out = BytesMut::new();
                    for event in events {
                        self.relay_event(event, &mut out);
                    }
                    if self.session.key.is_some() {
                        out.extend(self.held.drain(..).flatten());
                    }
                    if !out.is_empty() {
                        return Some(out.freeze());
                    }
                }
                Next::Notification(Some(event)) if event.seq > self.start_seq => {
                    let frame = Frame::new(&event.json).event("message").encode();
                    if self.session.key.is_some() {
                        return Some(frame);
                    }
                    self.held.push_back(frame);
                }
                Next::Notification(Some(_)) => {}
                Next::KeepAlive => return Some(KEEP_ALIVE),
                Next::Carried(Ok(reopened)) => {
                    self.carrying = None;
                    let mut out = BytesMut::new();
                    self.carried_over(reopened, &mut out);
                    if !out.is_empty() {
                        return Some(out.freeze());
                    }
                }
                Next::Carried(Err(error)) => {
                    tracing::debug!(workspace = %self.name, "the legacy stream ends: {}", error.error.message);
                    self.finished = true;
                    return None;
                }
                Next::Frame(_) | Next::Ended if self.legacy.as_ref().is_some_and(|l| l.replay().is_some()) => {
                    let replay = self.legacy.as_ref().and_then(|l| l.replay()).unwrap_or_default();
                    let out = self.interrupt("the child's event stream ended").await;
                    let (proxy, name, run) = (self.proxy.clone(), self.name.clone(), self.run.clone());
                    let (client, token) = (self.client.clone(), self.token);
                    self.carrying = Some(Box::pin(reopen(proxy, name, run, client, token, replay)));
                    if out.is_some() {
                        return out;
                    }
                }
                Next::Frame(_) | Next::Notification(None) | Next::Ended => {
                    return self.finish("the child's event stream ended").await;
                }
            }
        }
    }

    /// Puts the session's stream on the new child in place, and appends
    /// what the new child said meanwhile to `out`.
    fn carried_over(&mut self, reopened: Reopened, out: &mut BytesMut) {
        let Reopened { run, upstream, parser, target, early } = reopened;
        if let (Some(legacy), Some((name, query))) = (&self.legacy, &self.session.key) {
            *legacy.target.lock().unwrap() = target;
            legacy.bound.send_replace(run.pid());
            self.proxy.connections.carried_over(name, query);
        }
        tracing::info!(workspace = %self.name, pid = run.pid(), "legacy client session carried over to a new child");
        (self.run, self.upstream, self.parser) = (run, upstream, parser);
        for event in early {
            self.relay_event(event, out);
        }
    }

    /// The last bytes of a stream whose child went away: held and exit
    /// notifications, then an error for each request still waiting.
    async fn finish(&mut self, detail: &str) -> Option<Bytes> {
        self.finished = true;
        self.interrupt(detail).await
    }

    /// What a stream whose child went away owes the client: held and exit
    /// notifications, then an error for each request still waiting.
    async fn interrupt(&mut self, detail: &str) -> Option<Bytes> {
        let error = self.proxy.broken(&self.name, &self.run, detail).await;
        let mut out = BytesMut::new();
        if self.session.key.is_some() {
            out.extend(self.held.drain(..).flatten());
            // The notifications of the exit, already published.
            while let Some(Some(event)) = self.subscription.next().now_or_never() {
                if event.seq > self.start_seq {
                    Frame::new(&event.json).event("message").encode_into(&mut out);
                }
            }
        }
        // Events go out whole, so the client is never inside one here.
        if let Some(errors) = error_events(&error, &self.registration.exchange, false) {
            out.extend_from_slice(&errors);
        }
        (!out.is_empty()).then(|| out.freeze())
    }

    /// Appends `event` to `out`: the `endpoint` event rewritten (and its
    /// session registered), any other as it came.
    fn relay_event(&mut self, event: Event, out: &mut BytesMut) {
        let exchange = &self.registration.exchange;
        if event.event != "endpoint" {
            note_answer(exchange, &event);
            let id = (!event.id.is_empty()).then_some(event.id.as_str());
            Frame { id, event: Some(&event.event), data: &event.data }.encode_into(out);
            return;
        }
        // An absolute URL keeps only its path and query.
        let Some(target) = event.data.trim().parse::<Uri>().ok().and_then(|u| u.path_and_query().cloned()) else {
            tracing::warn!(workspace = %self.name, endpoint = %event.data.escape_debug(), "the child's endpoint is not a URL");
            Frame::new(&event.data).event("endpoint").encode_into(out);
            return;
        };
        let query = target.query().unwrap_or("").to_string();
        let name = &self.name;
        let rewritten = if query.is_empty() {
            format!("/workspaces/{name}/messages")
        } else {
            format!("/workspaces/{name}/messages?{query}")
        };
        Frame::new(&rewritten).event("endpoint").encode_into(out);
        let key = (name.clone(), query.clone());
        let legacy = Arc::new(LegacySession {
            target: Mutex::new(target),
            exchange: exchange.clone(),
            replay: Mutex::new(None),
            bound: watch::Sender::new(self.run.pid()),
        });
        self.proxy.sessions.open.lock().unwrap().insert(key.clone(), legacy.clone());
        self.proxy.connections.create_bridged(name, &query, "sse");
        exchange.set_session(&query);
        self.session.key = Some(key);
        self.legacy = Some(legacy);
    }
}

/// `POST /workspaces/{name}/messages?...`: one client message, relayed to
/// the child's endpoint of that session.
pub async fn messages(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
) -> Response {
    super::counted(&state, &name.clone(), relay_message(&state, name, connect, request)).await
}

async fn relay_message(
    state: &Arc<AppState>,
    name: String,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
) -> Response {
    let proxy = state.proxy.clone();
    if proxy.bridged(&name, "sse") {
        return super::bridged::legacy_message(state, name, request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match body::read(&parts.headers, body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let peeked = jsonrpc::peek(&bytes).unwrap_or_else(|e| {
        tracing::debug!(workspace = %name, "passing on a body the proxy cannot follow: {e}");
        Peeked::default()
    });
    let query = parts.uri.query().unwrap_or("").to_string();
    let session = proxy.sessions.open.lock().unwrap().get(&(name.clone(), query.clone())).cloned();
    // A session its stream carries over waits for the next child.
    let carried = session.as_ref().is_some_and(|s| s.replay.lock().unwrap().is_some());
    let run = match super::demand::route(state, &name, "sse").await {
        Ok((_, run)) => run,
        Err(_) if carried => match proxy.running(&name, "sse", RESTART_HOLD).await {
            Ok(run) => run,
            Err(error) => return error.reply(&peeked),
        },
        Err(error) => return error.reply(&peeked),
    };
    if let Some(session) = &session {
        if carried && !session.bound_to(&run, RESTART_HOLD).await {
            let error = proxy.broken(&name, &run, "the session was not carried over to the new child in time").await;
            return error.reply(&peeked);
        }
        session.observe(&bytes, &peeked);
    }
    // A session the proxy does not know goes to the child's usual path,
    // which answers it as it sees fit.
    let target = match &session {
        Some(session) => Ok(session.target.lock().unwrap().clone()),
        None => PathAndQuery::try_from(format!("/messages/?{query}")),
    };
    let target = match target {
        Ok(target) => target,
        Err(e) => return ProxyError::invalid(StatusCode::BAD_REQUEST, format!("query string: {e}")).reply(&peeked),
    };
    proxy.connections.touch_session(&name, &query);
    // Registered before sending: the answer may reach the stream before the 202.
    if let Some(session) = &session {
        session.exchange.add_pending(&peeked.requests);
    }
    let forget = |session: &Option<Arc<LegacySession>>| {
        if let Some(session) = session {
            for request in &peeked.requests {
                session.exchange.answered(&request.id);
            }
        }
    };
    let registration = proxy.connections.open(&name, "sse", "POST", Some(&query), peer(connect));
    let mut upstream = axum::http::Request::new(Body::from(bytes));
    *upstream.method_mut() = Method::POST;
    *upstream.uri_mut() = run.upstream.at(target);
    *upstream.headers_mut() = headers::upstream(&parts.headers, &run.upstream.host, state.token.is_some());
    let response = tokio::select! {
        biased;
        response = proxy.client.request(upstream) => response,
        _ = run.ended.cancelled() => {
            forget(&session);
            return proxy.broken(&name, &run, "the child exited").await.reply(&peeked);
        }
        _ = tokio::time::sleep(proxy.request_timeout) => {
            forget(&session);
            return proxy.timed_out(&name).reply(&peeked);
        }
    };
    match response {
        Ok(response) => {
            if !response.status().is_success() {
                forget(&session);
            }
            let (mut parts, incoming) = response.into_parts();
            headers::downstream(&mut parts);
            Response::from_parts(parts, Body::new(Holding::new(incoming, registration)))
        }
        Err(e) => {
            forget(&session);
            proxy.broken(&name, &run, &cause(&e)).await.reply(&peeked)
        }
    }
}

/// Re-establishes a legacy session on the run after `old`: waits for it (up
/// to [`STREAM_HOLD`]), opens a stream there, reads the child's endpoint, and
/// sends `replay` to it, keeping the answers (docs/reference.md §11).
///
/// # Errors
/// The workspace is not coming back, or the new child refused the stream or
/// a replayed message, or did not answer in time.
async fn reopen(
    proxy: Arc<Proxy>,
    name: String,
    old: Arc<Run>,
    client: HeaderMap,
    token: bool,
    replay: Vec<Bytes>,
) -> Result<Reopened, ProxyError> {
    proxy.past(&old).await;
    let run = proxy.running(&name, "sse", STREAM_HOLD).await?;
    let uri = run.upstream.endpoint(None).map_err(|e| carry_refused(e.to_string()))?;
    let mut request = axum::http::Request::new(Body::empty());
    *request.uri_mut() = uri;
    *request.headers_mut() = headers::upstream(&client, &run.upstream.host, token);
    let response = proxy.client.request(request).await.map_err(|e| carry_refused(cause(&e)))?;
    if !response.status().is_success() || !headers::is_event_stream(response.headers()) {
        return Err(carry_refused(format!("its event stream answered HTTP {}", response.status())));
    }
    let mut stream = ChildStream { upstream: response.into_body(), parser: Parser::default(), queue: VecDeque::new() };
    let mut early = Vec::new();
    let target = tokio::time::timeout(REPLAY_TIMEOUT, async {
        loop {
            let event = stream.next().await?;
            if event.event == "endpoint" {
                return event
                    .data
                    .trim()
                    .parse::<Uri>()
                    .ok()
                    .and_then(|u| u.path_and_query().cloned())
                    .ok_or_else(|| format!("its endpoint {:?} is not a URL", event.data));
            }
            early.push(event);
        }
    })
    .await
    .map_err(|_| carry_refused("it named no endpoint in time"))?
    .map_err(carry_refused)?;
    for message in replay {
        let id = serde_json::from_slice::<serde_json::Value>(&message).ok().and_then(|v| v.get("id").cloned());
        let mut post = axum::http::Request::new(Body::from(message));
        *post.method_mut() = Method::POST;
        *post.uri_mut() = run.upstream.at(target.clone());
        post.headers_mut().insert(axum::http::header::HOST, run.upstream.host.clone());
        post.headers_mut().insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let posted = proxy.client.request(post).await.map_err(|e| carry_refused(cause(&e)))?;
        if !posted.status().is_success() {
            return Err(carry_refused(format!("it refused a replayed message: HTTP {}", posted.status())));
        }
        let Some(id) = id else { continue };
        let id: rmcp::model::RequestId = serde_json::from_value(id).map_err(|e| carry_refused(e.to_string()))?;
        // The answer, and whatever the child says before it, stay here.
        tokio::time::timeout(REPLAY_TIMEOUT, async {
            loop {
                let event = stream.next().await?;
                if event.event == "message" && jsonrpc::response_id(event.data.as_bytes()).as_ref() == Some(&id) {
                    return Ok::<(), String>(());
                }
                early.push(event);
            }
        })
        .await
        .map_err(|_| carry_refused("no answer to a replayed request in time"))?
        .map_err(carry_refused)?;
    }
    early.extend(stream.queue);
    Ok(Reopened { run, upstream: stream.upstream, parser: stream.parser, target, early })
}

/// A child's event stream read event by event.
struct ChildStream {
    upstream: hyper::body::Incoming,
    parser: Parser,
    queue: VecDeque<Event>,
}

impl ChildStream {
    /// The next event.
    ///
    /// # Errors
    /// The stream ended, broke, or cannot be parsed.
    async fn next(&mut self) -> Result<Event, String> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Ok(event);
            }
            let frame = self.upstream.frame().await.ok_or("its event stream ended")?.map_err(|e| e.to_string())?;
            let Ok(data) = frame.into_data() else { continue };
            let queue = &mut self.queue;
            self.parser.feed(&data, |event| queue.push_back(event)).map_err(|e| e.to_string())?;
        }
    }
}
