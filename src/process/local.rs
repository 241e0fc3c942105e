//! The local [`Launcher`]: each child a local process leading its own
//! process group, killed with the daemon, its output captured, its tree
//! tracked (see [`Tracking`]).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::Signal;

use super::census::Census;
use super::error::SpawnError;
use super::launcher::{Child, ExitInfo, Launcher};
use super::logs::{LogSink, Stream};
use super::reaper::Reaper;
use super::spawner::Spawner;
use super::spec::LaunchSpec;
use super::tracking::Tracking;

/// Runs children as local processes, each the leader of its own process
/// group, with `PR_SET_PDEATHSIG` = SIGKILL so none outlives the daemon.
/// Every fork/exec happens on the [`Spawner`] thread; every leader is
/// recorded with the [`Reaper`].
#[derive(Debug)]
pub struct LocalLauncher {
    spawner: Spawner,
    reaper: Arc<Reaper>,
    census: Arc<Census>,
}

impl LocalLauncher {
    pub fn new(spawner: Spawner, reaper: Arc<Reaper>) -> LocalLauncher {
        LocalLauncher { spawner, reaper, census: Arc::default() }
    }

    /// The live children's trees, for the resource sampler.
    pub fn census(&self) -> Arc<Census> {
        self.census.clone()
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
            let reaper = self.reaper.clone();
            let mut child = self.spawner.run(move || spawn_process(&job, &reaper)).await?;
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
            let tracking = Arc::new(Tracking::new(&spec.workspace, pid as i32, self.reaper.clone()));
            self.census.insert(tracking.clone());
            Ok(Box::new(LocalChild {
                child,
                pid,
                tracking,
                census: self.census.clone(),
                reaper: self.reaper.clone(),
                exit: None,
                killed: false,
                pumps,
                _stdin: stdin,
            }) as Box<dyn Child>)
        })
    }
}

/// Forks and execs `spec`; runs on the spawner thread.
fn spawn_process(spec: &LaunchSpec, reaper: &Reaper) -> Result<tokio::process::Child, SpawnError> {
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
    reaper
        .spawn_leader(&spec.workspace, || {
            let child = command.spawn()?;
            let pid = child.id().expect("a just-spawned child has a pid");
            Ok((child, pid))
        })
        .map_err(|e| SpawnError::from_spawn(e, &spec.program))
}

struct LocalChild {
    child: tokio::process::Child,
    pid: u32,
    tracking: Arc<Tracking>,
    census: Arc<Census>,
    reaper: Arc<Reaper>,
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
        self.reaper.forget_leader(self.pid);
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

    async fn gone(&mut self) {
        self.wait_exit().await;
        self.tracking.wait_empty(self.killed).await;
    }
}

impl Child for LocalChild {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn pgid(&self) -> i32 {
        self.tracking.pgid()
    }

    fn wait(&mut self) -> BoxFuture<'_, ExitInfo> {
        Box::pin(self.wait_exit())
    }

    fn signal(&mut self, signal: Signal) {
        self.tracking.signal(signal);
    }

    fn kill(&mut self) {
        self.killed = true;
        self.tracking.signal(Signal::SIGKILL);
    }

    fn wait_gone(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.gone())
    }

    fn memory_bytes(&self) -> Option<u64> {
        Some(self.tracking.members().iter().map(|p| p.rss_bytes()).sum())
    }
}

impl Drop for LocalChild {
    fn drop(&mut self) {
        self.census.remove(self.tracking.leader());
    }
}
