//! Metrics and the CLI clients against a real daemon.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const UP: Duration = Duration::from_secs(20);

/// Checks the Prometheus/OpenMetrics text format line by line; returns the samples.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    assert!(text.trim_end().ends_with("# EOF"), "missing # EOF");
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("mcpvisor_"), "unprefixed metric {line:?}");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad name {line:?}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "bad labels {line:?}");
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value {line:?}"));
        samples.push((series.to_string(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_counters_move_when_a_child_is_killed() {
    let daemon = Daemon::start(&[("m", demo())]).await;
    let before = daemon.wait_status("m", "running", UP).await;
    let text = daemon.http.get(format!("{}/metrics", daemon.url)).send().await.unwrap().text().await.unwrap();
    let samples = parse_metrics(&text);
    assert_eq!(sample(&samples, r#"mcpvisor_workspace_status{workspace="m",state="running"}"#), Some(1.0));
    assert_eq!(sample(&samples, r#"mcpvisor_failures_total{workspace="m",reason="exited"}"#), None);
    assert!(sample(&samples, r#"mcpvisor_spawn_to_ready_seconds_count{workspace="m"}"#).is_some_and(|n| n >= 1.0));
    let published = sample(&samples, "mcpvisor_events_published_total").unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(before["pid"].as_i64().unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    daemon.wait_for("m", UP, |s| s["status"] == "running" && s["pid"] != before["pid"]).await;
    let text = daemon.http.get(format!("{}/metrics", daemon.url)).send().await.unwrap().text().await.unwrap();
    let samples = parse_metrics(&text);
    assert_eq!(sample(&samples, r#"mcpvisor_failures_total{workspace="m",reason="exited"}"#), Some(1.0));
    assert_eq!(sample(&samples, r#"mcpvisor_restarts_total{workspace="m",reason="restart"}"#), Some(1.0));
    assert_eq!(
        sample(&samples, r#"mcpvisor_state_transitions_total{workspace="m",from="running",to="error"}"#),
        Some(1.0)
    );
    assert!(sample(&samples, "mcpvisor_events_published_total").unwrap() >= published + 3.0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_a_restart_and_survives_a_daemon_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workspaces")).unwrap();
    write_file(&dir.path().join("workspaces/w.json"), &demo());
    let range = port_range();
    let listen = format!("127.0.0.1:{}", portpicker::pick_unused_port().unwrap());
    let daemon = Daemon::start_listening(dir.path(), range, &listen).await;
    daemon.wait_status("w", "running", UP).await;

    let mut watch = tokio::process::Command::new(MCPVISOR)
        .args(["watch", "w", "--url", &daemon.url])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next_line =
        async || tokio::time::timeout(UP, lines.next_line()).await.expect("a line in time").unwrap().unwrap();
    let first = next_line().await;
    assert!(
        first.contains(" w running -> running (snapshot)") || first.contains(" w - -> running (snapshot)"),
        "{first}"
    );

    daemon.post("/api/workspaces/w/restart").await;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("-> running (restart)") || l.contains("starting -> running (ready)"))
    {
        seen.push(next_line().await);
    }
    assert!(seen[0].contains("running -> stopping (restart)"), "{seen:?}");

    // The daemon goes away and comes back on the same address.
    daemon.stop().await;
    let again = Daemon::start_listening(dir.path(), range, &listen).await;
    let mut after = Vec::new();
    while !after.iter().any(|l: &String| l.contains("-> running")) {
        after.push(next_line().await);
    }
    assert!(watch.try_wait().unwrap().is_none(), "watch kept running across the daemon restart");
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_logs_and_exit_codes() {
    let daemon = Daemon::start(&[("cli", demo())]).await;
    daemon.wait_status("cli", "running", UP).await;
    let run =
        |args: Vec<String>| async move { tokio::process::Command::new(MCPVISOR).args(args).output().await.unwrap() };
    let url = daemon.url.clone();
    let args =
        |a: &[&str]| a.iter().map(|s| s.to_string()).chain(["--url".to_string(), url.clone()]).collect::<Vec<_>>();

    let status = run(args(&["status"])).await;
    assert!(status.status.success());
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(table.lines().next().unwrap().starts_with("WORKSPACE"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("cli ") && l.contains("running") && l.contains("closed")), "{table}");
    let json = run(args(&["status", "--json"])).await;
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed["workspaces"][0]["workspace"], "cli");

    let noop = run(args(&["start", "cli"])).await;
    assert!(String::from_utf8_lossy(&noop.stdout).contains("cli: nothing to do, already running"));
    let unknown = run(args(&["restart", "nope"])).await;
    assert_eq!(unknown.status.code(), Some(1), "unknown workspace");
    let unreachable = run(vec!["status".into(), "--url".into(), "http://127.0.0.1:9".into()]).await;
    assert_eq!(unreachable.status.code(), Some(3), "daemon not reachable");

    let logs = run(args(&["logs", "cli", "-n", "5"])).await;
    assert!(String::from_utf8_lossy(&logs.stdout).contains("stderr mcpvisor demo-server: listening"));

    // `logs -f` shows the output of the next child as it starts.
    let mut follow = tokio::process::Command::new(MCPVISOR)
        .args(["logs", "cli", "-n", "1", "-f", "--url", &daemon.url])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    // The last line already logged arrives first: the follower is connected.
    tokio::time::timeout(UP, lines.next_line()).await.unwrap().unwrap().unwrap();
    let stop = run(args(&["restart", "cli"])).await;
    assert!(stop.status.success());
    let line = tokio::time::timeout(UP, async {
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.contains("listening on") {
                return line;
            }
        }
    })
    .await
    .expect("the new child's first line");
    assert!(line.contains("listening on"), "{line}");
    daemon.stop().await;
}
