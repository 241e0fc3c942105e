//! The [`Launcher`] boundary: where children run, as the supervisor sees
//! it. [`super::LocalLauncher`] runs local processes; a Kubernetes or Nomad
//! backend fits behind the same two traits.

use std::fmt;

use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncWrite};

use super::error::SpawnError;
use super::logs::LogSink;
use super::spec::LaunchSpec;
use crate::state::Isolation;

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

/// The ends of a `stdio` child's stdin and stdout that the parent holds:
/// newline-delimited JSON-RPC goes in and comes out here.
pub struct StdioPipes {
    pub stdin: Box<dyn AsyncWrite + Send + Unpin>,
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
}

impl fmt::Debug for StdioPipes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdioPipes").finish_non_exhaustive()
    }
}

/// A running child as the supervisor sees it: a main process and the tree
/// it grows (its cgroup, or its process group, their descendants and the
/// orphans adopted from them).
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
    /// How the tree is held together: a cgroup, or the process group and
    /// what the subreaper adopted.
    fn isolation(&self) -> Isolation {
        Isolation::ProcessGroup
    }
    /// Whether the kernel enforces `limits.memoryMb` for this tree (a
    /// cgroup memory limit); when not, the supervisor samples
    /// [`Child::memory_bytes`] itself.
    fn memory_limit_enforced(&self) -> bool {
        false
    }
    /// Whether the kernel killed a member of the tree for passing its
    /// memory limit since the spawn (an OOM kill); worth asking once the
    /// child exited.
    fn oom_killed(&self) -> bool {
        false
    }
    /// The child's stdin and stdout, once, when its spec asked for piped
    /// stdio ([`super::LaunchSpec::stdin_pipe`]); `None` otherwise or after
    /// the first call. Dropping the stdin end closes the child's stdin.
    fn take_stdio(&mut self) -> Option<StdioPipes> {
        None
    }
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
