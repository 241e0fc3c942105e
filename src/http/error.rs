//! JSON error bodies: `{"error": "...", "code": "..."}` (docs/reference.md
//! §6), for every error the daemon itself answers.
//!
//! Handlers return [`ApiError`]; queries are read with [`Query`], whose
//! rejection is one. What axum answers on its own (405 with `Allow`, a path
//! that does not decode, ...) is rewritten into the same shape by
//! [`json_errors`], the outermost layer. Answers relayed from a child carry
//! [`Relayed`] and pass untouched, as do JSON-RPC errors.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
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

/// Marks a response that a child gave, to be passed on as it is.
#[derive(Debug, Clone, Copy)]
pub struct Relayed;

/// A query string read as a `T`; a bad one is a 400 `bad_query`.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Query<T>, ApiError> {
        match axum::extract::Query::<T>::try_from_uri(&parts.uri) {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => {
                Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_query", lowercase(&rejection.body_text())))
            }
        }
    }
}

/// Most bytes of a plain-text error body kept as the message.
const MAX_MESSAGE: usize = 4096;

/// Rewrites every error response that is not JSON yet into an [`ApiError`]
/// body, keeping its status and headers (`Allow` of a 405 among them).
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error())
        || is_json
        || response.extensions().get::<Relayed>().is_some()
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_MESSAGE).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let reason = status.canonical_reason().unwrap_or("error").to_ascii_lowercase();
    let message = if text.trim().is_empty() { reason.clone() } else { lowercase(text.trim()) };
    let code = reason.replace([' ', '-'], "_");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let body = json!({"error": message, "code": code}).to_string();
    Response::from_parts(parts, body.into())
}

/// `text` with a lowercase first letter, as every error message has.
fn lowercase(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
