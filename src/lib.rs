//! mcpvisor: a workspace process manager for MCP servers.
//!
//! [`serve`] runs the daemon: it binds the HTTP listener first, then
//! reconciles `workspaces/*.json` into one supervised child per workspace.
//! See ARCHITECTURE.md for the map and docs/reference.md for the contract.

pub mod cli;
pub mod config;
pub mod demo_server;
pub mod doctor;
mod fsutil;
pub mod history;
pub mod http;
pub mod lock;
pub mod metrics;
pub mod ports;
pub mod process;
pub mod resources;
pub mod sse;
pub mod state;
pub mod supervisor;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{AppState, Subscribers};
use crate::ports::PortAllocator;
use crate::process::cgroup::Cgroups;
use crate::process::reaper::Reaper;
use crate::process::{LaunchContext, LocalLauncher};
use crate::state::{EventBus, ResourceView, StateView, DEFAULT_RING_CAPACITY};
use crate::supervisor::{Manager, Registry, SupervisorContext};

/// How the daemon runs; the flags of `mcpvisor serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub workspaces_dir: PathBuf,
    pub state_dir: PathBuf,
    /// `127.0.0.1:7700` by default; port 0 picks a free one (tests).
    pub listen: SocketAddr,
    pub port_range: RangeInclusive<u16>,
    pub token: Option<String>,
    /// The executable `${MCPVISOR}` names.
    pub mcpvisor_exe: PathBuf,
    /// Full rescans of the workspaces folder besides watcher events.
    pub rescan_every: Duration,
    /// How often child resources are sampled.
    pub sample_every: Duration,
    /// Past events kept for `Last-Event-ID` replay.
    pub event_ring: usize,
    /// How long a proxied JSON-RPC request may wait on its child.
    pub proxy_timeout: Duration,
    /// Timeouts and the connection limit of the HTTP server.
    pub http: http::ServerLimits,
    /// `--max-workspaces`: at most this many workspaces run; more are errors.
    pub max_workspaces: Option<usize>,
    /// `--max-memory-mb`: the most RSS all trees may use together, in MiB.
    pub max_memory_mb: Option<u64>,
}

impl ServeConfig {
    /// The defaults of docs/reference.md §2 for the given folders.
    pub fn new(workspaces_dir: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> ServeConfig {
        ServeConfig {
            workspaces_dir: workspaces_dir.into(),
            state_dir: state_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            port_range: 41000..=41999,
            token: None,
            mcpvisor_exe: std::env::current_exe().unwrap_or_else(|_| "mcpvisor".into()),
            rescan_every: Duration::from_secs(2),
            sample_every: Duration::from_secs(2),
            event_ring: DEFAULT_RING_CAPACITY,
            proxy_timeout: http::proxy::DEFAULT_REQUEST_TIMEOUT,
            http: http::ServerLimits::default(),
            max_workspaces: None,
            max_memory_mb: None,
        }
    }
}

/// Why the daemon could not start. Each is one clear line.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("listen address {addr} is taken: {source}")]
    AddrInUse { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error("refusing to listen on non-loopback {0} without --token")]
    NoToken(SocketAddr),
    #[error("{what} {}: {source}", .path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// A started daemon.
pub struct Running {
    /// The address the HTTP server listens on.
    pub addr: SocketAddr,
    /// Resolves once the daemon has shut down and every child is gone.
    pub done: tokio::task::JoinHandle<()>,
}

/// Runs the daemon until `shutdown` fires, then stops every child.
///
/// # Errors
/// See [`ServeError`]; once serving, the daemon does not fail.
pub async fn serve(config: ServeConfig, shutdown: CancellationToken) -> Result<(), ServeError> {
    let running = start(config, shutdown).await?;
    let _ = running.done.await;
    Ok(())
}

fn absolute(path: &Path, what: &'static str) -> Result<PathBuf, ServeError> {
    std::path::absolute(path).map_err(|source| ServeError::Io { what, path: path.to_path_buf(), source })
}

/// Starts the daemon and returns once it listens: the HTTP server accepts
/// before the first workspace is even read (docs/reference.md §1).
///
/// # Errors
/// The listen address is taken, the state folder is locked or unusable, or
/// a non-loopback address has no token.
pub async fn start(config: ServeConfig, shutdown: CancellationToken) -> Result<Running, ServeError> {
    if !config.listen.ip().is_loopback() && config.token.is_none() {
        return Err(ServeError::NoToken(config.listen));
    }
    let state_dir = absolute(&config.state_dir, "state folder")?;
    let workspaces_dir = absolute(&config.workspaces_dir, "workspaces folder")?;
    std::fs::create_dir_all(&state_dir).map_err(|source| ServeError::Io {
        what: "creating state folder",
        path: state_dir.clone(),
        source,
    })?;
    let lock_dir = state_dir.clone();
    let lock = tokio::task::spawn_blocking(move || lock::StateLock::acquire(&lock_dir, Duration::from_secs(3)))
        .await
        .expect("taking the state lock does not panic")?;
    let cgroups = match Cgroups::setup(&state_dir) {
        Ok(cgroups) => Some(cgroups),
        Err(e) => {
            tracing::info!("isolation by process group: {e}");
            None
        }
    };
    let cgroup_roots = cgroups.as_ref().map(Cgroups::roots).unwrap_or_default();
    // Orphans of the workspace trees are reparented to us, not to init.
    let reaper = Arc::new(Reaper::new(cgroups.as_ref().map(|c| c.root_in_hierarchy().to_path_buf())));
    if let Err(e) = process::reaper::become_subreaper() {
        tracing::warn!("cannot become child subreaper: {e}; double-forked children may escape");
    }
    // Before anything is spawned: kill what a crashed predecessor left.
    let (sweep_dir, roots) = (state_dir.clone(), cgroup_roots.clone());
    let swept =
        tokio::task::spawn_blocking(move || process::runtime::sweep(&sweep_dir, &roots, Duration::from_secs(2)).killed)
            .await
            .unwrap_or(0);
    if swept > 0 {
        tracing::warn!(processes = swept, "killed leftovers of a previous run");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::AddrInUse { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::AddrInUse { addr: config.listen, source })?;

    let view = Arc::new(StateView::new());
    let bus = EventBus::new(view, config.event_ring);
    let resources = Arc::new(ResourceView::default());
    let subscribers = Arc::new(Subscribers::default());
    let metrics = metrics::Metrics::new(metrics::StateSources {
        bus: bus.clone(),
        resources: resources.clone(),
        subscribers: {
            let subscribers = subscribers.clone();
            Arc::new(move || subscribers.list().iter().map(|s| s.workspace.clone()).collect())
        },
    });
    let spawner = process::spawner::Spawner::start(tokio::runtime::Handle::current());
    let launcher = Arc::new(LocalLauncher::new(spawner, reaper.clone(), cgroups.clone()));
    let state_files = Arc::new(tokio::sync::Notify::new());
    let runtime = process::runtime::RuntimeFile::new(&state_dir, cgroup_roots, state_files.clone());
    let (history, history_writer) = history::History::new(&state_dir.join("history"));
    let ctx = Arc::new(SupervisorContext {
        launcher: launcher.clone(),
        ports: PortAllocator::load(&state_dir, config.port_range.clone(), state_files.clone()),
        bus: bus.clone(),
        launch: LaunchContext {
            workspaces_dir: workspaces_dir.clone(),
            state_dir: state_dir.clone(),
            mcpvisor_exe: config.mcpvisor_exe.clone(),
        },
        prober: Arc::new(supervisor::probe::McpProber::new()),
        runtime: runtime.clone(),
        metrics,
        history,
    });
    let guard = match process::guard::spawn(&config.mcpvisor_exe, &state_dir) {
        Ok(guard) => Some(guard),
        Err(e) => {
            tracing::warn!("cannot start the guard process: {e}; a crash may leave grandchildren behind");
            None
        }
    };
    let registry = Arc::new(Registry::default());
    let ready = Arc::new(AtomicBool::new(false));
    let (file_requests, file_requests_receiver) = mpsc::channel(64);
    let writer =
        Arc::new(supervisor::writes::ConfigWriter::new(workspaces_dir.clone(), file_requests, ctx.history.clone()));
    let tracker = TaskTracker::new();
    let actors_cancel = CancellationToken::new();

    let app = Arc::new(AppState {
        ctx: ctx.clone(),
        registry: registry.clone(),
        ready: ready.clone(),
        resources: resources.clone(),
        subscribers,
        token: config.token.clone(),
        listen_host: config.listen.ip().to_string(),
        shutdown: shutdown.clone(),
        proxy: http::proxy::Proxy::new(bus.clone(), config.proxy_timeout, shutdown.clone()),
        writer,
        limits: http::DaemonLimits { max_workspaces: config.max_workspaces, max_memory_mb: config.max_memory_mb },
    });
    let server = tokio::spawn(http::serve(listener, http::router(app), config.http.clone(), shutdown.clone()));
    tracing::info!(%addr, workspaces = %workspaces_dir.display(), state = %state_dir.display(), "serving");

    // Only now, with the listener accepting, are workspaces read and spawned.
    let (changes_tx, changes) = mpsc::channel(1);
    let watcher = match config::ConfigWatcher::start(&workspaces_dir, changes_tx.clone(), registry.watch_error.clone())
    {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            tracing::error!("cannot watch {}: {e}; relying on periodic rescans", workspaces_dir.display());
            *registry.watch_error.write().unwrap() = Some(e.to_string());
            None
        }
    };
    if let Some(limit_mb) = config.max_memory_mb {
        let enforce = supervisor::memory::enforce(
            limit_mb,
            resources.clone(),
            registry.clone(),
            config.sample_every,
            actors_cancel.clone(),
        );
        tracker.spawn(enforce);
    }
    let manager = Manager::new(
        ctx.clone(),
        registry,
        workspaces_dir,
        ready,
        actors_cancel.clone(),
        tracker.clone(),
        config.rescan_every,
        watcher,
        changes_tx,
    )
    .with_requests(file_requests_receiver)
    .with_max_workspaces(config.max_workspaces);
    let manager = tracker.spawn(manager.run(changes));
    tracker.spawn(resources::run_sampler(
        launcher.census(),
        runtime,
        resources,
        config.sample_every,
        actors_cancel.clone(),
    ));
    tracker.spawn(reaper.clone().run(actors_cancel.clone()));
    tracker.spawn(retry_state_files(ctx.clone(), state_files, actors_cancel.clone()));
    tracker.spawn(history_writer.run(actors_cancel.clone()));

    let done = tokio::spawn(async move {
        shutdown.cancelled().await;
        tracing::info!("shutting down: stopping every child");
        actors_cancel.cancel();
        let _ = manager.await;
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(60), tracker.wait()).await.is_err() {
            tracing::error!("some workspaces did not stop within 60 s");
        }
        let _ = server.await;
        // A child's orphan may have been adopted after its tree was stopped.
        let _ = tokio::task::spawn_blocking(move || {
            reaper.kill_orphans(Duration::from_secs(2));
            if let Some(cgroups) = cgroups {
                cgroups.remove();
            }
        })
        .await;
        if let Some(guard) = guard {
            let _ = tokio::task::spawn_blocking(move || guard.finish()).await;
        }
        drop(lock);
        tracing::info!("stopped");
    });
    Ok(Running { addr, done })
}

/// How often a state file whose write failed is written again.
const STATE_FILE_RETRY: Duration = Duration::from_secs(1);

/// Rewrites `ports.json` and `runtime.json` after a failed write (a full
/// disk) until both are current again; sleeps while they are.
async fn retry_state_files(ctx: Arc<SupervisorContext>, failed: Arc<tokio::sync::Notify>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = failed.notified() => {}
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(STATE_FILE_RETRY) => {}
            }
            let ctx = ctx.clone();
            let current = tokio::task::spawn_blocking(move || ctx.ports.flush() & ctx.runtime.flush()).await;
            if current.unwrap_or(false) {
                tracing::info!("state files written again");
                break;
            }
        }
    }
}
