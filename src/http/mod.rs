//! The HTTP surface of docs/reference.md §6: API, SSE streams, debug state,
//! MCP proxy, dashboard, and the server under them ([`server`]).
//!
//! Every handler answers from snapshots ([`crate::state::StateView`]) or
//! queues a command to an actor without waiting on it: no handler awaits a
//! child.

mod api;
mod config_api;
mod dashboard;
mod debug;
pub(crate) mod error;
mod guard;
mod holding;
pub mod proxy;
mod server;
pub(crate) mod sse;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::Router;

pub use api::WorkspaceList;
pub use error::ApiError;
pub use server::{serve, ServerLimits};
pub use sse::Subscribers;

use crate::state::ResourceView;
use crate::supervisor::{Registry, SupervisorContext};

/// What handlers share.
pub struct AppState {
    pub ctx: Arc<SupervisorContext>,
    pub registry: Arc<Registry>,
    /// True once every workspace file has been read and handed to its actor.
    pub ready: Arc<AtomicBool>,
    pub resources: Arc<ResourceView>,
    pub subscribers: Arc<Subscribers>,
    /// Bearer token every route but `/healthz` and `/readyz` requires.
    pub token: Option<String>,
    /// The host of `--listen`, accepted in `Host` and `Origin` besides loopback.
    pub listen_host: String,
    /// Ends open SSE streams at shutdown so the server can drain.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The MCP reverse proxy (docs/reference.md §8).
    pub proxy: Arc<proxy::Proxy>,
    /// Writes workspace files for the API (docs/reference.md §10).
    pub writer: Arc<crate::supervisor::writes::ConfigWriter>,
    /// `serve --max-workspaces` and `--max-memory-mb`, for the debug view.
    pub limits: DaemonLimits,
}

/// The daemon-wide limits of `serve` (docs/reference.md §10).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonLimits {
    pub max_workspaces: Option<usize>,
    pub max_memory_mb: Option<u64>,
}

/// Builds the router over `state`; tests drive it with `oneshot`. Every
/// request passes [`guard::check`]; every error answer is JSON
/// ([`error::json_errors`]).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/api/workspaces", get(api::list))
        .route("/api/workspaces/{name}", get(api::one))
        .route("/api/workspaces/{name}/logs", get(api::logs))
        .route("/api/workspaces/{name}/events", get(sse::workspace_events))
        .route("/api/workspaces/{name}/{action}", post(api::command))
        .route(
            "/api/workspaces/{name}/config",
            put(config_api::put).get(config_api::get).patch(config_api::patch).delete(config_api::delete),
        )
        .route("/api/workspaces/{name}/history", get(config_api::history))
        .route("/api/workspaces/{name}/history/{rev}", get(config_api::revision))
        .route("/api/workspaces/{name}/rollback", post(config_api::rollback))
        .route("/api/events", get(sse::all_events))
        .route("/api/debug/state", get(debug::all))
        .route("/api/debug/validate", get(config_api::validate))
        .route("/api/debug/state/{component}", get(debug::component))
        .route("/metrics", get(api::metrics))
        .route("/workspaces/{name}/mcp", post(proxy::mcp).get(proxy::mcp).delete(proxy::mcp))
        .route("/workspaces/{name}/sse", get(proxy::legacy_sse))
        .route("/workspaces/{name}/messages", post(proxy::legacy_messages))
        .merge(dashboard::routes())
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::check))
        .layer(axum::middleware::from_fn(error::json_errors))
        .with_state(state)
}
