//! Request bodies on their way in: read whole (a POST is one JSON-RPC
//! message or batch), at most [`MAX_BODY`] bytes, within [`DRAIN_TIME`].

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;

use super::jsonrpc::Peeked;
use super::ProxyError;

/// Largest POST body passed on (docs/reference.md §8); larger ones get 413.
pub const MAX_BODY: usize = 4 << 20;
/// How much of an oversized body is read and dropped before the 413.
const DRAIN_CAP: usize = 4 * MAX_BODY;
/// How long a request body may take to arrive.
const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Reads a POST body of at most [`MAX_BODY`] bytes.
///
/// # Errors
/// The answer to send instead: 413 for a body over the limit (with
/// `Connection: close`), 408 for one that did not arrive in time, 400 for one
/// that broke off.
pub async fn read(headers: &HeaderMap, mut body: Body) -> Result<Bytes, Response> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut over = declared.is_some_and(|n| n > MAX_BODY as u64);
    let mut collected = bytes::BytesMut::new();
    let mut seen = 0usize;
    // An oversized body is still read (and dropped), up to a cap and a time
    // limit: answering 413 while the client is still writing would reset the
    // connection, and the client would see an error instead of the answer.
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(refuse(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"))),
            Err(_) if over => break,
            Err(_) => {
                return Err(refuse(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time".into()))
            }
        };
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len();
        if seen > MAX_BODY {
            over = true;
            collected = bytes::BytesMut::new();
        }
        if over {
            if seen > DRAIN_CAP {
                break;
            }
        } else {
            collected.extend_from_slice(&data);
        }
    }
    if over {
        let mut response =
            refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds {} MiB", MAX_BODY >> 20));
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(response);
    }
    Ok(collected.freeze())
}

fn refuse(http: StatusCode, message: String) -> Response {
    ProxyError::invalid(http, message).reply(&Peeked::default())
}
