//! The actor's state and its event loop.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::handle::{WorkspaceHandle, COMMAND_QUEUE};
use super::messages::Command;
use crate::config::{FileError, RestartPolicy, Transport, WorkspaceConfig};
use crate::process::runtime::{ProcessId, RuntimeEntry};
use crate::process::{build_spec, Child, ExitInfo, LogSink, SpawnError};
use crate::state::{
    BreakerState, BreakerStatus, ErrorRecord, Health, ProxyPaths, Status, Timestamp, WorkspaceRecord, WorkspaceStatus,
};
use crate::supervisor::backoff::Backoff;
use crate::supervisor::breaker::Breaker;
use crate::supervisor::probe::{self, ProbeError};
use crate::supervisor::SupervisorContext;

/// Errors kept per workspace for the debug view.
const ERROR_HISTORY: usize = 10;
/// stderr lines attached to an error.
const STDERR_TAIL: usize = 20;

/// Spawns the actor of workspace `name` on `tracker`.
///
/// `config` is its first valid config, or the errors of a file that was
/// never valid. The actor ends on [`Command::Remove`], when `cancel` fires
/// (stopping its child first), or when every handle is dropped.
pub fn spawn(
    name: String,
    config: Result<(Arc<WorkspaceConfig>, String), FileError>,
    logs: LogSink,
    ctx: Arc<SupervisorContext>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> WorkspaceHandle {
    let (sender, commands) = mpsc::channel(COMMAND_QUEUE);
    let (probe_sender, probes) = mpsc::channel(4);
    let (config, version, config_error) = match config {
        Ok((config, version)) => (Some(config), Some(version), None),
        Err(error) => (None, None, Some(error)),
    };
    let default_config = WorkspaceConfig {
        description: None,
        enabled: false,
        command: String::new(),
        args: vec![],
        env: Default::default(),
        env_passthrough: vec![],
        cwd: None,
        transport: Transport::default(),
        path: None,
        health: Default::default(),
        restart: Default::default(),
        circuit_breaker: Default::default(),
        stop: Default::default(),
        limits: Default::default(),
    };
    let shape = config.clone().unwrap_or_else(|| Arc::new(default_config));
    let span = tracing::info_span!("workspace", name = %name);
    let actor = Actor {
        backoff: Backoff::new(shape.restart.backoff_initial, shape.restart.backoff_max),
        breaker: Breaker::new(shape.circuit_breaker.clone()),
        desired_running: config.as_ref().is_some_and(|c| c.enabled),
        config: shape,
        has_config: config.is_some(),
        version,
        config_error,
        name,
        ctx,
        logs,
        commands,
        probe_sender,
        probes,
        cancel,
        child: None,
        generation: 0,
        status: Status::Stopped,
        health: Health::Unknown,
        port: None,
        started_at: None,
        last_health_check: None,
        restart_count: 0,
        spawned: false,
        errors: VecDeque::new(),
        restart_at: None,
        stable_at: None,
        health_at: None,
        probe_failures: 0,
        probe_task: None,
        log_mark: 0,
        deferred: None,
        spawned_at: Instant::now(),
    };
    tracker.spawn(actor.run().instrument(span));
    WorkspaceHandle::new(sender)
}

/// Which probe a result belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Readiness,
    Liveness,
}

/// Everything that can happen to a workspace, merged into one stream.
#[derive(Debug)]
enum Event {
    Command(Command),
    Exited(ExitInfo),
    Probe { generation: u64, kind: ProbeKind, result: Result<(), ProbeError> },
    Timer,
    Shutdown,
}

struct Actor {
    name: String,
    config: Arc<WorkspaceConfig>,
    /// False while the file has never been valid (`config` is a placeholder).
    has_config: bool,
    version: Option<String>,
    config_error: Option<FileError>,
    ctx: Arc<SupervisorContext>,
    logs: LogSink,
    commands: mpsc::Receiver<Command>,
    probe_sender: mpsc::Sender<(u64, ProbeKind, Result<(), ProbeError>)>,
    probes: mpsc::Receiver<(u64, ProbeKind, Result<(), ProbeError>)>,
    cancel: CancellationToken,

    child: Option<Box<dyn Child>>,
    /// Bumped per spawn and per probe, so stale probe results are ignored.
    generation: u64,
    status: Status,
    health: Health,
    /// What the actor works towards: a running child, or none.
    desired_running: bool,
    port: Option<u16>,
    started_at: Option<SystemTime>,
    last_health_check: Option<SystemTime>,
    restart_count: u32,
    spawned: bool,
    backoff: Backoff,
    breaker: Breaker,
    errors: VecDeque<ErrorRecord>,

    restart_at: Option<Instant>,
    stable_at: Option<Instant>,
    health_at: Option<Instant>,
    probe_failures: u32,
    probe_task: Option<AbortHandle>,
    /// Log position at the last spawn: the stderr tail of an error shows
    /// only the current child's lines.
    log_mark: u64,
    /// A command taken off the queue while coalescing config changes.
    deferred: Option<Command>,
    /// When the current child was spawned, for the spawn-to-ready histogram.
    spawned_at: Instant,
}

async fn wait_child(child: &mut Option<Box<dyn Child>>) -> ExitInfo {
    match child {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self) {
        self.port = self.ctx.ports.get(&self.name);
        if self.desired_running {
            self.start_child("start").await;
        } else {
            let status = if self.config_error.is_some() { Status::Error } else { Status::Stopped };
            self.set_status(status, if self.config_error.is_some() { "config invalid" } else { "disabled" });
        }
        loop {
            match self.next_event().await {
                Event::Shutdown => {
                    self.stop_child("shutdown").await;
                    return;
                }
                Event::Command(Command::Remove(done)) => {
                    self.desired_running = false;
                    self.stop_child("removed").await;
                    self.ctx.bus.remove(self.record(), Some(self.status), "removed");
                    let _ = done.send(());
                    return;
                }
                event => self.handle(event).await,
            }
        }
    }

    async fn next_event(&mut self) -> Event {
        if let Some(command) = self.deferred.take() {
            return Event::Command(command);
        }
        let deadline = [self.restart_at, self.stable_at, self.health_at].into_iter().flatten().min();
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Event::Shutdown,
            command = self.commands.recv() => command.map_or(Event::Shutdown, Event::Command),
            exit = wait_child(&mut self.child) => Event::Exited(exit),
            Some((generation, kind, result)) = self.probes.recv() => Event::Probe { generation, kind, result },
            () = sleep_until(deadline) => Event::Timer,
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Command(Command::Start { noop }) => {
                let already = self.child.is_some();
                if let Some(noop) = noop {
                    let _ = noop.send(already);
                }
                self.on_start().await
            }
            Event::Command(Command::Stop { noop }) => {
                let already = self.child.is_none() && self.status == Status::Stopped;
                if let Some(noop) = noop {
                    let _ = noop.send(already);
                }
                self.desired_running = false;
                self.stop_child("stop").await;
            }
            Event::Command(Command::Restart) => {
                self.desired_running = true;
                self.breaker.close();
                self.backoff.reset();
                self.stop_child("restart").await;
                self.start_child("restart").await;
            }
            Event::Command(Command::Apply { config, version }) => {
                // Config changes queued behind this one supersede it: the last
                // one wins, and restarts never pile up.
                let (mut config, mut version) = (config, version);
                while let Ok(next) = self.commands.try_recv() {
                    match next {
                        Command::Apply { config: c, version: v } => (config, version) = (c, v),
                        other => {
                            self.deferred = Some(other);
                            break;
                        }
                    }
                }
                self.apply(config, version).await
            }
            Event::Command(Command::Invalid(error)) => {
                tracing::warn!("workspace file is invalid; keeping the last good config:\n{error}");
                self.config_error = Some(error);
                self.set_status(self.status, "config invalid");
            }
            Event::Command(Command::OverMemory { rss_bytes }) => self.on_over_memory(rss_bytes).await,
            Event::Command(Command::Remove(_)) | Event::Shutdown => unreachable!("handled in run"),
            Event::Exited(exit) => self.on_exit(exit).await,
            Event::Probe { generation, .. } if generation != self.generation => {}
            Event::Probe { kind: ProbeKind::Readiness, result, .. } => self.on_readiness(result).await,
            Event::Probe { kind: ProbeKind::Liveness, result, .. } => self.on_liveness(result).await,
            Event::Timer => self.on_timer().await,
        }
    }

    async fn on_start(&mut self) {
        if !self.has_config {
            tracing::info!("start ignored: the workspace file has never been valid");
            return;
        }
        self.desired_running = true;
        self.breaker.close();
        self.backoff.reset();
        if self.child.is_some() {
            tracing::info!(status = %self.status, "start ignored: the child is already {}", self.status);
            self.publish();
            return;
        }
        self.restart_at = None;
        self.start_child("start").await;
    }

    async fn apply(&mut self, config: Arc<WorkspaceConfig>, version: String) {
        let had_error = self.config_error.take().is_some();
        let first = !self.has_config;
        let differs = first || self.config.child_differs(&config);
        let was_enabled = self.config.enabled && !first;
        self.has_config = true;
        self.version = Some(version);
        if differs {
            self.backoff = Backoff::new(config.restart.backoff_initial, config.restart.backoff_max);
            self.breaker = Breaker::new(config.circuit_breaker.clone());
        }
        let old = std::mem::replace(&mut self.config, config);
        if !self.config.enabled {
            self.desired_running = false;
            if self.child.is_some() || self.status != Status::Stopped {
                self.stop_child("disabled").await;
            } else {
                self.publish();
            }
            return;
        }
        if !was_enabled {
            self.desired_running = true;
        }
        if differs && self.desired_running {
            let reason = if first { "config valid" } else { "config changed" };
            self.stop_child(reason).await;
            self.start_child(reason).await;
        } else if had_error {
            self.set_status(self.status, "config valid");
        } else {
            self.publish();
        }
        drop(old);
    }

    /// Starts a child; a failure to start goes through [`Self::fail`].
    async fn start_child(&mut self, reason: &str) {
        self.restart_at = None;
        if self.spawned {
            self.restart_count += 1;
            self.ctx.metrics.restart(&self.name, reason);
        }
        self.spawned_at = Instant::now();
        self.spawned = true;
        let port = match self.ctx.ports.acquire(&self.name) {
            Ok(port) => port,
            Err(e) => return self.fail_to_spawn(reason, "port", e.to_string()),
        };
        self.port = Some(port);
        self.log_mark = self.logs.mark();
        let spawned = match build_spec(&self.name, &self.config, port, &self.ctx.launch) {
            Ok(spec) => self.ctx.launcher.spawn(&spec, &self.logs).await,
            Err(e) => Err(e),
        };
        let child = match spawned {
            Ok(child) => child,
            Err(e) => return self.fail_to_spawn(reason, e.kind(), spawn_message(&self.name, &e)),
        };
        tracing::info!(pid = child.pid(), port, reason, "child started");
        if let Some(process) = ProcessId::of(child.pid() as i32) {
            let entry = RuntimeEntry {
                pid: process.pid,
                pgid: child.pgid(),
                start_time: process.start_time,
                port,
                tree: vec![],
            };
            self.ctx.runtime.set(&self.name, entry);
        }
        self.child = Some(child);
        self.health = Health::Unknown;
        self.started_at = None;
        self.probe_failures = 0;
        self.set_status(Status::Starting, reason);
        if self.config.transport == Transport::Stdio {
            // Bridging stdio children to HTTP comes with the MCP proxy; until
            // then one that stays up counts as running.
            let sender = self.probe_sender.clone();
            let generation = self.bump_generation();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = sender.send((generation, ProbeKind::Readiness, Ok(()))).await;
            });
            return;
        }
        self.spawn_probe(ProbeKind::Readiness);
    }

    fn fail_to_spawn(&mut self, reason: &str, kind: &str, message: String) {
        tracing::warn!("{message}");
        self.set_status(Status::Starting, reason);
        self.fail(
            ErrorRecord {
                message,
                at: Timestamp::now(),
                reason: format!("spawn: {kind}"),
                exit_code: None,
                signal: None,
                stderr_tail: vec![],
            },
            "spawn failed",
        );
    }

    fn bump_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn spawn_probe(&mut self, kind: ProbeKind) {
        let Some(port) = self.port else { return };
        let generation = self.bump_generation();
        let url = upstream(port, &self.config);
        let client = self.ctx.http.clone();
        let sender = self.probe_sender.clone();
        let transport = self.config.transport;
        let health = self.config.health.clone();
        let metrics = self.ctx.metrics.clone();
        let label = crate::metrics::WorkspaceLabel { workspace: self.name.clone() };
        let task = tokio::spawn(async move {
            let result = match kind {
                ProbeKind::Readiness => {
                    probe::await_ready(&client, &url, transport, health.timeout, health.startup_timeout).await
                }
                ProbeKind::Liveness => {
                    let started = Instant::now();
                    let result = probe::initialize(&client, &url, transport, health.timeout).await;
                    metrics.probe_seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
                    result
                }
            };
            let _ = sender.send((generation, kind, result)).await;
        });
        if let Some(old) = self.probe_task.replace(task.abort_handle()) {
            old.abort();
        }
    }

    async fn on_readiness(&mut self, result: Result<(), ProbeError>) {
        if self.status != Status::Starting {
            return;
        }
        match result {
            Ok(()) => {
                let now = Instant::now();
                self.started_at = Some(SystemTime::now());
                self.last_health_check = self.started_at;
                self.health = Health::Healthy;
                self.stable_at = Some(now + self.config.restart.stable_after);
                self.health_at = Some(now + self.config.health.interval);
                let ready_in = self.spawned_at.elapsed();
                let label = crate::metrics::WorkspaceLabel { workspace: self.name.clone() };
                self.ctx.metrics.spawn_ready_seconds.get_or_create(&label).observe(ready_in.as_secs_f64());
                tracing::info!(ready_ms = ready_in.as_millis() as u64, "child is ready");
                self.set_status(Status::Running, "ready");
            }
            Err(e) => {
                let message =
                    format!("not ready within {}: {e}", humantime::format_duration(self.config.health.startup_timeout));
                tracing::warn!("{message}");
                self.kill_child().await;
                self.fail(self.error_record(message, "startup timeout", None), "startup timeout");
            }
        }
    }

    async fn on_liveness(&mut self, result: Result<(), ProbeError>) {
        if self.status != Status::Running {
            return;
        }
        self.last_health_check = Some(SystemTime::now());
        self.health_at = Some(Instant::now() + self.config.health.interval);
        match result {
            Ok(()) => {
                self.probe_failures = 0;
                if self.health != Health::Healthy {
                    self.health = Health::Healthy;
                    self.set_status(Status::Running, "healthy");
                } else {
                    self.publish();
                }
            }
            Err(e) => {
                self.probe_failures += 1;
                if self.probe_failures < self.config.health.failure_threshold {
                    tracing::warn!(failures = self.probe_failures, "health probe failed: {e}");
                    self.health = Health::Degraded;
                    self.set_status(Status::Running, "degraded");
                    return;
                }
                let message = format!("{} consecutive health probes failed, the last: {e}", self.probe_failures);
                tracing::warn!("{message}; restarting");
                self.health = Health::Unhealthy;
                self.set_status(Status::Running, "unhealthy");
                self.kill_child().await;
                self.fail(self.error_record(message, "unhealthy", None), "unhealthy");
            }
        }
    }

    /// The tree passed `limits.memoryMb`: restart it, counted as a failure.
    async fn on_over_memory(&mut self, rss_bytes: u64) {
        let Some(limit) = self.config.limits.memory_mb else { return };
        if self.child.is_none() || !matches!(self.status, Status::Running | Status::Starting) {
            return;
        }
        let message =
            format!("memory limit: the process tree uses {} MiB, over the {limit} MiB limit", rss_bytes >> 20);
        tracing::warn!("{message}; restarting");
        let record = self.error_record(message, "memory limit", None);
        self.stop_child("memory limit").await;
        self.fail(record, "memory limit");
    }

    async fn on_exit(&mut self, exit: ExitInfo) {
        // The main process is gone; make sure nothing of its group is left
        // holding the port before anything else starts on it.
        self.kill_child().await;
        let during = if self.status == Status::Starting { " during startup" } else { "" };
        tracing::warn!("child {exit}{during}");
        if exit.success() && self.config.restart.policy == RestartPolicy::OnFailure {
            self.desired_running = false;
            self.clear_timers();
            self.set_status(Status::Stopped, "exited");
            return;
        }
        let message = format!("child {exit}{during}");
        self.fail(self.error_record(message, "exit", Some(exit)), "exited");
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if self.stable_at.is_some_and(|t| t <= now) {
            // A stable run ends the streak: the breaker counts consecutive
            // failures only (DESIGN §5), and backoff starts over.
            self.stable_at = None;
            self.backoff.reset();
            if self.breaker.state() != BreakerState::Closed {
                tracing::info!("child ran stable; circuit breaker closed");
            }
            self.breaker.close();
            self.publish();
        }
        if self.health_at.is_some_and(|t| t <= now) {
            self.health_at = None;
            self.spawn_probe(ProbeKind::Liveness);
        }
        if self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            if !self.breaker.allow_start(now) {
                self.restart_at = self.breaker.open_until();
                return;
            }
            let reason = if self.breaker.state() == BreakerState::HalfOpen { "half-open trial" } else { "restart" };
            self.start_child(reason).await;
        }
    }

    /// Records a failure and schedules what follows: a restart after
    /// backoff, a half-open trial once the breaker allows it, or nothing.
    fn fail(&mut self, error: ErrorRecord, reason: &str) {
        self.ctx.metrics.failure(&self.name, reason);
        self.clear_timers();
        self.health = Health::Unknown;
        self.started_at = None;
        if self.errors.len() == ERROR_HISTORY {
            self.errors.pop_front();
        }
        self.errors.push_back(error);
        let now = Instant::now();
        if self.breaker.record_failure(now) {
            tracing::warn!(failures = self.breaker.failures(), "circuit breaker opened");
        }
        if self.desired_running && self.config.restart.policy != RestartPolicy::Never {
            self.restart_at = Some(match self.breaker.open_until() {
                Some(until) => until,
                None => now + self.backoff.next_delay(rand::random()),
            });
        }
        self.set_status(Status::Error, reason);
    }

    /// Stops the child gracefully (its stop signal, SIGKILL after grace) and
    /// cancels every pending restart and probe.
    async fn stop_child(&mut self, reason: &str) {
        self.clear_timers();
        let Some(mut child) = self.child.take() else {
            if self.status != Status::Stopped {
                self.set_status(Status::Stopped, reason);
            }
            return;
        };
        self.set_status(Status::Stopping, reason);
        let signal = self.config.stop.signal.parse().unwrap_or(Signal::SIGTERM);
        let exit = stop_tree(child.as_mut(), signal, self.config.stop.grace).await;
        self.ctx.runtime.remove(&self.name);
        tracing::info!("child stopped: {exit}");
        self.health = Health::Unknown;
        self.started_at = None;
        self.set_status(Status::Stopped, reason);
    }

    /// Kills what is left of the child's process group at once.
    async fn kill_child(&mut self) {
        self.clear_timers();
        if let Some(mut child) = self.child.take() {
            stop_tree(child.as_mut(), Signal::SIGKILL, Duration::ZERO).await;
            self.ctx.runtime.remove(&self.name);
        }
    }

    fn clear_timers(&mut self) {
        self.restart_at = None;
        self.stable_at = None;
        self.health_at = None;
        if let Some(task) = self.probe_task.take() {
            task.abort();
        }
        self.bump_generation();
    }

    fn error_record(&self, message: String, reason: &str, exit: Option<ExitInfo>) -> ErrorRecord {
        ErrorRecord {
            message,
            at: Timestamp::now(),
            reason: reason.to_string(),
            exit_code: exit.and_then(|e| e.code),
            signal: exit.and_then(|e| e.signal_name()),
            stderr_tail: self.logs.stderr_tail(self.log_mark, STDERR_TAIL),
        }
    }

    fn set_status(&mut self, status: Status, reason: &str) {
        let previous = self.status;
        self.ctx.metrics.transition(&self.name, previous, status);
        self.status = status;
        self.ctx.bus.transition(self.record(), Some(previous), reason);
    }

    /// Publishes the current record without a notification.
    fn publish(&self) {
        self.ctx.bus.update(self.record());
    }

    fn record(&self) -> WorkspaceRecord {
        let next_retry =
            self.restart_at.map(|t| Timestamp(SystemTime::now() + t.saturating_duration_since(Instant::now())));
        let pending = next_retry.map(|at| {
            let what = if self.breaker.state() == BreakerState::Open { "half-open trial" } else { "restart" };
            format!("{what} at {at}")
        });
        let name = &self.name;
        WorkspaceRecord {
            status: WorkspaceStatus {
                workspace: name.clone(),
                status: self.status,
                health: self.health,
                enabled: self.has_config && self.config.enabled,
                pid: self.child.as_ref().map(|c| c.pid()),
                port: self.port,
                transport: self.config.transport.as_str(),
                upstream: self.port.map(|p| upstream(p, &self.config)),
                proxy: ProxyPaths { mcp: format!("/workspaces/{name}/mcp"), sse: format!("/workspaces/{name}/sse") },
                started_at: self.started_at.map(Timestamp),
                uptime_ms: None,
                last_health_check: self.last_health_check.map(Timestamp),
                restart_count: self.restart_count,
                breaker: BreakerStatus {
                    state: self.breaker.state(),
                    failure_count: self.breaker.failures(),
                    next_retry_at: next_retry,
                },
                last_error: self.errors.back().cloned(),
                config_error: self.config_error.clone(),
                config_version: self.version.clone(),
                resources: None,
            },
            pgid: self.child.as_ref().map(|c| c.pgid()),
            desired_config_version: self.version.clone(),
            desired: if self.desired_running { "running" } else { "stopped" },
            pending,
            errors: self.errors.iter().cloned().collect(),
            limits: self.config.limits.clone(),
        }
    }
}

fn upstream(port: u16, config: &WorkspaceConfig) -> String {
    format!("http://127.0.0.1:{port}{}", config.endpoint_path())
}

fn spawn_message(name: &str, e: &SpawnError) -> String {
    format!("spawning workspace {name:?}: {e}")
}

/// Transitional: the graceful stop the state-machine actor replaces with a timer.
async fn stop_tree(child: &mut dyn Child, signal: Signal, grace: Duration) -> ExitInfo {
    child.signal(signal);
    if tokio::time::timeout(grace, child.wait_gone()).await.is_err() {
        child.kill();
    }
    child.wait_gone().await;
    child.wait().await
}
