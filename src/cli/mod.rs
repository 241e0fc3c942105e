//! The command line of docs/reference.md §2: the flags ([`args`]), the
//! local `validate`, and the client commands that talk to a running daemon
//! over its HTTP API ([`client`]), each in a module of its own.

mod args;
mod client;
mod commands;
mod config;
mod doctor;
mod logs;
mod status;
mod validate;
mod watch;

pub use args::{Cli, CliCommand, DemoTransport, LogFormat};
pub use commands::command;
pub use config::{apply, diff, edit, history, rm, rollback};
pub use doctor::doctor;
pub use logs::logs;
pub use status::status;
pub use validate::validate;
pub use watch::watch;

use thiserror::Error;

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OK: i32 = 0;
    /// Invalid input: a bad workspace file, an unknown workspace.
    pub const INVALID: i32 = 1;
    /// The daemon could not be reached, or did not answer as mcpvisor.
    pub const UNREACHABLE: i32 = 3;
}

/// A client command failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach mcpvisor at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("unexpected answer from {url}: {message}")]
    BadAnswer { url: String, message: String },
    #[error("{0}")]
    Api(String),
    /// `doctor` found issues of severity `error` (it printed them).
    #[error("{0} error(s) found")]
    Issues(usize),
}

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Unreachable { .. } | ClientError::BadAnswer { .. } => exit::UNREACHABLE,
            ClientError::Api(_) | ClientError::Issues(_) => exit::INVALID,
        }
    }
}
