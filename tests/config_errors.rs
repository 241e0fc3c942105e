//! Invalid workspace files: `validate` names every error, `serve` shows
//! `configError`, and valid workspaces run regardless.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[test]
fn validate_names_line_and_column_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok.json"), r#"{"command": "x"}"#).unwrap();
    std::fs::write(dir.path().join("bad.json"), "{\n  \"command\": \"x\",\n  oops\n}").unwrap();
    std::fs::write(dir.path().join("keys.json"), r#"{"command": "x", "comand": 1, "args": ["${NOPE}"]}"#).unwrap();
    std::fs::write(dir.path().join(".bad.json.swp"), "garbage").unwrap();
    std::fs::write(dir.path().join("bad.json~"), "garbage").unwrap();
    let out = Command::new(MCPVISOR).arg("validate").arg(dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("bad.json:3:3: key must be a string"), "{text}");
    assert!(text.contains("keys.json: /comand: unknown field `comand`, expected one of"), "{text}");
    assert!(text.contains("keys.json: /args/0: unknown template ${NOPE}"), "{text}");
    assert!(text.contains("2 of 3 invalid"), "swap and backup files are ignored: {text}");

    let ok = Command::new(MCPVISOR).arg("validate").arg(dir.path().join("ok.json")).output().unwrap();
    assert_eq!(ok.status.code(), Some(0));
}

/// A NUL byte would fail every spawn: `validate` names each one with its pointer.
#[test]
fn validate_rejects_nul_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let file = json!({"command": "sh\u{0}", "args": ["-c", "x\u{0}"], "env": {"A": "\u{0}"}, "cwd": "/\u{0}"});
    std::fs::write(dir.path().join("nul.json"), file.to_string()).unwrap();
    let out = Command::new(MCPVISOR).arg("validate").arg(dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for at in ["/command", "/args/1", "/env/A", "/cwd"] {
        assert!(text.contains(&format!("nul.json: {at}: NUL byte at byte")), "{at}: {text}");
    }
}

#[test]
fn shipped_workspace_files_are_valid() {
    for dir in ["workspaces", "examples/workspaces"] {
        let out = Command::new(MCPVISOR).arg("validate").arg(repo().join(dir)).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{dir}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

/// Each shipped file names the committed schema by a path that resolves
/// from its own folder, so an editor finds it.
#[test]
fn shipped_workspace_files_name_the_schema() {
    let schema = repo().join(mcpvisor::config::SCHEMA_FILE).canonicalize().unwrap();
    for path in shipped_files() {
        let file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let named = file["$schema"].as_str().unwrap_or_else(|| panic!("{}: no \"$schema\"", path.display()));
        let resolved = path.parent().unwrap().join(named).canonicalize();
        assert_eq!(resolved.ok().as_ref(), Some(&schema), "{}: \"$schema\": {named:?}", path.display());
    }
}

/// The committed schema (what editors check with) and mcpvisor's validator
/// give the same verdict, on the shipped files and on broken ones. The
/// schema is read by Python's `jsonschema` (draft 2020-12), from the venv.
#[test]
fn schema_and_validator_agree() {
    let mut files: Vec<Value> =
        shipped_files().iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect();
    files.extend([
        json!({"command": "x"}),
        json!({"$schema": "anything", "command": "x", "description": null, "cwd": null, "path": null}),
        json!({"command": "${MCPVISOR}", "args": ["$$", "$HOME", "a$", "${PORT}${WORKSPACE}"], "env": {"A": ""}}),
        json!({"command": "x", "health": {"interval": "1h 30m", "timeout": "1.5s", "startupTimeout": "2 min"}}),
        json!({"command": "x", "stop": {"signal": "SIGUSR2"}, "limits": {"memoryMb": 1, "openFiles": null}}),
        json!({"command": "x", "transport": "stdio", "restart": {"policy": "on-failure"}}),
    ]);
    let valid = files.len();
    files.extend([
        json!({}),
        json!([]),
        json!({"command": ""}),
        json!({"command": "x", "comand": 1}),
        json!({"command": "x", "health": {"bogus": 1}}),
        json!({"command": "x", "health": []}),
        json!({"command": "x", "limits": null}),
        json!({"command": "x", "health": {"interval": "5x"}}),
        json!({"command": "x", "health": {"interval": "0s"}}),
        json!({"command": "x", "health": {"interval": 5}}),
        json!({"command": "x", "circuitBreaker": {"failureThreshold": 0}}),
        json!({"command": "x", "circuitBreaker": {"failureThreshold": 1.5}}),
        json!({"command": "x", "limits": {"memoryMb": -1}}),
        json!({"command": "x", "transport": "tcp"}),
        json!({"command": "x", "stop": {"signal": "SIGWINCH"}}),
        json!({"command": "x", "path": "mcp"}),
        json!({"command": "x", "args": ["${NOPE}"]}),
        json!({"command": "x", "args": ["${PORT"]}),
        json!({"command": "x", "args": "--port"}),
        json!({"command": "x", "env": {"A=B": "x"}}),
        json!({"command": "x", "envPassthrough": [""]}),
        json!({"command": "x", "$schema": 1}),
        json!({"command": "x", "args": ["a\u{0}"]}),
        json!({"command": "x", "env": {"A\u{0}": "x"}}),
        json!({"command": "x\u{0}"}),
    ]);
    let script = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
print(json.dumps([validator.is_valid(f) for f in json.load(sys.stdin)]))
"#;
    let mut python = Command::new(python())
        .args(["-c", script])
        .arg(repo().join(mcpvisor::config::SCHEMA_FILE))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(python.stdin.take().unwrap(), &files).unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(out.status.success(), "python jsonschema failed");
    let by_schema: Vec<bool> = serde_json::from_slice(&out.stdout).unwrap();
    for (i, (file, schema_says)) in files.iter().zip(by_schema).enumerate() {
        let parsed = mcpvisor::config::parse(file.to_string().as_bytes());
        assert_eq!(parsed.is_ok(), i < valid, "mcpvisor on {file}: {parsed:?}");
        assert_eq!(schema_says, i < valid, "the schema on {file}");
    }
}

fn shipped_files() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for dir in ["workspaces", "examples/workspaces"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 4, "{files:?}");
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_shows_config_error_while_others_run() {
    let daemon = Daemon::start(&[("good", demo())]).await;
    // Written atomically: a half-written file would be a syntax error first.
    daemon.write("broken", &serde_json::json!({"command": "x", "bogus": true}));
    daemon.wait_status("good", "running", Duration::from_secs(20)).await;
    let broken = daemon.wait_for("broken", Duration::from_secs(10), |s| !s["configError"].is_null()).await;
    assert_eq!(broken["status"], "error");
    assert_eq!(broken["configError"]["errors"][0]["at"], "/bogus");
    assert_eq!(broken["pid"], serde_json::Value::Null);
    let (code, list) = daemon.get("/api/workspaces").await;
    assert_eq!(code, 200);
    let names: Vec<&str> =
        list["workspaces"].as_array().unwrap().iter().map(|w| w["workspace"].as_str().unwrap()).collect();
    assert_eq!(names, ["broken", "good"], "sorted by name");
    let _ = json!(null);
    daemon.stop().await;
}
