//! The dashboard (docs/reference.md §6 `GET /`): a page people keep open.
//!
//! The page is plain HTML, CSS and JavaScript modules from `ui/`, embedded in
//! the binary and served from `/` and `/ui/...` ([`assets`]); no build step.
//! It reads the same API as every other client: `/api/workspaces` once,
//! then `/api/events` for changes, with the one workspace that changed
//! fetched again. The shell holds no data, so it is served without the
//! bearer token ([`is_public`]); the page asks for the token and sends it on
//! every API request. This module also serves the resource history behind
//! the sparklines ([`resources`]).

mod assets;
mod resources;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use super::AppState;

/// The page, its assets and the resource history route.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(assets::index))
        .route("/ui/{*file}", get(assets::file))
        .route("/api/workspaces/{name}/resources", get(resources::history))
}

/// Whether `path` is part of the page shell, which holds no data and is
/// served without the bearer token: the page must load to ask for it.
pub fn is_public(path: &str) -> bool {
    path == "/" || path.starts_with("/ui/")
}
