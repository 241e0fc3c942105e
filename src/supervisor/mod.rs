//! Supervision: the manager that reconciles workspace files into actors, and
//! one actor per workspace that runs, probes and restarts its child.

pub mod actor;
pub mod backoff;
pub mod breaker;
mod manager;
pub mod memory;
pub mod probe;
pub mod writes;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

pub use manager::{FileRequest, Manager};

use crate::config::FileError;
use crate::ports::PortAllocator;
use crate::process::{LaunchContext, Launcher, LogSink};
use crate::state::EventBus;
use actor::WorkspaceHandle;

/// What every actor shares: where children run, ports, the event bus.
pub struct SupervisorContext {
    pub launcher: Arc<dyn Launcher>,
    pub ports: PortAllocator,
    pub bus: Arc<EventBus>,
    pub launch: LaunchContext,
    /// Probes children for readiness and liveness.
    pub prober: Arc<dyn probe::Prober>,
    /// `state/runtime.json`, for the sweep after a crash.
    pub runtime: crate::process::runtime::RuntimeFile,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The stdio bridge's hub of each running `stdio` child; the proxy reads it.
    pub hubs: Arc<crate::bridge::Hubs>,
    /// The config history (`state/history/`); writes never wait.
    pub history: crate::history::History,
    /// Start slots shared by every actor (`--max-concurrent-starts`): one
    /// is held from a spawn until the child is ready or failed.
    pub starts: Arc<tokio::sync::Semaphore>,
}

/// A workspace's handle and log sink, as the HTTP layer reaches them.
#[derive(Debug, Clone)]
pub struct ActorEntry {
    pub handle: WorkspaceHandle,
    pub logs: LogSink,
}

/// The live actors by name, plus files that could not become a workspace.
///
/// The manager writes it when workspaces come and go; HTTP handlers read it
/// briefly to find a handle. No lock here is held across an await.
#[derive(Debug, Default)]
pub struct Registry {
    actors: RwLock<BTreeMap<String, ActorEntry>>,
    bad_files: RwLock<Vec<FileError>>,
    /// The last error of the folder watcher, if it is failing.
    pub watch_error: Arc<RwLock<Option<String>>>,
}

impl Registry {
    /// Names of every workspace with an actor.
    pub fn names(&self) -> Vec<String> {
        self.actors.read().unwrap().keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<ActorEntry> {
        self.actors.read().unwrap().get(name).cloned()
    }

    /// `.json` files whose name is not a valid workspace name.
    pub fn bad_files(&self) -> Vec<FileError> {
        self.bad_files.read().unwrap().clone()
    }

    fn insert(&self, name: &str, entry: ActorEntry) {
        self.actors.write().unwrap().insert(name.to_string(), entry);
    }

    fn remove(&self, name: &str) -> Option<ActorEntry> {
        self.actors.write().unwrap().remove(name)
    }

    fn set_bad_files(&self, files: Vec<FileError>) {
        *self.bad_files.write().unwrap() = files;
    }
}
