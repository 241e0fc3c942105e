//! How a child's tree is found, signalled and waited for: its process
//! group, the descendants of its members (also those that left the group
//! with `setsid`), and the orphans the [`Reaper`] adopted from it.
//!
//! Nothing here scans the whole of `/proc`: the tree is walked down from
//! the leader and the adopted orphans, and "the group is empty" is asked of
//! the kernel (`kill(-pgid, 0)`).

use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::reaper::Reaper;
use super::tree::{walk, ProcInfo};

/// The tree of one child, tracked by its process group.
#[derive(Debug)]
pub struct Tracking {
    workspace: String,
    leader: i32,
    reaper: Arc<Reaper>,
}

impl Tracking {
    /// Tracks the tree of `leader`, which leads its own process group.
    pub fn new(workspace: &str, leader: i32, reaper: Arc<Reaper>) -> Tracking {
        Tracking { workspace: workspace.to_string(), leader, reaper }
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

    /// The live members of the tree.
    pub fn members(&self) -> Vec<ProcInfo> {
        self.reaper.reap();
        let mut roots = vec![self.leader];
        roots.extend(self.reaper.orphans(&self.workspace, self.pgid()));
        walk(&roots)
    }

    /// Sends `signal` to the process group and to every member outside it.
    pub fn signal(&self, signal: Signal) {
        let pgid = self.pgid();
        match killpg(Pid::from_raw(pgid), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pgid, %signal, "signalling process group: {e}"),
        }
        for member in self.members().into_iter().filter(|p| p.pgrp != pgid) {
            let _ = kill(Pid::from_raw(member.pid), signal);
        }
    }

    /// Resolves once the tree is empty, SIGKILLing what is left on each
    /// round when `killing`. Call it after the leader was reaped.
    ///
    /// Each round reaps the tree's dead orphans first. The tree is empty
    /// when its group has no process left (zombies count: the kernel keeps
    /// them in the group until they are reaped), no adopted orphan of it
    /// lives, and the round reaped nothing: an orphan that just died may
    /// have had children that are being handed to mcpvisor right now.
    pub async fn wait_empty(&self, killing: bool) {
        let pgid = Pid::from_raw(self.pgid());
        let mut pause = Duration::from_millis(1);
        loop {
            let reaped = self.reaper.reap();
            let group_alive = killpg(pgid, None).is_ok();
            let orphans = self.reaper.orphans(&self.workspace, self.pgid());
            if !group_alive && orphans.is_empty() && reaped == 0 {
                return;
            }
            if killing {
                let _ = killpg(pgid, Signal::SIGKILL);
                for member in walk(&orphans) {
                    let _ = kill(Pid::from_raw(member.pid), Signal::SIGKILL);
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }
}
