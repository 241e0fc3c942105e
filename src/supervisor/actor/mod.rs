//! One actor per workspace: the only writer of that workspace's state.
//!
//! The actor owns the child, its port, backoff and breaker. Everything that
//! happens to the workspace (a command, the child's exit, a probe result, a
//! timer) arrives as one [`task::Event`] and is handled by one `match`.

mod handle;
mod messages;
mod task;

pub use handle::{SendError, WorkspaceHandle};
pub use messages::Command;
pub use task::spawn;
