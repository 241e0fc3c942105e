//! Invalid workspace files: `validate` names every error, `serve` shows
//! `configError`, and valid workspaces run regardless.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn validate_names_line_and_column_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok.json"), r#"{"command": "x"}"#).unwrap();
    std::fs::write(dir.path().join("bad.json"), "{\n  \"command\": \"x\",\n  oops\n}").unwrap();
    std::fs::write(dir.path().join("keys.json"), r#"{"command": "x", "comand": 1, "args": ["${NOPE}"]}"#).unwrap();
    std::fs::write(dir.path().join(".bad.json.swp"), "garbage").unwrap();
    std::fs::write(dir.path().join("bad.json~"), "garbage").unwrap();
    let out = Command::new(MCPVISOR).arg("validate").arg(dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("bad.json:3:3: key must be a string"), "{text}");
    assert!(text.contains("keys.json: /comand: unknown key \"comand\""), "{text}");
    assert!(text.contains("keys.json: /args/0: unknown template ${NOPE}"), "{text}");
    assert!(text.contains("2 of 3 invalid"), "swap and backup files are ignored: {text}");

    let ok = Command::new(MCPVISOR).arg("validate").arg(dir.path().join("ok.json")).output().unwrap();
    assert_eq!(ok.status.code(), Some(0));
}

#[test]
fn shipped_workspace_files_are_valid() {
    for dir in ["workspaces", "examples/workspaces"] {
        let out = Command::new(MCPVISOR).arg("validate").arg(repo().join(dir)).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{dir}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_shows_config_error_while_others_run() {
    let daemon = Daemon::start(&[("good", demo())]).await;
    std::fs::write(daemon.workspaces().join("broken.json"), r#"{"command": "x", "bogus": true}"#).unwrap();
    daemon.wait_status("good", "running", Duration::from_secs(20)).await;
    let broken = daemon.wait_for("broken", Duration::from_secs(10), |s| !s["configError"].is_null()).await;
    assert_eq!(broken["status"], "error");
    assert_eq!(broken["configError"]["errors"][0]["at"], "/bogus");
    assert_eq!(broken["pid"], serde_json::Value::Null);
    let (code, list) = daemon.get("/api/workspaces").await;
    assert_eq!(code, 200);
    let names: Vec<&str> =
        list["workspaces"].as_array().unwrap().iter().map(|w| w["workspace"].as_str().unwrap()).collect();
    assert_eq!(names, ["broken", "good"], "sorted by name");
    let _ = json!(null);
    daemon.stop().await;
}
