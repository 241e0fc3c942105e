//! `mcpvisor demo-server`: a small MCP server on rmcp, so the shipped
//! workspaces run on a machine with nothing else installed.
//!
//! Tools: `echo`, `add`, `blob` (a text of n KiB), `sleep` (ms), `env` (the names in the child's
//! environment, never values), `pid`, and `hang`, which freezes the whole
//! server (process alive, MCP silent) so health probes can be tested.
//! Streamable HTTP on `127.0.0.1:<port>/mcp`, or stdio.

use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler, ServiceExt};

/// The demo server's tools.
#[derive(Debug, Clone)]
pub struct DemoServer {
    #[allow(dead_code)]
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    /// Text to send back.
    pub text: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct AddArgs {
    pub a: i64,
    pub b: i64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct BlobArgs {
    /// Size of the text, in KiB (at most 16384).
    pub kib: u32,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SleepArgs {
    /// How long to sleep, in milliseconds.
    pub ms: u64,
}

impl Default for DemoServer {
    fn default() -> Self {
        DemoServer { tool_router: Self::tool_router() }
    }
}

#[tool_router]
impl DemoServer {
    #[tool(description = "Return the given text")]
    async fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Add two integers")]
    async fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        a.saturating_add(b).to_string()
    }

    #[tool(description = "Sleep for ms milliseconds, then answer")]
    async fn sleep(&self, Parameters(SleepArgs { ms }): Parameters<SleepArgs>) -> String {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        format!("slept {ms} ms")
    }

    #[tool(description = "The names (not values) of the server's environment variables, sorted, one per line")]
    async fn env(&self) -> String {
        let mut names: Vec<String> = std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
        names.sort();
        names.join("\n")
    }

    #[tool(description = "A text of kib KiB, for tests of large answers")]
    async fn blob(&self, Parameters(BlobArgs { kib }): Parameters<BlobArgs>) -> String {
        "x".repeat(kib.min(16 << 10) as usize * 1024)
    }

    #[tool(description = "The server's process id")]
    async fn pid(&self) -> String {
        std::process::id().to_string()
    }

    #[tool(description = "Freeze the whole server: the process stays alive but answers nothing more")]
    async fn hang(&self) -> String {
        // The server runs on a current-thread runtime: blocking it stops every
        // connection, which is exactly a hung child.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

#[tool_handler]
impl ServerHandler for DemoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("mcpvisor-demo", env!("CARGO_PKG_VERSION")))
            .with_instructions("mcpvisor's demo server: echo, add, blob, sleep, env, pid, hang")
    }
}

/// Serves Streamable HTTP on `127.0.0.1:port` at `/mcp` until SIGTERM/SIGINT.
///
/// # Errors
/// The port cannot be bound.
pub async fn serve_http(port: u16) -> std::io::Result<()> {
    let cancel = tokio_util::sync::CancellationToken::new();
    let config = StreamableHttpServerConfig::default().with_cancellation_token(cancel.child_token());
    let service: StreamableHttpService<DemoServer, LocalSessionManager> =
        StreamableHttpService::new(|| Ok(DemoServer::default()), Arc::new(LocalSessionManager::default()), config);
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("mcpvisor demo-server: listening on http://{}/mcp", listener.local_addr()?);
    // Without TCP_NODELAY each SSE answer waits on the client's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            cancel.cancel();
        })
        .await
}

/// Serves MCP over stdin/stdout until stdin closes.
///
/// # Errors
/// The transport failed to start.
pub async fn serve_stdio() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let running = DemoServer::default().serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    let mut int = signal(SignalKind::interrupt()).expect("signal handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
