//! The command line of DESIGN §2, and the client commands that talk to a
//! running daemon over its HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;
use thiserror::Error;

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

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OK: i32 = 0;
    /// Invalid input: a bad workspace file, an unknown workspace.
    pub const INVALID: i32 = 1;
    /// The daemon could not be reached.
    pub const UNREACHABLE: i32 = 3;
}

/// A client command failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach mcpvisor at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{0}")]
    Api(String),
}

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Unreachable { .. } => exit::UNREACHABLE,
            ClientError::Api(_) => exit::INVALID,
        }
    }
}

/// `mcpvisor validate`: prints every error of every file; returns the exit code.
pub fn validate(paths: &[PathBuf]) -> i32 {
    let paths = if paths.is_empty() { vec![PathBuf::from("./workspaces")] } else { paths.to_vec() };
    let mut n_files = 0;
    let mut n_invalid = 0;
    for path in paths {
        let files = if path.is_dir() {
            match crate::config::load_dir(&path) {
                Ok(files) => files,
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    n_invalid += 1;
                    continue;
                }
            }
        } else {
            vec![crate::config::load_file(&path)]
        };
        for file in files {
            n_files += 1;
            if let Err(error) = &file.config {
                n_invalid += 1;
                println!("{error}");
            }
        }
    }
    if n_invalid == 0 {
        println!("{n_files} workspace file(s) valid");
        exit::OK
    } else {
        println!("{n_invalid} of {n_files} invalid");
        exit::INVALID
    }
}

fn client() -> reqwest::Client {
    let mut builder = reqwest::Client::builder().no_proxy();
    if let Ok(token) = std::env::var("MCPVISOR_TOKEN") {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(value) = format!("Bearer {token}").parse() {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        builder = builder.default_headers(headers);
    }
    builder.build().expect("http client builds")
}

async fn request(method: reqwest::Method, url: &str) -> Result<Value, ClientError> {
    let unreachable = |e: reqwest::Error| ClientError::Unreachable { url: url.to_string(), message: e.to_string() };
    let response = client().request(method, url).send().await.map_err(unreachable)?;
    let status = response.status();
    let body: Value = response.json().await.map_err(unreachable)?;
    if !status.is_success() {
        let message = body.get("error").and_then(Value::as_str).unwrap_or("request failed");
        return Err(ClientError::Api(format!("{message} (HTTP {})", status.as_u16())));
    }
    Ok(body)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `mcpvisor status`.
pub async fn status(url: &str, json: bool) -> Result<(), ClientError> {
    let body = request(reqwest::Method::GET, &format!("{url}/api/workspaces")).await?;
    if json {
        println!("{body}");
        return Ok(());
    }
    println!(
        "{:<24} {:<9} {:<10} {:>8} {:>6} {:>10} {:>8} {:<9}",
        "WORKSPACE", "STATUS", "HEALTH", "PID", "PORT", "UPTIME", "RESTARTS", "BREAKER"
    );
    for w in body["workspaces"].as_array().into_iter().flatten() {
        let uptime = w["uptimeMs"]
            .as_u64()
            .map_or("-".into(), |ms| humantime::format_duration(Duration::from_secs(ms / 1000)).to_string());
        println!(
            "{:<24} {:<9} {:<10} {:>8} {:>6} {:>10} {:>8} {:<9}",
            text(&w["workspace"]),
            text(&w["status"]),
            text(&w["health"]),
            text(&w["pid"]),
            text(&w["port"]),
            uptime,
            text(&w["restartCount"]),
            text(&w["breaker"]["state"]),
        );
    }
    Ok(())
}

/// `mcpvisor start|stop|restart`.
pub async fn command(url: &str, workspace: &str, action: &str, json: bool) -> Result<(), ClientError> {
    let endpoint = format!("{url}/api/workspaces/{workspace}/{action}");
    let unreachable = |e: reqwest::Error| ClientError::Unreachable { url: url.to_string(), message: e.to_string() };
    let response = client().post(&endpoint).send().await.map_err(unreachable)?;
    let noop = response.headers().get("x-mcpvisor-noop").and_then(|v| v.to_str().ok()).map(str::to_string);
    let status = response.status();
    let body: Value = response.json().await.map_err(unreachable)?;
    if !status.is_success() {
        let message = body.get("error").and_then(Value::as_str).unwrap_or("request failed");
        return Err(ClientError::Api(format!("{message} (HTTP {})", status.as_u16())));
    }
    match (json, noop) {
        (true, _) => println!("{body}"),
        (false, Some(noop)) => println!("{workspace}: nothing to do, {noop}"),
        (false, None) => println!("{workspace}: {action} requested (status now {})", text(&body["status"])),
    }
    Ok(())
}

/// `mcpvisor logs`.
pub async fn logs(url: &str, workspace: &str, lines: usize, follow: bool) -> Result<(), ClientError> {
    if follow {
        let endpoint = format!("{url}/api/workspaces/{workspace}/logs?lines={lines}&follow=true");
        let unreachable = |e: reqwest::Error| ClientError::Unreachable { url: url.to_string(), message: e.to_string() };
        let response = client().get(&endpoint).send().await.map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(ClientError::Api(format!(
                "no workspace named {workspace:?} (HTTP {})",
                response.status().as_u16()
            )));
        }
        let mut events = response.bytes_stream().eventsource();
        while let Some(Ok(event)) = events.next().await {
            if let Ok(line) = serde_json::from_str::<Value>(&event.data) {
                println!("{} {} {}", text(&line["ts"]), text(&line["stream"]), text(&line["line"]));
            }
        }
        return Ok(());
    }
    let body = request(reqwest::Method::GET, &format!("{url}/api/workspaces/{workspace}/logs?lines={lines}")).await?;
    for line in body["lines"].as_array().into_iter().flatten() {
        println!("{} {} {}", text(&line["ts"]), text(&line["stream"]), text(&line["line"]));
    }
    Ok(())
}

/// `mcpvisor watch`: follows notifications and reconnects with
/// `Last-Event-ID` after a dropped connection, so nothing is missed or
/// printed twice.
pub async fn watch(url: &str, workspace: Option<&str>, json: bool) -> Result<(), ClientError> {
    let endpoint = match workspace {
        Some(w) => format!("{url}/api/events?workspace={w}"),
        None => format!("{url}/api/events"),
    };
    let mut last_id: Option<String> = None;
    let mut connected_once = false;
    loop {
        let mut request = client().get(&endpoint).header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                connected_once = true;
                let mut events = response.bytes_stream().eventsource();
                while let Some(Ok(event)) = events.next().await {
                    if !event.id.is_empty() {
                        last_id = Some(event.id.clone());
                    }
                    print_notification(&event.data, json);
                }
            }
            Ok(response) => return Err(ClientError::Api(format!("HTTP {}", response.status().as_u16()))),
            Err(e) if !connected_once => {
                return Err(ClientError::Unreachable { url: url.to_string(), message: e.to_string() })
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_notification(data: &str, json: bool) {
    if json {
        println!("{data}");
        return;
    }
    let Ok(value) = serde_json::from_str::<Value>(data) else { return };
    let p = &value["params"];
    println!(
        "{} #{} {} {} -> {} ({}) pid={} port={} restarts={} breaker={}",
        text(&p["timestamp"]),
        text(&p["seq"]),
        text(&p["workspace"]),
        text(&p["previous"]),
        text(&p["status"]),
        text(&p["reason"]),
        text(&p["pid"]),
        text(&p["port"]),
        text(&p["restartCount"]),
        text(&p["breaker"]),
    );
}
