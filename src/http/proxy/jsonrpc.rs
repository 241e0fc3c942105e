//! Just enough JSON-RPC for the proxy: peeking at a POST body's request ids
//! and methods (never rewriting it), and building error replies.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

/// JSON-RPC "server error" code the proxy answers with (DESIGN §8).
pub const SERVER_ERROR: i64 = -32000;
/// JSON-RPC "invalid request", for a body the proxy refuses to pass on.
pub const INVALID_REQUEST: i64 = -32600;

/// One message of a POST body, as far as the proxy cares.
#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
}

/// A JSON-RPC request the client is waiting on: its id and method.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestId {
    pub id: Value,
    pub method: String,
}

/// What a POST body holds: the requests that expect an answer.
#[derive(Debug, Default)]
pub struct Peeked {
    pub requests: Vec<RequestId>,
    /// A JSON array (a 2024-11-05 / 2025-03-26 batch): errors go back as one.
    pub batch: bool,
}

/// Reads the ids and methods of `body` without keeping anything else.
///
/// A body that is not JSON-RPC yields no requests; it is still passed to the
/// child, which answers it as it sees fit.
pub fn peek(body: &[u8]) -> Peeked {
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let messages = if batch {
        serde_json::from_slice::<Vec<Message>>(body).unwrap_or_default()
    } else {
        serde_json::from_slice::<Message>(body).map(|m| vec![m]).unwrap_or_default()
    };
    let requests = messages.into_iter().filter_map(|m| Some(RequestId { id: m.id?, method: m.method? })).collect();
    Peeked { requests, batch }
}

/// The id of `data` when it is a JSON-RPC response (an id, no method).
pub fn response_id(data: &[u8]) -> Option<Value> {
    let message: Message = serde_json::from_slice(data).ok()?;
    if message.method.is_some() {
        return None;
    }
    message.id
}

/// One JSON-RPC error response.
pub fn error(id: &Value, code: i64, message: &str, data: &Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message, "data": data}})
}

/// The reply to a whole POST body: one error per request, as an array for a
/// batch, or a single error with a null id when the body held no request.
pub fn reply(peeked: &Peeked, code: i64, message: &str, data: &Value) -> Bytes {
    let value = match (peeked.batch, peeked.requests.as_slice()) {
        (_, []) => error(&Value::Null, code, message, data),
        (false, [first, ..]) => error(&first.id, code, message, data),
        (true, requests) => Value::Array(requests.iter().map(|r| error(&r.id, code, message, data)).collect()),
    };
    Bytes::from(value.to_string())
}

/// One SSE `message` event per request, each a JSON-RPC error.
pub fn sse_errors(requests: &[RequestId], code: i64, message: &str, data: &Value) -> Bytes {
    let mut out = String::new();
    for request in requests {
        out.push_str("event: message\ndata: ");
        out.push_str(&error(&request.id, code, message, data).to_string());
        out.push_str("\n\n");
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeks_requests_only() {
        let p = peek(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"x":[1,2]}}"#);
        assert_eq!(p.requests, vec![RequestId { id: json!(7), method: "tools/call".into() }]);
        assert!(!p.batch);
        assert!(peek(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).requests.is_empty());
        assert!(peek(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#).requests.is_empty());
        assert!(peek(b"{not json").requests.is_empty());
        let b = peek(br#" [{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"n"},{"jsonrpc":"2.0","id":"x","method":"b"}]"#);
        assert!(b.batch);
        assert_eq!(b.requests.len(), 2);
    }

    #[test]
    fn replies_match_the_request_shape() {
        let data = json!({});
        let one = peek(br#"{"jsonrpc":"2.0","id":"q","method":"ping"}"#);
        let v: Value = serde_json::from_slice(&reply(&one, SERVER_ERROR, "m", &data)).unwrap();
        assert_eq!(v["id"], "q");
        let none = peek(b"garbage");
        let v: Value = serde_json::from_slice(&reply(&none, SERVER_ERROR, "m", &data)).unwrap();
        assert_eq!(v["id"], Value::Null);
        let batch = peek(br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","id":2,"method":"b"}]"#);
        let v: Value = serde_json::from_slice(&reply(&batch, SERVER_ERROR, "m", &data)).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
    }

    #[test]
    fn finds_response_ids() {
        assert_eq!(response_id(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#), Some(json!(3)));
        assert_eq!(response_id(br#"{"jsonrpc":"2.0","id":3,"method":"sampling/createMessage"}"#), None);
        assert_eq!(response_id(br#"{"jsonrpc":"2.0","method":"notifications/progress"}"#), None);
    }
}
