//! No orphans: children die with the daemon, escaped grandchildren too, a
//! crashed daemon's leftovers are swept, and a reused pid is never touched.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mcpvisor::process::cgroup;
use serde_json::json;

const UP: Duration = Duration::from_secs(20);

/// A workspace whose child leaves a grandchild in its own session.
fn with_setsid_grandchild() -> serde_json::Value {
    json!({
        "command": "/bin/sh",
        "args": ["-c", "setsid sh -c 'while :; do sleep 0.2; done' & exec \"$0\" demo-server --port \"$PORT\"", "${MCPVISOR}"],
    })
}

async fn wait_processes(workspace: &str, at_least: usize) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + UP;
    loop {
        let pids = processes_of(workspace);
        if pids.len() >= at_least {
            return pids;
        }
        assert!(tokio::time::Instant::now() < deadline, "{workspace}: {pids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_daemon_leaves_nothing_and_a_new_daemon_reuses_the_ports() {
    let dir = tempfile::tempdir().unwrap();
    let workspaces = dir.path().join("workspaces");
    std::fs::create_dir_all(&workspaces).unwrap();
    write_file(&workspaces.join("plain.json"), &demo());
    write_file(&workspaces.join("escape.json"), &with_setsid_grandchild());
    let (lo, hi) = port_range();
    let listen = format!("127.0.0.1:{}", portpicker::pick_unused_port().unwrap());
    let serve = |listen: &str| {
        Command::new(MCPVISOR)
            .args(["serve", "--listen", listen, "--port-range", &format!("{lo}-{hi}"), "--workspaces"])
            .arg(&workspaces)
            .arg("--state")
            .arg(dir.path().join("state"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut daemon = serve(&listen);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let status = |name: &'static str| {
        let http = http.clone();
        let url = format!("http://{listen}/api/workspaces/{name}");
        async move {
            let deadline = tokio::time::Instant::now() + UP;
            loop {
                if let Ok(r) = http.get(&url).send().await {
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    if body["status"] == "running" {
                        return body;
                    }
                }
                assert!(tokio::time::Instant::now() < deadline, "{name} not running");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let plain = status("plain").await;
    let escape = status("escape").await;
    let escaped = wait_processes("escape", 2).await;
    // Let a sample record the escaped grandchild in runtime.json.
    let deadline = tokio::time::Instant::now() + UP;
    loop {
        let runtime = std::fs::read_to_string(dir.path().join("state/runtime.json")).unwrap_or_default();
        let runtime: serde_json::Value = serde_json::from_str(&runtime).unwrap_or_default();
        if runtime["workspaces"]["escape"]["tree"].as_array().is_some_and(|t| !t.is_empty()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "tree never recorded: {runtime}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut all = processes_of("plain");
    all.extend(&escaped);

    daemon.kill().unwrap();
    daemon.wait().unwrap();
    for pid in &all {
        wait_gone(*pid, Duration::from_secs(2)).await;
    }

    let mut again = serve(&listen);
    let plain_again = status("plain").await;
    let escape_again = status("escape").await;
    assert_eq!(plain_again["port"], plain["port"]);
    assert_eq!(escape_again["port"], escape["port"]);
    assert_eq!(processes_of("plain"), vec![plain_again["pid"].as_u64().unwrap()], "no duplicates");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(again.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(again.wait().unwrap().success());
    let left: Vec<(u64, String)> = processes_of("plain")
        .into_iter()
        .chain(processes_of("escape"))
        .map(|pid| (pid, std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default()))
        .collect();
    assert!(left.is_empty(), "clean shutdown leaves nothing: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_matches_pid_and_start_time() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workspaces")).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let mut ours = Command::new("sleep").arg("60").spawn().unwrap();
    let mut unrelated = Command::new("sleep").arg("60").spawn().unwrap();
    let start = |pid: u32| mcpvisor::process::tree::proc_info(pid as i32).unwrap().start_time;
    let runtime = json!({"version": 1, "workspaces": {
        "ours": {"pid": ours.id(), "pgid": 999_999, "startTime": start(ours.id()), "port": 1, "tree": []},
        // The pid was reused by an unrelated process: its start time differs.
        "reused": {"pid": unrelated.id(), "pgid": 999_998, "startTime": start(unrelated.id()) - 1, "port": 2, "tree": []},
    }});
    std::fs::write(dir.path().join("state/runtime.json"), runtime.to_string()).unwrap();
    let daemon = Daemon::start_at(dir.path(), port_range()).await;
    // The sweep ran before `start` returned.
    assert!(ours.wait().unwrap().code().is_none(), "the recorded leftover was killed");
    assert!(unrelated.try_wait().unwrap().is_none(), "the unrelated process lives");
    unrelated.kill().unwrap();
    let _ = unrelated.wait();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_forking_child_is_killed_by_stop() {
    let double_fork = json!({
        "command": "/bin/sh",
        "args": ["-c", "(setsid sh -c 'while :; do sleep 0.2; done' &); exec \"$0\" demo-server --port \"$PORT\"", "${MCPVISOR}"],
    });
    let daemon = Daemon::start(&[("dfork", double_fork)]).await;
    daemon.wait_status("dfork", "running", UP).await;
    let pids = wait_processes("dfork", 2).await;
    daemon.post("/api/workspaces/dfork/stop").await;
    daemon.wait_status("dfork", "stopped", UP).await;
    for pid in pids {
        wait_gone(pid, Duration::from_secs(2)).await;
    }
    daemon.stop().await;
}

/// The kernel (a cgroup memory limit) or the supervisor (sampling) stops a
/// child whose tree passes `limits.memoryMb`: `tail` keeps its one endless
/// line of `/dev/zero` in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_over_its_memory_limit_is_killed_and_restarted() {
    let ws = json!({
        "command": "/bin/sh",
        "args": ["-c", "exec tail /dev/zero"],
        "limits": {"memoryMb": 32},
        "restart": {"backoffInitial": "5s"},
    });
    let daemon = Daemon::start(&[("hungry", ws)]).await;
    let status = daemon.wait_for("hungry", UP, |s| !s["lastError"].is_null()).await;
    let error = &status["lastError"];
    let sampled = error["reason"] == "memory limit";
    let oom_killed = error["signal"] == "SIGKILL"
        && error["stderrTail"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("out of memory"));
    assert!(sampled || oom_killed, "{status:#}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_files_limit_applies_to_the_child() {
    let ws = json!({
        "command": "/bin/sh",
        "args": ["-c", "echo \"nofile=$(ulimit -n)\" >&2; exec \"$0\" demo-server --port \"$PORT\"", "${MCPVISOR}"],
        "limits": {"openFiles": 321},
    });
    let daemon = Daemon::start(&[("files", ws)]).await;
    daemon.wait_status("files", "running", UP).await;
    let (_, logs) = daemon.get("/api/workspaces/files/logs?lines=50").await;
    assert!(logs["lines"].as_array().unwrap().iter().any(|l| l["line"] == "nofile=321"), "{logs}");
    daemon.stop().await;
}

/// `PR_SET_PDEATHSIG` fires when the thread that forked a child exits.
/// Children are forked on a thread that lives as long as the daemon, so an
/// idle spell longer than tokio's blocking-pool keep-alive (10 s) kills
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_outlive_idle_runtime_threads() {
    let daemon = Daemon::start(&[("calm", demo())]).await;
    let before = daemon.wait_status("calm", "running", UP).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = daemon.status("calm").await;
    assert_eq!(after["pid"], before["pid"]);
    assert_eq!(after["restartCount"], 0);
    assert!(alive(before["pid"].as_u64().unwrap()));
    daemon.stop().await;
}

/// Whether this host gives mcpvisor cgroups (root and a writable cgroup2
/// mount): there, a workspace that reports anything else is a bug.
fn cgroups_here() -> bool {
    let here = cgroup::available();
    if !here {
        eprintln!("no writable cgroup v2 here: the cgroup parts of this test are skipped");
    }
    here
}

/// Live processes whose `/proc/<pid>/<file>` satisfies `matches`.
fn processes_where(file: &str, matches: impl Fn(&[u8]) -> bool) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| std::fs::read(format!("/proc/{pid}/{file}")).is_ok_and(|bytes| matches(&bytes)))
        .collect()
}

/// Live processes whose environment names a workspace starting with `prefix`.
fn processes_with_prefix(prefix: &str) -> Vec<u64> {
    let needle = format!("MCPVISOR_WORKSPACE={prefix}");
    processes_where("environ", |env| env.split(|b| *b == 0).any(|v| v.starts_with(needle.as_bytes())))
}

/// Live processes whose command line contains `token`.
fn processes_with_token(token: &str) -> Vec<u64> {
    processes_where("cmdline", |cmd| cmd.windows(token.len()).any(|w| w == token.as_bytes()))
}

/// Every process in the cgroups below `dir`, and the cgroups themselves.
fn cgroup_members(dir: &Path) -> (Vec<u64>, Vec<PathBuf>) {
    let (mut pids, mut dirs) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.parse::<u64>().ok()));
            let (more, below) = cgroup_members(&path);
            pids.extend(more);
            dirs.extend(below);
            dirs.push(path);
        }
    }
    (pids, dirs)
}

/// Zombie children of this process in one of `groups`.
fn zombies_in(groups: &[u64]) -> Vec<u64> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(mcpvisor::process::tree::proc_info)
        .filter(|p| p.zombie && p.ppid == me && groups.contains(&(p.pgrp as u64)))
        .map(|p| p.pid as u64)
        .collect()
}

/// Config history commits with `git`, whose auto maintenance detaches by
/// default: the detached process is reparented to the daemon (the
/// subreaper) and must not stay its zombie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_history_leaves_no_zombie_in_the_daemon() {
    let daemon = Daemon::spawn_process(&[("kept", demo())], &[]).await;
    let pid = daemon.pid().unwrap() as i32;
    daemon.wait_status("kept", "running", UP).await;
    for generation in 1..=3 {
        let mut config = demo();
        config["env"] = json!({ "GENERATION": generation.to_string() });
        daemon.write("kept", &config);
        let commits = generation + 1;
        eventually(format!("{commits} history entries"), UP, || async {
            let (_, body) = daemon.get("/api/workspaces/kept/history").await;
            let entries = body["history"].as_array().map_or(0, Vec::len);
            if entries >= commits {
                Ok(())
            } else {
                Err(body.to_string())
            }
        })
        .await;
    }
    let zombies = || {
        mcpvisor::process::tree::children(pid)
            .into_iter()
            .filter_map(mcpvisor::process::tree::proc_info)
            .filter(|p| p.zombie)
            .map(|p| p.pid)
            .collect::<Vec<_>>()
    };
    eventually_value("zombies of the daemon", Duration::from_secs(5), zombies, Vec::is_empty).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_reports_its_isolation_and_its_child_is_in_its_cgroup() {
    let daemon = Daemon::start(&[("boxed", demo())]).await;
    let status = daemon.wait_status("boxed", "running", UP).await;
    let mut resources = json!(null);
    for _ in 0..500 {
        resources = daemon.get("/api/debug/state/resources").await.1;
        if !resources["children"]["boxed"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let isolation = &resources["children"]["boxed"]["isolation"];
    if !cgroups_here() {
        assert_eq!(isolation, "process-group", "{resources:#}");
        daemon.stop().await;
        return;
    }
    assert_eq!(isolation, "cgroup", "{resources:#}");
    let pid = status["pid"].as_u64().unwrap() as i32;
    let path = cgroup::unified_path_of(pid).unwrap();
    assert!(path.ends_with("boxed") && path.parent().unwrap().parent().unwrap().ends_with("mcpvisor"), "{path:?}");
    daemon.stop().await;
}

/// 20 restarts of a child whose 20 background jobs die with it: each is
/// reaped, none is left as a zombie of the daemon, and none lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_zombies_after_twenty_restarts_of_a_child_with_background_jobs() {
    let ws = json!({
        "command": "/bin/sh",
        "args": ["-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do sleep 900 & done; exec \"$0\" demo-server --port \"$PORT\"", "${MCPVISOR}"],
    });
    let daemon = Daemon::start(&[("jobs", ws)]).await;
    let mut leaders = vec![daemon.wait_status("jobs", "running", UP).await["pid"].as_u64().unwrap()];
    for n in 1..=20 {
        daemon.post("/api/workspaces/jobs/restart").await;
        let status = daemon.wait_for("jobs", UP, |s| s["restartCount"] == n && s["status"] == "running").await;
        leaders.push(status["pid"].as_u64().unwrap());
    }
    eventually_value("zombies of the old trees", UP, || zombies_in(&leaders), Vec::is_empty).await;
    eventually_value("live processes: the child and its 20 jobs", UP, || processes_of("jobs").len(), |n| *n == 21)
        .await;
    daemon.stop().await;
    assert!(zombies_in(&leaders).is_empty());
    assert!(processes_of("jobs").is_empty());
}

/// A descendant that scrubs its environment, leaves its session and
/// double-forks is gone after a stop, and after a shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_descendant_is_gone_after_stop_and_after_shutdown() {
    if !cgroups_here() {
        return;
    }
    let token = format!("escapee{}", std::process::id());
    let ws = json!({
        "command": "/bin/sh",
        "args": ["-c", format!("(env -i setsid /bin/sh -c 'while :; do sleep 0.2; done # {token}' &); exec \"$0\" demo-server --port \"$PORT\""), "${MCPVISOR}"],
    });
    let daemon = Daemon::start(&[("escapee", ws)]).await;
    daemon.wait_status("escapee", "running", UP).await;
    let escaped = eventually_value("the escapee", UP, || processes_with_token(&token), |p| !p.is_empty()).await;
    daemon.post("/api/workspaces/escapee/stop").await;
    daemon.wait_status("escapee", "stopped", UP).await;
    for pid in escaped {
        wait_gone(pid, Duration::from_secs(2)).await;
    }
    daemon.post("/api/workspaces/escapee/start").await;
    daemon.wait_status("escapee", "running", UP).await;
    let escaped = eventually_value("the escapee again", UP, || processes_with_token(&token), |p| !p.is_empty()).await;
    daemon.stop().await;
    assert!(processes_with_token(&token).is_empty(), "after shutdown: {escaped:?}");
}

/// The process-group backend (no cgroup): a stop reaches the group, a
/// member that left it for its own session, and reaps every zombie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_group_backend_stops_the_whole_tree_and_reaps_it() {
    use mcpvisor::process::{build_spec, reaper, spawner::Spawner, LaunchContext, Launcher, LocalLauncher, LogSink};
    reaper::become_subreaper().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ctx = LaunchContext {
        workspaces_dir: dir.path().to_path_buf(),
        state_dir: dir.path().join("state"),
        mcpvisor_exe: MCPVISOR.into(),
    };
    let config = mcpvisor::config::parse(
        br#"{"command": "/bin/sh", "args": ["-c", "for i in 1 2 3 4 5; do sleep 900 & done; (setsid sleep 901 &); exec sleep 902"]}"#,
    )
    .unwrap();
    let spec = build_spec("pgtree", &config, 1, &ctx).unwrap();
    let reaper = Arc::new(reaper::Reaper::new(None));
    let launcher = LocalLauncher::new(Spawner::start(tokio::runtime::Handle::current()), reaper, None);
    let mut child = launcher.spawn(&spec, &LogSink::open(&ctx.logs_dir(), "pgtree")).await.unwrap();
    assert_eq!(child.isolation(), mcpvisor::state::Isolation::ProcessGroup);
    let tree = launcher.census().trees().pop().unwrap();
    eventually_value("the tree", UP, || tree.members().len(), |n| *n == 7).await;
    let pgid = child.pgid() as u64;
    child.signal(nix::sys::signal::Signal::SIGTERM);
    child.wait().await;
    tokio::time::timeout(UP, child.wait_gone()).await.expect("the tree is gone");
    assert!(processes_of("pgtree").is_empty());
    assert!(zombies_in(&[pgid]).is_empty(), "wait_gone reaps the group's zombies");
}

/// `kill -9` of the daemon while 20 children start, each leaving a job in
/// its group and one in its own session: the guard and the next daemon's
/// startup sweep leave nothing, by cgroup membership and by environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_daemon_while_twenty_children_start_leaves_nothing() {
    if !cgroups_here() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workspaces = dir.path().join("workspaces");
    std::fs::create_dir_all(&workspaces).unwrap();
    let prefix = format!("k9s{}x", std::process::id() % 1000);
    let ws = json!({
        "command": "/bin/sh",
        "args": ["-c", "sleep 900 & (setsid sleep 901 &); exec \"$0\" demo-server --port \"$PORT\"", "${MCPVISOR}"],
    });
    for i in 0..20 {
        write_file(&workspaces.join(format!("{prefix}{i:02}.json")), &ws);
    }
    let (lo, hi) = port_range();
    let serve = |workspaces: &Path, listen: &str| {
        Command::new(MCPVISOR)
            .args(["serve", "--listen", listen, "--port-range", &format!("{lo}-{hi}"), "--workspaces"])
            .arg(workspaces)
            .arg("--state")
            .arg(dir.path().join("state"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut daemon = serve(&workspaces, "127.0.0.1:0");
    // Children are starting once the first of them runs.
    eventually_value("a first child", UP, || processes_with_prefix(&prefix), |p| !p.is_empty()).await;
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let runtime: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/runtime.json")).unwrap()).unwrap();
    let roots: Vec<PathBuf> = serde_json::from_value(runtime["cgroups"].clone()).unwrap();
    assert!(!roots.is_empty(), "runtime.json names the cgroups: {runtime}");

    // The next daemon takes the lock once the guard swept, then sweeps too.
    let empty = dir.path().join("none");
    std::fs::create_dir_all(&empty).unwrap();
    let listen = format!("127.0.0.1:{}", portpicker::pick_unused_port().unwrap());
    let mut again = serve(&empty, &listen);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = tokio::time::Instant::now() + UP;
    while http.get(format!("http://{listen}/healthz")).send().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the next daemon never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left =
        eventually_value("processes of the workspaces", UP, || processes_with_prefix(&prefix), Vec::is_empty).await;
    for root in &roots {
        let (members, cgroups) = cgroup_members(root);
        assert!(members.is_empty() && cgroups.is_empty(), "left in {}: {members:?} {cgroups:?}", root.display());
    }
    assert!(left.is_empty());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(again.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(again.wait().unwrap().success());
    for root in &roots {
        assert!(!root.exists(), "a clean shutdown removes {}", root.display());
    }
}

/// Sampling reads each tree's own processes: the daemon keeps no descriptor
/// per process of the host (sysinfo kept `/proc/<pid>/stat` open for each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_holds_no_descriptor_per_host_process() {
    let mut others: Vec<std::process::Child> =
        (0..100).map(|_| Command::new("sleep").arg("60").stdin(Stdio::null()).spawn().unwrap()).collect();
    let daemon = Daemon::start(&[("sampled", demo())]).await;
    daemon.wait_status("sampled", "running", UP).await;
    // Two samples after the child runs (one every 500 ms in tests).
    let deadline = tokio::time::Instant::now() + UP;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let sample = daemon.get("/api/debug/state/resources").await.1;
        let at = sample["sampledAt"].clone();
        if !sample["children"]["sampled"].is_null() && !seen.contains(&at) {
            seen.push(at);
        }
        assert!(tokio::time::Instant::now() < deadline, "no two samples: {sample}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let proc_fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|target| target.starts_with("/proc/") && !target.starts_with("/proc/self"))
        .collect();
    assert!(proc_fds.len() < 10, "{} descriptors into /proc: {proc_fds:?}", proc_fds.len());
    daemon.stop().await;
    for other in &mut others {
        let _ = other.kill();
        let _ = other.wait();
    }
}
