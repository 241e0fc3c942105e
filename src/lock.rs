//! One daemon per state folder: an advisory lock on `state/mcpvisor.lock`
//! that names its holder's pid (docs/reference.md §4).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

/// Why the state folder could not be locked.
#[derive(Debug, Error)]
pub enum LockError {
    #[error("state folder {} is locked by another mcpvisor{}", .dir.display(), .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("{what} {}: {source}", .path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// Held for the daemon's lifetime; the kernel releases it if the daemon dies.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    /// Takes the lock and writes our pid into the file. A crashed daemon's
    /// guard holds the lock while it sweeps (at most a few seconds), so a
    /// held lock is retried for up to `patience` before giving up.
    ///
    /// # Errors
    /// [`LockError::Held`] with the holder's pid when another daemon has it;
    /// [`LockError::Io`] when the lock file cannot be opened or written.
    pub fn acquire(state_dir: &Path, patience: Duration) -> Result<StateLock, LockError> {
        let path = state_dir.join("mcpvisor.lock");
        let io = |what| {
            let path = path.clone();
            move |source| LockError::Io { what, path, source }
        };
        let deadline = std::time::Instant::now() + patience;
        let mut lock = loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io("opening lock file"))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => break lock,
                Err((mut file, _)) if std::time::Instant::now() >= deadline => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    return Err(LockError::Held { dir: state_dir.to_path_buf(), pid: holder.trim().parse().ok() });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        lock.set_len(0).map_err(io("writing lock file"))?;
        lock.rewind().map_err(io("writing lock file"))?;
        write!(lock, "{}", std::process::id()).map_err(io("writing lock file"))?;
        Ok(StateLock { _lock: lock })
    }
}

/// Waits for the lock (the daemon's death releases it), for the guard.
///
/// # Errors
/// The lock file cannot be opened or locked.
pub fn wait_for(state_dir: &Path) -> std::io::Result<Flock<File>> {
    let file =
        OpenOptions::new().create(true).truncate(false).read(true).write(true).open(state_dir.join("mcpvisor.lock"))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| errno.into())
}
