//! Hardening figures, measured from the outside on the release binary:
//!
//! (a) daemon RSS before and after 12,000 POSTs to `/workspaces/demo/mcp`
//!     that each carry a 60 KB garbage `Mcp-Session-Id`;
//! (b) daemon file descriptors with 100 demo-server workspaces running;
//! (c) stop of a workspace whose tree has 200 processes: POST /stop to the
//!     `stopped` notification (the tree is gone by then), 5 runs.
//!
//! Reproduce: `cargo build --release && cargo run --release --example hardening_bench [a|b|c ...]`

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    free_port, free_range, http_client, ms, next_where, print_footer, print_header, root_with, subscribe, summary,
    wait_all, wait_running, workspace_root, Proc,
};

/// A field of `/proc/<pid>/status`, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

async fn garbage_session_ids(exe: &std::path::Path) {
    let root = workspace_root([("demo", support::demo())]);
    let listen = free_port();
    let daemon = Proc::serve(exe, root.path(), listen, free_range(4));
    let url = format!("http://127.0.0.1:{listen}");
    let http = http_client();
    wait_running(&http, &url, "demo", Duration::from_secs(30)).await;
    let before = status_kb(daemon.id(), "VmRSS:");
    let garbage: String = std::iter::repeat_n('x', 60_000).collect();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    let started = Instant::now();
    let mut codes = std::collections::BTreeMap::new();
    for chunk in 0..(12_000 / 32) {
        let posts = (0..32).map(|i| {
            let id = format!("{garbage}{chunk}-{i}");
            http.post(format!("{url}/workspaces/demo/mcp"))
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-session-id", id)
                .body(body.clone())
                .send()
        });
        for response in futures::future::join_all(posts).await {
            let code = response.map_or(0, |r| r.status().as_u16());
            *codes.entry(code).or_insert(0u32) += 1;
        }
    }
    let took = started.elapsed();
    let after = status_kb(daemon.id(), "VmRSS:");
    let peak = status_kb(daemon.id(), "VmHWM:");
    println!("(a) 12,000 POSTs with 60 KB garbage Mcp-Session-Id ({:.1} s; answers {codes:?})", took.as_secs_f64());
    println!("  daemon RSS before {:>7.1} MiB", before as f64 / 1024.0);
    println!(
        "  daemon RSS after  {:>7.1} MiB  (growth {:+.1} MiB, peak {:.1} MiB)",
        after as f64 / 1024.0,
        (after as f64 - before as f64) / 1024.0,
        peak as f64 / 1024.0
    );
}

async fn fds_with_100_workspaces(exe: &std::path::Path) {
    let root = root_with(100, &support::demo());
    let listen = free_port();
    let daemon = Proc::serve(exe, root.path(), listen, free_range(100));
    let url = format!("http://127.0.0.1:{listen}");
    let http = http_client();
    wait_all(&http, &url, "running", 100, Duration::from_secs(120)).await;
    // Let a few resource samples run.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let n = fds(daemon.id());
    println!(
        "(b) daemon file descriptors with 100 demo-server workspaces running: {n} ({:.1} per workspace)",
        n as f64 / 100.0
    );
}

async fn stop_a_200_process_tree(exe: &std::path::Path) {
    let forks = json!({
        "command": "/bin/sh",
        "args": ["-c", "for i in $(seq 199); do sleep 600 & done; exec \"$0\" demo-server --port \"$PORT\"", "${MCPVISOR}"],
        "stop": {"grace": "5s"},
    });
    let root = workspace_root([("tree", forks)]);
    let listen = free_port();
    let _daemon = Proc::serve(exe, root.path(), listen, free_range(4));
    let url = format!("http://127.0.0.1:{listen}");
    let http = http_client();
    let mut took = Vec::new();
    for _ in 0..5 {
        wait_running(&http, &url, "tree", Duration::from_secs(30)).await;
        let mut events = subscribe(&http, format!("{url}/api/workspaces/tree/events")).await;
        let started = Instant::now();
        http.post(format!("{url}/api/workspaces/tree/stop")).send().await.unwrap();
        let (at, _) = next_where(&mut events, Duration::from_secs(30), |v| v["status"] == "stopped").await;
        took.push(ms(at - started));
        http.post(format!("{url}/api/workspaces/tree/start")).send().await.unwrap();
    }
    let (median, p95, _, max) = summary(&took);
    println!("(c) stop of a 200-process tree, POST /stop -> `stopped` (tree gone), 5 runs");
    println!("  median {median:.2} ms, p95 {p95:.2} ms, max {max:.2} ms");
}

#[tokio::main]
async fn main() {
    let exe = support::mcpvisor_exe();
    print_header("hardening_bench", &exe, "");
    // `hardening_bench a c` runs only those parts; no argument runs all.
    let parts: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    if wanted("a") {
        garbage_session_ids(&exe).await;
    }
    if wanted("b") {
        fds_with_100_workspaces(&exe).await;
    }
    if wanted("c") {
        stop_a_200_process_tree(&exe).await;
    }
    print_footer("hardening_bench");
}
