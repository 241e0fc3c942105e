//! Starting a child straight into its workspace's cgroup: `clone3` with
//! `CLONE_INTO_CGROUP`.
//!
//! A child that moves itself into a cgroup between fork and exec (a write
//! to `cgroup.procs`) waits for an RCU grace period in the kernel, 5-11 ms
//! on a quiet 2-core host, on every start and so on every crash recovery.
//! A child born in the cgroup pays nothing of that. `std::process::Command`
//! cannot do it, so this module forks and execs itself, the way std does:
//! everything the child needs is allocated before the clone, the child only
//! makes async-signal-safe system calls, and an exec failure comes back
//! through a close-on-exec pipe as an errno.
//!
//! The child is waited for through its pidfd, so tokio's process driver
//! does not know it; mcpvisor's reaper leaves leaders alone.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::libc;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::spec::LaunchSpec;

/// `CLONE_INTO_CGROUP` (Linux 5.7), not in the libc crate for every target.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of `clone3(2)`, up to `cgroup` (Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What the child does between clone and exec, besides its stdio, group,
/// directory and death signal.
#[derive(Debug, Default)]
pub(crate) struct Setup {
    /// `cgroup.procs` files (v1 hierarchies) the child writes itself into.
    pub procs: Vec<OwnedFd>,
    /// `RLIMIT_NOFILE`, soft and hard.
    pub open_files: Option<u64>,
}

/// A child started by [`spawn_into`], with its pipes.
#[derive(Debug)]
pub(crate) struct Forked {
    pub pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    /// The open end of a `stdio` child's stdin.
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

impl Forked {
    /// Waits for the child to exit and reaps it. Cancel-safe.
    ///
    /// # Errors
    /// The pidfd or `waitpid` failed.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            let mut ready = self.pidfd.readable().await?;
            let mut status = 0;
            // SAFETY: waitpid writes the status into a local.
            match unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) } {
                0 => ready.clear_ready(),
                -1 => return Err(io::Error::last_os_error()),
                _ => return Ok(ExitStatus::from_raw(status)),
            }
        }
    }
}

/// Forks `spec` into the cgroup whose directory is `cgroup`, as the leader
/// of its own process group, dying with `parent` (`PR_SET_PDEATHSIG`), and
/// execs it. Must run inside a tokio runtime (for the pipes and the pidfd).
///
/// # Errors
/// `ENOSYS` or `EPERM` when the kernel (or a seccomp filter) refuses
/// `clone3`: the caller falls back to another spawn. Otherwise the errno of
/// the failed exec (`ENOENT`, `EACCES`, ...) or of the setup.
pub(crate) fn spawn_into(spec: &LaunchSpec, cgroup: &OwnedFd, setup: &Setup, parent: i32) -> io::Result<Forked> {
    let program = cstring(spec.program.as_os_str())?;
    let mut argv = vec![program.clone()];
    for arg in &spec.args {
        argv.push(cstring(OsStr::new(arg))?);
    }
    let envp =
        spec.env.iter().map(|(k, v)| cstring(OsStr::new(&format!("{k}={v}")))).collect::<io::Result<Vec<_>>>()?;
    let cwd = cstring(spec.cwd.as_os_str())?;
    let argv_ptrs = null_terminated(&argv);
    let envp_ptrs = null_terminated(&envp);
    let procs: Vec<RawFd> = setup.procs.iter().map(AsRawFd::as_raw_fd).collect();

    let (stdin_child, stdin_parent) = if spec.stdin_pipe {
        let (read, write) = pipe_cloexec()?;
        (read, Some(write))
    } else {
        (OwnedFd::from(std::fs::File::open("/dev/null")?), None)
    };
    let (stdout_parent, stdout_child) = pipe_cloexec()?;
    let (stderr_parent, stderr_child) = pipe_cloexec()?;
    let (error_read, error_write) = pipe_cloexec()?;
    // With the daemon's own stdio closed, a pipe could land on 0, 1 or 2
    // and be overwritten by another's dup2 in the child.
    let [stdin_child, stdout_child, stderr_child] = [stdin_child, stdout_child, stderr_child].map(above_stdio);
    let (stdin_child, stdout_child, stderr_child) = (stdin_child?, stdout_child?, stderr_child?);

    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64 | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM forks this process; the child runs
    // `child_main`, which only makes async-signal-safe system calls on
    // memory prepared above, and never returns.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, size_of::<CloneArgs>()) };
    if pid == 0 {
        let exec = Exec {
            stdin: stdin_child.as_raw_fd(),
            stdout: stdout_child.as_raw_fd(),
            stderr: stderr_child.as_raw_fd(),
            error: error_write.as_raw_fd(),
            cwd: &cwd,
            program: &program,
            argv: &argv_ptrs,
            envp: &envp_ptrs,
            procs: &procs,
            open_files: setup.open_files,
            parent,
        };
        // SAFETY: see above; this is the child.
        unsafe { exec.main() }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let pid = pid as i32;
    // SAFETY: CLONE_PIDFD stored a new descriptor there.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((stdin_child, stdout_child, stderr_child, error_write));
    if let Some(errno) = read_errno(error_read)? {
        let mut status = 0;
        // SAFETY: reaps the child that failed to exec.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok(Forked {
        pid: pid as u32,
        // SAFETY: an OwnedFd stays open, and the same descriptor, until dropped.
        pidfd: unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }?,
        stdin: stdin_parent,
        stdout: Some(pipe::Receiver::from_owned_fd(stdout_parent)?),
        stderr: Some(pipe::Receiver::from_owned_fd(stderr_parent)?),
    })
}

/// Whether a [`spawn_into`] error means "no clone3 here", not a failed exec.
pub(crate) fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM | libc::E2BIG))
}

/// Everything the child uses, prepared before the clone.
struct Exec<'a> {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    error: RawFd,
    cwd: &'a CString,
    program: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    procs: &'a [RawFd],
    open_files: Option<u64>,
    parent: i32,
}

impl Exec<'_> {
    /// Sets the child up and execs it; on any failure writes the errno to
    /// the error pipe and exits with 127.
    ///
    /// # Safety
    /// Only in the child of a clone, which shares no memory with its parent.
    unsafe fn main(&self) -> ! {
        if let Err(errno) = self.setup() {
            let bytes = errno.to_ne_bytes();
            libc::write(self.error, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127);
        }
        libc::execve(self.program.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
        let bytes = errno().to_ne_bytes();
        libc::write(self.error, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }

    /// # Safety
    /// As [`Exec::main`].
    unsafe fn setup(&self) -> Result<(), i32> {
        let check = |result: libc::c_int| if result == -1 { Err(errno()) } else { Ok(()) };
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0))?;
        // The daemon may have died between the clone and prctl. (raise()
        // would use the tid glibc cached for the parent's thread.)
        if libc::getppid() != self.parent {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        for (fd, target) in [(self.stdin, 0), (self.stdout, 1), (self.stderr, 2)] {
            check(libc::dup2(fd, target))?;
        }
        check(libc::setpgid(0, 0))?;
        check(libc::chdir(self.cwd.as_ptr()))?;
        for fd in self.procs {
            if libc::write(*fd, b"0".as_ptr().cast(), 1) == -1 {
                return Err(errno());
            }
        }
        if let Some(n) = self.open_files {
            let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
            check(libc::setrlimit(libc::RLIMIT_NOFILE, &limit))?;
        }
        // A fresh program starts with no blocked signal and SIGPIPE at its
        // default (the Rust runtime ignores it), as std's spawn does.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        check(libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()))?;
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            return Err(errno());
        }
        Ok(())
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

fn cstring(text: &OsStr) -> io::Result<CString> {
    CString::new(text.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the command"))
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

/// A pipe whose both ends close on exec: (read, write).
fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// `fd`, moved to a number above 2 if it is one of 0, 1, 2.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if moved == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `moved` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// The errno the child wrote before it exited, or `None` at EOF (it execed).
fn read_errno(pipe: OwnedFd) -> io::Result<Option<i32>> {
    let mut file = std::fs::File::from(pipe);
    let mut bytes = [0u8; 4];
    let mut read = 0;
    while read < bytes.len() {
        match io::Read::read(&mut file, &mut bytes[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((read == bytes.len()).then(|| i32::from_ne_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::process::cgroup::{self, Cgroups};

    fn spec(program: &str, script: &str, cwd: &std::path::Path) -> LaunchSpec {
        LaunchSpec {
            workspace: "forked".into(),
            program: program.into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("FOO".into(), "bar".into()), ("PATH".into(), "/usr/bin:/bin".into())],
            cwd: cwd.to_path_buf(),
            limits: Default::default(),
            stdin_pipe: false,
        }
    }

    /// Born in its cgroup, leading its own group, with exactly its
    /// environment, directory and pipes; an exec failure is its errno.
    #[tokio::test]
    async fn a_child_is_born_in_its_cgroup_with_its_own_group_env_and_pipes() {
        if !cgroup::available() {
            eprintln!("no writable cgroup v2 here; skipped");
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let cgroups = Cgroups::setup(state.path()).unwrap();
        let workspace = cgroups.workspace("forked", None).unwrap();
        let joining = workspace.join().unwrap();
        let script =
            r#"echo "$FOO $(pwd)"; grep '^0::' /proc/$$/cgroup; cut -d' ' -f1,5 /proc/$$/stat; echo oops >&2; exit 3"#;
        let me = std::process::id() as i32;
        let mut child =
            spawn_into(&spec("/bin/sh", script, state.path()), &joining.dir, &Setup::default(), me).unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        child.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
        child.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
        assert_eq!(child.wait().await.unwrap().code(), Some(3));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], format!("bar {}", state.path().display()), "{out}");
        let cgroup_path = cgroups.root_in_hierarchy().join("forked");
        assert_eq!(lines[1], format!("0::{}", cgroup_path.display()));
        let (pid, pgrp) = lines[2].split_once(' ').unwrap();
        assert_eq!((pid, pid), (pgrp, child.pid.to_string().as_str()), "its own process group");
        assert_eq!(err, "oops\n");

        let missing = spawn_into(&spec("/no/such/program", "", state.path()), &joining.dir, &Setup::default(), me);
        assert_eq!(missing.unwrap_err().raw_os_error(), Some(libc::ENOENT));
        drop(joining);
        workspace.remove();
        cgroups.remove();
    }
}
