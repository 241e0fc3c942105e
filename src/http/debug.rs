//! `/api/debug/state[/{component}]` (docs/reference.md §6). Never shows env
//! values.
//!
//! The `connections` component lists pages: `?limit=` (default 100, at most
//! 1000) items of each list from `?offset=` (default 0), with each list's
//! `total`, so its size never depends on how many clients there are.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::Query;
use super::AppState;

/// The components, in the order `/api/debug/state` shows them.
pub const COMPONENTS: [&str; 4] = ["workspace", "connections", "resources", "errors"];

/// Most items of a list on one page.
const MAX_LIMIT: usize = 1000;

/// Which part of the `connections` lists to show.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default)]
pub struct Page {
    limit: usize,
    offset: usize,
}

impl Default for Page {
    fn default() -> Page {
        Page { limit: 100, offset: 0 }
    }
}

pub async fn all(State(state): State<Arc<AppState>>, Query(page): Query<Page>) -> Json<Value> {
    let mut out = serde_json::Map::new();
    for name in COMPONENTS {
        out.insert(name.to_string(), render(&state, name, page).expect("known component"));
    }
    Json(Value::Object(out))
}

pub async fn component(
    State(state): State<Arc<AppState>>,
    Path(component): Path<String>,
    Query(page): Query<Page>,
) -> Response {
    match render(&state, &component, page) {
        Some(value) => Json(value).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "unknown component", "code": "unknown_component", "components": COMPONENTS})),
        )
            .into_response(),
    }
}

/// What the proxy saw of the workspace's clients (docs/reference.md §11):
/// requests and client streams open now, and when the last one began or ended.
fn activity(state: &AppState, name: &str) -> Value {
    let Some(entry) = state.registry.get(name) else { return Value::Null };
    let activity = entry.handle.activity();
    json!({"open": activity.open(), "lastRequestAt": activity.last_at()})
}

fn render(state: &AppState, component: &str, page: Page) -> Option<Value> {
    let snapshot = state.ctx.bus.view().load();
    let records = snapshot.workspaces.values();
    Some(match component {
        "workspace" => Value::Array(
            records
                .map(|r| {
                    let s = &r.status;
                    json!({
                        "workspace": s.workspace,
                        "desiredConfigVersion": r.desired_config_version,
                        "desired": r.desired,
                        "status": s.status,
                        "health": s.health,
                        "pid": s.pid,
                        "pgid": r.pgid,
                        "port": s.port,
                        "restartCount": s.restart_count,
                        "breaker": s.breaker,
                        "pendingCommand": r.pending,
                        "recentErrors": r.errors,
                        "reason": s.reason,
                        "activity": activity(state, &s.workspace),
                    })
                })
                .collect(),
        ),
        "connections" => {
            let (offset, limit) = (page.offset, page.limit.min(MAX_LIMIT));
            let subscribers = state.subscribers.list();
            let n_subscribers = subscribers.len();
            let subscribers: Vec<_> = subscribers.into_iter().skip(offset).take(limit).collect();
            let sessions = state.proxy.connections.sessions(offset, limit);
            let streams = state.proxy.connections.streams(offset, limit);
            json!({
                "subscribers": subscribers,
                "proxySessions": sessions.items,
                "proxyStreams": streams.items,
                "total": {"subscribers": n_subscribers, "proxySessions": sessions.total, "proxyStreams": streams.total},
                "offset": offset,
                "limit": limit,
            })
        }
        "resources" => {
            let (lo, hi) = state.ctx.ports.range();
            let sample = state.resources.load();
            json!({
                "portRange": [lo, hi],
                "allocations": state.ctx.ports.allocations(),
                "limits": records.map(|r| (r.status.workspace.clone(), json!(r.limits))).collect::<serde_json::Map<_, _>>(),
                "children": sample.children,
                "totals": sample.totals,
                "daemonLimits": {
                    "maxWorkspaces": state.limits.max_workspaces,
                    "maxMemoryMb": state.limits.max_memory_mb,
                    "overMemory": state.limits.max_memory_mb.is_some_and(|mb| sample.totals.rss_bytes > mb << 20),
                },
                "sampledAt": sample.sampled_at,
            })
        }
        "errors" => json!({
            "workspaces": records
                .map(|r| (r.status.workspace.clone(), json!({
                    "breaker": r.status.breaker,
                    "configError": r.status.config_error,
                    "errors": r.errors,
                })))
                .collect::<serde_json::Map<_, _>>(),
            "invalidFiles": state.registry.bad_files(),
            "watcher": *state.registry.watch_error.read().unwrap(),
        }),
        _ => return None,
    })
}
