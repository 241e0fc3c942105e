//! The manager: reconciles the workspace files on disk with the running
//! actors, by diff (DESIGN §1).
//!
//! Each reconcile reads the whole folder; a file is compared by its config
//! version (a hash of the parsed config), so an unchanged file does nothing.
//! The watcher only says "something changed"; a periodic rescan catches what
//! a watcher can miss.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::actor::{self, Command};
use super::{ActorEntry, Registry, SupervisorContext};
use crate::config::{is_valid_name, load_dir, FileError, LoadedFile, DEBOUNCE};
use crate::process::LogSink;

/// What the manager last handed to an actor, to diff against.
#[derive(Debug, Clone, PartialEq)]
struct Applied {
    version: Option<String>,
    error: Option<FileError>,
}

/// Owns the set of actors; runs as one task.
pub struct Manager {
    pub(crate) ctx: Arc<SupervisorContext>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) workspaces_dir: PathBuf,
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) rescan_every: Duration,
    pub(crate) watcher: Option<crate::config::ConfigWatcher>,
    /// Feeds the change channel, to rescan once a fresh file has settled.
    settle_sender: mpsc::Sender<()>,
    applied: HashMap<String, Applied>,
    removing: HashMap<String, JoinHandle<()>>,
}

impl Manager {
    pub(crate) fn new(
        ctx: Arc<SupervisorContext>,
        registry: Arc<Registry>,
        workspaces_dir: PathBuf,
        ready: Arc<AtomicBool>,
        cancel: CancellationToken,
        tracker: TaskTracker,
        rescan_every: Duration,
        watcher: Option<crate::config::ConfigWatcher>,
        settle_sender: mpsc::Sender<()>,
    ) -> Manager {
        Manager {
            ctx,
            registry,
            workspaces_dir,
            ready,
            cancel,
            tracker,
            rescan_every,
            watcher,
            settle_sender,
            applied: HashMap::new(),
            removing: HashMap::new(),
        }
    }

    /// Loads every file, marks the daemon ready, then reconciles on each
    /// change signal and every `rescan_every` until cancelled.
    pub async fn run(mut self, mut changes: mpsc::Receiver<()>) {
        let started = tokio::time::Instant::now();
        let files = self.scan().unwrap_or_default();
        // Ports of workspaces that no longer exist are dropped at start.
        let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
        if let Err(e) = self.ctx.ports.retain(&|n| names.iter().any(|m| m == n)) {
            tracing::warn!("{e}");
        }
        self.reconcile(files, false).await;
        self.ready.store(true, Ordering::Release);
        tracing::info!(
            workspaces = self.applied.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "initial load done"
        );
        let mut rescan = tokio::time::interval(self.rescan_every);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(()) = changes.recv() => {}
                _ = rescan.tick() => {}
            }
            if let Some(watcher) = self.watcher.as_mut() {
                watcher.ensure();
            }
            if let Some(files) = self.scan() {
                if self.reconcile(files, true).await {
                    // Something was still being written: look again once it settled.
                    let changes = self.settle_sender.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(DEBOUNCE).await;
                        let _ = changes.try_send(());
                    });
                }
            }
        }
        for (_, removal) in self.removing.drain() {
            let _ = removal.await;
        }
    }

    /// Reads the folder; `None` when it cannot be read for a reason other
    /// than being absent, which must not be mistaken for "no workspaces".
    fn scan(&self) -> Option<Vec<LoadedFile>> {
        match load_dir(&self.workspaces_dir) {
            Ok(files) => Some(files),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Vec::new()),
            Err(e) => {
                tracing::warn!(dir = %self.workspaces_dir.display(), "reading workspaces folder: {e}");
                None
            }
        }
    }

    /// Brings the actors in line with `files`: new files start actors,
    /// changed ones get their new config (or their errors), removed ones stop.
    ///
    /// With `settle`, a file modified within the watcher's debounce window is
    /// left for a later pass, so a burst of writes becomes one change with the
    /// last content. Returns whether any file was left for later.
    async fn reconcile(&mut self, files: Vec<LoadedFile>, settle: bool) -> bool {
        let started = tokio::time::Instant::now();
        let unsettled = self.reconcile_files(files, settle).await;
        self.ctx.metrics.reconciles.inc();
        self.ctx.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
        unsettled
    }

    async fn reconcile_files(&mut self, files: Vec<LoadedFile>, settle: bool) -> bool {
        let now = SystemTime::now();
        let fresh =
            |f: &LoadedFile| f.modified.is_some_and(|m| now.duration_since(m).map_or(true, |age| age < DEBOUNCE));
        let mut unsettled = false;
        let (good, bad): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| is_valid_name(&f.name));
        let bad: Vec<FileError> = bad.into_iter().filter_map(|f| f.config.err()).collect();
        for error in &bad {
            tracing::warn!("ignoring workspace file:\n{error}");
        }
        self.registry.set_bad_files(bad);

        let present: Vec<String> = good.iter().map(|f| f.name.clone()).collect();
        let gone: Vec<String> = self.applied.keys().filter(|n| !present.contains(n)).cloned().collect();
        for name in gone {
            self.applied.remove(&name);
            if let Some(entry) = self.registry.remove(&name) {
                tracing::info!(workspace = %name, "workspace file removed; stopping");
                let ctx = self.ctx.clone();
                self.removing.insert(
                    name.clone(),
                    tokio::spawn(async move {
                        entry.handle.remove().await;
                        // The tree is gone: only now may the port go to someone else.
                        if let Err(e) = ctx.ports.release(&name) {
                            tracing::warn!("{e}");
                        }
                    }),
                );
            }
        }

        for file in good {
            let next = Applied { version: file.version.clone(), error: file.config.as_ref().err().cloned() };
            match self.applied.get(&file.name) {
                Some(applied) if *applied == next => continue,
                _ if settle && fresh(&file) => {
                    unsettled = true;
                    continue;
                }
                Some(_) => {
                    let command = match file.config {
                        Ok(config) => Command::Apply { config, version: file.version.unwrap_or_default() },
                        Err(error) => Command::Invalid(error),
                    };
                    if let Some(entry) = self.registry.get(&file.name) {
                        if let Err(e) = entry.handle.send(command) {
                            tracing::warn!(workspace = %file.name, "{e}");
                            continue;
                        }
                    }
                }
                None => {
                    if let Some(removal) = self.removing.remove(&file.name) {
                        // The same name came back while its old tree was stopping.
                        let _ = removal.await;
                    }
                    if let Err(error) = &file.config {
                        tracing::warn!("invalid workspace file:\n{error}");
                    }
                    let logs = LogSink::open(&self.ctx.launch.logs_dir(), &file.name);
                    let config = file.config.map(|c| (c, file.version.unwrap_or_default()));
                    let handle = actor::spawn(
                        file.name.clone(),
                        config,
                        logs.clone(),
                        self.ctx.clone(),
                        self.cancel.child_token(),
                        &self.tracker,
                    );
                    self.registry.insert(&file.name, ActorEntry { handle, logs });
                }
            }
            self.applied.insert(file.name, next);
        }
        self.removing.retain(|_, removal| !removal.is_finished());
        unsettled
    }
}
