//! The MCP reverse proxy of docs/reference.md §8: one address, mcpvisor's,
//! for every workspace's child.
//!
//! `/workspaces/{name}/mcp` relays Streamable HTTP ([`streamable`]);
//! `/workspaces/{name}/sse` and `/messages` relay the 2024-11-05 HTTP+SSE
//! transport ([`legacy`]). Bodies pass through unchanged and stream; the
//! proxy only peeks at a POST body's JSON-RPC ids ([`jsonrpc`]) to answer for
//! the child when it cannot ([`error`]).
//!
//! Never hang: routing reads the [`crate::state::StateView`] snapshot, so a
//! workspace that is not `running` is answered at once. Each run of a child
//! (workspace + pid) has a cancellation token that a watcher task fires as
//! soon as the event bus shows the run ended ([`runs`]); requests in flight
//! select on it, and on the upstream connection breaking, whichever comes
//! first.

mod body;
mod bridged;
mod connections;
mod connector;
mod continuity;
mod demand;
mod error;
mod headers;
mod hold;
mod jsonrpc;
mod legacy;
mod relay;
mod runs;
mod streamable;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use connector::Connector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

pub use body::MAX_BODY;
pub use connections::Connections;
/// The JSON-RPC id peek of the proxy's hot path, for `benches/hot_paths.rs`.
#[doc(hidden)]
pub use jsonrpc::peek as peek_jsonrpc;
pub use legacy::{messages as legacy_messages, sse as legacy_sse};
pub use streamable::mcp;

use crate::state::{EventBus, Status, WorkspaceRecord};
use error::ProxyError;
use runs::{Run, Runs};

/// How long a JSON-RPC request may wait on the child by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a broken upstream connection waits for the actor to publish the
/// child's exit, so the error names the status the child ended in.
const EXIT_GRACE: Duration = Duration::from_millis(20);

type HttpClient = Client<Connector, Body>;

/// Runs one proxied request, counting it in `mcpvisor_proxy_requests_total`
/// by status and timing it to the response headers, when the workspace
/// exists, and in the workspace's activity until its body is done.
async fn counted(
    state: &crate::http::AppState,
    workspace: &str,
    relay: impl std::future::Future<Output = Response>,
) -> Response {
    let started = tokio::time::Instant::now();
    let active = demand::begin(state, workspace);
    let response = demand::hold(relay.await, active);
    // Only workspaces that exist: a label per name a client makes up would
    // grow the metrics without bound.
    if state.ctx.bus.view().get(workspace).is_some() {
        state.ctx.metrics.proxy_request(workspace, response.status().as_u16(), started.elapsed());
    }
    response
}

/// The proxy's shared state: a pooled HTTP/1 client, the live runs, the
/// open exchanges and sessions.
pub struct Proxy {
    client: HttpClient,
    bus: Arc<EventBus>,
    request_timeout: Duration,
    runs: Runs,
    pub connections: Arc<Connections>,
    sessions: legacy::Sessions,
    /// Client sessions of `stdio` children.
    bridged: bridged::Sessions,
    /// The daemon's shutdown: nothing the proxy holds outlives it.
    shutdown: CancellationToken,
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
            .build(Connector(connector));
        let proxy = Arc::new(Proxy {
            client,
            bus: bus.clone(),
            request_timeout,
            runs: Runs::default(),
            connections: Arc::new(Connections::default()),
            sessions: legacy::Sessions::default(),
            bridged: bridged::Sessions::default(),
            shutdown: shutdown.clone(),
        });
        tokio::spawn(runs::watch(Arc::downgrade(&proxy), bus, shutdown));
        proxy
    }

    /// The workspace `name` and its current run, when it speaks `transport`
    /// and runs.
    ///
    /// # Errors
    /// The answer for the client: unknown workspace, another transport, or
    /// not running.
    fn route(&self, name: &str, transport: &'static str) -> Result<(Arc<WorkspaceRecord>, Arc<Run>), ProxyError> {
        let record = self.bus.view().get(name).ok_or_else(|| ProxyError::unknown(name))?;
        if record.status.transport != transport {
            return Err(ProxyError::wrong_transport(name, record.status.transport));
        }
        let default_path = if transport == "sse" { "/sse" } else { "/mcp" };
        match self.runs.current(&self.bus, name, default_path) {
            Some(run) if record.status.status == Status::Running => Ok((record, run)),
            _ => {
                let record = self.bus.view().get(name).unwrap_or(record);
                Err(ProxyError::unavailable(name, &record))
            }
        }
    }

    /// The error for a request that reached a child that broke off: waits
    /// briefly for the actor to publish the exit so the status is accurate.
    async fn broken(&self, name: &str, run: &Run, detail: &str) -> ProxyError {
        let _ = tokio::time::timeout(EXIT_GRACE, run.ended.cancelled()).await;
        match self.bus.view().get(name) {
            Some(record) if record.status.status != Status::Running || run.ended.is_cancelled() => {
                ProxyError::unavailable(name, &record)
            }
            Some(record) => {
                let mut error = ProxyError::unavailable(name, &record);
                error.http = StatusCode::BAD_GATEWAY;
                error.error.message = format!("workspace {name:?}: the child broke off the request: {detail}").into();
                error
            }
            None => ProxyError::unknown(name),
        }
    }

    /// Whether workspace `name`'s child speaks another transport than the
    /// route's `native` one, so the bridge serves it (docs/reference.md §9).
    fn bridged(&self, name: &str, native: &str) -> bool {
        self.bus.view().get(name).is_some_and(|r| r.status.transport != native)
    }

    fn timed_out(&self, name: &str) -> ProxyError {
        ProxyError::timed_out(name, self.request_timeout)
    }
}

fn peer(connect: Option<Extension<ConnectInfo<SocketAddr>>>) -> Option<String> {
    connect.map(|Extension(ConnectInfo(addr))| addr.to_string())
}

/// The most useful line of a client error: its cause when it has one.
fn cause(error: &hyper_util::client::legacy::Error) -> String {
    std::error::Error::source(error).map_or_else(|| error.to_string(), |s| s.to_string())
}
