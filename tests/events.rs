//! `workspace/statusChanged` over SSE: snapshot first, then changes in
//! order; `Last-Event-ID` replays exactly what was missed.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const UP: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_shows_snapshot_then_starting_and_running_with_increasing_ids() {
    // The first subscriber connects before the (slow) child is ready.
    let slow = json!({
        "command": "/bin/sh",
        "args": ["-c", "sleep 0.5; exec \"$0\" demo-server --port \"$PORT\"", "${MCPVISOR}"],
    });
    let daemon = Daemon::start(&[("slow", slow)]).await;
    daemon.wait_status("slow", "starting", UP).await;
    let url = format!("{}/api/workspaces/slow/events", daemon.url);
    let first = read_events(&daemon.http, &url, None, 2, UP).await;
    assert_eq!(first[0].1["params"]["reason"], "snapshot");
    assert_eq!(first[0].1["params"]["status"], "starting");
    assert_eq!(first[0].1["method"], "workspace/statusChanged");
    assert_eq!(first[0].1["jsonrpc"], "2.0");
    assert_eq!(first[1].1["params"]["status"], "running");
    assert_eq!(first[1].1["params"]["previous"], "starting");
    assert!(first[1].0 > first[0].0);

    // A restart: stopping, stopped, starting, running, ids growing by one.
    let (code, _) = daemon.post("/api/workspaces/slow/restart").await;
    assert_eq!(code, 202);
    daemon.wait_for("slow", UP, |s| s["status"] == "running" && s["restartCount"] == 1).await;
    let replay = read_events(&daemon.http, &url, Some(first[1].0), 4, UP).await;
    let statuses: Vec<&str> = replay.iter().map(|(_, e)| e["params"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["stopping", "stopped", "starting", "running"]);
    for pair in replay.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "seq grows by one per event");
    }
    assert_eq!(replay[0].0, first[1].0 + 1, "replay starts right after Last-Event-ID");
    for (id, event) in &replay {
        assert_eq!(event["params"]["seq"], *id);
    }

    // Replaying from the newest id gives nothing; an id from the future gets a resync.
    let none = read_events(&daemon.http, &url, Some(replay[3].0), 1, Duration::from_millis(300)).await;
    assert!(none.is_empty(), "{none:?}");
    let resync = read_events(&daemon.http, &url, Some(1_000_000), 1, UP).await;
    assert_eq!(resync[0].1["params"]["reason"], "resync");

    // An unknown workspace is 404 on its own route.
    let (code, _) = daemon.get("/api/workspaces/nope/events").await;
    assert_eq!(code, 404);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_events_filters_and_sees_new_workspaces() {
    let daemon = Daemon::start(&[("one", demo())]).await;
    daemon.wait_status("one", "running", UP).await;
    // No workspace `two` yet: an empty snapshot. The stream is open once
    // its headers arrived.
    let mut events = daemon.events("/api/events?workspace=two", 0).await;
    daemon.write("two", &demo());
    let events = events.take(2, Duration::from_secs(20)).await;
    assert!(events.iter().all(|(_, e)| e["params"]["workspace"] == "two"), "{events:?}");
    let statuses: Vec<&str> = events.iter().map(|(_, e)| e["params"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["starting", "running"]);
    daemon.stop().await;
}
