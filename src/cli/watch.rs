//! `mcpvisor watch`: follows status notifications, one line each.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;

use super::client::{self, name, or_dash};
use super::ClientError;
use crate::state::StatusChange;

/// A `workspace/statusChanged` notification as it arrives.
#[derive(serde::Deserialize)]
struct Notification {
    params: StatusChange,
}

/// Follows notifications and reconnects with `Last-Event-ID` after a
/// dropped connection, so nothing is missed or printed twice.
///
/// # Errors
/// The daemon cannot be reached the first time, or refuses the stream.
pub async fn watch(url: &str, workspace: Option<&str>, json: bool) -> Result<(), ClientError> {
    let endpoint = match workspace {
        Some(w) => format!("{url}/api/events?workspace={w}"),
        None => format!("{url}/api/events"),
    };
    let mut last_id: Option<String> = None;
    let mut connected_once = false;
    loop {
        let mut request = client::client().get(&endpoint).header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                connected_once = true;
                let mut events = response.bytes_stream().eventsource();
                while let Some(Ok(event)) = events.next().await {
                    if !event.id.is_empty() {
                        last_id = Some(event.id.clone());
                    }
                    print_notification(&event.data, json);
                }
            }
            Ok(response) => return Err(ClientError::Api(format!("HTTP {}", response.status().as_u16()))),
            Err(e) if !connected_once => {
                return Err(ClientError::Unreachable { url: url.to_string(), message: e.to_string() })
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_notification(data: &str, json: bool) {
    if json {
        println!("{data}");
        return;
    }
    let Ok(Notification { params: p }) = serde_json::from_str::<Notification>(data) else { return };
    println!(
        "{} #{} {} {} -> {} ({}) pid={} port={} restarts={} breaker={}",
        p.timestamp,
        p.seq,
        p.workspace,
        or_dash(p.previous),
        p.status,
        p.reason,
        or_dash(p.pid),
        or_dash(p.port),
        p.restart_count,
        name(&p.breaker),
    );
}
