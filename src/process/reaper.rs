//! mcpvisor as child subreaper: orphans of a workspace's tree (a daemon
//! that double-forked, a shell's background job) are reparented to
//! mcpvisor instead of init, so they stay visible and killable, and are
//! reaped here once they die: no zombie outlives its tree.
//!
//! Only processes attributed to a workspace tree are reaped: mcpvisor's own
//! other children belong to whoever spawned them (tokio's process driver,
//! `std::process::Command`, a test), and reaping them would steal their exit
//! status. A child of mcpvisor is attributed when it is
//! - a member of a process group that a leader spawned here created (and
//!   started after that leader), or
//! - left its leader's session or group and its environment names a
//!   workspace launched here (`MCPVISOR_WORKSPACE`; read while it lives,
//!   since a zombie has no environment), or
//! - in a cgroup below mcpvisor's own, when the launcher uses cgroups (a
//!   zombie's cgroup is still readable).
//!
//! The [`Reaper`] is an owned object: the launcher records each leader it
//! spawns, the children's tracking asks it for the orphans of a tree, and
//! [`Reaper::run`] reaps on every SIGCHLD. It only ever reads mcpvisor's
//! own children (`/proc/self/task/*/children`), never the whole host.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use super::tree::{children, proc_info, walk, workspace_of, ProcInfo};

/// An orphan adopted from a workspace's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Orphan {
    workspace: String,
    /// The process group of the tree it came from, when known.
    group: Option<i32>,
    start_time: u64,
}

/// A process group created by a leader spawned here.
#[derive(Debug, Clone)]
struct Group {
    workspace: String,
    /// The leader's start time: a member started earlier is not of it.
    start_time: u64,
}

#[derive(Debug, Default)]
struct Known {
    /// Children spawned as leaders; their spawner collects their exit.
    leaders: HashSet<i32>,
    /// Groups of leaders, by pgid, kept until the group is empty.
    groups: HashMap<i32, Group>,
    /// Every workspace a leader was spawned for.
    workspaces: HashSet<String>,
    /// Live adopted orphans, by pid.
    adopted: HashMap<i32, Orphan>,
}

/// Records leaders and the orphans adopted from their trees, and reaps them.
#[derive(Debug)]
pub struct Reaper {
    me: i32,
    session: i32,
    /// The cgroup (as `/proc/<pid>/cgroup` names it) whose children are
    /// workspace cgroups, when the launcher uses cgroups.
    cgroup_root: Option<PathBuf>,
    known: Mutex<Known>,
}

impl Reaper {
    /// A reaper for children whose workspace cgroups, if any, are the
    /// children of `cgroup_root` (as `/proc/<pid>/cgroup` names it).
    pub fn new(cgroup_root: Option<PathBuf>) -> Reaper {
        let session = nix::unistd::getsid(None).map_or(0, Pid::as_raw);
        Reaper { me: std::process::id() as i32, session, cgroup_root, known: Mutex::default() }
    }

    /// Runs `spawn` and records the pid it returns as a leader of
    /// `workspace`, whose process group it creates. Reaping waits meanwhile,
    /// so a leader is never mistaken for an orphan, even if it dies at once.
    ///
    /// # Errors
    /// Whatever `spawn` returns.
    pub fn spawn_leader<T>(
        &self,
        workspace: &str,
        spawn: impl FnOnce() -> std::io::Result<(T, u32)>,
    ) -> std::io::Result<T> {
        let mut known = self.known.lock().unwrap();
        let (value, pid) = spawn()?;
        let pid = pid as i32;
        known.leaders.insert(pid);
        known.workspaces.insert(workspace.to_string());
        let start_time = proc_info(pid).map_or(0, |p| p.start_time);
        known.groups.insert(pid, Group { workspace: workspace.to_string(), start_time });
        Ok(value)
    }

    /// Forgets a leader once its exit status has been collected; its group
    /// stays known while it has members.
    pub fn forget_leader(&self, pid: u32) {
        self.known.lock().unwrap().leaders.remove(&(pid as i32));
    }

    /// Looks at mcpvisor's own children once: notes the live orphans of
    /// workspace trees, reaps the dead ones. Returns how many it reaped.
    pub fn reap(&self) -> usize {
        let mut known = self.known.lock().unwrap();
        let kids = children(self.me);
        let mut reaped = 0;
        for &pid in &kids {
            if known.leaders.contains(&pid) {
                continue;
            }
            let Some(info) = proc_info(pid) else { continue };
            let Some(orphan) = self.attribute(&known, &info) else { continue };
            if info.zombie {
                if let Ok(status) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                    if status.pid().is_some() {
                        reaped += 1;
                    }
                }
                known.adopted.remove(&pid);
            } else {
                known.adopted.insert(pid, orphan);
            }
        }
        known.adopted.retain(|pid, _| kids.contains(pid));
        let Known { leaders, groups, .. } = &mut *known;
        groups.retain(|pgid, _| leaders.contains(pgid) || killpg(Pid::from_raw(*pgid), None).is_ok());
        reaped
    }

    /// Live orphans adopted from the tree of group `pgid` of `workspace`,
    /// as of the last [`Reaper::reap`].
    pub fn orphans(&self, workspace: &str, pgid: i32) -> Vec<i32> {
        let known = self.known.lock().unwrap();
        known
            .adopted
            .iter()
            .filter(|(_, o)| o.workspace == workspace && o.group.is_none_or(|g| g == pgid))
            .map(|(pid, _)| *pid)
            .collect()
    }

    fn attribute(&self, known: &Known, info: &ProcInfo) -> Option<Orphan> {
        if let Some(orphan) = known.adopted.get(&info.pid).filter(|o| o.start_time == info.start_time) {
            return Some(orphan.clone());
        }
        if let Some(group) = known.groups.get(&info.pgrp).filter(|g| info.start_time >= g.start_time) {
            return Some(Orphan {
                workspace: group.workspace.clone(),
                group: Some(info.pgrp),
                start_time: info.start_time,
            });
        }
        let orphan = |workspace| Orphan { workspace, group: None, start_time: info.start_time };
        if let Some(workspace) = self.cgroup_workspace(info.pid) {
            return Some(orphan(workspace));
        }
        // A leader of another launcher in this process has its own group in
        // mcpvisor's session: only what left both is looked up by name.
        if info.zombie || (info.session == self.session && info.pgrp == info.pid) {
            return None;
        }
        workspace_of(info.pid).filter(|w| known.workspaces.contains(w)).map(orphan)
    }

    /// The workspace cgroup `pid` is in, if it is one below the cgroup root.
    fn cgroup_workspace(&self, pid: i32) -> Option<String> {
        let root = self.cgroup_root.as_ref()?;
        let path = super::cgroup::unified_path_of(pid)?;
        let workspace = path.strip_prefix(root).ok()?.components().next()?;
        Some(workspace.as_os_str().to_string_lossy().into_owned())
    }

    /// Reaps on every SIGCHLD (at most one pass per 20 ms) and every
    /// second, until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let Ok(mut sigchld) = signal(SignalKind::child()) else {
            tracing::warn!("cannot listen for SIGCHLD; adopted orphans are reaped once a second");
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sigchld.recv() => {}
                _ = tick.tick() => {}
            }
            // /proc reads block: keep them off the async workers.
            let reaper = self.clone();
            let _ = tokio::task::spawn_blocking(move || reaper.reap()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs every adopted orphan (with its descendants) and what is left
    /// of the known groups, for the end of a shutdown after every child was
    /// stopped; repeats until none is left or `within` passed. Killing an
    /// adopted shell orphans the child it waited for, which is adopted next.
    /// Returns how many processes it killed.
    pub fn kill_orphans(&self, within: Duration) -> usize {
        let deadline = std::time::Instant::now() + within;
        let mut killed = 0;
        loop {
            let reaped = self.reap();
            let (orphans, groups): (Vec<i32>, Vec<i32>) = {
                let known = self.known.lock().unwrap();
                (known.adopted.keys().copied().collect(), known.groups.keys().copied().collect())
            };
            if orphans.is_empty() && groups.is_empty() && reaped == 0 {
                return killed;
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!(orphans = orphans.len(), groups = groups.len(), "orphans left after shutdown");
                return killed;
            }
            for process in walk(&orphans) {
                killed += usize::from(kill(Pid::from_raw(process.pid), Signal::SIGKILL).is_ok());
            }
            for pgid in groups {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Makes this process the subreaper of its descendants (`PR_SET_CHILD_SUBREAPER`).
///
/// # Errors
/// The kernel refused (not Linux 3.4+).
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}
