//! Where children run: the [`Launcher`] boundary, the local launcher, the
//! tracking of each child's process tree, output capture, and the cleanup
//! after a crash (the guard and the startup sweep).
//!
//! The supervisor only sees [`Launcher`] and [`Child`]; a Kubernetes or
//! Nomad backend fits behind the same two traits (docs/reference.md §1).
//! This layer knows nothing of the supervisor or the HTTP surface.

pub mod census;
pub mod cgroup;
mod error;
mod fork;
pub mod guard;
mod launcher;
mod local;
mod logs;
pub mod reaper;
pub mod runtime;
pub mod spawner;
mod spec;
mod tracking;
pub mod tree;

pub use error::SpawnError;
pub use launcher::{Child, ExitInfo, Launcher, StdioPipes};
pub use local::LocalLauncher;
pub use logs::{LogLine, LogSink, Stream, DEFAULT_TAIL_LINES};
pub use spec::{build_spec, LaunchContext, LaunchSpec};
pub use tracking::Tracking;
