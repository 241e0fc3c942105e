//! What a workspace actor can be told.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::state::Verdict;
use crate::config::{FileError, WorkspaceConfig};

/// A command to one workspace actor. Commands are handled one at a time, in
/// order, so a stop never races a restart of the same workspace.
#[derive(Debug)]
pub enum Command {
    /// Start the child if it is not running; closes the breaker. `noop`
    /// learns whether it was already running (or starting).
    Start { noop: Option<oneshot::Sender<bool>> },
    /// Stop the child and cancel any pending restart. `noop` learns whether
    /// it was already stopped.
    Stop { noop: Option<oneshot::Sender<bool>> },
    /// Stop the child if it runs, then start it; closes the breaker.
    Restart,
    /// A proxied request wants the child (docs/reference.md §11): start it if
    /// the workspace wakes on demand. `coming` learns whether the child is
    /// starting or running, so the request should wait for it.
    Demand { coming: oneshot::Sender<bool> },
    /// A new valid config from the workspace file.
    Apply { config: Arc<WorkspaceConfig>, version: String },
    /// The workspace file turned invalid; the last good config keeps running.
    Invalid(FileError),
    /// The workspace file is gone: stop, then end. The reply is sent once the
    /// child's process tree is gone.
    Remove(oneshot::Sender<()>),
    /// Tell `reply` how config `version` fared once it settled (at once if
    /// it did already); `reply` is dropped when another config supersedes it.
    AwaitVerdict { version: String, reply: oneshot::Sender<Verdict> },
    /// The daemon is over `--max-memory-mb` and this workspace's tree is the
    /// largest: restart the child as a memory-limit failure.
    OverDaemonMemory { message: String },
}
