//! `mcpvisor start|stop|restart`: one command to a workspace's actor.

use super::client;
use super::ClientError;
use crate::state::WorkspaceStatus;

/// Sends `action` for `workspace` and prints what the daemon says (with
/// `json`, the WorkspaceStatus it answered with).
///
/// # Errors
/// See [`ClientError`]; an unknown workspace is [`ClientError::Api`].
pub async fn command(url: &str, workspace: &str, action: &str, json: bool) -> Result<(), ClientError> {
    let endpoint = format!("{url}/api/workspaces/{workspace}/{action}");
    let response = client::send(reqwest::Method::POST, url, &endpoint).await?;
    let noop = response.headers().get("x-mcpvisor-noop").and_then(|v| v.to_str().ok()).map(str::to_string);
    let status: WorkspaceStatus = client::read(url, response).await?;
    match (json, noop) {
        (true, _) => println!("{}", serde_json::to_string(&status).expect("a status serializes")),
        (false, Some(noop)) => println!("{workspace}: nothing to do, {noop}"),
        (false, None) => println!("{workspace}: {action} requested (status now {})", status.status),
    }
    Ok(())
}
