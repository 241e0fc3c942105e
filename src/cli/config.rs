//! `mcpvisor apply|edit|rm|history|diff|rollback`: workspace files through
//! the daemon's API, so every change is validated, health-gated and kept
//! in the history (docs/reference.md §10).

use std::path::Path;

use reqwest::Method;

use super::client;
use super::ClientError;
use crate::history::Entry;
use crate::state::WorkspaceStatus;

/// `mcpvisor apply FILE [--name N]`: PUTs the file as workspace `N` (by
/// default the file's stem) and prints how it fared.
///
/// # Errors
/// The file cannot be read, the config is invalid (every error), or it was
/// rolled back ([`ClientError::Api`], exit 1).
pub async fn apply(url: &str, file: &Path, name: Option<&str>) -> Result<(), ClientError> {
    let bytes = std::fs::read(file).map_err(|e| ClientError::Api(format!("reading {}: {e}", file.display())))?;
    let name = match name {
        Some(name) => name.to_string(),
        None => crate::config::name_of(file),
    };
    put(url, &name, bytes, None).await
}

/// PUTs `bytes` as `name`'s file and prints the verdict.
async fn put(url: &str, name: &str, bytes: Vec<u8>, if_match: Option<&str>) -> Result<(), ClientError> {
    let endpoint = format!("{url}/api/workspaces/{name}/config");
    let response = client::send_with(Method::PUT, url, &endpoint, Some(bytes), if_match).await?;
    let accepted = response.status() == reqwest::StatusCode::ACCEPTED;
    let status: WorkspaceStatus = client::read(url, response).await?;
    let version = client::or_dash(status.config_version.as_deref());
    let said = if accepted { "accepted, not yet running" } else { "applied" };
    println!(
        "{name}: {said} {version} ({}, pid {}, port {})",
        status.status,
        client::or_dash(status.pid),
        client::or_dash(status.port)
    );
    Ok(())
}

/// `mcpvisor edit NAME`: opens the stored file (or a skeleton for a new
/// workspace) in `$VISUAL` or `$EDITOR` (default `vi`), then applies it
/// with `If-Match`, so a change made meanwhile is not overwritten.
///
/// # Errors
/// The editor failed, or the apply did. An invalid edit is kept in the
/// temp file whose path the error names.
pub async fn edit(url: &str, name: &str) -> Result<(), ClientError> {
    let endpoint = format!("{url}/api/workspaces/{name}/config");
    let response = client::client()
        .get(&endpoint)
        .send()
        .await
        .map_err(|e| ClientError::Unreachable { url: url.to_string(), message: e.to_string() })?;
    let (before, version) = match response.status() {
        reqwest::StatusCode::NOT_FOUND => (b"{\n  \"command\": \"\"\n}\n".to_vec(), None),
        status if !status.is_success() => return Err(ClientError::Api(format!("reading {endpoint}: HTTP {status}"))),
        _ => {
            let version = response
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim_matches('"').to_string());
            let bytes = response
                .bytes()
                .await
                .map_err(|e| ClientError::BadAnswer { url: url.to_string(), message: e.to_string() })?;
            (bytes.to_vec(), version)
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("mcpvisor-edit-")
        .tempdir()
        .map_err(|e| ClientError::Api(format!("creating a temp folder: {e}")))?;
    let path = dir.path().join(format!("{name}.json"));
    std::fs::write(&path, &before).map_err(|e| ClientError::Api(format!("writing {}: {e}", path.display())))?;
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let editor = set("VISUAL").or_else(|| set("EDITOR")).unwrap_or_else(|| "vi".into());
    // The editor may carry flags (`code --wait`): the shell splits them.
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("mcpvisor-edit")
        .arg(&path)
        .status()
        .map_err(|e| ClientError::Api(format!("running the editor {editor:?}: {e}")))?;
    if !status.success() {
        return Err(ClientError::Api(format!("the editor {editor:?} failed ({status}); nothing applied")));
    }
    let after = std::fs::read(&path).map_err(|e| ClientError::Api(format!("reading {}: {e}", path.display())))?;
    if after == before {
        println!("{name}: no change");
        return Ok(());
    }
    let result = put(url, name, after, version.as_deref()).await;
    if result.is_err() {
        // Keep the edit, so it is not lost with the error.
        let kept = dir.keep();
        eprintln!("mcpvisor: your edit is kept in {}", kept.join(format!("{name}.json")).display());
    }
    result
}

/// `mcpvisor rm NAME`: stops the workspace, removes its file and releases its port.
///
/// # Errors
/// See [`ClientError`]; an unknown workspace is [`ClientError::Api`].
pub async fn rm(url: &str, name: &str) -> Result<(), ClientError> {
    let endpoint = format!("{url}/api/workspaces/{name}/config");
    client::send(Method::DELETE, url, &endpoint).await?;
    println!("{name}: removed");
    Ok(())
}

#[derive(serde::Deserialize)]
struct HistoryList {
    history: Vec<Entry>,
}

async fn entries(url: &str, name: &str) -> Result<Vec<Entry>, ClientError> {
    let endpoint = format!("{url}/api/workspaces/{name}/history");
    let response = client::send(Method::GET, url, &endpoint).await?;
    Ok(client::read::<HistoryList>(url, response).await?.history)
}

/// `mcpvisor history NAME`: one line per commit, newest first.
///
/// # Errors
/// See [`ClientError`].
pub async fn history(url: &str, name: &str) -> Result<(), ClientError> {
    println!("{:<12}  {:<24}  {:<6}  {:<11}  VERSION", "REV", "AT", "SOURCE", "RESULT");
    for entry in entries(url, name).await? {
        println!(
            "{:<12}  {:<24}  {:<6}  {:<11}  {}",
            &entry.rev[..entry.rev.len().min(12)],
            entry.at,
            entry.source.as_str(),
            entry.result.as_str(),
            client::or_dash(entry.config_version.as_deref())
        );
    }
    Ok(())
}

/// `mcpvisor diff NAME [REV]`: what changed from revision `REV` (default:
/// the newest commit) to the file as stored now, as a unified diff.
///
/// # Errors
/// See [`ClientError`]; no history yet is [`ClientError::Api`].
pub async fn diff(url: &str, name: &str, rev: Option<&str>) -> Result<(), ClientError> {
    let rev = match rev {
        Some(rev) => rev.to_string(),
        None => entries(url, name)
            .await?
            .into_iter()
            .next()
            .map(|e| e.rev)
            .ok_or_else(|| ClientError::Api(format!("workspace {name:?} has no history yet")))?,
    };
    let old = text(url, &format!("{url}/api/workspaces/{name}/history/{rev}")).await?;
    let new = text(url, &format!("{url}/api/workspaces/{name}/config")).await?;
    let short = &rev[..rev.len().min(12)];
    let diff = similar::TextDiff::from_lines(&old, &new);
    print!("{}", diff.unified_diff().header(&format!("{name}.json@{short}"), &format!("{name}.json")));
    Ok(())
}

async fn text(base: &str, url: &str) -> Result<String, ClientError> {
    let response = client::send(Method::GET, base, url).await?;
    response.text().await.map_err(|e| ClientError::BadAnswer { url: base.to_string(), message: e.to_string() })
}

/// `mcpvisor rollback NAME [REV]`: applies revision `REV` (default: the
/// previous applied config) through the same gated path as `apply`.
///
/// # Errors
/// See [`ClientError`]; a rollback that was itself rolled back is
/// [`ClientError::Api`].
pub async fn rollback(url: &str, name: &str, rev: Option<&str>) -> Result<(), ClientError> {
    let endpoint = format!("{url}/api/workspaces/{name}/rollback");
    let body = rev.map(|rev| serde_json::json!({ "to": rev }).to_string().into_bytes());
    let response = client::send_with(Method::POST, url, &endpoint, body, None).await?;
    let status: WorkspaceStatus = client::read(url, response).await?;
    println!(
        "{name}: rolled back to {} ({}, pid {})",
        client::or_dash(status.config_version.as_deref()),
        status.status,
        client::or_dash(status.pid)
    );
    Ok(())
}
