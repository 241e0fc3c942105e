//! The guard: a small process that outlives a crashed daemon by a moment
//! and kills whatever the daemon left running.
//!
//! `PR_SET_PDEATHSIG` kills the daemon's direct children when it dies, but
//! not their descendants. So `serve` starts `mcpvisor guard` in its own
//! session with a pipe on its stdin. The daemon holds the write end; when
//! the daemon dies, however it dies, the kernel closes the pipe and the
//! guard sweeps what `state/runtime.json` names (the workspace cgroups; the
//! recorded processes, whose pid and start time must match) and exits.

use std::io::Read;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// Written by a daemon that stopped every child itself.
const CLEAN_EXIT: &[u8] = b"q";

/// The daemon's end of the guard; dropping it lets the guard sweep and exit.
pub struct Guard {
    pipe: ChildStdin,
    child: Child,
}

impl Guard {
    /// Tells the guard the shutdown was clean (nothing to sweep), closes the
    /// pipe and reaps the guard.
    pub fn finish(mut self) {
        use std::io::Write;
        let _ = self.pipe.write_all(CLEAN_EXIT);
        drop(self.pipe);
        for _ in 0..300 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Starts `<exe> guard --state <state_dir>`.
///
/// # Errors
/// The guard could not be spawned.
pub fn spawn(exe: &Path, state_dir: &Path) -> std::io::Result<Guard> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(exe)
        .arg("guard")
        .arg("--state")
        .arg(state_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()?;
    let pipe = child.stdin.take().expect("stdin is piped");
    Ok(Guard { pipe, child })
}

/// The guard's main: waits for EOF on stdin, then sweeps, unless the daemon
/// said its shutdown was clean. Returns the number of processes killed.
pub fn run(state_dir: &Path) -> usize {
    // Ctrl-C in the daemon's terminal must not take the guard first.
    // SAFETY: setting a signal disposition to ignore is always sound.
    unsafe {
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn);
    }
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    loop {
        match stdin.read(&mut sink) {
            Ok(n) if n > 0 && sink[..n].contains(&CLEAN_EXIT[0]) => return 0,
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    // Hold the state lock while sweeping, so a new daemon on the same state
    // folder cannot start children that this sweep would then kill.
    let _lock = crate::lock::wait_for(state_dir);
    let swept = super::runtime::sweep(state_dir, &[], Duration::from_secs(2));
    // No daemon runs on this folder now; the next one makes its cgroups anew.
    super::cgroup::remove_roots(&swept.cgroups);
    swept.killed
}
