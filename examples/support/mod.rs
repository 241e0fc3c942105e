//! What the bench programs (`examples/*_bench.rs`) share: the release binary,
//! free ports, folders of workspace files, the daemon in-process or as a
//! subprocess, blocking raw HTTP and MCP probes for tight poll loops, SSE
//! notification streams, waits on workspace status, and the timing
//! arithmetic and report lines. Each bench keeps only its measurements.
//!
//! A bench includes it with `mod support;`. Not every bench uses every
//! helper, and each bench compiles its own copy, hence `dead_code`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- binary and report

/// Where the release `mcpvisor` binary is: `target/release/mcpvisor`, beside
/// the profile folder the examples live in (`target/bench-tools/examples/`
/// for scripts/bench, `target/release/examples/` for `cargo run --release`).
pub fn release_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let target = exe.parent().and_then(Path::parent).and_then(Path::parent).expect("target/<profile>/examples");
    target.join("release").join("mcpvisor")
}

/// The release `mcpvisor` binary; panics when it has not been built.
pub fn mcpvisor_exe() -> PathBuf {
    let bin = release_binary();
    assert!(bin.exists(), "{} is missing: run `cargo build --release` first", bin.display());
    bin
}

/// The command line that rebuilds and reruns the example `bench`.
pub fn reproduce(bench: &str) -> String {
    format!("cargo build --release && cargo run --profile bench-tools --example {bench}")
}

/// The 1/5/15-minute load averages: the machine is shared, so say how busy it was.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "?".into(), |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// The report's first lines: the bench, the binary, the cores (then
/// `detail`), and the load average at start.
pub fn print_header(bench: &str, exe: &Path, detail: &str) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("{bench}: mcpvisor = {} ({cores} cores){detail}", exe.display());
    println!("load average at start: {}", loadavg());
}

/// The report's last lines: a blank line, the load average at end, and the command to rerun `bench`.
pub fn print_footer(bench: &str) {
    println!();
    println!("load average at end: {} (1/5/15 min)", loadavg());
    println!("reproduce: {}", reproduce(bench));
}

// ---------------------------------------------------------------- timing arithmetic

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of `v` (sorted inside), in the same unit.
pub fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// (median, p95, min, max) of `v`.
pub fn summary(v: &[f64]) -> (f64, f64, f64, f64) {
    (pct(v, 50.0), pct(v, 95.0), pct(v, 0.0), pct(v, 100.0))
}

// ---------------------------------------------------------------- ports and workspace files

pub fn free_port() -> u16 {
    portpicker::pick_unused_port().expect("a free port")
}

/// `len` consecutive free ports on 127.0.0.1.
pub fn free_range(len: u16) -> (u16, u16) {
    for _ in 0..200 {
        let base = (free_port() / len * len).clamp(20000, 60000 - len);
        if (base..base + len).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return (base, base + len - 1);
        }
    }
    panic!("no free range of {len} ports");
}

/// A workspace running the built-in demo server.
pub fn demo() -> Value {
    json!({"command": "${MCPVISOR}", "args": ["demo-server", "--port", "${PORT}"]})
}

/// Writes `body` to `path` atomically (a temp file, then a rename).
pub fn write_json(path: &Path, body: &Value) {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(body).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A temp root whose `workspaces/` holds one `<name>.json` per entry; the
/// daemon's state goes to `state/` beside it.
pub fn workspace_root<N: AsRef<str>>(files: impl IntoIterator<Item = (N, Value)>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let workspaces = dir.path().join("workspaces");
    std::fs::create_dir_all(&workspaces).unwrap();
    for (name, body) in files {
        write_json(&workspaces.join(format!("{}.json", name.as_ref())), &body);
    }
    dir
}

/// A temp root whose `workspaces/` holds `n` copies of `body`, `w000.json` on.
pub fn root_with(n: usize, body: &Value) -> tempfile::TempDir {
    workspace_root((0..n).map(|i| (format!("w{i:03}"), body.clone())))
}

// ---------------------------------------------------------------- the daemon

/// The `serve` defaults (rescan every 2 s, watcher debounce 200 ms) on the
/// root's `workspaces/` and `state/`, except the listen address (port 0),
/// the port range and the executable.
pub fn config(root: &Path, range: (u16, u16), exe: &Path) -> mcpvisor::ServeConfig {
    let mut config = mcpvisor::ServeConfig::new(root.join("workspaces"), root.join("state"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.port_range = range.0..=range.1;
    config.mcpvisor_exe = exe.to_path_buf();
    config
}

/// A daemon started in this process with `mcpvisor::start`.
pub struct InProcess {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl InProcess {
    pub async fn start(config: mcpvisor::ServeConfig) -> InProcess {
        let shutdown = CancellationToken::new();
        let running = mcpvisor::start(config, shutdown.clone()).await.expect("daemon starts");
        InProcess { addr: running.addr, shutdown, done: running.done }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cancels the daemon and waits, at most `within`, until every child is gone.
    pub async fn stop(self, within: Duration) {
        self.shutdown.cancel();
        tokio::time::timeout(within, self.done).await.expect("daemon stops").unwrap();
    }
}

/// `mcpvisor serve` on `workspaces` and `state`, listening on 127.0.0.1:`listen`.
pub fn serve_command(exe: &Path, workspaces: &Path, state: &Path, listen: u16, range: (u16, u16)) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("serve").arg("--workspaces").arg(workspaces).arg("--state").arg(state).args([
        "--listen",
        &format!("127.0.0.1:{listen}"),
        "--port-range",
        &format!("{}-{}", range.0, range.1),
    ]);
    cmd
}

/// A child process that is stopped (SIGTERM, then SIGKILL after 10 s) when dropped.
pub struct Proc(Child);

impl Proc {
    /// Spawns `cmd` with stdin, stdout and stderr on /dev/null.
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn"))
    }

    /// `mcpvisor serve` on the root's `workspaces/` and `state/` (see [`workspace_root`]).
    pub fn serve(exe: &Path, root: &Path, listen: u16, range: (u16, u16)) -> Proc {
        Proc::spawn(&mut serve_command(exe, &root.join("workspaces"), &root.join("state"), listen, range))
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Whether it has exited (and been reaped).
    pub fn exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }

    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

// ---------------------------------------------------------------- blocking raw HTTP and MCP

/// One raw HTTP/1.1 exchange over a fresh connection; reads until `until`
/// shows up in the response (or EOF). Blocking; for tight 1 ms poll loops.
pub fn raw_http(port: u16, request: &str, until: &str, timeout: Duration) -> std::io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if !until.is_empty() && String::from_utf8_lossy(&out).contains(until) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

pub fn header(response: &str, name: &str) -> Option<String> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// `GET path`; the status code, if anything answered.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let response = raw_http(port, &request, "\r\n", Duration::from_secs(2)).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

pub const PROTOCOL: &str = "2025-06-18";

/// A `POST /mcp` request carrying the JSON-RPC `body`; within a session it
/// also names the session and the protocol version.
pub fn mcp_request(port: u16, session: Option<&str>, body: &Value) -> String {
    let body = body.to_string();
    let session =
        session.map_or_else(String::new, |s| format!("Mcp-Session-Id: {s}\r\nMCP-Protocol-Version: {PROTOCOL}\r\n"));
    format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{session}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// One MCP `initialize` POST to `/mcp`; the session id (may be empty) on success.
pub fn mcp_initialize(port: u16) -> Option<String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}});
    let response = raw_http(port, &mcp_request(port, None, &body), "\"result\"", Duration::from_secs(2)).ok()?;
    (response.starts_with("HTTP/1.1 200") && response.contains("\"result\""))
        .then(|| header(&response, "mcp-session-id").unwrap_or_default())
}

/// Opens an MCP session (initialize + notifications/initialized); its id.
pub fn mcp_session(port: u16) -> Option<String> {
    let session = mcp_initialize(port)?;
    let body = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    raw_http(port, &mcp_request(port, Some(&session), &body), "\r\n\r\n", Duration::from_secs(2)).ok()?;
    Some(session)
}

pub fn mcp_delete(port: u16, session: &str) {
    if session.is_empty() {
        return;
    }
    let request = format!(
        "DELETE /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nMcp-Session-Id: {session}\r\nConnection: close\r\n\r\n"
    );
    let _ = raw_http(port, &request, "\r\n\r\n", Duration::from_secs(1));
}

/// `mcpvisor demo-server --port <port>`: the demo server alone, with no supervisor.
pub fn demo_alone(exe: &Path, port: u16) -> Command {
    let mut command = Command::new(exe);
    command.args(["demo-server", "--port", &port.to_string()]);
    command
}

/// One start of a child alone: exec of `command(port)` on a free port to its
/// first answered MCP `initialize` (1 ms poll), in ms. The child is stopped
/// afterwards; panics when it does not answer within 30 s.
pub fn own_start(command: impl FnOnce(u16) -> Command) -> f64 {
    let port = free_port();
    let t0 = Instant::now();
    let mut child = Proc::spawn(&mut command(port));
    let at = wait_initialize(port, Duration::from_secs(30)).expect("the child answers initialize");
    child.stop();
    ms(at - t0)
}

/// Polls MCP `initialize` every 1 ms until it succeeds; the instant it did.
pub fn wait_initialize(port: u16, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(session) = mcp_initialize(port) {
            let at = Instant::now();
            mcp_delete(port, &session);
            return Some(at);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------- the HTTP API and notifications

/// A reqwest client that never goes through a proxy.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Notifications as they arrive: (arrival, params).
pub type Notifications = mpsc::UnboundedReceiver<(Instant, Value)>;

/// Subscribes to an SSE notification stream; each item is (arrival, params).
/// Returns once the stream is open (the first event, a snapshot, arrived).
pub async fn subscribe(http: &reqwest::Client, url: String) -> Notifications {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let response = http.get(url).send().await.expect("events stream");
    assert_eq!(response.status(), 200);
    tokio::spawn(async move {
        let mut events = response.bytes_stream().eventsource();
        while let Some(Ok(event)) = events.next().await {
            let at = Instant::now();
            if let Ok(v) = serde_json::from_str::<Value>(&event.data) {
                if tx.send((at, v["params"].clone())).is_err() {
                    return;
                }
            }
        }
    });
    // The first event is the snapshot: the stream is live from here on.
    rx.recv().await.expect("snapshot");
    rx
}

/// The next notification for which `pred` holds; panics after `within`.
pub async fn next_where(rx: &mut Notifications, within: Duration, pred: impl Fn(&Value) -> bool) -> (Instant, Value) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((at, v))) if pred(&v) => return (at, v),
            Ok(Some(_)) => {}
            _ => panic!("no matching notification within {within:?}"),
        }
    }
}

/// Polls `GET {url}/api/workspaces/{name}` every 10 ms until the workspace
/// is `running`; its status. Panics after `within`.
pub async fn wait_running(http: &reqwest::Client, url: &str, name: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = http.get(format!("{url}/api/workspaces/{name}")).send().await {
            if let Ok(v) = r.json::<Value>().await {
                if v["status"] == "running" {
                    return v;
                }
            }
        }
        assert!(Instant::now() < deadline, "workspace {name} not running within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `GET {url}/api/workspaces` every 100 ms until at least `n`
/// workspaces have `status`. Panics after `within`.
pub async fn wait_all(http: &reqwest::Client, url: &str, status: &str, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = http.get(format!("{url}/api/workspaces")).send().await {
            if let Ok(v) = r.json::<Value>().await {
                let count =
                    v["workspaces"].as_array().map_or(0, |a| a.iter().filter(|w| w["status"] == status).count());
                if count >= n {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "not {n} workspaces {status} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- Streamable HTTP clients

/// The protocol revision the Streamable HTTP bench clients ask for.
pub const CLIENT_PROTOCOL: &str = "2025-11-25";

/// Latencies of a run of calls.
pub struct Stats {
    pub p50: Duration,
    pub p99: Duration,
    pub per_second: f64,
}

pub fn no_proxy_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(1).build().unwrap()
}

/// The JSON-RPC message in a Streamable HTTP answer (plain JSON or SSE frames).
pub fn jsonrpc(body: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str(body) {
        return Some(v);
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| serde_json::from_str::<Value>(d.trim()).ok().filter(|v| v.get("id").is_some()))
}

/// The echo tool among `tools/list`'s answer: `echo` or a namespaced `*__echo`.
pub fn echo_tool(list: &Value) -> Option<String> {
    list["result"]["tools"]
        .as_array()?
        .iter()
        .filter_map(|t| t["name"].as_str())
        .find(|n| *n == "echo" || n.ends_with("__echo"))
        .map(str::to_string)
}

/// One Streamable HTTP POST of `body`, in `session` if given; the HTTP status,
/// the `Mcp-Session-Id` of the answer and its body, whatever the status.
pub async fn try_post(
    http: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    body: &Value,
) -> reqwest::Result<(u16, Option<String>, String)> {
    let mut request = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", CLIENT_PROTOCOL)
        .body(body.to_string());
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let session = response.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_string());
    Ok((status, session, response.text().await?))
}

/// [`try_post`] that panics unless the answer is a 2xx; the session id and the body.
pub async fn post(http: &reqwest::Client, url: &str, session: Option<&str>, body: &Value) -> (Option<String>, String) {
    let (status, session, body) = try_post(http, url, session, body).await.expect("request");
    assert!((200..300).contains(&status), "{url}: {status} {body}");
    (session, body)
}

/// initialize + notifications/initialized; the client and the session id.
pub async fn streamable_session(url: &str) -> (reqwest::Client, Option<String>) {
    let http = no_proxy_client();
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": CLIENT_PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}});
    let (session, _) = post(&http, url, None, &init).await;
    post(&http, url, session.as_deref(), &json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    (http, session)
}

/// One client: its own connection pool and session; returns each call's latency.
pub async fn streamable_client(url: String, tool: String, calls: usize) -> Vec<Duration> {
    let (http, session) = streamable_session(&url).await;
    let session = session.as_deref();
    let mut latencies = Vec::with_capacity(calls);
    for id in 1..=calls {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {"text": "bench"}}});
        let started = Instant::now();
        let (_, body) = post(&http, &url, session, &call).await;
        latencies.push(started.elapsed());
        assert!(body.contains("\"bench\""), "unexpected answer: {body}");
    }
    latencies
}
