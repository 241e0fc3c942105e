//! Workspace files: their typed shape, validation, JSON Schema, templates and
//! the folder watcher (docs/reference.md §3).
//!
//! The types in `types` are the one description of a workspace file: serde
//! reads files into them, [`parse`] turns every serde error into a
//! [`ConfigError`] with a JSON pointer (or a `line:column` for a syntax error),
//! and [`workspace_schema`] derives `schema/workspace.schema.json` from them
//! for editors. A valid file becomes a [`WorkspaceConfig`], which the
//! supervisor then owns immutably.

#[cfg(test)]
mod fuzz;
mod kinds;
mod schema;
mod strict;
mod template;
mod types;
mod validate;
mod watcher;

pub use schema::{schema_text, workspace_schema, SCHEMA_FILE};
pub use template::{expand, TemplateError, TemplateVars};
pub use types::{
    BreakerConfig, HealthConfig, LifecycleConfig, Limits, RestartConfig, RestartPolicy, StartMode, StopConfig,
    StopSignal, Transport, WorkspaceConfig,
};
pub use validate::{
    escape_controls, is_valid_name, is_workspace_file, judge_bytes, load_dir, load_file, name_of, parse, read_file,
    scan_dir, ConfigError, FileError, LoadedFile, ReadError, Scan, MAX_FILE_BYTES,
};
pub use watcher::{ConfigWatcher, DEBOUNCE};
