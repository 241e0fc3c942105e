//! `/workspaces/{name}/mcp`: MCP Streamable HTTP, every revision from
//! 2025-03-26 (sessions, GET streams, `Last-Event-ID`) to the stateless
//! 2026-07-28 one, relayed to the child's endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::continuity::{self, ClientSession, MAX_REPLAYED_INITIALIZE, SESSION_HEADER};
use super::jsonrpc::{self, Peeked};
use super::relay;
use super::{body, cause, headers, peer, ProxyError, EXIT_GRACE};
use crate::http::holding::Holding;
use crate::http::AppState;

/// How long a request of a carried session waits for its workspace to run
/// again (docs/reference.md §11).
const RESTART_HOLD: std::time::Duration = std::time::Duration::from_secs(30);

/// Most times one request is sent again to a later run after its child died
/// before reading it.
const MAX_RESENDS: usize = 3;

/// Whether a failed send never reached the child's code: the connection was
/// refused, or reset. A child that dies with the request unread in its
/// socket (or before it was written) makes the kernel answer with a reset;
/// one that read the request and died while at it closes the connection
/// with a FIN, seen as an incomplete message, and the request may have had
/// effects (docs/reference.md §11).
fn never_read(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset) {
            return true;
        }
        source = e.source();
    }
    error.is_connect()
}

/// Longest `Mcp-Session-Id` passed on, bytes. The MCP spec bounds only its
/// characters (visible ASCII, 0x21 to 0x7E); a UUID or a hash is far
/// shorter, and a JWT fits.
pub const MAX_SESSION_ID: usize = 1024;

/// Whether `id` can be an `Mcp-Session-Id`: 1 to [`MAX_SESSION_ID`] visible
/// ASCII characters.
fn valid_session_id(id: &[u8]) -> bool {
    (1..=MAX_SESSION_ID).contains(&id.len()) && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// The client's `Mcp-Session-Id`, if it sent one.
///
/// # Errors
/// More than one, or one that is not a valid id.
fn client_session(headers: &HeaderMap) -> Result<Option<&str>, ProxyError> {
    let mut values = headers.get_all(SESSION_HEADER).iter();
    let refuse = |message: String| Err(ProxyError::invalid(StatusCode::BAD_REQUEST, message));
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => refuse("more than one mcp-session-id header".to_string()),
        (Some(value), None) if valid_session_id(value.as_bytes()) => Ok(value.to_str().ok()),
        (Some(value), None) => refuse(format!(
            "mcp-session-id must be 1 to {MAX_SESSION_ID} visible ASCII characters; got {} bytes",
            value.len()
        )),
    }
}

/// Relays one request to the child of workspace `name`, counting it in
/// `mcpvisor_proxy_requests_total` and timing it to the response headers.
pub async fn mcp(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
) -> Response {
    super::counted(&state, &name.clone(), relay_mcp(&state, name, connect, request)).await
}

async fn relay_mcp(
    state: &Arc<AppState>,
    name: String,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
) -> Response {
    let proxy = &state.proxy;
    if proxy.bridged(&name, "streamable-http") {
        return super::bridged::streamable(state, name, connect, request).await;
    }
    let (parts, body) = request.into_parts();
    let (body, bytes, peeked) = if parts.method == Method::POST {
        match body::read(&parts.headers, body).await {
            Ok(bytes) => {
                let peeked = jsonrpc::peek(&bytes).unwrap_or_else(|e| {
                    tracing::debug!(workspace = %name, "passing on a body the proxy cannot follow: {e}");
                    Peeked::default()
                });
                (Body::from(bytes.clone()), Some(bytes), peeked)
            }
            Err(response) => return response,
        }
    } else {
        (body, None, Peeked::default())
    };

    let session = match client_session(&parts.headers) {
        Ok(session) => session.map(str::to_string),
        Err(error) => return error.reply(&peeked),
    };
    // A session mcpvisor carries waits for its workspace to come back; a
    // DELETE ends a session, and is no reason to start a child.
    let carried = session.as_deref().and_then(|id| proxy.connections.carried(&name, id));
    // A POST that no child has read can go to the next run, unless it names
    // a session only the dead child knew.
    let resendable = bytes.is_some() && (carried.is_some() || session.is_none());
    let mut body = Some(body);
    let mut resends = 0;
    let (run, response, registration, upstream_headers, deadline) = loop {
        let run = match (&parts.method, &carried) {
            _ if resends > 0 => proxy.running(&name, "streamable-http", RESTART_HOLD).await,
            (&Method::DELETE, carried) => match proxy.route(&name, "streamable-http") {
                Err(_) if carried.is_some() => {
                    // Its child is gone: nothing is left to end but mcpvisor's record.
                    proxy.connections.end_session(&name, session.as_deref().unwrap_or_default());
                    return StatusCode::OK.into_response();
                }
                routed => routed.map(|(_, run)| run),
            },
            (_, Some(_)) => match super::demand::route(state, &name, "streamable-http").await {
                Ok((_, run)) => Ok(run),
                Err(_) => proxy.running(&name, "streamable-http", RESTART_HOLD).await,
            },
            (_, None) => super::demand::route(state, &name, "streamable-http").await.map(|(_, run)| run),
        };
        let run = match run {
            Ok(run) => run,
            Err(error) => return error.reply(&peeked),
        };
        let uri = match run.upstream.endpoint(parts.uri.query()) {
            Ok(uri) => uri,
            Err(e) => return ProxyError::invalid(StatusCode::BAD_REQUEST, format!("query string: {e}")).reply(&peeked),
        };
        let mut upstream_headers = headers::upstream(&parts.headers, &run.upstream.host, state.token.is_some());
        if let Some(carried) = &carried {
            match carried.bind(proxy, &run, &upstream_headers).await {
                Ok(child) => {
                    upstream_headers.remove(SESSION_HEADER);
                    upstream_headers
                        .extend(child.map(|child| (axum::http::HeaderName::from_static(SESSION_HEADER), child)));
                }
                Err(error) => return error.reply(&peeked),
            }
            if let (Some(bytes), 0) = (&bytes, resends) {
                carried.observe(bytes);
            }
        } else if let Some(session) = &session {
            proxy.connections.touch_session(&name, session);
        }
        if resendable && resends < MAX_RESENDS && run.exited() {
            tracing::debug!(workspace = %name, pid = run.pid(), "the child exited before the request came; waiting for the next run");
            resends += 1;
            proxy.past(&run).await;
            continue;
        }

        let registration =
            proxy.connections.open(&name, "streamable-http", parts.method.as_str(), session.as_deref(), peer(connect));
        registration.exchange.add_pending(&peeked.requests);

        let body = match &bytes {
            Some(bytes) => Body::from(bytes.clone()),
            None => body.take().unwrap_or_default(),
        };
        let mut upstream = axum::http::Request::new(body);
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.headers_mut() = upstream_headers.clone();

        let timeout = (!peeked.requests.is_empty()).then_some(proxy.request_timeout);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let send = proxy.client.request(upstream);
        tokio::pin!(send);
        let response = tokio::select! {
            biased;
            response = &mut send => response,
            // The child's sockets closed with it: the send fails at once,
            // saying whether the child ever read the request.
            _ = run.ended.cancelled() => match tokio::time::timeout(EXIT_GRACE, &mut send).await {
                Ok(response) => response,
                Err(_) => {
                    tracing::debug!(workspace = %name, pid = run.pid(), "the child exited; its connection did not say so");
                    return proxy.broken(&name, &run, "the child exited").await.reply(&peeked);
                }
            },
            _ = relay::sleep_until(deadline) => return proxy.timed_out(&name).reply(&peeked),
        };
        match response {
            Ok(response) => break (run, response, registration, upstream_headers, deadline),
            Err(e) if resendable && resends < MAX_RESENDS && never_read(&e) => {
                tracing::debug!(workspace = %name, pid = run.pid(), "the child was gone before it read the request ({}); sending it to the next run", cause(&e));
                resends += 1;
                proxy.past(&run).await;
            }
            Err(e) => {
                tracing::debug!(workspace = %name, pid = run.pid(), "the child broke off the request: {}", cause(&e));
                return proxy.broken(&name, &run, &cause(&e)).await.reply(&peeked);
            }
        }
    };

    let (mut parts_out, incoming) = response.into_parts();
    let issued = parts_out.headers.get(SESSION_HEADER).filter(|id| valid_session_id(id.as_bytes())).cloned();
    match (&carried, &session) {
        // The client knows the session by mcpvisor's id only.
        (Some(_), Some(ours)) => {
            if issued.is_some() {
                parts_out.headers.insert(SESSION_HEADER, HeaderValue::from_str(ours).expect("a valid session id"));
            }
        }
        // A session exists once the child issues it in answer to an `initialize`.
        _ => {
            if let Some(issued) = issued {
                let initialize = parts_out.status.is_success()
                    && !peeked.batch
                    && peeked.requests.iter().any(|r| r.method == "initialize");
                let kept = bytes.filter(|b| initialize && b.len() <= MAX_REPLAYED_INITIALIZE);
                let id = match kept {
                    Some(initialize) => {
                        let id = new_session_id();
                        let carried = ClientSession::new(&name, &run, issued, initialize);
                        proxy.connections.create_carried(&name, &id, std::sync::Arc::new(carried));
                        parts_out.headers.insert(SESSION_HEADER, HeaderValue::from_str(&id).expect("hex"));
                        id
                    }
                    None => {
                        let id = issued.to_str().unwrap_or_default().to_string();
                        if initialize {
                            proxy.connections.create_session(&name, &id, "streamable-http");
                        }
                        id
                    }
                };
                registration.exchange.set_session(&id);
            }
        }
    }
    if parts.method == Method::DELETE && parts_out.status.is_success() {
        if let Some(session) = &session {
            proxy.connections.end_session(&name, session);
        }
    }
    headers::downstream(&mut parts_out);
    let body = match (headers::is_event_stream(&parts_out.headers), carried) {
        (true, Some(carried)) if parts.method == Method::GET && parts_out.status.is_success() => {
            parts_out.headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
            let stream = continuity::carried_stream(proxy.clone(), carried, run, incoming, upstream_headers);
            Body::new(Holding::new(stream, registration))
        }
        (true, _) => {
            parts_out.headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
            let remaining = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            relay::sse_body(proxy.clone(), name, incoming, run, registration, remaining)
        }
        (false, _) => Body::new(Holding::new(incoming, registration)),
    };
    Response::from_parts(parts_out, body)
}

/// A session id of mcpvisor's own: 128 random bits in hex.
fn new_session_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
