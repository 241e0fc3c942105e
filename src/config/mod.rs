//! Workspace files: their typed shape, validation and templates (DESIGN §3).
//!
//! A workspace file is read in two passes. [`validate`] walks the raw JSON and
//! collects every error it can find (unknown keys, wrong types, bad durations,
//! unknown templates), each with a JSON pointer, or a line:column for syntax
//! errors. Only a file with no errors is deserialized into a
//! [`WorkspaceConfig`], which the supervisor then owns immutably.

mod template;
mod types;
mod validate;
mod watcher;

pub use template::{expand, TemplateError, TemplateVars};
pub use types::{
    BreakerConfig, HealthConfig, Limits, RestartConfig, RestartPolicy, StopConfig, Transport, WorkspaceConfig,
};
pub use validate::{
    is_valid_name, is_workspace_file, load_dir, load_file, parse, ConfigError, FileError, LoadedFile, MAX_FILE_BYTES,
};
pub use watcher::{ConfigWatcher, DEBOUNCE};
