//! Health-gated apply through the API (docs/reference.md §10).
//!
//! (a) `PUT /api/workspaces/a/config` of a changed demo-server config (new
//!     `env`, so the child restarts) until the 200 that says it runs,
//!     median of 20;
//! (b) `PUT` of a config whose command exits at once, until the 409 that
//!     says it was rolled back, with the old child running again, median of 20;
//! next to (c) the child's own start: `mcpvisor demo-server` spawned
//!     directly until it answers MCP `initialize`, median of 20.
//!
//! Reproduce:
//!   CARGO_TARGET_DIR=/work/target-bench cargo build --release \
//!     && CARGO_TARGET_DIR=/work/target-bench cargo run --release --example apply_bench

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::{config, free_range, http_client, print_footer, print_header, summary, workspace_root, InProcess};

const RUNS: usize = 20;

fn demo(generation: usize) -> Value {
    json!({"command": "${MCPVISOR}", "args": ["demo-server", "--port", "${PORT}"],
           "env": {"BENCH_GENERATION": generation.to_string()}})
}

fn failing() -> Value {
    json!({"command": "/bin/sh", "args": ["-c", "echo no such database >&2; exit 3"]})
}

/// The child alone: spawn the demo server until it answers `initialize`.
fn child_start(exe: &Path) -> Vec<f64> {
    (0..RUNS).map(|_| support::own_start(|port| support::demo_alone(exe, port))).collect()
}

async fn put(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = http.put(format!("{url}/api/workspaces/a/config")).body(body.to_string()).send().await.unwrap();
    let code = response.status().as_u16();
    (code, response.json().await.unwrap())
}

#[tokio::main]
async fn main() {
    let exe = support::mcpvisor_exe();
    print_header("apply_bench", &exe, ", in-process daemon with serve defaults");
    let child = tokio::task::spawn_blocking({
        let exe = exe.clone();
        move || child_start(&exe)
    })
    .await
    .unwrap();

    let root = workspace_root([("a", demo(0))]);
    let daemon = InProcess::start(config(root.path(), free_range(32), &exe)).await;
    let (url, http) = (daemon.url(), http_client());
    support::wait_running(&http, &url, "a", Duration::from_secs(30)).await;
    let (mut applied, mut rolled_back) = (Vec::new(), Vec::new());
    for generation in 1..=RUNS {
        let t0 = Instant::now();
        let (code, status) = put(&http, &url, &demo(generation)).await;
        applied.push(support::ms(t0.elapsed()));
        assert_eq!((code, &status["status"]), (200, &json!("running")), "{status}");

        let t0 = Instant::now();
        let (code, body) = put(&http, &url, &failing()).await;
        rolled_back.push(support::ms(t0.elapsed()));
        assert_eq!(code, 409, "{body}");
        assert_eq!(body["status"]["status"], "running", "the old child is back: {body}");
    }
    daemon.stop(Duration::from_secs(30)).await;

    println!();
    println!("health-gated apply of a demo-server workspace, {RUNS} runs each");
    println!("  {:<58} {:>9} {:>9} {:>9} {:>9}", "", "median", "p95", "min", "max");
    for (label, v) in [
        ("the child alone: spawn -> answers `initialize`", &child),
        ("PUT changed config -> 200 `running` (old child stopped)", &applied),
        ("PUT failing config -> 409, old child `running` again", &rolled_back),
    ] {
        let (median, p95, min, max) = summary(v);
        println!("  {:<58} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms", label, median, p95, min, max);
    }
    print_footer("apply_bench");
}
