//! Watches the workspaces folder and says "something changed" (docs/reference.md §1).
//!
//! notify's debounced events (about 200 ms) are bridged into tokio with a
//! bounded channel and `try_send`: a full channel already holds a pending
//! rescan, so nothing is lost by dropping. The manager rereads the whole
//! folder on each signal, which makes renames, atomic saves and bursts all
//! the same case. Only changes count (create, write, rename, remove, metadata):
//! opening, reading and closing a file unwritten are not, since the manager's
//! own reads make those and would trigger a scan after every scan. The parent
//! folder is watched too, so a removed and recreated workspaces folder is
//! noticed and watched again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::mpsc;

/// How long events settle before a rescan.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The folder watcher; drop it to stop watching.
pub struct ConfigWatcher {
    dir: PathBuf,
    debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    /// (device, inode) of the folder we watch, to notice a recreated folder.
    watched: Option<(u64, u64)>,
    error: Arc<RwLock<Option<String>>>,
}

impl ConfigWatcher {
    /// Starts watching `dir`; each settled change sends `()` on `changes`.
    /// Watcher errors (an inotify limit, say) are logged and kept in `error`.
    ///
    /// # Errors
    /// The platform watcher could not be created.
    pub fn start(
        dir: &Path,
        changes: mpsc::Sender<()>,
        error: Arc<RwLock<Option<String>>>,
    ) -> notify::Result<ConfigWatcher> {
        let inside = dir.to_path_buf();
        let errors = error.clone();
        let debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| match result {
            Ok(events) => {
                let relevant =
                    events.iter().any(|e| is_change(&e.kind) && e.paths.iter().any(|p| p.starts_with(&inside)));
                if relevant {
                    let _ = changes.try_send(());
                }
            }
            Err(failures) => {
                let message = failures.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
                tracing::error!("watching workspaces folder: {message}; relying on periodic rescans");
                *errors.write().unwrap() = Some(message);
                let _ = changes.try_send(());
            }
        })?;
        let mut watcher = ConfigWatcher { dir: dir.to_path_buf(), debouncer, watched: None, error };
        if let Some(parent) = dir.parent().filter(|p| p.exists()) {
            if let Err(e) = watcher.debouncer.watch(parent, RecursiveMode::NonRecursive) {
                watcher.set_error(format!("watching {parent:?}: {e}"));
            }
        }
        watcher.ensure();
        Ok(watcher)
    }

    /// (Re)watches the folder if it appeared or was replaced since last time.
    pub fn ensure(&mut self) {
        let id = std::fs::metadata(&self.dir).ok().map(|m| (m.dev(), m.ino()));
        if id == self.watched {
            return;
        }
        let _ = self.debouncer.unwatch(&self.dir);
        self.watched = None;
        if id.is_some() {
            match self.debouncer.watch(&self.dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched = id;
                    *self.error.write().unwrap() = None;
                }
                Err(e) => self.set_error(format!("watching {:?}: {e}", self.dir)),
            }
        }
    }

    fn set_error(&self, message: String) {
        tracing::error!("{message}; relying on periodic rescans");
        *self.error.write().unwrap() = Some(message);
    }
}

/// Whether an event can change what a scan reads. Opens, reads and closes
/// without a write cannot, nor can an access-time update.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Other => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next_change(changes: &mut mpsc::Receiver<()>, within: Duration) -> bool {
        tokio::time::timeout(within, changes.recv()).await.is_ok()
    }

    /// Reading the files, as every scan does, is not a change; writing one
    /// is. (Before, each scan's own reads caused the next scan.)
    #[tokio::test]
    async fn reads_are_not_changes_and_writes_are() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("workspaces");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("Bad.json"), "{}").unwrap();
        let (sender, mut changes) = mpsc::channel(1);
        let _watcher = ConfigWatcher::start(&dir, sender, Default::default()).unwrap();
        for _ in 0..20 {
            crate::config::scan_dir(&dir).unwrap();
        }
        // The debounce window is 200 ms; four of them with no signal say the
        // reads produced none.
        assert!(!next_change(&mut changes, DEBOUNCE * 4).await, "reading the folder was taken for a change");
        std::fs::write(dir.join("Bad.json"), "{ }").unwrap();
        assert!(next_change(&mut changes, Duration::from_secs(10)).await, "a write was missed");
    }

    #[test]
    fn only_changes_count() {
        use notify::event::{CreateKind, DataChange, RemoveKind, RenameMode};
        assert!(is_change(&EventKind::Create(CreateKind::File)));
        assert!(is_change(&EventKind::Modify(ModifyKind::Data(DataChange::Any))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Name(RenameMode::Both))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions))));
        assert!(is_change(&EventKind::Remove(RemoveKind::File)));
        assert!(is_change(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(!is_change(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!is_change(&EventKind::Access(AccessKind::Read)));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(!is_change(&EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime))));
    }
}
