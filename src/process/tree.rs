//! A workspace's whole process tree, read from `/proc`.
//!
//! A tree is the child's process group, every descendant of its members
//! (also those that left the group with `setsid`), and processes adopted by
//! mcpvisor as subreaper whose environment names the workspace
//! (`MCPVISOR_WORKSPACE`, which every child gets) — so a double-forking
//! child cannot escape.

use std::collections::{HashMap, HashSet};


/// One process as `/proc/<pid>/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    /// Start time in clock ticks after boot: with the pid, it names a
    /// process uniquely even after the pid is reused.
    pub start_time: u64,
    pub zombie: bool,
}

/// Reads `/proc/<pid>/stat`; `None` if the process is gone.
pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields follow the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    Some(ProcInfo {
        pid,
        zombie: matches!(*fields.first()?, "Z" | "X"),
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Every live process, as one consistent-enough scan of `/proc`.
#[derive(Debug, Default)]
pub struct ProcTable {
    pub procs: HashMap<i32, ProcInfo>,
    children: HashMap<i32, Vec<i32>>,
}

impl ProcTable {
    pub fn scan() -> ProcTable {
        let mut table = ProcTable::default();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return table;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(info) = proc_info(pid).filter(|i| !i.zombie) {
                table.children.entry(info.ppid).or_default().push(pid);
                table.procs.insert(pid, info);
            }
        }
        table
    }

    /// The live processes of a workspace's tree (see the module comment).
    ///
    /// Processes mcpvisor adopted for this workspace are noted for the
    /// reaper, which reaps only those.
    pub fn tree(&self, pgid: i32, workspace: &str) -> Vec<i32> {
        let me = std::process::id() as i32;
        let mut roots: Vec<i32> = self.procs.values().filter(|p| p.pgrp == pgid).map(|p| p.pid).collect();
        let adopted: Vec<i32> = self
            .children
            .get(&me)
            .into_iter()
            .flatten()
            .copied()
            .filter(|pid| environ_names(*pid, workspace))
            .collect();
        super::reaper::note_adopted(&adopted);
        roots.extend(adopted);
        let mut seen = HashSet::new();
        while let Some(pid) = roots.pop() {
            if seen.insert(pid) {
                roots.extend(self.children.get(&pid).into_iter().flatten());
            }
        }
        let mut tree: Vec<i32> = seen.into_iter().collect();
        tree.sort_unstable();
        tree
    }
}

/// Whether the process's environment has `MCPVISOR_WORKSPACE=<workspace>`.
fn environ_names(pid: i32, workspace: &str) -> bool {
    let needle = format!("MCPVISOR_WORKSPACE={workspace}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
}
