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
    groups: HashMap<i32, Vec<i32>>,
    /// Orphans mcpvisor adopted, by the workspace their environment names.
    /// Only non-leader children are read, once per scan: a leader belongs
    /// to its own group anyway.
    adopted: HashMap<String, Vec<i32>>,
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
                table.groups.entry(info.pgrp).or_default().push(pid);
                table.procs.insert(pid, info);
            }
        }
        let me = std::process::id() as i32;
        let leaders = super::reaper::leaders();
        for &pid in table.children.get(&me).into_iter().flatten() {
            if !leaders.contains(&pid) {
                if let Some(workspace) = workspace_of(pid) {
                    table.adopted.entry(workspace).or_default().push(pid);
                }
            }
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

    /// Orphans adopted from `workspace`'s tree, with their descendants.
    pub fn adopted_tree(&self, workspace: &str) -> Vec<i32> {
        let mut stack: Vec<i32> = self.adopted.get(workspace).cloned().unwrap_or_default();
        let mut seen = HashSet::new();
        while let Some(pid) = stack.pop() {
            if seen.insert(pid) {
                stack.extend(self.children.get(&pid).into_iter().flatten());
            }
        }
        seen.into_iter().collect()
    }

    /// Adopted orphans, grouped by workspace.
    pub fn adopted_pids(&self) -> impl Iterator<Item = &[i32]> {
        self.adopted.values().map(Vec::as_slice)
    }

    /// The live processes of a workspace's tree (see the module comment).
    ///
    /// Processes mcpvisor adopted for this workspace are noted for the
    /// reaper, which reaps only those.
    pub fn tree(&self, pgid: i32, workspace: &str) -> Vec<i32> {
        let mut roots: Vec<i32> = self.groups.get(&pgid).cloned().unwrap_or_default();
        if let Some(adopted) = self.adopted.get(workspace) {
            super::reaper::note_adopted(adopted);
            roots.extend(adopted);
        }
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

/// The workspace a process's environment names (`MCPVISOR_WORKSPACE`).
pub fn workspace_of(pid: i32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"MCPVISOR_WORKSPACE="))
        .map(|name| String::from_utf8_lossy(name).into_owned())
}
