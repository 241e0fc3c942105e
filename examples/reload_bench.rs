//! Hot-reload and initial-reconcile benchmarks for mcpvisor.
//!
//! (a) a workspace file is replaced atomically (temp file + rename) with
//!     changed `args` and `env`: time from the rename to the `stopping`
//!     notification (old child signalled) and to the new child's `running`,
//!     median of 20;
//! (b) a folder of 100 demo-server workspaces: time from `mcpvisor::start`
//!     (and, separately, from exec of the release binary) to `/readyz` 200
//!     and to every workspace `running`; the slowest `/healthz` meanwhile;
//!     and the same folder with every workspace disabled (no spawns).
//!
//! Reproduce (the release binary must be built first, it is `${MCPVISOR}`):
//!   cd /work/main && CARGO_TARGET_DIR=/work/target-bench cargo build --release \
//!     && CARGO_TARGET_DIR=/work/target-bench cargo run --release --example reload_bench

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::{
    config, free_port, free_range, http_client, http_status, ms, next_where, pct, print_footer, print_header,
    root_with, subscribe, summary, wait_running, workspace_root, InProcess, Proc,
};

// ---------------------------------------------------------------- benches

const RELOADS: usize = 20;
const RECONCILE_RUNS: usize = 3;

fn demo(generation: usize) -> Value {
    let mut args = vec!["demo-server", "--port", "${PORT}"];
    if generation % 2 == 1 {
        args.extend(["--transport", "streamable-http"]);
    }
    json!({"command": "${MCPVISOR}", "args": args, "env": {"BENCH_GENERATION": generation.to_string()}})
}

struct Reload {
    to_stopping: Vec<f64>,
    to_running: Vec<f64>,
    reasons: Vec<String>,
}

async fn reload(exe: &Path) -> Reload {
    let root = workspace_root([("r", demo(0))]);
    let workspaces = root.path().join("workspaces");
    let file = workspaces.join("r.json");
    let daemon = InProcess::start(config(root.path(), free_range(32), exe)).await;
    let url = daemon.url();
    let http = http_client();
    // Wait for the first child, then follow the workspace.
    wait_running(&http, &url, "r", Duration::from_secs(30)).await;
    let mut events = subscribe(&http, format!("{url}/api/workspaces/r/events")).await;
    let mut result = Reload { to_stopping: vec![], to_running: vec![], reasons: vec![] };
    let tmp = workspaces.join("r.json.tmp");
    for generation in 1..=RELOADS {
        // Let the previous file age past the watcher's debounce, as an edit would.
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::write(&tmp, serde_json::to_vec_pretty(&demo(generation)).unwrap()).unwrap();
        let t0 = Instant::now();
        std::fs::rename(&tmp, &file).unwrap();
        let (t_stop, v_stop) = next_where(&mut events, Duration::from_secs(30), |v| v["status"] == "stopping").await;
        let (t_run, _) = next_where(&mut events, Duration::from_secs(30), |v| v["status"] == "running").await;
        result.to_stopping.push(ms(t_stop - t0));
        result.to_running.push(ms(t_run - t0));
        result.reasons.push(v_stop["reason"].as_str().unwrap_or("?").to_string());
    }
    drop(events);
    daemon.stop(Duration::from_secs(30)).await;
    result
}

/// One start of a folder of 100 workspaces.
struct ReconcileRun {
    ready: f64,
    /// None when the workspaces are disabled (nothing to wait for).
    all_running: Option<f64>,
    /// The slowest `/healthz` answer while the folder was being reconciled.
    healthz_max: f64,
    shutdown: f64,
}

/// Starts a daemon (in-process, or the release binary as a subprocess) on
/// 100 demo workspaces and times `/readyz` and every workspace `running`.
/// `/readyz` and `/healthz` are polled from plain OS threads (raw HTTP, 1 ms
/// and 5 ms), so the pollers never wait for the daemon's tokio workers.
/// `max_starts` sets the binary's `--max-concurrent-starts` (through its
/// environment variable); `None` keeps the default.
async fn reconcile_run(exe: &Path, binary: bool, enabled: bool, max_starts: Option<&str>) -> ReconcileRun {
    const N: usize = 100;
    let mut body = demo(0);
    if !enabled {
        body["enabled"] = json!(false);
    }
    let root = root_with(N, &body);
    let range = free_range(200);
    let (t0, port, mut daemon, running) = if binary {
        let port = free_port();
        match max_starts {
            Some(n) => std::env::set_var("MCPVISOR_MAX_CONCURRENT_STARTS", n),
            None => std::env::remove_var("MCPVISOR_MAX_CONCURRENT_STARTS"),
        }
        let t0 = Instant::now();
        let daemon = Proc::serve(exe, root.path(), port, range);
        (t0, port, Some(daemon), None)
    } else {
        let t0 = Instant::now();
        let running = InProcess::start(config(root.path(), range, exe)).await;
        (t0, running.addr.port(), None, Some(running))
    };
    let done = Arc::new(AtomicBool::new(false));
    let ready = std::thread::spawn(move || loop {
        if http_status(port, "/readyz") == Some(200) {
            return Instant::now();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "/readyz not 200 within 60 s");
        std::thread::sleep(Duration::from_millis(1));
    });
    let healthz = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut max = Duration::ZERO;
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                if http_status(port, "/healthz") == Some(200) {
                    max = max.max(t.elapsed());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            max
        })
    };
    let ready = tokio::task::spawn_blocking(move || ready.join().unwrap()).await.unwrap();
    let all_running = if enabled {
        let http = http_client();
        let mut events = subscribe(&http, format!("http://127.0.0.1:{port}/api/events")).await;
        // `subscribe` takes the first snapshot event: seed every status from
        // the list, read after the stream is live, so a workspace that was
        // running before it opened counts too. Later events overwrite it.
        let list: Value =
            http.get(format!("http://127.0.0.1:{port}/api/workspaces")).send().await.unwrap().json().await.unwrap();
        let mut status: HashMap<String, String> = list["workspaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["workspace"].as_str().unwrap().to_string(), w["status"].as_str().unwrap().to_string()))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut last = Instant::now();
        let at = loop {
            if status.len() == N && status.values().all(|s| s == "running") {
                break last;
            }
            let (at, v) = tokio::time::timeout_at(deadline, events.recv())
                .await
                .expect("all running within 120 s")
                .expect("stream open");
            status.insert(
                v["workspace"].as_str().unwrap_or_default().to_string(),
                v["status"].as_str().unwrap_or_default().to_string(),
            );
            last = at;
        };
        Some(ms(at - t0))
    } else {
        None
    };
    done.store(true, Ordering::Relaxed);
    let healthz_max = ms(tokio::task::spawn_blocking(move || healthz.join().unwrap()).await.unwrap());
    let t_stop = Instant::now();
    if let Some(daemon) = daemon.as_mut() {
        daemon.stop();
    }
    if let Some(running) = running {
        running.stop(Duration::from_secs(60)).await;
    }
    ReconcileRun { ready: ms(ready - t0), all_running, healthz_max, shutdown: ms(t_stop.elapsed()) }
}

#[tokio::main]
async fn main() {
    let exe = support::mcpvisor_exe();
    print_header("reload_bench", &exe, ", in-process daemon with serve defaults");
    let r = reload(&exe).await;
    let mut c = Vec::new();
    for (label, binary, enabled, max_starts) in [
        ("in-process mcpvisor::start()", false, true, None),
        ("release binary (from exec)", true, true, None),
        ("release binary, unbounded starts", true, true, Some("100000")),
        ("in-process, all `enabled: false`", false, false, None),
    ] {
        let mut runs = Vec::new();
        for _ in 0..RECONCILE_RUNS {
            runs.push(reconcile_run(&exe, binary, enabled, max_starts).await);
        }
        c.push((label, runs));
    }

    println!();
    println!("hot reload: atomic rename-over of a demo-server workspace file with changed args+env, {RELOADS} runs");
    println!("  {:<48} {:>9} {:>9} {:>9} {:>9}", "", "median", "p95", "min", "max");
    for (label, v) in [
        ("rename -> `stopping` (old child signalled)", &r.to_stopping),
        ("rename -> new child `running`", &r.to_running),
    ] {
        let (median, p95, min, max) = summary(v);
        println!("  {:<48} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms", label, median, p95, min, max);
    }
    let mut reasons = r.reasons.clone();
    reasons.dedup();
    println!("  `stopping` reasons: {reasons:?}");
    println!();
    println!("initial reconcile of a folder of 100 demo-server workspaces, median of {RECONCILE_RUNS} runs (min-max)");
    println!(
        "  {:<34} {:>21} {:>21} {:>19} {:>19}",
        "", "-> /readyz 200", "-> all 100 running", "max /healthz", "stop all (SIGTERM)"
    );
    let cell = |v: &[f64]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            format!("{:.0}ms ({:.0}-{:.0})", pct(v, 50.0), pct(v, 0.0), pct(v, 100.0))
        }
    };
    for (label, runs) in &c {
        let ready: Vec<f64> = runs.iter().map(|r| r.ready).collect();
        let all: Vec<f64> = runs.iter().filter_map(|r| r.all_running).collect();
        let healthz: Vec<f64> = runs.iter().map(|r| r.healthz_max).collect();
        let stop: Vec<f64> = runs.iter().map(|r| r.shutdown).collect();
        println!("  {:<34} {:>21} {:>21} {:>19} {:>19}", label, cell(&ready), cell(&all), cell(&healthz), cell(&stop));
    }
    print_footer("reload_bench");
}
