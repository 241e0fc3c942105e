//! Just enough JSON-RPC for the bridge: what kind a message is, and the
//! fields it rewrites (ids, progress tokens, cancelled request ids). The
//! shapes and codes are `rmcp::model`'s.

use bytes::Bytes;
use rmcp::model::{ErrorCode, ErrorData, JsonRpcError};
use serde_json::{json, Value};

/// What a JSON-RPC message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A method and an id: it expects an answer.
    Request,
    /// A method without an id.
    Notification,
    /// An id with a result or an error.
    Response,
}

/// The kind of `message`, or `None` when it is not a JSON-RPC message.
pub fn kind(message: &Value) -> Option<Kind> {
    let object = message.as_object()?;
    let id = object.get("id").filter(|id| id.is_string() || id.is_number());
    match (object.get("method").and_then(Value::as_str), id) {
        (Some(_), Some(_)) => Some(Kind::Request),
        (Some(_), None) if !object.contains_key("id") => Some(Kind::Notification),
        (None, Some(_)) if object.contains_key("result") || object.contains_key("error") => Some(Kind::Response),
        _ => None,
    }
}

pub fn method(message: &Value) -> &str {
    message.get("method").and_then(Value::as_str).unwrap_or_default()
}

/// `params._meta.progressToken` of a request, if it asks for progress.
pub fn progress_token(message: &Value) -> Option<&Value> {
    message.get("params")?.get("_meta")?.get("progressToken")
}

/// Sets `params._meta.progressToken`; `message` has one already.
pub fn set_progress_token(message: &mut Value, token: Value) {
    if let Some(slot) = message.pointer_mut("/params/_meta/progressToken") {
        *slot = token;
    }
}

/// `message` as one line for a child's stdin.
pub fn line(message: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(message).expect("a JSON value serializes");
    out.push(b'\n');
    out
}

pub fn bytes(message: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(message).expect("a JSON value serializes"))
}

/// A JSON-RPC error answering `id`.
pub fn error_response(id: Value, code: ErrorCode, message: String) -> Value {
    let error = JsonRpcError::new(serde_json::from_value(id).ok(), ErrorData::new(code, message, None));
    serde_json::to_value(error).expect("a JSON-RPC error serializes")
}

/// A JSON-RPC result answering `id`.
pub fn result_response(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind(&json!({"jsonrpc":"2.0","id":1,"method":"ping"})), Some(Kind::Request));
        assert_eq!(kind(&json!({"jsonrpc":"2.0","method":"notifications/initialized"})), Some(Kind::Notification));
        assert_eq!(kind(&json!({"jsonrpc":"2.0","id":"a","result":{}})), Some(Kind::Response));
        assert_eq!(kind(&json!({"jsonrpc":"2.0","id":"a","error":{"code":1,"message":"m"}})), Some(Kind::Response));
        assert_eq!(kind(&json!({"jsonrpc":"2.0","id":null,"method":"x"})), None);
        assert_eq!(kind(&json!({"id":1})), None);
        assert_eq!(kind(&json!([1])), None);
    }

    #[test]
    fn progress_tokens_are_found_and_replaced() {
        let mut request = json!({"id":1,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":"t"}}});
        assert_eq!(progress_token(&request), Some(&json!("t")));
        set_progress_token(&mut request, json!(7));
        assert_eq!(request["params"]["_meta"]["progressToken"], 7);
        assert_eq!(progress_token(&json!({"id":1,"method":"ping"})), None);
    }
}
