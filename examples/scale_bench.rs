//! Scale figures for BENCHMARKS.md: SSE fan-out to 10,000 subscribers (and
//! the same readers against a bare writer, the machine's floor),
//! `/api/workspaces` with 1,000 workspaces under load while restarts run,
//! and the daemon's idle cost with 100 workspaces.
//!
//! Run: `cargo build --release && cargo run --release --example scale_bench [subscribers|floor|api|idle]`
//! `MCPVISOR_BENCH_PERF=1` adds a perf profile (subscribers, floor, idle).
//! The daemon runs as a separate process (the release binary), so its RSS
//! is its own; load goes to 127.0.0.1 only and every part stops by itself.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{demo, free_port, free_range, http_client, mcpvisor_exe, serve_command, wait_all, workspace_root, Proc};

/// The release binary as a subprocess, so its RSS and CPU are its own; it
/// is stopped (SIGTERM) when dropped, before its folder goes.
struct Daemon {
    child: Proc,
    addr: String,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Daemon {
    async fn start(workspaces: Vec<(String, Value)>, n_ports: u16) -> Daemon {
        let dir = workspace_root(workspaces);
        let port = free_port();
        let mut serve = serve_command(
            &mcpvisor_exe(),
            &dir.path().join("workspaces"),
            &dir.path().join("state"),
            port,
            free_range(n_ports),
        );
        // Room for 10,000 subscribers (the default is 1,024 connections).
        let child = Proc::spawn(serve.env("MCPVISOR_LOG", "warn").env("MCPVISOR_MAX_CONNECTIONS", "12000"));
        let daemon = Daemon { child, addr: format!("127.0.0.1:{port}"), _dir: dir, http: http_client() };
        while daemon.get("/readyz").await.is_none_or(|(code, _)| code != 200) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        daemon
    }

    async fn get(&self, path: &str) -> Option<(u16, Value)> {
        let r = self.http.get(format!("http://{}{path}", self.addr)).send().await.ok()?;
        Some((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    async fn wait_all(&self, status: &str, n: usize) {
        wait_all(&self.http, &format!("http://{}", self.addr), status, n, Duration::from_secs(600)).await;
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .unwrap();
        kb * 1024
    }

    /// utime + stime of the daemon, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

/// Ports for `n` workspaces and some to spare, as the daemon's port range.
fn n_ports(n_workspaces: u16) -> u16 {
    n_workspaces + 51
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `n` raw TCP connections reading one event stream each, in this process.
struct Readers {
    n: usize,
    arrivals: tokio::sync::mpsc::UnboundedReceiver<(usize, Instant)>,
}

impl Readers {
    /// Connects `n` readers to `GET path` on `addr` (200 at a time), and
    /// returns once each has read its `snapshot` event.
    async fn connect(n: usize, addr: &str, path: &str) -> Readers {
        let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let request = Arc::new(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"));
        let addr = Arc::new(addr.to_string());
        let gate = Arc::new(tokio::sync::Semaphore::new(200));
        for _ in 0..n {
            let (tx, ready_tx, addr, gate, request) =
                (tx.clone(), ready_tx.clone(), addr.clone(), gate.clone(), request.clone());
            tokio::spawn(async move {
                let mut permit = Some(gate.acquire_owned().await.unwrap());
                let mut stream = TcpStream::connect(addr.as_str()).await.unwrap();
                stream.write_all(request.as_bytes()).await.unwrap();
                let mut buf = vec![0u8; 4096];
                let mut seen_snapshot = false;
                let mut round = 0;
                loop {
                    let Ok(read) = stream.read(&mut buf).await else { return };
                    if read == 0 {
                        return;
                    }
                    let chunk = &buf[..read];
                    let has = |needle: &[u8]| chunk.windows(needle.len()).any(|w| w == needle);
                    if !seen_snapshot && has(b"\"reason\":\"snapshot\"") {
                        seen_snapshot = true;
                        permit.take();
                        let _ = ready_tx.send(());
                        continue;
                    }
                    if seen_snapshot && has(round_marker(round)) {
                        let _ = tx.send((round, Instant::now()));
                        round += 1;
                    }
                }
            });
        }
        for _ in 0..n {
            ready_rx.recv().await.unwrap();
        }
        Readers { n, arrivals }
    }

    /// How long after `t0` each reader read round `round`'s event, sorted.
    async fn round(&mut self, round: usize, t0: Instant) -> Vec<Duration> {
        let mut got = Vec::with_capacity(self.n);
        while got.len() < self.n {
            let (r, at) = self.arrivals.recv().await.unwrap();
            assert_eq!(r, round);
            got.push(at - t0);
        }
        got.sort();
        got
    }
}

/// What round `round`'s event says: the stops and starts alternate.
fn round_marker(round: usize) -> &'static [u8] {
    if round % 2 == 0 {
        b"\"status\":\"stopping\""
    } else {
        b"\"status\":\"starting\""
    }
}

/// Latencies of every reader in every round.
#[derive(Default)]
struct Arrivals {
    all: Vec<Duration>,
    firsts: Vec<Duration>,
    lasts: Vec<Duration>,
}

impl Arrivals {
    fn add(&mut self, round: Vec<Duration>) {
        self.firsts.push(round[0]);
        self.lasts.push(*round.last().unwrap());
        self.all.extend(round);
    }

    fn print(mut self, trigger: &str) {
        self.all.sort();
        self.firsts.sort();
        self.lasts.sort();
        println!("| figure | value |\n|---|---|");
        println!("| {trigger} to first subscriber, median of rounds | {} |", ms(percentile(&self.firsts, 0.5)));
        println!("| {trigger} to event received, p50 over all subscribers | {} |", ms(percentile(&self.all, 0.5)));
        println!("| {trigger} to event received, p99 over all subscribers | {} |", ms(percentile(&self.all, 0.99)));
        println!("| {trigger} to last subscriber, median of rounds | {} |", ms(percentile(&self.lasts, 0.5)));
        println!("| {trigger} to last subscriber, worst round | {} |", ms(*self.lasts.last().unwrap()));
    }
}

async fn subscribers(n: usize, rounds: usize) {
    let daemon = Daemon::start(vec![("w".into(), demo())], n_ports(4)).await;
    daemon.wait_all("running", 1).await;
    let rss_before = daemon.rss_bytes();
    let mut readers = Readers::connect(n, &daemon.addr, "/api/workspaces/w/events").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = daemon.rss_bytes();
    // The whole machine, during the rounds only: who spends the time, the
    // daemon or this process's readers.
    let perf = std::env::var_os("MCPVISOR_BENCH_PERF").and_then(|_| Perf::start(&["-a"]));
    let mut arrivals = Arrivals::default();
    for round in 0..rounds {
        let action = if round % 2 == 0 { "stop" } else { "start" };
        let t0 = Instant::now();
        daemon.http.post(format!("http://{}/api/workspaces/w/{action}", daemon.addr)).send().await.unwrap();
        arrivals.add(readers.round(round, t0).await);
        // Let the child finish starting or stopping before the next round.
        daemon.wait_all(if round % 2 == 0 { "stopped" } else { "running" }, 1).await;
    }
    println!("## {n} SSE subscribers on one workspace, {rounds} status changes");
    arrivals.print("POST");
    println!("| daemon RSS before / after connecting | {} / {} MiB |", rss_before >> 20, rss_after >> 20);
    println!(
        "| daemon RSS per subscriber | {:.1} KiB |",
        (rss_after.saturating_sub(rss_before)) as f64 / n as f64 / 1024.0
    );
    if let Some(perf) = perf {
        perf.stop().rounds(rounds, ("daemon", daemon.child.id()));
    }
}

/// The same readers and rounds against the least a server can do: a process
/// that writes one ready frame to every socket from two threads (one per
/// core), as fast as the kernel takes the writes. What the machine allows.
async fn floor(n: usize, rounds: usize) {
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    let server = Proc::spawn(Command::new(exe).args(["floor-server", &port.to_string(), &n.to_string()]));
    let addr = format!("127.0.0.1:{port}");
    while std::net::TcpStream::connect(&addr).is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut readers = Readers::connect(n, &addr, "/events").await;
    let mut control = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let perf = std::env::var_os("MCPVISOR_BENCH_PERF").and_then(|_| Perf::start(&["-a"]));
    let mut arrivals = Arrivals::default();
    for round in 0..rounds {
        let t0 = Instant::now();
        control.write_all(&[round as u8]).await.unwrap();
        arrivals.add(readers.round(round, t0).await);
    }
    println!("## The floor: {n} connections, one frame written to each by a bare server (2 threads), {rounds} rounds");
    arrivals.print("trigger");
    if let Some(perf) = perf {
        perf.stop().rounds(rounds, ("bare server", server.id()));
    }
}

/// The floor's server: accepts `n` readers (answering each with a head and a
/// snapshot frame), then one control connection; each byte it reads there
/// is a round: the round's frame, chunked, written to every reader in turn.
fn floor_server(port: u16, n: usize) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let chunk = |status: &str, seq: u64| {
        let params = json!({"workspace": "w", "status": status, "previous": "running", "health": "unknown",
            "reason": if seq == 0 { "snapshot" } else { "stop" }, "pid": 4242, "port": 40001, "restartCount": 0,
            "breaker": "closed", "timestamp": "2026-11-22T08:44:09.123Z", "seq": seq});
        let json = json!({"jsonrpc": "2.0", "method": "workspace/statusChanged", "params": params}).to_string();
        let frame = format!("id: {seq}\ndata: {json}\n\n");
        format!("{:x}\r\n{frame}\r\n", frame.len()).into_bytes()
    };
    let mut readers = Vec::with_capacity(n);
    let mut head = [0u8; 1024];
    while readers.len() < n {
        let (mut socket, _) = listener.accept().unwrap();
        socket.set_nodelay(true).unwrap();
        let mut got = 0;
        while !head[..got].windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut head[got..]) {
                Ok(0) | Err(_) => break,
                Ok(read) => got += read,
            }
        }
        if !head[..got].ends_with(b"\r\n\r\n") {
            // The bench's probe that the server listens: not a reader.
            continue;
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap();
        socket.write_all(&chunk("running", 0)).unwrap();
        readers.push(socket);
    }
    let (mut control, _) = listener.accept().unwrap();
    let mut byte = [0u8; 1];
    while control.read(&mut byte).unwrap_or(0) == 1 {
        let round = byte[0] as usize;
        let frame = chunk(if round % 2 == 0 { "stopping" } else { "starting" }, round as u64 + 1);
        let half = readers.len() / 2;
        let (first, second) = readers.split_at_mut(half);
        std::thread::scope(|s| {
            for part in [first, second] {
                let frame = &frame;
                s.spawn(move || part.iter_mut().for_each(|socket| socket.write_all(frame).unwrap()));
            }
        });
    }
}

/// One wrk run: requests/s, p50 and p99 latency, and its raw output.
struct WrkRun {
    requests_per_s: f64,
    p50: Duration,
    p99: Duration,
    raw: String,
}

fn wrk(url: &str, concurrency: usize, seconds: u64) -> WrkRun {
    let args = ["-t2".to_string(), format!("-c{concurrency}"), format!("-d{seconds}s"), "--latency".into(), url.into()];
    let out = Command::new("wrk").args(&args).output().expect("wrk runs (scripts/bench-setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |prefix: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string())).unwrap_or_default()
    };
    let duration = |v: String| -> Duration {
        let (number, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = number.parse().unwrap_or(f64::NAN);
        Duration::from_secs_f64(match unit {
            "us" => n / 1e6,
            "ms" => n / 1e3,
            "s" => n,
            "m" => n * 60.0,
            _ => f64::NAN,
        })
    };
    WrkRun {
        requests_per_s: field("Requests/sec:").parse().unwrap_or(0.0),
        p50: duration(field("50%")),
        p99: duration(field("99%")),
        raw: format!("$ wrk {}\n{text}", args.join(" ")),
    }
}

/// nginx serving `root` as static files on `port`, stopped (SIGTERM) when dropped.
struct Nginx {
    _child: Proc,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(root: &Path, port: u16) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nginx.conf");
        let d = dir.path().display();
        std::fs::write(
            &conf,
            format!(
                "daemon off; worker_processes auto; user root; pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{ access_log off; sendfile on; tcp_nodelay on; keepalive_requests 1000000;\n\
                   client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                   types {{ application/json json; }}\n\
                   server {{ listen 127.0.0.1:{port}; root {}; etag on; }} }}\n",
                root.display()
            ),
        )
        .unwrap();
        let child = Proc::spawn(Command::new("nginx").arg("-c").arg(&conf).arg("-p").arg(dir.path()));
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "nginx did not start: see {d}/error.log");
            std::thread::sleep(Duration::from_millis(10));
        }
        Nginx { _child: child, _dir: dir }
    }
}

async fn api(n_workspaces: u16, seconds: u64, concurrency: usize) {
    // A cheap child that never answers MCP: it stays `starting`, which is
    // all an API read needs, and 1,000 of them fit in memory.
    let cheap = json!({"command": "/bin/sleep", "args": ["100000"], "health": {"startupTimeout": "1h"}, "stop": {"grace": "1s"}});
    let names: Vec<(String, Value)> = (0..n_workspaces).map(|i| (format!("w{i:04}"), cheap.clone())).collect();
    let daemon = Daemon::start(names, n_ports(n_workspaces)).await;
    daemon.wait_all("starting", n_workspaces as usize).await;
    let list_url = format!("http://{}/api/workspaces", daemon.addr);
    let one_url = format!("http://{}/api/workspaces/w0001", daemon.addr);
    // nginx serves the same bytes as static files, in the same run.
    let files = tempfile::tempdir().unwrap();
    let list = daemon.http.get(&list_url).send().await.unwrap().bytes().await.unwrap();
    let one = daemon.http.get(&one_url).send().await.unwrap().bytes().await.unwrap();
    std::fs::write(files.path().join("list.json"), &list).unwrap();
    std::fs::write(files.path().join("one.json"), &one).unwrap();
    let nginx_port = free_port();
    let _nginx = Nginx::start(files.path(), nginx_port);

    // Restarts run all along, during every run: one every 10 ms.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let restarter = tokio::spawn({
        let (http, addr, stop) = (daemon.http.clone(), daemon.addr.clone(), stop.clone());
        async move {
            let mut i = 0u32;
            let mut n = 0u32;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                i = (i * 7 + 13) % n_workspaces as u32;
                let _ = http.post(format!("http://{addr}/api/workspaces/w{i:04}/restart")).send().await;
                n += 1;
            }
            n
        }
    });
    let began = Instant::now();
    let runs = [
        ("list", "mcpvisor", list_url.clone()),
        ("list", "nginx", format!("http://127.0.0.1:{nginx_port}/list.json")),
        ("one", "mcpvisor", one_url.clone()),
        ("one", "nginx", format!("http://127.0.0.1:{nginx_port}/one.json")),
    ];
    let mut results = Vec::new();
    for (what, server, url) in runs {
        let url2 = url.clone();
        let run = tokio::task::spawn_blocking(move || wrk(&url2, concurrency, seconds)).await.unwrap();
        results.push((what, server, run));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let restarts = restarter.await.unwrap();
    let elapsed = began.elapsed().as_secs_f64();
    println!(
        "## GET /api/workspaces ({} KiB) and /api/workspaces/{{name}} ({} B), {n_workspaces} workspaces, \
         wrk -t2 -c{concurrency} -d{seconds}s, against nginx serving the same bytes, restarts every 10 ms meanwhile",
        list.len() / 1024,
        one.len()
    );
    println!("| route | server | requests/s | p50 | p99 | mcpvisor/nginx req/s | p99 ratio |");
    println!("|---|---|---|---|---|---|---|");
    for pair in results.chunks(2) {
        let [(what, _, ours), (_, _, theirs)] = pair else { unreachable!() };
        for (_, server, run) in pair {
            let (ratio, p99_ratio) = if *server == "mcpvisor" {
                (
                    format!("{:.2}", ours.requests_per_s / theirs.requests_per_s),
                    format!("{:.2}x", ours.p99.as_secs_f64() / theirs.p99.as_secs_f64()),
                )
            } else {
                ("".into(), "".into())
            };
            println!(
                "| {what} | {server} | {:.0} | {} | {} | {ratio} | {p99_ratio} |",
                run.requests_per_s,
                ms(run.p50),
                ms(run.p99)
            );
        }
    }
    println!("| restarts issued meanwhile | {restarts} ({:.0}/s) | | | | | |", restarts as f64 / elapsed);
    for (_, _, run) in &results {
        println!("\n```\n{}```", run.raw);
    }
}

async fn idle(n: u16) {
    let names: Vec<(String, Value)> = (0..n).map(|i| (format!("d{i:03}"), demo())).collect();
    let daemon = Daemon::start(names, n_ports(n)).await;
    // Reading the list counts as a reader of resources: the first window
    // below has the sampler at full rate, the second has no reader at all.
    daemon.wait_all("running", n as usize).await;
    let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as f64;
    let window = Duration::from_secs(60);
    let measure = |label: &'static str| {
        let daemon = &daemon;
        async move {
            let (t0, c0) = (Instant::now(), daemon.cpu_ticks());
            tokio::time::sleep(window).await;
            let cpu = (daemon.cpu_ticks() - c0) as f64 / ticks_per_s / t0.elapsed().as_secs_f64() * 100.0;
            (label, cpu, daemon.rss_bytes())
        }
    };
    let read = measure("the 60 s after the last read of resources (sampling every 2 s)").await;
    let quiet = measure("the next 60 s, no reader (no sampling; probes every 10 s)").await;
    println!("## Idle daemon with {n} running demo-server workspaces, default settings");
    println!("| window | daemon CPU, % of one core | daemon RSS at its end |\n|---|---|---|");
    for (label, cpu, rss) in [read, quiet] {
        println!("| {label} | {cpu:.2} % | {:.1} MiB |", rss as f64 / (1 << 20) as f64);
    }
    if std::env::var_os("MCPVISOR_BENCH_PERF").is_some() {
        profile(daemon.child.id(), 30);
    }
}

/// `perf record` of process `pid` for `seconds`, then the top of `perf report`.
fn profile(pid: u32, seconds: u64) {
    let Some(perf) = Perf::start(&["-p", &pid.to_string()]) else { return };
    std::thread::sleep(Duration::from_secs(seconds));
    println!("\nperf record -F 999 -g -p <daemon> for {seconds} s (a third, quiet window):");
    perf.stop().report(&["comm,dso", "dso,symbol"], &[], "");
}

/// A `perf record -F 999 -g` running until [`Perf::stop`].
struct Perf {
    child: Proc,
    data: tempfile::NamedTempFile,
}

/// A finished `perf record`.
struct Recorded(tempfile::NamedTempFile);

impl Perf {
    /// Starts recording what `target` names (`-a`, or `-p <pid>`); `None`
    /// (and a note) when perf cannot run.
    fn start(target: &[&str]) -> Option<Perf> {
        let data = tempfile::NamedTempFile::new().unwrap();
        let mut child =
            Proc::spawn(Command::new("perf").args(["record", "-F", "999", "-g", "-o"]).arg(data.path()).args(target));
        std::thread::sleep(Duration::from_millis(300));
        if child.exited() {
            println!(
                "(perf record failed: scripts/bench-setup installs perf; it needs root or perf_event_paranoid <= 1)"
            );
            return None;
        }
        Some(Perf { child, data })
    }

    /// Stops recording; `MCPVISOR_BENCH_PERF_DATA=<file>` keeps a copy of
    /// the data for `perf report -i <file>`.
    fn stop(mut self) -> Recorded {
        // SIGTERM: perf writes its data and exits.
        self.child.stop();
        if let Some(keep) = std::env::var_os("MCPVISOR_BENCH_PERF_DATA") {
            std::fs::copy(self.data.path(), &keep).expect("copying the perf data");
        }
        Recorded(self.data)
    }
}

impl Recorded {
    /// Each named process's share of all samples, in %, then the rest and idle.
    fn shares(&self, named: &[(&'static str, u32)]) -> Vec<(&'static str, f64)> {
        let out = Command::new("perf").args(["script", "-F", "pid", "-i"]).arg(self.0.path()).output().unwrap();
        let pids: Vec<u32> =
            String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
        let total = pids.len().max(1) as f64;
        let share = |keep: &dyn Fn(u32) -> bool| pids.iter().filter(|p| keep(**p)).count() as f64 * 100.0 / total;
        let mut shares: Vec<_> = named.iter().map(|(who, pid)| (*who, share(&|p| p == *pid))).collect();
        shares.push(("idle", share(&|p| p == 0)));
        shares.push(("everything else", share(&|p| p != 0 && named.iter().all(|(_, n)| *n != p))));
        shares
    }

    /// Who spent the time during the rounds: `server` (name, pid) and this
    /// process's readers, their shares and top symbols.
    fn rounds(&self, rounds: usize, server: (&'static str, u32)) {
        println!("\nperf record -F 999 -a -g, the whole machine during the {rounds} rounds:");
        let bench = ("bench client", std::process::id());
        println!("\nsamples by process:\n```");
        for (who, share) in self.shares(&[server, bench]) {
            println!("{who}: {share:.1} %");
        }
        println!("```");
        self.report(&["comm,dso", "dso,symbol"], &["--pid", &server.1.to_string()], &format!("{}, ", server.0));
        self.report(&["dso,symbol"], &["--pid", &bench.1.to_string()], "bench client, ");
    }

    /// The top of `perf report` by each of `sorts`, with `filter` arguments;
    /// percentages are of all samples.
    fn report(&self, sorts: &[&str], filter: &[&str], label: &str) {
        for sort in sorts {
            let report = Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "--sort",
                    sort,
                    "--percent-limit",
                    "1.5",
                    "-g",
                    "none",
                    "-i",
                ])
                .arg(self.0.path())
                .args(filter)
                .output()
                .unwrap();
            println!("\n{label}by {sort}:\n```");
            let report = String::from_utf8_lossy(&report.stdout);
            for line in report.lines().map(str::trim_end).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                // perf pads its columns to the widest name: cut the padding.
                println!("{}", line.split("   ").filter(|f| !f.trim().is_empty()).collect::<Vec<_>>().join("  "));
            }
            println!("```");
        }
    }
}

fn main() {
    let part = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if part == "floor-server" {
        let arg = |i: usize| std::env::args().nth(i).and_then(|a| a.parse().ok()).expect("floor-server PORT N");
        return floor_server(arg(2) as u16, arg(3));
    }
    // The 10,000 readers on one thread: they still read every event off
    // their own connection, but do not wake each other's threads (with two
    // workers, a third of the readers' time went to futex wake-ups).
    let readers = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    if part == "all" || part == "subscribers" {
        readers().block_on(subscribers(10_000, 6));
    }
    if part == "all" || part == "floor" {
        readers().block_on(floor(10_000, 6));
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if part == "all" || part == "api" {
        runtime.block_on(api(1000, 10, 32));
    }
    if part == "all" || part == "idle" {
        runtime.block_on(idle(100));
    }
}
