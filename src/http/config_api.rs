//! Workspace files through the API, their history and rollbacks
//! (docs/reference.md §10): `/api/workspaces/{name}/config`, `/history`,
//! `/history/{rev}` and `/rollback`.
//!
//! The handlers only translate: [`ConfigWriter`] does the writing, the
//! manager and the actor do the applying, [`crate::history`] the history.
//! A write that waits (the default) waits for the verdict of the actor, not
//! for a child: the actor never waits for it.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::Query;
use super::{api, ApiError, AppState};
use crate::doctor;
use crate::history::{HistoryError, Outcome, Source};
use crate::supervisor::writes::{Change, Write, WriteError, WriteOutcome};

/// The query of a write: `?wait=false` answers 202 once the file is written.
#[derive(Debug, Deserialize)]
pub struct WriteQuery {
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

/// `GET /api/workspaces/{name}/config`: the file as stored, with
/// `ETag: "<configVersion>"` when it is valid.
pub async fn get(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let stored = state.writer.read(&name).map_err(write_error)?.ok_or_else(|| no_file(&name))?;
    let mut response = ([(header::CONTENT_TYPE, "application/json")], stored.bytes).into_response();
    if let Some(tag) = stored.file.version.and_then(|v| format!("\"{v}\"").parse().ok()) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    Ok(response)
}

/// `PUT /api/workspaces/{name}/config`: creates or replaces the file.
pub async fn put(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<WriteQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let write = Write { name, change: Change::Put(body.to_vec()), if_match: if_match(&headers), source: Source::Api };
    answer(&state, write, query.wait).await
}

/// `PATCH /api/workspaces/{name}/config`: a JSON Merge Patch (RFC 7386).
pub async fn patch(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<WriteQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let patch = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_patch", format!("the body is not JSON: {e}")))?;
    let write = Write { name, change: Change::Patch(patch), if_match: if_match(&headers), source: Source::Api };
    answer(&state, write, query.wait).await
}

/// `DELETE /api/workspaces/{name}/config`: stops the child, removes the
/// file, releases the port; 200 once the tree is gone.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<WriteQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let write = Write { name: name.clone(), change: Change::Delete, if_match: if_match(&headers), source: Source::Api };
    let accepted = state.writer.write(write).await.map_err(write_error)?;
    if !query.wait {
        return Ok((StatusCode::ACCEPTED, Json(json!({"workspace": name, "removed": false}))).into_response());
    }
    let removed = accepted.outcome.await == Ok(WriteOutcome::Removed);
    let status = if removed { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(json!({"workspace": name, "removed": removed}))).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    to: Option<String>,
}

/// `POST /api/workspaces/{name}/rollback` with `{"to": rev}`: writes that
/// revision's file through the same gated path as a PUT. Without `to`, the
/// newest applied revision whose version is not the one applied now.
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<WriteQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: RollbackBody = match body.is_empty() {
        true => RollbackBody::default(),
        false => serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("expected {{\"to\": rev}}: {e}"))
        })?,
    };
    let history = &state.ctx.history;
    let rev = match body.to {
        Some(rev) => rev,
        None => {
            let current = state.ctx.bus.view().get(&name).and_then(|r| r.status.applied_version.clone());
            let entries = history.list(&name).await.map_err(history_error)?;
            let previous = entries
                .into_iter()
                .filter(|e| e.result == Outcome::Applied && e.config_version.is_some())
                .find(|e| e.config_version != current);
            previous.map(|e| e.rev).ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, "no_revision", "no earlier applied config in the history")
            })?
        }
    };
    let content = history.show(&name, &rev).await.map_err(history_error)?;
    let write = Write { name, change: Change::Put(content), if_match: None, source: Source::Api };
    answer(&state, write, query.wait).await
}

/// `GET /api/workspaces/{name}/history`: newest first.
pub async fn history(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let entries = state.ctx.history.list(&name).await.map_err(history_error)?;
    Ok(Json(json!({ "history": entries })).into_response())
}

/// `GET /api/workspaces/{name}/history/{rev}`: the file at that revision.
pub async fn revision(
    State(state): State<Arc<AppState>>,
    Path((name, rev)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let content = state.ctx.history.show(&name, &rev).await.map_err(history_error)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], content).into_response())
}

/// `GET /api/debug/validate`: the system check (see [`crate::doctor`]).
pub async fn validate(State(state): State<Arc<AppState>>) -> Json<doctor::Report> {
    let ctx = &state.ctx;
    let workspaces = ctx
        .bus
        .view()
        .load()
        .workspaces
        .values()
        .map(|r| doctor::Believed {
            name: r.status.workspace.clone(),
            status: r.status.status,
            pid: r.status.pid,
            pgid: r.pgid,
            port: r.status.port,
        })
        .collect();
    let beliefs = doctor::Beliefs {
        workspaces,
        runtime: ctx.runtime.entries(),
        allocations: ctx.ports.allocations(),
        ports_file: ctx.launch.state_dir.join("ports.json"),
        workspaces_dir: ctx.launch.workspaces_dir.clone(),
        history: ctx.history.check().await.map_err(|e| e.to_string()),
    };
    let issues = tokio::task::spawn_blocking(move || doctor::check(&beliefs)).await.unwrap_or_default();
    Json(doctor::Report::new(issues))
}

/// Runs `write` and answers: 200 with the status once applied, 409 after a
/// rollback, 202 without waiting.
async fn answer(state: &AppState, write: Write, wait: bool) -> Result<Response, ApiError> {
    let name = write.name.clone();
    let accepted = match state.writer.write(write).await {
        Ok(accepted) => accepted,
        Err(WriteError::Invalid(error)) => {
            // Every error, as `mcpvisor validate` prints them, and each apart.
            let body = json!({"error": error.to_string(), "code": "invalid_config", "errors": error.errors});
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response());
        }
        Err(error) => return Err(write_error(error)),
    };
    let outcome = match wait {
        true => accepted.outcome.await.unwrap_or(WriteOutcome::Pending),
        false => WriteOutcome::Pending,
    };
    let status = state.ctx.bus.view().get(&name).map(|r| api::render(state, &r, SystemTime::now()));
    let mut response = match outcome {
        WriteOutcome::Applied | WriteOutcome::Removed => (StatusCode::OK, Json(json!(status))).into_response(),
        WriteOutcome::Pending => (StatusCode::ACCEPTED, Json(json!(status))).into_response(),
        WriteOutcome::RolledBack { message } => {
            let body = json!({"error": message, "code": "rolled_back", "status": status});
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
        WriteOutcome::Superseded => {
            let message = "a newer change of the workspace file replaced this one before it was applied";
            let body = json!({"error": message, "code": "superseded", "status": status});
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
    };
    if let Some(tag) = accepted.version.and_then(|v| format!("\"{v}\"").parse().ok()) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    Ok(response)
}

/// The version an `If-Match` header names, without quotes or `W/`.
fn if_match(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::IF_MATCH)?.to_str().ok()?.trim();
    Some(value.trim_start_matches("W/").trim_matches('"').to_string())
}

fn no_file(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_workspace", format!("no workspace file for {name:?}"))
}

fn write_error(error: WriteError) -> ApiError {
    let message = error.to_string();
    match error {
        WriteError::BadName(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_name", message),
        WriteError::NotFound(name) => no_file(&name),
        WriteError::Invalid(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", message),
        WriteError::Stale { .. } => ApiError::new(StatusCode::PRECONDITION_FAILED, "stale", message),
        WriteError::BadPatch(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_patch", message),
        WriteError::Io { .. } => {
            tracing::error!("{message}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "io", "the workspace file could not be written")
        }
        WriteError::ShuttingDown => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message),
    }
}

fn history_error(error: HistoryError) -> ApiError {
    match error {
        HistoryError::NoRevision { .. } => ApiError::new(StatusCode::NOT_FOUND, "no_revision", error.to_string()),
        _ => {
            tracing::warn!("{error}");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "history", "the config history cannot be read")
        }
    }
}
