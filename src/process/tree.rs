//! Processes as `/proc` shows them, read through `procfs`.
//!
//! Two ways to look. [`walk`] follows trees down through
//! `/proc/<pid>/task/*/children`, so measuring or signalling a workspace
//! reads only its own processes, never one file per process on the host.
//! [`ProcTable::scan`] reads every process once, for the one place that
//! needs the whole host: the sweep after a crash, which looks for members of
//! a dead daemon's process groups.
//!
//! Nothing here keeps state or writes anywhere: callers own what they learn.

use std::collections::{HashMap, HashSet};

use procfs::process::Process;

/// One process as `/proc/<pid>/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Start time in clock ticks after boot: with the pid, it names a
    /// process uniquely even after the pid is reused.
    pub start_time: u64,
    pub zombie: bool,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, in pages.
    pub rss_pages: u64,
}

impl ProcInfo {
    /// Resident set size in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.rss_pages * page_size()
    }
}

/// Reads `/proc/<pid>/stat`; `None` if the process is gone.
///
/// One open and one read: [`Process::new`] would open the process's folder
/// first, and the sampler reads every member of every tree this way.
pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    use procfs::FromRead;
    let stat = procfs::process::Stat::from_file(format!("/proc/{pid}/stat")).ok()?;
    Some(info(pid, &stat))
}

fn info_of(process: &Process) -> Option<ProcInfo> {
    Some(info(process.pid, &process.stat().ok()?))
}

fn info(pid: i32, stat: &procfs::process::Stat) -> ProcInfo {
    ProcInfo {
        pid,
        ppid: stat.ppid,
        pgrp: stat.pgrp,
        session: stat.session,
        start_time: stat.starttime,
        zombie: matches!(stat.state, 'Z' | 'X'),
        cpu_ticks: stat.utime + stat.stime,
        rss_pages: stat.rss,
    }
}

/// The children of every thread of `pid`, from `/proc/<pid>/task/*/children`;
/// empty if `pid` is gone.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = Process::new(pid).and_then(|p| p.tasks()) else {
        return Vec::new();
    };
    tasks.flatten().filter_map(|task| task.children().ok()).flatten().map(|child| child as i32).collect()
}

/// The live processes among `roots` and their descendants, each once.
///
/// A process that exits or forks during the walk may be missed or
/// included; callers that need an empty tree ask again.
pub fn walk(roots: &[i32]) -> Vec<ProcInfo> {
    let mut stack = roots.to_vec();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        if let Some(info) = proc_info(pid).filter(|p| !p.zombie) {
            stack.extend(children(pid));
            out.push(info);
        }
    }
    out
}

/// The workspace a process's environment names (`MCPVISOR_WORKSPACE`).
pub fn workspace_of(pid: i32) -> Option<String> {
    let env = Process::new(pid).ok()?.environ().ok()?;
    env.get(std::ffi::OsStr::new("MCPVISOR_WORKSPACE")).map(|name| name.to_string_lossy().into_owned())
}

/// Bytes per memory page.
pub fn page_size() -> u64 {
    procfs::page_size()
}

/// Clock ticks per second, the unit of [`ProcInfo::cpu_ticks`].
pub fn ticks_per_second() -> u64 {
    procfs::ticks_per_second()
}

/// Every live process of the host, read once.
#[derive(Debug, Default)]
pub struct ProcTable {
    pub procs: HashMap<i32, ProcInfo>,
    children: HashMap<i32, Vec<i32>>,
    groups: HashMap<i32, Vec<i32>>,
}

impl ProcTable {
    /// Reads every `/proc/<pid>/stat`; zombies are left out. A process
    /// whose parent exits during the scan may be missed.
    pub fn scan() -> ProcTable {
        let mut table = ProcTable::default();
        let Ok(all) = procfs::process::all_processes() else {
            return table;
        };
        for process in all.flatten() {
            // Each `Process` holds a descriptor: read it and let it go.
            let Some(info) = info_of(&process).filter(|p| !p.zombie) else { continue };
            table.children.entry(info.ppid).or_default().push(info.pid);
            table.groups.entry(info.pgrp).or_default().push(info.pid);
            table.procs.insert(info.pid, info);
        }
        table
    }

    /// `roots` and every live descendant of them.
    pub fn descendants(&self, roots: &[i32]) -> Vec<i32> {
        let mut stack: Vec<i32> = roots.iter().copied().filter(|p| self.procs.contains_key(p)).collect();
        let mut seen = HashSet::new();
        while let Some(pid) = stack.pop() {
            if seen.insert(pid) {
                stack.extend(self.children.get(&pid).into_iter().flatten());
            }
        }
        seen.into_iter().collect()
    }

    /// Live members of process group `pgid`.
    pub fn group(&self, pgid: i32) -> &[i32] {
        self.groups.get(&pgid).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_finds_a_grandchild_and_scan_agrees() {
        let mut shell = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30 & wait"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let pid = shell.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let tree = loop {
            let tree = walk(&[pid]);
            if tree.len() == 2 || std::time::Instant::now() > deadline {
                break tree;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(tree.len(), 2, "{tree:?}");
        assert!(children(me).contains(&pid));
        let sleep = tree.iter().find(|p| p.pid != pid).unwrap();
        assert_eq!(sleep.ppid, pid);
        let table = ProcTable::scan();
        let mut from_scan = table.descendants(&[pid]);
        from_scan.sort_unstable();
        let mut from_walk: Vec<i32> = tree.iter().map(|p| p.pid).collect();
        from_walk.sort_unstable();
        assert_eq!(from_scan, from_walk);
        assert!(table.group(proc_info(pid).unwrap().pgrp).contains(&pid));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(sleep.pid), nix::sys::signal::Signal::SIGKILL);
        shell.wait().unwrap();
        assert!(walk(&[pid]).is_empty());
    }
}
