//! The actor's decisions as a pure state machine.
//!
//! [`Core::step`] takes one [`Input`] and the current time and returns the
//! [`Effect`]s to perform: spawn, signal, kill, probe, publish. It does no
//! I/O and reads no clock, so every transition of the status model
//! (docs/reference.md §5) is unit-tested on made-up time, and a property
//! test drives it through random sequences of inputs.
//!
//! ```text
//!             start / config valid              probe ok
//!  stopped ────────────────────────► starting ───────────► running
//!     ▲                                 │  exit, probe failed,  │ exit, unhealthy,
//!     │ tree gone                       │  startup timeout      │ memory limit
//!     │                                 ▼                       ▼
//!  stopping ◄── stop, restart,       reaping (kill what is left; shows error)
//!     │         config change,          │ tree gone
//!     │         remove                  ▼
//!     │                     backoff ──► starting      (restart after a delay)
//!     │                     open ─────► starting      (breaker: one half-open trial)
//!     │                     failed                    (policy never, or not wanted)
//!     └── tree gone, then: stopped | starting | finish
//! ```
//!
//! Invariants (checked by the property test in `tests.rs`):
//! - at most one child is alive: a new one is spawned only once the old
//!   tree is gone;
//! - while the breaker is open nothing is spawned, except one half-open trial;
//! - a stop cancels every pending restart;
//! - every status change is published exactly once, as a chain of
//!   transitions from the old status to the new one;
//! - `running` follows only a successful readiness probe of the current child;
//! - an idle stop counts no failure and schedules no restart; a demand starts
//!   only a workspace that wakes on demand (see `lifecycle`).

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::config::{FileError, RestartPolicy, WorkspaceConfig};
use crate::process::ExitInfo;
use crate::state::{BreakerState, Health, Isolation, Status};
use crate::supervisor::backoff::Backoff;
use crate::supervisor::breaker::Breaker;

use super::lifecycle::{self, IdleClock};

/// Names one spawned child, so late news of an older child is ignored.
pub type ChildId = u64;

/// How often a tree's memory is sampled against `limits.memoryMb`.
pub const MEMORY_SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Which probe a result belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Repeated until the child answers or `startupTimeout` passes.
    Readiness,
    /// One probe every `health.interval` while running.
    Liveness,
}

/// A started child, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    pub pid: u32,
    pub pgid: i32,
    pub port: u16,
    /// How its tree is held together.
    pub isolation: Isolation,
    /// Whether the kernel enforces `limits.memoryMb` (a cgroup memory
    /// limit); when not, the core has the tree's memory sampled.
    pub memory_enforced: bool,
}

/// A start that failed before a child existed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnFailure {
    /// A short label: `port`, `not found`, `not executable`, ...
    pub kind: &'static str,
    pub message: String,
    /// The port it was to use, if one was allocated.
    pub port: Option<u16>,
}

/// Everything that can happen to a workspace.
#[derive(Debug, Clone)]
pub enum Input {
    /// Run the child; closes the breaker.
    Start,
    /// Stop the child; cancels any pending restart.
    Stop,
    /// Stop the child if it runs, then start it; closes the breaker.
    Restart,
    /// A new valid config.
    Apply { config: Arc<WorkspaceConfig>, version: String },
    /// The workspace file turned invalid; the last good config stays.
    Invalid(FileError),
    /// The workspace file is gone: stop, then finish.
    Remove,
    /// The daemon stops: stop, then finish.
    Shutdown,
    /// The answer to [`Effect::Spawn`]; the driver sends it before anything else.
    Spawned { child: ChildId, result: Result<Spawned, SpawnFailure> },
    /// The child's main process exited; `oom_killed` when the kernel killed
    /// a member of its tree for passing the memory limit.
    Exited { child: ChildId, exit: ExitInfo, oom_killed: bool },
    /// The child's main process exited and no member of its tree is left.
    Gone { child: ChildId },
    /// The result of an [`Effect::Probe`].
    Probe { child: ChildId, kind: ProbeKind, result: Result<(), String> },
    /// The answer to [`Effect::SampleMemory`]: the tree's RSS in bytes.
    Memory { child: ChildId, rss_bytes: u64 },
    /// Time passed [`Core::next_deadline`].
    Tick,
    /// A proxied request wants the child (docs/reference.md §11): starts a
    /// stopped workspace that wakes on demand; answered with
    /// [`Effect::Demanded`].
    Demand,
    /// The answer to [`Effect::CheckActivity`]: when the last proxied request
    /// began or ended, and how many requests and client streams are open.
    Activity { child: ChildId, last_request: Option<Instant>, open: u32 },
    /// The answer to [`Effect::ReservePort`].
    PortReserved { port: u16 },
    /// The daemon is over `--max-memory-mb` and this tree is the largest:
    /// the child is restarted as a memory-limit failure.
    OverDaemonMemory { message: String },
}

/// How a changed config fared: its verdict (docs/reference.md §10).
///
/// A config counts as applied only once its child reaches `running`; the
/// core then keeps it as the last good one, to go back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its child reached `running`, or it needed no child (disabled, stopped).
    Applied,
    /// Its child did not reach `running`; the last config that ran is back
    /// (running again, or failed too, as the status shows).
    RolledBack { to: String, message: String },
    /// Its child did not reach `running`, and no config ran before it.
    Failed { message: String },
}

/// A change whose child failed before `running`, replaced by the last
/// config that ran; shown until the file changes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    pub failed_version: String,
    pub restored_version: String,
    /// Lowercase: what was rolled back, to what, and why.
    pub message: String,
}

/// A status transition to publish as one `workspace/statusChanged`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Status,
    pub to: Status,
    pub reason: &'static str,
}

/// A failure of a child, to count and to keep in the error history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    /// The metric and transition reason: `exited`, `spawn failed`, ...
    pub reason: &'static str,
    /// The error record's kind: `exit`, `spawn: not found`, `unhealthy`, ...
    pub kind: String,
    pub exit: Option<ExitInfo>,
}

/// What the core knows of the workspace at one moment, for a record.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub status: Status,
    pub health: Health,
    /// The config in force; `None` while the file has never been valid.
    pub config: Option<Arc<WorkspaceConfig>>,
    pub version: Option<String>,
    pub config_error: Option<FileError>,
    /// Whether the actor works towards a running child.
    pub desired_running: bool,
    pub pid: Option<u32>,
    pub pgid: Option<i32>,
    pub port: Option<u16>,
    /// How the last child's tree was held together.
    pub isolation: Option<Isolation>,
    /// Since when the child has been `running`.
    pub running_since: Option<Instant>,
    pub last_health_check: Option<Instant>,
    pub restart_count: u32,
    pub breaker: BreakerState,
    pub breaker_failures: u32,
    /// When the pending start runs, and what it is (`restart`, `half-open trial`).
    pub pending: Option<(Instant, &'static str)>,
    /// The version of the file as last read, whatever became of it.
    pub file_version: Option<String>,
    /// The version of the last config that was applied (docs/reference.md §10).
    pub applied_version: Option<String>,
    /// The last change that was rolled back, until the file changes again.
    pub rolled_back: Option<RolledBack>,
}

/// One thing for the driver to do, in order.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Allocate the port, start `config`, answer with [`Input::Spawned`].
    Spawn { child: ChildId, config: Arc<WorkspaceConfig> },
    /// Send `signal` to every member of the child's tree.
    Signal { child: ChildId, signal: Signal },
    /// SIGKILL every member of the child's tree, and keep at it until it is gone.
    Kill { child: ChildId },
    /// Probe the child; the result comes back as [`Input::Probe`].
    Probe { child: ChildId, kind: ProbeKind },
    /// Measure the tree's memory; answered with [`Input::Memory`].
    SampleMemory { child: ChildId },
    /// A failure to count and record.
    Failed(Failure),
    /// A child started after the first, for the restart counter.
    Restarted { reason: &'static str },
    /// The child became ready this long after its spawn.
    Ready { after: Duration },
    /// Publish the record; with a transition, as a notification too.
    Publish { view: Box<View>, transition: Option<Transition> },
    /// The answer to a start or stop: whether it changed nothing.
    Noop(bool),
    /// The actor is done: its child tree is gone. `removed` when the
    /// workspace itself went away.
    Finish { removed: bool },
    /// The answer to a demand: whether the child is coming (starting or
    /// running now, or starting once a stop is done), so the request waits.
    Demanded(bool),
    /// Read the proxy's activity for the idle clock; answered with
    /// [`Input::Activity`].
    CheckActivity { child: ChildId },
    /// Allocate the workspace's port without starting it (an on-demand
    /// workspace gets its port at once); answered with [`Input::PortReserved`].
    ReservePort,
    /// A changed config settled: applied, rolled back or failed.
    Verdict { version: String, verdict: Verdict },
}

/// One run of a child, from spawn until its tree is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    id: ChildId,
    pid: u32,
    pgid: i32,
    exited: bool,
    /// When to sample its memory next (only with `limits.memoryMb`).
    sample_at: Option<Instant>,
}

/// What follows once a stopping child's tree is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Stop { reason: &'static str },
    Start { reason: &'static str },
    Finish { removed: bool, reason: &'static str },
}

impl Then {
    fn reason(self) -> &'static str {
        match self {
            Then::Stop { reason } | Then::Start { reason } | Then::Finish { reason, .. } => reason,
        }
    }
}

/// Where the workspace is. Each state carries its own data.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// No child and none wanted.
    Stopped,
    /// [`Effect::Spawn`] is out; [`Input::Spawned`] comes next. Lasts no other input.
    Spawning { id: ChildId, from: Status, reason: &'static str },
    /// The child runs and is probed for readiness until `deadline`.
    Starting { child: Run, spawned_at: Instant, deadline: Instant },
    /// The child answered its readiness probe.
    Running {
        child: Run,
        since: Instant,
        /// When the run counts as stable (breaker closed, backoff reset).
        stable_at: Option<Instant>,
        /// When the next liveness probe runs; `None` while one is out.
        probe_at: Option<Instant>,
        /// Consecutive failed liveness probes.
        failures: u32,
    },
    /// The stop signal was sent; SIGKILL follows at `kill_at` (`None` once
    /// sent). `reason` is why it stops; `then` what follows.
    Stopping { child: Run, kill_at: Option<Instant>, reason: &'static str, then: Then },
    /// The child failed; what is left of its tree is being killed. The
    /// public status is already `next`'s.
    Reaping { child: Run, next: Box<State> },
    /// A restart is scheduled at `until`.
    Backoff { until: Instant },
    /// The breaker is open; one half-open trial start runs at `until`.
    Open { until: Instant },
    /// Failed, and no restart follows (policy `never`, or not wanted).
    Failed,
}

impl State {
    fn status(&self) -> Status {
        match self {
            State::Stopped => Status::Stopped,
            // Nothing is published between a spawn and its answer.
            State::Spawning { from, .. } => *from,
            State::Starting { .. } => Status::Starting,
            State::Running { .. } => Status::Running,
            State::Stopping { .. } => Status::Stopping,
            State::Reaping { next, .. } => next.status(),
            State::Backoff { .. } | State::Open { .. } | State::Failed => Status::Error,
        }
    }

    fn child(&self) -> Option<&Run> {
        match self {
            State::Starting { child, .. }
            | State::Running { child, .. }
            | State::Stopping { child, .. }
            | State::Reaping { child, .. } => Some(child),
            _ => None,
        }
    }

    fn child_mut(&mut self) -> Option<&mut Run> {
        match self {
            State::Starting { child, .. }
            | State::Running { child, .. }
            | State::Stopping { child, .. }
            | State::Reaping { child, .. } => Some(child),
            _ => None,
        }
    }

    /// The scheduled start, if any: a restart or a half-open trial.
    fn pending(&self) -> Option<(Instant, &'static str)> {
        match self {
            State::Backoff { until } => Some((*until, "restart")),
            State::Open { until } => Some((*until, "half-open trial")),
            State::Reaping { next, .. } => next.pending(),
            _ => None,
        }
    }
}

/// A workspace whose file was valid at least once.
#[derive(Debug, Clone)]
struct Supervised {
    config: Arc<WorkspaceConfig>,
    version: String,
    /// The file is invalid now; `config` is the last good one.
    config_error: Option<FileError>,
    desired_running: bool,
    state: State,
    breaker: Breaker,
    backoff: Backoff,
    restart_count: u32,
    /// Whether any child was spawned yet (the first start is no restart).
    spawned: bool,
    port: Option<u16>,
    isolation: Option<Isolation>,
    last_health_check: Option<Instant>,
    /// The last stop was an idle stop: a request starts the child again.
    parked: bool,
    /// The idle clock of the current run.
    idle: IdleClock,
    /// The version of the file as last read.
    file_version: String,
    /// The version of the last config that was applied.
    applied_version: Option<String>,
    /// The last config whose child reached `running`: where a failed change goes back to.
    last_good: Option<(Arc<WorkspaceConfig>, String)>,
    /// The version in force whose child has yet to reach `running`.
    trial: Option<String>,
    /// The last change that was rolled back, until the file changes again.
    rolled_back: Option<RolledBack>,
    /// Whether the restored config's child has yet to run (or fail): the
    /// verdict of a rollback waits for it.
    rollback_settling: bool,
}

/// The workspace, as the actor's decisions see it.
#[derive(Debug, Clone)]
enum Workspace {
    /// The file has never been valid: there is no config to run.
    NeverValid {
        error: FileError,
    },
    Supervised(Box<Supervised>),
}

/// The pure core of one workspace actor.
#[derive(Debug, Clone)]
pub struct Core {
    workspace: Workspace,
    next_id: ChildId,
    /// xorshift state for backoff jitter: deterministic for a given seed.
    rng: u64,
    finished: bool,
}

impl Core {
    /// A core for a first valid config, or for the errors of a file that
    /// was never valid. `seed` drives backoff jitter.
    pub fn new(config: Result<(Arc<WorkspaceConfig>, String), FileError>, seed: u64) -> Core {
        let workspace = match config {
            Ok((config, version)) => Workspace::Supervised(Box::new(Supervised::new(config, version))),
            Err(error) => Workspace::NeverValid { error },
        };
        Core { workspace, next_id: 0, rng: seed | 1, finished: false }
    }

    /// The first step: start the child if the config wants one, else
    /// publish why not.
    pub fn boot(&mut self) -> Vec<Effect> {
        let mut out = Vec::new();
        match &mut self.workspace {
            Workspace::NeverValid { .. } => self.publish(&mut out, Status::Stopped, "config invalid"),
            Workspace::Supervised(ws) if lifecycle::waits_for_demand(&ws.config) => {
                out.push(Effect::ReservePort);
                self.publish(&mut out, Status::Stopped, "on-demand");
                self.applied(&mut out);
            }
            Workspace::Supervised(ws) if ws.config.enabled => {
                ws.desired_running = true;
                ws.trial = Some(ws.version.clone());
                self.spawn("start", &mut out);
            }
            Workspace::Supervised(_) => {
                self.publish(&mut out, Status::Stopped, "disabled");
                self.applied(&mut out);
            }
        }
        out
    }

    /// The public status now.
    pub fn status(&self) -> Status {
        match &self.workspace {
            Workspace::NeverValid { .. } => Status::Error,
            Workspace::Supervised(ws) => ws.state.status(),
        }
    }

    /// The config in force, if the file was ever valid.
    pub fn config(&self) -> Option<&Arc<WorkspaceConfig>> {
        match &self.workspace {
            Workspace::NeverValid { .. } => None,
            Workspace::Supervised(ws) => Some(&ws.config),
        }
    }

    /// Whether [`Effect::Finish`] was emitted; no input is taken after it.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The child whose exit the driver should watch, and whether it exited.
    pub fn child(&self) -> Option<(ChildId, bool)> {
        self.supervised().and_then(|ws| ws.state.child()).map(|run| (run.id, run.exited))
    }

    /// The breaker's position, for tests and invariants.
    pub fn breaker(&self) -> BreakerState {
        self.supervised().map_or(BreakerState::Closed, |ws| ws.breaker.state())
    }

    /// The earliest time at which [`Input::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let ws = self.supervised()?;
        let sample = ws.state.child().and_then(|run| run.sample_at);
        let own = match &ws.state {
            State::Starting { deadline, .. } => Some(*deadline),
            State::Running { stable_at, probe_at, since, .. } => {
                let idle_at = ws.idle.deadline(*since, ws.config.lifecycle.idle_stop);
                [*stable_at, *probe_at, idle_at].into_iter().flatten().min()
            }
            State::Stopping { kill_at, .. } => *kill_at,
            State::Backoff { until } | State::Open { until } => Some(*until),
            _ => None,
        };
        [sample, own].into_iter().flatten().min()
    }

    /// What the core knows now, for a record.
    pub fn view(&self) -> View {
        match &self.workspace {
            Workspace::NeverValid { error } => View {
                status: Status::Error,
                health: Health::Unknown,
                config: None,
                version: None,
                config_error: Some(error.clone()),
                desired_running: false,
                pid: None,
                pgid: None,
                port: None,
                isolation: None,
                running_since: None,
                last_health_check: None,
                restart_count: 0,
                breaker: BreakerState::Closed,
                breaker_failures: 0,
                pending: None,
                file_version: None,
                applied_version: None,
                rolled_back: None,
            },
            Workspace::Supervised(ws) => ws.view(),
        }
    }

    /// Handles one input at `now`; returns the effects to perform, in order.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        match input {
            Input::Start => self.on_start(now, &mut out),
            Input::Stop => self.on_stop(now, &mut out),
            Input::Restart => self.on_restart(now, &mut out),
            Input::Apply { config, version } => self.on_apply(config, version, now, &mut out),
            Input::Invalid(error) => self.on_invalid(error, &mut out),
            Input::Remove => self.on_finish(true, "removed", now, &mut out),
            Input::Shutdown => self.on_finish(false, "shutdown", now, &mut out),
            Input::Spawned { child, result } => self.on_spawned(child, result, now, &mut out),
            Input::Exited { child, exit, oom_killed } => self.on_exited(child, exit, oom_killed, now, &mut out),
            Input::Gone { child } => self.on_gone(child, now, &mut out),
            Input::Probe { child, kind, result } => self.on_probe(child, kind, result, now, &mut out),
            Input::Memory { child, rss_bytes } => self.on_memory(child, rss_bytes, now, &mut out),
            Input::Tick => self.on_tick(now, &mut out),
            Input::Demand => self.on_demand(now, &mut out),
            Input::Activity { child, last_request, open } => self.on_activity(child, last_request, open, now, &mut out),
            Input::PortReserved { port } => {
                if let Some(ws) = self.ws().filter(|ws| ws.port.is_none()) {
                    ws.port = Some(port);
                    self.update(&mut out);
                }
            }
            Input::OverDaemonMemory { message } => self.on_over_daemon_memory(message, now, &mut out),
        }
        out
    }

    fn supervised(&self) -> Option<&Supervised> {
        match &self.workspace {
            Workspace::Supervised(ws) => Some(ws),
            Workspace::NeverValid { .. } => None,
        }
    }

    fn ws(&mut self) -> Option<&mut Supervised> {
        match &mut self.workspace {
            Workspace::Supervised(ws) => Some(ws),
            Workspace::NeverValid { .. } => None,
        }
    }

    fn jitter(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Publishes the current view with a transition from `from`.
    fn publish(&self, out: &mut Vec<Effect>, from: Status, reason: &'static str) {
        let view = self.view();
        let transition = Transition { from, to: view.status, reason };
        out.push(Effect::Publish { view: Box::new(view), transition: Some(transition) });
    }

    /// Publishes the current view without a notification.
    fn update(&self, out: &mut Vec<Effect>) {
        out.push(Effect::Publish { view: Box::new(self.view()), transition: None });
    }

    /// Changes the state and publishes the transition.
    fn go(&mut self, state: State, reason: &'static str, out: &mut Vec<Effect>) {
        let from = self.status();
        if let Some(ws) = self.ws() {
            ws.state = state;
        }
        self.publish(out, from, reason);
    }

    /// Starts a new child. Only called with no child alive.
    fn spawn(&mut self, reason: &'static str, out: &mut Vec<Effect>) {
        self.spawn_from(self.status(), reason, out);
    }

    /// [`Self::spawn`], publishing the start as a transition from `from`.
    fn spawn_from(&mut self, from: Status, reason: &'static str, out: &mut Vec<Effect>) {
        self.next_id += 1;
        let id = self.next_id;
        let Some(ws) = self.ws() else { return };
        debug_assert!(ws.state.child().is_none(), "spawn with a child alive");
        if ws.spawned {
            ws.restart_count += 1;
            out.push(Effect::Restarted { reason });
        }
        ws.spawned = true;
        ws.parked = false;
        ws.idle = IdleClock::default();
        ws.state = State::Spawning { id, from, reason };
        out.push(Effect::Spawn { child: id, config: ws.config.clone() });
    }

    /// Sends the stop signal and arms the grace timer; `then` runs once the
    /// tree is gone.
    fn begin_stop(&mut self, child: Run, then: Then, reason: &'static str, now: Instant, out: &mut Vec<Effect>) {
        let Some(ws) = self.ws() else { return };
        let (signal, grace) = (ws.config.stop.signal.as_nix(), ws.config.stop.grace);
        let kill_at = if grace.is_zero() {
            out.push(Effect::Kill { child: child.id });
            None
        } else {
            out.push(Effect::Signal { child: child.id, signal });
            Some(now + grace)
        };
        self.go(State::Stopping { child, kill_at, reason, then }, reason, out);
    }

    /// Records a failure of the current child (or of a start that made
    /// none) and schedules what follows: a restart after backoff, a
    /// half-open trial once the breaker allows it, or nothing.
    fn fail(&mut self, failure: Failure, now: Instant, out: &mut Vec<Effect>) {
        self.fail_from(self.status(), failure, now, out);
    }

    /// [`Self::fail`], publishing the transition from `from`.
    fn fail_from(&mut self, from: Status, failure: Failure, now: Instant, out: &mut Vec<Effect>) {
        let jitter = self.jitter();
        let reason = failure.reason;
        let Some(ws) = self.ws() else { return };
        let verdict = match ws.trial.take() {
            Some(trial) => {
                let good = ws.last_good.clone().filter(|(_, good)| *good != trial && ws.desired_running);
                if let Some((config, version)) = good {
                    self.roll_back(trial, config, version, failure, from, out);
                    return;
                }
                Some(Effect::Verdict { version: trial, verdict: Verdict::Failed { message: failure.message.clone() } })
            }
            // The restored config failed too: the rollback is over all the same.
            None => self.settle_rollback(),
        };
        let Some(ws) = self.ws() else { return };
        out.push(Effect::Failed(failure));
        ws.breaker.record_failure(now);
        let next = if ws.desired_running && ws.config.restart.policy != RestartPolicy::Never {
            match ws.breaker.open_until() {
                Some(until) => State::Open { until },
                None => State::Backoff { until: now + ws.backoff.next_delay(jitter) },
            }
        } else {
            State::Failed
        };
        ws.state = match ws.state.child().copied() {
            Some(child) => {
                out.push(Effect::Kill { child: child.id });
                State::Reaping { child, next: Box::new(next) }
            }
            None => next,
        };
        self.publish(out, from, reason);
        out.extend(verdict);
    }

    /// Goes back from the failed `trial` to the last config that ran:
    /// kills what is left of the trial's child, then starts the good one.
    fn roll_back(
        &mut self,
        trial: String,
        config: Arc<WorkspaceConfig>,
        version: String,
        failure: Failure,
        from: Status,
        out: &mut Vec<Effect>,
    ) {
        let Some(ws) = self.ws() else { return };
        let message = format!("rolled back to {version}: config {trial} did not reach running: {}", failure.message);
        out.push(Effect::Failed(failure));
        // Going back is a config change: the breaker and backoff start over.
        ws.backoff = Backoff::new(config.restart.backoff_initial, config.restart.backoff_max);
        ws.breaker = Breaker::new(config.circuit_breaker.clone());
        ws.config = config;
        ws.version = version.clone();
        ws.applied_version = Some(version.clone());
        ws.rolled_back = Some(RolledBack { failed_version: trial, restored_version: version, message });
        ws.rollback_settling = true;
        match ws.state.child().copied() {
            Some(child) => {
                out.push(Effect::Kill { child: child.id });
                let reason = "rolled back";
                ws.state = State::Stopping { child, kill_at: None, reason, then: Then::Start { reason } };
                self.publish(out, from, reason);
            }
            None => {
                ws.state = State::Failed;
                self.publish(out, from, "rolled back");
                self.spawn("rolled back", out);
            }
        }
    }

    /// The verdict of a rollback whose restored child ran or failed.
    fn settle_rollback(&mut self) -> Option<Effect> {
        let ws = self.ws()?;
        if !std::mem::take(&mut ws.rollback_settling) {
            return None;
        }
        let rolled_back = ws.rolled_back.as_ref()?;
        let verdict =
            Verdict::RolledBack { to: rolled_back.restored_version.clone(), message: rolled_back.message.clone() };
        Some(Effect::Verdict { version: rolled_back.failed_version.clone(), verdict })
    }

    /// The child of the config in force reached `running`: it is the last
    /// good config now, and a trial or a rollback settles.
    fn on_ready(&mut self, out: &mut Vec<Effect>) {
        let verdict = self.settle_rollback();
        let Some(ws) = self.ws() else { return };
        ws.last_good = Some((ws.config.clone(), ws.version.clone()));
        if ws.trial.is_some() {
            self.applied(out);
        }
        out.extend(verdict);
    }

    /// The config in force is applied: its trial, if any, is over.
    fn applied(&mut self, out: &mut Vec<Effect>) {
        let Some(ws) = self.ws() else { return };
        ws.trial = None;
        ws.applied_version = Some(ws.version.clone());
        let version = ws.version.clone();
        self.update(out);
        out.push(Effect::Verdict { version, verdict: Verdict::Applied });
    }

    fn on_start(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let Some(ws) = self.ws() else {
            out.push(Effect::Noop(false));
            return;
        };
        ws.desired_running = true;
        ws.breaker.close();
        ws.backoff.reset();
        match &mut ws.state {
            State::Starting { .. } | State::Running { .. } | State::Spawning { .. } => {
                out.push(Effect::Noop(true));
                self.update(out);
            }
            State::Stopping { then, .. } => {
                *then = Then::Start { reason: "start" };
                out.push(Effect::Noop(false));
                self.update(out);
            }
            State::Reaping { .. } => {
                out.push(Effect::Noop(false));
                self.stop(Then::Start { reason: "start" }, now, out);
            }
            State::Stopped | State::Backoff { .. } | State::Open { .. } | State::Failed => {
                out.push(Effect::Noop(false));
                self.spawn("start", out);
            }
        }
    }

    fn on_stop(&mut self, now: Instant, out: &mut Vec<Effect>) {
        if let Some(ws) = self.ws() {
            // A stop by hand outranks an idle stop: only a start, or a
            // request to an on-demand workspace, wakes the child now.
            ws.parked = false;
        }
        let noop = self.supervised().is_none_or(|ws| ws.state == State::Stopped);
        out.push(Effect::Noop(noop));
        self.stop(Then::Stop { reason: "stop" }, now, out);
    }

    /// Stops whatever runs or is scheduled; `then` follows once nothing is left.
    fn stop(&mut self, then: Then, now: Instant, out: &mut Vec<Effect>) {
        let reason = then.reason();
        let Some(ws) = self.ws() else { return };
        if !matches!(then, Then::Start { .. }) {
            ws.desired_running = false;
        }
        match &mut ws.state {
            State::Starting { child, .. } | State::Running { child, .. } => {
                let child = *child;
                self.begin_stop(child, then, reason, now, out);
            }
            State::Stopping { then: pending, reason: why, .. } => {
                *pending = then;
                if !matches!(then, Then::Start { .. }) {
                    *why = reason;
                }
            }
            State::Reaping { child, .. } => {
                // Its kill is out already: wait for the tree, then `then`.
                let child = *child;
                self.go(State::Stopping { child, kill_at: None, reason, then }, reason, out);
            }
            State::Spawning { .. } => debug_assert!(false, "no input between spawn and spawned"),
            State::Stopped | State::Backoff { .. } | State::Open { .. } | State::Failed => {
                if ws.state != State::Stopped {
                    self.go(State::Stopped, reason, out);
                }
                self.after_stop(then, out);
            }
        }
    }

    /// What follows a stop once no child is left.
    fn after_stop(&mut self, then: Then, out: &mut Vec<Effect>) {
        match then {
            Then::Stop { .. } => {}
            Then::Start { reason } => self.spawn(reason, out),
            Then::Finish { removed, .. } => {
                self.finished = true;
                out.push(Effect::Finish { removed });
            }
        }
    }

    fn on_restart(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let Some(ws) = self.ws() else {
            // A file that was never valid has nothing to run.
            return;
        };
        ws.desired_running = true;
        ws.breaker.close();
        ws.backoff.reset();
        self.stop(Then::Start { reason: "restart" }, now, out);
    }

    /// A request wants the child: start it if it wakes on demand, and say
    /// whether it is coming.
    fn on_demand(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let Some(ws) = self.ws() else {
            out.push(Effect::Demanded(false));
            return;
        };
        let wakes = lifecycle::wakes_on_demand(&ws.config, ws.parked);
        match &mut ws.state {
            State::Spawning { .. } | State::Starting { .. } | State::Running { .. } => {
                out.push(Effect::Demanded(true));
            }
            State::Stopping { then: Then::Start { .. }, .. } => out.push(Effect::Demanded(true)),
            // Restarts after a failure keep their own pace: backoff and the
            // breaker are not for a client to skip. A removal is final.
            State::Backoff { .. } | State::Open { .. } | State::Stopping { then: Then::Finish { .. }, .. } => {
                out.push(Effect::Demanded(false));
            }
            State::Reaping { next, .. } if matches!(**next, State::Backoff { .. } | State::Open { .. }) => {
                out.push(Effect::Demanded(false));
            }
            _ if !wakes => out.push(Effect::Demanded(false)),
            State::Stopping { then, .. } => {
                // An idle stop under way: start again once the tree is gone.
                *then = Then::Start { reason: "demand" };
                ws.desired_running = true;
                out.push(Effect::Demanded(true));
                self.update(out);
            }
            State::Reaping { .. } | State::Stopped | State::Failed => {
                // A demand is a start: it closes the breaker like one.
                ws.desired_running = true;
                ws.breaker.close();
                ws.backoff.reset();
                out.push(Effect::Demanded(true));
                if matches!(ws.state, State::Reaping { .. }) {
                    self.stop(Then::Start { reason: "demand" }, now, out);
                } else {
                    self.spawn("demand", out);
                }
            }
        }
    }

    /// The proxy's activity at the idle deadline: stop the child if it idled
    /// for `idleStop`.
    fn on_activity(
        &mut self,
        id: ChildId,
        last_request: Option<Instant>,
        open: u32,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(ws) = self.ws() else { return };
        let State::Running { child, since, .. } = ws.state else { return };
        if child.id != id {
            return;
        }
        if ws.idle.answer(since, ws.config.lifecycle.idle_stop, last_request, open, now) {
            self.stop(Then::Stop { reason: "idle" }, now, out);
            if let Some(ws) = self.ws() {
                ws.parked = true;
            }
        }
    }

    fn on_finish(&mut self, removed: bool, reason: &'static str, now: Instant, out: &mut Vec<Effect>) {
        if self.ws().is_none() {
            self.finished = true;
            out.push(Effect::Finish { removed });
            return;
        }
        self.stop(Then::Finish { removed, reason }, now, out);
    }

    fn on_apply(&mut self, config: Arc<WorkspaceConfig>, version: String, now: Instant, out: &mut Vec<Effect>) {
        let Some(ws) = self.ws() else {
            let from = self.status();
            let enabled = config.enabled;
            let on_demand = lifecycle::waits_for_demand(&config);
            let mut ws = Supervised::new(config, version);
            ws.desired_running = enabled && !on_demand;
            self.workspace = Workspace::Supervised(Box::new(ws));
            if on_demand {
                out.push(Effect::ReservePort);
                self.publish(out, from, "on-demand");
                self.applied(out);
            } else if enabled {
                if let Some(ws) = self.ws() {
                    ws.trial = Some(ws.version.clone());
                }
                self.spawn_from(from, "config valid", out);
            } else {
                self.publish(out, from, "disabled");
                self.applied(out);
            }
            return;
        };
        // A new file ends what was said about the last one.
        let rolled_back = ws.rolled_back.take().is_some();
        ws.rollback_settling = false;
        ws.file_version = version.clone();
        let had_error = ws.config_error.take().is_some() || rolled_back;
        let differs = ws.config.child_differs(&config);
        let was_enabled = ws.config.enabled;
        ws.version = version;
        if differs {
            // A changed config closes the breaker and starts backoff over.
            ws.backoff = Backoff::new(config.restart.backoff_initial, config.restart.backoff_max);
            ws.breaker = Breaker::new(config.circuit_breaker.clone());
        }
        ws.config = config;
        if !ws.config.enabled {
            if ws.state == State::Stopped {
                ws.desired_running = false;
                self.update(out);
            } else {
                self.stop(Then::Stop { reason: "disabled" }, now, out);
            }
            self.applied(out);
            return;
        }
        if !was_enabled && lifecycle::waits_for_demand(&ws.config) {
            // Enabling an on-demand workspace leaves its start to a request
            // (a child still stopping from the disable stops all the same).
            ws.breaker.close();
            ws.backoff.reset();
            match ws.state {
                State::Stopped => self.publish(out, Status::Stopped, "on-demand"),
                _ => self.update(out),
            }
            self.applied(out);
            return;
        }
        if !was_enabled {
            // Enabling is an explicit start: it closes the breaker too.
            ws.desired_running = true;
            ws.breaker.close();
            ws.backoff.reset();
        }
        let restart = ws.desired_running && (differs || ws.state.child().is_none() && !was_enabled);
        if restart {
            // Applied only once the new child runs (docs/reference.md §10).
            ws.trial = Some(ws.version.clone());
            let reason = if differs { "config changed" } else { "enabled" };
            self.stop(Then::Start { reason }, now, out);
            return;
        }
        if ws.trial.is_some() {
            // The same child is still on trial, now under the new version.
            ws.trial = Some(ws.version.clone());
        } else if matches!(ws.state, State::Running { .. }) {
            ws.last_good = Some((ws.config.clone(), ws.version.clone()));
        }
        let on_trial = ws.trial.is_some();
        if had_error {
            let status = self.status();
            self.publish(out, status, "config valid");
        }
        if !on_trial {
            self.applied(out);
        } else if !had_error {
            self.update(out);
        }
    }

    fn on_invalid(&mut self, error: FileError, out: &mut Vec<Effect>) {
        match &mut self.workspace {
            Workspace::NeverValid { error: old } => *old = error,
            Workspace::Supervised(ws) => {
                ws.config_error = Some(error);
                ws.rolled_back = None;
                ws.rollback_settling = false;
            }
        }
        let status = self.status();
        self.publish(out, status, "config invalid");
    }

    fn on_spawned(&mut self, id: ChildId, result: Result<Spawned, SpawnFailure>, now: Instant, out: &mut Vec<Effect>) {
        let Some(ws) = self.ws() else { return };
        let State::Spawning { id: expected, from, reason } = ws.state else { return };
        if expected != id {
            return;
        }
        match result {
            Ok(spawned) => {
                ws.port = Some(spawned.port);
                ws.isolation = Some(spawned.isolation);
                let sampled = ws.config.limits.memory_mb.is_some() && !spawned.memory_enforced;
                let sample_at = sampled.then(|| now + MEMORY_SAMPLE_EVERY);
                let child = Run { id, pid: spawned.pid, pgid: spawned.pgid, exited: false, sample_at };
                let deadline = now + ws.config.health.startup_timeout + ws.config.health.timeout;
                ws.state = State::Starting { child, spawned_at: now, deadline };
                self.publish(out, from, reason);
                out.push(Effect::Probe { child: id, kind: ProbeKind::Readiness });
            }
            Err(failure) => {
                // A failed spawn still shows its start, then the failure.
                ws.port = failure.port.or(ws.port);
                let mut view = self.view();
                view.status = Status::Starting;
                let transition = Transition { from, to: Status::Starting, reason };
                out.push(Effect::Publish { view: Box::new(view), transition: Some(transition) });
                let kind = format!("spawn: {}", failure.kind);
                let failure = Failure { message: failure.message, reason: "spawn failed", kind, exit: None };
                self.fail_from(Status::Starting, failure, now, out);
            }
        }
    }

    fn on_exited(&mut self, id: ChildId, exit: ExitInfo, oom_killed: bool, now: Instant, out: &mut Vec<Effect>) {
        let Some(ws) = self.ws() else { return };
        let Some(child) = ws.state.child_mut().filter(|c| c.id == id && !c.exited) else { return };
        child.exited = true;
        let child = *child;
        let during = match ws.state {
            State::Starting { .. } => " during startup",
            State::Running { .. } => "",
            // An expected exit, or one of a child that already failed.
            _ => return,
        };
        if oom_killed {
            let limit = ws.config.limits.memory_mb.unwrap_or_default();
            let message = format!("child {exit}{during}: the kernel killed the tree for passing its {limit} MiB limit");
            let failure = Failure { message, reason: "memory limit", kind: "memory limit".into(), exit: Some(exit) };
            self.fail(failure, now, out);
            return;
        }
        if exit.success() && ws.config.restart.policy == RestartPolicy::OnFailure {
            ws.desired_running = false;
            out.push(Effect::Kill { child: id });
            let state = State::Reaping { child, next: Box::new(State::Stopped) };
            self.go(state, "exited", out);
            return;
        }
        let failure = Failure {
            message: format!("child {exit}{during}"),
            reason: "exited",
            kind: "exit".into(),
            exit: Some(exit),
        };
        self.fail(failure, now, out);
    }

    fn on_gone(&mut self, id: ChildId, now: Instant, out: &mut Vec<Effect>) {
        let Some(ws) = self.ws() else { return };
        if ws.state.child().is_none_or(|c| c.id != id) {
            return;
        }
        match &ws.state {
            State::Stopping { reason, then, .. } => {
                let (reason, then) = (*reason, *then);
                self.go(State::Stopped, reason, out);
                self.after_stop(then, out);
            }
            State::Reaping { next, .. } => {
                ws.state = (**next).clone();
                self.update(out);
                self.on_tick(now, out);
            }
            State::Starting { .. } | State::Running { .. } => {
                // The driver reports a tree gone only after its exit; should
                // one come first, it is an exit all the same.
                self.on_exited(id, ExitInfo { code: None, signal: None }, false, now, out);
                self.on_gone(id, now, out);
            }
            _ => {}
        }
    }

    fn on_probe(
        &mut self,
        id: ChildId,
        kind: ProbeKind,
        result: Result<(), String>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(ws) = self.ws() else { return };
        let threshold = ws.config.health.failure_threshold.max(1);
        let (interval, stable_after) = (ws.config.health.interval, ws.config.restart.stable_after);
        match (&mut ws.state, kind) {
            (State::Starting { child, spawned_at, .. }, ProbeKind::Readiness) if child.id == id => match result {
                Ok(()) => {
                    let (child, after) = (*child, now.saturating_duration_since(*spawned_at));
                    ws.last_health_check = Some(now);
                    let state = State::Running {
                        child,
                        since: now,
                        stable_at: Some(now + stable_after),
                        probe_at: Some(now + interval),
                        failures: 0,
                    };
                    out.push(Effect::Ready { after });
                    self.go(state, "ready", out);
                    self.on_ready(out);
                }
                Err(e) => {
                    let timeout = humantime::format_duration(ws.config.health.startup_timeout);
                    let message = format!("not ready within {timeout}: {e}");
                    let failure =
                        Failure { message, reason: "startup timeout", kind: "startup timeout".into(), exit: None };
                    self.fail(failure, now, out);
                }
            },
            (State::Running { child, probe_at: probe_at @ None, failures, .. }, ProbeKind::Liveness)
                if child.id == id =>
            {
                ws.last_health_check = Some(now);
                *probe_at = Some(now + interval);
                match result {
                    Ok(()) if *failures == 0 => self.update(out),
                    Ok(()) => {
                        *failures = 0;
                        self.publish(out, Status::Running, "healthy");
                    }
                    Err(e) => {
                        *failures += 1;
                        let n = *failures;
                        if n < threshold {
                            self.publish(out, Status::Running, "degraded");
                            return;
                        }
                        self.publish(out, Status::Running, "unhealthy");
                        let message = format!("{n} consecutive health probes failed, the last: {e}");
                        let failure = Failure { message, reason: "unhealthy", kind: "unhealthy".into(), exit: None };
                        self.fail(failure, now, out);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_memory(&mut self, id: ChildId, rss_bytes: u64, now: Instant, out: &mut Vec<Effect>) {
        let Some(ws) = self.ws() else { return };
        let Some(limit) = ws.config.limits.memory_mb else { return };
        let live = matches!(ws.state, State::Starting { .. } | State::Running { .. });
        let Some(child) = ws.state.child_mut().filter(|c| c.id == id && live) else { return };
        child.sample_at = Some(now + MEMORY_SAMPLE_EVERY);
        if rss_bytes <= limit << 20 {
            return;
        }
        let message =
            format!("memory limit: the process tree uses {} MiB, over the {limit} MiB limit", rss_bytes >> 20);
        let failure = Failure { message, reason: "memory limit", kind: "memory limit".into(), exit: None };
        self.fail(failure, now, out);
    }

    fn on_over_daemon_memory(&mut self, message: String, now: Instant, out: &mut Vec<Effect>) {
        let live =
            self.supervised().is_some_and(|ws| matches!(ws.state, State::Starting { .. } | State::Running { .. }));
        if live {
            let failure = Failure { message, reason: "memory limit", kind: "memory limit".into(), exit: None };
            self.fail(failure, now, out);
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let Some(ws) = self.ws() else { return };
        let due = |t: &Option<Instant>| t.is_some_and(|t| t <= now);
        let live = matches!(ws.state, State::Starting { .. } | State::Running { .. });
        if let Some(child) = ws.state.child_mut().filter(|_| live) {
            if due(&child.sample_at) {
                child.sample_at = None;
                out.push(Effect::SampleMemory { child: child.id });
            }
        }
        if let State::Running { child, since, .. } = &ws.state {
            if ws.idle.deadline(*since, ws.config.lifecycle.idle_stop).is_some_and(|at| at <= now) {
                ws.idle.ask();
                out.push(Effect::CheckActivity { child: child.id });
            }
        }
        match &mut ws.state {
            State::Starting { deadline, .. } if *deadline <= now => {
                let timeout = humantime::format_duration(ws.config.health.startup_timeout);
                let message = format!("not ready within {timeout}");
                let failure =
                    Failure { message, reason: "startup timeout", kind: "startup timeout".into(), exit: None };
                self.fail(failure, now, out);
            }
            State::Running { child, stable_at, probe_at, .. } => {
                let id = child.id;
                if due(probe_at) {
                    *probe_at = None;
                    out.push(Effect::Probe { child: id, kind: ProbeKind::Liveness });
                }
                if due(stable_at) {
                    // A stable run ends the streak: the breaker counts
                    // consecutive failures only, and backoff starts over.
                    *stable_at = None;
                    ws.backoff.reset();
                    ws.breaker.close();
                    self.update(out);
                }
            }
            State::Stopping { child, kill_at, .. } if due(kill_at) => {
                *kill_at = None;
                out.push(Effect::Kill { child: child.id });
            }
            State::Backoff { until } if *until <= now => self.spawn("restart", out),
            State::Open { until } if *until <= now => {
                let until = *until;
                if ws.breaker.allow_start(now) {
                    self.spawn("half-open trial", out);
                } else {
                    ws.state = State::Open { until: ws.breaker.open_until().unwrap_or(until) };
                }
            }
            _ => {}
        }
    }
}

impl Supervised {
    fn new(config: Arc<WorkspaceConfig>, version: String) -> Supervised {
        Supervised {
            backoff: Backoff::new(config.restart.backoff_initial, config.restart.backoff_max),
            breaker: Breaker::new(config.circuit_breaker.clone()),
            config,
            config_error: None,
            desired_running: false,
            state: State::Stopped,
            restart_count: 0,
            spawned: false,
            port: None,
            isolation: None,
            last_health_check: None,
            parked: false,
            idle: IdleClock::default(),
            file_version: version.clone(),
            applied_version: None,
            last_good: None,
            trial: None,
            rolled_back: None,
            rollback_settling: false,
            version,
        }
    }

    fn view(&self) -> View {
        let health = match &self.state {
            State::Running { failures: 0, .. } => Health::Healthy,
            State::Running { failures, .. } if *failures < self.config.health.failure_threshold.max(1) => {
                Health::Degraded
            }
            State::Running { .. } => Health::Unhealthy,
            _ => Health::Unknown,
        };
        let live = self.state.child().filter(|_| !matches!(self.state, State::Reaping { .. }));
        View {
            status: self.state.status(),
            health,
            config: Some(self.config.clone()),
            version: Some(self.version.clone()),
            config_error: self.config_error.clone(),
            desired_running: self.desired_running,
            pid: live.map(|c| c.pid),
            pgid: live.map(|c| c.pgid),
            port: self.port,
            isolation: self.isolation,
            running_since: match self.state {
                State::Running { since, .. } => Some(since),
                _ => None,
            },
            last_health_check: self.last_health_check,
            restart_count: self.restart_count,
            breaker: self.breaker.state(),
            breaker_failures: self.breaker.failures(),
            pending: self.state.pending(),
            file_version: Some(self.file_version.clone()),
            applied_version: self.applied_version.clone(),
            rolled_back: self.rolled_back.clone(),
        }
    }
}
