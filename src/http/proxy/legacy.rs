//! `/workspaces/{name}/sse` and `/workspaces/{name}/messages`: the HTTP+SSE
//! transport of 2024-11-05, relayed to children that speak it.
//!
//! The child's `endpoint` event is rewritten to
//! `/workspaces/{name}/messages?<its query>`, and the proxy remembers the
//! child's own path for that query. The workspace's `workspace/statusChanged`
//! notifications are added to the stream as `event: message` events, from
//! the moment the stream opens: the initial snapshot is left out, since the
//! client just saw the workspace running. Answers to POSTed requests come
//! back on the stream; when the child goes away, each request still waiting
//! gets a JSON-RPC error event there before the stream ends.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, Method, Uri};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use futures::FutureExt;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::connections::{Exchange, Registration};
use super::jsonrpc::{self, Peeked};
use super::relay::{note_answers, SseEvent, SseScanner, Tracked};
use super::{
    downstream_headers, is_event_stream, peer, read_body, unavailable, upstream_headers, upstream_uri, Proxy,
    ProxyError,
};
use crate::http::AppState;
use crate::state::{Status, WorkspaceRecord};

/// The open legacy sessions, by workspace and the query of their endpoint.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<(String, String), Arc<LegacySession>>>,
}

struct LegacySession {
    /// The child's own endpoint, path and query.
    target: String,
    /// The stream's exchange, which holds the requests awaiting answers.
    exchange: Arc<Exchange>,
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

/// The checks both routes share: the workspace exists, speaks `sse` and runs.
fn route(
    proxy: &Proxy,
    name: &str,
    peeked: &Peeked,
) -> Result<(Arc<WorkspaceRecord>, CancellationToken, u16), Response> {
    let Some(record) = proxy.bus.view().get(name) else {
        return Err(ProxyError::unknown(name).reply(peeked));
    };
    if record.status.transport != "sse" {
        let hint = format!("use /workspaces/{name}/mcp");
        return Err(ProxyError::wrong_transport(name, record.status.transport, &hint).reply(peeked));
    }
    match (proxy.run(name), record.status.port) {
        (Some(run), Some(port)) if record.status.status == Status::Running => Ok((record, run, port)),
        _ => {
            let record = proxy.bus.view().get(name).unwrap_or(record);
            Err(unavailable(name, &record).reply(peeked))
        }
    }
}

/// `GET /workspaces/{name}/sse`: the child's event stream, relayed.
pub async fn sse(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
) -> Response {
    let proxy = state.proxy.clone();
    let none = Peeked::default();
    let (record, run, port) = match route(&proxy, &name, &none) {
        Ok(routed) => routed,
        Err(response) => return response,
    };
    let target = record.status.upstream.as_deref().and_then(|u| u.parse::<Uri>().ok());
    let path = target.as_ref().map_or("/sse", |u| u.path());
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let Some(uri) = upstream_uri(port, &path_and_query) else {
        return ProxyError::unknown(&name).reply(&none);
    };
    let mut upstream = axum::http::Request::new(Body::empty());
    *upstream.method_mut() = Method::GET;
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = upstream_headers(request.headers(), port, state.token.is_some());

    // Subscribe before the child can say anything, so no change is missed.
    let start_seq = proxy.bus.last_seq();
    let subscription = proxy.bus.subscribe(Some(BTreeSet::from([name.clone()])), None);
    let response = tokio::select! {
        biased;
        response = proxy.client.request(upstream) => response,
        _ = run.cancelled() => return proxy.broken(&name, &run, "the child exited").await.reply(&none),
    };
    let response = match response {
        Ok(response) => response,
        Err(e) => return proxy.broken(&name, &run, &e.to_string()).await.reply(&none),
    };
    let (mut parts, incoming) = response.into_parts();
    downstream_headers(&mut parts.headers);
    let registration = proxy.connections.open(&name, "sse", "sse", None, peer(connect));
    if !parts.status.is_success() || !is_event_stream(&parts.headers) {
        return Response::from_parts(parts, Body::new(Tracked::new(incoming, registration)));
    }
    parts.headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Response::from_parts(parts, stream(proxy, name, incoming, run, registration, subscription, start_seq))
}

fn stream(
    proxy: Arc<Proxy>,
    name: String,
    upstream: hyper::body::Incoming,
    run: CancellationToken,
    registration: Registration,
    subscription: crate::state::Subscription,
    start_seq: u64,
) -> Body {
    struct St {
        proxy: Arc<Proxy>,
        name: String,
        upstream: hyper::body::Incoming,
        run: CancellationToken,
        registration: Registration,
        subscription: crate::state::Subscription,
        start_seq: u64,
        scanner: SseScanner,
        session: SessionGuard,
        /// Notifications held until the client has its endpoint.
        held: VecDeque<Bytes>,
        finished: bool,
    }
    enum Next {
        Frame(Option<Result<http_body::Frame<Bytes>, hyper::Error>>),
        Notification(Option<Arc<crate::state::Event>>),
        Ended,
    }
    let session = SessionGuard { proxy: proxy.clone(), key: None };
    let st = St {
        proxy,
        name,
        upstream,
        run,
        registration,
        subscription,
        start_seq,
        scanner: SseScanner::default(),
        session,
        held: VecDeque::new(),
        finished: false,
    };
    let body = futures::stream::unfold(st, |mut st| async move {
        if st.finished {
            return None;
        }
        loop {
            let next = tokio::select! {
                biased;
                frame = st.upstream.frame() => Next::Frame(frame),
                event = st.subscription.next() => Next::Notification(event),
                _ = st.run.cancelled() => Next::Ended,
            };
            match next {
                Next::Frame(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    let mut events = Vec::new();
                    st.scanner.feed(&data, |event| events.push(event));
                    let mut out = Vec::new();
                    for event in events {
                        relay_event(&mut st.session, &st.name, &st.registration.exchange, event, &mut out);
                    }
                    if st.session.key.is_some() {
                        out.extend(st.held.drain(..).flatten());
                    }
                    if !out.is_empty() {
                        return Some((Ok::<Bytes, Infallible>(Bytes::from(out)), st));
                    }
                }
                Next::Notification(Some(event)) if event.seq > st.start_seq => {
                    let bytes = Bytes::from(format!("event: message\ndata: {}\n\n", event.json));
                    if st.session.key.is_some() {
                        return Some((Ok(bytes), st));
                    }
                    st.held.push_back(bytes);
                }
                Next::Notification(Some(_)) => {}
                Next::Frame(_) | Next::Notification(None) | Next::Ended => {
                    st.finished = true;
                    let error = st.proxy.broken(&st.name, &st.run, "the child's event stream ended").await;
                    let mut out = Vec::new();
                    if st.session.key.is_some() {
                        out.extend(st.held.drain(..).flatten());
                        // The notifications of the exit, already published.
                        while let Some(Some(event)) = st.subscription.next().now_or_never() {
                            if event.seq > st.start_seq {
                                out.extend_from_slice(format!("event: message\ndata: {}\n\n", event.json).as_bytes());
                            }
                        }
                    }
                    let pending = st.registration.exchange.take_pending();
                    if st.scanner.mid_event() && !pending.is_empty() {
                        out.splice(0..0, b"\n\n".iter().copied());
                    }
                    out.extend_from_slice(&error.sse_events(&pending));
                    return (!out.is_empty()).then(|| (Ok(Bytes::from(out)), st));
                }
            }
        }
    });
    Body::from_stream(body)
}

/// Appends `event` to `out`: the `endpoint` event rewritten (and its session
/// registered), anything else exactly as received.
fn relay_event(session: &mut SessionGuard, name: &str, exchange: &Arc<Exchange>, event: SseEvent, out: &mut Vec<u8>) {
    if event.event.as_deref() != Some("endpoint") {
        note_answers(exchange, &event);
        out.extend_from_slice(&event.raw);
        return;
    }
    let target = String::from_utf8_lossy(&event.data).trim().to_string();
    // An absolute URL keeps only its path and query.
    let target = match target.find("://") {
        Some(i) => target[i + 3..].find('/').map_or_else(|| "/".to_string(), |j| target[i + 3 + j..].to_string()),
        None => target,
    };
    let query = target.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
    let rewritten = if query.is_empty() {
        format!("/workspaces/{name}/messages")
    } else {
        format!("/workspaces/{name}/messages?{query}")
    };
    out.extend_from_slice(format!("event: endpoint\ndata: {rewritten}\n\n").as_bytes());
    let key = (name.to_string(), query.clone());
    let legacy = Arc::new(LegacySession { target, exchange: exchange.clone() });
    session.proxy.sessions.open.lock().unwrap().insert(key.clone(), legacy);
    session.proxy.connections.touch_session(name, &query, "sse");
    exchange.set_session(&query);
    session.key = Some(key);
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
    let (parts, body) = request.into_parts();
    let bytes = match read_body(&parts.headers, body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let peeked = jsonrpc::peek(&bytes);
    let (_, run, port) = match route(&proxy, &name, &peeked) {
        Ok(routed) => routed,
        Err(response) => return response,
    };
    let query = parts.uri.query().unwrap_or("").to_string();
    let session = proxy.sessions.open.lock().unwrap().get(&(name.clone(), query.clone())).cloned();
    let target = session.as_ref().map_or_else(|| format!("/messages/?{query}"), |s| s.target.clone());
    let Some(uri) = upstream_uri(port, &target) else {
        return ProxyError::unknown(&name).reply(&peeked);
    };
    proxy.connections.touch_session(&name, &query, "sse");
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
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = upstream_headers(&parts.headers, port, state.token.is_some());
    let response = tokio::select! {
        biased;
        response = proxy.client.request(upstream) => response,
        _ = run.cancelled() => {
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
            downstream_headers(&mut parts.headers);
            Response::from_parts(parts, Body::new(Tracked::new(incoming, registration)))
        }
        Err(e) => {
            forget(&session);
            proxy.broken(&name, &run, &e.to_string()).await.reply(&peeked)
        }
    }
}
