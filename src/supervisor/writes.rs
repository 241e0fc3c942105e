//! Workspace files written through the API (docs/reference.md §10): PUT,
//! PATCH and DELETE of `/api/workspaces/{name}/config`, and rollbacks.
//!
//! A write is checked (`If-Match`, then validation, which collects every
//! error), written atomically into the workspaces folder, handed to the
//! manager at once (no waiting for the watcher), and judged by the actor:
//! applied once its child reaches `running`, or rolled back by the core to
//! the last config that ran. After a rollback the write puts the old file
//! back (or removes a new one), so the file never claims what does not run.
//!
//! Writes to one workspace run one at a time (a lock per workspace, held
//! from the `If-Match` check until the verdict), so concurrent writers each
//! get an honest answer and the file, the status and the history agree.
//! The manager leaves a file alone while the API holds it
//! ([`FileRequest::Begin`] .. [`FileRequest::End`]). Each write runs as a task
//! of its own: a client that goes away does not leave a half-done write.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::actor::state::Verdict;
use super::manager::FileRequest;
use crate::config::{is_valid_name, judge_bytes, FileError, LoadedFile};
use crate::history::{History, Outcome, Source};

/// How long a write waits for its verdict beyond the configs' own timings
/// (the old child's grace, the new one's startup timeout).
const VERDICT_SLACK: Duration = Duration::from_secs(10);

/// A write that was not made.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("workspace name {0:?} must match ^[a-z0-9][a-z0-9_-]{{0,62}}$")]
    BadName(String),
    #[error("no workspace file for {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(FileError),
    #[error("the workspace file changed: If-Match {given} but its version is {}", .current.as_deref().unwrap_or("none (no file)"))]
    Stale { given: String, current: Option<String> },
    #[error("the body is not a JSON object: {0}")]
    BadPatch(String),
    #[error("writing workspace file {}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// How a write fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The new config runs (or needs no child).
    Applied,
    /// Its child did not reach `running`; the old file is back and the
    /// last good config runs again (or a new workspace is gone).
    RolledBack { message: String },
    /// A change made meanwhile (a hand edit) replaced it.
    Superseded,
    /// Removed: the tree is gone and the port released.
    Removed,
    /// Not judged yet: `?wait=false`, or its child is still on trial
    /// after every deadline (it was stopped meanwhile, say).
    Pending,
}

/// What a write changes.
#[derive(Debug)]
pub enum Change {
    /// Create or replace the file with these bytes.
    Put(Vec<u8>),
    /// Merge this JSON Merge Patch (RFC 7386) into the stored file.
    Patch(serde_json::Value),
    /// Remove the file.
    Delete,
}

/// One write, as a handler asks for it.
#[derive(Debug)]
pub struct Write {
    pub name: String,
    pub change: Change,
    /// The `If-Match` version (quotes and `W/` removed); `*` matches any file.
    pub if_match: Option<String>,
    pub source: Source,
}

/// The answer of an accepted write: its version, then how it fared.
#[derive(Debug)]
pub struct Accepted {
    /// The new file's config version (`None` for a delete).
    pub version: Option<String>,
    /// Resolves once the write is judged.
    pub outcome: oneshot::Receiver<WriteOutcome>,
}

/// The API's writer of workspace files; shared by the handlers.
pub struct ConfigWriter {
    dir: PathBuf,
    requests: mpsc::Sender<FileRequest>,
    history: History,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A workspace file as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub bytes: Vec<u8>,
    pub file: LoadedFile,
}

impl ConfigWriter {
    pub fn new(dir: PathBuf, requests: mpsc::Sender<FileRequest>, history: History) -> ConfigWriter {
        ConfigWriter { dir, requests, history, locks: Mutex::new(HashMap::new()) }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The stored file of `name`, if there is one.
    ///
    /// # Errors
    /// The file exists but cannot be read.
    pub fn read(&self, name: &str) -> Result<Option<Stored>, WriteError> {
        if !is_valid_name(name) {
            // Never a path outside the folder (`../x`).
            return Err(WriteError::BadName(name.to_string()));
        }
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(Stored { file: judge_bytes(&path, &bytes), bytes })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(WriteError::Io { path, source }),
        }
    }

    /// Starts `write` as a task of its own; answers once it is accepted
    /// (checked, validated and written), with how it fares to follow.
    ///
    /// # Errors
    /// A bad name, a stale `If-Match`, an invalid config (every error, and
    /// recorded in the history as `invalid`), a missing file to patch or
    /// delete, or a failed write; nothing changed then.
    pub async fn write(self: &Arc<Self>, write: Write) -> Result<Accepted, WriteError> {
        if !is_valid_name(&write.name) {
            return Err(WriteError::BadName(write.name));
        }
        let (accepted, accepting) = oneshot::channel();
        let (outcome, outcome_receiver) = oneshot::channel();
        let writer = self.clone();
        tokio::spawn(async move {
            let lock = writer.lock(&write.name);
            let _guard = lock.lock().await;
            let name = write.name.clone();
            match writer.prepare(write) {
                Err(e) => {
                    let _ = accepted.send(Err(e));
                }
                Ok(prepared) => {
                    // The file is touched only once no scan can act on it.
                    let (held, holding) = oneshot::channel();
                    let _ = writer.requests.send(FileRequest::Begin { name: name.clone(), held }).await;
                    let _ = holding.await;
                    let result = writer.apply(&name, prepared, accepted).await;
                    let _ = writer.requests.send(FileRequest::End { name }).await;
                    let _ = outcome.send(result);
                }
            }
        });
        let version = accepting.await.map_err(|_| WriteError::ShuttingDown)??;
        Ok(Accepted { version, outcome: outcome_receiver })
    }

    fn lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap();
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(name.to_string()).or_default().clone()
    }

    /// Checks `If-Match` against the stored file and builds the new bytes.
    fn prepare(&self, write: Write) -> Result<Prepared, WriteError> {
        let old = self.read(&write.name)?;
        if let Some(given) = write.if_match {
            let current = old.as_ref().and_then(|s| s.file.version.clone());
            let matches = match given.as_str() {
                "*" => old.is_some(),
                _ => current.as_deref() == Some(given.as_str()),
            };
            if !matches {
                return Err(WriteError::Stale { given, current });
            }
        }
        let path = self.path(&write.name);
        let bytes = match write.change {
            Change::Delete => {
                return match old {
                    Some(old) => Ok(Prepared { old: Some(old), new: None }),
                    None => Err(WriteError::NotFound(write.name)),
                };
            }
            Change::Put(bytes) => bytes,
            Change::Patch(patch) => {
                let old = old.as_ref().ok_or_else(|| WriteError::NotFound(write.name.clone()))?;
                merge(&old.bytes, &patch)?
            }
        };
        let file = judge_bytes(&path, &bytes);
        if let Err(error) = &file.config {
            self.history.record(&write.name, None, Arc::from(bytes), write.source, Outcome::Invalid);
            return Err(WriteError::Invalid(error.clone()));
        }
        Ok(Prepared { old, new: Some((bytes, file, write.source)) })
    }

    /// Writes the file, has it applied and waits for its verdict; puts the
    /// old file back when the new config was rolled back.
    async fn apply(
        &self,
        name: &str,
        prepared: Prepared,
        accepted: oneshot::Sender<Result<Option<String>, WriteError>>,
    ) -> WriteOutcome {
        let path = self.path(name);
        let Some((bytes, file, source)) = prepared.new else {
            if let Err(source) = std::fs::remove_file(&path) {
                let _ = accepted.send(Err(WriteError::Io { path, source }));
                return WriteOutcome::Pending;
            }
            let _ = accepted.send(Ok(None));
            return match self.written(name, None).await {
                Some(_) => WriteOutcome::Removed,
                None => WriteOutcome::Pending,
            };
        };
        if let Err(source) = crate::fsutil::write_atomic(&path, &bytes) {
            let _ = accepted.send(Err(WriteError::Io { path, source }));
            return WriteOutcome::Pending;
        }
        let _ = accepted.send(Ok(file.version.clone()));
        let within = verdict_deadline(prepared.old.as_ref(), &file);
        let verdict = tokio::time::timeout(within, self.written(name, Some(source))).await;
        let message = match verdict {
            Ok(Some(Verdict::Applied)) => return WriteOutcome::Applied,
            Ok(None) => return WriteOutcome::Superseded,
            Err(_) => return WriteOutcome::Pending,
            Ok(Some(Verdict::RolledBack { message, .. } | Verdict::Failed { message })) => message,
        };
        // Put the old file back, or none when the workspace was new; the
        // manager applies it (for a new workspace: removes it) at once.
        let restored = match &prepared.old {
            Some(old) => crate::fsutil::write_atomic(&path, &old.bytes),
            None => std::fs::remove_file(&path),
        };
        if let Err(e) = restored {
            tracing::error!(workspace = name, "putting back the workspace file after a rollback: {e}");
        }
        match prepared.old {
            Some(_) => {
                let _ = self.requests.send(FileRequest::Written { name: name.into(), source: None, reply: None }).await;
            }
            None => {
                self.written(name, None).await;
            }
        }
        WriteOutcome::RolledBack { message }
    }

    /// Tells the manager the file was written; its verdict (`None` when
    /// superseded, or when the manager is gone).
    async fn written(&self, name: &str, source: Option<Source>) -> Option<Verdict> {
        let (reply, verdict) = oneshot::channel();
        let request = FileRequest::Written { name: name.to_string(), source, reply: Some(reply) };
        self.requests.send(request).await.ok()?;
        verdict.await.ok()
    }
}

/// The old file, and the new one with where it came from (none for a delete).
struct Prepared {
    old: Option<Stored>,
    new: Option<(Vec<u8>, LoadedFile, Source)>,
}

/// How long to wait for a verdict on `new`: the old child's grace, the new
/// child's startup timeout and probe timeout, and slack.
fn verdict_deadline(old: Option<&Stored>, new: &LoadedFile) -> Duration {
    let grace = old.and_then(|o| o.file.config.as_ref().ok()).map_or(Duration::ZERO, |c| c.stop.grace);
    let startup = new.config.as_ref().map_or(Duration::ZERO, |c| c.health.startup_timeout + c.health.timeout);
    grace + startup + VERDICT_SLACK
}

/// `old` (a workspace file) with `patch` merged in (RFC 7386), pretty-printed.
fn merge(old: &[u8], patch: &serde_json::Value) -> Result<Vec<u8>, WriteError> {
    if !patch.is_object() {
        return Err(WriteError::BadPatch("a merge patch of a workspace file must be an object".into()));
    }
    let mut value: serde_json::Value = serde_json::from_slice(old)
        .map_err(|e| WriteError::BadPatch(format!("the stored file is not JSON ({e}); PUT a whole file instead")))?;
    json_patch::merge(&mut value, patch);
    let mut bytes = serde_json::to_vec_pretty(&value).unwrap_or_default();
    bytes.push(b'\n');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_patch_sets_removes_and_keeps_keys() {
        let old = br#"{"command": "x", "args": ["a"], "env": {"A": "1", "B": "2"}}"#;
        let patch = serde_json::json!({"args": ["b"], "env": {"A": null, "C": "3"}});
        let merged: serde_json::Value = serde_json::from_slice(&merge(old, &patch).unwrap()).unwrap();
        assert_eq!(merged, serde_json::json!({"command": "x", "args": ["b"], "env": {"B": "2", "C": "3"}}));
        assert!(matches!(merge(old, &serde_json::json!([1])), Err(WriteError::BadPatch(_))));
    }
}
