//! `GET /api/workspaces/{name}/resources`: the last minutes of RSS and CPU
//! samples of one workspace's process tree, oldest first, as
//! `{"workspace","samples":[{"at","rssBytes","cpuPercent"}]}`.
//!
//! The samples come from the ring the sampler feeds
//! ([`crate::state::ResourceHistory`]); a workspace whose child has not run
//! for the last minutes has none. An unknown workspace is a 404.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;

use crate::http::{ApiError, AppState};
use crate::state::ResourcePoint;

#[derive(Debug, Serialize)]
pub struct History {
    workspace: String,
    samples: Vec<ResourcePoint>,
}

pub async fn history(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Result<Json<History>, ApiError> {
    if state.ctx.bus.view().get(&name).is_none() {
        return Err(ApiError::unknown_workspace(&name));
    }
    let samples = state.resources.history.get(&name);
    Ok(Json(History { workspace: name, samples }))
}
