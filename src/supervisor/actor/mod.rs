//! One actor per workspace: the only writer of that workspace's state.
//!
//! The actor is split by job: [`handle`] is how others reach it (a cheap
//! `mpsc` sender), [`messages`] what they can say, [`state`] its decisions as
//! a pure state machine (`Core::step(input, now) -> effects`), and [`task`]
//! the thin driver that feeds the core and performs its effects.

mod handle;
mod lifecycle;
mod messages;
pub mod state;
mod task;
#[cfg(test)]
mod tests;

pub use handle::{SendError, WorkspaceHandle};
pub use messages::Command;
pub use task::spawn;
