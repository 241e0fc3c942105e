//! `/api/debug/state[/{component}]` (DESIGN §6). Never shows env values.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

/// The components, in the order `/api/debug/state` shows them.
pub const COMPONENTS: [&str; 4] = ["workspace", "connections", "resources", "errors"];

pub async fn all(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut out = serde_json::Map::new();
    for name in COMPONENTS {
        out.insert(name.to_string(), render(&state, name).expect("known component"));
    }
    Json(Value::Object(out))
}

pub async fn component(State(state): State<Arc<AppState>>, Path(component): Path<String>) -> Response {
    match render(&state, &component) {
        Some(value) => Json(value).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "unknown component", "code": "unknown_component", "components": COMPONENTS})),
        )
            .into_response(),
    }
}

fn render(state: &AppState, component: &str) -> Option<Value> {
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
                    })
                })
                .collect(),
        ),
        "connections" => {
            let (sessions, streams) = state.proxy.connections.render();
            json!({
                "subscribers": state.subscribers.list(),
                "proxySessions": sessions,
                "proxyStreams": streams,
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
