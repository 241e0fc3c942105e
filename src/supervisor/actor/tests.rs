//! Tests of the actor without processes: table tests of every transition
//! of the status model on the pure core, a property test of its
//! invariants over random input sequences, and tests of the driver with a
//! fake launcher and prober on paused time.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::state::{ChildId, Core, Effect, Input, ProbeKind, SpawnFailure, Spawned, Transition, Verdict};
use crate::config::{parse, FileError, WorkspaceConfig};
use crate::process::ExitInfo;
use crate::state::{BreakerState, Health, Isolation, Status};

fn config(json: &str) -> Arc<WorkspaceConfig> {
    Arc::new(parse(json.as_bytes()).expect("test config parses"))
}

/// A config with short, round timings.
fn quick() -> Arc<WorkspaceConfig> {
    config(
        r#"{"command": "x",
            "health": {"interval": "1s", "timeout": "100ms", "startupTimeout": "5s", "failureThreshold": 2},
            "restart": {"backoffInitial": "1s", "backoffMax": "4s", "stableAfter": "10s"},
            "circuitBreaker": {"failureThreshold": 3, "openFor": "30s", "openMax": "60s"},
            "stop": {"grace": "5s"}}"#,
    )
}

fn file_error() -> FileError {
    FileError { file: "dev.json".into(), errors: vec![] }
}

/// Drives a core by hand, answering spawns like the driver does.
struct Bench {
    core: Core,
    now: Instant,
    /// The last child spawned.
    child: ChildId,
    fail_spawns: bool,
}

impl Bench {
    fn new(config: Arc<WorkspaceConfig>) -> (Bench, Vec<Effect>) {
        let mut bench =
            Bench { core: Core::new(Ok((config, "v1".into())), 7), now: Instant::now(), child: 0, fail_spawns: false };
        let effects = bench.core.boot();
        let effects = bench.answer(effects);
        (bench, effects)
    }

    fn step(&mut self, input: Input) -> Vec<Effect> {
        let effects = self.core.step(input, self.now);
        self.answer(effects)
    }

    /// Answers every spawn in `effects`; returns all effects, answers' included.
    fn answer(&mut self, effects: Vec<Effect>) -> Vec<Effect> {
        let mut all = Vec::new();
        for effect in effects {
            let spawn = match &effect {
                Effect::Spawn { child, .. } => Some(*child),
                _ => None,
            };
            all.push(effect);
            if let Some(child) = spawn {
                self.child = child;
                let result = if self.fail_spawns {
                    Err(SpawnFailure { kind: "not found", message: "no such file: x".into(), port: Some(41000) })
                } else {
                    Ok(Spawned {
                        pid: 100 + child as u32,
                        pgid: 100 + child as i32,
                        port: 41000,
                        isolation: Isolation::Cgroup,
                        memory_enforced: false,
                    })
                };
                let more = self.core.step(Input::Spawned { child, result }, self.now);
                all.extend(self.answer(more));
            }
        }
        all
    }

    fn advance(&mut self, by: Duration) -> Vec<Effect> {
        self.now += by;
        self.step(Input::Tick)
    }

    fn ready(&mut self) -> Vec<Effect> {
        self.step(Input::Probe { child: self.child, kind: ProbeKind::Readiness, result: Ok(()) })
    }

    fn exit(&mut self, code: i32) -> Vec<Effect> {
        self.step(Input::Exited {
            child: self.child,
            exit: ExitInfo { code: Some(code), signal: None },
            oom_killed: false,
        })
    }

    fn gone(&mut self) -> Vec<Effect> {
        self.step(Input::Gone { child: self.child })
    }

    fn liveness(&mut self, ok: bool) -> Vec<Effect> {
        let result = if ok { Ok(()) } else { Err("no answer".into()) };
        self.step(Input::Probe { child: self.child, kind: ProbeKind::Liveness, result })
    }

    fn running() -> Bench {
        let (mut bench, _) = Bench::new(quick());
        bench.ready();
        assert_eq!(bench.core.status(), Status::Running);
        bench
    }
}

/// The transitions in `effects`, as `from>to:reason`.
fn moves(effects: &[Effect]) -> Vec<String> {
    transitions(effects).iter().map(|t| format!("{}>{}:{}", t.from, t.to, t.reason)).collect()
}

fn transitions(effects: &[Effect]) -> Vec<Transition> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish { transition, .. } => *transition,
            _ => None,
        })
        .collect()
}

fn spawns(effects: &[Effect]) -> usize {
    effects.iter().filter(|e| matches!(e, Effect::Spawn { .. })).count()
}

fn has(effects: &[Effect], pred: impl Fn(&Effect) -> bool) -> bool {
    effects.iter().any(pred)
}

#[test]
fn boot_spawns_and_probes_then_runs_on_readiness() {
    let (mut bench, effects) = Bench::new(quick());
    assert_eq!(moves(&effects), ["stopped>starting:start"]);
    assert!(has(&effects, |e| matches!(e, Effect::Probe { kind: ProbeKind::Readiness, .. })));
    let effects = bench.ready();
    assert_eq!(moves(&effects), ["starting>running:ready"]);
    assert_eq!(bench.core.view().health, Health::Healthy);
    assert_eq!(bench.core.view().pid, Some(101));
}

#[test]
fn disabled_and_never_valid_files_boot_without_a_child() {
    let (bench, effects) = Bench::new(config(r#"{"command": "x", "enabled": false}"#));
    assert_eq!(moves(&effects), ["stopped>stopped:disabled"]);
    assert_eq!(spawns(&effects), 0);
    assert_eq!(bench.core.status(), Status::Stopped);

    let mut bench = Bench { core: Core::new(Err(file_error()), 1), now: Instant::now(), child: 0, fail_spawns: false };
    assert_eq!(moves(&bench.core.boot()), ["stopped>error:config invalid"]);
    let effects = bench.step(Input::Start);
    assert!(matches!(effects[..], [Effect::Noop(false)]), "a never-valid file has nothing to start: {effects:?}");
    assert!(bench.step(Input::Restart).is_empty(), "nor to restart");
    let effects = bench.step(Input::Apply { config: quick(), version: "v2".into() });
    assert_eq!(moves(&effects), ["error>starting:config valid"]);
}

#[test]
fn readiness_failure_and_startup_deadline_fail_the_start() {
    let (mut bench, _) = Bench::new(quick());
    let child = bench.child;
    let effects = bench.step(Input::Probe { child, kind: ProbeKind::Readiness, result: Err("refused".into()) });
    assert_eq!(moves(&effects), ["starting>error:startup timeout"]);
    assert!(has(&effects, |e| matches!(e, Effect::Kill { child: c } if *c == child)));

    let (mut bench, _) = Bench::new(quick());
    assert!(bench.advance(Duration::from_secs(5)).is_empty(), "the deadline has slack for the last probe");
    let effects = bench.advance(Duration::from_millis(100));
    assert_eq!(moves(&effects), ["starting>error:startup timeout"]);
}

#[test]
fn a_crash_restarts_at_once_then_backs_off_doubling() {
    let mut bench = Bench::running();
    let effects = bench.exit(1);
    assert_eq!(moves(&effects), ["running>error:exited"]);
    assert!(has(&effects, |e| matches!(e, Effect::Kill { .. })), "what is left of the tree is killed");
    assert_eq!(spawns(&effects), 0, "no spawn while the old tree lives");
    let effects = bench.gone();
    assert_eq!(moves(&effects), ["error>starting:restart"], "the first restart is immediate");
    assert_eq!(bench.core.view().restart_count, 1);

    bench.exit(1);
    let effects = bench.gone();
    assert_eq!(spawns(&effects), 0, "the second failure waits");
    let pending = bench.core.view().pending.expect("a restart is pending").0 - bench.now;
    assert!(pending >= Duration::from_millis(900) && pending <= Duration::from_millis(1100), "{pending:?}");
    assert_eq!(spawns(&bench.advance(pending)), 1);
}

#[test]
fn the_breaker_opens_allows_one_trial_and_closes_after_a_stable_run() {
    let (mut bench, _) = Bench::new(quick());
    bench.step(Input::Stop);
    bench.exit(0);
    bench.gone();
    bench.fail_spawns = true;
    // Each failed start is a failure; backoff runs between them.
    bench.step(Input::Start);
    for _ in 0..10 {
        if bench.core.breaker() == BreakerState::Open {
            break;
        }
        bench.advance(Duration::from_secs(4));
    }
    assert_eq!(bench.core.view().breaker_failures, 3);
    let until = bench.core.view().pending.expect("a trial is pending");
    assert_eq!(until.1, "half-open trial");
    assert_eq!(spawns(&bench.advance(until.0 - bench.now - Duration::from_millis(1))), 0, "nothing while open");
    bench.fail_spawns = false;
    let effects = bench.advance(Duration::from_millis(1));
    assert_eq!(moves(&effects), ["error>starting:half-open trial"]);
    assert_eq!(bench.core.breaker(), BreakerState::HalfOpen);
    bench.ready();
    bench.advance(Duration::from_secs(10));
    assert_eq!(bench.core.breaker(), BreakerState::Closed, "a stable run closes it");
}

#[test]
fn stop_is_a_signal_then_a_kill_at_grace() {
    let mut bench = Bench::running();
    let child = bench.child;
    let effects = bench.step(Input::Stop);
    assert!(matches!(effects[0], Effect::Noop(false)));
    assert!(has(&effects, |e| matches!(e, Effect::Signal { signal: nix::sys::signal::Signal::SIGTERM, .. })));
    assert_eq!(moves(&effects), ["running>stopping:stop"]);
    assert_eq!(bench.core.view().pid, Some(101), "a stopping child still shows its pid");
    assert!(bench.advance(Duration::from_millis(4999)).is_empty());
    let effects = bench.advance(Duration::from_millis(1));
    assert!(matches!(effects[..], [Effect::Kill { child: c }] if c == child));
    bench.exit(137);
    assert_eq!(moves(&bench.gone()), ["stopping>stopped:stop"]);
    let effects = bench.step(Input::Stop);
    assert!(matches!(effects[..], [Effect::Noop(true)]), "already stopped: {effects:?}");
}

#[test]
fn commands_during_a_stop_change_what_follows_it() {
    let mut bench = Bench::running();
    bench.step(Input::Stop);
    bench.step(Input::Start);
    assert_eq!(bench.core.status(), Status::Stopping, "still stopping while the grace runs");
    bench.exit(0);
    assert_eq!(moves(&bench.gone()), ["stopping>stopped:stop", "stopped>starting:start"]);

    let mut bench = Bench::running();
    bench.step(Input::Restart);
    bench.step(Input::Stop);
    bench.exit(0);
    let effects = bench.gone();
    assert_eq!(moves(&effects), ["stopping>stopped:stop"], "the stop cancelled the restart");
    assert_eq!(spawns(&effects), 0);
}

#[test]
fn stop_during_backoff_cancels_the_restart() {
    let mut bench = Bench::running();
    bench.exit(1);
    bench.gone(); // immediate restart
    bench.exit(1);
    bench.gone(); // now in backoff
    assert!(bench.core.view().pending.is_some());
    assert_eq!(moves(&bench.step(Input::Stop)), ["error>stopped:stop"]);
    assert!(bench.core.view().pending.is_none());
    assert_eq!(spawns(&bench.advance(Duration::from_secs(60))), 0);
}

#[test]
fn liveness_degrades_then_recovers_or_kills_at_threshold() {
    let mut bench = Bench::running();
    let effects = bench.advance(Duration::from_secs(1));
    assert!(has(&effects, |e| matches!(e, Effect::Probe { kind: ProbeKind::Liveness, .. })));
    assert_eq!(moves(&bench.liveness(false)), ["running>running:degraded"]);
    assert_eq!(bench.core.view().health, Health::Degraded);
    bench.advance(Duration::from_secs(1));
    assert_eq!(moves(&bench.liveness(true)), ["running>running:healthy"]);
    bench.advance(Duration::from_secs(1));
    bench.liveness(false);
    bench.advance(Duration::from_secs(1));
    let effects = bench.liveness(false);
    assert_eq!(moves(&effects), ["running>running:unhealthy", "running>error:unhealthy"]);
    assert!(has(&effects, |e| matches!(e, Effect::Kill { .. })));
}

#[test]
fn restart_policies_decide_what_follows_an_exit() {
    let (mut bench, _) = Bench::new(config(r#"{"command": "x", "restart": {"policy": "on-failure"}}"#));
    bench.ready();
    assert_eq!(moves(&bench.exit(0)), ["running>stopped:exited"]);
    assert_eq!(spawns(&bench.gone()), 0);

    let (mut bench, _) = Bench::new(config(r#"{"command": "x", "restart": {"policy": "never"}}"#));
    bench.ready();
    assert_eq!(moves(&bench.exit(1)), ["running>error:exited"]);
    assert_eq!(spawns(&bench.gone()), 0);
    assert_eq!(spawns(&bench.advance(Duration::from_secs(600))), 0);
}

#[test]
fn config_changes_restart_disable_and_reenable() {
    let mut bench = Bench::running();
    let changed = config(r#"{"command": "y", "stop": {"grace": "5s"}}"#);
    let effects = bench.step(Input::Apply { config: changed.clone(), version: "v2".into() });
    assert_eq!(moves(&effects), ["running>stopping:config changed"]);
    bench.exit(0);
    assert_eq!(moves(&bench.gone()), ["stopping>stopped:config changed", "stopped>starting:config changed"]);
    bench.ready();

    let same = bench.step(Input::Apply { config: changed.clone(), version: "v2".into() });
    assert!(moves(&same).is_empty(), "an unchanged config restarts nothing");

    let disabled = config(r#"{"command": "y", "stop": {"grace": "5s"}, "enabled": false}"#);
    let effects = bench.step(Input::Apply { config: disabled, version: "v3".into() });
    assert_eq!(moves(&effects), ["running>stopping:disabled"]);
    bench.exit(0);
    bench.gone();
    let effects = bench.step(Input::Apply { config: changed, version: "v2".into() });
    assert_eq!(moves(&effects), ["stopped>starting:enabled"], "enabling alone starts the child");
}

/// The verdicts in `effects`, as `version:verdict`.
fn verdicts(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Verdict { version, verdict: Verdict::Applied } => Some(format!("{version}:applied")),
            Effect::Verdict { version, verdict: Verdict::RolledBack { to, .. } } => {
                Some(format!("{version}:rolled back to {to}"))
            }
            Effect::Verdict { version, verdict: Verdict::Failed { .. } } => Some(format!("{version}:failed")),
            _ => None,
        })
        .collect()
}

fn spawned_config(effects: &[Effect]) -> Option<Arc<WorkspaceConfig>> {
    effects.iter().find_map(|e| match e {
        Effect::Spawn { config, .. } => Some(config.clone()),
        _ => None,
    })
}

#[test]
fn a_config_counts_as_applied_only_once_its_child_runs() {
    let (mut bench, effects) = Bench::new(quick());
    assert!(verdicts(&effects).is_empty(), "the first child has not run yet");
    assert_eq!(verdicts(&bench.ready()), ["v1:applied"]);
    assert_eq!(bench.core.view().applied_version.as_deref(), Some("v1"));

    let changed = config(r#"{"command": "y", "stop": {"grace": "5s"}}"#);
    let effects = bench.step(Input::Apply { config: changed, version: "v2".into() });
    assert!(verdicts(&effects).is_empty(), "on trial until its child runs");
    bench.exit(0);
    bench.gone();
    let view = bench.core.view();
    assert_eq!((view.applied_version.as_deref(), view.file_version.as_deref()), (Some("v1"), Some("v2")));
    assert_eq!(verdicts(&bench.ready()), ["v2:applied"]);
    assert_eq!(bench.core.view().applied_version.as_deref(), Some("v2"));

    // A change that needs no new child is applied at once.
    let described = config(r#"{"command": "y", "stop": {"grace": "5s"}, "description": "d"}"#);
    let effects = bench.step(Input::Apply { config: described, version: "v3".into() });
    assert_eq!(verdicts(&effects), ["v3:applied"]);
    assert!(moves(&effects).is_empty());
}

#[test]
fn a_changed_config_whose_child_fails_rolls_back_to_the_last_that_ran() {
    let mut bench = Bench::running();
    let good = bench.core.config().unwrap().clone();
    let broken = config(r#"{"command": "broken", "stop": {"grace": "5s"}}"#);
    bench.step(Input::Apply { config: broken.clone(), version: "v2".into() });
    bench.exit(0);
    let effects = bench.gone();
    assert!(Arc::ptr_eq(&spawned_config(&effects).unwrap(), &broken));

    let effects = bench.exit(3);
    assert_eq!(moves(&effects), ["starting>stopping:rolled back"]);
    assert!(has(&effects, |e| matches!(e, Effect::Failed(f) if f.message.contains("exited"))));
    assert!(has(&effects, |e| matches!(e, Effect::Kill { .. })), "what is left of the tree is killed");
    assert!(verdicts(&effects).is_empty(), "the verdict waits for the old child");
    let view = bench.core.view();
    assert_eq!(view.version.as_deref(), Some("v1"));
    assert_eq!(view.file_version.as_deref(), Some("v2"));
    let rolled_back = view.rolled_back.expect("the rollback is shown");
    assert!(rolled_back.message.starts_with("rolled back to v1: config v2 did not reach running"), "{rolled_back:?}");

    let effects = bench.gone();
    assert_eq!(moves(&effects), ["stopping>stopped:rolled back", "stopped>starting:rolled back"]);
    assert!(Arc::ptr_eq(&spawned_config(&effects).unwrap(), &good), "the last good config runs again");
    assert_eq!(verdicts(&bench.ready()), ["v2:rolled back to v1"]);
    assert_eq!(bench.core.view().applied_version.as_deref(), Some("v1"));
    assert!(bench.core.view().rolled_back.is_some(), "said until the file changes");

    // The next file (the old one restored, or a fix) ends what was said.
    let effects = bench.step(Input::Apply { config: good, version: "v1".into() });
    assert_eq!(moves(&effects), ["running>running:config valid"]);
    assert_eq!(verdicts(&effects), ["v1:applied"]);
    assert!(bench.core.view().rolled_back.is_none());
}

#[test]
fn a_trial_that_misses_its_startup_deadline_or_cannot_spawn_rolls_back() {
    let mut bench = Bench::running();
    let slow = config(r#"{"command": "slow", "stop": {"grace": "5s"}, "health": {"startupTimeout": "2s"}}"#);
    bench.step(Input::Apply { config: slow, version: "v2".into() });
    bench.exit(0);
    bench.gone();
    let effects = bench.advance(Duration::from_secs(60));
    assert_eq!(moves(&effects), ["starting>stopping:rolled back"]);
    bench.exit(137);
    bench.gone();
    bench.ready();
    assert_eq!(bench.core.view().version.as_deref(), Some("v1"));

    let missing = config(r#"{"command": "missing", "stop": {"grace": "5s"}}"#);
    bench.step(Input::Apply { config: missing, version: "v3".into() });
    bench.exit(0);
    bench.fail_spawns = true;
    let effects = bench.gone();
    assert_eq!(
        moves(&effects),
        [
            "stopping>stopped:config changed",
            "stopped>starting:config changed",
            "starting>error:rolled back",
            "error>starting:rolled back",
            // The restored config cannot spawn either: the rollback settles
            // all the same, and the workspace backs off as usual.
            "starting>error:spawn failed",
        ]
    );
    assert_eq!(verdicts(&effects), ["v3:rolled back to v1"]);
}

#[test]
fn a_first_config_that_never_runs_fails_without_a_rollback() {
    let (mut bench, _) = Bench::new(quick());
    let effects = bench.exit(1);
    assert_eq!(moves(&effects), ["starting>error:exited"]);
    assert_eq!(verdicts(&effects), ["v1:failed"]);
    assert_eq!(moves(&bench.gone()), ["error>starting:restart"]);
    // A second config after one that never ran has nothing to go back to.
    let other = config(r#"{"command": "other"}"#);
    bench.step(Input::Apply { config: other, version: "v2".into() });
    bench.exit(0);
    bench.gone();
    let effects = bench.exit(1);
    assert_eq!(verdicts(&effects), ["v2:failed"]);
}

#[test]
fn the_daemon_memory_limit_restarts_a_live_child_only() {
    let mut bench = Bench::running();
    let effects = bench.step(Input::OverDaemonMemory { message: "memory limit: over".into() });
    assert_eq!(moves(&effects), ["running>error:memory limit"]);
    assert!(has(&effects, |e| matches!(e, Effect::Kill { .. })));
    bench.exit(137);
    assert_eq!(moves(&bench.gone()), ["error>starting:restart"]);
    bench.step(Input::Stop);
    bench.exit(0);
    bench.gone();
    let effects = bench.step(Input::OverDaemonMemory { message: "memory limit: over".into() });
    assert!(effects.is_empty(), "a stopped workspace has nothing to restart: {effects:?}");
}

#[test]
fn an_invalid_file_keeps_the_child() {
    let mut bench = Bench::running();
    let effects = bench.step(Input::Invalid(file_error()));
    assert_eq!(moves(&effects), ["running>running:config invalid"]);
    assert!(!has(&effects, |e| matches!(e, Effect::Kill { .. } | Effect::Signal { .. })));
    assert!(bench.core.view().config_error.is_some());
    let effects = bench.step(Input::Apply { config: quick(), version: "v1".into() });
    assert_eq!(moves(&effects), ["running>running:config valid"]);
}

#[test]
fn remove_stops_then_finishes() {
    let mut bench = Bench::running();
    assert_eq!(moves(&bench.step(Input::Remove)), ["running>stopping:removed"]);
    bench.exit(0);
    let effects = bench.gone();
    assert_eq!(moves(&effects), ["stopping>stopped:removed"]);
    assert!(matches!(effects.last(), Some(Effect::Finish { removed: true })));
    assert!(bench.core.finished());
    assert!(bench.step(Input::Start).is_empty(), "nothing after the finish");
}

#[test]
fn memory_over_the_limit_is_a_failure() {
    let (mut bench, _) = Bench::new(config(r#"{"command": "x", "limits": {"memoryMb": 10}}"#));
    bench.ready();
    let effects = bench.advance(Duration::from_secs(2));
    assert!(has(&effects, |e| matches!(e, Effect::SampleMemory { .. })));
    assert!(moves(&bench.step(Input::Memory { child: bench.child, rss_bytes: 5 << 20 })).is_empty());
    let effects = bench.step(Input::Memory { child: bench.child, rss_bytes: 11 << 20 });
    assert_eq!(moves(&effects), ["running>error:memory limit"]);
}

#[test]
fn a_kernel_enforced_limit_is_not_sampled_and_an_oom_kill_is_a_memory_failure() {
    let mut core = Core::new(Ok((config(r#"{"command": "x", "limits": {"memoryMb": 10}}"#), "v1".into())), 1);
    let now = Instant::now();
    let Some(Effect::Spawn { child, .. }) = core.boot().pop() else { panic!("boot spawns") };
    let spawned = Spawned { pid: 7, pgid: 7, port: 1, isolation: Isolation::Cgroup, memory_enforced: true };
    core.step(Input::Spawned { child, result: Ok(spawned) }, now);
    core.step(Input::Probe { child, kind: ProbeKind::Readiness, result: Ok(()) }, now);
    assert_eq!(core.view().isolation, Some(Isolation::Cgroup));
    let later = now + Duration::from_secs(60);
    let effects = core.step(Input::Tick, later);
    assert!(!has(&effects, |e| matches!(e, Effect::SampleMemory { .. })), "the kernel enforces it: {effects:?}");
    let exit = ExitInfo { code: None, signal: Some(9) };
    let effects = core.step(Input::Exited { child, exit, oom_killed: true }, later);
    assert_eq!(moves(&effects), ["running>error:memory limit"]);
}

#[test]
fn a_failed_spawn_shows_starting_then_error() {
    let (mut bench, _) = Bench::new(quick());
    bench.step(Input::Stop);
    bench.exit(0);
    bench.gone();
    bench.fail_spawns = true;
    let effects = bench.step(Input::Start);
    assert_eq!(moves(&effects), ["stopped>starting:start", "starting>error:spawn failed"]);
    let failure = effects.iter().find_map(|e| match e {
        Effect::Failed(f) => Some(f.kind.clone()),
        _ => None,
    });
    assert_eq!(failure.as_deref(), Some("spawn: not found"));
}

/// A config with short timings that starts on demand and stops after 2 s idle.
fn lazy(lifecycle: &str) -> Arc<WorkspaceConfig> {
    config(&format!(
        r#"{{"command": "x",
            "health": {{"interval": "1s", "timeout": "100ms", "startupTimeout": "5s", "failureThreshold": 2}},
            "restart": {{"backoffInitial": "1s", "backoffMax": "4s", "stableAfter": "10s"}},
            "circuitBreaker": {{"failureThreshold": 3, "openFor": "30s", "openMax": "60s"}},
            "stop": {{"grace": "5s"}}, "lifecycle": {lifecycle}}}"#
    ))
}

fn demanded(effects: &[Effect]) -> Option<bool> {
    effects.iter().find_map(|e| match e {
        Effect::Demanded(coming) => Some(*coming),
        _ => None,
    })
}

fn checks_activity(effects: &[Effect]) -> bool {
    has(effects, |e| matches!(e, Effect::CheckActivity { .. }))
}

#[test]
fn an_on_demand_workspace_boots_stopped_with_its_port_and_one_demand_starts_it() {
    let (mut bench, effects) = Bench::new(lazy(r#"{"start": "on-demand"}"#));
    assert_eq!(moves(&effects), ["stopped>stopped:on-demand"]);
    assert_eq!(spawns(&effects), 0);
    assert!(has(&effects, |e| matches!(e, Effect::ReservePort)), "its port is allocated at once");
    bench.step(Input::PortReserved { port: 41007 });
    assert_eq!(bench.core.view().port, Some(41007));
    assert!(!bench.core.view().desired_running);

    let effects = bench.step(Input::Demand);
    assert_eq!(demanded(&effects), Some(true));
    assert_eq!(moves(&effects), ["stopped>starting:demand"]);
    assert_eq!(bench.core.view().restart_count, 0, "the first start is no restart");
    for _ in 0..9 {
        let effects = bench.step(Input::Demand);
        assert_eq!((demanded(&effects), spawns(&effects)), (Some(true), 0), "concurrent demands share the start");
    }
    bench.ready();
    let effects = bench.step(Input::Demand);
    assert_eq!((demanded(&effects), moves(&effects).len()), (Some(true), 0));
}

#[test]
fn a_stop_keeps_an_on_demand_workspace_stopped_until_a_demand_but_an_eager_one_for_good() {
    let (mut bench, _) = Bench::new(lazy(r#"{"start": "on-demand"}"#));
    bench.step(Input::Demand);
    bench.ready();
    bench.step(Input::Stop);
    bench.exit(0);
    assert_eq!(moves(&bench.gone()), ["stopping>stopped:stop"]);
    assert_eq!(spawns(&bench.advance(Duration::from_secs(600))), 0, "nothing starts it by itself");
    let effects = bench.step(Input::Demand);
    assert_eq!(moves(&effects), ["stopped>starting:demand"]);
    assert_eq!(bench.core.view().restart_count, 1);

    let mut bench = Bench::running();
    bench.step(Input::Stop);
    bench.exit(0);
    bench.gone();
    let effects = bench.step(Input::Demand);
    assert_eq!((demanded(&effects), spawns(&effects)), (Some(false), 0), "an eager workspace stopped by hand");

    let (mut bench, _) = Bench::new(lazy(r#"{"start": "on-demand"}"#));
    let disabled = lazy(r#"{"start": "on-demand"}"#.replace('}', r#"}, "enabled": false"#).as_str());
    assert!(!disabled.enabled);
    bench.step(Input::Apply { config: disabled, version: "v2".into() });
    let effects = bench.step(Input::Demand);
    assert_eq!((demanded(&effects), spawns(&effects)), (Some(false), 0), "a disabled workspace");
    let effects = bench.step(Input::Apply { config: lazy(r#"{"start": "on-demand"}"#), version: "v1".into() });
    assert_eq!(moves(&effects), ["stopped>stopped:on-demand"], "enabling leaves the start to a request");
}

#[test]
fn a_demand_does_not_skip_backoff_or_an_open_breaker() {
    let (mut bench, _) = Bench::new(lazy(r#"{"start": "on-demand"}"#));
    bench.step(Input::Demand);
    bench.exit(1);
    bench.gone(); // the immediate restart
    bench.exit(1);
    bench.gone();
    assert!(bench.core.view().pending.is_some(), "in backoff");
    let effects = bench.step(Input::Demand);
    assert_eq!((demanded(&effects), spawns(&effects)), (Some(false), 0));
}

#[test]
fn idle_for_idle_stop_stops_with_reason_idle_without_a_failure_and_a_demand_wakes_it() {
    let (mut bench, _) = Bench::new(lazy(r#"{"idleStop": "2s"}"#));
    bench.ready();
    let since = bench.now;
    assert_eq!(bench.core.next_deadline(), Some(since + Duration::from_secs(1)), "the liveness probe first");
    bench.advance(Duration::from_secs(1));
    bench.liveness(true);
    let effects = bench.advance(Duration::from_secs(1));
    assert!(checks_activity(&effects), "the idle deadline asks for the activity: {effects:?}");
    assert!(!checks_activity(&bench.advance(Duration::from_millis(10))), "one check at a time");

    // A request a second ago: the clock counts from it.
    let child = bench.child;
    let effects = bench.step(Input::Activity { child, last_request: Some(since + Duration::from_secs(1)), open: 0 });
    assert!(moves(&effects).is_empty());
    assert_eq!(bench.core.next_deadline(), Some(since + Duration::from_secs(3)));
    bench.now = since + Duration::from_secs(3);
    bench.step(Input::Tick);
    // A stream is open: it keeps the child.
    let effects = bench.step(Input::Activity { child, last_request: None, open: 1 });
    assert!(moves(&effects).is_empty());
    bench.now += Duration::from_secs(2);
    bench.step(Input::Tick);
    let failures = bench.core.view().breaker_failures;
    let effects = bench.step(Input::Activity { child, last_request: None, open: 0 });
    assert_eq!(moves(&effects), ["running>stopping:idle"]);
    assert!(!has(&effects, |e| matches!(e, Effect::Failed(_))));
    bench.exit(0);
    let effects = bench.gone();
    assert_eq!(moves(&effects), ["stopping>stopped:idle"]);
    assert_eq!(spawns(&effects), 0, "an idle stop schedules no restart");
    let view = bench.core.view();
    assert_eq!((view.breaker_failures, view.pending, view.port), (failures, None, Some(41000)));
    assert_eq!(spawns(&bench.advance(Duration::from_secs(600))), 0);

    let effects = bench.step(Input::Demand);
    assert_eq!(moves(&effects), ["stopped>starting:demand"], "the next request starts it");
}

#[test]
fn a_demand_during_an_idle_stop_starts_the_child_again_once_it_is_gone() {
    let (mut bench, _) = Bench::new(lazy(r#"{"idleStop": "2s"}"#));
    bench.ready();
    bench.now += Duration::from_secs(2);
    bench.step(Input::Tick);
    bench.step(Input::Activity { child: bench.child, last_request: None, open: 0 });
    assert_eq!(bench.core.status(), Status::Stopping);
    assert_eq!(demanded(&bench.step(Input::Demand)), Some(true));
    bench.exit(0);
    assert_eq!(moves(&bench.gone()), ["stopping>stopped:idle", "stopped>starting:demand"]);

    // A stop by hand during it keeps an eager workspace stopped.
    bench.ready();
    bench.now += Duration::from_secs(2);
    bench.step(Input::Tick);
    bench.step(Input::Activity { child: bench.child, last_request: None, open: 0 });
    bench.step(Input::Stop);
    bench.exit(0);
    assert_eq!(moves(&bench.gone()), ["stopping>stopped:stop"]);
    assert_eq!(demanded(&bench.step(Input::Demand)), Some(false));
}

mod invariants {
    //! Random sequences of commands, exits, probe results, config changes
    //! and timer firings against the invariants of the state module.

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Action {
        Start,
        Stop,
        Restart,
        ApplySame,
        ApplyChanged,
        ApplyDisabled,
        Invalid,
        Exit(i32),
        Gone,
        ProbeAnswer(bool),
        MemoryAnswer(bool),
        Advance(u64),
        ToDeadline,
        FailSpawns(bool),
        Remove,
        Demand,
        /// Answers an activity check: a stream open, a request just now.
        ActivityAnswer {
            open: bool,
            recent: bool,
        },
        DaemonMemory,
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            3 => Just(Action::Start),
            3 => Just(Action::Stop),
            3 => Just(Action::Restart),
            1 => Just(Action::ApplySame),
            2 => Just(Action::ApplyChanged),
            1 => Just(Action::ApplyDisabled),
            1 => Just(Action::Invalid),
            4 => prop_oneof![Just(0), Just(1), Just(137)].prop_map(Action::Exit),
            5 => Just(Action::Gone),
            6 => any::<bool>().prop_map(Action::ProbeAnswer),
            1 => any::<bool>().prop_map(Action::MemoryAnswer),
            3 => (0u64..20_000).prop_map(Action::Advance),
            6 => Just(Action::ToDeadline),
            2 => any::<bool>().prop_map(Action::FailSpawns),
            1 => Just(Action::Remove),
            3 => Just(Action::Demand),
            3 => (any::<bool>(), any::<bool>()).prop_map(|(open, recent)| Action::ActivityAnswer { open, recent }),
            1 => Just(Action::DaemonMemory),
        ]
    }

    /// The configs of one case, parsed once per process: parsing in every
    /// case would cost more than the test itself.
    fn lifecycle_configs(
        policy: &'static str,
        grace: &'static str,
        lifecycle: &'static str,
        variant: u32,
        enabled: bool,
    ) -> Arc<WorkspaceConfig> {
        type Key = (&'static str, &'static str, &'static str, u32, bool);
        static CACHE: std::sync::Mutex<Vec<(Key, Arc<WorkspaceConfig>)>> = std::sync::Mutex::new(Vec::new());
        let key = (policy, grace, lifecycle, variant % 4, enabled);
        let mut cache = CACHE.lock().unwrap();
        if let Some((_, config)) = cache.iter().find(|(k, _)| *k == key) {
            return config.clone();
        }
        let parsed = parse_config(policy, grace, lifecycle, key.3, enabled);
        cache.push((key, parsed.clone()));
        parsed
    }

    fn parse_config(policy: &str, grace: &str, lifecycle: &str, variant: u32, enabled: bool) -> Arc<WorkspaceConfig> {
        config(&format!(
            r#"{{"command": "x{variant}", "enabled": {enabled},
                "health": {{"interval": "1s", "timeout": "100ms", "startupTimeout": "3s", "failureThreshold": 2}},
                "restart": {{"policy": "{policy}", "backoffInitial": "200ms", "backoffMax": "2s", "stableAfter": "5s"}},
                "circuitBreaker": {{"failureThreshold": 3, "openFor": "4s", "openMax": "16s"}},
                "stop": {{"grace": "{grace}"}}, "limits": {{"memoryMb": 64}}, "lifecycle": {lifecycle}}}"#
        ))
    }

    /// What the simulated world knows, mirroring the driver.
    #[derive(Default)]
    struct World {
        /// The live child: spawned, tree not gone; and whether it exited.
        live: Option<(ChildId, bool)>,
        probes: Vec<(ChildId, ProbeKind)>,
        samples: Vec<ChildId>,
        fail_spawns: bool,
        /// Whether the commands so far want a running child.
        wanted: bool,
        half_open_trials: u32,
        /// Activity checks asked for and not answered yet.
        checks: Vec<ChildId>,
        /// The last stop was an idle stop.
        idle_stopped: bool,
        /// Versions whose config was in force while the child ran.
        ran: std::collections::HashSet<String>,
    }

    struct Run {
        core: Core,
        world: World,
        now: Instant,
    }

    impl Run {
        /// Steps `input`, answers spawns at once, and checks every invariant.
        fn step(&mut self, input: Input) -> Result<(), TestCaseError> {
            let readiness_ok = matches!(
                &input,
                Input::Probe { kind: ProbeKind::Readiness, result: Ok(()), child }
                    if self.world.live.is_some_and(|(id, _)| id == *child)
            );
            let before = self.core.status();
            let (demand, answer_open) = match &input {
                Input::Demand => (true, None),
                Input::Activity { open, .. } => (false, Some(*open)),
                _ => (false, None),
            };
            let view_before = self.core.view();
            let effects = self.core.step(input, self.now);
            let after = self.core.status();
            check_chain(&effects, before, after)?;
            if demand && spawns(&effects) > 0 {
                let config = view_before.config.as_ref().expect("a spawn needs a config");
                let wakes = config.lifecycle.start == crate::config::StartMode::OnDemand || self.world.idle_stopped;
                prop_assert!(config.enabled && wakes, "a demand started a workspace that does not wake on demand");
                prop_assert!(view_before.pending.is_none(), "a demand skipped a pending restart");
            }
            let idle: Vec<Transition> = transitions(&effects).into_iter().filter(|t| t.reason == "idle").collect();
            if !idle.is_empty() {
                // An idle stop is no failure, and it brings no start of its
                // own: `wanted` turns false below, so only a later start or
                // demand may spawn (checked in `perform`).
                prop_assert!(!has(&effects, |e| matches!(e, Effect::Failed(_))), "an idle stop counted as a failure");
                let view = self.core.view();
                prop_assert_eq!(
                    view.breaker_failures,
                    view_before.breaker_failures,
                    "an idle stop counted as a failure"
                );
                prop_assert!(view.pending.is_none(), "an idle stop scheduled a restart");
            }
            if idle.iter().any(|t| t.from == Status::Running) {
                prop_assert_eq!(answer_open, Some(0), "an idle stop with a stream open, or without a check");
                self.world.wanted = false;
                self.world.idle_stopped = true;
            }
            for t in transitions(&effects) {
                if t.to == Status::Running && t.from != Status::Running {
                    prop_assert!(readiness_ok, "running without a successful readiness probe");
                }
            }
            if after == Status::Running {
                self.world.ran.extend(self.core.view().version);
            }
            self.perform(effects)
        }

        fn perform(&mut self, effects: Vec<Effect>) -> Result<(), TestCaseError> {
            let breaker = self.core.breaker();
            if breaker != BreakerState::HalfOpen {
                self.world.half_open_trials = 0;
            }
            for effect in effects {
                match effect {
                    Effect::Spawn { child, .. } => {
                        prop_assert!(self.world.live.is_none(), "spawn while child {:?} lives", self.world.live);
                        prop_assert!(self.world.wanted, "spawn after a stop, with no start since");
                        prop_assert!(breaker != BreakerState::Open, "spawn while the breaker is open");
                        self.world.idle_stopped = false;
                        if breaker == BreakerState::HalfOpen {
                            self.world.half_open_trials += 1;
                            prop_assert!(self.world.half_open_trials <= 1, "a second half-open trial");
                        }
                        let result = if self.world.fail_spawns {
                            Err(SpawnFailure { kind: "not found", message: "x".into(), port: None })
                        } else {
                            self.world.live = Some((child, false));
                            Ok(Spawned {
                                pid: child as u32,
                                pgid: child as i32,
                                port: 1,
                                isolation: Isolation::ProcessGroup,
                                memory_enforced: false,
                            })
                        };
                        self.step(Input::Spawned { child, result })?;
                    }
                    Effect::Signal { child, .. } | Effect::Kill { child } => {
                        prop_assert!(self.world.live.is_some_and(|(id, _)| id == child), "signal to a dead child");
                    }
                    Effect::Probe { child, kind } => self.world.probes.push((child, kind)),
                    Effect::SampleMemory { child } => self.world.samples.push(child),
                    Effect::Finish { .. } => self.world.wanted = false,
                    Effect::Demanded(true) => self.world.wanted = true,
                    Effect::CheckActivity { child } => {
                        prop_assert!(
                            !self.world.checks.contains(&child),
                            "a second activity check before the first answer"
                        );
                        self.world.checks.push(child);
                    }
                    Effect::Verdict { version, verdict: Verdict::RolledBack { to, .. } } => {
                        // After a failed apply, the config in force is the
                        // last good one: one that ran, never the failed one.
                        prop_assert_ne!(&version, &to, "rolled back to the config that failed");
                        prop_assert!(self.world.ran.contains(&to), "rolled back to {} which never ran", to);
                        prop_assert_eq!(self.core.view().version, Some(to));
                    }
                    Effect::Verdict { version, verdict: Verdict::Applied } => {
                        let in_force = self.core.view().version;
                        prop_assert_eq!(in_force.as_ref(), Some(&version), "applied a config not in force");
                    }
                    _ => {}
                }
            }
            Ok(())
        }
    }

    /// Every status change is published exactly once: the transitions of
    /// one step chain from the old status to the new one.
    fn check_chain(effects: &[Effect], before: Status, after: Status) -> Result<(), TestCaseError> {
        let chain = transitions(effects);
        let mut at = before;
        for t in &chain {
            prop_assert_eq!(t.from, at, "transition {:?} does not start where the last ended", t);
            at = t.to;
        }
        prop_assert_eq!(at, after, "status changed without being published");
        for effect in effects {
            if let Effect::Publish { view, transition: Some(t) } = effect {
                prop_assert_eq!(view.status, t.to);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn random_inputs_keep_the_invariants(
            policy in prop_oneof![Just("always"), Just("on-failure"), Just("never")],
            grace in prop_oneof![Just("1ms"), Just("2s")],
            lifecycle in prop_oneof![
                Just("{}"),
                Just(r#"{"start": "on-demand"}"#),
                Just(r#"{"idleStop": "2s"}"#),
                Just(r#"{"start": "on-demand", "idleStop": "2s"}"#),
            ],
            actions in prop::collection::vec(action(), 1..80),
        ) {
            let configs = |policy, grace, variant, enabled| lifecycle_configs(policy, grace, lifecycle, variant, enabled);
            let on_demand = lifecycle.contains("on-demand");
            let mut core = Core::new(Ok((configs(policy, grace, 0, true), "v0".into())), 3);
            let boot = core.boot();
            let mut run = Run { core, world: World { wanted: !on_demand, ..World::default() }, now: Instant::now() };
            run.perform(boot)?;
            let mut variant = 0;
            for action in actions {
                if run.core.finished() {
                    break;
                }
                let supervised = run.core.config().is_some();
                match action {
                    Action::Start => {
                        run.world.wanted |= supervised;
                        run.step(Input::Start)?;
                    }
                    Action::Stop => {
                        run.world.wanted = false;
                        run.world.idle_stopped = false;
                        run.step(Input::Stop)?;
                    }
                    Action::Restart => {
                        run.world.wanted |= supervised;
                        run.step(Input::Restart)?;
                    }
                    Action::ApplySame | Action::ApplyChanged | Action::ApplyDisabled => {
                        let enabled = !matches!(action, Action::ApplyDisabled);
                        if matches!(action, Action::ApplyChanged) {
                            variant = (variant + 1) % 4;
                        }
                        let was_enabled = run.core.config().is_some_and(|c| c.enabled);
                        if !enabled {
                            run.world.wanted = false;
                        } else if !was_enabled && !on_demand {
                            run.world.wanted = true;
                        }
                        let config = configs(policy, grace, variant, enabled);
                        run.step(Input::Apply { config, version: format!("v{variant}{enabled}") })?;
                    }
                    Action::Invalid => run.step(Input::Invalid(file_error()))?,
                    Action::Exit(code) => {
                        if let Some((id, false)) = run.world.live {
                            run.world.live = Some((id, true));
                            run.step(Input::Exited { child: id, exit: ExitInfo { code: Some(code), signal: None }, oom_killed: false })?;
                        }
                    }
                    Action::Gone => {
                        if let Some((id, true)) = run.world.live {
                            run.world.live = None;
                            run.step(Input::Gone { child: id })?;
                        }
                    }
                    Action::ProbeAnswer(ok) => {
                        if !run.world.probes.is_empty() {
                            let (child, kind) = run.world.probes.remove(0);
                            let result = if ok { Ok(()) } else { Err("no".into()) };
                            run.step(Input::Probe { child, kind, result })?;
                        }
                    }
                    Action::MemoryAnswer(high) => {
                        if let Some(child) = run.world.samples.pop() {
                            let rss_bytes = if high { 100 << 20 } else { 1 << 20 };
                            run.step(Input::Memory { child, rss_bytes })?;
                        }
                    }
                    Action::Advance(ms) => {
                        run.now += Duration::from_millis(ms);
                        run.step(Input::Tick)?;
                    }
                    Action::ToDeadline => {
                        if let Some(deadline) = run.core.next_deadline() {
                            run.now = run.now.max(deadline);
                            run.step(Input::Tick)?;
                        }
                    }
                    Action::FailSpawns(fail) => run.world.fail_spawns = fail,
                    Action::DaemonMemory => run.step(Input::OverDaemonMemory { message: "over".into() })?,
                    Action::Remove => {
                        run.world.wanted = false;
                        run.step(Input::Remove)?;
                    }
                    Action::Demand => run.step(Input::Demand)?,
                    Action::ActivityAnswer { open, recent } => {
                        if let Some(child) = run.world.checks.pop() {
                            let last_request = recent.then_some(run.now);
                            run.step(Input::Activity { child, last_request, open: u32::from(open) })?;
                        }
                    }
                }
            }
        }
    }
}

mod driver {
    //! The driver with a fake launcher and prober, on paused time: real
    //! channels, a real event bus, fake children.

    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use nix::sys::signal::Signal;
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::process::{Child, LaunchContext, LaunchSpec, Launcher, LogSink, SpawnError};
    use crate::state::{EventBus, StateView};
    use crate::supervisor::actor::{self, Command, WorkspaceHandle};
    use crate::supervisor::probe::{ProbeTarget, Prober};
    use crate::supervisor::SupervisorContext;

    /// Children that ignore SIGTERM and die on SIGKILL; every signal is logged.
    #[derive(Default)]
    struct FakeLauncher {
        signals: Arc<Mutex<Vec<Signal>>>,
        spawned: Mutex<Vec<watch::Sender<Option<ExitInfo>>>>,
    }

    struct FakeChild {
        pid: u32,
        exit: watch::Sender<Option<ExitInfo>>,
        signals: Arc<Mutex<Vec<Signal>>>,
    }

    impl Launcher for FakeLauncher {
        fn spawn<'a>(&'a self, _: &'a LaunchSpec, _: &'a LogSink) -> BoxFuture<'a, Result<Box<dyn Child>, SpawnError>> {
            Box::pin(async move {
                let (exit, _) = watch::channel(None);
                let mut spawned = self.spawned.lock().unwrap();
                spawned.push(exit.clone());
                let pid = 1000 + spawned.len() as u32;
                Ok(Box::new(FakeChild { pid, exit, signals: self.signals.clone() }) as Box<dyn Child>)
            })
        }
    }

    impl FakeLauncher {
        /// Makes child `n` (from 0) exit as if killed by SIGKILL.
        fn crash(&self, n: usize) {
            self.spawned.lock().unwrap()[n].send_replace(Some(ExitInfo { code: None, signal: Some(9) }));
        }
    }

    impl Child for FakeChild {
        fn pid(&self) -> u32 {
            self.pid
        }
        fn pgid(&self) -> i32 {
            self.pid as i32
        }
        fn wait(&mut self) -> BoxFuture<'_, ExitInfo> {
            let mut exit = self.exit.subscribe();
            Box::pin(async move { exit.wait_for(Option::is_some).await.ok().and_then(|e| *e).unwrap() })
        }
        fn signal(&mut self, signal: Signal) {
            self.signals.lock().unwrap().push(signal);
        }
        fn kill(&mut self) {
            self.signal(Signal::SIGKILL);
            self.exit.send_if_modified(|exit| {
                let first = exit.is_none();
                exit.get_or_insert(ExitInfo { code: None, signal: Some(9) });
                first
            });
        }
        fn wait_gone(&mut self) -> BoxFuture<'_, ()> {
            Box::pin(async move {
                self.wait().await;
            })
        }
        fn memory_bytes(&self) -> Option<u64> {
            Some(0)
        }
    }

    /// Every probe answers at once.
    struct ReadyProber;

    impl Prober for ReadyProber {
        fn probe(&self, _: ProbeTarget, _: bool) -> BoxFuture<'static, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
    }

    struct Actor {
        handle: WorkspaceHandle,
        bus: Arc<EventBus>,
        launcher: Arc<FakeLauncher>,
        _dir: tempfile::TempDir,
    }

    fn start_actor(config: Arc<WorkspaceConfig>) -> Actor {
        let dir = tempfile::tempdir().unwrap();
        let launcher = Arc::new(FakeLauncher::default());
        let bus = EventBus::new(Arc::new(StateView::new()), 64);
        let ctx = Arc::new(SupervisorContext {
            launcher: launcher.clone(),
            ports: crate::ports::PortAllocator::load(dir.path(), 45000..=45010, Default::default()),
            bus: bus.clone(),
            launch: LaunchContext {
                workspaces_dir: dir.path().into(),
                state_dir: dir.path().into(),
                mcpvisor_exe: "/bin/true".into(),
            },
            prober: Arc::new(ReadyProber),
            runtime: crate::process::runtime::RuntimeFile::new(dir.path(), vec![], Default::default()),
            metrics: crate::metrics::Metrics::new(crate::metrics::StateSources {
                bus: bus.clone(),
                resources: Default::default(),
                subscribers: Arc::new(Vec::new),
            }),
            // Its writer never runs: these tests keep no history.
            history: crate::history::History::new(&dir.path().join("history")).0,
        });
        let logs = LogSink::open(&dir.path().join("logs"), "dev");
        let handle = actor::spawn(
            "dev".into(),
            Ok((config, "v1".into())),
            logs,
            ctx,
            CancellationToken::new(),
            &TaskTracker::new(),
        );
        Actor { handle, bus, launcher, _dir: dir }
    }

    fn sh() -> Arc<WorkspaceConfig> {
        config(r#"{"command": "/bin/sh", "stop": {"grace": "5s"}, "restart": {"backoffInitial": "1s"}}"#)
    }

    /// Reads events until `status` with `reason`; returns the (status, reason, seq) seen.
    async fn until(sub: &mut crate::state::Subscription, status: &str, reason: &str) -> Vec<(String, String, u64)> {
        let mut seen = Vec::new();
        loop {
            let event =
                tokio::time::timeout(Duration::from_secs(60), sub.next()).await.expect("event in time").unwrap();
            let value: serde_json::Value = serde_json::from_str(&event.json).unwrap();
            let params = &value["params"];
            let entry = (
                params["status"].as_str().unwrap().to_string(),
                params["reason"].as_str().unwrap().to_string(),
                event.seq,
            );
            let done = entry.0 == status && entry.1 == reason;
            seen.push(entry);
            if done {
                return seen;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_graceful_stop_keeps_the_actor_responsive() {
        let actor = start_actor(sh());
        let mut sub = actor.bus.subscribe(None, None);
        until(&mut sub, "running", "ready").await;
        let (reply, noop) = tokio::sync::oneshot::channel();
        actor.handle.send(Command::Stop { noop: Some(reply) }).unwrap();
        assert!(!noop.await.unwrap());
        until(&mut sub, "stopping", "stop").await;
        let stopped_at = Instant::now();
        // The child ignores SIGTERM; while its grace runs, commands are taken.
        let (reply, noop) = tokio::sync::oneshot::channel();
        actor.handle.send(Command::Start { noop: Some(reply) }).unwrap();
        assert!(!noop.await.unwrap(), "the start is answered during the grace period");
        assert!(Instant::now() - stopped_at < Duration::from_secs(5));
        assert_eq!(actor.bus.view().get("dev").unwrap().status.status, Status::Stopping);
        let seen = until(&mut sub, "running", "ready").await;
        let statuses: Vec<&str> = seen.iter().map(|(s, _, _)| s.as_str()).collect();
        assert_eq!(statuses, ["stopped", "starting", "running"]);
        assert!(Instant::now() - stopped_at >= Duration::from_secs(5), "SIGKILL came at grace");
        let signals = actor.launcher.signals.lock().unwrap().clone();
        assert_eq!(signals, [Signal::SIGTERM, Signal::SIGKILL]);
    }

    #[tokio::test(start_paused = true)]
    async fn every_transition_is_published_once_in_seq_order() {
        let actor = start_actor(sh());
        let mut sub = actor.bus.subscribe(None, None);
        let mut seen = until(&mut sub, "running", "ready").await;
        actor.launcher.crash(0);
        seen.extend(until(&mut sub, "running", "ready").await);
        actor.launcher.crash(1);
        seen.extend(until(&mut sub, "running", "ready").await);
        let moves: Vec<String> = seen.iter().map(|(s, r, _)| format!("{s}:{r}")).collect();
        assert_eq!(
            moves,
            [
                "starting:start",
                "running:ready",
                "error:exited",
                "starting:restart",
                "running:ready",
                "error:exited",
                "starting:restart",
                "running:ready"
            ]
        );
        let seqs: Vec<u64> = seen.iter().skip(1).map(|(_, _, seq)| *seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seq grows by one per event: {seqs:?}");
        let status = actor.bus.view().get("dev").unwrap().status.clone();
        assert_eq!(status.restart_count, 2);
        assert!(status.breaker.next_retry_at.is_none());
    }
}
