//! Turning a workspace config into a concrete launch: templates expanded,
//! paths resolved, the exact child environment of docs/reference.md §3.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{expand, Limits, TemplateVars, WorkspaceConfig};

use super::error::SpawnError;

/// Daemon-wide facts every launch needs.
#[derive(Debug, Clone)]
pub struct LaunchContext {
    /// Absolute path of the workspaces folder.
    pub workspaces_dir: PathBuf,
    /// Absolute path of the state folder.
    pub state_dir: PathBuf,
    /// The running mcpvisor executable, for `${MCPVISOR}`.
    pub mcpvisor_exe: PathBuf,
}

impl LaunchContext {
    pub fn data_dir(&self, workspace: &str) -> PathBuf {
        self.state_dir.join("workspaces").join(workspace)
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
}

/// Everything needed to start one child, with no templates left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub workspace: String,
    /// Absolute path of the program, already looked up.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The child's whole environment, in order.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub limits: Limits,
    /// A `stdio` MCP server: its stdin and stdout are pipes handed to the
    /// stdio bridge ([`crate::process::Child::take_stdio`]) instead of
    /// `/dev/null` and the log; stderr still goes to the log.
    pub stdin_pipe: bool,
}

/// Builds the launch of `config` on `port`; creates the private data dir (0700).
///
/// # Errors
/// A template that does not expand, a missing cwd, a program that is not
/// found or not executable, or a data dir that cannot be created.
pub fn build_spec(
    workspace: &str,
    config: &WorkspaceConfig,
    port: u16,
    ctx: &LaunchContext,
) -> Result<LaunchSpec, SpawnError> {
    let data_dir = ctx.data_dir(workspace);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data_dir)
        .and_then(|()| std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| SpawnError::Io(format!("creating data dir {}: {e}", data_dir.display())))?;
    let vars = TemplateVars {
        port,
        workspace: workspace.to_string(),
        data_dir: data_dir.display().to_string(),
        workspaces_dir: ctx.workspaces_dir.display().to_string(),
        mcpvisor: ctx.mcpvisor_exe.display().to_string(),
    };
    let expand = |s: &str| expand(s, Some(&vars)).map_err(|e| SpawnError::Template(e.to_string()));

    let cwd = match &config.cwd {
        Some(cwd) => ctx.workspaces_dir.join(expand(cwd)?),
        None => data_dir.clone(),
    };
    let cwd = cwd.canonicalize().map_err(|_| SpawnError::CwdMissing(cwd.clone()))?;

    let mut env: Vec<(String, String)> =
        config.env_passthrough.iter().filter_map(|name| std::env::var(name).ok().map(|v| (name.clone(), v))).collect();
    let port = port.to_string();
    for (name, value) in [
        ("PORT", port.as_str()),
        ("MCP_PORT", &port),
        ("FASTMCP_PORT", &port),
        ("MCP_HOST", "127.0.0.1"),
        ("FASTMCP_HOST", "127.0.0.1"),
        ("MCPVISOR_WORKSPACE", workspace),
    ] {
        set_env(&mut env, name, value.to_string());
    }
    for (name, value) in &config.env {
        set_env(&mut env, name, expand(value)?);
    }

    let command = expand(&config.command)?;
    let path_var = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
    let program = resolve_program(&command, &cwd, path_var)?;
    let args = config.args.iter().map(|a| expand(a)).collect::<Result<_, _>>()?;
    let stdin_pipe = config.transport == crate::config::Transport::Stdio;
    Ok(LaunchSpec {
        workspace: workspace.to_string(),
        program,
        args,
        env,
        cwd,
        limits: config.limits.clone(),
        stdin_pipe,
    })
}

fn set_env(env: &mut Vec<(String, String)>, name: &str, value: String) {
    env.retain(|(k, _)| k != name);
    env.push((name.to_string(), value));
}

/// docs/reference.md §3: a command with a `/` resolves against `cwd`; a bare name is
/// looked up in the child's `PATH`.
fn resolve_program(command: &str, cwd: &Path, path_var: Option<&str>) -> Result<PathBuf, SpawnError> {
    let candidates: Vec<PathBuf> = if command.contains('/') {
        vec![cwd.join(command)]
    } else {
        path_var.unwrap_or_default().split(':').filter(|d| !d.is_empty()).map(|d| cwd.join(d).join(command)).collect()
    };
    let mut not_executable = None;
    for path in candidates {
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => return Ok(path),
            Ok(_) => not_executable = not_executable.or(Some(path)),
            Err(_) => {}
        }
    }
    Err(match not_executable {
        Some(path) => SpawnError::NotExecutable(path),
        None if command.contains('/') => SpawnError::NotFound(command.to_string()),
        None => SpawnError::NotFound(format!("{command} (looked up in the child's PATH)")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn env_is_exactly_passthrough_then_ports_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = LaunchContext {
            workspaces_dir: dir.path().to_path_buf(),
            state_dir: dir.path().join("state"),
            mcpvisor_exe: "/bin/true".into(),
        };
        let config = parse(br#"{"command":"sh","args":["-c","${PORT}"],"envPassthrough":["PATH"],"env":{"PORT":"override","X":"${WORKSPACE}"}}"#).unwrap();
        let spec = build_spec("dev", &config, 41000, &ctx).unwrap();
        let names: Vec<&str> = spec.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["PATH", "MCP_PORT", "FASTMCP_PORT", "MCP_HOST", "FASTMCP_HOST", "MCPVISOR_WORKSPACE", "PORT", "X"]
        );
        assert_eq!(spec.args, ["-c", "41000"]);
        assert_eq!(spec.cwd, ctx.data_dir("dev").canonicalize().unwrap());
        let mode = std::fs::metadata(ctx.data_dir("dev")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(spec.program.ends_with("sh"));
    }

    #[test]
    fn missing_program_is_classified() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_program("python4-nope", dir.path(), Some("/usr/bin:/bin")).unwrap_err();
        assert!(matches!(err, SpawnError::NotFound(_)), "{err}");
        std::fs::write(dir.path().join("plain"), "x").unwrap();
        let err = resolve_program("./plain", dir.path(), None).unwrap_err();
        assert!(matches!(err, SpawnError::NotExecutable(_)), "{err}");
    }
}
