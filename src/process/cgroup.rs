//! A cgroup per workspace, where the host allows it (docs/reference.md §12).
//!
//! mcpvisor makes one cgroup v2 below its own, `.../mcpvisor/<state id>`,
//! and in it one cgroup per workspace. The state id is taken from the state
//! folder's path: one daemon holds a state folder at a time, so the startup
//! sweep kills what a crashed predecessor on the same folder left, never
//! the children of another daemon that shares the parent cgroup.
//!
//! Each child joins its workspace's cgroup between fork and exec, so every
//! process of its tree is a member whatever it does to its session, group
//! or environment. The kernel then answers the questions the process-group
//! tracking has to work out: `cgroup.procs` lists the tree, `cgroup.kill`
//! kills all of it (also what forks meanwhile), and `cgroup.events` says
//! `populated 0` once it is gone.
//!
//! `limits.memoryMb` becomes `memory.max` where the v2 memory controller can
//! be enabled below mcpvisor's cgroup; on a hybrid host whose memory
//! controller is mounted as v1, a parallel v1 memory cgroup per workspace
//! gets `memory.limit_in_bytes`. Without either, the supervisor samples.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use procfs::process::Process;
use sha2::Digest;
use thiserror::Error;

/// Why mcpvisor cannot use cgroups on this host.
#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted")]
    NoHierarchy,
    #[error("reading {what}: {source}")]
    Proc { what: &'static str, source: procfs::ProcError },
    #[error("creating cgroup {}: {source}", .path.display())]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cgroup {} has no cgroup.kill (Linux 5.14 or later is needed)", .0.display())]
    NoKill(PathBuf),
    #[error("writing {}: {source}", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// mcpvisor's cgroups for one state folder.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// The v2 cgroup whose children are the workspace cgroups.
    root: PathBuf,
    /// `root` as `/proc/<pid>/cgroup` names it, from the hierarchy's top.
    root_in_hierarchy: PathBuf,
    /// Whether workspace cgroups have the v2 memory controller.
    memory_v2: bool,
    /// The v1 memory cgroup whose children limit the workspaces' memory,
    /// where only v1 offers the memory controller.
    memory_v1: Option<PathBuf>,
}

impl Cgroups {
    /// Creates (or reuses) `.../mcpvisor/<state id>` below this process's
    /// own cgroup v2, with the memory controller where it can be had.
    ///
    /// # Errors
    /// No cgroup v2 hierarchy, no permission to create cgroups there (not
    /// root, no delegation), or a kernel without `cgroup.kill`.
    pub fn setup(state_dir: &Path) -> Result<Cgroups, CgroupError> {
        let me = Process::myself().map_err(|source| CgroupError::Proc { what: "/proc/self", source })?;
        let mounts = me.mountinfo().map_err(|source| CgroupError::Proc { what: "/proc/self/mountinfo", source })?;
        let groups = me.cgroups().map_err(|source| CgroupError::Proc { what: "/proc/self/cgroup", source })?;
        let id = state_id(state_dir);
        let own_v2 = groups.0.iter().find(|g| g.hierarchy == 0).ok_or(CgroupError::NoHierarchy)?;
        let mount = mounts.iter().find(|m| m.fs_type == "cgroup2").ok_or(CgroupError::NoHierarchy)?;
        let own = mounted_path(&mount.mount_point, &mount.root, &own_v2.pathname);
        let parent = own.join("mcpvisor");
        let root = parent.join(&id);
        create(&root)?;
        if !root.join("cgroup.kill").exists() {
            let _ = std::fs::remove_dir(&root);
            let _ = std::fs::remove_dir(&parent);
            return Err(CgroupError::NoKill(root));
        }
        let memory_v2 = enable_memory(&parent) && enable_memory(&root);
        let memory_v1 = if memory_v2 {
            None
        } else {
            let own_v1 = groups.0.iter().find(|g| g.controllers.iter().any(|c| c == "memory"));
            let mount = mounts.iter().find(|m| m.fs_type == "cgroup" && m.super_options.contains_key("memory"));
            // Made when a workspace has a memory limit.
            own_v1.zip(mount).map(|(own, mount)| {
                mounted_path(&mount.mount_point, &mount.root, &own.pathname).join("mcpvisor").join(&id)
            })
        };
        let root_in_hierarchy = Path::new("/").join(own_v2.pathname.trim_start_matches('/')).join("mcpvisor").join(&id);
        Ok(Cgroups { root, root_in_hierarchy, memory_v2, memory_v1 })
    }

    /// The folders whose children are workspace cgroups, for the sweep.
    pub fn roots(&self) -> Vec<PathBuf> {
        std::iter::once(self.root.clone()).chain(self.memory_v1.clone()).collect()
    }

    /// The v2 root as `/proc/<pid>/cgroup` names it.
    pub fn root_in_hierarchy(&self) -> &Path {
        &self.root_in_hierarchy
    }

    /// Creates (or reuses) the cgroup of `workspace`, with its memory limit.
    ///
    /// # Errors
    /// The cgroup cannot be created or its memory limit cannot be written.
    pub fn workspace(&self, workspace: &str, memory_mb: Option<u64>) -> Result<WorkspaceCgroup, CgroupError> {
        let dir = self.root.join(workspace);
        create(&dir)?;
        let limit = memory_mb.map(|mb| mb << 20);
        let mut memory_v1 = None;
        if let Some(bytes) = limit {
            if self.memory_v2 {
                write(&dir.join("memory.max"), &bytes.to_string())?;
            } else if let Some(v1) = &self.memory_v1 {
                let v1 = v1.join(workspace);
                match create(&v1).and_then(|()| write(&v1.join("memory.limit_in_bytes"), &bytes.to_string())) {
                    Ok(()) => memory_v1 = Some(v1),
                    Err(e) => tracing::warn!(workspace, "{e}; the memory limit is sampled, not enforced"),
                }
            }
        }
        let enforced = limit.is_some() && (self.memory_v2 || memory_v1.is_some());
        let cgroup = WorkspaceCgroup { dir, memory_v1, memory_enforced: enforced, oom_kills_before: 0 };
        Ok(WorkspaceCgroup { oom_kills_before: cgroup.oom_kills(), ..cgroup })
    }

    /// Removes the workspace cgroups that are empty and the state's own
    /// cgroup, at the end of a shutdown. Best effort: a cgroup with members
    /// stays, for the next startup sweep.
    pub fn remove(&self) {
        remove_roots(&self.roots());
    }
}

/// Removes the empty workspace cgroups below `roots`, then `roots` and
/// their parent (`mcpvisor`, shared by every state folder) if empty.
pub fn remove_roots(roots: &[PathBuf]) {
    for root in roots {
        if let Ok(dirs) = std::fs::read_dir(root) {
            for dir in dirs.flatten().filter(|d| d.path().is_dir()) {
                let _ = remove_tree(&dir.path());
            }
        }
        let _ = std::fs::remove_dir(root);
        if let Some(parent) = root.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// What a child needs to be started in a workspace cgroup; see
/// [`WorkspaceCgroup::join`].
#[derive(Debug)]
pub struct Joining {
    /// The v2 cgroup directory.
    pub dir: OwnedFd,
    /// Its `cgroup.procs`.
    pub procs: OwnedFd,
    /// The v1 memory cgroup's `cgroup.procs`, if the memory limit is there.
    pub memory_procs: Option<OwnedFd>,
}

/// One workspace's cgroup (and its v1 memory cgroup, if any).
#[derive(Debug)]
pub struct WorkspaceCgroup {
    dir: PathBuf,
    memory_v1: Option<PathBuf>,
    memory_enforced: bool,
    /// OOM kills counted before the child was spawned.
    oom_kills_before: u64,
}

impl WorkspaceCgroup {
    /// Opens what a child needs to be started in this cgroup: the v2
    /// directory (for `clone3` with `CLONE_INTO_CGROUP`) and the
    /// `cgroup.procs` files it writes itself into otherwise (and always for
    /// a v1 memory cgroup; `write(fd, "0")` moves the writer).
    ///
    /// # Errors
    /// A directory or `cgroup.procs` cannot be opened.
    pub fn join(&self) -> Result<Joining, CgroupError> {
        let open = |path: PathBuf, write: bool| {
            let file = OpenOptions::new().read(!write).write(write).open(&path);
            file.map(OwnedFd::from).map_err(|source| CgroupError::Write { path, source })
        };
        Ok(Joining {
            dir: open(self.dir.clone(), false)?,
            procs: open(self.dir.join("cgroup.procs"), true)?,
            memory_procs: self.memory_v1.as_ref().map(|v1| open(v1.join("cgroup.procs"), true)).transpose()?,
        })
    }

    /// Whether the kernel enforces the memory limit.
    pub fn memory_enforced(&self) -> bool {
        self.memory_enforced
    }

    /// The pids of every member (zombies are no members).
    pub fn members(&self) -> Vec<i32> {
        procs_of(&self.dir)
    }

    /// Sends `signal` to every member, now.
    pub fn signal(&self, signal: Signal) {
        for pid in self.members() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Kills every member, also those forking meanwhile (`cgroup.kill`).
    pub fn kill(&self) {
        if let Err(e) = write(&self.dir.join("cgroup.kill"), "1") {
            tracing::warn!("{e}; killing the members one by one");
            self.signal(Signal::SIGKILL);
        }
    }

    /// Whether any process is left (`cgroup.events`: `populated 1`).
    pub fn populated(&self) -> bool {
        populated(&self.dir)
    }

    /// Resolves once no process is left: on each change of
    /// `cgroup.events` (inotify), checked every 50 ms besides.
    pub async fn wait_empty(&self) {
        if !self.populated() {
            return;
        }
        let events = self.dir.join("cgroup.events");
        let stream = inotify::Inotify::init().and_then(|inotify| {
            inotify.watches().add(&events, inotify::WatchMask::MODIFY)?;
            inotify.into_event_stream([0u8; 256])
        });
        let mut stream = match stream {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::debug!("watching {}: {e}; polling", events.display());
                None
            }
        };
        while self.populated() {
            let pause = Duration::from_millis(if stream.is_some() { 50 } else { 2 });
            match stream.as_mut() {
                Some(changes) => {
                    let _ = tokio::time::timeout(pause, changes.next()).await;
                }
                None => tokio::time::sleep(pause).await,
            }
        }
    }

    /// OOM kills in this cgroup since the child was spawned.
    pub fn oom_kills(&self) -> u64 {
        let counted = match &self.memory_v1 {
            Some(v1) => counter(&v1.join("memory.oom_control"), "oom_kill"),
            None => counter(&self.dir.join("memory.events"), "oom_kill"),
        };
        counted.saturating_sub(self.oom_kills_before)
    }

    /// Removes the cgroup once it is empty; the next child makes a new one.
    pub fn remove(&self) {
        for dir in std::iter::once(&self.dir).chain(&self.memory_v1) {
            if let Err(e) = remove_tree(dir) {
                tracing::debug!("removing cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// Kills every workspace cgroup left below `roots` (children of each root)
/// and removes them, waiting up to `within` for their members to go; for
/// the guard and the startup sweep. Returns how many processes it killed.
pub fn sweep(roots: &[PathBuf], within: Duration) -> usize {
    let deadline = std::time::Instant::now() + within;
    let leftovers: Vec<PathBuf> = roots
        .iter()
        .filter_map(|root| std::fs::read_dir(root).ok())
        .flat_map(|dirs| dirs.flatten().map(|d| d.path()).filter(|p| p.is_dir()))
        .collect();
    let mut killed = 0;
    for dir in &leftovers {
        let members = procs_of(dir).len();
        if members > 0 && dir.join("cgroup.kill").exists() {
            tracing::warn!(cgroup = %dir.display(), members, "killing a leftover cgroup of a previous run");
            killed += members;
            if let Err(e) = write(&dir.join("cgroup.kill"), "1") {
                tracing::warn!("{e}");
            }
        }
    }
    for dir in &leftovers {
        // A v1 memory cgroup empties as its members die in the v2 one.
        while (populated(dir) || remove_tree(dir).is_err()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    killed
}

/// The v2 cgroup of `pid`, as `/proc/<pid>/cgroup` names it; also readable
/// for a zombie.
pub fn unified_path_of(pid: i32) -> Option<PathBuf> {
    let groups = Process::new(pid).ok()?.cgroups().ok()?;
    groups.0.iter().find(|g| g.hierarchy == 0).map(|g| PathBuf::from(&g.pathname))
}

/// Whether cgroups v2 can be used here: root and a cgroup2 mount. Tests
/// use it to tell a host without cgroups from a broken setup.
pub fn available() -> bool {
    nix::unistd::geteuid().is_root()
        && Process::myself()
            .and_then(|me| me.mountinfo())
            .is_ok_and(|mounts| mounts.iter().any(|m| m.fs_type == "cgroup2" && !m.mount_options.contains_key("ro")))
}

/// Whether `dir` is a cgroup folder mcpvisor makes for `state_dir`
/// (`.../mcpvisor/<state id>`).
pub fn is_state_root(dir: &Path, state_dir: &Path) -> bool {
    dir.ends_with(Path::new("mcpvisor").join(state_id(state_dir)))
}

/// A short stable name for the state folder: 12 hex digits of the SHA-256
/// of its path.
fn state_id(state_dir: &Path) -> String {
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Where cgroup `pathname` of a hierarchy appears below its mount (whose
/// own root may be a cgroup below the hierarchy's top, in a namespace).
fn mounted_path(mount_point: &Path, mount_root: &str, pathname: &str) -> PathBuf {
    let relative = pathname.strip_prefix(mount_root).unwrap_or(pathname);
    mount_point.join(relative.trim_start_matches('/'))
}

/// Creates `dir` and its parents. Another daemon may remove the shared
/// `mcpvisor` parent between two steps when it was empty: then again.
fn create(dir: &Path) -> Result<(), CgroupError> {
    let mut attempts = 3;
    loop {
        attempts -= 1;
        match std::fs::create_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts > 0 => {}
            Err(source) => return Err(CgroupError::Create { path: dir.to_path_buf(), source }),
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write { path: path.to_path_buf(), source })
}

/// Enables the memory controller for the children of `dir`, if `dir` has it.
fn enable_memory(dir: &Path) -> bool {
    let has = std::fs::read_to_string(dir.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|name| name == "memory"));
    has && write(&dir.join("cgroup.subtree_control"), "+memory").is_ok()
}

fn procs_of(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether a v2 cgroup has a member in its subtree; a v1 or vanished
/// cgroup reads as empty.
fn populated(dir: &Path) -> bool {
    counter(&dir.join("cgroup.events"), "populated") > 0
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines); 0 if absent.
fn counter(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()))
        .unwrap_or(0)
}

/// Removes `dir` and the cgroups below it, deepest first.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.path().is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_counters() {
        assert_eq!(mounted_path(Path::new("/sys/fs/cgroup"), "/", "/a/b"), Path::new("/sys/fs/cgroup/a/b"));
        assert_eq!(mounted_path(Path::new("/sys/fs/cgroup"), "/a", "/a/b"), Path::new("/sys/fs/cgroup/b"));
        assert_eq!(mounted_path(Path::new("/m"), "/", "/"), Path::new("/m"));
        assert_eq!(state_id(Path::new("/x/state")), state_id(Path::new("/x/state")));
        assert_ne!(state_id(Path::new("/x/state")), state_id(Path::new("/y/state")));
        assert_eq!(state_id(Path::new("/x/state")).len(), 12);
        let root = Path::new("/sys/fs/cgroup/mcpvisor").join(state_id(Path::new("/x/state")));
        assert!(is_state_root(&root, Path::new("/x/state")));
        assert!(!is_state_root(&root, Path::new("/y/state")));
        assert!(!is_state_root(Path::new("/sys/fs/cgroup"), Path::new("/x/state")));
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("cgroup.events");
        std::fs::write(&events, "populated 1\nfrozen 0\n").unwrap();
        assert!(populated(dir.path()));
        std::fs::write(&events, "populated 0\nfrozen 0\n").unwrap();
        assert!(!populated(dir.path()));
        std::fs::write(dir.path().join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(counter(&dir.path().join("memory.oom_control"), "oom_kill"), 3);
        assert_eq!(counter(&dir.path().join("memory.oom_control"), "oom"), 0);
    }

    /// A tree in a workspace cgroup is listed, killed as a whole (also a
    /// member in its own session), and the cgroup reads empty after.
    #[tokio::test]
    async fn kill_empties_the_cgroup() {
        if !available() {
            eprintln!("no writable cgroup v2 here; skipped");
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let cgroups = Cgroups::setup(state.path()).unwrap();
        let cgroup = cgroups.workspace("unit", None).unwrap();
        let joining = cgroup.join().unwrap();
        let fds: Vec<OwnedFd> = std::iter::once(joining.procs).chain(joining.memory_procs).collect();
        let raw: Vec<i32> = fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        let mut command = std::process::Command::new("/bin/sh");
        command.args(["-c", "setsid sleep 60 & sleep 60"]);
        // SAFETY: only write(2) between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                for fd in &raw {
                    nix::unistd::write(std::os::fd::BorrowedFd::borrow_raw(*fd), b"0")?;
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        drop(fds);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cgroup.members().len() < 3 {
            assert!(std::time::Instant::now() < deadline, "{:?}", cgroup.members());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(cgroup.populated());
        assert!(cgroup.members().contains(&(child.id() as i32)));
        assert_eq!(unified_path_of(child.id() as i32).unwrap(), cgroups.root_in_hierarchy().join("unit"));
        cgroup.kill();
        child.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(10), cgroup.wait_empty()).await.unwrap();
        assert!(cgroup.members().is_empty());
        cgroup.remove();
        cgroups.remove();
        assert!(!cgroups.root.exists());
    }
}
