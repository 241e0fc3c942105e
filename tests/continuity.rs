//! Session continuity (docs/reference.md §11): a client session through the
//! proxy survives a restart of its child, whatever restarted it, without the
//! client re-initializing. Real children (the demo server, the Python SDK
//! notes server), real clients (the Python SDK, rmcp).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const UP: Duration = Duration::from_secs(30);

/// One Python SDK `ClientSession`, driven command by command
/// (`tests/py/session_client.py`).
struct Session {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Session {
    async fn open(url: &str) -> Session {
        Session::open_with(url, "streamable-http").await
    }

    async fn open_with(url: &str, transport: &str) -> Session {
        let mut child = tokio::process::Command::new(python())
            .arg(repo().join("tests/py/session_client.py"))
            .args(["--url", url, "--transport", transport])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(UP, lines.next_line()).await.expect("session opens in time").unwrap();
        let ready: Value = serde_json::from_str(&ready.expect("session client prints ready")).unwrap();
        assert_eq!(ready["ready"], true);
        Session { _child: child, stdin, lines }
    }

    async fn send(&mut self, command: Value) -> Value {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await.unwrap();
        let line = tokio::time::timeout(UP, self.lines.next_line()).await.expect("an answer in time").unwrap();
        serde_json::from_str(&line.expect("the session client is alive")).unwrap()
    }

    /// Calls `pid` and returns it; panics when the call fails.
    async fn pid(&mut self) -> u64 {
        let answer = self.send(json!({"op": "call", "tool": "pid"})).await;
        assert_eq!(answer["ok"], true, "the call on the same session succeeds: {answer}");
        match &answer["result"] {
            Value::String(text) => text.trim().parse().unwrap(),
            other => other.as_u64().unwrap(),
        }
    }
}

/// The demo server as a `stdio` workspace.
fn stdio_demo() -> Value {
    json!({"command": "${MCPVISOR}", "args": ["demo-server", "--transport", "stdio"], "transport": "stdio"})
}

fn kill9(pid: u64) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
}

/// Waits until the workspace runs a child other than `old`.
async fn replaced(daemon: &Daemon, name: &str, old: u64) -> u64 {
    let status = daemon.wait_for(name, UP, |s| s["status"] == "running" && s["pid"] != json!(old)).await;
    status["pid"].as_u64().unwrap()
}

/// Kills the child of `session`, then restarts workspace `name`; after
/// each, the same session must be answered by the new child. Returns the
/// last child's pid.
async fn kill_then_restart(daemon: &Daemon, name: &str, session: &mut Session) -> u64 {
    let first = session.pid().await;
    kill9(first);
    let second = replaced(daemon, name, first).await;
    assert_eq!(session.pid().await, second, "{name}: answered by the new child after kill -9");
    daemon.post(&format!("/api/workspaces/{name}/restart")).await;
    let third = session.pid().await;
    assert_ne!(third, second, "{name}: answered by the child after the restart");
    third
}

/// Per session of `name`, how many times it was carried over, as the
/// `connections` debug component shows it; the workspace's status must
/// show the same (read twice: a carry-over can come between the reads).
async fn carried_over(daemon: &Daemon, name: &str) -> Vec<Value> {
    eventually("the status and the connections component agree", UP, || async {
        let (_, connections) = daemon.get("/api/debug/state/connections").await;
        let sessions = connections["proxySessions"].as_array().cloned().unwrap_or_default();
        let mut debug: Vec<(Value, Value)> = sessions
            .iter()
            .filter(|s| s["workspace"] == name)
            .map(|s| (s["sessionId"].clone(), s["carriedOver"].clone()))
            .collect();
        let status = daemon.status(name).await;
        let listed = status["clientSessions"].as_array().cloned().unwrap_or_default();
        let mut shown: Vec<(Value, Value)> =
            listed.iter().map(|s| (s["sessionId"].clone(), s["carriedOver"].clone())).collect();
        debug.sort_by_key(|(id, _)| id.to_string());
        shown.sort_by_key(|(id, _)| id.to_string());
        match shown == debug {
            true => Ok(debug.into_iter().map(|(_, count)| count).collect()),
            false => Err(format!("status {shown:?}, connections {debug:?}")),
        }
    })
    .await
}

/// The same session across a `kill -9`, a `restart` command and a config
/// change, for a Rust (rmcp) and a Python SDK Streamable HTTP child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_sdk_session_survives_every_kind_of_child_restart() {
    let daemon = Daemon::start(&[("demo", demo()), ("notes", notes("streamable-http"))]).await;
    for name in ["demo", "notes"] {
        daemon.wait_status(name, "running", UP).await;
        let mut session = Session::open(&format!("{}/workspaces/{name}/mcp", daemon.url)).await;
        let first = session.pid().await;

        kill9(first);
        let second = replaced(&daemon, name, first).await;
        assert_eq!(session.pid().await, second, "{name}: answered by the new child after kill -9");

        // Sent while the new child starts: held, then carried over.
        daemon.post(&format!("/api/workspaces/{name}/restart")).await;
        let third = session.pid().await;
        assert_ne!(third, second, "{name}: answered by the child after the restart");

        let mut changed = if name == "demo" { demo() } else { notes("streamable-http") };
        changed["env"]["CONTINUITY"] = json!("changed");
        daemon.write(name, &changed);
        let fourth = replaced(&daemon, name, third).await;
        assert_eq!(session.pid().await, fourth, "{name}: answered by the child of the new config");

        assert_eq!(carried_over(&daemon, name).await, [json!(3)], "{name}: one session, carried over three times");
    }
    daemon.stop().await;
}

/// A `resources/subscribe` made before a restart is replayed on the new
/// child, and its updates reach the client on its carried GET stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_before_a_restart_still_delivers_updates() {
    let daemon = Daemon::start(&[("notes", notes("streamable-http"))]).await;
    daemon.wait_status("notes", "running", UP).await;
    let mut session = Session::open(&format!("{}/workspaces/notes/mcp", daemon.url)).await;
    let answer = session.send(json!({"op": "subscribe", "uri": "notes://index"})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    let first = session.pid().await;

    kill9(first);
    replaced(&daemon, "notes", first).await;
    // With no request of the client: its open GET stream carries the
    // session over once the new child runs.
    eventually("the GET stream carries the session over", UP, || async {
        match carried_over(&daemon, "notes").await.as_slice() {
            [count] if *count == json!(1) => Ok(()),
            other => Err(format!("carriedOver: {other:?}")),
        }
    })
    .await;
    let answer = session.send(json!({"op": "call", "tool": "add_note", "args": {"title": "t", "body": "b"}})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    // The update travels on the client's GET stream: poll what arrived.
    let mut updates = Value::Null;
    for _ in 0..100 {
        updates = session.send(json!({"op": "updates"})).await["updates"].clone();
        if updates.as_array().is_some_and(|u| !u.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(updates, json!(["notes://index"]), "the new child's update reached the subscribed client");
    daemon.stop().await;
}

/// The rmcp client keeps its session across a `kill -9` of the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rmcp_session_survives_a_killed_child() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;

    let daemon = Daemon::start(&[("demo", demo())]).await;
    let first = daemon.wait_status("demo", "running", UP).await["pid"].as_u64().unwrap();
    let url = format!("{}/workspaces/demo/mcp", daemon.url);
    let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url));
    let client = ().serve(transport).await.expect("rmcp client initializes");
    let pid = || async {
        let result = client.call_tool(CallToolRequestParams::new("pid")).await.expect("the call succeeds");
        serde_json::to_value(&result).unwrap()["content"][0]["text"].as_str().unwrap().parse::<u64>().unwrap()
    };
    assert_eq!(pid().await, first);
    kill9(first);
    let second = replaced(&daemon, "demo", first).await;
    assert_eq!(pid().await, second, "answered by the new child on the same session");
    let _ = client.cancel().await;
    daemon.stop().await;
}

/// Kills `pid` and returns once the kernel says it is gone (its pidfd is
/// readable), which is before the daemon has heard of it.
fn kill9_and_wait_gone(pid: u64) {
    use nix::libc;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
    assert!(fd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
    kill9(pid);
    let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; the fd is ours to close.
    unsafe {
        assert_eq!(libc::poll(&mut poll, 1, 10_000), 1, "the child exits");
        libc::close(fd);
    }
}

/// A call made the moment the child is gone, before the daemon has seen
/// it die, is not lost to the dead child (nor to the proxy's pooled
/// connection to it): it never reached the child, so it waits for the next
/// one and is answered there, five kills in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_right_after_a_kill_is_answered_by_the_next_child() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;

    // Five crashes in a row would open the breaker and back off for seconds.
    let mut config = demo();
    config["restart"] = json!({"backoffInitial": "10ms", "backoffMax": "50ms"});
    config["circuitBreaker"] = json!({"failureThreshold": 20});
    let daemon = Daemon::start(&[("demo", config)]).await;
    let mut old = daemon.wait_status("demo", "running", UP).await["pid"].as_u64().unwrap();
    let url = format!("{}/workspaces/demo/mcp", daemon.url);
    let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url));
    let client = ().serve(transport).await.expect("rmcp client initializes");
    let pid = || async {
        let result = client.call_tool(CallToolRequestParams::new("pid")).await.map_err(|e| e.to_string())?;
        let text = serde_json::to_value(&result).unwrap()["content"][0]["text"].as_str().unwrap().to_string();
        Ok::<u64, String>(text.parse().unwrap())
    };
    assert_eq!(pid().await, Ok(old));
    for kill in 1..=5 {
        kill9_and_wait_gone(old);
        let new = pid().await.unwrap_or_else(|e| panic!("kill {kill}: the call right after it failed: {e}"));
        assert_ne!(new, old, "kill {kill}: answered by a new child");
        old = new;
    }
    assert_eq!(carried_over(&daemon, "demo").await, [json!(5)]);
    let _ = client.cancel().await;
    daemon.stop().await;
}

/// The same when the daemon cannot know yet: the server dies but its
/// workspace's main process lives on a moment (a shell that outlives it), so
/// the workspace still shows `running`. The proxy's pooled connection to
/// the dead server must not take the call; it goes to the next child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_not_lost_to_a_pooled_connection_of_a_dead_server() {
    let shell = json!({
        "command": "/bin/sh",
        "args": ["-c", "\"$0\" demo-server --port \"$PORT\"; sleep 0.3; exit 1", "${MCPVISOR}"],
        "restart": {"backoffInitial": "10ms"},
    });
    let daemon = Daemon::start(&[("shell", shell)]).await;
    let leader = daemon.wait_status("shell", "running", UP).await["pid"].as_u64().unwrap();
    let mut session = Session::open(&format!("{}/workspaces/shell/mcp", daemon.url)).await;
    let server = session.pid().await;
    assert_ne!(server, leader, "the server runs under the shell");
    kill9_and_wait_gone(server);
    assert_eq!(daemon.status("shell").await["pid"], json!(leader), "the workspace still shows its shell");
    let next = session.pid().await;
    assert_ne!(next, server, "answered by the next server");
    assert_eq!(carried_over(&daemon, "shell").await, [json!(1)]);
    daemon.stop().await;
}

/// The same across a `kill -9`, a `restart` and a config change for a
/// `stdio` child, whose sessions live on the stdio bridge's hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_a_stdio_child_survives_its_restarts() {
    let daemon = Daemon::start(&[("piped", stdio_demo())]).await;
    daemon.wait_status("piped", "running", UP).await;
    let mut session = Session::open(&format!("{}/workspaces/piped/mcp", daemon.url)).await;
    let third = kill_then_restart(&daemon, "piped", &mut session).await;

    let mut changed = stdio_demo();
    changed["env"] = json!({"CONTINUITY": "changed"});
    daemon.write("piped", &changed);
    let fourth = replaced(&daemon, "piped", third).await;
    assert_eq!(session.pid().await, fourth, "answered by the stdio child of the new config");
    assert_eq!(carried_over(&daemon, "piped").await, [json!(3)], "one session, carried over three times");
    daemon.stop().await;
}

/// A legacy SSE client (Python SDK, 2024-11-05 transport) of a `stdio`
/// child keeps its stream across a `kill -9` of the child and completes a
/// call on it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_sse_client_keeps_its_stream_across_a_child_restart() {
    let daemon = Daemon::start(&[("legacy", stdio_demo())]).await;
    daemon.wait_status("legacy", "running", UP).await;
    let mut session = Session::open_with(&format!("{}/workspaces/legacy/sse", daemon.url), "sse").await;
    let first = session.pid().await;
    kill9(first);
    let second = replaced(&daemon, "legacy", first).await;
    assert_eq!(session.pid().await, second, "the same stream and session, answered by the new child");
    assert_eq!(carried_over(&daemon, "legacy").await, [json!(1)]);
    daemon.stop().await;
}

/// Sessions translated between the two HTTP transports are carried over
/// too: a legacy SSE client of a Streamable HTTP child keeps its stream, and
/// a Streamable HTTP client of a legacy `sse` child keeps its session,
/// across a `kill -9` of the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_sessions_survive_a_killed_child() {
    let daemon = Daemon::start(&[("modern", demo()), ("legacy", notes("sse"))]).await;
    for (name, client) in [("modern", "sse"), ("legacy", "streamable-http")] {
        daemon.wait_status(name, "running", UP).await;
        let path = if client == "sse" { "sse" } else { "mcp" };
        let mut session = Session::open_with(&format!("{}/workspaces/{name}/{path}", daemon.url), client).await;
        let first = session.pid().await;
        kill9(first);
        let second = replaced(&daemon, name, first).await;
        assert_eq!(session.pid().await, second, "{name}: a {client} client answered by the new child");
        assert_eq!(carried_over(&daemon, name).await, [json!(1)], "{name}");
    }
    daemon.stop().await;
}

/// A legacy SSE client of a legacy `sse` child (the Python SDK on both
/// sides) keeps its stream across a `kill -9` of the child and completes a
/// call on it afterwards; its subscription is replayed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_client_of_a_legacy_child_keeps_its_stream() {
    let daemon = Daemon::start(&[("old", notes("sse"))]).await;
    daemon.wait_status("old", "running", UP).await;
    let mut session = Session::open_with(&format!("{}/workspaces/old/sse", daemon.url), "sse").await;
    kill_then_restart(&daemon, "old", &mut session).await;
    assert_eq!(carried_over(&daemon, "old").await, [json!(2)]);
    daemon.stop().await;
}
