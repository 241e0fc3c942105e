//! The system check behind `GET /api/debug/validate` and `mcpvisor doctor`
//! (docs/reference.md §10): what the daemon believes, held against what the
//! system shows.
//!
//! [`check`] takes what the daemon believes ([`Beliefs`]: the published
//! records, `runtime.json`'s entries, the live port allocations, its
//! folders, whether git can read the history) and looks at the system:
//! `/proc`, `ports.json` on disk, the ports themselves, the workspaces
//! folder. It reads `/proc` and binds ports, so callers run it on a
//! blocking thread. It changes nothing: each issue says what to do in its
//! `hint`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::process::runtime::RuntimeEntry;
use crate::process::tree::{proc_info, ProcTable};
use crate::state::Status;

/// How bad an issue is: `doctor` exits 1 on any `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Error,
    Warning,
}

/// One thing the daemon believes that the system does not bear out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// `process`, `ports`, `workspaces` or `history`.
    pub component: String,
    pub workspace: Option<String>,
    /// Lowercase: what is wrong, with the pid, port or path.
    pub issue: String,
    pub severity: Severity,
    /// What to do about it.
    pub hint: String,
}

/// The answer of `GET /api/debug/validate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// No issue of severity `error`.
    pub ok: bool,
    pub issues: Vec<Issue>,
}

impl Report {
    pub fn new(issues: Vec<Issue>) -> Report {
        Report { ok: !issues.iter().any(|i| i.severity == Severity::Error), issues }
    }
}

/// What the daemon believes of one workspace: its published record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Believed {
    pub name: String,
    pub status: Status,
    pub pid: Option<u32>,
    pub pgid: Option<i32>,
    pub port: Option<u16>,
}

/// Everything [`check`] holds against the system.
#[derive(Debug, Clone)]
pub struct Beliefs {
    pub workspaces: Vec<Believed>,
    /// `runtime.json`'s entries as the daemon holds them.
    pub runtime: BTreeMap<String, RuntimeEntry>,
    /// The live port allocations.
    pub allocations: BTreeMap<String, u16>,
    /// `state/ports.json`.
    pub ports_file: PathBuf,
    pub workspaces_dir: PathBuf,
    /// Whether git can read `state/history/`, and if not, git's words.
    pub history: Result<(), String>,
}

/// Every issue found, in a stable order.
pub fn check(beliefs: &Beliefs) -> Vec<Issue> {
    let mut issues = Vec::new();
    issues.extend(children(beliefs));
    issues.extend(strays(beliefs, &ProcTable::scan()));
    issues.extend(ports(beliefs));
    issues.extend(ports_file(beliefs));
    issues.extend(workspaces_dir(beliefs));
    if let Err(message) = &beliefs.history {
        issues.push(Issue {
            component: "history".into(),
            workspace: None,
            issue: format!("git cannot read the history repository: {message}"),
            severity: Severity::Error,
            hint: "move state/history aside; mcpvisor starts a new repository with the next change".into(),
        });
    }
    issues
}

fn issue(component: &str, workspace: &str, issue: String, severity: Severity, hint: &str) -> Issue {
    Issue { component: component.into(), workspace: Some(workspace.to_string()), issue, severity, hint: hint.into() }
}

/// Whether the daemon believes a child of this workspace is alive.
fn live(believed: &Believed) -> bool {
    matches!(believed.status, Status::Running | Status::Starting)
}

/// A workspace marked running whose pid is gone, a zombie, or another
/// process than the one started (its start time differs).
fn children(beliefs: &Beliefs) -> Vec<Issue> {
    let hint = "restart the workspace (mcpvisor restart NAME); if it persists, report a bug";
    let mut issues = Vec::new();
    for believed in beliefs.workspaces.iter().filter(|b| live(b)) {
        let Some(pid) = believed.pid else { continue };
        let name = &believed.name;
        let status = believed.status;
        let problem = match proc_info(pid as i32) {
            None => format!("marked {status} with pid {pid}, but that process is gone"),
            Some(info) if info.zombie => format!("marked {status}, but pid {pid} is a zombie nobody reaped"),
            Some(info) => match beliefs.runtime.get(name) {
                Some(entry) if entry.pid == pid as i32 && entry.start_time != info.start_time => format!(
                    "marked {status} with pid {pid}, but that pid is a different process (started at tick {}, not {})",
                    info.start_time, entry.start_time
                ),
                _ => continue,
            },
        };
        issues.push(issue("process", name, problem, Severity::Error, hint));
    }
    issues
}

/// Processes carrying a workspace's `MCPVISOR_WORKSPACE` outside its tree:
/// a second live child (a process group leader of its own) or an orphan.
fn strays(beliefs: &Beliefs, table: &ProcTable) -> Vec<Issue> {
    let known: HashMap<&str, &Believed> = beliefs.workspaces.iter().map(|b| (b.name.as_str(), b)).collect();
    let me = std::process::id() as i32;
    let mut issues = Vec::new();
    let mut pids: Vec<&i32> = table.procs.keys().collect();
    pids.sort();
    for &pid in pids {
        let info = table.procs[&pid];
        if pid == me {
            continue;
        }
        let Some(name) = crate::process::tree::workspace_of(pid) else { continue };
        let Some(believed) = known.get(name.as_str()) else { continue };
        let child = believed.pid.filter(|_| live(believed)).map(|p| p as i32);
        let in_tree = child == Some(pid)
            || believed.pgid.is_some_and(|g| g == info.pgrp && live(believed))
            || child.is_some_and(|c| table.descendants(&[c]).contains(&pid) || same_cgroup(c, pid));
        if in_tree {
            continue;
        }
        let (problem, hint) = if info.pgrp == pid {
            (
                format!("a second live child: pid {pid} leads its own process group, besides the child {child:?}"),
                "kill its group (kill -- -PID); only one child may run per workspace",
            )
        } else {
            (
                format!("orphan: pid {pid} carries MCPVISOR_WORKSPACE={name} outside the workspace's tree"),
                "kill it (kill PID); a restart of the daemon sweeps such leftovers too",
            )
        };
        issues.push(issue("process", &name, problem, Severity::Error, hint));
    }
    issues
}

/// Whether two processes share a cgroup other than the root (cgroup isolation).
fn same_cgroup(a: i32, b: i32) -> bool {
    let read = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok();
    match (read(a), read(b)) {
        (Some(a), Some(b)) => a == b && a.contains("/mcpvisor/"),
        _ => false,
    }
}

/// A port allocated to a workspace whose child does not hold it, held by
/// another process.
fn ports(beliefs: &Beliefs) -> Vec<Issue> {
    let mut issues = Vec::new();
    for (name, &port) in &beliefs.allocations {
        let ours = beliefs.workspaces.iter().any(|b| b.name == *name && live(b) && b.port == Some(port));
        if ours || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            continue;
        }
        issues.push(issue(
            "ports",
            name,
            format!("port {port} is allocated to this workspace but held by another process"),
            Severity::Error,
            "stop that process, or let mcpvisor pick another port: it re-allocates at the next start",
        ));
    }
    issues
}

/// `ports.json` on disk disagreeing with the live allocations.
fn ports_file(beliefs: &Beliefs) -> Vec<Issue> {
    #[derive(Deserialize)]
    struct PortsFile {
        allocations: BTreeMap<String, u16>,
    }
    let path = beliefs.ports_file.display();
    let on_disk = match std::fs::read(&beliefs.ports_file) {
        Ok(bytes) => serde_json::from_slice::<PortsFile>(&bytes).map(|f| f.allocations).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && beliefs.allocations.is_empty() => return Vec::new(),
        Err(e) => Err(e.to_string()),
    };
    let problem = match on_disk {
        Ok(on_disk) if on_disk == beliefs.allocations => return Vec::new(),
        Ok(on_disk) => format!("{path} says {on_disk:?}, the daemon allocated {:?}", beliefs.allocations),
        Err(e) => format!("{path} cannot be read: {e}"),
    };
    vec![Issue {
        component: "ports".into(),
        workspace: None,
        issue: problem,
        severity: Severity::Error,
        hint: "another process wrote the file, or a write failed; the daemon writes it again at the next allocation"
            .into(),
    }]
}

/// The workspaces folder cannot be listed.
fn workspaces_dir(beliefs: &Beliefs) -> Vec<Issue> {
    match std::fs::read_dir(&beliefs.workspaces_dir) {
        Ok(_) => Vec::new(),
        Err(e) => vec![Issue {
            component: "workspaces".into(),
            workspace: None,
            issue: format!("the workspaces folder {} cannot be read: {e}", beliefs.workspaces_dir.display()),
            severity: Severity::Error,
            hint: "restore the folder or its permissions; running children keep running meanwhile".into(),
        }],
    }
}

#[cfg(test)]
mod tests {
    //! Each check provoked with real processes, ports and files.

    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use super::*;

    fn beliefs(dir: &std::path::Path) -> Beliefs {
        Beliefs {
            workspaces: Vec::new(),
            runtime: BTreeMap::new(),
            allocations: BTreeMap::new(),
            ports_file: dir.join("ports.json"),
            workspaces_dir: dir.to_path_buf(),
            history: Ok(()),
        }
    }

    fn running(name: &str, pid: u32) -> Believed {
        Believed { name: name.into(), status: Status::Running, pid: Some(pid), pgid: Some(pid as i32), port: None }
    }

    fn sleeper(workspace: &str, own_group: bool) -> Child {
        let mut command = Command::new("sleep");
        command.arg("30").env("MCPVISOR_WORKSPACE", workspace).stdin(Stdio::null());
        if own_group {
            command.process_group(0);
        }
        command.spawn().unwrap()
    }

    fn issues_of(issues: &[Issue], workspace: &str) -> Vec<String> {
        issues.iter().filter(|i| i.workspace.as_deref() == Some(workspace)).map(|i| i.issue.clone()).collect()
    }

    #[test]
    fn a_running_workspace_whose_pid_is_gone_a_zombie_or_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut gone = Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let zombie = Command::new("true").spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !proc_info(zombie.id() as i32).is_some_and(|p| p.zombie) {
            assert!(std::time::Instant::now() < deadline, "the child never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        let me = std::process::id();
        let mut beliefs = beliefs(dir.path());
        beliefs.workspaces = vec![running("gone", gone.id()), running("zombie", zombie.id()), running("reused", me)];
        let entry = RuntimeEntry { pid: me as i32, pgid: me as i32, start_time: 1, port: 1, tree: vec![] };
        beliefs.runtime.insert("reused".into(), entry);
        let issues = children(&beliefs);
        assert!(issues_of(&issues, "gone")[0].contains("is gone"), "{issues:?}");
        assert!(issues_of(&issues, "zombie")[0].contains("zombie"), "{issues:?}");
        assert!(issues_of(&issues, "reused")[0].contains("different process"), "{issues:?}");
        let mut zombie = zombie;
        zombie.wait().unwrap();
    }

    #[test]
    fn an_orphan_and_a_second_child_carrying_the_workspace_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = sleeper("doctor-two", true);
        let mut second = sleeper("doctor-two", true);
        let mut orphan = sleeper("doctor-orphan", false);
        let mut beliefs = beliefs(dir.path());
        let stopped =
            Believed { name: "doctor-orphan".into(), status: Status::Stopped, pid: None, pgid: None, port: None };
        beliefs.workspaces = vec![running("doctor-two", child.id()), stopped];
        let issues = strays(&beliefs, &ProcTable::scan());
        let two = issues_of(&issues, "doctor-two");
        assert_eq!(two.len(), 1, "{issues:?}");
        assert!(two[0].contains("second live child") && two[0].contains(&second.id().to_string()), "{two:?}");
        let orphans = issues_of(&issues, "doctor-orphan");
        assert!(orphans[0].starts_with("orphan") && orphans[0].contains(&orphan.id().to_string()), "{orphans:?}");
        for process in [&mut child, &mut second, &mut orphan] {
            process.kill().unwrap();
            process.wait().unwrap();
        }
    }

    #[test]
    fn a_port_held_by_a_foreign_process_and_a_ports_file_that_disagrees() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = foreign.local_addr().unwrap().port();
        let mut beliefs = beliefs(dir.path());
        beliefs.allocations.insert("held".into(), port);
        std::fs::write(&beliefs.ports_file, r#"{"version":1,"range":[1,2],"allocations":{"held":1}}"#).unwrap();
        let issues = ports(&beliefs);
        assert!(issues_of(&issues, "held")[0].contains("held by another process"), "{issues:?}");
        let file = ports_file(&beliefs);
        assert_eq!(file.len(), 1, "{file:?}");
        assert!(file[0].issue.contains("the daemon allocated"), "{file:?}");

        drop(foreign);
        let agreeing = format!(r#"{{"version":1,"range":[1,2],"allocations":{{"held":{port}}}}}"#);
        std::fs::write(&beliefs.ports_file, agreeing).unwrap();
        assert!(ports(&beliefs).is_empty() && ports_file(&beliefs).is_empty());
    }

    #[test]
    fn an_unreadable_workspaces_folder_and_history_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut beliefs = beliefs(dir.path());
        assert!(check(&beliefs).is_empty(), "{:?}", check(&beliefs));
        beliefs.workspaces_dir = dir.path().join("missing");
        beliefs.history = Err("fatal: not a git repository".into());
        let report = Report::new(check(&beliefs));
        assert!(!report.ok);
        let components: Vec<&str> = report.issues.iter().map(|i| i.component.as_str()).collect();
        assert_eq!(components, ["workspaces", "history"]);
    }
}
