//! One daemon per state folder: an advisory lock on `state/mcpvisor.lock`
//! that names its holder's pid (DESIGN §4).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::ServeError;

/// Held for the daemon's lifetime; the kernel releases it if the daemon dies.
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    /// Takes the lock and writes our pid into the file. A crashed daemon's
    /// guard holds the lock while it sweeps (at most a few seconds), so a
    /// held lock is retried for up to `patience` before giving up.
    ///
    /// # Errors
    /// [`ServeError::Locked`] with the holder's pid when another daemon has it.
    pub fn acquire(state_dir: &Path, patience: Duration) -> Result<StateLock, ServeError> {
        let path = state_dir.join("mcpvisor.lock");
        let io = |source| ServeError::Io { what: "opening lock file", path: path.clone(), source };
        let deadline = std::time::Instant::now() + patience;
        let mut lock = loop {
            let file =
                OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => break lock,
                Err((mut file, _)) if std::time::Instant::now() >= deadline => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    return Err(ServeError::Locked { dir: state_dir.to_path_buf(), pid: holder.trim().parse().ok() });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
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
