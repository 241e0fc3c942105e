//! Which headers cross the proxy: the client's minus hop-by-hop ones going
//! up, the child's minus hop-by-hop ones coming back (RFC 9110 §7.6.1).

use std::collections::BTreeSet;

use axum::http::response::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::http::error::Relayed;

/// Hop-by-hop headers and those the proxy sets itself.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// The header names a `Connection` header lists, lowercased.
fn named_by_connection(headers: &HeaderMap) -> BTreeSet<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect()
}

/// The headers to send upstream: the client's, minus hop-by-hop ones (and
/// those the `Connection` header names), with `Host` set to the child's
/// address. With `strip_authorization`, mcpvisor's own bearer token stays
/// here.
pub fn upstream(incoming: &HeaderMap, host: &HeaderValue, strip_authorization: bool) -> HeaderMap {
    let named = named_by_connection(incoming);
    let mut out = HeaderMap::with_capacity(incoming.len() + 1);
    for (name, value) in incoming {
        if hop_by_hop(name) || named.contains(name.as_str()) || (strip_authorization && name == header::AUTHORIZATION) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out.insert(header::HOST, host.clone());
    out
}

/// Readies a child's response to be passed on: drops its hop-by-hop headers
/// and marks it [`Relayed`], so its errors reach the client as the child
/// wrote them.
pub fn downstream(parts: &mut Parts) {
    let headers = &mut parts.headers;
    for name in named_by_connection(headers) {
        headers.remove(name.as_str());
    }
    let drop: Vec<HeaderName> =
        headers.keys().filter(|n| hop_by_hop(n) && *n != header::CONTENT_LENGTH).cloned().collect();
    for name in drop {
        headers.remove(name);
    }
    parts.extensions.insert(Relayed);
}

pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}
