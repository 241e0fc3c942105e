//! The CLI of docs/reference.md §10 against a real daemon: `apply`, `edit`,
//! `history`, `diff`, `rollback`, `rm`, and `doctor` with its exit codes
//! (each system check is provoked in `src/doctor.rs`; here through the
//! daemon's own beliefs).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const UP: Duration = Duration::from_secs(20);

/// Runs `mcpvisor ARGS --url URL` with `env`; returns the exit code and stdout + stderr.
async fn mcpvisor(daemon: &Daemon, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = tokio::process::Command::new(MCPVISOR)
        .args(args)
        .args(["--url", &daemon.url])
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

fn demo_with_env(value: &str) -> Value {
    let mut ws = demo();
    ws["env"] = json!({"WHICH": value});
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_edit_history_diff_rollback_and_rm() {
    let daemon = Daemon::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("anything.json");
    write_file(&file, &demo_with_env("one"));
    let path = file.to_string_lossy().to_string();

    let (code, out) = mcpvisor(&daemon, &["apply", &path, "--name", "clied"], &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("clied: applied sha256:") && out.contains("running"), "{out}");

    let broken = dir.path().join("broken.json");
    write_file(&broken, &json!({"command": "/bin/sh", "args": ["-c", "exit 4"]}));
    let (code, out) = mcpvisor(&daemon, &["apply", &broken.to_string_lossy(), "--name", "clied"], &[]).await;
    assert_eq!(code, 1, "a rolled-back apply fails: {out}");
    assert!(out.contains("rolled back") && out.contains("HTTP 409"), "{out}");
    let invalid = dir.path().join("invalid.json");
    write_file(&invalid, &json!({"comand": "x"}));
    let (code, out) = mcpvisor(&daemon, &["apply", &invalid.to_string_lossy(), "--name", "clied"], &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown field `comand`") && out.contains("HTTP 422"), "{out}");

    // `edit` runs the editor on the stored file, then applies it.
    let editor = "sed -i s/one/two/";
    let (code, out) = mcpvisor(&daemon, &["edit", "clied"], &[("EDITOR", editor), ("VISUAL", "")]).await;
    assert_eq!(code, 0, "{out}");
    let status = daemon.wait_status("clied", "running", UP).await;
    assert!(std::fs::read_to_string(daemon.workspaces().join("clied.json")).unwrap().contains("two"));

    let (_, out) = eventually("four history lines", UP, || async {
        let (code, out) = mcpvisor(&daemon, &["history", "clied"], &[]).await;
        if out.lines().count() >= 5 {
            Ok((code, out))
        } else {
            Err(out)
        }
    })
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("REV"), "{out}");
    assert!(lines[1].contains("api") && lines[1].contains("applied"), "{out}");
    assert!(out.contains("rolled-back") && out.contains("invalid"), "{out}");
    let first_rev = lines.last().unwrap().split_whitespace().next().unwrap().to_string();

    let (code, out) = mcpvisor(&daemon, &["diff", "clied", &first_rev], &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("-    \"WHICH\": \"one\"") && out.contains("+    \"WHICH\": \"two\""), "{out}");

    let (code, out) = mcpvisor(&daemon, &["rollback", "clied", &first_rev], &[]).await;
    assert_eq!(code, 0, "{out}");
    let back = daemon.wait_status("clied", "running", UP).await;
    assert_ne!(back["configVersion"], status["configVersion"]);
    assert!(std::fs::read_to_string(daemon.workspaces().join("clied.json")).unwrap().contains("one"));

    let (code, out) = mcpvisor(&daemon, &["rm", "clied"], &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(!daemon.workspaces().join("clied.json").exists());
    let (code, out) = mcpvisor(&daemon, &["rm", "clied"], &[]).await;
    assert_eq!(code, 1, "{out}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_exits_0_on_a_healthy_daemon_and_1_on_each_error_it_finds() {
    let daemon = Daemon::start(&[("doctored", demo())]).await;
    let running = daemon.wait_status("doctored", "running", UP).await;
    let (code, body) = daemon.get("/api/debug/validate").await;
    assert_eq!((code, &body["ok"]), (200, &json!(true)), "{body}");
    let (code, out) = mcpvisor(&daemon, &["doctor"], &[]).await;
    assert_eq!(code, 0, "{out}");

    // A stopped workspace's port, taken by another process.
    let port = running["port"].as_u64().unwrap() as u16;
    daemon.post("/api/workspaces/doctored/stop").await;
    daemon.wait_status("doctored", "stopped", UP).await;
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    // A process carrying the workspace's name outside any tree.
    let mut orphan = std::process::Command::new("sleep")
        .arg("30")
        .env("MCPVISOR_WORKSPACE", "doctored")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A history git cannot read.
    let history = daemon.state().join("history/.git");
    eventually("the history repository exists", UP, || async {
        if history.join("HEAD").exists() {
            Ok(())
        } else {
            Err("no repository yet".to_string())
        }
    })
    .await;
    std::fs::write(history.join("HEAD"), "garbage").unwrap();

    let (_, body) = daemon.get("/api/debug/validate").await;
    assert_eq!(body["ok"], false, "{body}");
    let issues = body["issues"].as_array().unwrap();
    let found = |component: &str, text: &str| {
        issues.iter().any(|i| i["component"] == component && i["issue"].as_str().unwrap().contains(text))
    };
    assert!(found("ports", "held by another process"), "{body:#}");
    assert!(found("process", &format!("orphan: pid {}", orphan.id())), "{body:#}");
    assert!(found("history", "git cannot read"), "{body:#}");
    assert!(issues.iter().all(|i| i["hint"].as_str().is_some_and(|h| !h.is_empty())), "{body:#}");
    let (code, out) = mcpvisor(&daemon, &["doctor"], &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error: ports doctored: port") && out.contains("hint:"), "{out}");

    orphan.kill().unwrap();
    orphan.wait().unwrap();
    drop(squatter);
    daemon.stop().await;
}
