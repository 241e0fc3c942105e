//! Where children run: the [`Launcher`] boundary, the local process-group
//! launcher, and capture of child output.
//!
//! The supervisor only sees [`Launcher`] and [`Child`]; a Kubernetes or Nomad
//! backend fits behind the same two traits (DESIGN §1).

mod group;
pub mod guard;
mod launcher;
mod logs;
pub mod reaper;
pub mod runtime;
pub mod spawner;
mod spec;
pub mod tree;

pub use group::signal_group;
pub use launcher::{Child, ExitInfo, Launcher, LocalLauncher, SpawnError};
pub use logs::{LogLine, LogSink, Stream, DEFAULT_TAIL_LINES};
pub use spec::{build_spec, LaunchContext, LaunchSpec};
