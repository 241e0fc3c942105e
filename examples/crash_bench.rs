//! Crash and hang recovery benchmarks: mcpvisor against supervisord and pm2.
//!
//! For each supervisor: 20 times `kill -9` the demo-server child and time,
//! from the outside and the same way for all, until a new child answers an
//! MCP `initialize` on the same port (polled every 1 ms). Then, for
//! mcpvisor only, the detection of a hung child: the demo-server's `hang`
//! tool freezes it, and the health probe (interval 1 s, timeout 500 ms,
//! failureThreshold 2) must replace it.
//!
//! The mcpvisor workspaces set `restart.stableAfter: 1s` and a large
//! `circuitBreaker.failureThreshold`, and each kill comes 1.3 s after the
//! child answered: every crash is a "rare crash" after a stable run
//! (docs/reference.md §5), and pm2's `min_uptime` (1 s) is also passed.
//! supervisord (PyPI) and pm2 (npm) are installed by `scripts/bench-setup` (into
//! `target/bench-peers`, or `$MCPVISOR_BENCH_PEERS`).
//!
//! The crash series also runs, in the same run, for the same binary with its
//! cgroup v2 mount made read-only (in a private mount namespace, so the
//! daemon falls back to process-group tracking), and for a previous build
//! given as `MCPVISOR_BEFORE=/path/to/mcpvisor`.
//!
//! Reproduce (the release binary must be built first, it is `${MCPVISOR}`):
//!   cd /work/main && CARGO_TARGET_DIR=/work/target-bench cargo build --release \
//!     && CARGO_TARGET_DIR=/work/target-bench cargo run --release --example crash_bench

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use support::{
    free_port, free_range, http_client, mcp_delete, mcp_request, mcp_session, ms, next_where, print_footer,
    print_header, raw_http, serve_command, subscribe, summary, wait_initialize, wait_running, workspace_root, Proc,
};

// ---------------------------------------------------------------- MCP calls

fn tool_request(port: u16, session: &str, tool: &str) -> String {
    mcp_request(
        port,
        Some(session),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": {}}}),
    )
}

/// The child's pid, from the demo-server's `pid` tool: the same for every supervisor.
fn child_pid(port: u16) -> Option<i32> {
    let session = mcp_session(port)?;
    let response = raw_http(port, &tool_request(port, &session, "pid"), "\"result\"", Duration::from_secs(2)).ok();
    mcp_delete(port, &session);
    let response = response?;
    let data = response.lines().find(|l| l.starts_with("data:") && l.contains("\"result\""))?;
    let value: Value = serde_json::from_str(data.trim_start_matches("data:").trim()).ok()?;
    value["result"]["content"][0]["text"].as_str()?.trim().parse().ok()
}

/// Sends `tools/call hang` and keeps the connection open (the call never returns).
fn call_hang(port: u16) -> (Instant, TcpStream) {
    let session = mcp_session(port).expect("session for hang");
    let request = tool_request(port, &session, "hang");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect for hang");
    stream.set_nodelay(true).unwrap();
    let at = Instant::now();
    stream.write_all(request.as_bytes()).expect("send hang");
    (at, stream)
}

// ---------------------------------------------------------------- crash series

/// Settling time after the child answers before it is killed: longer than
/// the workspaces' `stableAfter` (1 s) and pm2's `min_uptime` (1 s), so each
/// crash is a "rare crash" after a stable run for every supervisor.
const SETTLE: Duration = Duration::from_millis(1300);
const KILLS: usize = 20;

/// `KILLS` times: kill -9 the demo-server on `port`, time until a new child
/// answers MCP `initialize` there (1 ms poll).
fn crash_series(label: &str, port: u16) -> Result<Vec<f64>, String> {
    wait_initialize(port, Duration::from_secs(30))
        .ok_or_else(|| format!("{label}: child never answered on port {port}"))?;
    let mut out = Vec::new();
    for i in 0..KILLS {
        std::thread::sleep(SETTLE);
        let pid = child_pid(port).ok_or_else(|| format!("{label}: pid tool failed before kill {i}"))?;
        let t0 = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGKILL).map_err(|e| format!("{label}: kill {pid}: {e}"))?;
        let at = wait_initialize(port, Duration::from_secs(60))
            .ok_or_else(|| format!("{label}: no replacement within 60 s after kill {i}"))?;
        out.push(ms(at - t0));
        match child_pid(port) {
            Some(new) if new != pid => {}
            other => return Err(format!("{label}: after kill {i} the pid is {other:?} (killed {pid})")),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- peers

fn run_quiet(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("{cmd:?} failed ({}): {}", out.status, err.lines().rev().take(3).collect::<Vec<_>>().join(" | ")))
    }
}

/// Where `scripts/bench-setup` installed the peers: `$MCPVISOR_BENCH_PEERS`,
/// else `target/bench-peers` of this repository.
fn peers_dir() -> PathBuf {
    std::env::var_os("MCPVISOR_BENCH_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-peers"))
}

/// A peer's executable under [`peers_dir`], or why it is missing.
fn peer(relative: &str) -> Result<PathBuf, String> {
    let bin = peers_dir().join(relative);
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("{} missing: run scripts/bench-setup", bin.display()))
    }
}

/// supervisord (PyPI `supervisor`), installed by `scripts/bench-setup`.
fn install_supervisord() -> Result<PathBuf, String> {
    peer("venv/bin/supervisord")
}

/// pm2 (npm), installed by `scripts/bench-setup`.
fn install_pm2() -> Result<PathBuf, String> {
    peer("node_modules/.bin/pm2")
}

fn bench_supervisord(exe: &Path) -> Result<Vec<f64>, String> {
    let bin = install_supervisord()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path().display();
    let port = free_port();
    let conf = format!(
        "[unix_http_server]\nfile={d}/supervisor.sock\n\n[supervisord]\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}\nnodaemon=true\n\n\
         [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n[supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\n\
         [program:x]\ncommand={} demo-server --port {port}\nautostart=true\nautorestart=true\nstartsecs=0\nstartretries=1000\nstopsignal=TERM\nstopwaitsecs=5\n\
         stdout_logfile={d}/x.out\nstderr_logfile={d}/x.err\n",
        exe.display()
    );
    let conf_path = dir.path().join("supervisord.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let mut daemon = Proc::spawn(Command::new(&bin).arg("-n").arg("-c").arg(&conf_path));
    let result = crash_series("supervisord", port);
    daemon.stop();
    result
}

fn bench_pm2(exe: &Path) -> Result<Vec<f64>, String> {
    let bin = install_pm2()?;
    let home = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let pm2 = |args: &[&str]| {
        let mut cmd = Command::new(&bin);
        cmd.args(args).env("PM2_HOME", home.path()).stdin(Stdio::null());
        cmd
    };
    let started = run_quiet(&mut pm2(&[
        "start",
        &exe.display().to_string(),
        "--name",
        "x",
        "--",
        "demo-server",
        "--port",
        &port.to_string(),
    ]));
    let result = started.and_then(|()| crash_series("pm2", port));
    // Always stop pm2's daemon (and with it the child).
    if let Err(e) = run_quiet(&mut pm2(&["kill"])) {
        eprintln!("pm2 kill: {e}");
    }
    result
}

// ---------------------------------------------------------------- mcpvisor

fn crash_workspace(exe_health: Option<Value>) -> Value {
    let mut ws = json!({
        "command": "${MCPVISOR}",
        "args": ["demo-server", "--port", "${PORT}"],
        "restart": {"stableAfter": "1s"},
        "circuitBreaker": {"failureThreshold": 1000}
    });
    if let Some(health) = exe_health {
        ws["health"] = health;
    }
    ws
}

struct Mcpvisor {
    crash: Vec<f64>,
    isolation: String,
    breaker_failures: Value,
    restart_count: Value,
    hang_to_error: Vec<f64>,
    hang_to_starting: Vec<f64>,
    hang_reasons: Vec<String>,
}

/// The `crash` workspace's isolation backend, from the resources sample.
async fn isolation(http: &reqwest::Client, url: &str) -> String {
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{url}/api/debug/state/resources")).send().await {
            let v: Value = r.json().await.unwrap_or_default();
            if let Some(isolation) = v["children"]["crash"]["isolation"].as_str() {
                return isolation.to_string();
            }
            if v["children"]["crash"].is_object() {
                return "not reported".into();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    "unknown".into()
}

/// The crash series alone, for `exe` started as `wrap` says; returns the
/// figures and the isolation the workspace got.
async fn crash_only(label: &'static str, exe: &Path, wrap: fn(Command) -> Command) -> (Vec<f64>, String) {
    let root = workspace_root([("crash", crash_workspace(None))]);
    let listen = free_port();
    let range = free_range(32);
    let command = serve_command(exe, &root.path().join("workspaces"), &root.path().join("state"), listen, range);
    let mut daemon = Proc::spawn(&mut wrap(command));
    let url = format!("http://127.0.0.1:{listen}");
    let http = http_client();
    let port = wait_running(&http, &url, "crash", Duration::from_secs(30)).await["port"].as_u64().unwrap() as u16;
    let isolation = isolation(&http, &url).await;
    let crash =
        tokio::task::spawn_blocking(move || crash_series(label, port)).await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    daemon.stop();
    (crash, isolation)
}

/// Runs `command` in a private mount namespace whose cgroup v2 mount is
/// read-only: mcpvisor cannot make cgroups and tracks process groups.
fn without_cgroups(command: Command) -> Command {
    let mut wrapped = Command::new("unshare");
    wrapped
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("for m in $(awk '$3 == \"cgroup2\" {print $2}' /proc/mounts); do mount -o remount,bind,ro \"$m\" || exit 1; done; exec \"$@\"")
        .arg("sh")
        .arg(command.get_program())
        .args(command.get_args());
    wrapped
}

async fn bench_mcpvisor(exe: &Path) -> Mcpvisor {
    let root = workspace_root([
        ("crash", crash_workspace(None)),
        ("hang", crash_workspace(Some(json!({"interval": "1s", "timeout": "500ms", "failureThreshold": 2})))),
    ]);
    let listen = free_port();
    let mut daemon = Proc::serve(exe, root.path(), listen, free_range(32));
    let url = format!("http://127.0.0.1:{listen}");
    let http = http_client();
    let within = Duration::from_secs(30);
    let crash_port = wait_running(&http, &url, "crash", within).await["port"].as_u64().unwrap() as u16;
    let isolation = isolation(&http, &url).await;
    let crash = tokio::task::spawn_blocking(move || crash_series("mcpvisor", crash_port))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let status = wait_running(&http, &url, "crash", within).await;

    // Hung child: hang call -> `error` (unhealthy) -> `starting`.
    let hang_port = wait_running(&http, &url, "hang", within).await["port"].as_u64().unwrap() as u16;
    let mut events = subscribe(&http, format!("{url}/api/workspaces/hang/events")).await;
    let (mut hang_to_error, mut hang_to_starting, mut hang_reasons) = (vec![], vec![], vec![]);
    for _ in 0..5 {
        tokio::task::spawn_blocking(move || wait_initialize(hang_port, Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("hang child up");
        tokio::time::sleep(SETTLE).await;
        let (t0, stream) = tokio::task::spawn_blocking(move || call_hang(hang_port)).await.unwrap();
        let (t_err, v_err) = next_where(&mut events, Duration::from_secs(30), |v| v["status"] == "error").await;
        let (t_start, _) = next_where(&mut events, Duration::from_secs(30), |v| v["status"] == "starting").await;
        hang_reasons.push(v_err["reason"].as_str().unwrap_or("?").to_string());
        hang_to_error.push(ms(t_err - t0));
        hang_to_starting.push(ms(t_start - t0));
        drop(stream);
    }
    drop(events);
    daemon.stop();
    Mcpvisor {
        crash,
        isolation,
        breaker_failures: status["breaker"]["failureCount"].clone(),
        restart_count: status["restartCount"].clone(),
        hang_to_error,
        hang_to_starting,
        hang_reasons,
    }
}

#[tokio::main]
async fn main() {
    let exe = support::mcpvisor_exe();
    print_header("crash_bench", &exe, &format!("; {KILLS} kill -9 per supervisor, {SETTLE:?} of uptime before each"));
    let m = bench_mcpvisor(&exe).await;
    let process_group = if nix::unistd::geteuid().is_root() {
        Some(crash_only("mcpvisor (process groups)", &exe, without_cgroups).await)
    } else {
        None
    };
    let before = match std::env::var_os("MCPVISOR_BEFORE") {
        Some(before) => Some(crash_only("mcpvisor before", Path::new(&before), |c| c).await),
        None => None,
    };
    let e = exe.clone();
    let supervisord = tokio::task::spawn_blocking(move || bench_supervisord(&e)).await.unwrap();
    let e = exe.clone();
    let pm2 = tokio::task::spawn_blocking(move || bench_pm2(&e)).await.unwrap();
    // The aim is recovery within the child's own start + 3 ms: measured in the same run.
    let e = exe.clone();
    let alone: Vec<f64> = tokio::task::spawn_blocking(move || {
        (0..KILLS).map(|_| support::own_start(|port| support::demo_alone(&e, port))).collect()
    })
    .await
    .unwrap();

    println!();
    println!("kill -9 of the demo-server child -> a new child answers MCP initialize on the same port (1 ms poll)");
    println!("  {:<46} {:>9} {:>9} {:>9} {:>9} {:>16}", "supervisor", "median", "p95", "min", "max", "median ratio");
    let (mm, mp, mn, mx) = summary(&m.crash);
    let with_isolation = |name: &str, isolation: &str| format!("{name} [{isolation}]");
    println!(
        "  {:<46} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>16}",
        with_isolation("mcpvisor", &m.isolation),
        mm,
        mp,
        mn,
        mx,
        "1.00"
    );
    let mut others = Vec::new();
    if let Some((v, isolation)) = &process_group {
        others.push((with_isolation("mcpvisor, cgroup2 read-only", isolation), Ok(v.clone())));
    }
    if let Some((v, isolation)) = &before {
        others.push((with_isolation("mcpvisor before", isolation), Ok(v.clone())));
    }
    others.push(("supervisord".into(), supervisord));
    others.push(("pm2".into(), pm2));
    for (name, result) in &others {
        match result {
            Ok(v) => {
                let (a, b, c, d) = summary(v);
                println!(
                    "  {:<46} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>9.2} (p95 {:.2})",
                    name,
                    a,
                    b,
                    c,
                    d,
                    a / mm,
                    b / mp
                );
            }
            Err(e) => println!("  {name:<46} not measured: {e}"),
        }
    }
    let (a, b, c, d) = summary(&alone);
    println!(
        "  {:<46} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>7.2}ms",
        "the child alone, exec -> initialize (no kill)", a, b, c, d
    );
    println!("  mcpvisor's recovery minus the child's own start (medians): {:+.2} ms", mm - a);
    println!(
        "  mcpvisor workspace after {KILLS} crashes: restartCount {}, breaker.failureCount {}",
        m.restart_count, m.breaker_failures
    );
    println!();
    println!("hung child (demo-server `hang` tool), health {{interval 1s, timeout 500ms, failureThreshold 2}}, 5 runs");
    println!("  {:<44} {:>9} {:>9} {:>9}", "", "median", "min", "max");
    let (a, _, c, d) = summary(&m.hang_to_error);
    println!("  {:<44} {:>7.0}ms {:>7.0}ms {:>7.0}ms", "hang call -> `error` notification", a, c, d);
    let (a, _, c, d) = summary(&m.hang_to_starting);
    println!("  {:<44} {:>7.0}ms {:>7.0}ms {:>7.0}ms", "hang call -> `starting` (replacement)", a, c, d);
    println!("  reasons of the `error` notifications: {:?}", m.hang_reasons);
    print_footer("crash_bench");
}
