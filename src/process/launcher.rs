//! The [`Launcher`] boundary and its local implementation: each child in
//! its own process group, killed with the daemon, output captured.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use thiserror::Error;

use super::group::signal_group;
use super::logs::{LogSink, Stream};
use super::spawner::Spawner;
use super::spec::LaunchSpec;
use super::tree::ProcTable;

/// Why a child could not be started. Every variant is a counted failure.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SpawnError {
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("not executable: {}", .0.display())]
    NotExecutable(PathBuf),
    #[error("working directory does not exist: {}", .0.display())]
    CwdMissing(PathBuf),
    #[error("out of resources: {0}")]
    Resources(String),
    #[error("{0}")]
    Template(String),
    #[error("{0}")]
    Io(String),
}

impl SpawnError {
    /// A short, stable label for metrics and the error history.
    pub fn kind(&self) -> &'static str {
        match self {
            SpawnError::NotFound(_) => "not found",
            SpawnError::NotExecutable(_) => "not executable",
            SpawnError::CwdMissing(_) => "cwd missing",
            SpawnError::Resources(_) => "resources",
            SpawnError::Template(_) => "template",
            SpawnError::Io(_) => "io",
        }
    }
}

/// How a child's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    /// The signal number that killed it, if one did.
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn signal_name(&self) -> Option<String> {
        self.signal.map(|n| Signal::try_from(n).map_or_else(|_| format!("signal {n}"), |s| s.as_str().to_string()))
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal_name()) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(signal)) => write!(f, "killed by {signal}"),
            (None, None) => write!(f, "exited"),
        }
    }
}

/// A running child as the supervisor sees it: a main process and the tree
/// it grows (its process group, their descendants, adopted orphans).
///
/// Nothing here waits for a grace period: the supervisor sends signals and
/// keeps its own timers, so it stays responsive while a child stops.
pub trait Child: Send + 'static {
    fn pid(&self) -> u32;
    fn pgid(&self) -> i32;
    /// Resolves when the main process has exited. Cancel-safe; after the
    /// first resolution it returns the same exit at once.
    fn wait(&mut self) -> BoxFuture<'_, ExitInfo>;
    /// Sends `signal` to every live member of the tree, now.
    fn signal(&mut self, signal: Signal);
    /// SIGKILLs every member of the tree, now; [`Child::wait_gone`] then
    /// keeps killing members that appear until none is left.
    fn kill(&mut self);
    /// Resolves once the main process has exited and no member of the tree
    /// is left alive. Cancel-safe.
    fn wait_gone(&mut self) -> BoxFuture<'_, ()>;
    /// Resident memory of the whole tree in bytes; `None` when unknown.
    /// Reads a few files; call it off the hot path.
    fn memory_bytes(&self) -> Option<u64>;
}

/// Starts children somewhere: local processes today.
pub trait Launcher: Send + Sync + 'static {
    /// Starts `spec`, sending its output to `logs`.
    ///
    /// # Errors
    /// A classified [`SpawnError`]; nothing is left running then.
    fn spawn<'a>(
        &'a self,
        spec: &'a LaunchSpec,
        logs: &'a LogSink,
    ) -> BoxFuture<'a, Result<Box<dyn Child>, SpawnError>>;
}

/// Runs children as local processes, each the leader of its own process
/// group, with `PR_SET_PDEATHSIG` = SIGKILL so none outlives the daemon.
/// Every fork/exec happens on the [`Spawner`] thread.
#[derive(Debug)]
pub struct LocalLauncher {
    spawner: Spawner,
}

impl LocalLauncher {
    pub fn new(spawner: Spawner) -> LocalLauncher {
        LocalLauncher { spawner }
    }
}

impl Launcher for LocalLauncher {
    fn spawn<'a>(
        &'a self,
        spec: &'a LaunchSpec,
        logs: &'a LogSink,
    ) -> BoxFuture<'a, Result<Box<dyn Child>, SpawnError>> {
        Box::pin(async move {
            let job = spec.clone();
            let mut child = self.spawner.run(move || spawn_process(&job)).await?;
            let pid = child.id().expect("a just-spawned child has a pid");
            // Held, not written: until stdio children are bridged to HTTP,
            // this keeps a stdio server from seeing EOF and exiting.
            let stdin = child.stdin.take();
            let mut pumps = Vec::with_capacity(2);
            if let Some(out) = child.stdout.take() {
                pumps.push(tokio::spawn(logs.clone().pump(out, Stream::Stdout)));
            }
            if let Some(err) = child.stderr.take() {
                pumps.push(tokio::spawn(logs.clone().pump(err, Stream::Stderr)));
            }
            Ok(Box::new(LocalChild {
                child,
                pid,
                workspace: spec.workspace.clone(),
                exit: None,
                killed: false,
                pumps,
                _stdin: stdin,
            }) as Box<dyn Child>)
        })
    }
}

/// Forks and execs `spec`; runs on the spawner thread.
fn spawn_process(spec: &LaunchSpec) -> Result<tokio::process::Child, SpawnError> {
    {
        let mut command = tokio::process::Command::new(&spec.program);
        command
            .args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.cwd)
            .stdin(if spec.stdin_pipe { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let parent = std::process::id() as i32;
        let open_files = spec.limits.open_files;
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe system calls (prctl, getppid, setrlimit, kill).
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The daemon may have died between fork and prctl.
                if nix::unistd::getppid().as_raw() != parent {
                    let _ = nix::sys::signal::raise(Signal::SIGKILL);
                }
                if let Some(n) = open_files {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)?;
                }
                Ok(())
            });
        }
        super::reaper::spawn_leader(|| {
            let child = command.spawn()?;
            let pid = child.id().expect("a just-spawned child has a pid");
            Ok((child, pid))
        })
        .map_err(|e| classify(e, spec))
    }
}

fn classify(e: std::io::Error, spec: &LaunchSpec) -> SpawnError {
    use nix::errno::Errno;
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT) => SpawnError::NotFound(spec.program.display().to_string()),
        Some(Errno::EACCES | Errno::ENOEXEC) => SpawnError::NotExecutable(spec.program.clone()),
        Some(errno @ (Errno::EMFILE | Errno::ENFILE | Errno::EAGAIN | Errno::ENOMEM)) => {
            SpawnError::Resources(errno.desc().to_lowercase())
        }
        _ => SpawnError::Io(e.to_string()),
    }
}

struct LocalChild {
    child: tokio::process::Child,
    pid: u32,
    workspace: String,
    exit: Option<ExitInfo>,
    /// Whether [`Child::kill`] was called: members still found are killed too.
    killed: bool,
    /// The stdout and stderr copiers; they end at EOF.
    pumps: Vec<tokio::task::JoinHandle<()>>,
    /// The open end of a `stdio` child's stdin.
    _stdin: Option<tokio::process::ChildStdin>,
}

/// How long an exit waits for the child's last output lines. A grandchild
/// that keeps the pipes open must not delay the exit further.
const DRAIN_OUTPUT: Duration = Duration::from_millis(100);

impl LocalChild {
    async fn wait_exit(&mut self) -> ExitInfo {
        if let Some(exit) = self.exit {
            return exit;
        }
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.wait().await;
        super::reaper::forget_leader(self.pid);
        let exit = match status {
            Ok(status) => ExitInfo { code: status.code(), signal: status.signal() },
            Err(e) => {
                tracing::warn!(pid = self.pid, "waiting for child: {e}");
                ExitInfo { code: None, signal: None }
            }
        };
        // Let the pumps copy what the child wrote just before it died, so
        // the error's stderr tail has its last words.
        let pumps = std::mem::take(&mut self.pumps);
        let _ = tokio::time::timeout(DRAIN_OUTPUT, futures::future::join_all(pumps)).await;
        self.exit = Some(exit);
        exit
    }

    /// Sends `signal` to the process group and to every tree member outside it.
    fn signal_tree(&self, signal: Signal) {
        let pgid = self.pgid();
        signal_group(pgid, signal);
        let table = ProcTable::scan();
        for pid in table.tree(pgid, &self.workspace) {
            if table.procs.get(&pid).is_some_and(|p| p.pgrp != pgid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
            }
        }
    }

    /// Whether the tree has no live member, by one scan of `/proc` off the
    /// async workers.
    async fn tree_empty(&self) -> bool {
        let (pgid, workspace) = (self.pgid(), self.workspace.clone());
        tokio::task::spawn_blocking(move || ProcTable::scan().tree(pgid, &workspace).is_empty())
            .await
            .expect("a /proc scan does not panic")
    }

    /// Polls `/proc` until the tree has no live member, killing what is
    /// left after [`Child::kill`].
    ///
    /// A scan of `/proc` is not atomic: a process whose parent exits during
    /// the scan can be missed once. So the tree counts as gone only after two
    /// empty scans in a row.
    async fn gone(&mut self) {
        self.wait_exit().await;
        let mut empty_scans = 0;
        loop {
            if self.tree_empty().await {
                empty_scans += 1;
                if empty_scans == 2 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            empty_scans = 0;
            if self.killed {
                // Members may fork while being killed.
                self.signal_tree(Signal::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
}

impl Child for LocalChild {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn pgid(&self) -> i32 {
        self.pid as i32
    }

    fn wait(&mut self) -> BoxFuture<'_, ExitInfo> {
        Box::pin(self.wait_exit())
    }

    fn signal(&mut self, signal: Signal) {
        self.signal_tree(signal);
    }

    fn kill(&mut self) {
        self.killed = true;
        self.signal_tree(Signal::SIGKILL);
    }

    fn wait_gone(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.gone())
    }

    fn memory_bytes(&self) -> Option<u64> {
        let table = ProcTable::scan();
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
        let pages: u64 = table
            .tree(self.pgid(), &self.workspace)
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/statm")).ok())
            .filter_map(|statm| statm.split(' ').nth(1)?.parse::<u64>().ok())
            .sum();
        Some(pages * page)
    }
}
