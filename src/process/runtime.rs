//! `state/runtime.json`: what runs, for the sweep after a crash (docs/reference.md §4).
//!
//! Per workspace it records the child's pid, pgid and start time, its port,
//! and the sampled tree (pid and start time of each member). Matching pid
//! *and* start time means a pid reused by an unrelated process is never
//! touched. Writes are atomic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::tree::{proc_info, ProcTable};
use crate::fsutil::StateFile;

/// A process named by pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessId {
    /// The process as it runs now, if `pid` is alive.
    pub fn of(pid: i32) -> Option<ProcessId> {
        proc_info(pid).filter(|p| !p.zombie).map(|p| ProcessId { pid, start_time: p.start_time })
    }

    /// Whether this very process (not a reuse of its pid) still runs.
    pub fn alive(&self) -> bool {
        proc_info(self.pid).is_some_and(|p| !p.zombie && p.start_time == self.start_time)
    }
}

/// One workspace's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeEntry {
    pub pid: i32,
    pub pgid: i32,
    pub start_time: u64,
    pub port: u16,
    /// Other members of the tree, as last sampled.
    #[serde(default)]
    pub tree: Vec<ProcessId>,
}

impl RuntimeEntry {
    fn processes(&self) -> impl Iterator<Item = ProcessId> + '_ {
        std::iter::once(ProcessId { pid: self.pid, start_time: self.start_time }).chain(self.tree.iter().copied())
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct RuntimeFileBody {
    version: u32,
    /// The folders whose child cgroups are workspace cgroups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cgroups: Vec<PathBuf>,
    workspaces: BTreeMap<String, RuntimeEntry>,
}

/// The runtime file, shared by actors (spawn, exit) and the sampler
/// (trees); clones write the same file.
///
/// Changes are written behind, by a thread of its own: a write fsyncs,
/// which takes milliseconds, and a restart must not wait for it (nor a
/// tokio worker block on it). The thread writes the latest body, so a burst
/// of changes (a start storm) costs one write or two. The cgroup folders,
/// which the guard needs most, are written before [`RuntimeFile::new`]
/// returns.
#[derive(Debug, Clone)]
pub struct RuntimeFile {
    file: Arc<StateFile>,
    body: Arc<Mutex<RuntimeFileBody>>,
    /// Wakes the writer; holds one wake-up at most, since a pending write
    /// takes every change made before it runs.
    changed: std::sync::mpsc::SyncSender<()>,
}

impl RuntimeFile {
    /// Starts with no workspace, naming the folders whose child cgroups are
    /// workspace cgroups (empty without cgroups); call [`sweep`] on the old
    /// file first. A failed write wakes `retry` (see [`RuntimeFile::flush`]).
    pub fn new(state_dir: &Path, cgroups: Vec<PathBuf>, retry: Arc<tokio::sync::Notify>) -> RuntimeFile {
        let body = RuntimeFileBody { version: 1, cgroups, workspaces: BTreeMap::new() };
        let file = Arc::new(StateFile::new(state_dir.join("runtime.json"), retry));
        let (changed, wake) = std::sync::mpsc::sync_channel::<()>(1);
        let runtime = RuntimeFile { file, body: Arc::new(Mutex::new(body)), changed };
        runtime.persist(&runtime.body.lock().unwrap());
        let (file, body) = (runtime.file.clone(), runtime.body.clone());
        std::thread::Builder::new()
            .name("mcpvisor-runtime-file".into())
            .spawn(move || {
                // Ends once every handle is gone.
                while wake.recv().is_ok() {
                    let bytes = serde_json::to_vec_pretty(&*body.lock().unwrap()).expect("runtime serializes");
                    file.write(&bytes);
                }
            })
            .expect("spawning the runtime file's writer");
        runtime
    }

    pub fn set(&self, workspace: &str, entry: RuntimeEntry) {
        self.body.lock().unwrap().workspaces.insert(workspace.to_string(), entry);
        self.write_behind();
    }

    /// Has the writer thread write the current body soon.
    fn write_behind(&self) {
        // Full: a write is pending, and it takes this change too.
        let _ = self.changed.try_send(());
    }

    /// Records a sampled tree; writes only when it changed.
    pub fn set_tree(&self, workspace: &str, tree: Vec<ProcessId>) {
        let mut body = self.body.lock().unwrap();
        if let Some(entry) = body.workspaces.get_mut(workspace).filter(|e| e.tree != tree) {
            entry.tree = tree;
            drop(body);
            self.write_behind();
        }
    }

    /// Every workspace's entry as held now (for the system check).
    pub fn entries(&self) -> BTreeMap<String, RuntimeEntry> {
        self.body.lock().unwrap().workspaces.clone()
    }

    pub fn remove(&self, workspace: &str) {
        let removed = self.body.lock().unwrap().workspaces.remove(workspace).is_some();
        if removed {
            self.write_behind();
        }
    }

    /// Writes `runtime.json` again when its last write failed; true when the
    /// file is current.
    pub fn flush(&self) -> bool {
        if !self.file.is_stale() {
            return true;
        }
        self.persist(&self.body.lock().unwrap())
    }

    fn persist(&self, body: &RuntimeFileBody) -> bool {
        self.file.write(&serde_json::to_vec_pretty(body).expect("runtime serializes"))
    }
}

/// What [`sweep`] did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Processes killed.
    pub killed: usize,
    /// The cgroup folders swept (each a parent of workspace cgroups).
    pub cgroups: Vec<PathBuf>,
}

/// Kills what a previous run left: every workspace cgroup below the
/// cgroup folders `state_dir/runtime.json` names and `cgroups` (removing
/// them), then every recorded process that still runs (pid and start time
/// match) with its descendants and group, waiting up to `within` for them
/// to go.
pub fn sweep(state_dir: &Path, cgroups: &[PathBuf], within: Duration) -> Swept {
    let body = std::fs::read(state_dir.join("runtime.json")).ok().and_then(|bytes| {
        let body = serde_json::from_slice::<RuntimeFileBody>(&bytes);
        body.inspect_err(|e| tracing::warn!("state/runtime.json is unreadable ({e}); only cgroups swept")).ok()
    });
    let body = body.unwrap_or_default();
    // Only mcpvisor's own cgroups for this state folder, whatever the file says.
    let mut roots: Vec<PathBuf> =
        body.cgroups.iter().filter(|c| super::cgroup::is_state_root(c, state_dir)).cloned().collect();
    roots.extend(cgroups.iter().filter(|c| !roots.contains(c)).cloned().collect::<Vec<_>>());
    let killed = super::cgroup::sweep(&roots, within) + sweep_recorded(&body, within);
    Swept { killed, cgroups: roots }
}

/// The process-group part of [`sweep`].
fn sweep_recorded(body: &RuntimeFileBody, within: Duration) -> usize {
    if body.workspaces.is_empty() {
        return 0;
    }
    // Freeze what is recorded and alive, so nothing forks while the tree is
    // read; then kill the recorded processes with their descendants (a
    // shell's in-flight child was never recorded) and the members of their
    // groups, also of a group whose leader died with the daemon.
    let alive: Vec<(String, i32, ProcessId)> = body
        .workspaces
        .iter()
        .flat_map(|(name, entry)| entry.processes().map(move |p| (name.clone(), entry.pgid, p)))
        .filter(|(_, _, p)| p.alive())
        .collect();
    for (_, _, process) in &alive {
        let _ = kill(Pid::from_raw(process.pid), Signal::SIGSTOP);
    }
    let table = ProcTable::scan();
    let roots: Vec<i32> = alive.iter().map(|(_, _, p)| p.pid).collect();
    let mut targets = table.descendants(&roots);
    for entry in body.workspaces.values() {
        targets.extend(group_members(&table, entry));
    }
    targets.sort_unstable();
    targets.dedup();
    let leftovers: Vec<ProcessId> = targets.iter().filter_map(|pid| ProcessId::of(*pid)).collect();
    for (workspace, pgid, process) in &alive {
        tracing::warn!(workspace = %workspace, pid = process.pid, pgid, "killing a leftover of a previous run");
    }
    for process in &leftovers {
        let _ = kill(Pid::from_raw(process.pid), Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + within;
    while leftovers.iter().any(ProcessId::alive) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    leftovers.len()
}

/// The members of `entry`'s process group that started with or after its
/// leader. A group id is not reused while the group has a member, but the
/// leader's pid may be, once the group emptied: then nothing is returned.
fn group_members<'a>(table: &'a ProcTable, entry: &'a RuntimeEntry) -> impl Iterator<Item = i32> + 'a {
    let reused = table.procs.get(&entry.pgid).is_some_and(|p| p.start_time != entry.start_time);
    table
        .group(entry.pgid)
        .iter()
        .copied()
        .filter(move |pid| !reused && table.procs.get(pid).is_some_and(|p| p.start_time >= entry.start_time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn on_disk(dir: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(dir.join("runtime.json")).unwrap()).unwrap()
    }

    /// Waits (up to 5 s) until the file on disk passes `test`.
    fn until(dir: &Path, test: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..500 {
            let body = on_disk(dir);
            if test(&body) {
                return body;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("runtime.json never got there: {}", on_disk(dir));
    }

    #[test]
    fn the_cgroups_are_on_disk_at_once_and_every_change_follows() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = RuntimeFile::new(dir.path(), vec![PathBuf::from("/sys/fs/cgroup/x")], Default::default());
        assert_eq!(on_disk(dir.path())["cgroups"], serde_json::json!(["/sys/fs/cgroup/x"]));
        let entry = |port| RuntimeEntry { pid: 42, pgid: 42, start_time: 7, port, tree: vec![] };
        // A burst: the last state lands, whatever was written between.
        for port in 1..=50 {
            runtime.set("a", entry(port));
        }
        until(dir.path(), |body| body["workspaces"]["a"]["port"] == 50);
        runtime.remove("a");
        until(dir.path(), |body| body["workspaces"].as_object().is_some_and(|w| w.is_empty()));
    }
}
