//! mcpvisor as child subreaper: orphans of a workspace's tree (a daemon
//! that double-forked, say) are reparented to mcpvisor instead of init, so
//! they stay visible and killable, and are reaped here once they die.
//!
//! Only processes known to be adopted from a workspace tree are reaped:
//! mcpvisor's own children belong to whoever spawned them (tokio's process
//! driver, `std::process::Command`), and reaping them would steal their exit
//! status.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use super::tree::{proc_info, ProcTable};

/// Children mcpvisor spawned itself, and processes it adopted.
#[derive(Debug, Default)]
pub struct Reaping {
    leaders: HashSet<i32>,
    adopted: HashSet<i32>,
}

static REAPING: Mutex<Option<Reaping>> = Mutex::new(None);

/// Runs `spawn` with the reaper paused, registering the pid it returns as a
/// leader: a leader is never mistaken for an adopted orphan, even if it
/// dies at once.
pub fn spawn_leader<T>(spawn: impl FnOnce() -> std::io::Result<(T, u32)>) -> std::io::Result<T> {
    let mut reaping = REAPING.lock().unwrap();
    let (value, pid) = spawn()?;
    reaping.get_or_insert_with(Reaping::default).leaders.insert(pid as i32);
    Ok(value)
}

/// Forgets a leader once its exit status has been collected.
pub fn forget_leader(pid: u32) {
    if let Some(reaping) = REAPING.lock().unwrap().as_mut() {
        reaping.leaders.remove(&(pid as i32));
    }
}

/// Makes this process the subreaper of its descendants (`PR_SET_CHILD_SUBREAPER`).
///
/// # Errors
/// The kernel refused (not Linux 3.4+).
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Remembers pids adopted from a workspace tree, for the reaper; leaders
/// are left out.
pub fn note_adopted(pids: &[i32]) {
    if pids.is_empty() {
        return;
    }
    let mut reaping = REAPING.lock().unwrap();
    let reaping = reaping.get_or_insert_with(Reaping::default);
    for pid in pids {
        if !reaping.leaders.contains(pid) {
            reaping.adopted.insert(*pid);
        }
    }
}

/// Reaps adopted processes on every SIGCHLD and every second, until `cancel`.
pub async fn run_reaper(cancel: CancellationToken) {
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
        // /proc scans block: keep them off the async workers.
        let _ = tokio::task::spawn_blocking(reap_adopted).await;
        // Signals that arrive meanwhile coalesce: at most one /proc scan per 50 ms.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGKILLs every orphan adopted from the trees of `workspaces`, with its
/// descendants, for the end of a shutdown after every actor has stopped its
/// child. It repeats until none is left (at most 2 s): killing an adopted
/// shell orphans the child it was waiting for, which is adopted in turn.
pub fn kill_adopted(workspaces: &[String]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut empty_scans = 0;
    loop {
        let table = ProcTable::scan();
        let left: Vec<i32> = workspaces.iter().flat_map(|w| table.adopted_tree(w)).collect();
        empty_scans = if left.is_empty() { empty_scans + 1 } else { 0 };
        // Two empty scans in a row: one scan of /proc is not atomic.
        if empty_scans == 2 || std::time::Instant::now() >= deadline {
            return;
        }
        for pid in left {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pids of the children mcpvisor spawned itself.
pub fn leaders() -> HashSet<i32> {
    REAPING.lock().unwrap().as_ref().map(|r| r.leaders.clone()).unwrap_or_default()
}

fn reap_adopted() {
    let me = std::process::id() as i32;
    // A scan notes live adopted orphans first, while their environment
    // still names their workspace; only non-leaders are looked at.
    let table = ProcTable::scan();
    for pids in table.adopted_pids() {
        note_adopted(pids);
    }
    let mut reaping = REAPING.lock().unwrap();
    let Some(reaping) = reaping.as_mut() else { return };
    reaping.adopted.retain(|&pid| match proc_info(pid) {
        Some(info) if info.zombie && info.ppid == me => {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
            false
        }
        Some(info) => info.ppid == me,
        None => false,
    });
}
