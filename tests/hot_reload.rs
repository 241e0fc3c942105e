//! Hot reload with a real watcher and real children: only what changed
//! restarts, bursts coalesce, invalid edits lose nothing.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const UP: Duration = Duration::from_secs(20);

fn with(mut ws: Value, key: &str, value: Value) -> Value {
    ws[key] = value;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_save_restarts_only_the_changed_workspace() {
    let daemon = Daemon::start(&[("edit", demo()), ("other", demo())]).await;
    let edit = daemon.wait_status("edit", "running", UP).await;
    let other = daemon.wait_status("other", "running", UP).await;

    // An editor's atomic save: write a temp file, rename it over.
    daemon.write("edit", &with(demo(), "env", json!({"CHANGED": "1"})));
    let after = daemon.wait_for("edit", UP, |s| s["status"] == "running" && s["pid"] != edit["pid"]).await;
    assert_ne!(after["configVersion"], edit["configVersion"]);
    assert_eq!(after["port"], edit["port"], "a restart keeps the port");
    let other_after = daemon.status("other").await;
    assert_eq!(other_after["pid"], other["pid"], "the other workspace was not touched");
    assert_eq!(other_after["restartCount"], 0);

    // The change is visible as notifications with its reason.
    let url = format!("{}/api/events?workspace=edit", daemon.url);
    let events = read_events(&daemon.http, &url, Some(0), 20, Duration::from_millis(500)).await;
    assert!(
        events.iter().any(|(_, e)| e["params"]["reason"] == "config changed" && e["params"]["status"] == "starting"),
        "{events:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn description_only_edit_restarts_nothing() {
    let daemon = Daemon::start(&[("quiet", demo())]).await;
    let before = daemon.wait_status("quiet", "running", UP).await;
    daemon.write("quiet", &with(demo(), "description", json!("now documented")));
    let after = daemon.wait_for("quiet", UP, |s| s["configVersion"] != before["configVersion"]).await;
    assert_eq!(after["pid"], before["pid"]);
    assert_eq!(after["status"], "running");
    assert_eq!(after["restartCount"], before["restartCount"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_writes_in_a_second_cause_one_restart_with_the_last_content() {
    let daemon = Daemon::start(&[("burst", demo())]).await;
    let before = daemon.wait_status("burst", "running", UP).await;
    for i in 0..50 {
        daemon.write("burst", &with(demo(), "env", json!({"N": i.to_string()})));
        tokio::time::sleep(Duration::from_millis(18)).await;
    }
    let last = mcpvisor::config::load_file(&daemon.workspaces().join("burst.json")).version.unwrap();
    let after = daemon.wait_for("burst", UP, |s| s["status"] == "running" && s["configVersion"] == last.as_str()).await;
    // Give any straggling reconcile the chance to restart again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = daemon.status("burst").await;
    assert_eq!(settled["restartCount"], 1, "one restart for the whole burst");
    assert_eq!(settled["pid"], after["pid"]);
    assert_ne!(settled["pid"], before["pid"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_moved_out_stops_and_frees_its_port_and_moved_back_starts() {
    let daemon = Daemon::start(&[("mover", demo())]).await;
    let running = daemon.wait_status("mover", "running", UP).await;
    let pid = running["pid"].as_u64().unwrap();
    let outside = daemon.root.join("mover.json");
    std::fs::rename(daemon.workspaces().join("mover.json"), &outside).unwrap();
    let deadline = tokio::time::Instant::now() + UP;
    while daemon.get("/api/workspaces/mover").await.0 != 404 {
        assert!(tokio::time::Instant::now() < deadline, "workspace not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_gone(pid, Duration::from_secs(5)).await;
    let deadline = tokio::time::Instant::now() + UP;
    loop {
        let (_, resources) = daemon.get("/api/debug/state/resources").await;
        if resources["allocations"].get("mover").is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "port not released: {resources}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::rename(&outside, daemon.workspaces().join("mover.json")).unwrap();
    let back = daemon.wait_status("mover", "running", UP).await;
    assert!(back["port"].as_u64().is_some());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edit_keeps_the_old_child_and_a_fix_clears_the_error() {
    let daemon = Daemon::start(&[("fragile", demo())]).await;
    let before = daemon.wait_status("fragile", "running", UP).await;
    std::fs::write(daemon.workspaces().join("fragile.json"), "{\"command\": \"half-writ").unwrap();
    let broken = daemon.wait_for("fragile", UP, |s| !s["configError"].is_null()).await;
    assert_eq!(broken["status"], "running");
    assert_eq!(broken["pid"], before["pid"], "the last good config keeps running");
    assert!(
        broken["configError"]["errors"][0]["at"].as_str().unwrap().contains(':'),
        "line:column of the syntax error"
    );
    let url = format!("{}/api/events?workspace=fragile", daemon.url);
    let events = read_events(&daemon.http, &url, Some(0), 20, Duration::from_millis(500)).await;
    assert!(events.iter().any(|(_, e)| e["params"]["reason"] == "config invalid"), "{events:?}");

    daemon.write("fragile", &demo());
    let fixed = daemon.wait_for("fragile", UP, |s| s["configError"].is_null()).await;
    assert_eq!(fixed["pid"], before["pid"], "the same valid content needs no restart");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_and_recreating_the_folder_converges_to_the_new_files() {
    let daemon = Daemon::start(&[("old", demo())]).await;
    daemon.wait_status("old", "running", UP).await;
    std::fs::remove_dir_all(daemon.workspaces()).unwrap();
    let deadline = tokio::time::Instant::now() + UP;
    while daemon.get("/api/workspaces/old").await.0 != 404 {
        assert!(tokio::time::Instant::now() < deadline, "old workspace not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::create_dir_all(daemon.workspaces()).unwrap();
    daemon.write("new", &demo());
    daemon.wait_status("new", "running", UP).await;
    // The recreated folder is watched: a further edit is picked up.
    daemon.write("newer", &demo());
    daemon.wait_status("newer", "running", UP).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_and_backup_files_are_ignored() {
    let daemon = Daemon::start(&[("dev", demo())]).await;
    daemon.wait_status("dev", "running", UP).await;
    std::fs::write(daemon.workspaces().join(".dev.json.swp"), "not json").unwrap();
    std::fs::write(daemon.workspaces().join("dev.json~"), "not json").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, list) = daemon.get("/api/workspaces").await;
    assert_eq!(list["workspaces"].as_array().unwrap().len(), 1, "{list}");
    let dev = daemon.status("dev").await;
    assert!(dev["configError"].is_null());
    assert_eq!(dev["restartCount"], 0);
    daemon.stop().await;
}
