//! The config history: every applied, rolled-back or invalid config is a
//! commit in the git repository `state/history/` (docs/reference.md §10).
//!
//! The repository holds one file per workspace, `<name>.json`, as it was
//! when the commit was made; each commit message carries trailers that say
//! which workspace, where the config came from (`api` or `file`), how it
//! fared (`applied`, `rolled-back`, `invalid`) and its config version, so
//! `git -C state/history log` tells the story without mcpvisor.
//!
//! Writes never block an actor or an HTTP handler: [`History`] is a cheap
//! handle over an unbounded channel, and one task of its own ([`History::run`])
//! makes the commits, one at a time. A config to be judged later is *staged*
//! first (its bytes, by workspace and version) and committed when its
//! verdict comes; a verdict for a version nobody staged (a restore of the
//! previous file, say) commits nothing. Reads (`log`, `show`) run `git`
//! as async processes and may run beside the writer: git's own locking
//! keeps them apart.
//!
//! Why the `git` program rather than `git2` or `gix`: it is installed
//! wherever mcpvisor is built (CI clones the repository with it); `git2`
//! compiles libgit2 from C and `gix` brings well over a hundred crates, both
//! slow on a 2-core machine, for a few commits a minute. Every command runs
//! with `GIT_DIR` and `GIT_WORK_TREE` set (it never walks up into an
//! enclosing repository), without system or global config, and with a fixed
//! identity.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Where a config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Api,
    File,
}

/// How a config fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Applied,
    RolledBack,
    Invalid,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::File => "file",
        }
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::RolledBack => "rolled-back",
            Outcome::Invalid => "invalid",
        }
    }
}

/// One commit of a workspace's history, as `GET .../history` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The commit hash.
    pub rev: String,
    /// When it was committed, RFC 3339 UTC with milliseconds.
    pub at: String,
    pub source: Source,
    pub result: Outcome,
    /// `None` for an invalid config, which has no version.
    pub config_version: Option<String>,
}

/// A history read failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("running git in {}: {source}", .dir.display())]
    Spawn { dir: PathBuf, source: std::io::Error },
    #[error("git {what} in {}: {message}", .dir.display())]
    Git { dir: PathBuf, what: &'static str, message: String },
    #[error("no revision {rev:?} of workspace {workspace:?} in the history")]
    NoRevision { workspace: String, rev: String },
}

/// A config waiting for its verdict.
struct Staged {
    content: Arc<[u8]>,
    source: Source,
}

/// One commit to make.
struct Commit {
    workspace: String,
    version: Option<String>,
    content: Arc<[u8]>,
    source: Source,
    outcome: Outcome,
}

enum Message {
    Stage {
        workspace: String,
        version: String,
        content: Arc<[u8]>,
        source: Source,
    },
    Verdict {
        workspace: String,
        version: String,
        outcome: Outcome,
    },
    Commit(Commit),
    /// Answered once everything sent before it is committed.
    Flush(oneshot::Sender<()>),
}

/// The handle to the history: cheap to clone, never waits on a write.
#[derive(Debug, Clone)]
pub struct History {
    dir: PathBuf,
    sender: mpsc::UnboundedSender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("history message")
    }
}

/// The writer's half: run it with [`Writer::run`] as a task of its own.
pub struct Writer {
    dir: PathBuf,
    receiver: mpsc::UnboundedReceiver<Message>,
    staged: HashMap<(String, String), Staged>,
    /// Whether the repository is usable; said once when it is not.
    broken: Option<String>,
    /// The newest commit's version and result per workspace: the same
    /// again (a daemon restart reading the same files) is not committed.
    newest: HashMap<String, (Option<String>, Outcome)>,
}

impl History {
    /// A history in `dir` (usually `state/history`); commits are made by
    /// the returned [`Writer`] once it runs.
    pub fn new(dir: &Path) -> (History, Writer) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let history = History { dir: dir.to_path_buf(), sender };
        let writer =
            Writer { dir: dir.to_path_buf(), receiver, staged: HashMap::new(), broken: None, newest: HashMap::new() };
        (history, writer)
    }

    /// The repository's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps `content` of `workspace` at `version` until its verdict comes.
    pub fn stage(&self, workspace: &str, version: &str, content: Arc<[u8]>, source: Source) {
        let _ = self.sender.send(Message::Stage {
            workspace: workspace.to_string(),
            version: version.to_string(),
            content,
            source,
        });
    }

    /// Commits the staged config of `workspace` at `version` with its verdict.
    pub fn verdict(&self, workspace: &str, version: &str, outcome: Outcome) {
        let _ = self.sender.send(Message::Verdict {
            workspace: workspace.to_string(),
            version: version.to_string(),
            outcome,
        });
    }

    /// Commits `content` now: a config that was judged without a child (an invalid one).
    pub fn record(&self, workspace: &str, version: Option<&str>, content: Arc<[u8]>, source: Source, outcome: Outcome) {
        let _ = self.sender.send(Message::Commit(Commit {
            workspace: workspace.to_string(),
            version: version.map(str::to_string),
            content,
            source,
            outcome,
        }));
    }

    /// Waits until everything sent before is committed (or the writer ended).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// The commits of `workspace`, newest first.
    ///
    /// # Errors
    /// git cannot be run or cannot read the repository. A repository with
    /// no commit yet has an empty history.
    pub async fn list(&self, workspace: &str) -> Result<Vec<Entry>, HistoryError> {
        if !crate::config::is_valid_name(workspace) {
            // Not a workspace, so not in the history: never a pattern or path for git.
            return Ok(Vec::new());
        }
        log(&self.dir, workspace, None).await
    }

    /// The file of `workspace` as it was at `rev` (a commit hash or a prefix of one).
    ///
    /// # Errors
    /// `rev` is not a commit of this workspace, or git failed.
    pub async fn show(&self, workspace: &str, rev: &str) -> Result<Vec<u8>, HistoryError> {
        let no_revision = || HistoryError::NoRevision { workspace: workspace.to_string(), rev: rev.to_string() };
        if !is_rev(rev) {
            return Err(no_revision());
        }
        let entries = self.list(workspace).await?;
        let Some(entry) = entries.iter().find(|e| e.rev.starts_with(rev)) else { return Err(no_revision()) };
        let object = format!("{}:{workspace}.json", entry.rev);
        let output = git(&self.dir).args(["show", &object]).output().await.map_err(|e| self.spawn_error(e))?;
        if !output.status.success() {
            return Err(no_revision());
        }
        Ok(output.stdout)
    }

    /// Whether git can read the repository: `Ok` when it does not exist yet.
    ///
    /// # Errors
    /// git's own words on why it cannot.
    pub async fn check(&self) -> Result<(), HistoryError> {
        // No repository yet: the writer starts one with the first change, and
        // moves it into place whole (see `Writer::init`).
        if !self.dir.join(".git").exists() {
            return Ok(());
        }
        let output = git(&self.dir)
            .args(["log", "-1", "--format=%H"])
            .output()
            .await
            .map_err(|source| self.spawn_error(source))?;
        let message = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if output.status.success() || message.contains("does not have any commits") {
            return Ok(());
        }
        Err(HistoryError::Git { dir: self.dir.clone(), what: "log", message })
    }

    fn spawn_error(&self, source: std::io::Error) -> HistoryError {
        HistoryError::Spawn { dir: self.dir.clone(), source }
    }
}

/// The commits of `workspace` in the repository in `dir`, newest first; at
/// most `limit` of them.
async fn log(dir: &Path, workspace: &str, limit: Option<usize>) -> Result<Vec<Entry>, HistoryError> {
    if !dir.join(".git").exists() {
        return Ok(Vec::new());
    }
    let grep = format!("--grep=^Workspace: {workspace}$");
    let mut command = git(dir);
    command.args(["log", "--format=%H%x1f%B%x1e", &grep]);
    if let Some(limit) = limit {
        command.arg(format!("--max-count={limit}"));
    }
    let output = command.output().await.map_err(|source| HistoryError::Spawn { dir: dir.to_path_buf(), source })?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if message.contains("does not have any commits") {
            return Ok(Vec::new());
        }
        return Err(HistoryError::Git { dir: dir.to_path_buf(), what: "log", message });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.split('\x1e').filter_map(|record| parse_entry(record, workspace)).collect())
}

/// A commit hash or a prefix of one (4 to 40 hex digits): nothing git could
/// take for an option or a path.
pub fn is_rev(rev: &str) -> bool {
    (4..=40).contains(&rev.len()) && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One `git log` record: hash, then the message with its trailers.
fn parse_entry(record: &str, workspace: &str) -> Option<Entry> {
    let (rev, message) = record.trim_start_matches('\n').split_once('\x1f')?;
    let trailer =
        |key: &str| message.lines().find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix(": ")));
    if trailer("Workspace")? != workspace {
        return None;
    }
    let source = match trailer("Source")? {
        "api" => Source::Api,
        _ => Source::File,
    };
    let result = match trailer("Result")? {
        "applied" => Outcome::Applied,
        "rolled-back" => Outcome::RolledBack,
        _ => Outcome::Invalid,
    };
    let config_version = trailer("Config-Version").filter(|v| *v != "none").map(str::to_string);
    Some(Entry { rev: rev.trim().to_string(), at: trailer("At")?.to_string(), source, result, config_version })
}

/// `git` bound to the repository in `dir`, free of the user's config.
fn git(dir: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("git");
    command
        .env("GIT_DIR", dir.join(".git"))
        .env("GIT_WORK_TREE", dir)
        .env("GIT_INDEX_FILE", dir.join(".git/index"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .env_remove("GIT_COMMON_DIR")
        .args(["-c", "user.name=mcpvisor", "-c", "user.email=mcpvisor@localhost", "-c", "commit.gpgsign=false"])
        // `git commit` starts auto maintenance, which by default (git 2.47+)
        // detaches: the detached process is reparented to mcpvisor, the
        // children's subreaper, and would stay a zombie no one collects.
        // In the foreground it is this command's own work.
        .args(["-c", "maintenance.autoDetach=false", "-c", "gc.autoDetach=false"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

impl Writer {
    /// Makes commits until `cancel` fires, then commits what is queued and ends.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let message = tokio::select! {
                message = self.receiver.recv() => message,
                _ = cancel.cancelled() => break,
            };
            let Some(message) = message else { return };
            self.handle(message).await;
        }
        while let Ok(message) = self.receiver.try_recv() {
            self.handle(message).await;
        }
    }

    async fn handle(&mut self, message: Message) {
        match message {
            Message::Stage { workspace, version, content, source } => {
                // A workspace has one change on trial at a time: an older
                // one still staged was superseded and gets no verdict.
                self.staged.retain(|(staged, _), _| *staged != workspace);
                self.staged.insert((workspace, version), Staged { content, source });
            }
            Message::Verdict { workspace, version, outcome } => {
                if let Some(staged) = self.staged.remove(&(workspace.clone(), version.clone())) {
                    let commit = Commit {
                        workspace,
                        version: Some(version),
                        content: staged.content,
                        source: staged.source,
                        outcome,
                    };
                    self.commit(commit).await;
                }
            }
            Message::Commit(commit) => self.commit(commit).await,
            Message::Flush(done) => {
                let _ = done.send(());
            }
        }
    }

    async fn commit(&mut self, commit: Commit) {
        if !self.newest.contains_key(&commit.workspace) {
            if let Ok(entries) = log(&self.dir, &commit.workspace, Some(1)).await {
                if let Some(entry) = entries.into_iter().next() {
                    self.newest.insert(commit.workspace.clone(), (entry.config_version, entry.result));
                }
            }
        }
        let this = (commit.version.clone(), commit.outcome);
        if commit.version.is_some() && self.newest.get(&commit.workspace) == Some(&this) {
            return;
        }
        self.newest.insert(commit.workspace.clone(), this);
        if let Err(message) = self.try_commit(&commit).await {
            if self.broken.as_ref() != Some(&message) {
                tracing::warn!("config history in {}: {message}; the change is not recorded", self.dir.display());
            }
            self.broken = Some(message);
            return;
        }
        self.broken = None;
    }

    async fn try_commit(&self, commit: &Commit) -> Result<(), String> {
        if !self.dir.join(".git").exists() {
            self.init().await?;
        }
        let file = format!("{}.json", commit.workspace);
        tokio::fs::write(self.dir.join(&file), &commit.content[..])
            .await
            .map_err(|e| format!("writing {file}: {e}"))?;
        run(git(&self.dir).args(["add", "--", &file])).await?;
        let version = commit.version.as_deref().unwrap_or("none");
        let (source, outcome) = (commit.source.as_str(), commit.outcome.as_str());
        let subject = format!("{}: {outcome} ({source}) {version}", commit.workspace);
        let body = format!(
            "Workspace: {}\nSource: {source}\nResult: {outcome}\nConfig-Version: {version}\nAt: {}",
            commit.workspace,
            crate::state::Timestamp::now()
        );
        run(git(&self.dir).args(["commit", "-q", "--allow-empty", "--no-verify", "-m", &subject, "-m", &body])).await
    }
}

impl Writer {
    /// Creates the repository beside the folder, then moves its `.git` in
    /// with one rename, so no reader ever sees half a repository.
    async fn init(&self) -> Result<(), String> {
        let fresh = self.dir.with_extension("init");
        let _ = tokio::fs::remove_dir_all(&fresh).await;
        tokio::fs::create_dir_all(&fresh).await.map_err(|e| format!("creating {}: {e}", fresh.display()))?;
        run(git(&fresh).args(["init", "-q"])).await?;
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| format!("creating the folder: {e}"))?;
        tokio::fs::rename(fresh.join(".git"), self.dir.join(".git"))
            .await
            .map_err(|e| format!("moving the new repository into place: {e}"))?;
        let _ = tokio::fs::remove_dir_all(&fresh).await;
        Ok(())
    }
}

async fn run(command: &mut tokio::process::Command) -> Result<(), String> {
    let output = command.stdout(Stdio::null()).output().await.map_err(|e| format!("running git: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!("git failed: {}", String::from_utf8_lossy(&output.stderr).trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn staged_configs_are_committed_with_their_verdict_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (history, writer) = History::new(&dir.path().join("history"));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(writer.run(cancel.clone()));
        history.stage("dev", "sha256:x", Arc::from(&b"{}"[..]), Source::File);
        history.stage("dev", "sha256:a", Arc::from(&b"{\"command\":\"a\"}"[..]), Source::Api);
        // x was superseded by a: its late verdict commits nothing, nor does one never staged.
        history.verdict("dev", "sha256:x", Outcome::Applied);
        history.verdict("dev", "sha256:a", Outcome::Applied);
        history.verdict("dev", "sha256:z", Outcome::Applied);
        history.stage("dev", "sha256:b", Arc::from(&b"{\"command\":\"b\"}"[..]), Source::File);
        history.record("other", None, Arc::from(&b"{"[..]), Source::File, Outcome::Invalid);
        history.verdict("dev", "sha256:b", Outcome::RolledBack);
        history.flush().await;

        let entries = history.list("dev").await.unwrap();
        let results: Vec<_> = entries.iter().map(|e| (e.source, e.result, e.config_version.clone())).collect();
        assert_eq!(
            results,
            [
                (Source::File, Outcome::RolledBack, Some("sha256:b".to_string())),
                (Source::Api, Outcome::Applied, Some("sha256:a".to_string())),
            ]
        );
        let first = history.show("dev", &entries[1].rev[..8]).await.unwrap();
        assert_eq!(first, b"{\"command\":\"a\"}");
        assert!(matches!(history.show("dev", "--help").await, Err(HistoryError::NoRevision { .. })));
        let other = history.list("other").await.unwrap();
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].config_version, None);
        history.check().await.unwrap();

        let log = std::process::Command::new("git")
            .args(["-C", &dir.path().join("history").to_string_lossy(), "log", "--format=%s"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&log.stdout).lines().count(), 3);
        cancel.cancel();
        task.await.unwrap();
    }
}
