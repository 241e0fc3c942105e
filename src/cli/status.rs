//! `mcpvisor status`: a table of every workspace, or the API's JSON.

use std::time::Duration;

use super::client::{self, name, or_dash};
use super::ClientError;
use crate::http::WorkspaceList;

/// Prints the table (or with `json`, the daemon's JSON as it came).
///
/// # Errors
/// See [`ClientError`].
pub async fn status(url: &str, json: bool) -> Result<(), ClientError> {
    let response = client::send(reqwest::Method::GET, url, &format!("{url}/api/workspaces")).await?;
    if json {
        let text =
            response.text().await.map_err(|e| ClientError::BadAnswer { url: url.into(), message: e.to_string() })?;
        println!("{text}");
        return Ok(());
    }
    let list: WorkspaceList = client::read(url, response).await?;
    println!(
        "{:<24} {:<9} {:<10} {:>8} {:>6} {:>10} {:>8} {:<9} {}",
        "WORKSPACE", "STATUS", "HEALTH", "PID", "PORT", "UPTIME", "RESTARTS", "BREAKER", "REASON"
    );
    for w in &list.workspaces {
        let uptime = w.uptime_ms.map(|ms| humantime::format_duration(Duration::from_secs(ms / 1000)));
        println!(
            "{:<24} {:<9} {:<10} {:>8} {:>6} {:>10} {:>8} {:<9} {}",
            w.workspace,
            w.status,
            name(&w.health),
            or_dash(w.pid),
            or_dash(w.port),
            or_dash(uptime),
            w.restart_count,
            name(&w.breaker.state),
            or_dash(w.reason.as_deref().map(reason)),
        );
    }
    Ok(())
}

/// The REASON cell: why the workspace is in its status, in words for the
/// reasons that need them (docs/reference.md §11).
fn reason(reason: &str) -> &str {
    match reason {
        "on-demand" => "on-demand: starts with the first request",
        "idle" => "idle: starts again with the next request",
        other => other,
    }
}
