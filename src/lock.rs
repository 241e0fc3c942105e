//! One daemon per state folder: an advisory lock on `state/mcpvisor.lock`
//! that names its holder's pid (DESIGN §4).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::ServeError;

/// Held for the daemon's lifetime; the kernel releases it if the daemon dies.
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    /// Takes the lock without waiting and writes our pid into the file.
    ///
    /// # Errors
    /// [`ServeError::Locked`] with the holder's pid when another daemon has it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, ServeError> {
        let path = state_dir.join("mcpvisor.lock");
        let io = |source| ServeError::Io { what: "opening lock file", path: path.clone(), source };
        let file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(ServeError::Locked { dir: state_dir.to_path_buf(), pid: holder.trim().parse().ok() });
            }
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(StateLock { _lock: lock })
    }
}
