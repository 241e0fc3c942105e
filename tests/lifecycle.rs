//! On-demand start and idle stop (docs/reference.md §11), with real
//! children (the demo server, a Python SDK server) and real clients (the
//! Python SDK, rmcp, raw HTTP).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The demo server, started by its first request.
fn on_demand() -> Value {
    let mut config = demo();
    config["lifecycle"] = json!({"start": "on-demand"});
    config
}

/// The demo server, stopped after 2 s without clients.
fn idling() -> Value {
    let mut config = demo();
    config["lifecycle"] = json!({"idleStop": "2s"});
    config
}

fn mcp_url(daemon: &Daemon, name: &str) -> String {
    format!("{}/workspaces/{name}/mcp", daemon.url)
}

/// Waits until the workspace is stopped for `reason`.
async fn wait_stopped(daemon: &Daemon, name: &str, reason: &str, within: Duration) -> Value {
    daemon.wait_for(name, within, |s| s["status"] == "stopped" && s["reason"] == reason).await
}

/// Watches the workspace for `within`; panics if it leaves `status`.
async fn stays(daemon: &Daemon, name: &str, status: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let now = daemon.status(name).await;
        assert_eq!(now["status"], status, "{now:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_on_demand_workspace_waits_stopped_with_its_port_and_a_python_sdk_call_starts_it() {
    let daemon = Daemon::start(&[("lazy", on_demand())]).await;
    let waiting = wait_stopped(&daemon, "lazy", "on-demand", Duration::from_secs(10)).await;
    assert!(waiting["port"].is_u64(), "the port is allocated at daemon start: {waiting:#}");
    assert!(waiting["pid"].is_null(), "{waiting:#}");
    assert!(processes_of("lazy").is_empty(), "no child before the first request");
    let table = tokio::process::Command::new(MCPVISOR).args(["status", "--url", &daemon.url]).output().await.unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let row = table.lines().find(|l| l.starts_with("lazy ")).unwrap_or_default();
    assert!(row.contains("stopped") && row.contains("on-demand: starts with the first request"), "{table}");

    let answer = python_call(&mcp_url(&daemon, "lazy"), "streamable-http", "echo", json!({"text": "woken"})).await;
    assert_eq!(answer["result"], "woken", "{answer}");
    let running = daemon.status("lazy").await;
    assert_eq!((&running["status"], &running["port"]), (&json!("running"), &waiting["port"]), "{running:#}");
    assert_eq!(running["restartCount"], 0, "the first start is no restart: {running:#}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_first_calls_start_exactly_one_child() {
    let daemon = Daemon::start(&[("lazy", on_demand())]).await;
    wait_stopped(&daemon, "lazy", "on-demand", Duration::from_secs(10)).await;
    let mut events = daemon.events("/api/workspaces/lazy/events", 1).await;

    let url = mcp_url(&daemon, "lazy");
    let calls = (0..10).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { rmcp_call(&url, "pid", json!({})).await })
    });
    let pids: Vec<String> = futures::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
    assert!(pids.iter().all(|pid| *pid == pids[0]), "every call reached one child: {pids:?}");

    let status = daemon.status("lazy").await;
    assert_eq!(status["pid"].to_string(), pids[0], "{status:#}");
    assert_eq!(status["restartCount"], 0, "{status:#}");
    let seen = events.take(2, Duration::from_secs(10)).await;
    let moves: Vec<(String, String)> = seen
        .iter()
        .map(|(_, e)| (e["params"]["status"].as_str().unwrap().into(), e["params"]["reason"].as_str().unwrap().into()))
        .collect();
    assert_eq!(moves, [("starting".into(), "demand".into()), ("running".into(), "ready".into())]);
    assert!(events.next(Duration::from_millis(300)).await.is_none(), "one start, nothing after it");
    daemon.stop().await;
}

/// A JSON-RPC `initialize` request, raw.
fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "lifecycle-test", "version": "0"}}})
}

/// POSTs `initialize` and returns the HTTP status and the JSON-RPC error;
/// panics if the answer takes longer than `hang_guard`.
async fn held_error(daemon: &Daemon, name: &str, hang_guard: Duration) -> (u16, Value) {
    let (url, body) = (mcp_url(daemon, name), initialize());
    let post = mcp_post(&daemon.http, &url, None, &body);
    let (status, _, messages) = tokio::time::timeout(hang_guard, post).await.expect("the held request is answered");
    let error = messages.first().map(|m| m["error"].clone()).unwrap_or(Value::Null);
    (status, error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_on_demand_start_answers_the_held_call_with_32000() {
    let lifecycle = json!({"start": "on-demand"});
    let missing = json!({"command": "/nonexistent/mcp-server", "lifecycle": lifecycle});
    let crashing = json!({"command": "sh", "args": ["-c", "echo broken >&2; exit 3"], "lifecycle": lifecycle});
    let mute = json!({"command": "sleep", "args": ["600"], "lifecycle": lifecycle,
        "health": {"startupTimeout": "1s", "timeout": "200ms"}});
    let daemon = Daemon::start(&[("missing", missing), ("crashing", crashing), ("mute", mute)]).await;
    for name in ["missing", "crashing", "mute"] {
        wait_stopped(&daemon, name, "on-demand", Duration::from_secs(10)).await;
    }

    let (status, error) = held_error(&daemon, "missing", Duration::from_secs(30)).await;
    assert_eq!((status, &error["code"]), (503, &json!(-32000)), "{error:#}");
    assert_eq!(error["data"]["status"], "error", "{error:#}");
    assert!(error["data"]["lastError"]["message"].as_str().unwrap().contains("mcp-server"), "{error:#}");

    let (status, error) = held_error(&daemon, "crashing", Duration::from_secs(30)).await;
    assert_eq!((status, &error["code"]), (503, &json!(-32000)), "{error:#}");
    assert_eq!(error["data"]["lastError"]["exitCode"], 3, "{error:#}");

    // A child that never answers: the request is held for startupTimeout at most.
    let (status, error) = held_error(&daemon, "mute", Duration::from_secs(20)).await;
    assert_eq!((status, &error["code"]), (503, &json!(-32000)), "{error:#}");
    // Whichever comes first: the actor's startup timeout, or the proxy's own.
    let timed_out = error["data"]["lastError"]["reason"] == "startup timeout"
        || error["message"].as_str().unwrap().contains("did not start within 1s");
    assert!(timed_out, "{error:#}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_child_stops_with_reason_idle_keeps_its_port_and_the_next_call_starts_it() {
    let daemon = Daemon::start(&[("idler", idling())]).await;
    let running = daemon.wait_status("idler", "running", Duration::from_secs(10)).await;
    let pid = running["pid"].as_u64().unwrap();
    assert_eq!(rmcp_call(&mcp_url(&daemon, "idler"), "pid", json!({})).await, pid.to_string());
    // A call longer than idleStop is activity all along: the child is not stopped under it.
    let slow = rmcp_call(&mcp_url(&daemon, "idler"), "sleep", json!({"ms": 3000})).await;
    assert_eq!(slow, "slept 3000 ms");
    assert_eq!(daemon.status("idler").await["pid"], running["pid"]);

    let idle = wait_stopped(&daemon, "idler", "idle", Duration::from_secs(20)).await;
    wait_gone(pid, Duration::from_secs(10)).await;
    assert_eq!(idle["port"], running["port"], "an idle stop keeps the port: {idle:#}");
    assert!(idle["lastError"].is_null(), "an idle stop is no failure: {idle:#}");
    assert_eq!(idle["breaker"]["failureCount"], 0, "{idle:#}");
    assert!(idle["breaker"]["nextRetryAt"].is_null(), "no restart is scheduled: {idle:#}");

    let answer = python_call(&mcp_url(&daemon, "idler"), "streamable-http", "echo", json!({"text": "again"})).await;
    assert_eq!(answer["result"], "again", "{answer}");
    let woken = daemon.status("idler").await;
    assert_eq!(
        (&woken["status"], &woken["reason"], &woken["port"]),
        (&json!("running"), &json!("ready"), &running["port"])
    );
    assert_ne!(woken["pid"], running["pid"], "a new child: {woken:#}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_sse_stream_keeps_an_idling_child_running() {
    let mut notes = notes("sse");
    notes["lifecycle"] = json!({"idleStop": "2s"});
    let daemon = Daemon::start(&[("notes", notes)]).await;
    let running = daemon.wait_status("notes", "running", Duration::from_secs(30)).await;

    let url = format!("{}/workspaces/notes/sse", daemon.url);
    let stream = daemon.http.get(&url).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(stream.status(), 200);
    // Two and a half idle periods with the stream open and no request.
    stays(&daemon, "notes", "running", Duration::from_secs(5)).await;
    assert_eq!(daemon.status("notes").await["pid"], running["pid"]);

    drop(stream);
    wait_stopped(&daemon, "notes", "idle", Duration::from_secs(20)).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_on_demand_workspace_stays_stopped_until_a_request_or_a_start() {
    let mut eager = idling();
    eager["lifecycle"]["idleStop"] = json!("1h");
    let daemon = Daemon::start(&[("lazy", on_demand()), ("eager", eager)]).await;
    wait_stopped(&daemon, "lazy", "on-demand", Duration::from_secs(10)).await;
    let url = mcp_url(&daemon, "lazy");
    let first = rmcp_call(&url, "pid", json!({})).await;

    let (code, _) = daemon.post("/api/workspaces/lazy/stop").await;
    assert_eq!(code, 202);
    wait_stopped(&daemon, "lazy", "stop", Duration::from_secs(10)).await;
    stays(&daemon, "lazy", "stopped", Duration::from_secs(1)).await;
    let second = rmcp_call(&url, "pid", json!({})).await;
    assert_ne!(first, second, "the request started a new child");

    daemon.post("/api/workspaces/lazy/stop").await;
    wait_stopped(&daemon, "lazy", "stop", Duration::from_secs(10)).await;
    let (code, _) = daemon.post("/api/workspaces/lazy/start").await;
    assert_eq!(code, 202);
    daemon.wait_status("lazy", "running", Duration::from_secs(10)).await;

    // An eager workspace stopped by hand is not started by a request.
    daemon.wait_status("eager", "running", Duration::from_secs(10)).await;
    daemon.post("/api/workspaces/eager/stop").await;
    wait_stopped(&daemon, "eager", "stop", Duration::from_secs(10)).await;
    let (status, error) = held_error(&daemon, "eager", Duration::from_secs(5)).await;
    assert_eq!((status, &error["data"]["status"]), (503, &json!("stopped")), "{error:#}");
    assert_eq!(daemon.status("eager").await["status"], "stopped");
    daemon.stop().await;
}
