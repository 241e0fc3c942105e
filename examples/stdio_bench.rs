//! Compares mcpvisor's stdio bridge with two stdio-to-HTTP gateways, in one
//! run, with the same raw client and the same child: `tools/call` of the
//! echo tool of `mcpvisor demo-server --transport stdio`, sequential calls
//! per client, 1 client and 32 concurrent clients (each its own connection
//! and session), p50/p99 latency and calls/s. Then the daemon's RSS growth
//! per 100 open sessions on the bridge.
//!
//! Paths:
//!
//! * `direct`: the bench itself writes JSON-RPC lines to a demo child's stdin
//!   and reads its stdout (1 client only): the child's own latency, the base of
//!   "added".
//! * `mcpvisor`: Streamable HTTP to `/workspaces/bench/mcp`, a `stdio`
//!   workspace (`share: shared`, one child for every session).
//! * `supergateway`: `supergateway --stdio ... --outputTransport streamableHttp
//!   --stateful` (npm), Streamable HTTP at `/mcp`; it starts a child per session.
//! * `mcp-proxy`: `mcp-proxy --port P -- ...` (PyPI), Streamable HTTP at `/mcp`,
//!   one child for every session.
//!
//! The peers are installed by `scripts/setup-node` (supergateway into
//! node_modules) and `scripts/setup-bench` (mcp-proxy into target/bench-venv):
//!
//! ```text
//! scripts/setup-node && scripts/setup-bench
//! cargo build --release --bin mcpvisor --example stdio_bench
//! target/release/examples/stdio_bench [--calls N]
//! ```

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use support::{
    free_port, free_range, http_client, loadavg, post, release_binary, streamable_client, streamable_session,
    wait_running, workspace_root, Proc, Stats, CLIENT_PROTOCOL as PROTOCOL,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn demo_stdio(exe: &Path) -> Vec<String> {
    vec![exe.display().to_string(), "demo-server".into(), "--transport".into(), "stdio".into()]
}

/// The child's own round trip: sequential calls over its stdin and stdout.
async fn direct(exe: &Path, calls: usize) -> Vec<Duration> {
    let mut child = tokio::process::Command::new(exe)
        .args(["demo-server", "--transport", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("demo child");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut roundtrip = async |message: Value| {
        stdin.write_all(format!("{message}\n").as_bytes()).await.unwrap();
        message.get("id")?;
        loop {
            let line = lines.next_line().await.unwrap().expect("a line");
            let answer: Value = serde_json::from_str(&line).unwrap();
            if answer["id"] == message["id"] {
                return Some(answer);
            }
        }
    };
    roundtrip(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}}))
    .await;
    roundtrip(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    let mut latencies = Vec::with_capacity(calls);
    for id in 1..=calls + 200 {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "bench"}}});
        let started = Instant::now();
        let answer = roundtrip(call).await.unwrap();
        if id > 200 {
            latencies.push(started.elapsed());
        }
        assert_eq!(answer["result"]["content"][0]["text"], "bench");
    }
    latencies
}

fn stats(mut all: Vec<Duration>, elapsed: Duration) -> Stats {
    all.sort();
    Stats {
        p50: all[all.len() / 2],
        p99: all[all.len() * 99 / 100],
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
    }
}

async fn measure(url: &str, n_clients: usize, calls: usize) -> Stats {
    // Warm-up: connections, sessions, caches.
    streamable_client(url.to_string(), "echo".into(), 200).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..n_clients)
        .map(|_| tokio::spawn(streamable_client(url.to_string(), "echo".into(), calls / n_clients)))
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    stats(all, started.elapsed())
}

/// Waits until `url` answers an `initialize`.
async fn wait_answering(url: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let http = http_client();
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}});
        let sent = http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(init.to_string())
            .send()
            .await;
        if sent.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn version_of(package_json: &Path) -> String {
    std::fs::read_to_string(package_json)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut calls = 4000;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--calls" => calls = it.next().and_then(|v| v.parse().ok()).expect("--calls N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let exe = release_binary();
    assert!(exe.exists(), "{} is missing: cargo build --release --bin mcpvisor", exe.display());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("stdio_bench: mcpvisor = {} ({cores} cores)", exe.display());
    println!("load average at start: {}", loadavg());

    // mcpvisor: one stdio workspace.
    let workspace = json!({"command": exe.display().to_string(), "args": ["demo-server", "--transport", "stdio"], "transport": "stdio"});
    let root = workspace_root([("bench", workspace)]);
    let listen = free_port();
    let mut daemon = Proc::serve(&exe, root.path(), listen, free_range(16));
    let api = format!("http://127.0.0.1:{listen}");
    wait_running(&http_client(), &api, "bench", Duration::from_secs(30)).await;
    let bridged = format!("{api}/workspaces/bench/mcp");

    // supergateway (npm), stateful Streamable HTTP.
    let supergateway = repo().join("node_modules/.bin/supergateway");
    let sg_port = free_port();
    let mut peers = Vec::new();
    let mut rows: Vec<(&str, Option<String>, String)> = vec![("mcpvisor", Some(bridged.clone()), String::new())];
    if supergateway.exists() {
        let mut cmd = Command::new(&supergateway);
        cmd.args(["--stdio", &demo_stdio(&exe).join(" "), "--outputTransport", "streamableHttp", "--stateful"]).args([
            "--port",
            &sg_port.to_string(),
            "--logLevel",
            "none",
        ]);
        peers.push(Proc::spawn(&mut cmd));
        let url = format!("http://127.0.0.1:{sg_port}/mcp");
        let up = wait_answering(&url, Duration::from_secs(30)).await;
        rows.push(("supergateway", up.then_some(url), "did not answer within 30 s".into()));
    } else {
        rows.push(("supergateway", None, format!("{} missing: scripts/setup-node", supergateway.display())));
    }
    // mcp-proxy (PyPI).
    let mcp_proxy = repo().join("target/bench-venv/bin/mcp-proxy");
    let mp_port = free_port();
    if mcp_proxy.exists() {
        let mut cmd = Command::new(&mcp_proxy);
        cmd.args(["--port", &mp_port.to_string(), "--host", "127.0.0.1", "--"]).args(demo_stdio(&exe));
        peers.push(Proc::spawn(&mut cmd));
        let url = format!("http://127.0.0.1:{mp_port}/mcp");
        let up = wait_answering(&url, Duration::from_secs(30)).await;
        rows.push(("mcp-proxy", up.then_some(url), "did not answer within 30 s".into()));
    } else {
        rows.push(("mcp-proxy", None, format!("{} missing: scripts/setup-bench", mcp_proxy.display())));
    }
    let mp_version = Command::new(&mcp_proxy)
        .arg("--version")
        .output()
        .map_or_else(|_| "?".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    println!(
        "peers: supergateway {}, mcp-proxy {mp_version}",
        version_of(&repo().join("node_modules/supergateway/package.json"))
    );
    println!("tools/call echo {{\"text\":\"bench\"}} on `mcpvisor demo-server --transport stdio`, {calls} calls per row (after 200 warm-up calls), Streamable HTTP {PROTOCOL}, 127.0.0.1");

    let started = Instant::now();
    let direct = stats(direct(&exe, calls).await, started.elapsed());
    let mut results = vec![("direct", 1, direct)];
    for n_clients in [1, 32] {
        for (label, url, _) in &rows {
            if let Some(url) = url {
                results.push((label, n_clients, measure(url, n_clients, calls).await));
            }
        }
    }
    let base = results[0].2.p50;
    println!();
    println!("{:<13} {:>7} {:>8} {:>8} {:>9} {:>11}", "path", "clients", "p50 µs", "p99 µs", "calls/s", "+p50 µs");
    for (label, n_clients, s) in &results {
        let added = if *label == "direct" {
            "-".into()
        } else {
            format!("{:+}", s.p50.as_micros() as i64 - base.as_micros() as i64)
        };
        println!(
            "{:<13} {:>7} {:>8} {:>8} {:>9.0} {:>11}",
            label,
            n_clients,
            s.p50.as_micros(),
            s.p99.as_micros(),
            s.per_second,
            added
        );
    }
    println!("(+p50: latency added vs `direct`, the child's own round trip over its pipes, 1 client)");
    for (label, url, why) in &rows {
        if url.is_none() {
            println!("{label}: not measured: {why}");
        }
    }

    // Daemon RSS per 100 open sessions on the bridge.
    let before = rss_kib(daemon.id());
    let mut open = Vec::new();
    for _ in 0..300 {
        open.push(streamable_session(&bridged).await);
    }
    let (http, session) = &open[0];
    let _ = post(http, &bridged, session.as_deref(), &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).await;
    let after = rss_kib(daemon.id());
    println!();
    println!(
        "mcpvisor daemon RSS: {before} KiB before, {after} KiB with 300 open sessions: {:.1} KiB per 100 sessions",
        (after as f64 - before as f64) / 3.0
    );
    drop(open);
    println!();
    println!("load average at end: {} (1/5/15 min)", loadavg());
    for mut peer in peers {
        peer.stop();
    }
    daemon.stop();
}
