//! The local [`Launcher`]: each child a local process leading its own
//! process group, in its workspace's cgroup where the host allows it,
//! killed with the daemon, its output captured, its tree tracked (see
//! [`Tracking`]).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::Signal;

use super::census::Census;
use super::cgroup::{CgroupError, Cgroups, WorkspaceCgroup};
use super::error::SpawnError;
use super::fork::{self, Forked};
use super::launcher::{Child, ExitInfo, Launcher, StdioPipes};
use super::logs::{LogSink, Stream};
use super::reaper::Reaper;
use super::spawner::Spawner;
use super::spec::LaunchSpec;
use super::tracking::Tracking;
use crate::state::Isolation;

/// Runs children as local processes, each the leader of its own process
/// group, with `PR_SET_PDEATHSIG` = SIGKILL so none outlives the daemon.
/// With [`Cgroups`], each child joins its workspace's cgroup before it
/// execs. Every fork/exec happens on the [`Spawner`] thread; every leader is
/// recorded with the [`Reaper`].
#[derive(Debug)]
pub struct LocalLauncher {
    spawner: Spawner,
    reaper: Arc<Reaper>,
    cgroups: Option<Cgroups>,
    census: Arc<Census>,
}

impl LocalLauncher {
    /// A launcher that puts children into `cgroups` when given, else tracks
    /// them by process group.
    pub fn new(spawner: Spawner, reaper: Arc<Reaper>, cgroups: Option<Cgroups>) -> LocalLauncher {
        LocalLauncher { spawner, reaper, cgroups, census: Arc::default() }
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
            let cgroups = self.cgroups.clone();
            let (mut leader, cgroup) = self.spawner.run(move || spawn_process(&job, &reaper, cgroups.as_ref())).await?;
            let pid = leader.pid();
            let (stdin, mut stdout, stderr) = leader.take_stdio();
            // A stdio child's stdout carries MCP: it goes to the bridge, not the log.
            let bridged = match (spec.stdin_pipe, stdin) {
                (true, Some(stdin)) => stdout.take().map(|stdout| (stdin, stdout)),
                _ => None,
            };
            let pumps = [(stdout, Stream::Stdout), (stderr, Stream::Stderr)]
                .into_iter()
                .filter_map(|(pipe, stream)| Some(tokio::spawn(logs.clone().pump(pipe?, stream))))
                .collect();
            let tracking = Arc::new(Tracking::new(&spec.workspace, pid as i32, self.reaper.clone(), cgroup));
            self.census.insert(tracking.clone());
            Ok(Box::new(LocalChild {
                leader,
                pid,
                tracking,
                census: self.census.clone(),
                reaper: self.reaper.clone(),
                logs: logs.clone(),
                memory_mb: spec.limits.memory_mb,
                exit: None,
                killed: false,
                pumps,
                stdio: bridged,
            }) as Box<dyn Child>)
        })
    }
}

/// A child's main process, as it was started.
enum Leader {
    /// By tokio's `Command` (process groups; a cgroup without `clone3`).
    Command(tokio::process::Child),
    /// Straight into its cgroup by `clone3`.
    Forked(Forked),
}

/// A pipe from the child's stdout or stderr.
type OutputPipe = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

impl Leader {
    fn pid(&self) -> u32 {
        match self {
            Leader::Command(child) => child.id().expect("a just-spawned child has a pid"),
            Leader::Forked(forked) => forked.pid,
        }
    }

    /// The parent's ends of stdin (when piped), stdout and stderr.
    fn take_stdio(&mut self) -> (Option<OwnedFd>, Option<OutputPipe>, Option<OutputPipe>) {
        fn boxed<R: tokio::io::AsyncRead + Send + Unpin + 'static>(pipe: Option<R>) -> Option<OutputPipe> {
            pipe.map(|p| Box::new(p) as OutputPipe)
        }
        match self {
            Leader::Command(child) => (
                child.stdin.take().and_then(|s| s.into_owned_fd().ok()),
                boxed(child.stdout.take()),
                boxed(child.stderr.take()),
            ),
            Leader::Forked(forked) => (forked.stdin.take(), boxed(forked.stdout.take()), boxed(forked.stderr.take())),
        }
    }

    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Leader::Command(child) => child.wait().await,
            Leader::Forked(forked) => forked.wait().await,
        }
    }
}

/// Forks and execs `spec`, in its workspace's cgroup when `cgroups` are
/// given and the cgroup can be made; runs on the spawner thread.
fn spawn_process(
    spec: &LaunchSpec,
    reaper: &Reaper,
    cgroups: Option<&Cgroups>,
) -> Result<(Leader, Option<WorkspaceCgroup>), SpawnError> {
    let parent = std::process::id() as i32;
    let joined = cgroups.map(|c| c.workspace(&spec.workspace, spec.limits.memory_mb)).map(|made| {
        let cgroup = made?;
        let joining = cgroup.join()?;
        Ok::<_, CgroupError>((cgroup, joining))
    });
    let (cgroup, joining) = match joined.transpose() {
        Ok(joined) => joined.unzip(),
        Err(e) => {
            tracing::warn!(workspace = %spec.workspace, "{e}; tracking the child by its process group");
            (None, None)
        }
    };
    let spawn_error = |e| SpawnError::from_spawn(e, &spec.program);
    if let Some(joining) = &joining {
        let setup = fork::Setup {
            procs: joining
                .memory_procs
                .iter()
                .map(|fd| fd.try_clone())
                .collect::<Result<_, _>>()
                .map_err(spawn_error)?,
            open_files: spec.limits.open_files,
        };
        let forked = reaper.spawn_leader(&spec.workspace, || {
            let forked = fork::spawn_into(spec, &joining.dir, &setup, parent)?;
            let pid = forked.pid;
            Ok((forked, pid))
        });
        match forked {
            Ok(forked) => return Ok((Leader::Forked(forked), cgroup)),
            Err(e) if fork::unsupported(&e) => {
                tracing::debug!("clone3 into a cgroup: {e}; the child moves itself there")
            }
            Err(e) => return Err(spawn_error(e)),
        }
    }
    // Without clone3, the child writes itself into its cgroup(s).
    let procs: Vec<RawFd> =
        joining.iter().flat_map(|j| std::iter::once(&j.procs).chain(&j.memory_procs)).map(AsRawFd::as_raw_fd).collect();
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
    let open_files = spec.limits.open_files;
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (prctl, getppid, write, setrlimit,
    // kill) on memory allocated before the fork; the descriptors in `procs`
    // stay open in the parent until the spawn returned.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The daemon may have died between fork and prctl.
            if nix::unistd::getppid().as_raw() != parent {
                let _ = nix::sys::signal::raise(Signal::SIGKILL);
            }
            // Into the workspace's cgroup(s) before anything runs: "0" is
            // the writing process.
            for fd in &procs {
                nix::unistd::write(std::os::fd::BorrowedFd::borrow_raw(*fd), b"0")?;
            }
            if let Some(n) = open_files {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)?;
            }
            Ok(())
        });
    }
    let child = reaper
        .spawn_leader(&spec.workspace, || {
            let child = command.spawn()?;
            let pid = child.id().expect("a just-spawned child has a pid");
            Ok((child, pid))
        })
        .map_err(spawn_error)?;
    Ok((Leader::Command(child), cgroup))
}

struct LocalChild {
    leader: Leader,
    pid: u32,
    tracking: Arc<Tracking>,
    census: Arc<Census>,
    reaper: Arc<Reaper>,
    /// For a note on an OOM kill, which the child cannot write itself.
    logs: LogSink,
    memory_mb: Option<u64>,
    exit: Option<ExitInfo>,
    /// Whether [`Child::kill`] was called: members still found are killed too.
    killed: bool,
    /// The stdout and stderr copiers; they end at EOF.
    pumps: Vec<tokio::task::JoinHandle<()>>,
    /// A `stdio` child's stdin and stdout until the bridge takes them.
    stdio: Option<(OwnedFd, OutputPipe)>,
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
        let status = self.leader.wait().await;
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
        let oom_kills = self.tracking.oom_kills();
        if oom_kills > 0 {
            let limit = self.memory_mb.unwrap_or_default();
            let note = format!(
                "mcpvisor: out of memory: the kernel killed {oom_kills} process(es) of the tree at the {limit} MiB limit"
            );
            tracing::warn!(pid = self.pid, "{note}");
            self.logs.push(Stream::Stderr, note);
        }
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
        self.tracking.kill();
    }

    fn wait_gone(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.gone())
    }

    fn memory_bytes(&self) -> Option<u64> {
        Some(self.tracking.members().iter().map(|p| p.rss_bytes()).sum())
    }

    fn isolation(&self) -> Isolation {
        self.tracking.isolation()
    }

    fn memory_limit_enforced(&self) -> bool {
        self.tracking.memory_enforced()
    }

    fn oom_killed(&self) -> bool {
        self.tracking.oom_kills() > 0
    }

    fn take_stdio(&mut self) -> Option<StdioPipes> {
        let (stdin, stdout) = self.stdio.take()?;
        match tokio::net::unix::pipe::Sender::from_owned_fd(stdin) {
            Ok(stdin) => Some(StdioPipes { stdin: Box::new(stdin), stdout }),
            Err(e) => {
                tracing::warn!(pid = self.pid, "making the child's stdin asynchronous: {e}");
                None
            }
        }
    }
}

impl Drop for LocalChild {
    fn drop(&mut self) {
        self.census.remove(self.tracking.leader());
    }
}
