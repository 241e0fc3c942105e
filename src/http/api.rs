//! `/healthz`, `/readyz` and `/api/workspaces...` (docs/reference.md §6).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use futures::StreamExt;

use super::error::Query;
use super::{listing, sse, ApiError, AppState};
use crate::sse::Frame;
use crate::state::{WorkspaceRecord, WorkspaceStatus};
use crate::supervisor::actor::{Command, SendError};

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// `GET /readyz`: 200 once every workspace file was read and handed to its
/// actor; 503 before, and while the workspaces folder is missing (`"not
/// ready"`, with the reason in `watchError`).
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let watch_error = state.registry.watch_error.read().unwrap().clone();
    let status = match (state.ready.load(Ordering::Acquire), &watch_error) {
        (true, _) => return Json(json!({"status": "ready", "watchError": watch_error})).into_response(),
        (false, None) => "loading",
        (false, Some(_)) => "not ready",
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": status, "watchError": watch_error}))).into_response()
}

/// A record as clients see it: uptime as of now, sampled resources merged in.
pub fn render(state: &AppState, record: &WorkspaceRecord, now: SystemTime) -> WorkspaceStatus {
    let mut status = record.render(now);
    status.resources = state.resources.get(&status.workspace);
    status.stdio = state.ctx.hubs.sessions(&status.workspace);
    status
}

/// `GET /api/workspaces`: every workspace's status, sorted by name.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct WorkspaceList {
    pub workspaces: Vec<WorkspaceStatus>,
}

/// `?status=a,b&name=prefix*` of `GET /api/workspaces`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    name: Option<String>,
}

/// `GET /api/workspaces`, sorted by name, optionally filtered by status and
/// name (`?status=error,starting&name=dev*`). Served from the shared
/// rendering ([`listing`]): with `If-None-Match` naming its `ETag`, a 304.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let filter = listing::Filter::parse(query.status.as_deref(), query.name.as_deref())
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", message))?;
    let generation = current(&state);
    let rendered = if filter.is_empty() {
        generation.full()
    } else {
        listing::list(generation.pieces.iter().filter(|(name, p)| filter.matches(name, p.status)).map(|(_, p)| &**p))
    };
    Ok(listing::respond(&headers, rendered))
}

/// The shared rendering of the latest snapshot and resource sample. Reading
/// it counts as a reader of resources, which keeps the sampler going.
fn current(state: &AppState) -> Arc<listing::Generation> {
    let snapshot = state.ctx.bus.view().load_full();
    state.listing.get(&snapshot, &state.resources.load(), &state.ctx.hubs, &state.proxy.connections)
}

/// `GET /api/workspaces/{name}`: one piece of the shared rendering, with its `ETag`.
pub async fn one(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let generation = current(&state);
    let piece = generation.pieces.get(&name).ok_or_else(|| ApiError::unknown_workspace(&name))?;
    Ok(listing::respond(&headers, listing::Rendered { body: piece.json.clone(), etag: piece.etag() }))
}

/// `POST /api/workspaces/{name}/start|stop|restart`: queues the command and
/// answers 202 with the status as it is now; the change follows as
/// notifications. A start of a running workspace, or a stop of a stopped
/// one, answers 200 with `X-Mcpvisor-Noop: already running|stopped`.
pub async fn command(
    State(state): State<Arc<AppState>>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (noop, told) = tokio::sync::oneshot::channel();
    let command = match action.as_str() {
        "start" => Command::Start { noop: Some(noop) },
        "stop" => Command::Stop { noop: Some(noop) },
        "restart" => {
            // A restart is never a no-op: nothing to wait for.
            drop(noop);
            Command::Restart
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no action {action:?}; use start, stop or restart"),
            ))
        }
    };
    let entry = state.registry.get(&name).ok_or_else(|| ApiError::unknown_workspace(&name))?;
    entry.handle.send(command).map_err(|e| match e {
        SendError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()),
        SendError::Gone => ApiError::new(StatusCode::CONFLICT, "gone", e.to_string()),
    })?;
    // The actor, which sees commands in order, says whether there was
    // nothing to do. Its answer needs no child, but it may be busy stopping
    // one: then the command is simply accepted.
    let already = matches!(tokio::time::timeout(NOOP_WAIT, told).await, Ok(Ok(true)));
    let record = state.ctx.bus.view().get(&name).ok_or_else(|| ApiError::unknown_workspace(&name))?;
    let status = Json(render(&state, &record, SystemTime::now()));
    if already {
        let said = if action == "start" { "already running" } else { "already stopped" };
        return Ok((StatusCode::OK, [("x-mcpvisor-noop", said)], status).into_response());
    }
    Ok((StatusCode::ACCEPTED, status).into_response())
}

/// How long a start or stop waits to learn that there was nothing to do.
const NOOP_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    lines: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// The last `lines` (default 100, at most 1000) captured lines of the child
/// as `{"lines": [...]}`; with `follow=true`, an SSE stream of those lines
/// and every later one, one `{"ts","stream","line"}` per event.
pub async fn logs(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let entry = state.registry.get(&name).ok_or_else(|| ApiError::unknown_workspace(&name))?;
    let n = query.lines.unwrap_or(100).min(crate::process::DEFAULT_TAIL_LINES);
    if !query.follow {
        return Ok(Json(json!({ "lines": entry.logs.tail(n) })).into_response());
    }
    let live = entry.logs.follow();
    let backlog = futures::stream::iter(entry.logs.tail(n));
    let live = futures::stream::unfold(live, |mut live| async move {
        loop {
            match live.recv().await {
                Ok(line) => return Some((line, live)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let frames = backlog.chain(live).map(|line| Frame::new(&serde_json::to_string(&line).unwrap_or_default()).encode());
    Ok(sse::response(frames, state.shutdown.clone()))
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state.ctx.metrics.encode();
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}
