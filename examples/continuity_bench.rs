//! Session continuity across a kill -9 of the child (docs/reference.md §11, issue 13).
//!
//! `mcpvisor serve` (the release binary, a subprocess) runs one demo-server
//! workspace. One Streamable HTTP client session is opened through the proxy
//! (`/workspaces/demo/mcp`) and calls the `pid` tool. Then, `KILLS` times:
//! `kill -9` the child (its pid from `GET /api/workspaces/demo`) and at once
//! POST `tools/call pid` on the same session, again after 1 ms whenever the
//! answer is an error (counted as a retry), and time from the kill to the
//! first successful answer from a new child (another pid). The proxy carries
//! the session to the new child (it replays the client's `initialize`).
//!
//! Next to it, interleaved so that both see the same load: the child's own
//! start, `mcpvisor demo-server` spawned directly until it answers MCP
//! `initialize` (1 ms poll). The aim: continuity at most the child's own
//! start + 10 ms.
//!
//! The workspace sets `restart.stableAfter: 1s` (and a large breaker
//! threshold), and each kill comes `SETTLE` after the previous answer, so
//! every crash follows a stable run and is restarted without backoff
//! (docs/reference.md §5).
//!
//! Reproduce:
//!   CARGO_TARGET_DIR=/work/target-bench cargo build --release --bin mcpvisor --examples \
//!     && /work/target-bench/release/examples/continuity_bench

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use support::{
    demo, demo_alone, free_port, free_range, http_client, jsonrpc, ms, own_start, print_footer, print_header,
    streamable_session, summary, try_post, wait_running, workspace_root, Proc,
};

const KILLS: usize = 20;
/// Time from a new child's first answer to the next kill: longer than the
/// workspace's `stableAfter` (1 s), so that the failure streak has ended.
const SETTLE: Duration = Duration::from_millis(1300);
/// Longest wait for a successful answer after a kill.
const WITHIN: Duration = Duration::from_secs(30);

fn workspace() -> Value {
    let mut ws = demo();
    ws["restart"] = json!({"stableAfter": "1s"});
    ws["circuitBreaker"] = json!({"failureThreshold": 1000});
    ws
}

/// The pid the `pid` tool answered, or why the answer is not one.
fn answered_pid(status: u16, body: &str) -> Result<i32, String> {
    let message = jsonrpc(body).filter(|_| status == 200).ok_or_else(|| format!("HTTP {status}: {body}"))?;
    let result = &message["result"];
    if message.get("error").is_some() || result["isError"] == true {
        return Err(message.to_string());
    }
    result["content"][0]["text"].as_str().and_then(|t| t.trim().parse().ok()).ok_or_else(|| message.to_string())
}

/// A client session through the proxy.
struct Session {
    http: reqwest::Client,
    url: String,
    id: String,
    calls: u64,
}

impl Session {
    /// `tools/call pid` once: the pid, or why the answer is not one.
    async fn pid(&mut self) -> Result<i32, String> {
        self.calls += 1;
        let call = json!({"jsonrpc": "2.0", "id": self.calls, "method": "tools/call",
                          "params": {"name": "pid", "arguments": {}}});
        let (status, _, body) =
            try_post(&self.http, &self.url, Some(&self.id), &call).await.map_err(|e| format!("request: {e}"))?;
        answered_pid(status, &body)
    }
}

/// One kill and recovery.
struct Recovery {
    ms: f64,
    retries: usize,
    first_error: Option<String>,
}

/// Kills `old` and calls `pid` on the session until a new child answers.
async fn kill_and_call(session: &mut Session, old: i32) -> Recovery {
    let t0 = Instant::now();
    kill(Pid::from_raw(old), Signal::SIGKILL).expect("kill -9 the child");
    let (mut retries, mut first_error) = (0, None);
    loop {
        match session.pid().await {
            Ok(pid) if pid != old => return Recovery { ms: ms(t0.elapsed()), retries, first_error },
            Ok(_) => first_error.get_or_insert_with(|| "the killed child answered".to_string()),
            Err(e) => first_error.get_or_insert(e),
        };
        retries += 1;
        assert!(t0.elapsed() < WITHIN, "no answer from a new child within {WITHIN:?}: {first_error:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn child_pid(http: &reqwest::Client, url: &str) -> i32 {
    let status: Value = http.get(format!("{url}/api/workspaces/demo")).send().await.unwrap().json().await.unwrap();
    status["pid"].as_i64().unwrap_or_else(|| panic!("no pid in {status}")) as i32
}

fn row(label: &str, v: &[f64]) {
    let (median, p95, min, max) = summary(v);
    println!("  {label:<58} {median:>7.1}ms {p95:>7.1}ms {min:>7.1}ms {max:>7.1}ms");
}

#[tokio::main]
async fn main() {
    let exe = support::mcpvisor_exe();
    print_header(
        "continuity_bench",
        &exe,
        &format!("; {KILLS} kill -9 of a demo-server child, {SETTLE:?} after each recovery"),
    );
    let root = workspace_root([("demo", workspace())]);
    let listen = free_port();
    let mut daemon = Proc::serve(&exe, root.path(), listen, free_range(32));
    let url = format!("http://127.0.0.1:{listen}");
    let api = http_client();
    wait_running(&api, &url, "demo", WITHIN).await;

    let mcp = format!("{url}/workspaces/demo/mcp");
    let (http, id) = streamable_session(&mcp).await;
    let id = id.expect("the proxy gives the session an Mcp-Session-Id");
    let mut session = Session { http, url: mcp, id, calls: 0 };
    let first = session.pid().await.expect("the first pid call");
    assert_eq!(first, child_pid(&api, &url).await, "the pid tool and the API name the same child");

    let (mut own, mut recoveries) = (Vec::new(), Vec::new());
    let mut settled = Instant::now();
    for _ in 0..KILLS {
        let e = exe.clone();
        own.push(tokio::task::spawn_blocking(move || own_start(|port| demo_alone(&e, port))).await.unwrap());
        tokio::time::sleep_until((settled + SETTLE).into()).await;
        let old = child_pid(&api, &url).await;
        recoveries.push(kill_and_call(&mut session, old).await);
        settled = Instant::now();
    }
    let status: Value = api.get(format!("{url}/api/workspaces/demo")).send().await.unwrap().json().await.unwrap();
    let connections: Value =
        api.get(format!("{url}/api/debug/state/connections")).send().await.unwrap().json().await.unwrap();
    daemon.stop();

    let continuity: Vec<f64> = recoveries.iter().map(|r| r.ms).collect();
    let retries: Vec<usize> = recoveries.iter().map(|r| r.retries).collect();
    println!();
    println!("one Streamable HTTP session through /workspaces/demo/mcp, {KILLS} runs each (interleaved)");
    println!("  {:<58} {:>9} {:>9} {:>9} {:>9}", "", "median", "p95", "min", "max");
    row("kill -9 -> next `tools/call pid` on the session answered", &continuity);
    row("the child alone: exec -> answers `initialize` (1 ms poll)", &own);
    let (c, o) = (summary(&continuity).0, summary(&own).0);
    println!("  difference of medians: {:+.1} ms (aim: at most +10 ms)", c - o);
    println!(
        "  retries (error answers before the new child's): {} in all, per kill {retries:?}",
        retries.iter().sum::<usize>()
    );
    if let Some(e) = recoveries.iter().find_map(|r| r.first_error.as_deref()) {
        println!("  first error answer: {}", e.chars().take(200).collect::<String>());
    }
    println!("  workspace after the run: restartCount {}, breaker {}", status["restartCount"], status["breaker"]);
    println!("  sessions (GET /api/debug/state/connections): {connections}");
    print_footer("continuity_bench");
}
