//! The cheap, cloneable handle through which others talk to an actor.

use tokio::sync::{mpsc, oneshot};

use super::messages::Command;

/// How many commands may wait for one actor.
pub const COMMAND_QUEUE: usize = 64;

/// Sends commands to one workspace actor; never waits on the child.
#[derive(Debug, Clone)]
pub struct WorkspaceHandle {
    sender: mpsc::Sender<Command>,
}

/// A command could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the workspace has too many pending commands")]
    Busy,
    #[error("the workspace is shutting down")]
    Gone,
}

impl WorkspaceHandle {
    pub(super) fn new(sender: mpsc::Sender<Command>) -> WorkspaceHandle {
        WorkspaceHandle { sender }
    }

    /// Queues `command` without waiting.
    ///
    /// # Errors
    /// The queue is full ([`SendError::Busy`]) or the actor has ended.
    pub fn send(&self, command: Command) -> Result<(), SendError> {
        self.sender.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Busy,
            mpsc::error::TrySendError::Closed(_) => SendError::Gone,
        })
    }

    /// Asks the actor to stop its child and end; resolves when the tree is gone.
    pub async fn remove(&self) {
        let (reply, done) = oneshot::channel();
        if self.sender.send(Command::Remove(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}
