//! The MCP reverse proxy of DESIGN §8: one address, mcpvisor's, for every
//! workspace's child.
//!
//! `/workspaces/{name}/mcp` relays Streamable HTTP ([`streamable`]);
//! `/workspaces/{name}/sse` and `/messages` relay the 2024-11-05 HTTP+SSE
//! transport ([`legacy`]). Bodies pass through unchanged and stream; the
//! proxy only peeks at a POST body's JSON-RPC ids to answer for the child
//! when it cannot.
//!
//! Never hang: routing reads the [`crate::state::StateView`] snapshot, so a
//! workspace that is not `running` is answered at once. Each run of a child
//! (workspace + pid) has a cancellation token that a watcher task fires as
//! soon as the event bus shows the run ended; requests in flight select on
//! it, and on the upstream connection breaking, whichever comes first.

mod connections;
mod jsonrpc;
mod legacy;
mod relay;
mod streamable;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub use connections::Connections;
pub use legacy::{messages as legacy_messages, sse as legacy_sse};
pub use streamable::mcp;

use crate::state::{EventBus, Status, WorkspaceRecord};
use jsonrpc::Peeked;

/// Largest POST body passed on (DESIGN §8); larger ones get 413.
pub const MAX_BODY: usize = 4 << 20;
/// How much of an oversized body is read and dropped before the 413.
const DRAIN_CAP: usize = 4 * MAX_BODY;
/// How long a request body may take to arrive.
const DRAIN_TIME: Duration = Duration::from_secs(30);
/// How long a JSON-RPC request may wait on the child by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a broken upstream connection waits for the actor to publish the
/// child's exit, so the error names the status the child ended in.
const EXIT_GRACE: Duration = Duration::from_millis(20);

type HttpClient = Client<HttpConnector, Body>;

/// Runs one proxied request, counting it in `mcpvisor_proxy_requests_total`
/// by status and timing it to the response headers.
async fn counted(
    state: &crate::http::AppState,
    workspace: &str,
    relay: impl std::future::Future<Output = Response>,
) -> Response {
    let started = tokio::time::Instant::now();
    let response = relay.await;
    state.ctx.metrics.proxy_request(workspace, response.status().as_u16(), started.elapsed());
    response
}

/// One run of a child: it ends when the workspace leaves `running` or its
/// pid changes.
struct Run {
    pid: u32,
    ended: CancellationToken,
}

/// The proxy's shared state: a pooled HTTP/1 client, the live runs, the
/// open exchanges.
pub struct Proxy {
    client: HttpClient,
    bus: Arc<EventBus>,
    request_timeout: Duration,
    runs: Mutex<HashMap<String, Run>>,
    pub connections: Arc<Connections>,
    sessions: legacy::Sessions,
}

impl Proxy {
    /// Builds the proxy and spawns its run watcher, which ends with `shutdown`.
    ///
    /// `request_timeout` bounds how long a JSON-RPC request waits on the child.
    pub fn new(bus: Arc<EventBus>, request_timeout: Duration, shutdown: CancellationToken) -> Arc<Proxy> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        let proxy = Arc::new(Proxy {
            client,
            bus: bus.clone(),
            request_timeout,
            runs: Mutex::new(HashMap::new()),
            connections: Arc::new(Connections::default()),
            sessions: legacy::Sessions::default(),
        });
        tokio::spawn(watch_runs(Arc::downgrade(&proxy), bus, shutdown));
        proxy
    }

    /// The token of the child run `record` shows, if it is running.
    ///
    /// Checked against the view under the runs lock, which the watcher also
    /// takes, so a run that ends after this returns always fires its token.
    fn run(&self, name: &str) -> Option<CancellationToken> {
        let mut runs = self.runs.lock().unwrap();
        let record = self.bus.view().get(name)?;
        if record.status.status != Status::Running {
            return None;
        }
        let pid = record.status.pid.unwrap_or(0);
        if let Some(run) = runs.get(name) {
            if run.pid == pid {
                return Some(run.ended.clone());
            }
            run.ended.cancel();
        }
        let ended = CancellationToken::new();
        runs.insert(name.to_string(), Run { pid, ended: ended.clone() });
        Some(ended)
    }

    /// Ends the run of `name` unless the view still shows it running.
    fn check_run(&self, name: &str) {
        let mut runs = self.runs.lock().unwrap();
        let Some(run) = runs.get(name) else { return };
        let alive = self
            .bus
            .view()
            .get(name)
            .is_some_and(|r| r.status.status == Status::Running && r.status.pid.unwrap_or(0) == run.pid);
        if !alive {
            if let Some(run) = runs.remove(name) {
                run.ended.cancel();
            }
            self.connections.end_workspace(name);
        }
    }

    /// The error for a request that reached a child that broke off: waits
    /// briefly for the actor to publish the exit so the status is accurate.
    async fn broken(&self, name: &str, run: &CancellationToken, detail: &str) -> ProxyError {
        let _ = tokio::time::timeout(EXIT_GRACE, run.cancelled()).await;
        match self.bus.view().get(name) {
            Some(record) if record.status.status != Status::Running || run.is_cancelled() => unavailable(name, &record),
            Some(record) => {
                let mut error = unavailable(name, &record);
                error.http = StatusCode::BAD_GATEWAY;
                error.message = format!("workspace {name:?}: the child broke off the request: {detail}");
                error
            }
            None => ProxyError::unknown(name),
        }
    }

    fn timed_out(&self, name: &str) -> ProxyError {
        ProxyError {
            http: StatusCode::GATEWAY_TIMEOUT,
            code: jsonrpc::SERVER_ERROR,
            message: format!(
                "workspace {name:?} did not answer within {}",
                humantime::format_duration(self.request_timeout)
            ),
            data: json!({"workspace": name, "timeoutMs": self.request_timeout.as_millis() as u64}),
        }
    }
}

/// Fires the token of each run that the bus shows ended.
async fn watch_runs(proxy: Weak<Proxy>, bus: Arc<EventBus>, shutdown: CancellationToken) {
    let mut subscription = bus.subscribe(None, Some(bus.last_seq()));
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => None,
            event = subscription.next() => event,
        };
        let Some(proxy) = proxy.upgrade() else { return };
        match event {
            Some(event) => proxy.check_run(&event.workspace),
            None => {
                for (_, run) in proxy.runs.lock().unwrap().drain() {
                    run.ended.cancel();
                }
                return;
            }
        }
    }
}

/// An answer the proxy gives for the child, as a JSON-RPC error.
#[derive(Debug)]
pub struct ProxyError {
    pub http: StatusCode,
    pub code: i64,
    pub message: String,
    pub data: Value,
}

impl ProxyError {
    fn unknown(name: &str) -> ProxyError {
        ProxyError {
            http: StatusCode::NOT_FOUND,
            code: jsonrpc::SERVER_ERROR,
            message: format!("no workspace named {name:?}"),
            data: json!({"workspace": name}),
        }
    }

    fn wrong_transport(name: &str, transport: &str, hint: &str) -> ProxyError {
        ProxyError {
            http: StatusCode::BAD_REQUEST,
            code: jsonrpc::SERVER_ERROR,
            message: format!("workspace {name:?} speaks {transport}; {hint}"),
            data: json!({"workspace": name, "transport": transport}),
        }
    }

    fn too_large() -> ProxyError {
        ProxyError {
            http: StatusCode::PAYLOAD_TOO_LARGE,
            code: jsonrpc::INVALID_REQUEST,
            message: format!("request body exceeds {} MiB", MAX_BODY >> 20),
            data: Value::Null,
        }
    }

    /// The HTTP answer to a POST body (or a bodiless request).
    fn reply(&self, peeked: &Peeked) -> Response {
        let body = jsonrpc::reply(peeked, self.code, &self.message, &self.data);
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.http;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    fn sse_events(&self, requests: &[jsonrpc::RequestId]) -> Bytes {
        jsonrpc::sse_errors(requests, self.code, &self.message, &self.data)
    }
}

/// The 503 for a workspace that is not running, with what a client needs to
/// decide when to retry.
fn unavailable(name: &str, record: &WorkspaceRecord) -> ProxyError {
    let status = &record.status;
    let now = SystemTime::now();
    let retry_after =
        status.breaker.next_retry_at.map(|at| at.0.duration_since(now).unwrap_or_default().as_millis() as u64);
    let stderr_tail = status.last_error.as_ref().map(|e| e.stderr_tail.clone()).unwrap_or_default();
    ProxyError {
        http: StatusCode::SERVICE_UNAVAILABLE,
        code: jsonrpc::SERVER_ERROR,
        message: format!("workspace {name:?} is {}", status.status),
        data: json!({
            "workspace": name,
            "status": status.status,
            "lastError": status.last_error,
            "stderrTail": stderr_tail,
            "retryAfterMs": retry_after,
        }),
    }
}

/// Reads a POST body of at most [`MAX_BODY`] bytes.
async fn read_body(headers: &HeaderMap, mut body: Body) -> Result<Bytes, Response> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut over = declared.is_some_and(|n| n > MAX_BODY as u64);
    let mut collected = bytes::BytesMut::new();
    let mut seen = 0usize;
    // An oversized body is still read (and dropped), up to a cap and a time
    // limit: answering 413 while the client is still writing would reset the
    // connection, and the client would see an error instead of the answer.
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ProxyError {
                    http: StatusCode::BAD_REQUEST,
                    code: jsonrpc::INVALID_REQUEST,
                    message: format!("reading the request body: {e}"),
                    data: Value::Null,
                }
                .reply(&Peeked::default()))
            }
            Err(_) if over => break,
            Err(_) => {
                return Err(ProxyError {
                    http: StatusCode::REQUEST_TIMEOUT,
                    code: jsonrpc::INVALID_REQUEST,
                    message: "the request body did not arrive in time".into(),
                    data: Value::Null,
                }
                .reply(&Peeked::default()))
            }
        };
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len();
        if seen > MAX_BODY {
            over = true;
            collected = bytes::BytesMut::new();
        }
        if over {
            if seen > DRAIN_CAP {
                break;
            }
        } else {
            collected.extend_from_slice(&data);
        }
    }
    if over {
        let mut response = ProxyError::too_large().reply(&Peeked::default());
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(response);
    }
    Ok(collected.freeze())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the proxy sets itself.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// The headers to send upstream: the client's, minus hop-by-hop ones (and
/// those the `Connection` header names), with `Host` set to the child's
/// address. mcpvisor's own bearer token stays here.
fn upstream_headers(incoming: &HeaderMap, port: u16, strip_authorization: bool) -> HeaderMap {
    let named_by_connection: BTreeSet<String> = incoming
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    let mut out = HeaderMap::with_capacity(incoming.len() + 1);
    for (name, value) in incoming {
        if hop_by_hop(name)
            || named_by_connection.contains(name.as_str())
            || (strip_authorization && name == header::AUTHORIZATION)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    let host = HeaderValue::from_str(&format!("127.0.0.1:{port}")).expect("an address is a valid header");
    out.insert(header::HOST, host);
    out
}

/// Drops hop-by-hop headers from a child's response.
fn downstream_headers(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    let drop: Vec<HeaderName> =
        headers.keys().filter(|n| hop_by_hop(n) && *n != header::CONTENT_LENGTH).cloned().collect();
    for name in drop {
        headers.remove(name);
    }
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

fn peer(connect: Option<Extension<ConnectInfo<SocketAddr>>>) -> Option<String> {
    connect.map(|Extension(ConnectInfo(addr))| addr.to_string())
}

/// `http://127.0.0.1:<port><path>[?query]` as a URI.
fn upstream_uri(port: u16, path_and_query: &str) -> Option<axum::http::Uri> {
    format!("http://127.0.0.1:{port}{path_and_query}").parse().ok()
}
