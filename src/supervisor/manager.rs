//! The manager: reconciles the workspace files on disk with the running
//! actors, by diff (docs/reference.md §1).
//!
//! Each reconcile reads the whole folder; a file is compared by its config
//! version (a hash of the parsed config), so an unchanged file does nothing.
//! The watcher only says "something changed"; a periodic rescan catches what
//! a watcher can miss.
//!
//! What cannot be read is never taken for a change: a file that fails to read
//! (too many open files, no permission) keeps what it gave before, and a
//! folder that fails to list changes nothing. A missing folder keeps every
//! child running; the daemon is not ready, and says why in the watch error,
//! until the folder is back.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::actor::state::Verdict;
use super::actor::{self, Command};
use super::{ActorEntry, Registry, SupervisorContext};
use crate::config::{
    is_valid_name, name_of, read_file, scan_dir, ConfigError, FileError, LoadedFile, ReadError, Scan, DEBOUNCE,
};
use crate::history::{Outcome, Source};
use crate::process::LogSink;

/// What the manager last handed to an actor, to diff against.
#[derive(Debug, Clone, PartialEq)]
struct Applied {
    version: Option<String>,
    error: Option<FileError>,
}

/// What the API asks of the manager about one workspace file
/// (docs/reference.md §10). The manager handles these in its own task, in
/// order with its scans, so a scan never acts on a file the API is in the
/// middle of writing.
#[derive(Debug)]
pub enum FileRequest {
    /// The API is about to write `name`'s file: scans leave it alone until
    /// [`FileRequest::End`]. `held` is answered once no scan can act on the
    /// file any more (one in progress when the request came has finished).
    Begin { name: String, held: oneshot::Sender<()> },
    /// `name`'s file was written or removed: reconcile it now. With a
    /// `source`, its config goes to the history, to be committed with its
    /// verdict. `reply` hears the verdict; for a removed file,
    /// [`Verdict::Applied`] once its tree is gone and its port released. It
    /// is dropped when the file was superseded or cannot be applied.
    Written { name: String, source: Option<Source>, reply: Option<oneshot::Sender<Verdict>> },
    /// The API is done with `name`'s file.
    End { name: String },
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
    /// Rescans while the watcher works: a slow safety net ([`Self::with_safety_rescan`]).
    pub(crate) safety_rescan_every: Duration,
    pub(crate) watcher: Option<crate::config::ConfigWatcher>,
    /// Feeds the change channel, to rescan once a fresh file has settled.
    settle_sender: mpsc::Sender<()>,
    applied: HashMap<String, Applied>,
    removing: HashMap<String, JoinHandle<()>>,
    /// What was last said about the folder and its files, so each is said once
    /// per change; see [`Reported`].
    reported: Reported,
    /// Requests of the API, taken by [`Manager::run`].
    requests: Option<mpsc::Receiver<FileRequest>>,
    /// Files the API is writing: scans leave them alone.
    held: HashSet<String>,
    /// `serve --max-workspaces`: at most this many workspaces run.
    max_workspaces: Option<usize>,
    /// Workspaces beyond `max_workspaces`, shown as errors until there is room.
    over_limit: BTreeSet<String>,
}

/// What the manager last logged about files it could not take, to log each
/// again only when it changed.
#[derive(Debug, Default)]
struct Reported {
    /// Files whose name is not a workspace name, with their modification time.
    bad_names: HashMap<PathBuf, Option<SystemTime>>,
    /// Files that could not be read, with the error.
    unreadable: HashMap<PathBuf, String>,
    /// Set while the folder is missing: the watch error it stands as.
    missing_folder: Option<String>,
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
            safety_rescan_every: rescan_every,
            watcher,
            settle_sender,
            applied: HashMap::new(),
            removing: HashMap::new(),
            reported: Reported::default(),
            requests: None,
            held: HashSet::new(),
            max_workspaces: None,
            over_limit: BTreeSet::new(),
        }
    }

    /// Takes the API's file requests from `requests` (docs/reference.md §10).
    pub(crate) fn with_requests(mut self, requests: mpsc::Receiver<FileRequest>) -> Manager {
        self.requests = Some(requests);
        self
    }

    /// Runs at most `max` workspaces; one beyond it shows as an error.
    pub(crate) fn with_max_workspaces(mut self, max: Option<usize>) -> Manager {
        self.max_workspaces = max;
        self
    }

    /// Rescans only every `every` while the watcher works and no watch error
    /// stands; `rescan_every` applies otherwise.
    pub(crate) fn with_safety_rescan(mut self, every: Duration) -> Manager {
        self.safety_rescan_every = every.max(self.rescan_every);
        self
    }

    /// How long until the next full rescan: short while the watcher is
    /// missing or reports an error, or a file could not be read (it is
    /// tried again soon); long while all is well.
    fn rescan_wait(&self) -> Duration {
        let watching = self.watcher.is_some() && self.registry.watch_error.read().unwrap().is_none();
        if watching && self.reported.unreadable.is_empty() {
            self.safety_rescan_every
        } else {
            self.rescan_every
        }
    }

    /// Loads every file, marks the daemon ready, then reconciles on each
    /// change signal and every `rescan_every` until cancelled.
    pub async fn run(mut self, mut changes: mpsc::Receiver<()>) {
        let started = tokio::time::Instant::now();
        let scan = self.scan();
        // Ports of workspaces that no longer exist are dropped at start; a
        // folder that could not be read says nothing of which exist.
        if let Some(scan) = &scan {
            let names: Vec<String> = scan
                .files
                .iter()
                .map(|f| f.name.clone())
                .chain(scan.unreadable.iter().map(|e| name_of(&e.path)))
                .collect();
            self.ctx.ports.retain(&|n| names.iter().any(|m| m == n));
        }
        let loaded = scan.is_some();
        self.reconcile(scan.unwrap_or_default(), false).await;
        self.ready.store(loaded, Ordering::Release);
        tracing::info!(
            workspaces = self.applied.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "initial load done"
        );
        let mut requests = self.requests.take();
        loop {
            let request = async {
                match requests.as_mut() {
                    Some(requests) => requests.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(request) = request => {
                    self.request(request).await;
                    continue;
                }
                Some(()) = changes.recv() => {}
                () = tokio::time::sleep(self.rescan_wait()) => {}
            }
            if let Some(watcher) = self.watcher.as_mut() {
                watcher.ensure();
            }
            if let Some(scan) = self.scan() {
                let unsettled = self.reconcile(scan, true).await;
                self.ready.store(true, Ordering::Release);
                if unsettled {
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

    /// Handles one request of the API.
    async fn request(&mut self, request: FileRequest) {
        match request {
            FileRequest::Begin { name, held } => {
                self.held.insert(name);
                let _ = held.send(());
            }
            FileRequest::End { name } => {
                self.held.remove(&name);
            }
            FileRequest::Written { name, source, reply } => {
                let path = self.workspaces_dir.join(format!("{name}.json"));
                match read_file(&path) {
                    Ok(Some(file)) => {
                        let version = file.version.clone();
                        let limit = self.limit_error(&file);
                        let entry = self.take_file(file, source).await;
                        let Some(reply) = reply else { return };
                        if self.over_limit.contains(&name) {
                            // Refused, not pending: the writer undoes the write.
                            let message = limit.errors.into_iter().map(|e| e.message).collect();
                            let _ = reply.send(Verdict::Failed { message });
                        } else if let (Some(entry), Some(version)) = (entry, version) {
                            let _ = entry.handle.send(Command::AwaitVerdict { version, reply });
                        }
                    }
                    Ok(None) => {}
                    Err(e) if e.source.kind() == ErrorKind::NotFound => {
                        self.applied.remove(&name);
                        self.over_limit.remove(&name);
                        self.remove(&name, reply);
                    }
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
    }

    /// Reads the folder; `None` when it cannot be listed, which must not be
    /// mistaken for "no workspaces": the next scan tries again.
    ///
    /// A missing folder (deleted, or replaced by a file) also turns readiness
    /// off and stands as the watch error until a scan succeeds.
    fn scan(&mut self) -> Option<Scan> {
        let error = match scan_dir(&self.workspaces_dir) {
            Ok(scan) => {
                self.folder_is_back();
                self.report_unreadable(&scan.unreadable);
                return Some(scan);
            }
            Err(error) => error,
        };
        let missing = matches!(error.source.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory);
        if !missing {
            self.report_unreadable(std::slice::from_ref(&error));
            return None;
        }
        self.ctx.metrics.workspace_read_errors.inc();
        if self.reported.missing_folder.is_none() {
            let message = format!(
                "workspaces folder {:?} is missing; its {} workspace(s) keep running until it is back",
                self.workspaces_dir,
                self.applied.len()
            );
            tracing::warn!("{message}");
            *self.registry.watch_error.write().unwrap() = Some(message.clone());
            self.reported.missing_folder = Some(message);
            self.ready.store(false, Ordering::Release);
        }
        None
    }

    /// Clears the watch error a missing folder set, once it can be read again.
    fn folder_is_back(&mut self) {
        let Some(message) = self.reported.missing_folder.take() else { return };
        tracing::info!("workspaces folder {:?} is back; reloading", self.workspaces_dir);
        let mut watch_error = self.registry.watch_error.write().unwrap();
        if watch_error.as_ref() == Some(&message) {
            *watch_error = None;
        }
    }

    /// Logs each file (or the folder) that could not be read, once per
    /// distinct error; each failed read counts in the metrics.
    fn report_unreadable(&mut self, unreadable: &[ReadError]) {
        let mut reported = HashMap::new();
        for error in unreadable {
            self.ctx.metrics.workspace_read_errors.inc();
            let text = error.to_string();
            if self.reported.unreadable.get(&error.path) != Some(&text) {
                tracing::warn!("{text}; keeping what was read before, retrying on the next scan");
            }
            reported.insert(error.path.clone(), text);
        }
        self.reported.unreadable = reported;
    }

    /// Warns about each file whose name is not a workspace name, once per
    /// change of the file (not once per scan).
    fn report_bad_names(&mut self, bad: &[LoadedFile]) {
        let mut reported = HashMap::new();
        for file in bad {
            if self.reported.bad_names.get(&file.path) != Some(&file.modified) {
                if let Err(error) = &file.config {
                    tracing::warn!("ignoring workspace file:\n{error}");
                }
                self.ctx.metrics.invalid_file_warnings.inc();
            }
            reported.insert(file.path.clone(), file.modified);
        }
        self.reported.bad_names = reported;
    }

    /// Brings the actors in line with `files`: new files start actors,
    /// changed ones get their new config (or their errors), removed ones stop.
    ///
    /// With `settle`, a file modified within the watcher's debounce window is
    /// left for a later pass, so a burst of writes becomes one change with the
    /// last content. Returns whether any file was left for later.
    async fn reconcile(&mut self, scan: Scan, settle: bool) -> bool {
        let started = tokio::time::Instant::now();
        let unsettled = self.reconcile_files(scan, settle).await;
        self.ctx.metrics.reconciles.inc();
        self.ctx.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
        unsettled
    }

    async fn reconcile_files(&mut self, scan: Scan, settle: bool) -> bool {
        let now = SystemTime::now();
        let fresh =
            |f: &LoadedFile| f.modified.is_some_and(|m| now.duration_since(m).map_or(true, |age| age < DEBOUNCE));
        let mut unsettled = false;
        let (good, bad): (Vec<_>, Vec<_>) = scan.files.into_iter().partition(|f| is_valid_name(&f.name));
        self.report_bad_names(&bad);
        let bad: Vec<FileError> = bad.into_iter().filter_map(|f| f.config.err()).collect();
        self.registry.set_bad_files(bad);
        // A file that could not be read this time is still there: it keeps
        // what it gave before (or, new, waits for a read that works).
        let unreadable = scan.unreadable.iter().map(|e| name_of(&e.path));

        let present: Vec<String> = good.iter().map(|f| f.name.clone()).chain(unreadable).collect();
        let gone: Vec<String> =
            self.applied.keys().filter(|n| !present.contains(n) && !self.held.contains(*n)).cloned().collect();
        for name in gone {
            self.applied.remove(&name);
            self.over_limit.remove(&name);
            self.remove(&name, None);
        }

        for file in good {
            if self.held.contains(&file.name) {
                continue;
            }
            if settle && fresh(&file) && self.applied.get(&file.name) != Some(&Applied::of(&file)) {
                unsettled = true;
                continue;
            }
            self.take_file(file, Some(Source::File)).await;
        }
        self.removing.retain(|_, removal| !removal.is_finished());
        unsettled
    }

    /// Stops the actor of a removed workspace; its port is released once
    /// its tree is gone, and then `reply` hears [`Verdict::Applied`].
    fn remove(&mut self, name: &str, reply: Option<oneshot::Sender<Verdict>>) {
        let Some(entry) = self.registry.remove(name) else {
            if let Some(reply) = reply {
                let _ = reply.send(Verdict::Applied);
            }
            return;
        };
        tracing::info!(workspace = %name, "workspace file removed; stopping");
        let ctx = self.ctx.clone();
        let name = name.to_string();
        self.removing.insert(
            name.clone(),
            tokio::spawn(async move {
                entry.handle.remove().await;
                // The tree is gone: only now may the port go to someone else.
                ctx.ports.release(&name);
                if let Some(reply) = reply {
                    let _ = reply.send(Verdict::Applied);
                }
            }),
        );
    }

    /// Hands one file to its actor: a new actor, a new config or its errors;
    /// nothing when it is what the actor has. With a `source`, the change
    /// goes to the history. Returns the actor, if there is one.
    async fn take_file(&mut self, file: LoadedFile, source: Option<Source>) -> Option<ActorEntry> {
        let next = Applied::of(&file);
        let over_limit = self.over_limit.contains(&file.name);
        match self.applied.get(&file.name) {
            Some(applied) if *applied == next && !over_limit => self.registry.get(&file.name),
            Some(_) if over_limit && self.at_limit() => self.registry.get(&file.name),
            Some(_) => {
                self.over_limit.remove(&file.name);
                self.record(&file, source);
                let command = match file.config {
                    Ok(config) => Command::Apply { config, version: file.version.unwrap_or_default() },
                    Err(error) => Command::Invalid(error),
                };
                let entry = self.registry.get(&file.name)?;
                if let Err(e) = entry.handle.send(command) {
                    tracing::warn!(workspace = %file.name, "{e}");
                    return None;
                }
                self.applied.insert(file.name, next);
                Some(entry)
            }
            None => {
                if let Some(removal) = self.removing.remove(&file.name) {
                    // The same name came back while its old tree was stopping.
                    let _ = removal.await;
                }
                if let Err(error) = &file.config {
                    tracing::warn!("invalid workspace file:\n{error}");
                }
                let config = if self.at_limit() {
                    self.over_limit.insert(file.name.clone());
                    Err(self.limit_error(&file))
                } else {
                    self.record(&file, source);
                    file.config.map(|c| (c, file.version.clone().unwrap_or_default()))
                };
                let logs = LogSink::open(&self.ctx.launch.logs_dir(), &file.name);
                let handle = actor::spawn(
                    file.name.clone(),
                    config,
                    logs.clone(),
                    self.ctx.clone(),
                    self.cancel.child_token(),
                    &self.tracker,
                );
                let entry = ActorEntry { handle, logs };
                self.registry.insert(&file.name, entry.clone());
                self.applied.insert(file.name, next);
                Some(entry)
            }
        }
    }

    /// Puts a changed file into the history: staged until its verdict, or
    /// committed at once when invalid.
    fn record(&self, file: &LoadedFile, source: Option<Source>) {
        let Some(source) = source else { return };
        let history = &self.ctx.history;
        match &file.version {
            Some(version) => history.stage(&file.name, version, file.text.clone(), source),
            None => history.record(&file.name, None, file.text.clone(), source, Outcome::Invalid),
        }
    }

    /// Whether `--max-workspaces` workspaces run already.
    fn at_limit(&self) -> bool {
        let running = self.applied.len() - self.over_limit.len();
        self.max_workspaces.is_some_and(|max| running >= max)
    }

    /// The error a workspace beyond `--max-workspaces` shows.
    fn limit_error(&self, file: &LoadedFile) -> FileError {
        let max = self.max_workspaces.unwrap_or_default();
        let message = format!(
            "workspace limit reached: this daemon runs at most {max} workspaces (serve --max-workspaces); \
             this one starts when another is removed"
        );
        FileError { file: file.path.clone(), errors: vec![ConfigError { at: String::new(), message }] }
    }
}

impl Applied {
    fn of(file: &LoadedFile) -> Applied {
        Applied { version: file.version.clone(), error: file.config.as_ref().err().cloned() }
    }
}
