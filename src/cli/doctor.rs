//! `mcpvisor doctor`: the daemon's system check (docs/reference.md §10),
//! one line per issue; exit 1 on any issue of severity `error`.

use reqwest::Method;

use super::client;
use super::ClientError;
use crate::doctor::{Report, Severity};

/// Prints every issue `GET /api/debug/validate` finds (with `json`, the
/// report as it came).
///
/// # Errors
/// [`ClientError::Issues`] when any issue is an error; see [`ClientError`].
pub async fn doctor(url: &str, json: bool) -> Result<(), ClientError> {
    let response = client::send(Method::GET, url, &format!("{url}/api/debug/validate")).await?;
    let report: Report = client::read(url, response).await?;
    if json {
        println!("{}", serde_json::to_string(&report).expect("a report serializes"));
    } else if report.issues.is_empty() {
        println!("no issues found");
    }
    let mut n_errors = 0;
    for issue in &report.issues {
        if issue.severity == Severity::Error {
            n_errors += 1;
        }
        if !json {
            let severity = client::name(&issue.severity);
            let workspace = issue.workspace.as_deref().unwrap_or("-");
            println!("{severity}: {} {workspace}: {}\n  hint: {}", issue.component, issue.issue, issue.hint);
        }
    }
    match n_errors {
        0 => Ok(()),
        n => Err(ClientError::Issues(n)),
    }
}
