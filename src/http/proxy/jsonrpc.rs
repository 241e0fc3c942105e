//! Just enough JSON-RPC for the proxy: peeking at a POST body's request ids
//! and methods (never rewriting it), and building error replies. The shapes
//! and codes are `rmcp::model`'s.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use rmcp::model::{ErrorCode, ErrorData, JsonRpcError, RequestId};
use serde::Deserialize;
use thiserror::Error;

use crate::sse::Frame;

/// JSON-RPC "server error", the code the proxy answers with for the child
/// (docs/reference.md §8).
pub const SERVER_ERROR: ErrorCode = ErrorCode(-32000);

/// One message of a POST body, as far as the proxy cares: every other field
/// is skipped unread.
#[derive(Debug, Deserialize)]
struct Message<'a> {
    #[serde(default)]
    id: Option<RequestId>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
}

/// A JSON-RPC request the client is waiting on: its id and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    pub method: String,
}

/// What a POST body holds: the requests that expect an answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Peeked {
    pub requests: Vec<Request>,
    /// A JSON array (a 2024-11-05 / 2025-03-26 batch): errors go back as one.
    pub batch: bool,
}

/// Why a body could not be peeked at. The body still goes to the child,
/// which answers it as it sees fit.
#[derive(Debug, Error)]
#[error("reading a JSON-RPC body: {0}")]
pub struct PeekError(#[from] serde_json::Error);

/// Reads the ids and methods of `body`, skipping every other field.
///
/// # Errors
/// The body is not JSON, not a message or an array of messages, or an `id`
/// is neither a string nor an integer.
pub fn peek(body: &[u8]) -> Result<Peeked, PeekError> {
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let messages = if batch {
        serde_json::from_slice::<Vec<Message>>(body)?
    } else {
        vec![serde_json::from_slice::<Message>(body)?]
    };
    let requests =
        messages.into_iter().filter_map(|m| Some(Request { id: m.id?, method: m.method?.into_owned() })).collect();
    Ok(Peeked { requests, batch })
}

/// The id of `data` when it is a JSON-RPC response (an id, no method).
pub fn response_id(data: &[u8]) -> Option<RequestId> {
    let message: Message = serde_json::from_slice(data).ok()?;
    match message.method {
        Some(_) => None,
        None => message.id,
    }
}

fn error_json(id: Option<&RequestId>, error: &ErrorData) -> String {
    let message = JsonRpcError::new(id.cloned(), error.clone());
    serde_json::to_string(&message).expect("a JSON-RPC error serializes")
}

/// The reply to a whole POST body: one error per request, as an array for a
/// batch, or a single error without an id when the body held no request.
pub fn reply(peeked: &Peeked, error: &ErrorData) -> Bytes {
    let json = match (peeked.batch, peeked.requests.as_slice()) {
        (_, []) => error_json(None, error),
        (false, [first, ..]) => error_json(Some(&first.id), error),
        (true, requests) => {
            let all: Vec<JsonRpcError> =
                requests.iter().map(|r| JsonRpcError::new(Some(r.id.clone()), error.clone())).collect();
            serde_json::to_string(&all).expect("JSON-RPC errors serialize")
        }
    };
    Bytes::from(json)
}

/// One SSE `message` event per request, each a JSON-RPC error.
pub fn sse_errors(requests: &[Request], error: &ErrorData) -> Bytes {
    let mut out = BytesMut::new();
    for request in requests {
        Frame::new(&error_json(Some(&request.id), error)).event("message").encode_into(&mut out);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn id(n: i64) -> RequestId {
        RequestId::Number(n)
    }

    #[test]
    fn peeks_requests_only() {
        let p = peek(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"x":[1,2]}}"#).unwrap();
        assert_eq!(p.requests, vec![Request { id: id(7), method: "tools/call".into() }]);
        assert!(!p.batch);
        assert!(peek(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap().requests.is_empty());
        assert!(peek(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap().requests.is_empty());
        let b = peek(br#" [{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"n"},{"jsonrpc":"2.0","id":"x","method":"b"}]"#).unwrap();
        assert!(b.batch);
        assert_eq!(b.requests.len(), 2);
    }

    #[test]
    fn refuses_what_is_not_json_rpc_with_a_clear_error() {
        let e = peek(b"{not json").unwrap_err().to_string();
        assert!(e.starts_with("reading a JSON-RPC body: key must be a string at line 1 column 2"), "{e}");
        let e = peek(br#"{"id":1.5,"method":"a"}"#).unwrap_err().to_string();
        assert!(e.contains("Expected an integer"), "{e}");
        assert!(peek(b"").is_err());
        assert!(peek(b"42").is_err());
    }

    #[test]
    fn replies_match_the_request_shape() {
        let error = ErrorData::new(SERVER_ERROR, "m", Some(json!({})));
        let one = peek(br#"{"jsonrpc":"2.0","id":"q","method":"ping"}"#).unwrap();
        let v: Value = serde_json::from_slice(&reply(&one, &error)).unwrap();
        assert_eq!(v, json!({"jsonrpc": "2.0", "id": "q", "error": {"code": -32000, "message": "m", "data": {}}}));
        let v: Value = serde_json::from_slice(&reply(&Peeked::default(), &error)).unwrap();
        assert_eq!(v.get("id"), None, "no id to answer: left out (MCP 2026-07-28)");
        let batch = peek(br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","id":2,"method":"b"}]"#).unwrap();
        let v: Value = serde_json::from_slice(&reply(&batch, &error)).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
    }

    #[test]
    fn finds_response_ids() {
        assert_eq!(response_id(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#), Some(id(3)));
        assert_eq!(response_id(br#"{"jsonrpc":"2.0","id":3,"method":"sampling/createMessage"}"#), None);
        assert_eq!(response_id(br#"{"jsonrpc":"2.0","method":"notifications/progress"}"#), None);
    }

    /// A JSON-RPC id as clients send it. (No regex or `prop_oneof!`
    /// strategies here: they are slow in a debug build.)
    fn any_id() -> impl Strategy<Value = RequestId> {
        (any::<bool>(), any::<i64>(), prop::collection::vec(any::<char>(), 0..8)).prop_map(|(number, n, text)| {
            if number {
                RequestId::Number(n)
            } else {
                RequestId::String(String::from_iter(text).into())
            }
        })
    }

    /// A message: a request, a notification or a response, with params to skip.
    fn any_message() -> impl Strategy<Value = (Value, Option<Request>)> {
        let methods = prop::sample::select(vec!["initialize", "tools/call", "ping", "notifications/progress", "é\"\\"]);
        (prop::option::of(any_id()), prop::option::of(methods), prop::collection::vec(any::<char>(), 0..8)).prop_map(
            |(id, method, noise)| {
                let noise = String::from_iter(noise);
                let mut message = json!({"jsonrpc": "2.0", "params": {"noise": noise, "nested": [[{"id": 99}]]}});
                if let Some(id) = &id {
                    message["id"] = serde_json::to_value(id).unwrap();
                }
                if let Some(method) = method {
                    message["method"] = json!(method);
                }
                let request = id.zip(method).map(|(id, method)| Request { id, method: method.to_string() });
                (message, request)
            },
        )
    }

    /// Bytes rich in JSON punctuation.
    fn json_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        let pick = |byte: u8| match byte % 10 {
            0 => b'{',
            1 => b'"',
            2 => b'[',
            3 => b':',
            4 => b',',
            _ => byte,
        };
        prop::collection::vec(any::<u8>(), 0..max).prop_map(move |v| v.into_iter().map(pick).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 15_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Every request of a message or batch is found, nothing else is.
        #[test]
        fn peek_finds_exactly_the_requests(messages in prop::collection::vec(any_message(), 1..5), batch: bool) {
            let (body, want): (Value, Vec<Request>) = if batch {
                (Value::Array(messages.iter().map(|(m, _)| m.clone()).collect()),
                 messages.iter().filter_map(|(_, r)| r.clone()).collect())
            } else {
                (messages[0].0.clone(), messages[0].1.clone().into_iter().collect())
            };
            let peeked = peek(body.to_string().as_bytes()).unwrap();
            prop_assert_eq!(peeked, Peeked { requests: want, batch });
        }

        /// Any bytes at all: requests or a clear error, never a panic.
        #[test]
        fn peek_never_panics(body in json_bytes(64)) {
            match peek(&body) {
                Ok(_) => {}
                Err(e) => prop_assert!(e.to_string().starts_with("reading a JSON-RPC body: ")),
            }
            let _ = response_id(&body);
        }
    }
}
