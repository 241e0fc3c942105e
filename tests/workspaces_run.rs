//! Real MCP children reach `running` and answer real MCP clients.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const UP: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_and_python_sdk_workspaces_run_and_answer_tools() {
    let python = python();
    let notes = |transport: &str| {
        json!({
            "command": python,
            "args": ["examples/servers/notes.py", "--port", "${PORT}", "--transport", transport],
            "cwd": repo(),
            "transport": transport,
            "env": {"NOTES_DIR": "${DATA_DIR}/notes"},
        })
    };
    let daemon =
        Daemon::start(&[("demo", demo()), ("notes", notes("streamable-http")), ("legacy", notes("sse"))]).await;

    let demo = daemon.wait_status("demo", "running", UP).await;
    assert_eq!(demo["health"], "healthy");
    let upstream = demo["upstream"].as_str().unwrap();
    assert_eq!(rmcp_call(upstream, "echo", json!({"text": "hi"})).await, "hi");
    assert_eq!(rmcp_call(upstream, "add", json!({"a": 2, "b": 40})).await, "42");
    let pid = rmcp_call(upstream, "pid", json!({})).await;
    assert_eq!(pid, demo["pid"].to_string(), "the status names the child that answers");

    let notes = daemon.wait_status("notes", "running", UP).await;
    let answer =
        python_call(notes["upstream"].as_str().unwrap(), "streamable-http", "add", json!({"a": 1, "b": 2})).await;
    assert_eq!(answer["result"], "3");
    assert!(answer["tools"].as_array().unwrap().iter().any(|t| t == "add_note"));

    let legacy = daemon.wait_status("legacy", "running", UP).await;
    assert!(legacy["upstream"].as_str().unwrap().ends_with("/sse"));
    let answer = python_call(legacy["upstream"].as_str().unwrap(), "sse", "echo", json!({"text": "old"})).await;
    assert_eq!(answer["result"], "old");

    // Every child has its own port and its own process group.
    let ports: Vec<u64> = [&demo, &notes, &legacy].iter().map(|s| s["port"].as_u64().unwrap()).collect();
    assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
    let (_, debug) = daemon.get("/api/debug/state/workspace").await;
    for record in debug.as_array().unwrap() {
        assert_eq!(record["pgid"], record["pid"], "each child leads its own process group");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_sees_exactly_the_allowed_environment() {
    let mut ws = demo();
    ws["env"] = json!({"EXTRA": "${WORKSPACE}"});
    ws["envPassthrough"] = json!(["PATH", "HOME"]);
    // The daemon runs as its own process, with a variable that must not leak.
    let daemon = Daemon::spawn_process(&[("envy", ws)], &[("MCPVISOR_TEST_SECRET", "must-not-leak")]).await;
    let status = daemon.wait_status("envy", "running", UP).await;
    let names = rmcp_call(status["upstream"].as_str().unwrap(), "env", json!({})).await;
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    let mut expected =
        vec!["EXTRA", "FASTMCP_HOST", "FASTMCP_PORT", "MCPVISOR_WORKSPACE", "MCP_HOST", "MCP_PORT", "PORT", "PATH"];
    if std::env::var_os("HOME").is_some() {
        expected.push("HOME");
    }
    expected.sort();
    assert_eq!(names, expected);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_command_is_a_clear_error_and_others_run() {
    let broken = json!({"command": "python4-does-not-exist", "restart": {"backoffInitial": "100ms"}});
    let daemon = Daemon::start(&[("good", demo()), ("broken", broken)]).await;
    let status = daemon.wait_for("broken", UP, |s| s["status"] == "error" && !s["lastError"].is_null()).await;
    let message = status["lastError"]["message"].as_str().unwrap();
    assert!(message.contains("spawning workspace \"broken\": no such file: python4-does-not-exist"), "{message}");
    assert_eq!(status["pid"], serde_json::Value::Null);
    daemon.wait_status("good", "running", UP).await;
    let (_, errors) = daemon.get("/api/debug/state/errors").await;
    assert_eq!(errors["workspaces"]["broken"]["errors"][0]["reason"], "spawn: not found");
    daemon.stop().await;
}

/// A `stdio` child keeps its stdin pipe open and stays up, and the proxy
/// serves it through the stdio bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_child_stays_up_and_answers_through_the_bridge() {
    let stdio =
        json!({"command": "${MCPVISOR}", "args": ["demo-server", "--transport", "stdio"], "transport": "stdio"});
    let daemon = Daemon::start(&[("pipe", stdio)]).await;
    let running = daemon.wait_status("pipe", "running", UP).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let later = daemon.status("pipe").await;
    assert_eq!(later["pid"], running["pid"], "no restart loop: {later}");
    assert_eq!(later["restartCount"], 0);
    assert!(alive(running["pid"].as_u64().unwrap()));
    let response = daemon
        .http
        .post(format!("{}/workspaces/pipe/mcp", daemon.url))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
    daemon.stop().await;
}
