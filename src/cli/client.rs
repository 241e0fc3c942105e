//! The HTTP side of the client commands: one `reqwest` client carrying
//! `MCPVISOR_TOKEN`, and answers read into the daemon's own types.

use reqwest::{Method, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ClientError;

/// A client for the daemon; with `MCPVISOR_TOKEN` set, every request
/// carries it as a bearer token.
pub fn client() -> reqwest::Client {
    let mut builder = reqwest::Client::builder().no_proxy();
    if let Ok(token) = std::env::var("MCPVISOR_TOKEN") {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(value) = format!("Bearer {token}").parse() {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        builder = builder.default_headers(headers);
    }
    builder.build().expect("http client builds")
}

/// The error body of the daemon's API (docs/reference.md §6).
#[derive(serde::Deserialize)]
struct ApiErrorBody {
    error: String,
}

/// Sends `method` to `url` (on the daemon at `base`) and returns the
/// response when it succeeded.
///
/// # Errors
/// The daemon cannot be reached, or it answered with an error, whose message
/// the error carries.
pub async fn send(method: Method, base: &str, url: &str) -> Result<Response, ClientError> {
    send_with(method, base, url, None, None).await
}

/// [`send`] with a JSON `body` and an `If-Match` version.
///
/// # Errors
/// As [`send`].
pub async fn send_with(
    method: Method,
    base: &str,
    url: &str,
    body: Option<Vec<u8>>,
    if_match: Option<&str>,
) -> Result<Response, ClientError> {
    let mut request = client().request(method, url);
    if let Some(body) = body {
        request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
    }
    if let Some(version) = if_match {
        request = request.header(reqwest::header::IF_MATCH, format!("\"{version}\""));
    }
    let response =
        request.send().await.map_err(|e| ClientError::Unreachable { url: base.to_string(), message: e.to_string() })?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let message = match response.json::<ApiErrorBody>().await {
        Ok(body) => body.error,
        Err(_) => "request failed".to_string(),
    };
    Err(ClientError::Api(format!("{message} (HTTP {})", status.as_u16())))
}

/// Reads a successful answer as a `T`.
///
/// # Errors
/// The body broke off or is not a `T`.
pub async fn read<T: DeserializeOwned>(base: &str, response: Response) -> Result<T, ClientError> {
    let bad = |e: reqwest::Error| ClientError::BadAnswer { url: base.to_string(), message: e.to_string() };
    let bytes = response.bytes().await.map_err(bad)?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::BadAnswer { url: base.to_string(), message: e.to_string() })
}

/// The name serde gives `value` (`half-open`, `healthy`, ...).
pub fn name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "-".to_string(),
    }
}

/// `-` for nothing, else the value.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}
