//! Small filesystem helpers shared by the state files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename.
///
/// # Errors
/// Any I/O error of the three steps; `path` then still holds its old content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A state file (`ports.json`, `runtime.json`) that remembers when its last
/// write failed (a full disk, a read-only mount) and wakes the daemon's
/// retry task, so the file catches up once the write can succeed again
/// (docs/reference.md §4).
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    stale: AtomicBool,
    retry: Arc<Notify>,
}

impl StateFile {
    /// A state file at `path` whose failed writes wake `retry`.
    pub fn new(path: PathBuf, retry: Arc<Notify>) -> StateFile {
        StateFile { path, stale: AtomicBool::new(false), retry }
    }

    /// Writes `bytes` atomically. A failure is logged, leaves the old content
    /// in place and marks the file stale until a later write succeeds.
    pub fn write(&self, bytes: &[u8]) -> bool {
        match write_atomic(&self.path, bytes) {
            Ok(()) => {
                self.stale.store(false, Ordering::Release);
                true
            }
            Err(e) => {
                if !self.stale.swap(true, Ordering::AcqRel) {
                    tracing::warn!(path = %self.path.display(), "writing state file: {e}; retrying until it succeeds");
                }
                self.retry.notify_one();
                false
            }
        }
    }

    /// Whether the last write failed, so the file on disk is behind memory.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_marks_the_file_stale_until_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let retry = Arc::new(Notify::new());
        let file = StateFile::new(dir.path().join("missing/ports.json"), retry.clone());
        assert!(!file.write(b"{}"));
        assert!(file.is_stale());
        std::fs::create_dir(dir.path().join("missing")).unwrap();
        assert!(file.write(b"{}"));
        assert!(!file.is_stale());
        assert_eq!(std::fs::read(dir.path().join("missing/ports.json")).unwrap(), b"{}");
    }
}
