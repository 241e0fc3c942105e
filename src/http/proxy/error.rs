//! The answers the proxy gives for a child that cannot answer: JSON-RPC
//! errors with a fitting HTTP status (docs/reference.md §8).

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use rmcp::model::{ErrorCode, ErrorData};
use serde_json::{json, Value};

use super::jsonrpc::{self, Peeked, SERVER_ERROR};
use crate::state::WorkspaceRecord;

/// An answer the proxy gives for the child, as a JSON-RPC error.
#[derive(Debug, Clone)]
pub struct ProxyError {
    pub http: StatusCode,
    pub error: ErrorData,
}

impl ProxyError {
    pub fn new(http: StatusCode, code: ErrorCode, message: String, data: Option<Value>) -> ProxyError {
        ProxyError { http, error: ErrorData::new(code, message, data) }
    }

    pub fn unknown(name: &str) -> ProxyError {
        let message = format!("no workspace named {name:?}");
        ProxyError::new(StatusCode::NOT_FOUND, SERVER_ERROR, message, Some(json!({"workspace": name})))
    }

    pub fn wrong_transport(name: &str, transport: &str) -> ProxyError {
        // Every route serves every transport (docs/reference.md §9): this
        // answers only a config change that raced the request's routing.
        let hint = "its transport changed while the request was routed; retry";
        ProxyError::new(
            StatusCode::BAD_REQUEST,
            SERVER_ERROR,
            format!("workspace {name:?} speaks {transport}; {hint}"),
            Some(json!({"workspace": name, "transport": transport})),
        )
    }

    /// A request the proxy refuses to pass on.
    pub fn invalid(http: StatusCode, message: String) -> ProxyError {
        ProxyError::new(http, ErrorCode::INVALID_REQUEST, message, None)
    }

    /// The 503 for a workspace that is not running, with what a client needs
    /// to decide when to retry.
    pub fn unavailable(name: &str, record: &WorkspaceRecord) -> ProxyError {
        let status = &record.status;
        let now = SystemTime::now();
        let retry_after =
            status.breaker.next_retry_at.map(|at| at.0.duration_since(now).unwrap_or_default().as_millis() as u64);
        let stderr_tail = status.last_error.as_ref().map(|e| e.stderr_tail.clone()).unwrap_or_default();
        ProxyError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            SERVER_ERROR,
            format!("workspace {name:?} is {}", status.status),
            Some(json!({
                "workspace": name,
                "status": status.status,
                "lastError": status.last_error,
                "stderrTail": stderr_tail,
                "retryAfterMs": retry_after,
            })),
        )
    }

    pub fn timed_out(name: &str, after: Duration) -> ProxyError {
        ProxyError::new(
            StatusCode::GATEWAY_TIMEOUT,
            SERVER_ERROR,
            format!("workspace {name:?} did not answer within {}", humantime::format_duration(after)),
            Some(json!({"workspace": name, "timeoutMs": after.as_millis() as u64})),
        )
    }

    /// The HTTP answer to a POST body (or a bodiless request).
    pub fn reply(&self, peeked: &Peeked) -> Response {
        let mut response = Response::new(Body::from(jsonrpc::reply(peeked, &self.error)));
        *response.status_mut() = self.http;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    /// The same error as SSE events, one per request still waiting.
    pub fn sse_events(&self, requests: &[jsonrpc::Request]) -> Bytes {
        jsonrpc::sse_errors(requests, &self.error)
    }
}
