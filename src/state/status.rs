//! Status types and their JSON shapes (docs/reference.md §5).

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::resources::Resources;
use crate::config::FileError;

/// Lifecycle of a workspace's child (docs/reference.md §5).
///
/// `stopped -> starting -> running -> stopping -> stopped`;
/// `starting | running -> error -> starting` after backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Stopped,
    Starting,
    Running,
    Stopping,
    Error,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Stopped => "stopped",
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Stopping => "stopping",
            Status::Error => "error",
            Status::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result of the MCP-level probes of a running child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
    Unknown,
}

/// Circuit breaker position (docs/reference.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// A wall-clock time, serialized as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(SystemTime::now())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map(Timestamp).map_err(serde::de::Error::custom)
    }
}

/// A transport's name: `streamable-http`, `sse` or `stdio`. An alias, so
/// that serde reads it with [`transport_name`] instead of borrowing it.
pub type TransportName = &'static str;

/// Reads a transport name back into the `&'static str` the status holds.
fn transport_name<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    ["streamable-http", "sse", "stdio"]
        .into_iter()
        .find(|known| *known == name)
        .ok_or_else(|| serde::de::Error::unknown_variant(&name, &["streamable-http", "sse", "stdio"]))
}

/// The breaker as shown in a WorkspaceStatus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerStatus {
    pub state: BreakerState,
    pub failure_count: u32,
    pub next_retry_at: Option<Timestamp>,
}

/// Where clients reach the workspace through mcpvisor (docs/reference.md §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyPaths {
    pub mcp: String,
    pub sse: String,
}

/// One failure of a child: a failed start, an exit, a failed probe.
///
/// Shown as `lastError` (docs/reference.md §5) and kept, ten per workspace, as its
/// error history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRecord {
    pub message: String,
    pub at: Timestamp,
    /// Short machine-readable kind: `exit`, `spawn`, `startup timeout`, ...
    pub reason: String,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub stderr_tail: Vec<String>,
}

/// The public status of one workspace: `GET /api/workspaces/{name}` (docs/reference.md §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    pub workspace: String,
    pub status: Status,
    /// Why the workspace is in its status: the reason of its last transition
    /// (`ready`, `stop`, `on-demand`, `idle`, `exited`, ...).
    #[serde(default)]
    pub reason: Option<String>,
    pub health: Health,
    pub enabled: bool,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    #[serde(deserialize_with = "transport_name")]
    pub transport: TransportName,
    /// How the child's tree is held together; `None` before the first spawn.
    pub isolation: Option<super::resources::Isolation>,
    pub upstream: Option<String>,
    pub proxy: ProxyPaths,
    pub started_at: Option<Timestamp>,
    /// Filled in when rendered, from `started_at`.
    pub uptime_ms: Option<u64>,
    pub last_health_check: Option<Timestamp>,
    pub restart_count: u32,
    pub breaker: BreakerStatus,
    pub last_error: Option<ErrorRecord>,
    /// Not read back: `FileError` has no `Deserialize` yet (clients that
    /// need it read the JSON).
    #[serde(skip_deserializing)]
    pub config_error: Option<FileError>,
    pub config_version: Option<String>,
    pub resources: Option<Resources>,
    /// The version of the last config that was applied: its child reached
    /// `running`, or it needed none (docs/reference.md §10).
    #[serde(default)]
    pub applied_version: Option<String>,
    /// The version of the workspace file as last read, applied or not.
    #[serde(default)]
    pub file_version: Option<String>,
    /// A `stdio` workspace's client sessions (docs/reference.md §9); absent
    /// for other transports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio: Option<StdioSessions>,
    /// The client sessions that mcpvisor carries over to each new child
    /// (docs/reference.md §11), at most [`MAX_LISTED_SESSIONS`], most
    /// recently active first; absent when there is none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_sessions: Vec<CarriedSession>,
}

/// Most client sessions a status lists; `/api/debug/state/connections`
/// pages through all of them.
pub const MAX_LISTED_SESSIONS: usize = 100;

/// A client session that outlives its child, as its workspace's status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CarriedSession {
    /// The `Mcp-Session-Id` (or legacy `session_id`) mcpvisor gave the client.
    pub session_id: String,
    /// The client's transport: `streamable-http` or `sse`.
    pub transport: String,
    /// How many times it was carried over to a new child.
    pub carried_over: u32,
}

/// The client sessions of a `stdio` workspace, as its status shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StdioSessions {
    /// Open client sessions.
    pub sessions: usize,
    /// With `per-session`: the pid of each session's child.
    pub session_pids: Vec<u32>,
}

/// Everything an actor publishes about its workspace: the public status plus
/// what `/api/debug/state/workspace` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceRecord {
    #[serde(skip)]
    pub status: WorkspaceStatus,
    pub pgid: Option<i32>,
    /// The config version the actor was last told to run.
    pub desired_config_version: Option<String>,
    /// `running` or `stopped`: what the actor works towards.
    pub desired: &'static str,
    /// A scheduled restart or trial start, if any.
    pub pending: Option<String>,
    /// The last ten errors, oldest first.
    pub errors: Vec<ErrorRecord>,
    /// The limits of the config in force.
    pub limits: crate::config::Limits,
    /// How long a proxied request to the stopped or starting workspace waits
    /// for its child (its `startupTimeout`), when a request starts it
    /// (docs/reference.md §11); `None` answers such a request at once.
    #[serde(skip)]
    pub hold_for: Option<std::time::Duration>,
}

impl WorkspaceRecord {
    /// The public status as of `now`, with `uptimeMs` filled in.
    pub fn render(&self, now: SystemTime) -> WorkspaceStatus {
        let mut status = self.status.clone();
        status.uptime_ms = status
            .started_at
            .filter(|_| status.status == Status::Running)
            .and_then(|t| now.duration_since(t.0).ok())
            .map(|d| d.as_millis() as u64);
        status
    }
}
