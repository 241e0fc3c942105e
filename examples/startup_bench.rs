//! Startup benchmarks for mcpvisor.
//!
//! (a) daemon start to the first `/healthz` 200, in-process (`mcpvisor::start`)
//!     and as the release binary (exec to first 200), median of 20 each;
//! (b) spawn-to-running of a demo-server workspace after `POST .../restart`
//!     (from the `starting` notification to `running`), median and p95 of 20,
//!     next to the child's own start (exec of `mcpvisor demo-server` to a
//!     successful MCP `initialize`, polled every 1 ms), median of 20;
//! (c) `GET /api/workspaces` with 100 demo-server workspaces running:
//!     p50/p99 of 2000 sequential requests, requests/s with 8 clients for 5 s.
//!
//! Reproduce (the release binary must be built first, it is `${MCPVISOR}`):
//!   cd /work/main && CARGO_TARGET_DIR=/work/target-bench cargo build --release \
//!     && CARGO_TARGET_DIR=/work/target-bench cargo run --release --example startup_bench

mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use support::{
    config, demo, demo_alone, free_port, free_range, http_client, http_status, ms, next_where, own_start, pct,
    print_footer, print_header, root_with, subscribe, wait_all, InProcess, Proc,
};

fn parse_ts(v: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v["timestamp"].as_str()?).ok()
}

// ---------------------------------------------------------------- benches

const RUNS: usize = 20;

/// (start() -> first /healthz 200, start() -> start() returned), in ms.
async fn start_in_process(exe: &Path) -> (Vec<f64>, Vec<f64>) {
    let http = http_client();
    let (mut out, mut returned) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let root = root_with(2, &demo());
        let range = free_range(32);
        let cfg = config(root.path(), range, exe);
        let t0 = Instant::now();
        let daemon = InProcess::start(cfg).await;
        returned.push(ms(t0.elapsed()));
        let url = format!("{}/healthz", daemon.url());
        loop {
            if let Ok(r) = http.get(&url).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        out.push(ms(t0.elapsed()));
        daemon.stop(Duration::from_secs(30)).await;
    }
    (out, returned)
}

fn start_binary(exe: &Path) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..RUNS {
        let root = root_with(2, &demo());
        let range = free_range(32);
        let port = free_port();
        let t0 = Instant::now();
        let mut daemon = Proc::serve(exe, root.path(), port, range);
        let deadline = t0 + Duration::from_secs(10);
        while http_status(port, "/healthz") != Some(200) {
            assert!(Instant::now() < deadline, "binary daemon did not answer /healthz");
            std::thread::sleep(Duration::from_millis(1));
        }
        out.push(ms(t0.elapsed()));
        daemon.stop();
    }
    out
}

struct SpawnToRunning {
    arrival: Vec<f64>,
    /// From the `stopped` notification, which a restart emits right before
    /// it spawns: includes the fork/exec that precedes `starting`.
    from_stopped: Vec<f64>,
    stamped: Vec<f64>,
    request_to_running: Vec<f64>,
}

async fn spawn_to_running(exe: &Path) -> SpawnToRunning {
    let root = root_with(1, &demo());
    let daemon = InProcess::start(config(root.path(), free_range(32), exe)).await;
    let url = daemon.url();
    let http = http_client();
    wait_all(&http, &url, "running", 1, Duration::from_secs(30)).await;
    let mut events = subscribe(&http, format!("{url}/api/workspaces/w000/events")).await;
    let mut result =
        SpawnToRunning { arrival: vec![], from_stopped: vec![], stamped: vec![], request_to_running: vec![] };
    for _ in 0..RUNS {
        let t0 = Instant::now();
        let r = http.post(format!("{url}/api/workspaces/w000/restart")).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let (t_stopped, _) = next_where(&mut events, Duration::from_secs(30), |v| v["status"] == "stopped").await;
        let (t_start, v_start) = next_where(&mut events, Duration::from_secs(30), |v| v["status"] == "starting").await;
        let (t_run, v_run) = next_where(&mut events, Duration::from_secs(30), |v| v["status"] == "running").await;
        result.arrival.push(ms(t_run - t_start));
        result.from_stopped.push(ms(t_run - t_stopped));
        if let (Some(a), Some(b)) = (parse_ts(&v_start), parse_ts(&v_run)) {
            result.stamped.push(ms(b.duration_since(a).unwrap_or_default()));
        }
        result.request_to_running.push(ms(t_run - t0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(events);
    daemon.stop(Duration::from_secs(30)).await;
    result
}

fn child_own_start(exe: &Path) -> Vec<f64> {
    (0..RUNS).map(|_| own_start(|port| demo_alone(exe, port))).collect()
}

/// One GET with the whole body read; whether it was a 200.
async fn fetch(http: &reqwest::Client, url: &str) -> bool {
    match http.get(url).send().await {
        Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
        _ => false,
    }
}

struct ListLoad {
    body_bytes: usize,
    sequential: Vec<f64>,
    concurrent_rps: f64,
    concurrent_p50: f64,
    concurrent_p99: f64,
    errors: usize,
}

async fn list_under_load(exe: &Path) -> ListLoad {
    const N: usize = 100;
    let root = root_with(N, &demo());
    let range = free_range(200);
    let port = free_port();
    let mut daemon = Proc::serve(exe, root.path(), port, range);
    let url = format!("http://127.0.0.1:{port}");
    let http = http_client();
    wait_all(&http, &url, "running", N, Duration::from_secs(120)).await;
    let list = format!("{url}/api/workspaces");
    let mut body_bytes = 0;
    for _ in 0..50 {
        body_bytes = http.get(&list).send().await.unwrap().bytes().await.unwrap().len();
    }
    let mut sequential = Vec::with_capacity(2000);
    let mut errors = 0;
    for _ in 0..2000 {
        let t0 = Instant::now();
        if fetch(&http, &list).await {
            sequential.push(ms(t0.elapsed()));
        } else {
            errors += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let http = http_client();
        let list = list.clone();
        clients.push(tokio::spawn(async move {
            let (mut lat, mut err) = (Vec::new(), 0usize);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                if fetch(&http, &list).await {
                    lat.push(ms(t0.elapsed()));
                } else {
                    err += 1;
                }
            }
            (lat, err)
        }));
    }
    let mut all = Vec::new();
    for c in clients {
        let (lat, err) = c.await.unwrap();
        all.extend(lat);
        errors += err;
    }
    let elapsed = started.elapsed().as_secs_f64();
    daemon.stop();
    ListLoad {
        body_bytes,
        concurrent_rps: all.len() as f64 / elapsed,
        concurrent_p50: pct(&all, 50.0),
        concurrent_p99: pct(&all, 99.0),
        sequential,
        errors,
    }
}

/// One line of tables (a) and (b): median, p95 and max of `v`, in ms.
fn row(label: &str, v: &[f64]) {
    println!("  {:<52} {:>7.2}ms {:>7.2}ms {:>7.2}ms", label, pct(v, 50.0), pct(v, 95.0), pct(v, 100.0));
}

#[tokio::main]
async fn main() {
    let exe = support::mcpvisor_exe();
    print_header("startup_bench", &exe, "");

    let (in_process, returned) = start_in_process(&exe).await;
    let e2 = exe.clone();
    let binary = tokio::task::spawn_blocking(move || start_binary(&e2)).await.unwrap();
    let s2r = spawn_to_running(&exe).await;
    let e2 = exe.clone();
    let own = tokio::task::spawn_blocking(move || child_own_start(&e2)).await.unwrap();
    let load = list_under_load(&exe).await;

    println!();
    println!("(a) daemon start -> first /healthz 200 (2 demo workspaces), {RUNS} runs");
    println!("  {:<52} {:>9} {:>9} {:>9}", "", "median", "p95", "max");
    row("in-process mcpvisor::start()", &in_process);
    row("  of which mcpvisor::start() returning", &returned);
    row("release binary, exec -> 200 (1 ms poll)", &binary);
    println!();
    println!("(b) demo-server workspace spawn -> running, {RUNS} restarts");
    println!("  {:<52} {:>9} {:>9} {:>9}", "", "median", "p95", "max");
    row("`starting` -> `running` (SSE arrival, client clock)", &s2r.arrival);
    row("`starting` -> `running` (notification timestamps)", &s2r.stamped);
    row("`stopped` -> `running` (SSE arrival; incl. fork/exec)", &s2r.from_stopped);
    row("POST /restart -> `running` arrival (incl. stop)", &s2r.request_to_running);
    row("child alone: exec -> MCP initialize ok (1 ms poll)", &own);
    println!(
        "  {:<52} {:>7.2}ms",
        "overhead: median `stopped`->`running` - median alone",
        pct(&s2r.from_stopped, 50.0) - pct(&own, 50.0)
    );
    println!();
    println!(
        "(c) GET /api/workspaces, 100 demo-server workspaces running (release binary daemon, body {} bytes)",
        load.body_bytes
    );
    println!("  {:<52} {:>9} {:>9} {:>11}", "", "p50", "p99", "req/s");
    println!(
        "  {:<52} {:>7.3}ms {:>7.3}ms {:>11.0}",
        "2000 sequential requests, 1 keep-alive client",
        pct(&load.sequential, 50.0),
        pct(&load.sequential, 99.0),
        load.sequential.len() as f64 / (load.sequential.iter().sum::<f64>() / 1000.0)
    );
    println!(
        "  {:<52} {:>7.3}ms {:>7.3}ms {:>11.0}",
        "8 concurrent clients, 5 s", load.concurrent_p50, load.concurrent_p99, load.concurrent_rps
    );
    println!("  errors: {}", load.errors);
    print_footer("startup_bench");
}
