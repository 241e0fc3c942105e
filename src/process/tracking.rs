//! How a child's tree is found, signalled and waited for, by one of two
//! backends (docs/reference.md §12):
//!
//! - **cgroup**: the workspace's cgroup holds every descendant; the kernel
//!   lists them, kills them (`cgroup.kill`) and says when none is left
//!   (`populated 0`).
//! - **process group**: the child's process group, the descendants of its
//!   members (also those that left the group with `setsid`), and the orphans
//!   the [`Reaper`] adopted from it. "The group is empty" is asked of the
//!   kernel (`kill(-pgid, 0)`); the rest is walked down from the leader and
//!   the adopted orphans.
//!
//! Neither scans the whole of `/proc`.

use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::cgroup::WorkspaceCgroup;
use super::reaper::Reaper;
use super::tree::{proc_info, walk, ProcInfo};
use crate::state::Isolation;

/// How long a stop waits, once the cgroup is empty, for the zombies the tree
/// left in its group to be handed to mcpvisor and reaped.
const REAP_GRACE: Duration = Duration::from_millis(100);

/// The tree of one child.
#[derive(Debug)]
pub struct Tracking {
    workspace: String,
    leader: i32,
    reaper: Arc<Reaper>,
    cgroup: Option<WorkspaceCgroup>,
}

impl Tracking {
    /// Tracks the tree of `leader`, which leads its own process group and,
    /// with `cgroup`, was put into that cgroup before it ran.
    pub fn new(workspace: &str, leader: i32, reaper: Arc<Reaper>, cgroup: Option<WorkspaceCgroup>) -> Tracking {
        Tracking { workspace: workspace.to_string(), leader, reaper, cgroup }
    }

    pub fn workspace(&self) -> &str {
        &self.workspace
    }

    pub fn leader(&self) -> i32 {
        self.leader
    }

    pub fn pgid(&self) -> i32 {
        self.leader
    }

    pub fn isolation(&self) -> Isolation {
        match self.cgroup {
            Some(_) => Isolation::Cgroup,
            None => Isolation::ProcessGroup,
        }
    }

    /// Whether the kernel enforces the tree's memory limit.
    pub fn memory_enforced(&self) -> bool {
        self.cgroup.as_ref().is_some_and(WorkspaceCgroup::memory_enforced)
    }

    /// How many members the kernel killed for passing the memory limit.
    pub fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map_or(0, WorkspaceCgroup::oom_kills)
    }

    /// The live members of the tree.
    pub fn members(&self) -> Vec<ProcInfo> {
        if let Some(cgroup) = &self.cgroup {
            return cgroup.members().into_iter().filter_map(proc_info).filter(|p| !p.zombie).collect();
        }
        self.reaper.reap();
        let mut roots = vec![self.leader];
        roots.extend(self.reaper.orphans(&self.workspace, self.pgid()));
        walk(&roots)
    }

    /// Sends `signal` to every member of the tree, now.
    pub fn signal(&self, signal: Signal) {
        if let Some(cgroup) = &self.cgroup {
            return cgroup.signal(signal);
        }
        let pgid = self.pgid();
        match killpg(Pid::from_raw(pgid), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pgid, %signal, "signalling process group: {e}"),
        }
        for member in self.members().into_iter().filter(|p| p.pgrp != pgid) {
            let _ = kill(Pid::from_raw(member.pid), signal);
        }
    }

    /// SIGKILLs every member of the tree, now.
    pub fn kill(&self) {
        match &self.cgroup {
            Some(cgroup) => cgroup.kill(),
            None => self.signal(Signal::SIGKILL),
        }
    }

    /// Resolves once the tree is empty and the zombies it left in its
    /// group are reaped, SIGKILLing what is left on each round when
    /// `killing` (process groups; `cgroup.kill` needs no repeating). Call it
    /// after the leader was reaped. A cgroup is removed once empty.
    pub async fn wait_empty(&self, killing: bool) {
        match &self.cgroup {
            Some(cgroup) => {
                cgroup.wait_empty().await;
                self.reap_group(tokio::time::Instant::now() + REAP_GRACE).await;
                cgroup.remove();
            }
            None => self.wait_group_empty(killing).await,
        }
    }

    /// Reaps the zombies of the tree's group until none is left or `until`.
    async fn reap_group(&self, until: tokio::time::Instant) {
        let pgid = Pid::from_raw(self.pgid());
        rounds(|| {
            let reaped = self.reaper.reap();
            (killpg(pgid, None).is_err() && reaped == 0) || tokio::time::Instant::now() >= until
        })
        .await;
    }

    /// The process-group backend of [`Tracking::wait_empty`].
    ///
    /// Each round reaps the tree's dead orphans first. The tree is empty
    /// when its group has no process left (zombies count: the kernel keeps
    /// them in the group until they are reaped), no adopted orphan of it
    /// lives, and the round reaped nothing: an orphan that just died may
    /// have had children that are being handed to mcpvisor right now.
    async fn wait_group_empty(&self, killing: bool) {
        let pgid = Pid::from_raw(self.pgid());
        rounds(|| {
            let reaped = self.reaper.reap();
            let group_alive = killpg(pgid, None).is_ok();
            let orphans = self.reaper.orphans(&self.workspace, self.pgid());
            if !group_alive && orphans.is_empty() && reaped == 0 {
                return true;
            }
            if killing {
                let _ = killpg(pgid, Signal::SIGKILL);
                for member in walk(&orphans) {
                    let _ = kill(Pid::from_raw(member.pid), Signal::SIGKILL);
                }
            }
            false
        })
        .await;
    }
}

/// Runs `round` until it returns true, pausing 1 ms, then doubling up to
/// 10 ms, between rounds.
async fn rounds(mut round: impl FnMut() -> bool) {
    let mut pause = Duration::from_millis(1);
    while !round() {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}
