//! Watches the workspaces folder and says "something changed" (docs/reference.md §1).
//!
//! notify's events are bridged into tokio with a bounded channel and
//! `try_send`: a full channel already holds a pending rescan, so nothing is
//! lost by dropping. A task lets them settle (200 ms without one, at most
//! 1 s) before it signals; nothing wakes while the folder is quiet (a
//! ticking debouncer thread would, 20 times a second, for the daemon's
//! whole life). The manager rereads the whole folder on each signal, which
//! makes renames, atomic saves and bursts all the same case. Only changes
//! count (create, write, rename, remove, metadata): opening, reading and
//! closing a file unwritten are not, since the manager's own reads make
//! those and would trigger a scan after every scan. The parent folder is
//! watched too, so a removed and recreated workspaces folder is noticed and
//! watched again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long events must pause before a rescan.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// The longest a stream of events defers its rescan.
const SETTLE_MAX: Duration = Duration::from_secs(1);

/// The folder watcher; drop it to stop watching.
pub struct ConfigWatcher {
    dir: PathBuf,
    watcher: RecommendedWatcher,
    /// (device, inode) of the folder we watch, to notice a recreated folder.
    watched: Option<(u64, u64)>,
    error: Arc<RwLock<Option<String>>>,
}

impl ConfigWatcher {
    /// Starts watching `dir`; each settled change sends `()` on `changes`.
    /// Watcher errors (an inotify limit, say) are logged and kept in `error`.
    /// Runs a task on the current tokio runtime until the watcher is dropped.
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
        let (events, raw) = mpsc::channel(1);
        let watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
            let relevant = match result {
                Ok(event) => is_change(&event.kind) && event.paths.iter().any(|p| p.starts_with(&inside)),
                Err(e) => {
                    tracing::error!("watching workspaces folder: {e}; relying on periodic rescans");
                    *errors.write().unwrap() = Some(e.to_string());
                    true
                }
            };
            if relevant {
                let _ = events.try_send(());
            }
        })?;
        tokio::spawn(settle(raw, changes));
        let mut watcher = ConfigWatcher { dir: dir.to_path_buf(), watcher, watched: None, error };
        if let Some(parent) = dir.parent().filter(|p| p.exists()) {
            if let Err(e) = watcher.watcher.watch(parent, RecursiveMode::NonRecursive) {
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
        let _ = self.watcher.unwatch(&self.dir);
        self.watched = None;
        if id.is_some() {
            match self.watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
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

/// Signals `changes` once the events on `raw` pause for [`DEBOUNCE`], or
/// [`SETTLE_MAX`] after the first; ends when the watcher is dropped.
async fn settle(mut raw: mpsc::Receiver<()>, changes: mpsc::Sender<()>) {
    while raw.recv().await.is_some() {
        let latest = Instant::now() + SETTLE_MAX;
        while let Ok(Some(())) = tokio::time::timeout_at((Instant::now() + DEBOUNCE).min(latest), raw.recv()).await {}
        let _ = changes.try_send(());
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

    /// A burst of events is one rescan, once they pause; a stream that
    /// never pauses still gets one each [`SETTLE_MAX`].
    #[tokio::test(start_paused = true)]
    async fn events_settle_before_a_rescan() {
        let (events, raw) = mpsc::channel(1);
        let (signals, mut changes) = mpsc::channel(16);
        tokio::spawn(settle(raw, signals));
        let step = Duration::from_millis(100);
        for _ in 0..5 {
            let _ = events.try_send(());
            tokio::time::sleep(step).await;
        }
        assert!(changes.try_recv().is_err(), "signalled before the events paused");
        tokio::time::sleep(DEBOUNCE).await;
        assert!(changes.try_recv().is_ok(), "no signal once they paused");
        assert!(changes.try_recv().is_err(), "one burst, one signal");

        for _ in 0..30 {
            let _ = events.try_send(());
            tokio::time::sleep(step).await;
        }
        let mut during = 0;
        while changes.try_recv().is_ok() {
            during += 1;
        }
        assert_eq!(during, 2, "3 s of events 100 ms apart: a rescan at 1 s and at 2 s");
        drop(events);
        tokio::time::sleep(DEBOUNCE).await;
        assert_eq!(changes.recv().await, Some(()), "the last events");
        assert_eq!(changes.recv().await, None, "the task ends with the watcher");
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
