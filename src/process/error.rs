//! Why a child could not be started.

use std::path::PathBuf;

use thiserror::Error;

/// Why a child could not be started. Every variant is a counted failure.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SpawnError {
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("not executable: {}", .0.display())]
    NotExecutable(PathBuf),
    #[error("working directory does not exist: {}", .0.display())]
    CwdMissing(PathBuf),
    #[error("out of resources: {0}")]
    Resources(String),
    #[error("{0}")]
    Template(String),
    #[error("{0}")]
    Io(String),
}

impl SpawnError {
    /// A short, stable label for metrics and the error history.
    pub fn kind(&self) -> &'static str {
        match self {
            SpawnError::NotFound(_) => "not found",
            SpawnError::NotExecutable(_) => "not executable",
            SpawnError::CwdMissing(_) => "cwd missing",
            SpawnError::Resources(_) => "resources",
            SpawnError::Template(_) => "template",
            SpawnError::Io(_) => "io",
        }
    }

    /// Classifies the error of a failed fork/exec of `program`.
    pub(crate) fn from_spawn(e: std::io::Error, program: &std::path::Path) -> SpawnError {
        use nix::errno::Errno;
        match e.raw_os_error().map(Errno::from_raw) {
            Some(Errno::ENOENT) => SpawnError::NotFound(program.display().to_string()),
            Some(Errno::EACCES | Errno::ENOEXEC) => SpawnError::NotExecutable(program.to_path_buf()),
            Some(errno @ (Errno::EMFILE | Errno::ENFILE | Errno::EAGAIN | Errno::ENOMEM)) => {
                SpawnError::Resources(errno.desc().to_lowercase())
            }
            _ => SpawnError::Io(e.to_string()),
        }
    }
}
