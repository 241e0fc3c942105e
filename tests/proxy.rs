//! The MCP proxy (docs/reference.md §8): real clients through `/workspaces/{name}/mcp`
//! and `/sse` to real children, and the promise never to hang.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::time::Instant;

const READY: Duration = Duration::from_secs(20);

fn mcp_url(daemon: &Daemon, name: &str) -> String {
    format!("{}/workspaces/{name}/mcp", daemon.url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rmcp_clients_reach_a_python_child() {
    let daemon = Daemon::start(&[("notes", notes("streamable-http"))]).await;
    daemon.wait_status("notes", "running", READY).await;
    let url = mcp_url(&daemon, "notes");

    let stateless =
        python_client(&["--url", &url, "--mode", "auto", "--tool", "add", "--args", r#"{"a":2,"b":3}"#]).await;
    assert_eq!(stateless["protocolVersion"], "2026-07-28", "{stateless}");
    assert_eq!(stateless["result"], "5");
    assert!(stateless["tools"].as_array().unwrap().contains(&json!("add_note")));

    let legacy = python_client(&["--url", &url, "--mode", "legacy"]).await;
    assert_eq!(legacy["result"], "hello");

    assert_eq!(rmcp_call(&url, "echo", json!({"text": "through mcpvisor"})).await, "through mcpvisor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rmcp_clients_reach_the_demo_server() {
    let daemon = Daemon::start(&[("demo", demo())]).await;
    daemon.wait_status("demo", "running", READY).await;
    let url = mcp_url(&daemon, "demo");

    let auto = python_client(&["--url", &url, "--mode", "auto", "--tool", "add", "--args", r#"{"a":40,"b":2}"#]).await;
    assert_eq!(auto["result"], "42", "{auto}");
    assert!(auto["tools"].as_array().unwrap().contains(&json!("sleep")));
    assert_eq!(rmcp_call(&url, "echo", json!({"text": "hi"})).await, "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_clients_reach_a_python_child_and_see_restarts() {
    let daemon = Daemon::start(&[("legacy", notes("sse"))]).await;
    daemon.wait_status("legacy", "running", READY).await;
    let sse_url = format!("{}/workspaces/legacy/sse", daemon.url);

    let out =
        python_client(&["--url", &sse_url, "--transport", "sse", "--tool", "add", "--args", r#"{"a":1,"b":1}"#]).await;
    assert_eq!(out["result"], "2", "{out}");
    assert!(out["tools"].as_array().unwrap().contains(&json!("list_notes")));

    // A raw stream: the endpoint is rewritten, then a restart shows up on it.
    let seen =
        legacy_stream_sees_a_restart(&daemon, &sse_url, "legacy", "/workspaces/legacy/messages?session_id=").await;
    assert_eq!(seen["params"]["workspace"], "legacy");
    assert_eq!(seen["params"]["status"], "stopping");

    // The restarted child serves new streams.
    daemon.wait_status("legacy", "running", READY).await;
    let out = python_client(&["--url", &sse_url, "--transport", "sse"]).await;
    assert_eq!(out["result"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_workspace_answers_at_once() {
    let mut off = demo();
    off["enabled"] = json!(false);
    let daemon = Daemon::start(&[("off", off)]).await;
    daemon.wait_status("off", "stopped", READY).await;
    let url = mcp_url(&daemon, "off");
    let _ = mcp_post(&daemon.http, &url, None, &json!({"jsonrpc": "2.0", "id": "warm", "method": "ping"})).await;

    let started = Instant::now();
    let (status, _, messages) =
        mcp_post(&daemon.http, &url, None, &json!({"jsonrpc": "2.0", "id": 41, "method": "tools/list"})).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(100), "took {took:?}");
    assert_eq!(status, 503);
    let error = &messages[0];
    assert_eq!(error["id"], 41);
    assert_eq!(error["error"]["code"], -32000);
    assert_eq!(error["error"]["message"], "workspace \"off\" is stopped");
    assert_eq!(error["error"]["data"]["status"], "stopped");
    assert!(error["error"]["data"]["stderrTail"].is_array());

    let (status, _, messages) =
        mcp_post(&daemon.http, &mcp_url(&daemon, "nope"), None, &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            .await;
    assert_eq!(status, 404);
    assert_eq!(messages[0]["id"], 1);
    assert_eq!(messages[0]["error"]["code"], -32000);

    let sse = daemon.http.get(format!("{}/workspaces/off/sse", daemon.url)).send().await.unwrap();
    assert_eq!(sse.status(), 503, "a streamable-http workspace has a legacy endpoint too, answering at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_child_answers_its_pending_call_within_100ms() {
    let daemon = Daemon::start(&[("demo", demo())]).await;
    let status = daemon.wait_status("demo", "running", READY).await;
    let pid = status["pid"].as_u64().unwrap();
    let url = mcp_url(&daemon, "demo");
    let session = mcp_initialize(&daemon.http, &url).await;

    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 10000}}});
    let http = daemon.http.clone();
    let (url2, session2) = (url.clone(), session.clone());
    let pending = tokio::spawn(async move {
        let answer = mcp_post(&http, &url2, session2.as_deref(), &call).await;
        (answer, Instant::now())
    });

    // The call is listed as pending in the debug view before the kill.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, connections) = daemon.get("/api/debug/state/connections").await;
        let streams = connections["proxyStreams"].as_array().cloned().unwrap_or_default();
        let listed = streams.iter().any(|s| {
            s["pending"].as_array().is_some_and(|p| p.iter().any(|p| p["method"] == "tools/call" && p["id"] == 7))
        });
        if listed {
            let sessions = connections["proxySessions"].as_array().unwrap();
            assert!(
                sessions
                    .iter()
                    .any(|s| s["workspace"] == "demo" && s["pending"].as_array().is_some_and(|p| !p.is_empty())),
                "{connections:#}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the call never showed as pending: {connections:#}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let ((status, _, messages), answered) =
        tokio::time::timeout(Duration::from_secs(5), pending).await.expect("answered").unwrap();
    let took = answered.saturating_duration_since(killed);
    assert!(took < Duration::from_millis(100), "answered {took:?} after the kill");
    // Killed after the child's SSE answer started: 200 and an error event in
    // the stream. Killed just before: an immediate JSON-RPC error, 503 once
    // the actor has published the exit, else 502 "broke off". Every form
    // answers the call in time, with code -32000.
    assert!(matches!(status, 200 | 502 | 503), "status {status}");
    let error = messages.iter().find(|m| m["id"] == 7).expect("an answer for id 7");
    assert_eq!(error["error"]["code"], -32000, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().starts_with("workspace \"demo\""), "{error}");

    // The restarted child serves new clients.
    daemon.wait_for("demo", READY, |s| s["status"] == "running" && s["pid"].as_u64() != Some(pid)).await;
    assert_eq!(rmcp_call(&url, "echo", json!({"text": "back"})).await, "back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_hosts_and_origins_are_refused() {
    let daemon = Daemon::start(&[("demo", demo())]).await;
    let url = mcp_url(&daemon, "demo");
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();
    let forged_host = daemon.http.post(&url).header("host", "evil.example:80").body(ping.clone()).send().await.unwrap();
    assert_eq!(forged_host.status(), 403);
    let forged_origin =
        daemon.http.post(&url).header("origin", "http://evil.example").body(ping.clone()).send().await.unwrap();
    assert_eq!(forged_origin.status(), 403);
    let sse = daemon
        .http
        .get(format!("{}/workspaces/demo/sse", daemon.url))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_affect_no_one_else() {
    let daemon = Daemon::start(&[("demo", demo())]).await;
    daemon.wait_status("demo", "running", READY).await;
    let url = mcp_url(&daemon, "demo");
    let session = mcp_initialize(&daemon.http, &url).await;

    let huge = vec![b' '; (4 << 20) + 1];
    let response = daemon.http.post(&url).header("content-type", "application/json").body(huge).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32600);

    let response = daemon
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session.as_deref().unwrap_or(""))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "the child's own answer: {}", response.status());

    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "still here"}}});
    let (status, _, messages) = mcp_post(&daemon.http, &url, session.as_deref(), &call).await;
    assert_eq!(status, 200);
    assert_eq!(messages.last().unwrap()["result"]["content"][0]["text"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_clients_all_succeed() {
    let daemon = Daemon::start(&[("demo", demo())]).await;
    daemon.wait_status("demo", "running", READY).await;
    let url = mcp_url(&daemon, "demo");
    let clients = (0..100).map(|i| {
        let url = url.clone();
        tokio::spawn(async move { (i, rmcp_call(&url, "echo", json!({"text": format!("client {i}")})).await) })
    });
    for (i, text) in futures::future::join_all(clients).await.into_iter().map(Result::unwrap) {
        assert_eq!(text, format!("client {i}"));
    }
}
