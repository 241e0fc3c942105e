//! `stdio.share: "per-session"`: a child of its own for each client
//! session (docs/reference.md §9), for servers that keep per-client state.
//!
//! The workspace's own child (run, probed and restarted by its actor as in
//! `shared` mode) proves the command works and holds the workspace's
//! cgroup; each session child runs beside it with every guarantee of a
//! workspace child: its own process group, a sub-cgroup of the
//! workspace's (`<workspace>/s<n>`) where cgroups are used, recorded in
//! `state/runtime.json` for the guard and the startup sweep, killed with
//! the daemon (`PR_SET_PDEATHSIG`), stopped when its session ends, idles
//! for `idleTimeout`, or the workspace's child goes away, and reaped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::channel::{Outbox, Sink};
use super::hub::{BridgeError, Hub, HubSession};
use super::upstream::Upstream;
use crate::process::runtime::{ProcessId, RuntimeEntry, RuntimeFile};
use crate::process::{Child, LaunchSpec, Launcher, LogSink};

/// What a pool needs to start and stop session children.
pub struct PoolSpec {
    pub launcher: Arc<dyn Launcher>,
    /// The workspace child's launch; each session child gets a copy.
    pub spec: LaunchSpec,
    pub logs: LogSink,
    pub runtime: RuntimeFile,
    pub protocol_errors: Counter,
    pub max_sessions: usize,
    pub idle_timeout: Duration,
    /// How long a session child may take to answer `initialize`.
    pub startup_timeout: Duration,
    /// The stop signal and how long it may take before SIGKILL.
    pub stop_signal: nix::sys::signal::Signal,
    pub grace: Duration,
}

/// The session children of one run of a `per-session` workspace.
pub struct SessionPool {
    pub workspace: String,
    /// The pid of the workspace's own child, whose run this pool belongs to.
    pub pid: u32,
    spec: PoolSpec,
    live: Mutex<Vec<(u64, u32)>>,
    n_live: AtomicUsize,
    next: AtomicU64,
    closed: CancellationToken,
}

impl std::fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPool").field("workspace", &self.workspace).finish_non_exhaustive()
    }
}

impl SessionPool {
    pub fn new(workspace: &str, pid: u32, spec: PoolSpec) -> Arc<SessionPool> {
        Arc::new(SessionPool {
            workspace: workspace.to_string(),
            pid,
            spec,
            live: Mutex::default(),
            n_live: AtomicUsize::new(0),
            next: AtomicU64::new(1),
            closed: CancellationToken::new(),
        })
    }

    /// Session children running now: (session number, pid).
    pub fn children(&self) -> Vec<(u64, u32)> {
        self.live.lock().unwrap().clone()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Stops every session child; new sessions are refused.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Starts a child for a new session and initializes it.
    ///
    /// # Errors
    /// [`BridgeError::Full`] at `maxSessions`; the spawn or the initialize
    /// failed; the pool is closed.
    pub async fn open(self: &Arc<Self>) -> Result<PooledSession, BridgeError> {
        let max = self.spec.max_sessions;
        if self.n_live.fetch_add(1, Ordering::SeqCst) >= max || self.is_closed() {
            self.n_live.fetch_sub(1, Ordering::SeqCst);
            return Err(BridgeError::Full(max));
        }
        match self.start().await {
            Ok(session) => Ok(session),
            Err(e) => {
                self.n_live.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    async fn start(self: &Arc<Self>) -> Result<PooledSession, BridgeError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut spec = self.spec.spec.clone();
        // A sub-cgroup of the workspace's: the workspace's memory limit
        // covers its session children too.
        spec.workspace = format!("{}/s{n}", self.workspace);
        spec.limits.memory_mb = None;
        let spawn_error =
            |e: String| BridgeError::Spawn(format!("spawning a session child of {:?}: {e}", self.workspace));
        let mut child =
            self.spec.launcher.spawn(&spec, &self.spec.logs).await.map_err(|e| spawn_error(e.to_string()))?;
        let pid = child.pid();
        let key = format!("{}/s{n}", self.workspace);
        if let Some(process) = ProcessId::of(pid as i32) {
            let entry = RuntimeEntry {
                pid: process.pid,
                pgid: child.pgid(),
                start_time: process.start_time,
                port: 0,
                tree: vec![],
            };
            self.spec.runtime.set(&key, entry);
        }
        let stop = CancellationToken::new();
        let last_used = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let Some(pipes) = child.take_stdio() else {
            child.kill();
            return Err(spawn_error("its stdin and stdout were not piped".to_string()));
        };
        let hub = Hub::start(&self.workspace, pid, pipes, self.spec.logs.clone(), self.spec.protocol_errors.clone());
        self.live.lock().unwrap().push((n, pid));
        super::sessions_changed();
        tokio::spawn(self.clone().supervise(n, key, child, hub.clone(), stop.clone(), last_used.clone(), started));
        if let Err(e) = hub.initialize(self.spec.startup_timeout).await {
            stop.cancel();
            return Err(e);
        }
        let session = hub.open_session()?;
        tracing::info!(workspace = %self.workspace, pid, session = n, "session child started");
        Ok(PooledSession { session, stop, last_used, started })
    }

    /// Runs one session child until it exits or is stopped (its session
    /// ended, it idled, or the pool closed), then stops its tree and forgets it.
    #[allow(clippy::too_many_arguments)]
    async fn supervise(
        self: Arc<Self>,
        n: u64,
        key: String,
        mut child: Box<dyn Child>,
        hub: Arc<Hub>,
        stop: CancellationToken,
        last_used: Arc<AtomicU64>,
        started: Instant,
    ) {
        let idle = self.spec.idle_timeout;
        let exited = loop {
            let used = started + Duration::from_millis(last_used.load(Ordering::Relaxed));
            tokio::select! {
                _ = child.wait() => break true,
                _ = stop.cancelled() => break false,
                _ = self.closed.cancelled() => break false,
                _ = tokio::time::sleep_until(used + idle) => {
                    let used = started + Duration::from_millis(last_used.load(Ordering::Relaxed));
                    if used + idle <= Instant::now() {
                        tracing::info!(workspace = %self.workspace, session = n, "session child idle; stopping it");
                        break false;
                    }
                }
            }
        };
        hub.close();
        if !exited {
            // The child's stdin is closed now: a stdio server ends on its own.
            child.signal(self.spec.stop_signal);
            if tokio::time::timeout(self.spec.grace, child.wait()).await.is_err() {
                child.kill();
            }
        }
        child.kill();
        child.wait_gone().await;
        self.spec.runtime.remove(&key);
        self.live.lock().unwrap().retain(|(m, _)| *m != n);
        super::sessions_changed();
        self.n_live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A client session on a child of its own; dropping it stops the child.
#[derive(Debug)]
pub struct PooledSession {
    session: HubSession,
    stop: CancellationToken,
    /// Milliseconds since `started` of the last message from the client.
    last_used: Arc<AtomicU64>,
    started: Instant,
}

impl Drop for PooledSession {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Upstream for PooledSession {
    fn channel(&self) -> (Sink, Outbox) {
        self.session.channel()
    }

    fn send(&self, message: Value, reply: &Sink) -> Result<(), BridgeError> {
        self.last_used.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.session.send(message, reply)
    }

    fn standby(&self, sink: &Sink) {
        self.session.standby(sink)
    }

    fn redeliver(&self, bytes: Bytes) {
        self.session.redeliver(bytes)
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.session.closed())
    }

    fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    fn child_gone(&self) -> bool {
        self.session.hub().is_closed()
    }

    fn close_reason(&self) -> Option<String> {
        self.session.close_reason()
    }
}
