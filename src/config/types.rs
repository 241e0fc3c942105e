//! Typed workspace configuration with the defaults of DESIGN §3.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One workspace file, after validation.
///
/// Keys are camelCase and unknown keys are rejected (DESIGN §3). Only `command`
/// is required; every other field has the documented default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkspaceConfig {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_passthrough")]
    pub env_passthrough: Vec<String>,
    /// Working directory; relative paths resolve against the workspaces folder.
    /// `None` means the workspace's private data dir.
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub transport: Transport,
    /// Endpoint path on the child; `None` means `/mcp`, or `/sse` for `sse`.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub restart: RestartConfig,
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
    #[serde(default)]
    pub stop: StopConfig,
    #[serde(default)]
    pub limits: Limits,
}

fn yes() -> bool {
    true
}

fn default_passthrough() -> Vec<String> {
    ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER"].map(String::from).to_vec()
}

impl WorkspaceConfig {
    /// The endpoint path on the child, with the transport's default applied.
    pub fn endpoint_path(&self) -> &str {
        match (&self.path, self.transport) {
            (Some(path), _) => path,
            (None, Transport::Sse) => "/sse",
            (None, _) => "/mcp",
        }
    }

    /// Whether a change from `self` to `next` needs a new child.
    ///
    /// Only `description` and `enabled` can change without one: `enabled` is a
    /// start or stop of its own, not a restart.
    pub fn child_differs(&self, next: &WorkspaceConfig) -> bool {
        let strip = |c: &WorkspaceConfig| WorkspaceConfig { description: None, enabled: true, ..c.clone() };
        strip(self) != strip(next)
    }
}

/// How the child speaks MCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// MCP Streamable HTTP (spec 2025-03-26 and later).
    #[default]
    StreamableHttp,
    /// The HTTP+SSE transport of spec 2024-11-05.
    Sse,
    /// Newline-delimited JSON-RPC on stdin/stdout.
    Stdio,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable-http",
            Transport::Sse => "sse",
            Transport::Stdio => "stdio",
        }
    }
}

/// Readiness and liveness probing of the child (DESIGN §3 `health`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    pub failure_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            startup_timeout: Duration::from_secs(30),
            failure_threshold: 3,
        }
    }
}

/// When a child that ended is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// Restart policy and backoff (DESIGN §3 `restart`, §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RestartConfig {
    pub policy: RestartPolicy,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    #[serde(with = "humantime_serde")]
    pub stable_after: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            policy: RestartPolicy::Always,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
        }
    }
}

/// Circuit breaker over consecutive failures (DESIGN §3 `circuitBreaker`, §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    #[serde(with = "humantime_serde")]
    pub open_max: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failure_threshold: 5, open_for: Duration::from_secs(30), open_max: Duration::from_secs(300) }
    }
}

/// How the child is stopped: `signal` to its process group, SIGKILL after `grace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct StopConfig {
    pub signal: String,
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for StopConfig {
    fn default() -> Self {
        StopConfig { signal: "SIGTERM".into(), grace: Duration::from_secs(5) }
    }
}

/// Resource limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Resident memory of the child's process tree, in MiB.
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// RLIMIT_NOFILE of the child.
    #[serde(default)]
    pub open_files: Option<u64>,
}
