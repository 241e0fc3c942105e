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
//! there before the stream ends.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http_body_util::BodyExt;

use super::connections::{Exchange, Registration};
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
    /// The child's own endpoint, path and query.
    target: PathAndQuery,
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
}

enum Next {
    Frame(Option<Result<http_body::Frame<Bytes>, hyper::Error>>),
    Notification(Option<Arc<crate::state::Event>>),
    KeepAlive,
    Ended,
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
            let next = tokio::select! {
                biased;
                frame = self.upstream.frame() => Next::Frame(frame),
                event = self.subscription.next() => Next::Notification(event),
                _ = self.run.ended.cancelled() => Next::Ended,
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
                Next::Frame(_) | Next::Notification(None) | Next::Ended => {
                    return self.finish("the child's event stream ended").await;
                }
            }
        }
    }

    /// The last bytes of a stream whose child went away: held and exit
    /// notifications, then an error for each request still waiting.
    async fn finish(&mut self, detail: &str) -> Option<Bytes> {
        self.finished = true;
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
        let legacy = Arc::new(LegacySession { target, exchange: exchange.clone() });
        self.proxy.sessions.open.lock().unwrap().insert(key.clone(), legacy);
        self.proxy.connections.create_session(name, &query, "sse");
        exchange.set_session(&query);
        self.session.key = Some(key);
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
    let (parts, body) = request.into_parts();
    let bytes = match body::read(&parts.headers, body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let peeked = jsonrpc::peek(&bytes).unwrap_or_else(|e| {
        tracing::debug!(workspace = %name, "passing on a body the proxy cannot follow: {e}");
        Peeked::default()
    });
    let run = match super::demand::route(state, &name, "sse").await {
        Ok((_, run)) => run,
        Err(error) => return error.reply(&peeked),
    };
    let query = parts.uri.query().unwrap_or("").to_string();
    let session = proxy.sessions.open.lock().unwrap().get(&(name.clone(), query.clone())).cloned();
    // A session the proxy does not know goes to the child's usual path,
    // which answers it as it sees fit.
    let target = match &session {
        Some(session) => Ok(session.target.clone()),
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
