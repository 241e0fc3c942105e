//! `/workspaces/{name}/mcp`: MCP Streamable HTTP, every revision from
//! 2025-03-26 (sessions, GET streams, `Last-Event-ID`) to the stateless
//! 2026-07-28 one, relayed to the child's endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Extension;

use super::jsonrpc::{self, Peeked};
use super::relay;
use super::{body, cause, headers, peer, ProxyError};
use crate::http::holding::Holding;
use crate::http::AppState;

const SESSION_HEADER: &str = "mcp-session-id";

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
    let (parts, body) = request.into_parts();
    let (body, peeked) = if parts.method == Method::POST {
        match body::read(&parts.headers, body).await {
            Ok(bytes) => {
                let peeked = jsonrpc::peek(&bytes).unwrap_or_else(|e| {
                    tracing::debug!(workspace = %name, "passing on a body the proxy cannot follow: {e}");
                    Peeked::default()
                });
                (Body::from(bytes), peeked)
            }
            Err(response) => return response,
        }
    } else {
        (body, Peeked::default())
    };

    let session = match client_session(&parts.headers) {
        Ok(session) => session.map(str::to_string),
        Err(error) => return error.reply(&peeked),
    };
    // A DELETE ends a session; it is no reason to start a child.
    let routed = match parts.method {
        Method::DELETE => proxy.route(&name, "streamable-http"),
        _ => super::demand::route(state, &name, "streamable-http").await,
    };
    let run = match routed {
        Ok((_, run)) => run,
        Err(error) => return error.reply(&peeked),
    };
    let uri = match run.upstream.endpoint(parts.uri.query()) {
        Ok(uri) => uri,
        Err(e) => return ProxyError::invalid(StatusCode::BAD_REQUEST, format!("query string: {e}")).reply(&peeked),
    };

    if let Some(session) = &session {
        proxy.connections.touch_session(&name, session);
    }
    let registration =
        proxy.connections.open(&name, "streamable-http", parts.method.as_str(), session.as_deref(), peer(connect));
    registration.exchange.add_pending(&peeked.requests);

    let mut upstream = axum::http::Request::new(body);
    *upstream.method_mut() = parts.method.clone();
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = headers::upstream(&parts.headers, &run.upstream.host, state.token.is_some());

    let timeout = (!peeked.requests.is_empty()).then_some(proxy.request_timeout);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let response = tokio::select! {
        biased;
        response = proxy.client.request(upstream) => response,
        _ = run.ended.cancelled() => return proxy.broken(&name, &run, "the child exited").await.reply(&peeked),
        _ = relay::sleep_until(deadline) => return proxy.timed_out(&name).reply(&peeked),
    };
    let response = match response {
        Ok(response) => response,
        Err(e) => return proxy.broken(&name, &run, &cause(&e)).await.reply(&peeked),
    };

    let (mut parts_out, incoming) = response.into_parts();
    // A session exists once the child issues it in answer to an `initialize`.
    let issued = parts_out.headers.get(SESSION_HEADER).map(|v| v.as_bytes()).filter(|id| valid_session_id(id));
    if let Some(issued) = issued.and_then(|id| std::str::from_utf8(id).ok()) {
        if parts_out.status.is_success() && peeked.requests.iter().any(|r| r.method == "initialize") {
            proxy.connections.create_session(&name, issued, "streamable-http");
        }
        registration.exchange.set_session(issued);
    }
    if parts.method == Method::DELETE && parts_out.status.is_success() {
        if let Some(session) = &session {
            proxy.connections.end_session(&name, session);
        }
    }
    headers::downstream(&mut parts_out);
    let body = if headers::is_event_stream(&parts_out.headers) {
        parts_out.headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        let remaining = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        relay::sse_body(proxy.clone(), name, incoming, run, registration, remaining)
    } else {
        Body::new(Holding::new(incoming, registration))
    };
    Response::from_parts(parts_out, body)
}
