//! Watches the workspaces folder and says "something changed" (DESIGN §1).
//!
//! notify's debounced events (about 200 ms) are bridged into tokio with a
//! bounded channel and `try_send`: a full channel already holds a pending
//! rescan, so nothing is lost by dropping. The manager rereads the whole
//! folder on each signal, which makes renames, atomic saves and bursts all
//! the same case. The parent folder is watched too, so a removed and
//! recreated workspaces folder is noticed and watched again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

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
                let relevant = events.iter().any(|e| e.paths.iter().any(|p| p.starts_with(&inside)));
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
                watcher.set_error(format!("watching {}: {e}", parent.display()));
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
                Err(e) => self.set_error(format!("watching {}: {e}", self.dir.display())),
            }
        }
    }

    fn set_error(&self, message: String) {
        tracing::error!("{message}; relying on periodic rescans");
        *self.error.write().unwrap() = Some(message);
    }
}
