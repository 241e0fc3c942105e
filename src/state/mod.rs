//! What the daemon knows about its workspaces, for readers.
//!
//! Actors are the only writers. They publish immutable [`WorkspaceRecord`]s
//! into the [`StateView`] (copy-on-write through `arc-swap`) and, for a status
//! transition, a `workspace/statusChanged` notification onto the
//! [`EventBus`]. The resource sampler publishes [`ResourceSample`]s into the
//! [`ResourceView`] the same way. Readers (HTTP, SSE, proxy routing, metrics)
//! load a snapshot and never wait on a writer.
//!
//! This layer knows nothing of the supervisor, the HTTP surface or how
//! children run.

mod activity;
mod events;
mod resource_history;
mod resources;
mod status;
mod view;

pub use activity::{Active, Activity};
pub use events::{Event, EventBus, StatusChange, Subscription, DEFAULT_RING_CAPACITY, STATUS_CHANGED};
pub use resource_history::{ResourceHistory, ResourcePoint};
pub use resources::{Isolation, ResourceSample, ResourceTotals, ResourceView, Resources};
pub use status::{
    BreakerState, BreakerStatus, CarriedSession, ErrorRecord, Health, ProxyPaths, Status, StdioSessions, Timestamp,
    WorkspaceRecord, WorkspaceStatus, MAX_LISTED_SESSIONS,
};
pub use view::{Snapshot, StateView};
