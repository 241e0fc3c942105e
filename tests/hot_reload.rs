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
    wait_scans(&daemon, 3).await;
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
    wait_code(&daemon, "/api/workspaces/mover", 404).await;
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

/// A deleted workspaces folder stops nothing: the children keep running and
/// the daemon says it is not ready, and why, until the folder is back; then
/// the folder is reloaded (what changed applies) and watched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_folder_keeps_children_running_and_readyz_503_until_it_returns() {
    let daemon = Daemon::start(&[("old", demo()), ("kept", demo())]).await;
    let old = daemon.wait_status("old", "running", UP).await;
    let kept = daemon.wait_status("kept", "running", UP).await;
    assert_eq!(daemon.get("/readyz").await.0, 200);

    let failed_reads = metric(&daemon, READ_ERRORS).await;
    std::fs::remove_dir_all(daemon.workspaces()).unwrap();
    let not_ready = wait_code(&daemon, "/readyz", 503).await;
    assert_eq!(not_ready["status"], "not ready", "{not_ready}");
    assert!(not_ready["watchError"].as_str().unwrap().contains("is missing"), "{not_ready}");
    // Several scans of the missing folder later, nothing was stopped.
    wait_metric(&daemon, READ_ERRORS, failed_reads + 3.0).await;
    for before in [&old, &kept] {
        let now = daemon.status(before["workspace"].as_str().unwrap()).await;
        assert_eq!((&now["status"], &now["pid"]), (&json!("running"), &before["pid"]), "{now}");
        assert!(now["configError"].is_null(), "{now}");
    }

    // The folder comes back (whole, by a rename) without `old` and with `new`.
    let staging = daemon.root.join("staging");
    std::fs::create_dir(&staging).unwrap();
    write_file(&staging.join("kept.json"), &demo());
    write_file(&staging.join("new.json"), &demo());
    std::fs::rename(&staging, daemon.workspaces()).unwrap();
    let ready = wait_code(&daemon, "/readyz", 200).await;
    assert!(ready["watchError"].is_null(), "{ready}");
    daemon.wait_status("new", "running", UP).await;
    wait_code(&daemon, "/api/workspaces/old", 404).await;
    assert_eq!(daemon.status("kept").await["pid"], kept["pid"], "an unchanged file restarts nothing");
    // The recreated folder is watched: a further edit is picked up.
    daemon.write("newer", &demo());
    daemon.wait_status("newer", "running", UP).await;
    daemon.stop().await;
}

/// Started without its workspaces folder, the daemon is not ready (it has
/// read no file) and says why; once the folder appears, it loads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_without_its_folder_is_ready_once_the_folder_appears() {
    let root = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_at(root.path(), port_range()).await;
    let not_ready = wait_code(&daemon, "/readyz", 503).await;
    assert!(not_ready["watchError"].as_str().is_some_and(|e| e.contains("is missing")), "{not_ready}");
    let staging = root.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    write_file(&staging.join("late.json"), &demo());
    std::fs::rename(&staging, daemon.workspaces()).unwrap();
    wait_code(&daemon, "/readyz", 200).await;
    daemon.wait_status("late", "running", UP).await;
    daemon.stop().await;
}

/// A `.json` file whose name is not a workspace name is warned about once
/// per change of the file, however many scans see it. (The daemon's own
/// reads used to trigger a scan every ~50 ms, each warning again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_name_is_warned_about_once_per_change() {
    let daemon = Daemon::start(&[("dev", demo())]).await;
    daemon.wait_status("dev", "running", UP).await;
    let bad = daemon.workspaces().join("Bad.json");
    write_file(&bad, &json!({"command": "x"}));
    wait_metric(&daemon, WARNINGS, 1.0).await;
    wait_scans(&daemon, 5).await;
    assert_eq!(metric(&daemon, WARNINGS).await, 1.0, "one warning however many scans");
    let (_, errors) = daemon.get("/api/debug/state/errors").await;
    assert!(errors["invalidFiles"][0]["file"].as_str().unwrap().ends_with("Bad.json"), "{errors}");

    write_file(&bad, &json!({"command": "y"}));
    wait_metric(&daemon, WARNINGS, 2.0).await;
    wait_scans(&daemon, 5).await;
    assert_eq!(metric(&daemon, WARNINGS).await, 2.0, "one more warning for the change");
    daemon.stop().await;
}

/// A workspace file that fails to read (here a symlink loop: ELOOP on every
/// open, as real as EMFILE and reproducible) keeps its workspace as it was:
/// no configError, no restart. Once it reads again, it applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_cannot_be_read_keeps_its_workspace_running() {
    let daemon = Daemon::start(&[("steady", demo())]).await;
    let before = daemon.wait_status("steady", "running", UP).await;
    let failed_reads = metric(&daemon, READ_ERRORS).await;
    // Swapped in atomically: a symlink to itself, under the file's name.
    let link = daemon.workspaces().join("steady.link");
    std::os::unix::fs::symlink("steady.json", &link).unwrap();
    std::fs::rename(&link, daemon.workspaces().join("steady.json")).unwrap();
    wait_metric(&daemon, READ_ERRORS, failed_reads + 3.0).await;
    let during = daemon.status("steady").await;
    assert_eq!((&during["status"], &during["pid"]), (&json!("running"), &before["pid"]), "{during}");
    assert!(during["configError"].is_null(), "a read error is not an invalid file: {during}");
    assert_eq!(during["restartCount"], 0);

    daemon.write("steady", &with(demo(), "description", json!("readable again")));
    let after = daemon.wait_for("steady", UP, |s| s["configVersion"] != before["configVersion"]).await;
    assert_eq!(after["pid"], before["pid"]);
    daemon.stop().await;
}

const WARNINGS: &str = "mcpvisor_invalid_file_warnings_total";
const READ_ERRORS: &str = "mcpvisor_workspace_read_errors_total";
const RECONCILES: &str = "mcpvisor_reconciles_total";

/// The value of a counter on `/metrics`, 0 when absent.
async fn metric(daemon: &Daemon, name: &str) -> f64 {
    let text = daemon.http.get(format!("{}/metrics", daemon.url)).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// Waits until the counter `name` reaches `at_least`.
async fn wait_metric(daemon: &Daemon, name: &str, at_least: f64) -> f64 {
    eventually(name, UP, || async {
        match metric(daemon, name).await {
            value if value >= at_least => Ok(value),
            value => Err(format!("{name} is {value}, below {at_least}")),
        }
    })
    .await
}

/// Waits until the daemon has reconciled the folder `n` more times.
async fn wait_scans(daemon: &Daemon, n: u32) {
    let now = metric(daemon, RECONCILES).await;
    wait_metric(daemon, RECONCILES, now + f64::from(n)).await;
}

/// Waits until `GET path` answers `code`; returns its body.
async fn wait_code(daemon: &Daemon, path: &str, code: u16) -> Value {
    eventually(path, UP, || async {
        match daemon.get(path).await {
            (now, body) if now == code => Ok(body),
            (now, body) => Err(format!("{path} answers {now}: {body}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_and_backup_files_are_ignored() {
    let daemon = Daemon::start(&[("dev", demo())]).await;
    daemon.wait_status("dev", "running", UP).await;
    std::fs::write(daemon.workspaces().join(".dev.json.swp"), "not json").unwrap();
    std::fs::write(daemon.workspaces().join("dev.json~"), "not json").unwrap();
    wait_scans(&daemon, 3).await;
    let (_, list) = daemon.get("/api/workspaces").await;
    assert_eq!(list["workspaces"].as_array().unwrap().len(), 1, "{list}");
    let dev = daemon.status("dev").await;
    assert!(dev["configError"].is_null());
    assert_eq!(dev["restartCount"], 0);
    daemon.stop().await;
}
