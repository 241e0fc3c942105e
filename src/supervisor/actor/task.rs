//! The actor's driver: a thin loop that turns the world into [`Input`]s for
//! the pure [`Core`] and performs the [`Effect`]s it returns.
//!
//! The driver owns everything with I/O: the child handle, probe tasks, the
//! port allocator, the log sink, the error history and publishing. It never
//! waits on a child inside a step: a graceful stop is a signal plus a timer
//! in the core, so commands are taken while a child stops.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::handle::{WorkspaceHandle, COMMAND_QUEUE};
use super::messages::Command;
use super::state::{ChildId, Core, Effect, Failure, Input, ProbeKind, SpawnFailure, Spawned, Verdict, View};
use crate::bridge::{Hub, PoolSpec, SessionPool};
use crate::config::{FileError, StdioShare, WorkspaceConfig};
use crate::process::runtime::{ProcessId, RuntimeEntry};
use crate::process::{build_spec, Child, LogSink};
use crate::state::{Activity, BreakerStatus, ErrorRecord, ProxyPaths, Timestamp, WorkspaceRecord, WorkspaceStatus};
use crate::supervisor::probe::{self, ProbeTarget};
use crate::supervisor::SupervisorContext;

/// Errors kept per workspace for the debug view.
const ERROR_HISTORY: usize = 10;
/// stderr lines attached to an error.
const STDERR_TAIL: usize = 20;
/// How long a start waits for its held sticky port before moving the
/// workspace to another ([`crate::ports::PortAllocator::acquire_within`]).
const PORT_GRACE: Duration = Duration::from_secs(1);

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
    let (results_sender, results) = mpsc::channel(4);
    let span = tracing::info_span!("workspace", name = %name);
    let activity = Arc::new(Activity::default());
    let driver = Driver {
        activity: activity.clone(),
        reason: None,
        core: Core::new(config, rand::random()),
        name,
        ctx,
        logs,
        commands,
        results_sender,
        results,
        cancel,
        shutting_down: false,
        child: None,
        probe: None,
        errors: VecDeque::new(),
        log_mark: 0,
        deferred: None,
        removed: None,
        waiters: Vec::new(),
        last_verdict: None,
        slot: None,
    };
    tracker.spawn(driver.run().instrument(span));
    WorkspaceHandle::new(sender, activity)
}

/// The live child, keyed by the core's id for it.
struct Slot {
    id: ChildId,
    child: Box<dyn Child>,
    exited: bool,
    /// The stdio bridge's hub of a `stdio` child.
    hub: Option<Arc<Hub>>,
}

struct Driver {
    name: String,
    core: Core,
    ctx: Arc<SupervisorContext>,
    logs: LogSink,
    commands: mpsc::Receiver<Command>,
    /// Probe and memory results come back here.
    results_sender: mpsc::Sender<Input>,
    results: mpsc::Receiver<Input>,
    cancel: CancellationToken,
    shutting_down: bool,
    child: Option<Slot>,
    probe: Option<AbortHandle>,
    errors: VecDeque<ErrorRecord>,
    /// Log position at the last spawn: an error's stderr tail shows only
    /// the current child's lines.
    log_mark: u64,
    /// A command taken off the queue while coalescing config changes.
    deferred: Option<Command>,
    /// Answered once the actor finished after a removal.
    removed: Option<oneshot::Sender<()>>,
    /// What the proxy saw of the clients, for the idle clock.
    activity: Arc<Activity>,
    /// The reason of the last transition, shown in the status.
    reason: Option<&'static str>,
    /// Who waits for the verdict on which config version (API writes).
    waiters: Vec<(String, oneshot::Sender<Verdict>)>,
    /// The last verdict, for a waiter that comes after it.
    last_verdict: Option<(String, Verdict)>,
    /// The start slot held from spawn until the child is ready or failed
    /// (`--max-concurrent-starts`).
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A start slot for the queued child, once one is free; pending otherwise.
async fn free_slot(
    starts: &Arc<tokio::sync::Semaphore>,
    queued: Option<ChildId>,
) -> (ChildId, tokio::sync::OwnedSemaphorePermit) {
    let Some(child) = queued else { return std::future::pending().await };
    match starts.clone().acquire_owned().await {
        Ok(permit) => (child, permit),
        // The semaphore is never closed.
        Err(_) => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(mut self) {
        let effects = self.core.boot();
        self.perform(effects, None).await;
        while !self.core.finished() {
            let (input, reply) = self.next_input().await;
            if let Input::Exited { child, .. } = input {
                // In-flight requests of every client session fail at once.
                if let Some(hub) = self.child.as_ref().filter(|s| s.id == child).and_then(|s| s.hub.as_ref()) {
                    self.ctx.hubs.remove(&self.name, hub.pid);
                }
            }
            if let Input::Gone { child } = input {
                // The tree is gone: drop its handle before the core moves on.
                if self.child.as_ref().is_some_and(|s| s.id == child) {
                    self.child = None;
                    self.ctx.runtime.remove(&self.name);
                }
            }
            let effects = self.core.step(input, Instant::now());
            self.perform(effects, reply).await;
            if !self.core.holds_start_slot() {
                self.slot = None;
            }
        }
    }

    /// Waits for the next input: a command, the child's exit or the end of
    /// its tree, a probe or memory result, a deadline, or shutdown.
    async fn next_input(&mut self) -> (Input, Option<oneshot::Sender<bool>>) {
        if let Some(command) = self.deferred.take() {
            return self.command(command);
        }
        let deadline = self.core.next_deadline();
        let accepting = !self.shutting_down;
        let next = tokio::select! {
            biased;
            _ = self.cancel.cancelled(), if accepting => None,
            command = self.commands.recv(), if accepting => command.map(Ok),
            input = watch_child(self.child.as_mut()) => Some(Err(input)),
            (child, permit) = free_slot(&self.ctx.starts, self.core.queued()) => {
                self.slot = Some(permit);
                Some(Err(Input::Slot { child }))
            }
            Some(input) = self.results.recv() => Some(Err(input)),
            () = sleep_until(deadline) => Some(Err(Input::Tick)),
        };
        match next {
            Some(Ok(command)) => self.command(command),
            Some(Err(input)) => (input, None),
            // Cancelled, or every handle is gone: stop the child and end.
            None => {
                self.shutting_down = true;
                (Input::Shutdown, None)
            }
        }
    }

    /// Turns a command into an input; queued config changes collapse into
    /// the newest, and the first other command waits its turn.
    fn command(&mut self, command: Command) -> (Input, Option<oneshot::Sender<bool>>) {
        match command {
            Command::Start { noop } => (Input::Start, noop),
            Command::Stop { noop } => (Input::Stop, noop),
            Command::Restart => (Input::Restart, None),
            Command::Demand { coming } => (Input::Demand, Some(coming)),
            Command::Apply { mut config, mut version } => {
                while let Ok(next) = self.commands.try_recv() {
                    match next {
                        Command::Apply { config: c, version: v } => (config, version) = (c, v),
                        other => {
                            self.deferred = Some(other);
                            break;
                        }
                    }
                }
                // A waiter for another version hears nothing more: its
                // sender drops, which says it was superseded.
                self.waiters.retain(|(v, _)| *v == version);
                (Input::Apply { config, version }, None)
            }
            Command::AwaitVerdict { version, reply } => {
                match &self.last_verdict {
                    Some((v, verdict)) if *v == version => {
                        let _ = reply.send(verdict.clone());
                    }
                    _ => self.waiters.push((version, reply)),
                }
                (Input::Tick, None)
            }
            Command::OverDaemonMemory { message } => (Input::OverDaemonMemory { message }, None),
            Command::Invalid(error) => {
                tracing::warn!("workspace file is invalid; keeping the last good config:\n{error}");
                (Input::Invalid(error), None)
            }
            Command::Remove(done) => {
                self.removed = Some(done);
                (Input::Remove, None)
            }
        }
    }

    /// Performs `effects` in order. A spawn's answer is stepped at once,
    /// after the effects that came with the spawn.
    async fn perform(&mut self, effects: Vec<Effect>, mut reply: Option<oneshot::Sender<bool>>) {
        let mut queue = VecDeque::from(effects);
        while !queue.is_empty() {
            let mut answers = Vec::new();
            while let Some(effect) = queue.pop_front() {
                match effect {
                    Effect::Spawn { child, config } => answers.push(self.spawn_child(child, &config).await),
                    Effect::Signal { child, signal } => {
                        if let Some(slot) = self.slot(child) {
                            slot.child.signal(signal);
                        }
                    }
                    Effect::Kill { child } => {
                        if let Some(slot) = self.slot(child) {
                            slot.child.kill();
                        }
                    }
                    Effect::Probe { child, kind } => self.start_probe(child, kind),
                    Effect::SampleMemory { child } => {
                        if let Some(rss_bytes) = self.slot(child).and_then(|s| s.child.memory_bytes()) {
                            answers.push(Input::Memory { child, rss_bytes });
                        }
                    }
                    Effect::Failed(failure) => self.record_failure(failure),
                    Effect::Restarted { reason } => self.ctx.metrics.restart(&self.name, reason),
                    Effect::Ready { after } => {
                        let label = crate::metrics::WorkspaceLabel { workspace: self.name.clone() };
                        self.ctx.metrics.spawn_ready_seconds.get_or_create(&label).observe(after.as_secs_f64());
                        tracing::info!(ready_ms = after.as_millis() as u64, "child is ready");
                    }
                    Effect::Publish { view, transition } => {
                        if let Some(t) = transition {
                            self.reason = Some(t.reason);
                        }
                        let record = self.record(&view);
                        match transition {
                            Some(t) => {
                                tracing::debug!(from = %t.from, to = %t.to, reason = t.reason, "status changed");
                                self.ctx.metrics.transition(&self.name, t.from, t.to);
                                self.ctx.bus.transition(record, Some(t.from), t.reason);
                            }
                            None => self.ctx.bus.update(record),
                        }
                    }
                    Effect::Noop(answer) | Effect::Demanded(answer) => {
                        if let Some(reply) = reply.take() {
                            let _ = reply.send(answer);
                        }
                    }
                    Effect::CheckActivity { child } => {
                        let (last_request, open) = (self.activity.last(), self.activity.open());
                        answers.push(Input::Activity { child, last_request, open });
                    }
                    Effect::ReservePort => match self.ctx.ports.acquire(&self.name) {
                        Ok(port) => answers.push(Input::PortReserved { port }),
                        Err(e) => tracing::warn!("allocating a port for the first request: {e}"),
                    },
                    Effect::Verdict { version, verdict } => self.verdict(version, verdict),
                    Effect::Finish { removed } => {
                        self.abort_probe();
                        if removed {
                            let view = self.core.view();
                            self.ctx.bus.remove(self.record(&view), Some(view.status), "removed");
                        }
                        if let Some(done) = self.removed.take() {
                            let _ = done.send(());
                        }
                    }
                }
            }
            for input in answers {
                queue.extend(self.core.step(input, Instant::now()));
            }
        }
    }

    /// Records a verdict in the history and tells whoever waits for it.
    fn verdict(&mut self, version: String, verdict: Verdict) {
        use crate::history::Outcome;
        let outcome = match verdict {
            Verdict::Applied => Outcome::Applied,
            Verdict::RolledBack { .. } | Verdict::Failed { .. } => Outcome::RolledBack,
        };
        tracing::info!(version, outcome = outcome.as_str(), "config settled");
        self.ctx.history.verdict(&self.name, &version, outcome);
        for (_, reply) in self.waiters.extract_if(.., |(v, _)| *v == version) {
            let _ = reply.send(verdict.clone());
        }
        self.last_verdict = Some((version, verdict));
    }

    fn slot(&mut self, id: ChildId) -> Option<&mut Slot> {
        self.child.as_mut().filter(|s| s.id == id)
    }

    /// Allocates the port and starts the child; the answer for the core.
    async fn spawn_child(&mut self, id: ChildId, config: &WorkspaceConfig) -> Input {
        debug_assert!(self.child.is_none(), "the core spawns only once the old tree is gone");
        if self.slot.is_none() {
            match self.ctx.starts.clone().try_acquire_owned() {
                Ok(permit) => self.slot = Some(permit),
                Err(_) => return Input::Queued { child: id },
            }
        }
        let port = match self.ctx.ports.acquire_within(&self.name, PORT_GRACE).await {
            Ok(port) => port,
            Err(e) => {
                let failure = SpawnFailure { kind: "port", message: e.to_string(), port: None };
                return Input::Spawned { child: id, result: Err(failure) };
            }
        };
        self.log_mark = self.logs.mark();
        let spec = build_spec(&self.name, config, port, &self.ctx.launch);
        let spawned = match &spec {
            Ok(spec) => self.ctx.launcher.spawn(spec, &self.logs).await,
            Err(e) => Err(e.clone()),
        };
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let message = format!("spawning workspace {:?}: {e}", self.name);
                tracing::warn!("{message}");
                let failure = SpawnFailure { kind: e.kind(), message, port: Some(port) };
                return Input::Spawned { child: id, result: Err(failure) };
            }
        };
        let mut child = child;
        let (pid, pgid, isolation) = (child.pid(), child.pgid(), child.isolation());
        let hub = child.take_stdio().map(|pipes| {
            let label = crate::metrics::WorkspaceLabel { workspace: self.name.clone() };
            let errors = self.ctx.metrics.protocol_errors.get_or_create(&label).clone();
            let hub = Hub::start(&self.name, pid, pipes, self.logs.clone(), errors.clone());
            self.ctx.hubs.insert(hub.clone());
            if let (StdioShare::PerSession, Ok(spec)) = (config.stdio.share, spec) {
                let pool = SessionPool::new(
                    &self.name,
                    pid,
                    PoolSpec {
                        launcher: self.ctx.launcher.clone(),
                        spec,
                        logs: self.logs.clone(),
                        runtime: self.ctx.runtime.clone(),
                        protocol_errors: errors.clone(),
                        max_sessions: config.stdio.max_sessions as usize,
                        idle_timeout: config.stdio.idle_timeout,
                        startup_timeout: config.health.startup_timeout,
                        stop_signal: config.stop.signal.as_nix(),
                        grace: config.stop.grace,
                    },
                );
                self.ctx.hubs.insert_pool(pool);
            }
            hub
        });
        let memory_enforced = child.memory_limit_enforced();
        tracing::info!(pid, port, "child started");
        if let Some(process) = ProcessId::of(pid as i32) {
            let entry = RuntimeEntry { pid: process.pid, pgid, start_time: process.start_time, port, tree: vec![] };
            self.ctx.runtime.set(&self.name, entry);
        }
        self.child = Some(Slot { id, child, exited: false, hub });
        Input::Spawned { child: id, result: Ok(Spawned { pid, pgid, port, isolation, memory_enforced }) }
    }

    fn start_probe(&mut self, child: ChildId, kind: ProbeKind) {
        let (Some(config), Some(port)) = (self.core.config(), self.core.view().port) else { return };
        // A start for a request (its transition, published just before this
        // probe, says `demand`) has a client waiting: see `running` sooner.
        let held = kind == ProbeKind::Readiness && self.reason == Some("demand");
        let target = ProbeTarget {
            url: upstream(port, config),
            transport: config.transport,
            timeout: config.health.timeout,
            startup_timeout: config.health.startup_timeout,
            hub: self.child.as_ref().filter(|s| s.id == child).and_then(|s| s.hub.clone()),
            retry_max: if held { probe::READINESS_RETRY_MAX_HELD } else { probe::READINESS_RETRY_MAX },
        };
        let probe = self.ctx.prober.probe(target, kind == ProbeKind::Readiness);
        let sender = self.results_sender.clone();
        let metrics = self.ctx.metrics.clone();
        let label = crate::metrics::WorkspaceLabel { workspace: self.name.clone() };
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let result = probe.await;
            if kind == ProbeKind::Liveness {
                metrics.probe_seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
            }
            let _ = sender.send(Input::Probe { child, kind, result }).await;
        });
        if let Some(old) = self.probe.replace(task.abort_handle()) {
            old.abort();
        }
    }

    fn abort_probe(&mut self) {
        if let Some(task) = self.probe.take() {
            task.abort();
        }
    }

    fn record_failure(&mut self, failure: Failure) {
        tracing::warn!("{}", failure.message);
        self.ctx.metrics.failure(&self.name, failure.reason);
        if self.errors.len() == ERROR_HISTORY {
            self.errors.pop_front();
        }
        self.errors.push_back(ErrorRecord {
            message: failure.message,
            at: Timestamp::now(),
            reason: failure.kind,
            exit_code: failure.exit.and_then(|e| e.code),
            signal: failure.exit.and_then(|e| e.signal_name()),
            stderr_tail: self.logs.stderr_tail(self.log_mark, STDERR_TAIL),
        });
    }

    /// The record readers see for `view`, with wall-clock times.
    fn record(&self, view: &View) -> WorkspaceRecord {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let wall_of = |t: Instant| {
            Timestamp(match t.checked_duration_since(now) {
                Some(ahead) => wall + ahead,
                None => wall - now.duration_since(t),
            })
        };
        let name = &self.name;
        let config = view.config.as_deref();
        let transport = config.map_or(crate::config::Transport::default(), |c| c.transport);
        WorkspaceRecord {
            status: WorkspaceStatus {
                workspace: name.clone(),
                status: view.status,
                reason: self.reason.map(str::to_string),
                health: view.health,
                enabled: config.is_some_and(|c| c.enabled),
                pid: view.pid,
                port: view.port,
                transport: transport.as_str(),
                isolation: view.isolation,
                upstream: view.port.zip(config).map(|(port, c)| upstream(port, c)),
                proxy: ProxyPaths { mcp: format!("/workspaces/{name}/mcp"), sse: format!("/workspaces/{name}/sse") },
                started_at: view.running_since.map(wall_of),
                uptime_ms: None,
                last_health_check: view.last_health_check.map(wall_of),
                restart_count: view.restart_count,
                breaker: BreakerStatus {
                    state: view.breaker,
                    failure_count: view.breaker_failures,
                    next_retry_at: view.pending.map(|(at, _)| wall_of(at)),
                },
                last_error: self.errors.back().cloned(),
                config_error: view.config_error.clone().or_else(|| self.rollback_error(view)),
                config_version: view.version.clone(),
                resources: None,
                stdio: None,
                client_sessions: Vec::new(),
                applied_version: view.applied_version.clone(),
                file_version: view.file_version.clone(),
            },
            pgid: view.pgid,
            desired_config_version: view.version.clone(),
            desired: if view.desired_running { "running" } else { "stopped" },
            pending: view.pending.map(|(at, what)| format!("{what} at {}", wall_of(at))),
            errors: self.errors.iter().cloned().collect(),
            limits: config.map(|c| c.limits.clone()).unwrap_or_default(),
            hold_for: config.filter(|c| c.enabled && c.lifecycle.holds_requests()).map(|c| c.health.startup_timeout),
        }
    }
}

impl Driver {
    /// The `configError` of a rollback: what was rolled back and why, then
    /// the failed child's error and its stderr tail (docs/reference.md §10).
    fn rollback_error(&self, view: &View) -> Option<FileError> {
        let rolled_back = view.rolled_back.as_ref()?;
        let file = self.ctx.launch.workspaces_dir.join(format!("{}.json", self.name));
        let mut errors = vec![crate::config::ConfigError { at: String::new(), message: rolled_back.message.clone() }];
        let failed = self.errors.iter().rev().find(|e| rolled_back.message.contains(&e.message));
        if let Some(failed) = failed {
            let lines = failed.stderr_tail.iter().map(|line| format!("stderr: {line}"));
            errors.extend(lines.map(|message| crate::config::ConfigError { at: String::new(), message }));
        }
        Some(FileError { file, errors })
    }
}

/// The child's exit, then the end of its tree; pending without a child.
async fn watch_child(slot: Option<&mut Slot>) -> Input {
    let Some(slot) = slot else { return std::future::pending().await };
    if !slot.exited {
        let exit = slot.child.wait().await;
        slot.exited = true;
        return Input::Exited { child: slot.id, exit, oom_killed: slot.child.oom_killed() };
    }
    slot.child.wait_gone().await;
    Input::Gone { child: slot.id }
}

fn upstream(port: u16, config: &WorkspaceConfig) -> String {
    format!("http://127.0.0.1:{port}{}", config.endpoint_path())
}
