//! The cheap, cloneable handle through which others talk to an actor.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::messages::Command;
use crate::state::Activity;

/// How many commands may wait for one actor.
pub const COMMAND_QUEUE: usize = 64;

/// Sends commands to one workspace actor; never waits on the child.
#[derive(Debug, Clone)]
pub struct WorkspaceHandle {
    sender: mpsc::Sender<Command>,
    /// The proxy's record of the workspace's clients, read for idle stops.
    activity: Arc<Activity>,
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
    pub(super) fn new(sender: mpsc::Sender<Command>, activity: Arc<Activity>) -> WorkspaceHandle {
        WorkspaceHandle { sender, activity }
    }

    /// The workspace's client activity, which the proxy writes.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Asks the actor to start the child for a request, if the workspace
    /// wakes on demand; resolves with whether the child is coming (starting
    /// or running). Waits for room in the queue and for the actor's answer,
    /// never for the child; `false` when the actor has ended.
    pub async fn demand(&self) -> bool {
        let (coming, answer) = oneshot::channel();
        self.sender.send(Command::Demand { coming }).await.is_ok() && answer.await.unwrap_or(false)
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
