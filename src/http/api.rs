//! `/healthz`, `/readyz` and `/api/workspaces...` (DESIGN §6).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState};
use crate::state::{WorkspaceRecord, WorkspaceStatus};
use crate::supervisor::actor::{Command, SendError};

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let watch_error = state.registry.watch_error.read().unwrap().clone();
    if state.ready.load(Ordering::Acquire) {
        Json(json!({"status": "ready", "watchError": watch_error})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading", "watchError": watch_error}))).into_response()
    }
}

/// A record as clients see it: uptime as of now, sampled resources merged in.
pub fn render(state: &AppState, record: &WorkspaceRecord, now: SystemTime) -> WorkspaceStatus {
    let mut status = record.render(now);
    status.resources = state.resources.get(&status.workspace);
    status
}

pub async fn list(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let now = SystemTime::now();
    let snapshot = state.ctx.bus.view().load();
    let workspaces: Vec<WorkspaceStatus> = snapshot.workspaces.values().map(|r| render(&state, r, now)).collect();
    Json(json!({ "workspaces": workspaces }))
}

pub async fn one(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Result<Json<WorkspaceStatus>, ApiError> {
    let record = state.ctx.bus.view().get(&name).ok_or_else(|| ApiError::unknown_workspace(&name))?;
    Ok(Json(render(&state, &record, SystemTime::now())))
}

/// `POST /api/workspaces/{name}/start|stop|restart`: queues the command and
/// answers 202 with the status as it is now; the change follows as
/// notifications.
pub async fn command(
    State(state): State<Arc<AppState>>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let command = match action.as_str() {
        "start" => Command::Start,
        "stop" => Command::Stop,
        "restart" => Command::Restart,
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no action {action:?}; use start, stop or restart"))),
    };
    let entry = state.registry.get(&name).ok_or_else(|| ApiError::unknown_workspace(&name))?;
    entry.handle.send(command).map_err(|e| match e {
        SendError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()),
        SendError::Gone => ApiError::new(StatusCode::CONFLICT, "gone", e.to_string()),
    })?;
    let record = state.ctx.bus.view().get(&name).ok_or_else(|| ApiError::unknown_workspace(&name))?;
    Ok((StatusCode::ACCEPTED, Json(render(&state, &record, SystemTime::now()))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    lines: Option<usize>,
}

/// The last `lines` (default 100, at most 1000) captured lines of the child.
pub async fn logs(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let entry = state.registry.get(&name).ok_or_else(|| ApiError::unknown_workspace(&name))?;
    let lines = entry.logs.tail(query.lines.unwrap_or(100).min(crate::process::DEFAULT_TAIL_LINES));
    Ok(Json(json!({ "lines": lines })))
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
