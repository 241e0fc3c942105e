//! What the daemon knows about its workspaces, for readers.
//!
//! Actors are the only writers. They publish immutable [`WorkspaceRecord`]s
//! into the [`StateView`] (copy-on-write through `arc-swap`) and, for a status
//! transition, a `workspace/statusChanged` notification onto the
//! [`EventBus`]. Readers (HTTP, SSE, proxy routing) load a snapshot and never
//! wait on an actor.

mod events;
mod resource_history;
mod status;
mod view;

pub use events::{Event, EventBus, Subscription, DEFAULT_RING_CAPACITY};
pub use resource_history::{ResourceHistory, ResourcePoint};
pub use status::{
    BreakerState, BreakerStatus, ErrorRecord, Health, ProxyPaths, Resources, Status, Timestamp, WorkspaceRecord,
    WorkspaceStatus,
};
pub use view::{Snapshot, StateView};
