//! What every request must pass before a handler sees it (docs/reference.md
//! §6): size limits, DNS-rebinding protection and the bearer token.
//!
//! A `Host` that is not loopback or the `--listen` host, or an `Origin` that
//! is present and not one of those, gets 403: a web page on another origin
//! must never reach a local daemon through a rebound DNS name. Both are
//! parsed as URI authorities: userinfo (`localhost:7700@evil`) is refused,
//! hosts compare case-insensitively, any port goes. An HTTP/1.1 request
//! must name its host (RFC 9112 §3.2); an absolute-form target's authority
//! stands in for `Host` and must be allowed too.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// Longest request target, bytes; longer ones get 414.
pub const MAX_URI_BYTES: usize = 8 << 10;
/// Most bytes of header names and values (4 more per header for `: ` and
/// the line break); more get 431.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

pub async fn check(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let checked = within_limits(&request)
        .and_then(|()| host(&request, &state.listen_host))
        .and_then(|()| origin(request.headers(), &state.listen_host))
        .and_then(|()| token(&request, state.token.as_deref()));
    match checked {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

fn within_limits(request: &Request) -> Result<(), ApiError> {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len()) + uri.authority().map_or(0, |a| a.as_str().len());
    if target > MAX_URI_BYTES {
        let message = format!("request target of {target} bytes exceeds {MAX_URI_BYTES}");
        return Err(ApiError::new(StatusCode::URI_TOO_LONG, "uri_too_long", message));
    }
    let headers: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if headers > MAX_HEADER_BYTES {
        let message = format!("request headers of {headers} bytes exceed {MAX_HEADER_BYTES}");
        return Err(ApiError::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", message));
    }
    Ok(())
}

/// Whether `authority` names this daemon: loopback or the listen host, no
/// userinfo, any port.
fn allowed(authority: &Authority, listen_host: &str) -> bool {
    if authority.as_str().contains('@') {
        return false;
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    ["localhost", "127.0.0.1", "::1", listen_host].iter().any(|allowed| host.eq_ignore_ascii_case(allowed))
}

fn forbidden_host(shown: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden_host", format!("host {shown:?} is not allowed"))
}

fn host(request: &Request, listen_host: &str) -> Result<(), ApiError> {
    // An absolute-form target's authority wins over `Host` (RFC 9112 §3.2.2).
    if let Some(authority) = request.uri().authority() {
        return if allowed(authority, listen_host) { Ok(()) } else { Err(forbidden_host(authority.as_str())) };
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let (value, more) = (hosts.next(), hosts.next());
    let value = match (value, more) {
        (Some(value), None) => value,
        (None, _) if request.version() < Version::HTTP_11 => return Ok(()),
        (None, _) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "missing_host", "the request has no Host header"))
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_host", "the request has more than one Host header"))
        }
    };
    match value.to_str().ok().and_then(|v| v.parse::<Authority>().ok()) {
        Some(authority) if allowed(&authority, listen_host) => Ok(()),
        Some(authority) => Err(forbidden_host(authority.as_str())),
        None => Err(forbidden_host(&String::from_utf8_lossy(value.as_bytes()))),
    }
}

fn origin(headers: &HeaderMap, listen_host: &str) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::ORIGIN) else { return Ok(()) };
    if origin_allowed(value, listen_host) {
        return Ok(());
    }
    let shown = String::from_utf8_lossy(value.as_bytes());
    Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden_origin", format!("origin {shown:?} is not allowed")))
}

/// An origin is `scheme://authority` (RFC 6454 §7), nothing after it but an
/// optional `/`.
fn origin_allowed(value: &HeaderValue, listen_host: &str) -> bool {
    let Some(uri) = value.to_str().ok().and_then(|v| v.parse::<Uri>().ok()) else { return false };
    let bare = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
    uri.scheme().is_some() && bare && uri.authority().is_some_and(|a| allowed(a, listen_host))
}

/// With a token, every route but `/healthz` and `/readyz` needs
/// `Authorization: Bearer <token>`, the scheme in any case (RFC 9110 §11.1).
fn token(request: &Request, token: Option<&str>) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    let path = request.uri().path();
    // The dashboard's shell holds no data: it asks for the token itself.
    if matches!(path, "/healthz" | "/readyz") || super::dashboard::is_public(path) {
        return Ok(());
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credentials)| credentials.trim_start_matches(' '));
    match given {
        Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
        _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().uri(target);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    fn code(result: Result<(), ApiError>) -> Option<&'static str> {
        result.err().map(|e| e.code)
    }

    #[test]
    fn hosts_are_authorities() {
        let check = |target: &str, host: Option<&str>| {
            let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
            code(super::host(&request(target, &headers), "10.0.0.5"))
        };
        for good in ["localhost", "LOCALHOST:7700", "127.0.0.1:1", "[::1]:7700", "[::1]", "10.0.0.5:7700"] {
            assert_eq!(check("/healthz", Some(good)), None, "{good}");
        }
        for bad in ["localhost:7700@evil", "evil.example", "localhost.evil.example", "user@localhost", ""] {
            assert_eq!(check("/healthz", Some(bad)), Some("forbidden_host"), "{bad:?}");
        }
        assert_eq!(check("/healthz", None), Some("missing_host"));
        assert_eq!(check("http://evil.example/healthz", Some("localhost")), Some("forbidden_host"));
        assert_eq!(check("http://LocalHost:7700/healthz", None), None);
    }

    #[test]
    fn origins_are_scheme_and_authority() {
        let check = |origin: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            code(super::origin(&headers, "127.0.0.1"))
        };
        for good in ["http://localhost:7700", "https://LOCALHOST", "http://127.0.0.1:9/", "http://[::1]:7700"] {
            assert_eq!(check(good), None, "{good}");
        }
        for bad in ["http://localhost:7700@evil.com", "null", "http://evil.com", "localhost", "http://localhost/x"] {
            assert_eq!(check(bad), Some("forbidden_origin"), "{bad}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        let check = |value: &str| code(token(&request("/api/workspaces", &[("authorization", value)]), Some("s3cret")));
        assert_eq!(check("Bearer s3cret"), None);
        assert_eq!(check("bearer s3cret"), None);
        assert_eq!(check("BEARER   s3cret"), None);
        assert_eq!(check("Bearer s3cre"), Some("unauthorized"));
        assert_eq!(check("Basic s3cret"), Some("unauthorized"));
        assert_eq!(check("Bearers3cret"), Some("unauthorized"));
        assert_eq!(code(token(&request("/healthz", &[]), Some("s3cret"))), None);
    }

    #[test]
    fn oversized_targets_and_heads_are_refused() {
        let long = format!("/healthz?{}", "a".repeat(MAX_URI_BYTES));
        assert_eq!(code(within_limits(&request(&long, &[]))), Some("uri_too_long"));
        let big = "b".repeat(MAX_HEADER_BYTES);
        assert_eq!(code(within_limits(&request("/", &[("x-big", &big)]))), Some("headers_too_large"));
        assert_eq!(code(within_limits(&request("/", &[("x-small", "c")]))), None);
    }
}
