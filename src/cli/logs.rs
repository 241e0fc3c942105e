//! `mcpvisor logs`: a workspace's captured output, optionally followed.

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;

use super::client;
use super::ClientError;

/// Prints the last `lines` lines; with `follow`, keeps printing new ones
/// until the daemon ends the stream.
///
/// # Errors
/// See [`ClientError`].
pub async fn logs(url: &str, workspace: &str, lines: usize, follow: bool) -> Result<(), ClientError> {
    if follow {
        let endpoint = format!("{url}/api/workspaces/{workspace}/logs?lines={lines}&follow=true");
        let response = client::send(reqwest::Method::GET, url, &endpoint).await?;
        let mut events = response.bytes_stream().eventsource();
        while let Some(Ok(event)) = events.next().await {
            if let Ok(line) = serde_json::from_str::<Value>(&event.data) {
                print_line(&line);
            }
        }
        return Ok(());
    }
    let endpoint = format!("{url}/api/workspaces/{workspace}/logs?lines={lines}");
    let body: Value = client::read(url, client::send(reqwest::Method::GET, url, &endpoint).await?).await?;
    for line in body["lines"].as_array().into_iter().flatten() {
        print_line(line);
    }
    Ok(())
}

/// One captured line, `{"ts","stream","line"}`, as `ts stream line`.
fn print_line(line: &Value) {
    let field = |key: &str| line[key].as_str().unwrap_or("-").to_string();
    println!("{} {} {}", field("ts"), field("stream"), field("line"));
}
