//! The typed workspace file, with the defaults of docs/reference.md §3.
//!
//! These types are the one description of a workspace file: serde reads
//! files into them (with the rules of each field's kind, see `kinds`), and
//! `schemars` derives `schema/workspace.schema.json` from them, doc comments
//! becoming descriptions.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::kinds::{self, checked, EndpointPath, EnvName, NonEmptyTemplate, Positive, Template};

/// One mcpvisor workspace: the MCP server child to run and how to supervise it.
///
/// The workspace name is the file stem. Keys are camelCase and unknown keys
/// are rejected. Only `command` is required; every other key has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "mcpvisor workspace file")]
pub struct WorkspaceConfig {
    /// What the workspace is for; shown to people only.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether the child runs; `false` keeps the workspace (and its port) but
    /// stops the child.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The program to run. A relative path with a `/` resolves against `cwd`;
    /// a bare name is looked up in the child's `PATH`.
    #[serde(deserialize_with = "checked::<_, NonEmptyTemplate>")]
    #[schemars(with = "NonEmptyTemplate")]
    pub command: String,
    /// Arguments of the program.
    #[serde(default, deserialize_with = "checked::<_, Vec<Template>>")]
    #[schemars(with = "Vec<Template>")]
    pub args: Vec<String>,
    /// Environment variables set for the child, after every other one.
    #[serde(default, deserialize_with = "checked::<_, BTreeMap<EnvName, Template>>")]
    #[schemars(with = "BTreeMap<EnvName, Template>")]
    pub env: BTreeMap<String, String>,
    /// Names of variables copied from mcpvisor's own environment into the
    /// child's.
    #[serde(default = "default_passthrough", deserialize_with = "checked::<_, Vec<EnvName>>")]
    #[schemars(with = "Vec<EnvName>")]
    pub env_passthrough: Vec<String>,
    /// Working directory of the child; a relative path resolves against the
    /// workspaces folder. Unset: the workspace's private data directory.
    #[serde(default, deserialize_with = "checked::<_, Option<NonEmptyTemplate>>")]
    #[schemars(with = "Option<NonEmptyTemplate>")]
    pub cwd: Option<String>,
    /// How the child speaks MCP.
    #[serde(default)]
    pub transport: Transport,
    /// Endpoint path on the child. Unset: `/mcp`, or `/sse` for the `sse`
    /// transport.
    #[serde(default, deserialize_with = "checked::<_, Option<EndpointPath>>")]
    #[schemars(with = "Option<EndpointPath>")]
    pub path: Option<String>,
    /// Readiness and liveness probes.
    #[serde(default)]
    pub health: HealthConfig,
    /// When and how fast a child that ended is started again.
    #[serde(default)]
    pub restart: RestartConfig,
    /// Stops restarting after repeated failures, for a while.
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
    /// How the child is stopped.
    #[serde(default)]
    pub stop: StopConfig,
    /// Resource limits of the child; unset is unlimited.
    #[serde(default)]
    pub limits: Limits,
    /// When the child starts and when it stops for want of clients.
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
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
    /// Only `description`, `enabled` and `lifecycle` can change without one:
    /// `enabled` is a start or stop of its own, not a restart, and `lifecycle`
    /// only decides the next start or stop.
    pub fn child_differs(&self, next: &WorkspaceConfig) -> bool {
        let strip = |c: &WorkspaceConfig| WorkspaceConfig {
            description: None,
            enabled: true,
            lifecycle: LifecycleConfig::default(),
            ..c.clone()
        };
        strip(self) != strip(next)
    }
}

/// How the child speaks MCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// MCP Streamable HTTP (spec 2025-03-26 and later) on `${PORT}`.
    #[default]
    StreamableHttp,
    /// The HTTP+SSE transport of spec 2024-11-05 on `${PORT}`.
    Sse,
    /// Newline-delimited JSON-RPC on the child's stdin and stdout.
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

/// Readiness and liveness probing of the child (MCP `initialize`, then `ping`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthConfig {
    /// Time between two liveness probes of a running child.
    #[serde(serialize_with = "humantime_serde::serialize", deserialize_with = "checked::<_, kinds::Duration>")]
    #[schemars(with = "kinds::Duration")]
    pub interval: Duration,
    /// How long one probe may take before it counts as failed.
    #[serde(serialize_with = "humantime_serde::serialize", deserialize_with = "checked::<_, kinds::Duration>")]
    #[schemars(with = "kinds::Duration")]
    pub timeout: Duration,
    /// How long a new child may take to answer its first probe.
    #[serde(serialize_with = "humantime_serde::serialize", deserialize_with = "checked::<_, kinds::Duration>")]
    #[schemars(with = "kinds::Duration")]
    pub startup_timeout: Duration,
    /// Consecutive failed probes after which a running child is unhealthy and
    /// killed.
    #[serde(deserialize_with = "checked::<_, Positive<u32>>")]
    #[schemars(with = "Positive<u32>")]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// After every exit.
    #[default]
    Always,
    /// After an exit with a non-zero code or a signal.
    OnFailure,
    /// Never: an ended child stays stopped.
    Never,
}

/// Restart policy and backoff between restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RestartConfig {
    /// Which exits lead to a restart.
    pub policy: RestartPolicy,
    /// Wait before the second of consecutive restarts; it doubles with each
    /// further failure.
    #[serde(serialize_with = "humantime_serde::serialize", deserialize_with = "checked::<_, kinds::Duration>")]
    #[schemars(with = "kinds::Duration")]
    pub backoff_initial: Duration,
    /// The longest wait between restarts.
    #[serde(serialize_with = "humantime_serde::serialize", deserialize_with = "checked::<_, kinds::Duration>")]
    #[schemars(with = "kinds::Duration")]
    pub backoff_max: Duration,
    /// A child up this long counts as stable: backoff resets and the circuit
    /// breaker closes.
    #[serde(serialize_with = "humantime_serde::serialize", deserialize_with = "checked::<_, kinds::Duration>")]
    #[schemars(with = "kinds::Duration")]
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

/// Circuit breaker over consecutive failures (exits, failed starts, unhealthy kills).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    #[serde(deserialize_with = "checked::<_, Positive<u32>>")]
    #[schemars(with = "Positive<u32>")]
    pub failure_threshold: u32,
    /// How long the breaker stays open before one trial start; doubles with
    /// each re-open.
    #[serde(serialize_with = "humantime_serde::serialize", deserialize_with = "checked::<_, kinds::Duration>")]
    #[schemars(with = "kinds::Duration")]
    pub open_for: Duration,
    /// The longest the breaker stays open.
    #[serde(serialize_with = "humantime_serde::serialize", deserialize_with = "checked::<_, kinds::Duration>")]
    #[schemars(with = "kinds::Duration")]
    pub open_max: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failure_threshold: 5, open_for: Duration::from_secs(30), open_max: Duration::from_secs(300) }
    }
}

/// How the child is stopped: `signal` to its process group, SIGKILL after `grace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct StopConfig {
    /// The signal that asks the child to stop.
    pub signal: StopSignal,
    /// How long the child may take to exit before it is killed with SIGKILL.
    #[serde(serialize_with = "humantime_serde::serialize", deserialize_with = "checked::<_, kinds::Duration>")]
    #[schemars(with = "kinds::Duration")]
    pub grace: Duration,
}

impl Default for StopConfig {
    fn default() -> Self {
        StopConfig { signal: StopSignal::default(), grace: Duration::from_secs(5) }
    }
}

/// A signal that asks a child to stop, by its name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum StopSignal {
    #[default]
    #[serde(rename = "SIGTERM")]
    Term,
    #[serde(rename = "SIGINT")]
    Int,
    #[serde(rename = "SIGHUP")]
    Hup,
    #[serde(rename = "SIGQUIT")]
    Quit,
    #[serde(rename = "SIGKILL")]
    Kill,
    #[serde(rename = "SIGUSR1")]
    Usr1,
    #[serde(rename = "SIGUSR2")]
    Usr2,
}

impl StopSignal {
    /// The signal to send.
    pub fn as_nix(self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal;
        match self {
            StopSignal::Term => Signal::SIGTERM,
            StopSignal::Int => Signal::SIGINT,
            StopSignal::Hup => Signal::SIGHUP,
            StopSignal::Quit => Signal::SIGQUIT,
            StopSignal::Kill => Signal::SIGKILL,
            StopSignal::Usr1 => Signal::SIGUSR1,
            StopSignal::Usr2 => Signal::SIGUSR2,
        }
    }
}

/// Resource limits of the child; an unset limit is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Resident memory of the child's process tree, in MiB; over it the child
    /// is restarted.
    #[serde(default, deserialize_with = "checked::<_, Option<Positive<u64>>>")]
    #[schemars(with = "Option<Positive<u64>>")]
    pub memory_mb: Option<u64>,
    /// RLIMIT_NOFILE of the child: how many files it may hold open.
    #[serde(default, deserialize_with = "checked::<_, Option<Positive<u64>>>")]
    #[schemars(with = "Option<Positive<u64>>")]
    pub open_files: Option<u64>,
}

/// When the child starts and when it stops for want of clients (docs/reference.md §11).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LifecycleConfig {
    /// Whether the child starts with the daemon or with the first proxied request.
    pub start: StartMode,
    /// With no proxied request and no open client stream for this long, the
    /// child is stopped (reason `idle`, not a failure); the next request
    /// starts it again. Unset: never.
    #[serde(
        serialize_with = "humantime_serde::option::serialize",
        deserialize_with = "checked::<_, Option<kinds::Duration>>"
    )]
    #[schemars(with = "Option<kinds::Duration>")]
    pub idle_stop: Option<Duration>,
}

impl LifecycleConfig {
    /// Whether a proxied request to the stopped workspace may start it and
    /// wait for it: with `on-demand`, or after an idle stop.
    pub fn holds_requests(&self) -> bool {
        self.start == StartMode::OnDemand || self.idle_stop.is_some()
    }
}

/// When an enabled workspace's child starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StartMode {
    /// With the daemon (and when the workspace is added or enabled).
    #[default]
    Eager,
    /// With the first request proxied to it; until then it is `stopped`
    /// with reason `on-demand`, its port allocated.
    OnDemand,
}
