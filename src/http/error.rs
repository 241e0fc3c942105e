//! JSON error bodies: `{"error": "...", "code": "..."}` (DESIGN §6).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answer; its message is meant for users and hides internals.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    pub fn unknown_workspace(name: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "unknown_workspace", format!("no workspace named {name:?}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message, "code": self.code}))).into_response()
    }
}
