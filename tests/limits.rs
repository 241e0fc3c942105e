//! Daemon-wide limits with real children (docs/reference.md §10):
//! `--max-workspaces` and `--max-memory-mb`.

mod common;

use std::time::Duration;

use common::*;

const UP: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_beyond_max_workspaces_is_an_error_until_there_is_room() {
    let files = [("cap-a", demo()), ("cap-b", demo()), ("cap-c", demo())];
    let daemon = Daemon::start_with(&files, |c| c.max_workspaces = Some(2)).await;
    daemon.wait_status("cap-a", "running", UP).await;
    daemon.wait_status("cap-b", "running", UP).await;
    let over = daemon.wait_status("cap-c", "error", UP).await;
    let error = over["configError"].to_string();
    assert!(error.contains("at most 2 workspaces"), "a clear reason: {over}");
    assert!(over["pid"].is_null());

    let (_, resources) = daemon.get("/api/debug/state/resources").await;
    assert_eq!(resources["daemonLimits"]["maxWorkspaces"], 2, "{resources}");

    std::fs::remove_file(daemon.workspaces().join("cap-a.json")).unwrap();
    let started = daemon.wait_status("cap-c", "running", UP).await;
    assert!(started["configError"].is_null(), "{started}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_max_memory_mb_the_largest_tree_restarts_with_reason_memory_limit() {
    let daemon = Daemon::start_with(&[("heavy", demo())], |c| c.max_memory_mb = Some(1)).await;
    let first = daemon.wait_status("heavy", "running", UP).await;
    let restarted = daemon
        .wait_for("heavy", UP, |s| s["restartCount"].as_u64() >= Some(1) && s["lastError"]["reason"] == "memory limit")
        .await;
    let message = restarted["lastError"]["message"].as_str().unwrap();
    assert!(message.contains("over the daemon's 1 MiB (--max-memory-mb)"), "{message}");
    assert_ne!(restarted["pid"], first["pid"]);
    let (_, resources) = daemon.get("/api/debug/state/resources").await;
    assert_eq!(resources["daemonLimits"]["maxMemoryMb"], 1, "{resources}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_beyond_max_workspaces_is_refused_and_undone() {
    let daemon = Daemon::start_with(&[("only", demo())], |c| c.max_workspaces = Some(1)).await;
    daemon.wait_status("only", "running", UP).await;
    let response = daemon
        .http
        .put(format!("{}/api/workspaces/second/config", daemon.url))
        .body(demo().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("at most 1 workspaces"), "{body}");
    assert!(!daemon.workspaces().join("second.json").exists(), "the write is undone");
    daemon.stop().await;
}
