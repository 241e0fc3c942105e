//! On-demand start benchmarks for mcpvisor (docs/reference.md §11).
//!
//! (a) first call to an on-demand workspace: a raw MCP `initialize` POSTed
//!     to `/workspaces/w/mcp` while the workspace is `stopped`, to its 200
//!     answer (the request is held while the child starts), next to the
//!     child's own start (exec to a successful `initialize`, polled every
//!     1 ms); for the demo server (20 pairs) and the Python SDK `notes.py`
//!     server (10 pairs). The two alternate, so both see the same load, and
//!     the difference is also given per pair. Between runs the workspace is
//!     stopped through the API, so each run is a first call again.
//! (b) daemon RSS (VmRSS of the release binary) with no workspace, with 100
//!     on-demand demo-server workspaces idle (stopped, ports allocated), and
//!     with the same 100 started eagerly, with their children's RSS beside.
//!
//! Reproduce (the release binary must be built first, it is `${MCPVISOR}`):
//!   CARGO_TARGET_DIR=/work/target-bench cargo build --release --bin mcpvisor --example ondemand_bench \
//!     && /work/target-bench/release/examples/ondemand_bench

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const DEMO_RUNS: usize = 20;
const PYTHON_RUNS: usize = 10;

fn on_demand(mut body: Value) -> Value {
    body["lifecycle"] = json!({"start": "on-demand"});
    body
}

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
}

fn notes_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/servers/notes.py")
}

/// The Python SDK notes server as a workspace.
fn notes() -> Value {
    json!({
        "command": python().to_string_lossy(),
        "args": [notes_script().to_string_lossy(), "--port", "${PORT}", "--transport", "streamable-http"],
        "env": {"NOTES_DIR": "${DATA_DIR}/notes"},
    })
}

/// A raw `initialize` to the proxy path of workspace `w`, from send to the
/// end of its 200 answer.
fn first_call(listen: u16) -> Duration {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}})
    .to_string();
    let request = format!(
        "POST /workspaces/w/mcp HTTP/1.1\r\nHost: 127.0.0.1:{listen}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let t0 = Instant::now();
    let response = raw_http(listen, &request, "\"result\"", Duration::from_secs(60)).expect("an answer");
    let took = t0.elapsed();
    assert!(response.starts_with("HTTP/1.1 200") && response.contains("\"result\""), "{response}");
    took
}

/// Waits until workspace `w` shows `status` (and `reason`, when given).
async fn wait_w(http: &reqwest::Client, url: &str, status: &str, reason: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{url}/api/workspaces/w")).send().await {
            if let Ok(v) = r.json::<Value>().await {
                if v["status"] == status && reason.is_none_or(|reason| v["reason"] == reason) {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "w not {status} within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// First calls and starts of the child alone, interleaved so both see the
/// same load: `runs` pairs of (first call to an on-demand workspace running
/// `body`, exec of `alone` to a successful `initialize`), in ms.
async fn first_calls(exe: &Path, body: Value, alone: fn(u16) -> Command, runs: usize) -> Vec<(f64, f64)> {
    let root = workspace_root([("w", on_demand(body))]);
    let listen = free_port();
    let _daemon = Proc::serve(exe, root.path(), listen, free_range(32));
    let url = format!("http://127.0.0.1:{listen}");
    let http = http_client();
    let mut out = Vec::new();
    wait_w(&http, &url, "stopped", Some("on-demand")).await;
    for _ in 0..runs {
        let own = tokio::task::spawn_blocking(move || own_start(alone)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let first = ms(tokio::task::spawn_blocking(move || first_call(listen)).await.unwrap());
        out.push((first, own));
        http.post(format!("{url}/api/workspaces/w/stop")).send().await.unwrap();
        wait_w(&http, &url, "stopped", None).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out
}

fn demo_alone(port: u16) -> Command {
    support::demo_alone(&mcpvisor_exe(), port)
}

fn notes_alone(port: u16) -> Command {
    let mut command = Command::new(python());
    command.arg(notes_script()).args(["--port", &port.to_string(), "--transport", "streamable-http"]);
    command.env("NOTES_DIR", std::env::temp_dir().join("ondemand_bench_notes"));
    command
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Summed VmRSS, in KiB, of every process whose parent is `pid`, except
/// the guard (`mcpvisor guard`, there whatever the workspaces).
fn children_rss_kib(pid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            let guard = std::fs::read(format!("/proc/{child}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).nth(1) == Some(b"guard".as_slice()));
            ppid == Some(pid) && !guard
        })
        .map(rss_kib)
        .sum()
}

/// Daemon RSS (and its children's) with `n` copies of `body`, once `n` are `status`, in KiB.
async fn daemon_rss(exe: &Path, n: usize, body: &Value, status: &str) -> (u64, u64) {
    let root = root_with(n, body);
    let listen = free_port();
    let daemon = Proc::serve(exe, root.path(), listen, free_range(128));
    let url = format!("http://127.0.0.1:{listen}");
    let http = http_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_status(listen, "/readyz") != Some(200) {
        assert!(Instant::now() < deadline, "daemon not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_all(&http, &url, status, n, Duration::from_secs(120)).await;
    // Let the first resource samples and allocations settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    (rss_kib(daemon.id()), children_rss_kib(daemon.id()))
}

/// Rows of table (a) for one server: first calls, the child alone, and
/// the difference within each interleaved pair.
fn pairs(server: &str, pairs: &[(f64, f64)]) {
    let first: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let alone: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let extra: Vec<f64> = pairs.iter().map(|p| p.0 - p.1).collect();
    let n = pairs.len();
    row(&format!("{server}: first call through mcpvisor ({n})"), &first);
    row(&format!("{server}: child alone, exec -> initialize ({n})"), &alone);
    row(&format!("{server}: first call - child alone, per pair"), &extra);
}

fn row(label: &str, v: &[f64]) {
    println!("  {:<52} {:>8.2}ms {:>8.2}ms {:>8.2}ms", label, pct(v, 50.0), pct(v, 95.0), pct(v, 100.0));
}

#[tokio::main]
async fn main() {
    let exe = mcpvisor_exe();
    print_header("ondemand_bench", &exe, "");

    let demo_pairs = first_calls(&exe, demo(), demo_alone, DEMO_RUNS).await;
    let python_pairs = first_calls(&exe, notes(), notes_alone, PYTHON_RUNS).await;

    let (empty, _) = daemon_rss(&exe, 0, &demo(), "stopped").await;
    let (idle, idle_children) = daemon_rss(&exe, 100, &on_demand(demo()), "stopped").await;
    let (eager, eager_children) = daemon_rss(&exe, 100, &demo(), "running").await;

    println!();
    println!("(a) first call to an on-demand workspace (raw initialize, held until running) vs the child alone");
    println!("  {:<52} {:>10} {:>10} {:>10}", "", "median", "p95", "max");
    pairs("demo-server", &demo_pairs);
    pairs("python notes.py", &python_pairs);
    println!();
    println!("(b) RSS of the release daemon (VmRSS), settled 3 s after the last status");
    println!("  {:<52} {:>10} {:>14}", "", "daemon", "its children (the guard left out)");
    println!("  {:<52} {:>7} KiB {:>10} KiB", "no workspace", empty, 0);
    println!("  {:<52} {:>7} KiB {:>10} KiB", "100 on-demand demo workspaces, idle", idle, idle_children);
    println!("  {:<52} {:>7} KiB {:>10} KiB", "100 eager demo workspaces, running", eager, eager_children);
    print_footer("ondemand_bench");
}
