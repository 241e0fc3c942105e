//! Compares mcpvisor's proxy hop with two peer MCP proxies, in one run, with
//! the same client and calls for every path: `tools/call` of the
//! demo server's echo tool, 1 client and 32 concurrent clients (each its own
//! connection pool and session), p50/p99 latency and calls/s.
//!
//! Paths, all ending at a `mcpvisor demo-server`:
//!
//! * `direct`: Streamable HTTP straight to the demo child mcpvisor runs (workspace `bench`).
//! * `mcpvisor`: Streamable HTTP through `/workspaces/bench/mcp` to that same child.
//! * `mcp-proxy`: Streamable HTTP (`/mcp`) through mcp-proxy (PyPI) to its own
//!   `demo-server --transport stdio` child.
//! * `mcp-hub`: mcp-hub (npm) in front of the `direct` child (configured by URL). mcp-hub's
//!   client endpoint is legacy HTTP+SSE only (GET `/mcp`, POST `/messages`), and it
//!   namespaces tools (`demo__echo`).
//! * `mcp-proxy-sse`: the same legacy HTTP+SSE client against mcp-proxy's `/sse`, as an SSE
//!   reference for mcp-hub. (mcpvisor's stdio bridge is compared with stdio gateways in
//!   `stdio_bench`.)
//!
//! The tool called on each path is the one its `tools/list` names `echo` or `*__echo`.
//! A Streamable HTTP call's latency is the POST until its body is read; an SSE call's is the POST
//! until both its `202 Accepted` is read and the answer arrived on the session's event stream.
//!
//! The peers are not installed by this program; it looks for them where these commands put them
//! (or pass `--mcp-proxy PATH` / `--mcp-hub PATH`) and skips a missing one:
//!
//! ```text
//! python3 -m venv /tmp/peer-mcp-proxy && /tmp/peer-mcp-proxy/bin/pip install mcp-proxy==0.13.0
//! mkdir -p /tmp/peer-mcp-hub && cd /tmp/peer-mcp-hub && npm init -y && npm install mcp-hub@4.2.1
//! cargo build --release --bin mcpvisor --example peer_bench
//! target/release/examples/peer_bench [--calls N] [--mcpvisor PATH] [--mcp-proxy PATH] [--mcp-hub PATH]
//! ```
//!
//! mcp-hub runs with HOME and XDG_* in a temp dir, and with its marketplace cache pre-seeded so
//! that it does not try to download its registry from the internet at start.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};

use support::{
    echo_tool, free_port, free_range, http_client, jsonrpc, loadavg, no_proxy_client, post, release_binary,
    streamable_client, streamable_session, wait_running, workspace_root, write_json, Proc, Stats,
};

use support::CLIENT_PROTOCOL as PROTOCOL;
const SSE_PROTOCOL: &str = "2025-03-26";

struct Args {
    calls: usize,
    exe: PathBuf,
    mcp_proxy: PathBuf,
    mcp_hub: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        calls: 4000,
        exe: release_binary(),
        mcp_proxy: "/tmp/peer-mcp-proxy/bin/mcp-proxy".into(),
        mcp_hub: "/tmp/peer-mcp-hub/node_modules/.bin/mcp-hub".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--calls" => a.calls = it.next().and_then(|v| v.parse().ok()).expect("--calls N"),
            "--mcpvisor" => a.exe = it.next().expect("--mcpvisor PATH").into(),
            "--mcp-proxy" => a.mcp_proxy = it.next().expect("--mcp-proxy PATH").into(),
            "--mcp-hub" => a.mcp_hub = it.next().expect("--mcp-hub PATH").into(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// How a path is reached, and the tool name it lists for echo.
#[derive(Clone)]
enum Target {
    /// Streamable HTTP endpoint URL.
    Streamable { url: String, tool: String },
    /// Legacy HTTP+SSE: `base` (`http://host:port`) and the GET path of the event stream.
    Sse { base: String, path: String, tool: String },
}

impl Target {
    fn tool(&self) -> &str {
        match self {
            Target::Streamable { tool, .. } | Target::Sse { tool, .. } => tool,
        }
    }
}

async fn streamable_echo_tool(url: &str) -> Option<String> {
    let (http, session) = streamable_session(url).await;
    let (_, body) =
        post(&http, url, session.as_deref(), &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await;
    echo_tool(&jsonrpc(&body)?)
}

// ---------------------------------------------------------------- legacy HTTP+SSE

type Events = std::pin::Pin<
    Box<
        dyn Stream<Item = Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>>
            + Send,
    >,
>;

/// POSTs one message to a legacy SSE endpoint; `Some` when it was accepted.
async fn post_message(http: &reqwest::Client, endpoint: &str, body: &Value) -> Option<()> {
    let response =
        http.post(endpoint).header("content-type", "application/json").body(body.to_string()).send().await.ok()?;
    let ok = response.status().is_success();
    response.bytes().await.ok()?;
    ok.then_some(())
}

/// A legacy SSE session: the event stream and the POST URL its `endpoint` event named.
struct SseSession {
    http: reqwest::Client,
    events: Events,
    endpoint: String,
}

impl SseSession {
    async fn open(base: &str, path: &str) -> Option<SseSession> {
        let http = no_proxy_client();
        let response = http.get(format!("{base}{path}")).header("accept", "text/event-stream").send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let mut events: Events = Box::pin(response.bytes_stream().eventsource());
        let endpoint = loop {
            let event = events.next().await?.ok()?;
            if event.event == "endpoint" {
                let data = event.data.trim().to_string();
                break if data.starts_with("http") { data } else { format!("{base}{data}") };
            }
        };
        let mut session = SseSession { http, events, endpoint };
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": SSE_PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}});
        session.request(0, &init).await?;
        session.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await?;
        Some(session)
    }

    async fn send(&mut self, body: &Value) -> Option<()> {
        post_message(&self.http, &self.endpoint, body).await
    }

    /// POSTs a request and waits for both its `202` and its answer on the stream.
    async fn request(&mut self, id: u64, body: &Value) -> Option<Value> {
        let sent = post_message(&self.http, &self.endpoint, body);
        let (sent, answer) = tokio::join!(sent, SseSession::answer_on(&mut self.events, id));
        sent?;
        answer
    }

    /// The answer, off the event stream, to the message with this `id`.
    async fn answer_on(events: &mut Events, id: u64) -> Option<Value> {
        loop {
            let event = events.next().await?.ok()?;
            if event.event != "message" && !event.event.is_empty() {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&event.data) else { continue };
            if v["id"] == json!(id) {
                return Some(v);
            }
        }
    }
}

async fn sse_client(base: String, path: String, tool: String, calls: usize) -> Vec<Duration> {
    let mut session = SseSession::open(&base, &path).await.unwrap_or_else(|| panic!("SSE session on {base}{path}"));
    let mut latencies = Vec::with_capacity(calls);
    for id in 1..=calls as u64 {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {"text": "bench"}}});
        let started = Instant::now();
        let answer = session.request(id, &call).await.expect("answer");
        latencies.push(started.elapsed());
        assert_eq!(answer["result"]["content"][0]["text"], "bench", "unexpected answer: {answer}");
    }
    latencies
}

async fn sse_echo_tool(base: &str, path: &str) -> Option<String> {
    let mut session = SseSession::open(base, path).await?;
    let list = session.request(1, &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await?;
    echo_tool(&list)
}

// ---------------------------------------------------------------- measurement

fn one_client(target: &Target, calls: usize) -> tokio::task::JoinHandle<Vec<Duration>> {
    match target.clone() {
        Target::Streamable { url, tool } => tokio::spawn(streamable_client(url, tool, calls)),
        Target::Sse { base, path, tool } => tokio::spawn(sse_client(base, path, tool, calls)),
    }
}

async fn measure(target: &Target, n_clients: usize, calls: usize) -> Stats {
    // Warm-up: connections, sessions, caches.
    one_client(target, 200).await.unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..n_clients).map(|_| one_client(target, calls / n_clients)).collect();
    let mut all: Vec<Duration> = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    Stats {
        p50: all[all.len() / 2],
        p99: all[all.len() * 99 / 100],
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
    }
}

/// Polls `find` every 200 ms until it names the echo tool; None after `within`.
async fn wait_tool<F, Fut>(within: Duration, mut find: F) -> Option<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(tool)) = tokio::time::timeout(Duration::from_secs(5), find()).await {
            return Some(tool);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Whether anything accepts TCP on 127.0.0.1:`port` (for Streamable HTTP peers, whose POST
/// helpers panic on errors).
async fn wait_listening(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn version_of(cmd: &Path) -> String {
    Command::new(cmd)
        .arg("--version")
        .output()
        .ok()
        .map_or_else(|| "?".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn mcp_hub_version(bin: &Path) -> String {
    let package = bin.parent().and_then(Path::parent).map(|nm| nm.join("mcp-hub/package.json"));
    package
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

struct Row {
    label: &'static str,
    transport: &'static str,
    upstream: &'static str,
    target: Option<Target>,
    why_not: String,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    let exe = a.exe.clone();
    assert!(exe.exists(), "{} is missing: cargo build --release --bin mcpvisor", exe.display());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("peer_bench: mcpvisor = {} ({cores} cores)", exe.display());
    println!("load average at start: {}", loadavg());

    // mcpvisor: one workspace running the HTTP demo server.
    let root = workspace_root([("bench", support::demo())]);
    let listen = free_port();
    let mut daemon = Proc::serve(&exe, root.path(), listen, free_range(16));
    let api = format!("http://127.0.0.1:{listen}");
    let status = wait_running(&http_client(), &api, "bench", Duration::from_secs(30)).await;
    let upstream = status["upstream"].as_str().unwrap().to_string();

    // mcp-proxy in front of its own stdio demo child.
    let mut proxy_proc = None;
    let proxy_port = free_port();
    let proxy_note = if a.mcp_proxy.exists() {
        let mut cmd = Command::new(&a.mcp_proxy);
        cmd.args(["--port", &proxy_port.to_string(), "--host", "127.0.0.1", "--"]).arg(&exe).args([
            "demo-server",
            "--transport",
            "stdio",
        ]);
        proxy_proc = Some(Proc::spawn(&mut cmd));
        if wait_listening(proxy_port, Duration::from_secs(30)).await {
            String::new()
        } else {
            format!("mcp-proxy did not listen on 127.0.0.1:{proxy_port} within 30 s")
        }
    } else {
        format!(
            "{} missing: python3 -m venv /tmp/peer-mcp-proxy && /tmp/peer-mcp-proxy/bin/pip install mcp-proxy==0.13.0",
            a.mcp_proxy.display()
        )
    };

    // mcp-hub in front of the `bench` child (the one `direct` calls), by URL.
    let mut hub_proc = None;
    let hub_port = free_port();
    let hub_home = tempfile::tempdir().unwrap();
    let hub_note = if a.mcp_hub.exists() {
        let home = hub_home.path();
        let config = home.join("mcp-servers.json");
        write_json(&config, &json!({"mcpServers": {"demo": {"url": upstream}}}));
        // A fresh marketplace cache, so the hub does not fetch its registry from the internet.
        let cache = home.join("data/mcp-hub/cache");
        std::fs::create_dir_all(&cache).unwrap();
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        write_json(
            &cache.join("registry.json"),
            &json!({"registry": {"version": "offline", "generatedAt": 0, "totalServers": 1, "servers": [{"id": "offline", "name": "offline"}]},
                    "lastFetchedAt": now_ms, "serverDocumentation": {}}),
        );
        let mut cmd = Command::new(&a.mcp_hub);
        cmd.args(["--port", &hub_port.to_string(), "--config"])
            .arg(&config)
            .env("HOME", home)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_CACHE_HOME", home.join("cache"));
        hub_proc = Some(Proc::spawn(&mut cmd));
        String::new()
    } else {
        format!("{} missing: mkdir -p /tmp/peer-mcp-hub && cd /tmp/peer-mcp-hub && npm init -y && npm install mcp-hub@4.2.1", a.mcp_hub.display())
    };

    // Resolve each path's echo tool (this also waits until each peer is ready).
    let wait = Duration::from_secs(30);
    let proxied = format!("{api}/workspaces/bench/mcp");
    let proxy_base = format!("http://127.0.0.1:{proxy_port}");
    let proxy_url = format!("{proxy_base}/mcp");
    let hub_base = format!("http://127.0.0.1:{hub_port}");
    let streamable = |url: String, note: &str| {
        let note = note.to_string();
        async move {
            if !note.is_empty() {
                return (None, note);
            }
            match wait_tool(wait, || streamable_echo_tool(&url)).await {
                Some(tool) => (Some(Target::Streamable { url, tool }), String::new()),
                None => (None, format!("no echo tool listed at {url} within {wait:?}")),
            }
        }
    };
    let sse = |base: String, path: &'static str, note: &str| {
        let note = note.to_string();
        async move {
            if !note.is_empty() {
                return (None, note);
            }
            match wait_tool(wait, || sse_echo_tool(&base, path)).await {
                Some(tool) => (Some(Target::Sse { base, path: path.to_string(), tool }), String::new()),
                None => (None, format!("no echo tool listed via SSE at {base}{path} within {wait:?}")),
            }
        }
    };
    let mut rows = Vec::new();
    for (label, transport, upstream_kind, (target, why_not)) in [
        ("direct", "streamable", "http", streamable(upstream.clone(), "").await),
        ("mcpvisor", "streamable", "http", streamable(proxied, "").await),
        ("mcp-proxy", "streamable", "stdio", streamable(proxy_url, &proxy_note).await),
        ("mcp-hub", "sse", "http", sse(hub_base, "/mcp", &hub_note).await),
        ("mcp-proxy-sse", "sse", "stdio", sse(proxy_base, "/sse", &proxy_note).await),
    ] {
        rows.push(Row { label, transport, upstream: upstream_kind, target, why_not });
    }

    let calls = a.calls;
    println!(
        "peers: mcp-proxy {} ({}), mcp-hub {} ({})",
        version_of(&a.mcp_proxy),
        a.mcp_proxy.display(),
        mcp_hub_version(&a.mcp_hub),
        a.mcp_hub.display()
    );
    println!("tools/call echo {{\"text\":\"bench\"}} on `mcpvisor demo-server`, {calls} calls per row (after 200 warm-up calls), 127.0.0.1");
    println!("transport = what the client speaks (streamable = Streamable HTTP POST, protocol {PROTOCOL}; sse = legacy HTTP+SSE, {SSE_PROTOCOL})");
    println!("upstream = how the last hop reaches the demo server (http = its Streamable HTTP endpoint; stdio = its stdin/stdout)");
    let mut results: Vec<(usize, &Row, Stats)> = Vec::new();
    for n_clients in [1, 32] {
        for row in &rows {
            if let Some(target) = &row.target {
                results.push((n_clients, row, measure(target, n_clients, calls).await));
            }
        }
    }

    println!();
    println!(
        "{:<19} {:<10} {:<8} {:<11} {:>7} {:>8} {:>8} {:>9} {:>11} {:>11}",
        "path", "transport", "upstream", "tool", "clients", "p50 µs", "p99 µs", "calls/s", "+p50 µs", "+p99 µs"
    );
    for (n_clients, row, s) in &results {
        let direct = results.iter().find(|(n, r, _)| n == n_clients && r.label == "direct").map(|(_, _, s)| s).unwrap();
        let tool = row.target.as_ref().map_or("", |t| t.tool());
        let added = |a: Duration, b: Duration| {
            if row.label == "direct" {
                "-".to_string()
            } else {
                format!("{:+}", a.as_micros() as i64 - b.as_micros() as i64)
            }
        };
        println!(
            "{:<19} {:<10} {:<8} {:<11} {:>7} {:>8} {:>8} {:>9.0} {:>11} {:>11}",
            row.label,
            row.transport,
            row.upstream,
            tool,
            n_clients,
            s.p50.as_micros(),
            s.p99.as_micros(),
            s.per_second,
            added(s.p50, direct.p50),
            added(s.p99, direct.p99),
        );
    }
    println!("(+p50/+p99: latency added vs `direct` with the same number of clients)");
    for row in rows.iter().filter(|r| r.target.is_none()) {
        println!("{}: not measured: {}", row.label, row.why_not);
    }
    println!();
    println!("load average at end: {} (1/5/15 min)", loadavg());

    if let Some(mut p) = hub_proc.take() {
        p.stop();
    }
    if let Some(mut p) = proxy_proc.take() {
        p.stop();
    }
    daemon.stop();
}
