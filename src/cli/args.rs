//! The flags and subcommands of docs/reference.md §2, as clap parses them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// mcpvisor: run MCP servers for many workspaces on one machine.
#[derive(Debug, Parser)]
#[command(name = "mcpvisor", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DemoTransport {
    StreamableHttp,
    Stdio,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the daemon.
    Serve {
        #[arg(long, env = "MCPVISOR_WORKSPACES", default_value = "./workspaces")]
        workspaces: PathBuf,
        #[arg(long, env = "MCPVISOR_STATE", default_value = "./state")]
        state: PathBuf,
        #[arg(long, env = "MCPVISOR_LISTEN", default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        #[arg(long, env = "MCPVISOR_PORT_RANGE", default_value = "41000-41999", value_parser = parse_range)]
        port_range: (u16, u16),
        #[arg(long, env = "MCPVISOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long, env = "MCPVISOR_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Run at most N workspaces; one beyond shows as `error` until there is room.
        #[arg(long, env = "MCPVISOR_MAX_WORKSPACES", value_parser = clap::value_parser!(u32).range(1..))]
        max_workspaces: Option<u32>,
        /// The most RSS (MiB) all child trees may use together; above it the largest restarts.
        #[arg(long, env = "MCPVISOR_MAX_MEMORY_MB", value_parser = clap::value_parser!(u64).range(1..))]
        max_memory_mb: Option<u64>,
        /// Children spawning or starting up at once; the rest wait in
        /// `starting` with reason `queued`. Default: four per core.
        #[arg(long, env = "MCPVISOR_MAX_CONCURRENT_STARTS", value_parser = clap::value_parser!(u32).range(1..))]
        max_concurrent_starts: Option<u32>,
        /// Most HTTP connections open at once (SSE subscribers included);
        /// past it a connection gets 503 and is closed.
        #[arg(long, env = "MCPVISOR_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: u32,
    },
    /// Check workspace files (or folders of them); exit 1 if any is invalid.
    Validate {
        /// Files or folders; default ./workspaces.
        paths: Vec<PathBuf>,
    },
    /// Show a table of workspaces.
    Status {
        #[arg(long, env = "MCPVISOR_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow status notifications, one line each.
    Watch {
        workspace: Option<String>,
        #[arg(long, env = "MCPVISOR_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a workspace's captured output.
    Logs {
        workspace: String,
        #[arg(short = 'n', default_value_t = 100)]
        lines: usize,
        /// Keep printing new lines as they come.
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long, env = "MCPVISOR_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
    },
    /// Start a workspace.
    Start {
        workspace: String,
        #[arg(long, env = "MCPVISOR_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
        /// Print the WorkspaceStatus as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a workspace.
    Stop {
        workspace: String,
        #[arg(long, env = "MCPVISOR_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
        /// Print the WorkspaceStatus as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restart a workspace.
    Restart {
        workspace: String,
        #[arg(long, env = "MCPVISOR_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
        /// Print the WorkspaceStatus as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create or replace a workspace from FILE; waits until it runs or was rolled back.
    Apply {
        file: PathBuf,
        /// The workspace name; default: the file's stem.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, env = "MCPVISOR_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
    },
    /// Edit a workspace file in $VISUAL or $EDITOR, then apply it.
    Edit {
        workspace: String,
        #[arg(long, env = "MCPVISOR_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
    },
    /// Stop a workspace, remove its file and release its port.
    Rm {
        workspace: String,
        #[arg(long, env = "MCPVISOR_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
    },
    /// List a workspace's config history, newest first.
    History {
        workspace: String,
        #[arg(long, env = "MCPVISOR_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
    },
    /// Show what changed from a revision (default: the newest) to the file now.
    Diff {
        workspace: String,
        rev: Option<String>,
        #[arg(long, env = "MCPVISOR_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
    },
    /// Apply an earlier revision (default: the previous applied config).
    Rollback {
        workspace: String,
        rev: Option<String>,
        #[arg(long, env = "MCPVISOR_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
    },
    /// Check the daemon's state against the system; exit 1 on any error.
    Doctor {
        #[arg(long, env = "MCPVISOR_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
        #[arg(long)]
        json: bool,
    },
    /// Internal: kills what a crashed daemon left (started by `serve`).
    #[command(hide = true)]
    Guard {
        #[arg(long)]
        state: PathBuf,
    },
    /// Run the built-in MCP demo server.
    DemoServer {
        #[arg(long, env = "PORT", default_value_t = 8000)]
        port: u16,
        #[arg(long, value_enum, default_value = "streamable-http")]
        transport: DemoTransport,
    },
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').ok_or("expected LO-HI, like 41000-41999")?;
    let lo: u16 = lo.trim().parse().map_err(|e| format!("bad low port: {e}"))?;
    let hi: u16 = hi.trim().parse().map_err(|e| format!("bad high port: {e}"))?;
    if lo == 0 || lo > hi {
        return Err("expected 0 < LO <= HI".into());
    }
    Ok((lo, hi))
}
