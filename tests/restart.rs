//! Supervision under faults, on real processes: crashes, crash loops and the
//! circuit breaker, hung children, stubborn process groups, racing commands.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const UP: Duration = Duration::from_secs(20);

fn pid(status: &Value) -> u64 {
    status["pid"].as_u64().expect("a pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_child_restarts_it_on_the_same_port() {
    let daemon = Daemon::start(&[("crashy", demo())]).await;
    let before = daemon.wait_status("crashy", "running", UP).await;
    let mut events = daemon.events("/api/workspaces/crashy/events", 1).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid(&before) as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let after = daemon.wait_for("crashy", UP, |s| s["status"] == "running" && s["pid"] != before["pid"]).await;
    assert_eq!(after["port"], before["port"]);
    assert_eq!(after["restartCount"], 1);
    assert_eq!(after["lastError"]["signal"], "SIGKILL");
    let events = events.take(3, UP).await;
    let statuses: Vec<&str> = events.iter().map(|(_, e)| e["params"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["error", "starting", "running"], "{events:?}");
    assert_eq!(events[0].1["params"]["reason"], "exited");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_opens_the_breaker_and_a_fixed_file_closes_it() {
    let crash = json!({
        "command": "/bin/sh", "args": ["-c", "echo dying >&2; exit 3"],
        "restart": {"backoffInitial": "50ms", "backoffMax": "100ms"},
        "circuitBreaker": {"failureThreshold": 3, "openFor": "1h"},
    });
    let daemon = Daemon::start(&[("loop", crash)]).await;
    let open = daemon.wait_for("loop", UP, |s| s["breaker"]["state"] == "open").await;
    assert_eq!(open["status"], "error");
    assert_eq!(open["breaker"]["failureCount"], 3);
    assert!(open["breaker"]["nextRetryAt"].is_string());
    assert_eq!(open["lastError"]["exitCode"], 3);
    assert_eq!(open["lastError"]["stderrTail"], json!(["dying"]));
    // While open, nothing is spawned.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = daemon.status("loop").await;
    assert_eq!(still["restartCount"], open["restartCount"]);
    assert_eq!(still["breaker"]["state"], "open");

    daemon.write("loop", &demo());
    let fixed = daemon.wait_status("loop", "running", UP).await;
    assert_eq!(fixed["breaker"]["state"], "closed");
    assert_eq!(fixed["breaker"]["failureCount"], 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_child_goes_unhealthy_and_is_restarted() {
    let mut ws = demo();
    ws["health"] = json!({"interval": "300ms", "timeout": "300ms", "failureThreshold": 2});
    let daemon = Daemon::start(&[("hangs", ws)]).await;
    let before = daemon.wait_status("hangs", "running", UP).await;
    let upstream = before["upstream"].as_str().unwrap().to_string();
    // The call never returns: the whole server freezes.
    let call = tokio::spawn(async move { rmcp_call(&upstream, "hang", json!({})).await });
    let after = daemon.wait_for("hangs", UP, |s| s["status"] == "running" && s["pid"] != before["pid"]).await;
    call.abort();
    assert_eq!(after["lastError"]["reason"], "unhealthy");
    assert!(!alive(pid(&before)), "the hung child was killed");
    daemon.stop().await;
}

/// Established TCP connections to 127.0.0.1:`port`, from /proc/net/tcp.
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(2) == Some(&remote) && l.split_whitespace().nth(3) == Some("01"))
        .count()
}

/// Liveness probes of a Streamable HTTP child reuse one pooled connection:
/// the probe's session `DELETE` goes out once its stream has ended (before,
/// it took a second connection and the pool kept both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_keep_one_connection_to_a_child() {
    let mut ws = demo();
    ws["health"] = json!({"interval": "200ms"});
    let daemon = Daemon::start(&[("probed", ws)]).await;
    let mut status = daemon.wait_status("probed", "running", UP).await;
    let port = status["port"].as_u64().unwrap() as u16;
    for _ in 0..4 {
        let seen = status["lastHealthCheck"].clone();
        status = daemon.wait_for("probed", UP, |s| s["lastHealthCheck"] != seen).await;
    }
    // A probe in flight may be counted once; between probes there is one.
    eventually_value(
        "one connection from the daemon to the child",
        Duration::from_secs(3),
        || connections_to(port),
        |n| *n == 1,
    )
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_trapping_leader_is_killed_at_grace() {
    let ws = json!({
        "command": "/bin/sh",
        "args": ["-c", "trap '' TERM; \"$0\" demo-server --port \"$PORT\" & while :; do sleep 0.05; done", "${MCPVISOR}"],
        "stop": {"grace": "700ms"},
    });
    let daemon = Daemon::start(&[("stubborn", ws)]).await;
    let running = daemon.wait_status("stubborn", "running", UP).await;
    let started = std::time::Instant::now();
    daemon.post("/api/workspaces/stubborn/stop").await;
    daemon.wait_status("stubborn", "stopped", UP).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(650), "stop waited for the grace period ({took:?})");
    assert!(processes_of("stubborn").is_empty(), "nothing of the group is left");
    let port = running["port"].as_u64().unwrap() as u16;
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "the port is free");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_member_ignoring_sigterm_is_gone_after_stop() {
    let ws = json!({
        "command": "/bin/sh",
        "args": ["-c", "(trap '' TERM; while :; do sleep 0.05; done) & exec \"$0\" demo-server --port \"$PORT\"", "${MCPVISOR}"],
        "stop": {"grace": "500ms"},
    });
    let daemon = Daemon::start(&[("member", ws)]).await;
    daemon.wait_status("member", "running", UP).await;
    assert!(processes_of("member").len() >= 2, "leader and member run");
    daemon.post("/api/workspaces/member/stop").await;
    daemon.wait_status("member", "stopped", UP).await;
    assert!(processes_of("member").is_empty(), "the member that ignored SIGTERM was killed");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_backoff_cancels_the_restart() {
    let crash = json!({
        "command": "/bin/sh", "args": ["-c", "exit 1"],
        "restart": {"backoffInitial": "1500ms", "backoffMax": "1500ms"},
    });
    let daemon = Daemon::start(&[("backoff", crash)]).await;
    // The first restart is immediate; the second failure waits 1.5 s.
    let waiting = daemon
        .wait_for("backoff", UP, |s| {
            s["status"] == "error" && s["restartCount"] == 1 && s["breaker"]["nextRetryAt"].is_string()
        })
        .await;
    daemon.post("/api/workspaces/backoff/stop").await;
    daemon.wait_status("backoff", "stopped", UP).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = daemon.status("backoff").await;
    assert_eq!(after["status"], "stopped");
    assert_eq!(after["restartCount"], waiting["restartCount"], "no spawn after stop");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_restarts_leave_exactly_one_child() {
    let daemon = Daemon::start(&[("racy", demo())]).await;
    let before = daemon.wait_status("racy", "running", UP).await;
    let posts = (0..20).map(|_| daemon.post("/api/workspaces/racy/restart"));
    for (code, _) in futures::future::join_all(posts).await {
        assert_eq!(code, 202);
    }
    // Restarts that arrive while a child stops collapse into the one start
    // that follows the stop; each one is still handled, in order.
    let settled = daemon.wait_for("racy", UP, |s| s["status"] == "running" && s["pid"] != before["pid"]).await;
    let restarts = settled["restartCount"].as_u64().unwrap();
    assert!((1..=20).contains(&restarts), "{settled}");
    assert_eq!(processes_of("racy"), vec![pid(&settled)]);

    // Start of a running workspace changes nothing, and says so. Commands
    // run in order, so it is answered after every restart was handled.
    let settled = daemon.wait_for("racy", UP, |s| s["status"] == "running").await;
    let response = daemon.http.post(format!("{}/api/workspaces/racy/start", daemon.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-mcpvisor-noop"], "already running");
    let same = daemon.status("racy").await;
    assert_eq!(same["pid"], settled["pid"]);
    assert_eq!(processes_of("racy"), vec![pid(&same)]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_after_stable_runs_never_open_the_breaker() {
    let mut ws = demo();
    ws["restart"] = json!({"stableAfter": "300ms"});
    ws["circuitBreaker"] = json!({"failureThreshold": 2, "openFor": "1h"});
    let daemon = Daemon::start(&[("steady", ws)]).await;
    let mut status = daemon.wait_status("steady", "running", UP).await;
    for round in 1..=3 {
        // Each run outlives stableAfter before it crashes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid(&status) as i32), nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        let old = status["pid"].clone();
        status = daemon.wait_for("steady", UP, |s| s["status"] == "running" && s["pid"] != old).await;
        assert_eq!(status["restartCount"], round);
        assert_eq!(status["breaker"]["state"], "closed", "round {round}: {status}");
    }
    assert!(status["breaker"]["failureCount"].as_u64().unwrap() <= 1, "failures are consecutive only: {status}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_on_failure_and_never() {
    let clean_exit = json!({"command": "/bin/sh", "args": ["-c", "exit 0"], "restart": {"policy": "on-failure"}});
    let failing_once = json!({"command": "/bin/sh", "args": ["-c", "exit 7"], "restart": {"policy": "never"}});
    let failing = json!({"command": "/bin/sh", "args": ["-c", "exit 7"], "restart": {"policy": "on-failure", "backoffInitial": "50ms"}});
    let daemon = Daemon::start(&[("clean", clean_exit), ("never", failing_once), ("retry", failing)]).await;
    // on-failure: a clean exit ends in `stopped`, with nothing scheduled.
    let clean = daemon.wait_status("clean", "stopped", UP).await;
    // never: a failure ends in `error`, with nothing scheduled.
    let never = daemon.wait_for("never", UP, |s| s["status"] == "error" && s["lastError"]["exitCode"] == 7).await;
    // on-failure: a failing exit is restarted.
    daemon.wait_for("retry", UP, |s| s["restartCount"].as_u64().is_some_and(|n| n >= 2)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    for (name, before) in [("clean", &clean), ("never", &never)] {
        let after = daemon.status(name).await;
        assert_eq!(after["restartCount"], 0, "{name}: {after}");
        assert_eq!(after["status"], before["status"]);
        assert!(after["breaker"]["nextRetryAt"].is_null(), "{name}: nothing scheduled: {after}");
    }
    daemon.stop().await;
}
