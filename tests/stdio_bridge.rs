//! The stdio bridge (docs/reference.md §9): real stdio children (the demo
//! server, Python SDK servers) served to real clients over `/mcp` and
//! `/sse`, shared safely between sessions, probed, and failing fast.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::time::Instant;

const READY: Duration = Duration::from_secs(20);

/// The demo server speaking stdio.
fn demo_stdio() -> Value {
    json!({"command": "${MCPVISOR}", "args": ["demo-server", "--transport", "stdio"], "transport": "stdio"})
}

/// The conformance server (Python SDK) speaking stdio: progress, sampling,
/// logging, subscriptions.
fn conformance_stdio() -> Value {
    json!({
        "command": python().to_string_lossy(),
        "args": [repo().join("examples/servers/conformance_server.py").to_string_lossy(), "--transport", "stdio"],
        "transport": "stdio",
    })
}

fn url(daemon: &Daemon, name: &str, route: &str) -> String {
    format!("{}/workspaces/{name}/{route}", daemon.url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_rmcp_and_legacy_clients_call_tools_on_a_stdio_child() {
    let daemon = Daemon::start(&[("demo", demo_stdio()), ("notes", notes("stdio"))]).await;
    daemon.wait_status("demo", "running", READY).await;
    let mcp = url(&daemon, "demo", "mcp");

    let auto = python_client(&["--url", &mcp, "--mode", "auto", "--tool", "add", "--args", r#"{"a":40,"b":2}"#]).await;
    assert_eq!(auto["result"], "42", "{auto}");
    assert!(auto["tools"].as_array().unwrap().contains(&json!("sleep")));
    let legacy = python_client(&["--url", &mcp, "--mode", "legacy"]).await;
    assert_eq!(legacy["result"], "hello", "{legacy}");
    assert_eq!(rmcp_call(&mcp, "echo", json!({"text": "over stdio"})).await, "over stdio");

    let sse = url(&daemon, "demo", "sse");
    let out =
        python_client(&["--url", &sse, "--transport", "sse", "--tool", "add", "--args", r#"{"a":1,"b":1}"#]).await;
    assert_eq!(out["result"], "2", "{out}");

    // A Python SDK stdio server, both routes.
    daemon.wait_status("notes", "running", READY).await;
    let out =
        python_client(&["--url", &url(&daemon, "notes", "mcp"), "--tool", "add", "--args", r#"{"a":2,"b":3}"#]).await;
    assert_eq!(out["result"], "5", "{out}");
    assert!(out["tools"].as_array().unwrap().contains(&json!("add_note")));
    let out = python_client(&["--url", &url(&daemon, "notes", "sse"), "--transport", "sse"]).await;
    assert_eq!(out["result"], "hello", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_gets_its_own_answers_to_the_same_ids() {
    let daemon = Daemon::start(&[("demo", demo_stdio())]).await;
    daemon.wait_status("demo", "running", READY).await;
    let mcp = url(&daemon, "demo", "mcp");
    let a = mcp_initialize(&daemon.http, &mcp).await.expect("a session id");
    let b = mcp_initialize(&daemon.http, &mcp).await.expect("a session id");
    assert_ne!(a, b);

    let calls = |session: String, tag: &'static str| {
        let (http, mcp) = (daemon.http.clone(), mcp.clone());
        tokio::spawn(async move {
            for id in 1..=100 {
                let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": format!("{tag}-{id}")}}});
                let (status, _, messages) = mcp_post(&http, &mcp, Some(&session), &call).await;
                assert_eq!(status, 200, "{messages:?}");
                let answer = messages.iter().find(|m| m["id"] == id).unwrap_or_else(|| panic!("{messages:?}"));
                assert_eq!(answer["result"]["content"][0]["text"], format!("{tag}-{id}"), "{answer}");
            }
        })
    };
    let (first, second) = (calls(a, "a"), calls(b, "b"));
    first.await.unwrap();
    second.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_is_answered_from_the_childs_own_result() {
    let daemon = Daemon::start(&[("demo", demo_stdio())]).await;
    daemon.wait_status("demo", "running", READY).await;
    let mcp = url(&daemon, "demo", "mcp");
    let init = json!({"jsonrpc": "2.0", "id": "i", "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    let (status, session, messages) = mcp_post(&daemon.http, &mcp, None, &init).await;
    assert_eq!(status, 200);
    assert!(session.is_some());
    let result = &messages[0]["result"];
    assert_eq!(result["serverInfo"]["name"], "mcpvisor-demo", "{result}");
    assert!(result["capabilities"]["tools"].is_object(), "{result}");

    // A stateless request needs no session.
    let (status, session, messages) =
        mcp_post(&daemon.http, &mcp, None, &json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"})).await;
    assert_eq!(status, 200);
    assert_eq!(session, None);
    assert!(messages[0]["result"]["tools"].as_array().is_some_and(|t| !t.is_empty()), "{messages:?}");

    // An unknown session is 404, so the client initializes again.
    let (status, _, _) =
        mcp_post(&daemon.http, &mcp, Some("nope"), &json!({"jsonrpc": "2.0", "id": 6, "method": "ping"})).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_stdio_child_fails_the_call_at_once_and_restarts() {
    let daemon = Daemon::start(&[("demo", demo_stdio())]).await;
    let status = daemon.wait_status("demo", "running", READY).await;
    let pid = status["pid"].as_u64().unwrap();
    let mcp = url(&daemon, "demo", "mcp");
    let session = mcp_initialize(&daemon.http, &mcp).await;

    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 10000}}});
    let (http, mcp2, session2) = (daemon.http.clone(), mcp.clone(), session.clone());
    let pending = tokio::spawn(async move {
        let answer = mcp_post(&http, &mcp2, session2.as_deref(), &call).await;
        (answer, Instant::now())
    });
    eventually("the call is pending", Duration::from_secs(5), || async {
        let (_, connections) = daemon.get("/api/debug/state/connections").await;
        let streams = connections["proxyStreams"].as_array().cloned().unwrap_or_default();
        let listed = streams.iter().any(|s| s["pending"].as_array().is_some_and(|p| p.iter().any(|p| p["id"] == 7)));
        if listed {
            Ok(())
        } else {
            Err(connections.to_string())
        }
    })
    .await;

    let killed_at = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let ((status, _, messages), answered_at) = pending.await.unwrap();
    let took = answered_at - killed_at;
    assert!(took < Duration::from_millis(100), "the error took {took:?}");
    assert_eq!(status, 200, "an SSE answer already started");
    let error = messages.iter().find(|m| m["id"] == 7).unwrap_or_else(|| panic!("{messages:?}"));
    assert_eq!(error["error"]["code"], -32000, "{error}");
    assert!(error["error"]["data"]["stderrTail"].is_array(), "{error}");

    let restarted = daemon.wait_for("demo", READY, |s| s["status"] == "running" && s["pid"] != pid).await;
    assert_eq!(restarted["restartCount"], 1);
    assert_eq!(rmcp_call(&mcp, "echo", json!({"text": "again"})).await, "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_stdio_child_is_detected_and_replaced() {
    let mut demo = demo_stdio();
    demo["health"] = json!({"interval": "200ms", "timeout": "200ms", "failureThreshold": 2});
    let daemon = Daemon::start(&[("demo", demo)]).await;
    let status = daemon.wait_status("demo", "running", READY).await;
    let pid = status["pid"].as_u64().unwrap();

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let replaced = daemon.wait_for("demo", READY, |s| s["status"] == "running" && s["pid"] != pid).await;
    let error = &replaced["lastError"];
    assert!(error["message"].as_str().is_some_and(|m| m.contains("unhealthy") || m.contains("probe")), "{error}");
    wait_gone(pid, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_rpc_stdout_lines_are_logged_and_counted() {
    // A shell "server" that prints a banner, then answers like an MCP server
    // would: it is never initialized, but the banner is what is tested.
    let script = r#"echo 'starting up, not JSON'; echo '{"no":"jsonrpc"}'; exec "$0" demo-server --transport stdio"#;
    let daemon = Daemon::start(&[(
        "noisy",
        json!({"command": "/bin/sh", "args": ["-c", script, "${MCPVISOR}"], "transport": "stdio"}),
    )])
    .await;
    daemon.wait_status("noisy", "running", READY).await;
    let (_, logs) = daemon.get("/api/workspaces/noisy/logs?lines=50").await;
    let lines = logs["lines"].as_array().unwrap();
    assert!(lines.iter().any(|l| l["stream"] == "stdout" && l["line"] == "starting up, not JSON"), "{logs}");
    let metrics = daemon.http.get(format!("{}/metrics", daemon.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"mcpvisor_protocol_errors_total{workspace="noisy"} 2"#), "{metrics}");
    assert_eq!(rmcp_call(&url(&daemon, "noisy", "mcp"), "echo", json!({"text": "still works"})).await, "still works");
}

/// An open SSE answer of the bridge, read message by message.
struct Stream {
    events: std::pin::Pin<Box<dyn futures::Stream<Item = Value> + Send>>,
}

impl Stream {
    /// POSTs `body` in `session` and opens its SSE answer.
    async fn post(http: &reqwest::Client, url: &str, session: &str, body: &Value) -> Stream {
        let response = http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-session-id", session)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Stream::of(response)
    }

    /// Opens the session's GET stream.
    async fn get(http: &reqwest::Client, url: &str, session: &str) -> Stream {
        let response =
            http.get(url).header("accept", "text/event-stream").header("mcp-session-id", session).send().await.unwrap();
        assert_eq!(response.status(), 200);
        Stream::of(response)
    }

    fn of(response: reqwest::Response) -> Stream {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let events = response
            .bytes_stream()
            .eventsource()
            .filter_map(|e| async move { e.ok().and_then(|e| serde_json::from_str(&e.data).ok()) });
        Stream { events: Box::pin(events) }
    }

    /// The next message, or `None` after `within`.
    async fn next(&mut self, within: Duration) -> Option<Value> {
        use futures::StreamExt;
        tokio::time::timeout(within, self.events.next()).await.ok().flatten()
    }

    /// Messages until the one answering `id`, inclusive.
    async fn until_answer(&mut self, id: &Value) -> Vec<Value> {
        let mut seen = Vec::new();
        while let Some(message) = self.next(Duration::from_secs(20)).await {
            let done = &message["id"] == id && message.get("method").is_none();
            seen.push(message);
            if done {
                return seen;
            }
        }
        panic!("no answer to {id}; saw {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reaches_only_the_calling_session_and_sampling_round_trips() {
    let daemon = Daemon::start(&[("conf", conformance_stdio())]).await;
    daemon.wait_status("conf", "running", READY).await;
    let mcp = url(&daemon, "conf", "mcp");
    let a = mcp_initialize(&daemon.http, &mcp).await.unwrap();
    let b = mcp_initialize(&daemon.http, &mcp).await.unwrap();
    let mut b_stream = Stream::get(&daemon.http, &mcp, &b).await;

    // Both sessions use the same id and the same progress token.
    let progress = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "tok"}}});
    let mut a_call = Stream::post(&daemon.http, &mcp, &a, &progress).await;
    let seen = a_call.until_answer(&json!(1)).await;
    let notes: Vec<&Value> = seen.iter().filter(|m| m["method"] == "notifications/progress").collect();
    assert_eq!(notes.len(), 3, "{seen:?}");
    assert!(notes.iter().all(|n| n["params"]["progressToken"] == "tok"), "{notes:?}");
    let answer = seen.last().unwrap();
    let seen_by_child = answer["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(seen_by_child.parse::<u64>().is_ok(), "the child sees a token of the hub's: {answer}");
    assert_eq!(b_stream.next(Duration::from_millis(300)).await, None, "session b saw a's progress");

    // Sampling: the child's request reaches the calling client, its answer the child.
    let sampling = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "test_sampling", "arguments": {"prompt": "2+2?"}}});
    let mut b_call = Stream::post(&daemon.http, &mcp, &b, &sampling).await;
    let request = b_call.next(Duration::from_secs(20)).await.expect("a sampling request");
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    let reply = json!({"jsonrpc": "2.0", "id": request["id"], "result": {
        "role": "assistant", "content": {"type": "text", "text": "four"}, "model": "m", "stopReason": "endTurn"}});
    let (status, _, _) = mcp_post(&daemon.http, &mcp, Some(&b), &reply).await;
    assert_eq!(status, 202);
    let seen = b_call.until_answer(&json!(1)).await;
    assert_eq!(seen.last().unwrap()["result"]["content"][0]["text"], "LLM response: four", "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_closed_alone() {
    let daemon = Daemon::start(&[("demo", demo_stdio())]).await;
    daemon.wait_status("demo", "running", READY).await;
    let mcp = url(&daemon, "demo", "mcp");
    let slow = mcp_initialize(&daemon.http, &mcp).await.unwrap();

    // The slow session asks for 48 MiB of answers on one connection with
    // a small receive buffer, and reads none of them.
    let batch: Vec<Value> = (0..48)
        .map(|id| {
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "blob", "arguments": {"kib": 1024}}})
        })
        .collect();
    let body = Value::Array(batch).to_string();
    let addr: std::net::SocketAddr = daemon.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut unread = socket.connect(addr).await.unwrap();
    let request = format!(
        "POST /workspaces/demo/mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\nmcp-session-id: {slow}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut unread, request.as_bytes()).await.unwrap();

    // Another session is served meanwhile, and the slow one is closed.
    eventually("the slow session is closed", Duration::from_secs(20), || async {
        let (status, _, _) =
            mcp_post(&daemon.http, &mcp, Some(&slow), &json!({"jsonrpc": "2.0", "id": "p", "method": "ping"})).await;
        if status == 404 {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    })
    .await;
    assert_eq!(rmcp_call(&mcp, "echo", json!({"text": "others go on"})).await, "others go on");
    drop(unread);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_transport_reaches_each_http_child_transport() {
    let daemon = Daemon::start(&[("demo", demo()), ("legacy", notes("sse"))]).await;
    daemon.wait_status("demo", "running", READY).await;
    daemon.wait_status("legacy", "running", READY).await;

    // A legacy client (MCP Inspector --transport sse) of a Streamable HTTP child.
    let sse = url(&daemon, "demo", "sse");
    let out =
        python_client(&["--url", &sse, "--transport", "sse", "--tool", "add", "--args", r#"{"a":20,"b":22}"#]).await;
    assert_eq!(out["result"], "42", "{out}");
    assert!(out["tools"].as_array().unwrap().contains(&json!("sleep")));

    // Streamable HTTP clients of a legacy child: stateful and stateless.
    let mcp = url(&daemon, "legacy", "mcp");
    let out = python_client(&["--url", &mcp, "--tool", "add", "--args", r#"{"a":1,"b":2}"#]).await;
    assert_eq!(out["result"], "3", "{out}");
    assert!(out["tools"].as_array().unwrap().contains(&json!("list_notes")));
    assert_eq!(rmcp_call(&mcp, "echo", json!({"text": "translated"})).await, "translated");
    let out = python_client(&["--url", &mcp, "--mode", "auto"]).await;
    assert_eq!(out["result"], "hello", "{out}");
}

/// The `pid` tool's answer in `session`.
async fn pid_of(daemon: &Daemon, mcp: &str, session: &str) -> u64 {
    let call =
        json!({"jsonrpc": "2.0", "id": "pid", "method": "tools/call", "params": {"name": "pid", "arguments": {}}});
    let (status, _, messages) = mcp_post(&daemon.http, mcp, Some(session), &call).await;
    assert_eq!(status, 200, "{messages:?}");
    messages[0]["result"]["content"][0]["text"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_session_children_come_and_go_with_their_sessions() {
    let mut demo = demo_stdio();
    demo["stdio"] = json!({"share": "per-session", "maxSessions": 2, "idleTimeout": "1s"});
    let daemon = Daemon::start(&[("solo", demo)]).await;
    let status = daemon.wait_status("solo", "running", READY).await;
    let workspace_pid = status["pid"].as_u64().unwrap();
    let mcp = url(&daemon, "solo", "mcp");

    let a = mcp_initialize(&daemon.http, &mcp).await.unwrap();
    let b = mcp_initialize(&daemon.http, &mcp).await.unwrap();
    let (pid_a, pid_b) = (pid_of(&daemon, &mcp, &a).await, pid_of(&daemon, &mcp, &b).await);
    assert_ne!(pid_a, pid_b, "two sessions, two children");
    assert!(pid_a != workspace_pid && pid_b != workspace_pid);
    assert_eq!(pid_of(&daemon, &mcp, &a).await, pid_a, "a session keeps its child");
    assert!(processes_of("solo").contains(&pid_a));
    let status = daemon.status("solo").await;
    assert_eq!(status["stdio"]["sessions"], 2, "{status}");
    let pids = status["stdio"]["sessionPids"].as_array().unwrap();
    assert!(pids.contains(&json!(pid_a)) && pids.contains(&json!(pid_b)), "{status}");
    let (_, connections) = daemon.get("/api/debug/state/connections").await;
    let listed = connections["proxySessions"].as_array().unwrap().iter().filter(|s| s["workspace"] == "solo").count();
    assert_eq!(listed, 2, "{connections}");

    // One more session than maxSessions: 503 with a JSON-RPC error.
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    let (status, _, messages) = mcp_post(&daemon.http, &mcp, None, &init).await;
    assert_eq!(status, 503, "{messages:?}");
    assert_eq!(messages[0]["error"]["code"], -32000);
    assert!(messages[0]["error"]["message"].as_str().unwrap().contains("maxSessions"), "{messages:?}");

    // Deleting a session stops its child.
    let deleted = daemon.http.delete(&mcp).header("mcp-session-id", &a).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    wait_gone(pid_a, Duration::from_secs(10)).await;

    // An idle session's child stops after idleTimeout; its session is gone.
    wait_gone(pid_b, Duration::from_secs(10)).await;
    let (status, _, _) =
        mcp_post(&daemon.http, &mcp, Some(&b), &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).await;
    assert_eq!(status, 404);

    // Stopping the workspace stops its session children.
    let c = mcp_initialize(&daemon.http, &mcp).await.unwrap();
    let pid_c = pid_of(&daemon, &mcp, &c).await;
    let (code, _) = daemon.post("/api/workspaces/solo/stop").await;
    assert_eq!(code, 202);
    wait_gone(pid_c, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_from_npm_serves_as_a_stdio_workspace() {
    let program = repo().join("node_modules/.bin/mcp-server-everything");
    assert!(program.exists(), "{} is missing: run scripts/test (or scripts/setup-node) first", program.display());
    let daemon =
        Daemon::start(&[("everything", json!({"command": program.to_string_lossy(), "transport": "stdio"}))]).await;
    daemon.wait_status("everything", "running", READY).await;
    let out = python_client(&[
        "--url",
        &url(&daemon, "everything", "mcp"),
        "--tool",
        "echo",
        "--args",
        r#"{"message":"from npm"}"#,
    ])
    .await;
    assert!(out["tools"].as_array().unwrap().len() > 3, "{out}");
    assert!(out["result"].as_str().is_some_and(|r| r.contains("from npm")), "{out}");
    let out = python_client(&[
        "--url",
        &url(&daemon, "everything", "sse"),
        "--transport",
        "sse",
        "--tool",
        "echo",
        "--args",
        r#"{"message":"legacy"}"#,
    ])
    .await;
    assert!(out["result"].as_str().is_some_and(|r| r.contains("legacy")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_legacy_stream_carries_the_workspaces_status_changes() {
    let daemon = Daemon::start(&[("demo", demo_stdio())]).await;
    daemon.wait_status("demo", "running", READY).await;
    let prefix = "/workspaces/demo/messages?session_id=";
    let seen = legacy_stream_sees_a_restart(&daemon, &url(&daemon, "demo", "sse"), "demo", prefix).await;
    assert_eq!(seen["params"]["status"], "stopping", "{seen}");
}
