//! Isolation figures for BENCHMARKS.md: how long after a `kill -9` of the
//! daemon its last child (and an escaped setsid grandchild) is gone, what
//! the isolation steps add to a spawn, and how long the stop of a
//! 200-process tree takes with each isolation backend (cgroup: until
//! `populated 0`; process group: until the group is empty and reaped).
//!
//! Run: `cargo build --release && cargo run --release --example isolation_bench`

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcpvisor::config::{parse, Transport};
use mcpvisor::process::spawner::Spawner;
use mcpvisor::process::{build_spec, LaunchContext, Launcher, LocalLauncher, LogSink};
use mcpvisor::supervisor::probe::await_ready;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", support::ms(d))
}

/// Live processes whose environment carries `MCPVISOR_WORKSPACE=<prefix>...`.
fn tagged(prefix: &str) -> Vec<i32> {
    let needle = format!("MCPVISOR_WORKSPACE={prefix}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| mcpvisor::process::tree::proc_info(*pid).is_some_and(|p| !p.zombie))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v.starts_with(needle.as_bytes())))
        })
        .collect()
}

/// One daemon with 5 plain demo workspaces and 5 whose child leaves a setsid
/// grandchild; returns the time from `kill -9` of the daemon until none of
/// their processes is left.
async fn kill_daemon_once(round: usize) -> (Duration, usize) {
    let prefix = format!("iso{round}x");
    let escape = serde_json::json!({"command": "/bin/sh", "args": ["-c",
        "setsid sh -c 'while :; do sleep 0.2; done' & exec \"$0\" demo-server --port \"$PORT\"", "${MCPVISOR}"]});
    let files =
        (0..5).flat_map(|i| [(format!("{prefix}p{i}"), support::demo()), (format!("{prefix}e{i}"), escape.clone())]);
    let root = support::workspace_root(files);
    let listen = support::free_port();
    let daemon = support::Proc::serve(&support::mcpvisor_exe(), root.path(), listen, support::free_range(20));
    // Every workspace running, and one sample (2 s) has recorded the trees.
    let url = format!("http://127.0.0.1:{listen}");
    support::wait_all(&support::http_client(), &url, "running", 10, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = tagged(&prefix).len();
    let killed = Instant::now();
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGKILL).unwrap();
    drop(daemon);
    while !tagged(&prefix).is_empty() {
        assert!(killed.elapsed() < Duration::from_secs(10), "children survived the daemon");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (killed.elapsed(), before)
}

/// Spawn to first answered `initialize` of a demo-server: through mcpvisor's
/// launcher (process group, PDEATHSIG, scrubbed env, spawner thread), or as
/// a plain `Command`.
async fn spawn_to_ready(
    isolated: bool,
    launcher: &LocalLauncher,
    ctx: &LaunchContext,
    http: &mcpvisor::supervisor::probe::ProbeClient,
) -> Duration {
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let started = Instant::now();
    let ready = |started: Instant| async move {
        await_ready(http, &url, Transport::StreamableHttp, Duration::from_secs(2), Duration::from_secs(10))
            .await
            .unwrap();
        started.elapsed()
    };
    if isolated {
        let config = parse(br#"{"command": "${MCPVISOR}", "args": ["demo-server", "--port", "${PORT}"]}"#).unwrap();
        let spec = build_spec("bench", &config, port, ctx).unwrap();
        let logs = LogSink::open(&ctx.logs_dir(), "bench");
        let mut child = launcher.spawn(&spec, &logs).await.unwrap();
        let took = ready(started).await;
        child.kill();
        child.wait_gone().await;
        took
    } else {
        let mut child = tokio::process::Command::new(support::mcpvisor_exe())
            .args(["demo-server", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let took = ready(started).await;
        let _ = child.kill().await;
        took
    }
}

#[tokio::main]
async fn main() {
    let mut kills = Vec::new();
    let mut counts = Vec::new();
    for round in 0..5 {
        let (took, n) = kill_daemon_once(round).await;
        kills.push(took);
        counts.push(n);
    }
    println!("## kill -9 of mcpvisor (10 workspaces, 5 with a setsid grandchild), 5 runs");
    println!("| figure | value |\n|---|---|");
    println!("| processes of the workspaces before the kill | {counts:?} |");
    println!("| kill -9 to the last of them gone, median | {} |", ms(median(kills.clone())));
    println!("| kill -9 to the last of them gone, max | {} |", ms(*kills.iter().max().unwrap()));

    let dir = tempfile::tempdir().unwrap();
    let ctx = LaunchContext {
        workspaces_dir: dir.path().to_path_buf(),
        state_dir: dir.path().join("state"),
        mcpvisor_exe: support::mcpvisor_exe(),
    };
    let cgroups = mcpvisor::process::cgroup::Cgroups::setup(&ctx.state_dir).ok();
    let launcher = Arc::new(launcher_with(cgroups.clone()));
    let http = mcpvisor::supervisor::probe::probe_client();
    let (mut plain, mut isolated) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        plain.push(spawn_to_ready(false, &launcher, &ctx, &http).await);
        isolated.push(spawn_to_ready(true, &launcher, &ctx, &http).await);
    }
    let (plain, isolated) = (median(plain), median(isolated));
    println!("\n## Spawn to first answered MCP initialize, demo-server, median of 20 (interleaved)");
    println!("| spawn path | median |\n|---|---|");
    println!("| plain `Command` (no group, no PDEATHSIG, inherited env) | {} |", ms(plain));
    let backend = if cgroups.is_some() { "cgroup" } else { "process group" };
    println!(
        "| mcpvisor launcher ({backend}, PDEATHSIG + getppid check, scrubbed env, spawner thread, output capture) | {} |",
        ms(isolated)
    );
    println!("| added by the isolation steps | {} |", ms(isolated.saturating_sub(plain)));

    mcpvisor::process::reaper::become_subreaper().expect("a subreaper, as the daemon is");
    println!("\n## Stop of a 200-process tree (a shell's 199 background jobs and the leader), median of 5");
    println!("| backend | SIGTERM to gone | SIGKILL to gone |\n|---|---|---|");
    let backends = [("process group", launcher_with(None))].into_iter();
    for (name, launcher) in backends.chain(cgroups.clone().map(|c| ("cgroup", launcher_with(Some(c))))) {
        let mut terms = Vec::new();
        let mut kills = Vec::new();
        for _ in 0..5 {
            terms.push(stop_tree(&launcher, &ctx, Some(Signal::SIGTERM)).await);
            kills.push(stop_tree(&launcher, &ctx, None).await);
        }
        println!("| {name} | {} | {} |", ms(median(terms)), ms(median(kills)));
    }
    if let Some(cgroups) = cgroups {
        cgroups.remove();
    }
}

fn launcher_with(cgroups: Option<mcpvisor::process::cgroup::Cgroups>) -> LocalLauncher {
    let root = cgroups.as_ref().map(|c| c.root_in_hierarchy().to_path_buf());
    let reaper = Arc::new(mcpvisor::process::reaper::Reaper::new(root));
    LocalLauncher::new(Spawner::start(tokio::runtime::Handle::current()), reaper, cgroups)
}

/// Starts a tree of 200 processes, then times `signal` (or a kill) until
/// `wait_gone` resolves.
async fn stop_tree(launcher: &LocalLauncher, ctx: &LaunchContext, signal: Option<Signal>) -> Duration {
    let script = "i=0; while [ $i -lt 199 ]; do sleep 900 & i=$((i+1)); done; exec sleep 901";
    let config =
        parse(serde_json::json!({"command": "/bin/sh", "args": ["-c", script]}).to_string().as_bytes()).unwrap();
    let spec = build_spec("tree200", &config, 1, ctx).unwrap();
    let logs = LogSink::open(&ctx.logs_dir(), "tree200");
    let mut child = launcher.spawn(&spec, &logs).await.unwrap();
    let tree = launcher.census().trees().into_iter().find(|t| t.leader() == child.pid() as i32).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tree.members().len() < 200 {
        assert!(Instant::now() < deadline, "the tree never grew to 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    match signal {
        Some(signal) => child.signal(signal),
        None => child.kill(),
    }
    child.wait().await;
    child.wait_gone().await;
    started.elapsed()
}
