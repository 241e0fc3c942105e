//! Measures what mcpvisor's proxy adds to an MCP `tools/call`.
//!
//! Starts `mcpvisor serve` (a separate process) with one workspace running
//! the built-in demo server, then calls its `echo` tool over Streamable HTTP,
//! with 1 client and with 32 concurrent clients (each its own session and
//! connection), once directly against the child and once through
//! `/workspaces/bench/mcp`. Prints p50/p99 latency and calls/s, and the
//! latency the proxy hop adds.
//!
//! ```text
//! cargo build --release --bin mcpvisor --example proxy_bench
//! target/release/examples/proxy_bench [--calls N] [--mcpvisor PATH]
//! ```

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Stats {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

fn args() -> (usize, PathBuf) {
    let mut calls = 5000;
    let mut exe = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("mcpvisor");
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--calls" => calls = it.next().and_then(|v| v.parse().ok()).expect("--calls N"),
            "--mcpvisor" => exe = it.next().expect("--mcpvisor PATH").into(),
            other => panic!("unknown argument {other}"),
        }
    }
    (calls, exe)
}

async fn post(http: &reqwest::Client, url: &str, session: Option<&str>, body: &Value) -> (Option<String>, String) {
    let mut request = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-11-25")
        .body(body.to_string());
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let response = request.send().await.expect("request");
    assert!(response.status().is_success(), "{url}: {}", response.status());
    let session = response.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_string());
    (session, response.text().await.expect("body"))
}

/// One client: its own connection pool and session; returns each call's latency.
async fn client(url: String, calls: usize) -> Vec<Duration> {
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(1).build().unwrap();
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}});
    let (session, _) = post(&http, &url, None, &init).await;
    let session = session.as_deref();
    post(&http, &url, session, &json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    let mut latencies = Vec::with_capacity(calls);
    for id in 1..=calls {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "bench"}}});
        let started = Instant::now();
        let (_, body) = post(&http, &url, session, &call).await;
        latencies.push(started.elapsed());
        assert!(body.contains("\"bench\""), "unexpected answer: {body}");
    }
    latencies
}

async fn measure(url: &str, n_clients: usize, calls: usize) -> Stats {
    // Warm-up: connections, sessions, caches.
    client(url.to_string(), 200).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..n_clients).map(|_| tokio::spawn(client(url.to_string(), calls / n_clients))).collect();
    let mut all: Vec<Duration> = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    Stats {
        p50: all[all.len() / 2],
        p99: all[all.len() * 99 / 100],
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let (calls, exe) = args();
    assert!(exe.exists(), "{} is missing: cargo build --release --bin mcpvisor", exe.display());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workspaces")).unwrap();
    let workspace = json!({"command": "${MCPVISOR}", "args": ["demo-server", "--port", "${PORT}"]});
    std::fs::write(dir.path().join("workspaces/bench.json"), workspace.to_string()).unwrap();
    let listen = portpicker::pick_unused_port().unwrap();
    let base = portpicker::pick_unused_port().unwrap() / 16 * 16;
    let mut daemon = tokio::process::Command::new(&exe)
        .args(["serve", "--workspaces"])
        .arg(dir.path().join("workspaces"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .args(["--listen", &format!("127.0.0.1:{listen}"), "--port-range", &format!("{base}-{}", base + 15)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mcpvisor starts");

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let upstream = loop {
        let status: Value = match http.get(format!("http://127.0.0.1:{listen}/api/workspaces/bench")).send().await {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if status["status"] == "running" {
            break status["upstream"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the bench workspace never ran: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let proxied = format!("http://127.0.0.1:{listen}/workspaces/bench/mcp");

    println!("tools/call echo, demo-server child, {calls} calls per row, Streamable HTTP (SSE answers)");
    println!("{:<10} {:>8} {:>10} {:>10} {:>10}", "path", "clients", "p50 µs", "p99 µs", "calls/s");
    for n_clients in [1, 32] {
        let direct = measure(&upstream, n_clients, calls).await;
        let through = measure(&proxied, n_clients, calls).await;
        for (label, s) in [("direct", &direct), ("mcpvisor", &through)] {
            println!("{label:<10} {n_clients:>8} {:>10} {:>10} {:>10.0}", s.p50.as_micros(), s.p99.as_micros(), s.per_second);
        }
        println!(
            "added by the proxy hop, {n_clients} client(s): p50 {:+} µs, p99 {:+} µs",
            through.p50.as_micros() as i64 - direct.p50.as_micros() as i64,
            through.p99.as_micros() as i64 - direct.p99.as_micros() as i64,
        );
    }
    // SIGTERM, so mcpvisor stops its child before it exits.
    if let Some(pid) = daemon.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), daemon.wait()).await;
}
