//! Shared helpers for integration tests: an in-process daemon on port 0 in
//! a temp folder, status polling with deadlines, and real MCP clients.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The mcpvisor binary, for `${MCPVISOR}` and for CLI tests.
pub const MCPVISOR: &str = env!("CARGO_BIN_EXE_mcpvisor");

/// A workspace running the built-in demo server.
pub fn demo() -> Value {
    json!({"command": "${MCPVISOR}", "args": ["demo-server", "--port", "${PORT}"]})
}

/// The repository root (for the Python venv and example servers).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python; `scripts/test` creates it.
pub fn python() -> PathBuf {
    let python = repo().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/test (or scripts/setup-python) first", python.display());
    python
}

/// A port range of 32 ports of its own: daemons of one test binary never
/// share ports (cargo runs test binaries one at a time; the base depends on
/// the pid to keep clear of other processes' leftovers). Every range stays
/// below 32768, where Linux starts handing out ports for outgoing
/// connections, so no client socket takes a workspace's port.
pub fn port_range() -> (u16, u16) {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 32) as u16 * 200;
    let offset = NEXT.fetch_add(32, std::sync::atomic::Ordering::Relaxed) % 6400;
    let lo = base + offset;
    (lo, lo + 31)
}

/// Sends the in-process daemons' warnings (`MCPVISOR_LOG` to change the
/// level) to the test's captured output, shown when the test fails: a
/// failure in CI then says what the daemon saw.
fn capture_daemon_warnings() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCPVISOR_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_test_writer().try_init();
}

/// Polls `probe` until it yields `Ok`, at most `within`; then panics with
/// `what` and the last `Err` it gave. The one way tests wait for a state.
pub async fn eventually<T, F, Fut>(what: impl std::fmt::Display, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("{what}: not within {within:?}; last seen: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// [`eventually`] for a probe that needs no await: polls until
/// `done(&probe())`, panicking with the last value after `within`.
pub async fn eventually_value<T: std::fmt::Debug>(
    what: impl std::fmt::Display,
    within: Duration,
    mut probe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    eventually(what, within, || {
        let value = probe();
        let result = if done(&value) { Ok(value) } else { Err(format!("{value:?}")) };
        async move { result }
    })
    .await
}

/// How a test daemon runs.
enum Run {
    /// `mcpvisor::start` in the test's own process.
    InProcess { shutdown: CancellationToken, done: Option<tokio::task::JoinHandle<()>> },
    /// `mcpvisor serve` as a child process of the test.
    Process(std::process::Child),
}

/// A daemon with its own workspaces and state folders.
pub struct Daemon {
    pub url: String,
    pub root: PathBuf,
    _dir: Option<tempfile::TempDir>,
    pub range: (u16, u16),
    run: Run,
    pub http: reqwest::Client,
}

impl Daemon {
    pub fn workspaces(&self) -> PathBuf {
        self.root.join("workspaces")
    }

    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Writes workspace files into a new temp folder and starts a daemon on it.
    pub async fn start(files: &[(&str, Value)]) -> Daemon {
        Daemon::start_with(files, |_| {}).await
    }

    /// Like [`Daemon::start`], with `configure` applied to the daemon's config.
    pub async fn start_with(files: &[(&str, Value)], configure: impl FnOnce(&mut mcpvisor::ServeConfig)) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("workspaces")).unwrap();
        for (name, body) in files {
            write_file(&root.join("workspaces").join(format!("{name}.json")), body);
        }
        let mut daemon = Daemon::launch(&root, port_range(), "127.0.0.1:0", configure).await;
        daemon._dir = Some(dir);
        daemon
    }

    /// Starts a daemon on an existing root (workspaces/ and state/ inside).
    pub async fn start_at(root: &Path, range: (u16, u16)) -> Daemon {
        Daemon::start_listening(root, range, "127.0.0.1:0").await
    }

    /// Like [`Daemon::start_at`], on a given listen address.
    pub async fn start_listening(root: &Path, range: (u16, u16), listen: &str) -> Daemon {
        Daemon::launch(root, range, listen, |_| {}).await
    }

    async fn launch(
        root: &Path,
        range: (u16, u16),
        listen: &str,
        configure: impl FnOnce(&mut mcpvisor::ServeConfig),
    ) -> Daemon {
        capture_daemon_warnings();
        let mut config = mcpvisor::ServeConfig::new(root.join("workspaces"), root.join("state"));
        config.listen = listen.parse().unwrap();
        config.port_range = range.0..=range.1;
        config.mcpvisor_exe = MCPVISOR.into();
        config.rescan_every = Duration::from_millis(500);
        // Tests count scans (`wait_scans`); the slow safety rescan would make them wait.
        config.safety_rescan_every = Duration::from_millis(500);
        config.sample_every = Duration::from_millis(500);
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let running = mcpvisor::start(config, shutdown.clone()).await.expect("daemon starts");
        Daemon {
            url: format!("http://{}", running.addr),
            root: root.to_path_buf(),
            _dir: None,
            range,
            run: Run::InProcess { shutdown, done: Some(running.done) },
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// Writes workspace files into a new temp folder and runs `mcpvisor
    /// serve` on it as a child process with `env` added to its environment;
    /// returns once it answers `/healthz`.
    pub async fn spawn_process(files: &[(&str, Value)], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("workspaces")).unwrap();
        for (name, body) in files {
            write_file(&root.join("workspaces").join(format!("{name}.json")), body);
        }
        let range = port_range();
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = std::process::Command::new(MCPVISOR)
            .args(["serve", "--listen", &listen.to_string(), "--port-range", &format!("{}-{}", range.0, range.1)])
            .arg("--workspaces")
            .arg(root.join("workspaces"))
            .arg("--state")
            .arg(root.join("state"))
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let daemon = Daemon {
            url: format!("http://{listen}"),
            root,
            _dir: Some(dir),
            range,
            run: Run::Process(child),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        eventually("daemon answers /healthz", Duration::from_secs(20), || async {
            daemon.http.get(format!("{}/healthz", daemon.url)).send().await.map(|_| ()).map_err(|e| e.to_string())
        })
        .await;
        daemon
    }

    /// Shuts the daemon down and waits until every child is stopped. The
    /// temp folder is handed back so a test can start another daemon on it.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        match &mut self.run {
            Run::InProcess { shutdown, done } => {
                shutdown.cancel();
                if let Some(done) = done.take() {
                    tokio::time::timeout(Duration::from_secs(30), done)
                        .await
                        .expect("daemon stops within 30 s")
                        .unwrap();
                }
            }
            Run::Process(child) => {
                let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let _ = child.wait();
            }
        }
        self._dir.take()
    }

    /// The pid of the daemon when it runs as a child process of the test.
    pub fn pid(&self) -> Option<u32> {
        match &self.run {
            Run::Process(child) => Some(child.id()),
            Run::InProcess { .. } => None,
        }
    }

    pub fn write(&self, name: &str, body: &Value) {
        write_file(&self.workspaces().join(format!("{name}.json")), body);
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        let response = self.http.post(format!("{}{path}", self.url)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn status(&self, name: &str) -> Value {
        let (code, body) = self.get(&format!("/api/workspaces/{name}")).await;
        assert_eq!(code, 200, "GET /api/workspaces/{name}: {body}");
        body
    }

    /// Polls the workspace until `pred` holds; panics with the last status
    /// after `within`.
    pub async fn wait_for(&self, name: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        eventually(format!("workspace {name:?}"), within, || async {
            let (code, body) = self.get(&format!("/api/workspaces/{name}")).await;
            if code == 200 && pred(&body) {
                Ok(body)
            } else {
                Err(format!("({code}) {body:#}"))
            }
        })
        .await
    }

    /// Opens this daemon's event stream at `path` and reads its snapshot
    /// (one event per workspace it follows, `snapshots` of them), so the
    /// subscriber is in place before the test's stimulus.
    pub async fn events(&self, path: &str, snapshots: usize) -> Events {
        let mut events = Events::open(&self.http, &format!("{}{path}", self.url), None).await;
        for _ in 0..snapshots {
            let (_, event) = events.next(Duration::from_secs(10)).await.expect("a snapshot event");
            assert_eq!(event["params"]["reason"], "snapshot", "{event}");
        }
        events
    }

    pub async fn wait_status(&self, name: &str, status: &str, within: Duration) -> Value {
        self.wait_for(name, within, |s| s["status"] == status).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        match &mut self.run {
            Run::InProcess { shutdown, .. } => shutdown.cancel(),
            Run::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// An open SSE stream of status notifications.
pub struct Events {
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = Result<eventsource_stream::Event, String>> + Send>>,
}

impl Events {
    /// Opens `url`; returns once the response headers arrived.
    pub async fn open(http: &reqwest::Client, url: &str, last_event_id: Option<u64>) -> Events {
        use eventsource_stream::Eventsource;
        let mut request = http.get(url);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        Events { stream: Box::pin(response.bytes_stream().eventsource().map(|e| e.map_err(|e| e.to_string()))) }
    }

    /// The next event as (seq, notification), or `None` after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<(u64, Value)> {
        match tokio::time::timeout(within, self.stream.next()).await {
            Ok(Some(Ok(event))) => Some((event.id.parse().unwrap(), serde_json::from_str(&event.data).unwrap())),
            _ => None,
        }
    }

    /// Up to `count` events, as many as arrive within `within`.
    pub async fn take(&mut self, count: usize, within: Duration) -> Vec<(u64, Value)> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < count {
            match self.next(deadline.saturating_duration_since(Instant::now())).await {
                Some(event) => out.push(event),
                None => break,
            }
        }
        out
    }
}

pub fn write_file(path: &Path, body: &Value) {
    let text = serde_json::to_vec_pretty(body).unwrap();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Whether a process with `pid` is alive (not a zombie).
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').map_or(false, |(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone; panics after `within`.
pub async fn wait_gone(pid: u64, within: Duration) {
    eventually(format!("pid {pid} gone"), within, || async {
        if alive(pid) {
            Err("alive".to_string())
        } else {
            Ok(())
        }
    })
    .await
}

/// Calls `tool` with `args` on the MCP server at `url` with the rmcp client
/// (Streamable HTTP, stateful); returns the text of the result.
pub async fn rmcp_call(url: &str, tool: &str, args: Value) -> String {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;
    let transport =
        StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url.to_string()));
    let client = ().serve(transport).await.expect("rmcp client initializes");
    let params =
        CallToolRequestParams::new(tool.to_string()).with_arguments(args.as_object().cloned().unwrap_or_default());
    let result = client.call_tool(params).await.expect("tool call succeeds");
    let _ = client.cancel().await;
    let value = serde_json::to_value(&result).unwrap();
    value["content"].as_array().into_iter().flatten().filter_map(|c| c["text"].as_str()).collect::<Vec<_>>().join("")
}

/// Runs `tests/py/mcp_client.py` (the Python `mcp` SDK client); returns its JSON line.
pub async fn python_call(url: &str, transport: &str, tool: &str, args: Value) -> Value {
    python_client(&["--url", url, "--transport", transport, "--tool", tool, "--args", &args.to_string()]).await
}

/// Reads SSE events from `url` until `count` arrived or `within` passed.
pub async fn read_events(
    http: &reqwest::Client,
    url: &str,
    last_event_id: Option<u64>,
    count: usize,
    within: Duration,
) -> Vec<(u64, Value)> {
    Events::open(http, url, last_event_id).await.take(count, within).await
}

/// Live processes whose environment names this workspace.
pub fn processes_of(workspace: &str) -> Vec<u64> {
    let needle = format!("MCPVISOR_WORKSPACE={workspace}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

/// A Python `mcp` SDK server from `examples/servers/notes.py`.
pub fn notes(transport: &str) -> Value {
    json!({
        "command": python().to_string_lossy(),
        "args": [repo().join("examples/servers/notes.py").to_string_lossy(), "--port", "${PORT}", "--transport", transport],
        "transport": transport,
        "env": {"NOTES_DIR": "${DATA_DIR}/notes"},
    })
}

/// Runs `tests/py/mcp_client.py` with extra flags; returns its JSON line.
pub async fn python_client(args: &[&str]) -> Value {
    let output = tokio::process::Command::new(python())
        .arg(repo().join("tests/py/mcp_client.py"))
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "python client {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("python client prints JSON")
}

/// One raw MCP POST; returns the HTTP status, the session id it issued and
/// every JSON-RPC message of the answer (a JSON body or SSE `data` events).
pub async fn mcp_post(
    http: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    body: &Value,
) -> (u16, Option<String>, Vec<Value>) {
    let mut request = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-11-25")
        .body(body.to_string());
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let session = response.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_string());
    let sse =
        response.headers().get("content-type").is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
    let text = response.text().await.unwrap_or_default();
    let messages = if sse {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    } else {
        serde_json::from_str(&text).map(|v| vec![v]).unwrap_or_default()
    };
    (status, session, messages)
}

/// Initializes a stateful session on `url`; returns its id, if any.
pub async fn mcp_initialize(http: &reqwest::Client, url: &str) -> Option<String> {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "proxy-test", "version": "0"}}});
    let (status, session, messages) = mcp_post(http, url, None, &init).await;
    assert_eq!(status, 200, "initialize: {messages:?}");
    assert!(messages.iter().any(|m| m["id"] == 0 && m["result"].is_object()), "initialize: {messages:?}");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, _) = mcp_post(http, url, session.as_deref(), &initialized).await;
    assert!(status == 202 || status == 200, "initialized: {status}");
    session
}

/// Opens the legacy SSE stream at `url`, reads its `endpoint` event (which
/// must start with `endpoint_prefix`), restarts `workspace`, and returns the
/// first `workspace/statusChanged` notification the stream carries after.
pub async fn legacy_stream_sees_a_restart(daemon: &Daemon, url: &str, workspace: &str, endpoint_prefix: &str) -> Value {
    use eventsource_stream::Eventsource;
    let response = daemon.http.get(url).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let mut events = response.bytes_stream().eventsource();
    let first = tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.event, "endpoint");
    assert!(first.data.starts_with(endpoint_prefix), "{}", first.data);

    let (code, _) = daemon.post(&format!("/api/workspaces/{workspace}/restart")).await;
    assert_eq!(code, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(Some(Ok(event))) = tokio::time::timeout_at(deadline, events.next()).await {
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        if event.event == "message" && data["method"] == "workspace/statusChanged" {
            return data;
        }
    }
    panic!("no workspace/statusChanged event on the legacy stream {url}");
}
