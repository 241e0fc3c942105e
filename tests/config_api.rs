//! Config through the API with real children (docs/reference.md §10): PUT,
//! PATCH, DELETE, health-gated apply with rollback (for API writes and hand
//! edits alike), the git history and rollbacks to a revision.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const UP: Duration = Duration::from_secs(20);

/// A config whose child says why on stderr and exits at once.
fn failing() -> Value {
    json!({"command": "/bin/sh", "args": ["-c", "echo boom: no such database >&2; exit 3"],
           "health": {"startupTimeout": "5s"}})
}

fn demo_with_env(value: &str) -> Value {
    let mut ws = demo();
    ws["env"] = json!({"WHICH": value});
    ws
}

struct Answer {
    code: u16,
    body: Value,
    etag: Option<String>,
}

async fn send(
    daemon: &Daemon,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
    if_match: Option<&str>,
) -> Answer {
    let mut request = daemon.http.request(method, format!("{}{path}", daemon.url));
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body);
    }
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    let response = request.send().await.unwrap();
    let code = response.status().as_u16();
    let etag = response.headers().get("etag").map(|v| v.to_str().unwrap().to_string());
    let body = response.json().await.unwrap_or(Value::Null);
    Answer { code, body, etag }
}

async fn put(daemon: &Daemon, name: &str, body: &Value) -> Answer {
    let path = format!("/api/workspaces/{name}/config");
    send(daemon, reqwest::Method::PUT, &path, Some(body.to_string().into_bytes()), None).await
}

async fn history(daemon: &Daemon, name: &str, at_least: usize) -> Vec<Value> {
    eventually(format!("{at_least} history entries of {name}"), UP, || async {
        let (code, body) = daemon.get(&format!("/api/workspaces/{name}/history")).await;
        let entries = body["history"].as_array().cloned().unwrap_or_default();
        if code == 200 && entries.len() >= at_least {
            Ok(entries)
        } else {
            Err(format!("({code}) {body}"))
        }
    })
    .await
}

fn results(entries: &[Value]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| (e["source"].as_str().unwrap().to_string(), e["result"].as_str().unwrap().to_string()))
        .collect()
}

fn file(daemon: &Daemon, name: &str) -> Option<Value> {
    let text = std::fs::read(daemon.workspaces().join(format!("{name}.json"))).ok()?;
    Some(serde_json::from_slice(&text).unwrap())
}

fn git_log(daemon: &Daemon) -> Vec<String> {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(daemon.state().join("history"))
        .args(["log", "--format=%s"])
        .output()
        .unwrap();
    assert!(output.status.success(), "git log: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_of_a_new_workspace_answers_running_writes_the_file_and_commits_applied() {
    let daemon = Daemon::start(&[]).await;
    let answer = put(&daemon, "fresh", &demo()).await;
    assert_eq!(answer.code, 200, "{}", answer.body);
    assert_eq!(answer.body["status"], "running");
    assert_eq!(answer.body["appliedVersion"], answer.body["configVersion"]);
    assert_eq!(
        answer.etag.as_deref(),
        Some(format!("\"{}\"", answer.body["configVersion"].as_str().unwrap()).as_str())
    );
    assert_eq!(file(&daemon, "fresh"), Some(demo()));

    let got = send(&daemon, reqwest::Method::GET, "/api/workspaces/fresh/config", None, None).await;
    assert_eq!(got.code, 200);
    assert_eq!(got.body, demo());
    assert_eq!(got.etag, answer.etag);

    let entries = history(&daemon, "fresh", 1).await;
    assert_eq!(results(&entries), [("api".to_string(), "applied".to_string())]);
    assert_eq!(entries[0]["configVersion"], answer.body["configVersion"]);
    assert_eq!(git_log(&daemon).len(), 1, "one commit in state/history");
    daemon.stop().await;
}

/// Four free ports below the kernel's ephemeral range (32768 and up), so no
/// outgoing connection of a parallel test can take the workspace's port
/// between its children and make the allocator move it.
fn quiet_range() -> (u16, u16) {
    let start = 21000 + (std::process::id() % 2000) as u16 * 5;
    (start..32000)
        .step_by(5)
        .find(|&lo| (lo..lo + 4).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()))
        .map(|lo| (lo, lo + 3))
        .expect("four free ports below 32000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_of_a_config_that_exits_at_once_rolls_back_to_the_old_child_and_file() {
    let range = quiet_range();
    let daemon = Daemon::start_with(&[("roll", demo())], |c| c.port_range = range.0..=range.1).await;
    let before = daemon.wait_status("roll", "running", UP).await;

    let answer = put(&daemon, "roll", &failing()).await;
    assert_eq!(answer.code, 409, "{}", answer.body);
    assert_eq!(answer.body["code"], "rolled_back");
    let message = answer.body["error"].as_str().unwrap();
    assert!(message.contains("rolled back") && message.contains("exited with code 3"), "{message}");
    let status = &answer.body["status"];
    assert_eq!(status["status"], "running", "the old child is back: {status}");
    assert_eq!(status["port"], before["port"], "on the same port");
    assert_eq!(status["configVersion"], before["configVersion"], "with the old config");
    assert_ne!(status["pid"], before["pid"]);
    let last_error = &status["lastError"];
    assert!(last_error["stderrTail"].to_string().contains("boom: no such database"), "{last_error}");
    assert_eq!(file(&daemon, "roll"), Some(demo()), "the file has its old content");

    let entries = history(&daemon, "roll", 2).await;
    assert_eq!(results(&entries)[0], ("api".to_string(), "rolled-back".to_string()));
    // The old config keeps running; nothing reapplies the failed one.
    let after = daemon.wait_for("roll", UP, |s| s["configError"].is_null()).await;
    assert_eq!(after["pid"], status["pid"]);
    assert_eq!(after["fileVersion"], before["configVersion"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_that_fails_runs_the_last_good_config_and_keeps_the_file_until_fixed() {
    let daemon = Daemon::start(&[("hand", demo())]).await;
    let before = daemon.wait_status("hand", "running", UP).await;

    daemon.write("hand", &failing());
    let rolled = daemon.wait_for("hand", UP, |s| s["status"] == "running" && !s["configError"].is_null()).await;
    assert_eq!(rolled["configVersion"], before["configVersion"], "the last good config runs");
    assert_eq!(rolled["appliedVersion"], before["configVersion"]);
    assert_ne!(rolled["fileVersion"], before["configVersion"], "the status names the file's version too");
    assert_eq!(rolled["port"], before["port"]);
    let error = rolled["configError"].to_string();
    assert!(error.contains("rolled back") && error.contains("boom: no such database"), "{error}");
    assert_eq!(file(&daemon, "hand"), Some(failing()), "a hand-edited file is never overwritten");
    let entries = history(&daemon, "hand", 2).await;
    assert_eq!(results(&entries)[0], ("file".to_string(), "rolled-back".to_string()));

    // A fix of the file applies and clears the error.
    daemon.write("hand", &demo_with_env("fixed"));
    let fixed = daemon
        .wait_for("hand", UP, |s| s["status"] == "running" && s["configError"].is_null() && s["pid"] != rolled["pid"])
        .await;
    assert_eq!(fixed["appliedVersion"], fixed["fileVersion"]);
    assert_eq!(fixed["configVersion"], fixed["fileVersion"]);
    let entries = history(&daemon, "hand", 3).await;
    assert_eq!(results(&entries)[0], ("file".to_string(), "applied".to_string()));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_match_is_412_patch_changes_one_key_and_delete_frees_the_port() {
    let daemon = Daemon::start(&[("keys", demo())]).await;
    let before = daemon.wait_status("keys", "running", UP).await;
    let path = "/api/workspaces/keys/config";

    let (code, body) = daemon.get("/api/workspaces/..%2F..%2Fetc%2Fpasswd/config").await;
    assert_eq!(code, 400, "never a path outside the folder: {body}");
    let (code, body) = daemon.get("/api/workspaces/..%2Fx/history").await;
    assert_eq!((code, &body["history"]), (200, &json!([])), "{body}");

    let stale =
        send(&daemon, reqwest::Method::PUT, path, Some(demo_with_env("x").to_string().into()), Some("\"sha256:old\""))
            .await;
    assert_eq!(stale.code, 412, "{}", stale.body);
    assert_eq!(file(&daemon, "keys"), Some(demo()), "nothing changed");
    assert_eq!(daemon.status("keys").await["pid"], before["pid"]);

    let tag = format!("\"{}\"", before["configVersion"].as_str().unwrap());
    let patch = json!({"env": {"PATCHED": "1"}}).to_string().into_bytes();
    let patched = send(&daemon, reqwest::Method::PATCH, path, Some(patch), Some(&tag)).await;
    assert_eq!(patched.code, 200, "{}", patched.body);
    let mut expected = demo();
    expected["env"] = json!({"PATCHED": "1"});
    assert_eq!(file(&daemon, "keys"), Some(expected), "one key changed, the rest kept");
    assert_eq!(patched.body["status"], "running");

    let invalid = put(&daemon, "keys", &json!({"comand": "x", "health": {"interval": "soon"}})).await;
    assert_eq!(invalid.code, 422, "{}", invalid.body);
    assert!(invalid.body["errors"].as_array().unwrap().len() >= 3, "every error: {}", invalid.body);
    assert!(invalid.body["error"].as_str().unwrap().contains("/health/interval"), "{}", invalid.body);

    let port = patched.body["port"].as_u64().unwrap();
    let deleted = send(&daemon, reqwest::Method::DELETE, path, None, None).await;
    assert_eq!(deleted.code, 200, "{}", deleted.body);
    assert!(file(&daemon, "keys").is_none());
    let (code, _) = daemon.get("/api/workspaces/keys").await;
    assert_eq!(code, 404);
    let ports: Value = serde_json::from_slice(&std::fs::read(daemon.state().join("ports.json")).unwrap()).unwrap();
    assert!(ports["allocations"].get("keys").is_none(), "the port is released: {ports}");
    std::net::TcpListener::bind(("127.0.0.1", port as u16)).expect("the port is free");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_an_earlier_revision_restores_and_runs_it() {
    let daemon = Daemon::start(&[]).await;
    let first = put(&daemon, "revs", &demo_with_env("one")).await;
    assert_eq!(first.code, 200, "{}", first.body);
    let second = put(&daemon, "revs", &demo_with_env("two")).await;
    assert_eq!(second.code, 200, "{}", second.body);
    let entries = history(&daemon, "revs", 2).await;
    let old_rev = entries[1]["rev"].as_str().unwrap().to_string();
    assert_eq!(entries[1]["configVersion"], first.body["configVersion"]);

    let (code, content) = daemon.get(&format!("/api/workspaces/revs/history/{old_rev}")).await;
    assert_eq!((code, content), (200, demo_with_env("one")));

    let path = "/api/workspaces/revs/rollback";
    let body = json!({"to": old_rev}).to_string().into_bytes();
    let back = send(&daemon, reqwest::Method::POST, path, Some(body), None).await;
    assert_eq!(back.code, 200, "{}", back.body);
    assert_eq!(back.body["configVersion"], first.body["configVersion"]);
    assert_eq!(back.body["status"], "running");
    assert_eq!(file(&daemon, "revs"), Some(demo_with_env("one")));

    // Without `to`: the previous applied config, here the second one.
    let again = send(&daemon, reqwest::Method::POST, path, None, None).await;
    assert_eq!(again.code, 200, "{}", again.body);
    assert_eq!(again.body["configVersion"], second.body["configVersion"]);

    let entries = history(&daemon, "revs", 4).await;
    let log = git_log(&daemon);
    assert_eq!(log.len(), entries.len(), "git log in state/history agrees: {log:?}");
    assert!(log[0].starts_with("revs: applied (api)"), "{log:?}");
    let (code, _) = daemon.get("/api/workspaces/revs/history/0123456789").await;
    assert_eq!(code, 404);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_puts_leave_one_child_and_agree() {
    let daemon = Daemon::start(&[("busy", demo())]).await;
    daemon.wait_status("busy", "running", UP).await;
    let puts = (0..20).map(|i| {
        let daemon = &daemon;
        async move { put(daemon, "busy", &demo_with_env(&i.to_string())).await }
    });
    let answers = futures::future::join_all(puts).await;
    for answer in &answers {
        assert_eq!(answer.code, 200, "each write is applied in turn: {}", answer.body);
    }
    let status = daemon.wait_status("busy", "running", UP).await;
    let on_disk = file(&daemon, "busy").unwrap();
    let last =
        answers.iter().find(|a| a.body["configVersion"] == status["configVersion"]).expect("the last write runs");
    assert_eq!(status["fileVersion"], status["configVersion"]);
    assert_eq!(last.body["configVersion"], status["appliedVersion"]);
    let got = send(&daemon, reqwest::Method::GET, "/api/workspaces/busy/config", None, None).await;
    assert_eq!(got.body, on_disk);
    assert_eq!(got.etag.unwrap().trim_matches('"'), status["configVersion"].as_str().unwrap());
    assert_eq!(processes_of("busy"), [status["pid"].as_u64().unwrap()], "one child");
    let entries = history(&daemon, "busy", 21).await;
    assert_eq!(entries.len(), 21, "the first file, then each write");
    assert_eq!(entries[0]["configVersion"], status["configVersion"], "the newest commit is what runs");
    assert!(entries.iter().all(|e| e["result"] == "applied"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_false_answers_202_at_once_and_the_write_still_applies() {
    let daemon = Daemon::start(&[]).await;
    let path = "/api/workspaces/later/config?wait=false";
    let answer = send(&daemon, reqwest::Method::PUT, path, Some(demo().to_string().into_bytes()), None).await;
    assert_eq!(answer.code, 202, "{}", answer.body);
    let version = answer.etag.expect("the new version").trim_matches('"').to_string();
    let running = daemon.wait_status("later", "running", UP).await;
    assert_eq!(running["appliedVersion"], version.as_str());
    daemon.stop().await;
}
