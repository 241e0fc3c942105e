//! The `mcpvisor` binary: parses flags, sets up logging and shutdown, and
//! hands over to the library.

use clap::Parser;
use mcpvisor::cli::{self, Cli, CliCommand, DemoTransport, LogFormat};
use tokio_util::sync::CancellationToken;

fn main() {
    let cli = Cli::parse();
    std::process::exit(match cli.command {
        CliCommand::Validate { paths } => cli::validate(&paths),
        CliCommand::DemoServer { port, transport } => demo_server(port, transport),
        CliCommand::Guard { state } => {
            mcpvisor::process::guard::run(&state);
            0
        }
        CliCommand::Serve {
            workspaces,
            state,
            listen,
            port_range,
            token,
            log_format,
            max_workspaces,
            max_memory_mb,
            max_concurrent_starts,
            max_connections,
        } => {
            init_tracing(log_format);
            limit_malloc_arenas();
            let mut config = mcpvisor::ServeConfig::new(workspaces, state);
            config.listen = listen;
            config.port_range = port_range.0..=port_range.1;
            config.token = token;
            config.max_workspaces = max_workspaces.map(|n| n as usize);
            config.max_memory_mb = max_memory_mb;
            config.http.max_connections = max_connections as usize;
            if let Some(n) = max_concurrent_starts {
                config.max_concurrent_starts = n as usize;
            }
            runtime(true).block_on(serve(config))
        }
        client => runtime(true).block_on(run_client(client)),
    });
}

/// Keeps glibc's malloc to one arena. By default every thread that
/// allocates (tokio workers, the blocking pool, the spawner) may get its own
/// arena, up to eight per core, and the daemon's idle memory is mostly their
/// fragments. Its allocations are few and short, and small ones come from
/// each thread's cache without the arena's lock: with 100 idle workspaces,
/// one arena holds 0.5 MiB less than two (`scripts/bench idle`).
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

fn runtime(multi_thread: bool) -> tokio::runtime::Runtime {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().expect("tokio runtime starts")
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCPVISOR_LOG").unwrap_or_else(|_| "info".into());
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: mcpvisor::ServeConfig) -> i32 {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("signal handler");
        let mut int = signal(SignalKind::interrupt()).expect("signal handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        on_signal.cancel();
    });
    match mcpvisor::serve(config, shutdown).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mcpvisor: {e}");
            1
        }
    }
}

/// The demo server runs on one thread so its `hang` tool freezes it whole.
fn demo_server(port: u16, transport: DemoTransport) -> i32 {
    let result = runtime(false).block_on(async {
        match transport {
            DemoTransport::StreamableHttp => mcpvisor::demo_server::serve_http(port).await.map_err(Into::into),
            DemoTransport::Stdio => mcpvisor::demo_server::serve_stdio().await,
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mcpvisor demo-server: {e}");
            1
        }
    }
}

async fn run_client(command: CliCommand) -> i32 {
    let result = match command {
        CliCommand::Status { url, json } => cli::status(&url, json).await,
        CliCommand::Watch { workspace, url, json } => cli::watch(&url, workspace.as_deref(), json).await,
        CliCommand::Logs { workspace, lines, follow, url } => cli::logs(&url, &workspace, lines, follow).await,
        CliCommand::Start { workspace, url, json } => cli::command(&url, &workspace, "start", json).await,
        CliCommand::Stop { workspace, url, json } => cli::command(&url, &workspace, "stop", json).await,
        CliCommand::Restart { workspace, url, json } => cli::command(&url, &workspace, "restart", json).await,
        CliCommand::Apply { file, name, url } => cli::apply(&url, &file, name.as_deref()).await,
        CliCommand::Edit { workspace, url } => cli::edit(&url, &workspace).await,
        CliCommand::Rm { workspace, url } => cli::rm(&url, &workspace).await,
        CliCommand::History { workspace, url } => cli::history(&url, &workspace).await,
        CliCommand::Diff { workspace, rev, url } => cli::diff(&url, &workspace, rev.as_deref()).await,
        CliCommand::Rollback { workspace, rev, url } => cli::rollback(&url, &workspace, rev.as_deref()).await,
        CliCommand::Doctor { url, json } => cli::doctor(&url, json).await,
        _ => unreachable!("handled in main"),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mcpvisor: {e}");
            e.exit_code()
        }
    }
}
