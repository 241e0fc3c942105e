//! DNS-rebinding protection and the bearer token (DESIGN §6).
//!
//! A `Host` that is not loopback or the `--listen` host, or an `Origin` that
//! is present and not one of those, gets 403: a web page on another origin
//! must never reach a local daemon through a rebound DNS name.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

pub async fn check(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let allowed = |host: &str| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        matches!(host, "localhost" | "127.0.0.1" | "::1") || host.eq_ignore_ascii_case(&state.listen_host)
    };
    if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().unwrap_or("");
        if !allowed(strip_port(host)) {
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden_host", format!("host {host:?} is not allowed"))
                .into_response();
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = origin.split_once("://").map(|(_, rest)| strip_port(rest.trim_end_matches('/')));
        if !host.is_some_and(allowed) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!("origin {origin:?} is not allowed"),
            )
            .into_response();
        }
    }
    if let Some(token) = &state.token {
        let path = request.uri().path();
        let open = matches!(path, "/healthz" | "/readyz") || super::dashboard::is_public(path);
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if !open && !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token")
                .into_response();
        }
    }
    next.run(request).await
}

/// `host:port` or `[v6]:port` to the host part.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_once(']').map_or(authority, |(h, _)| &authority[..h.len() + 1]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("127.0.0.1:7700"), "127.0.0.1");
        assert_eq!(strip_port("localhost"), "localhost");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
