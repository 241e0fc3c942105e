//! Serve first, reconcile after: the API answers while children start.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_ten_slow_children_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workspaces")).unwrap();
    let slow = json!({
        "command": "/bin/sh",
        "args": ["-c", "sleep 2; exec \"$0\" demo-server --port \"$PORT\"", "${MCPVISOR}"],
    });
    for i in 0..10 {
        write_file(&dir.path().join(format!("workspaces/slow{i}.json")), &slow);
    }
    let daemon = Daemon::start_at(dir.path(), port_range()).await;
    let (code, body) = daemon.get("/healthz").await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "ok");

    // Children are still starting, and the list answers anyway.
    let (code, list) = daemon.get("/api/workspaces").await;
    assert_eq!(code, 200);
    assert!(list["workspaces"].as_array().unwrap().iter().all(|w| w["status"] != "running"));
    let (code, _) = daemon.get("/readyz").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ready = code == 200;
    while !ready && Instant::now() < deadline {
        ready = daemon.get("/readyz").await.0 == 200;
    }
    assert!(ready, "readyz turns 200 after the initial load, before children are running");
    for i in 0..10 {
        daemon.wait_status(&format!("slow{i}"), "running", Duration::from_secs(30)).await;
    }
    daemon.stop().await;
}
