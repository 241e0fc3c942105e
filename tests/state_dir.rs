//! The state folder: sticky ports across daemon restarts, one daemon per
//! folder, debug views of allocations.

mod common;

use std::time::Duration;

use common::*;

const UP: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_restart_keeps_every_port() {
    let daemon = Daemon::start(&[("a", demo()), ("b", demo()), ("c", demo())]).await;
    let mut before = Vec::new();
    for name in ["a", "b", "c"] {
        before.push(daemon.wait_status(name, "running", UP).await["port"].clone());
    }
    let range = daemon.range;
    let root = daemon.root.clone();
    let dir = daemon.stop().await;
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("state/ports.json")).unwrap()).unwrap();
    assert_eq!(ports["version"], 1);
    assert_eq!(ports["allocations"]["a"], before[0]);

    let again = Daemon::start_at(&root, range).await;
    for (name, port) in ["a", "b", "c"].iter().zip(&before) {
        let status = again.wait_status(name, "running", UP).await;
        assert_eq!(&status["port"], port, "workspace {name} kept its port");
    }
    again.stop().await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_serve_on_a_locked_state_folder_exits_1() {
    let daemon = Daemon::start(&[]).await;
    let out = std::process::Command::new(MCPVISOR)
        .args(["serve", "--listen", "127.0.0.1:0", "--workspaces"])
        .arg(daemon.workspaces())
        .arg("--state")
        .arg(daemon.state())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is locked by another mcpvisor (pid"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_listen_address_exits_1_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(MCPVISOR)
        .args(["serve", "--listen", &taken.local_addr().unwrap().to_string(), "--state"])
        .arg(dir.path().join("state"))
        .arg("--workspaces")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is taken"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_state_lists_allocations_and_rejects_unknown_components() {
    let daemon = Daemon::start(&[("dbg", demo())]).await;
    let status = daemon.wait_status("dbg", "running", UP).await;
    let (code, resources) = daemon.get("/api/debug/state/resources").await;
    assert_eq!(code, 200);
    assert_eq!(resources["allocations"]["dbg"], status["port"]);
    assert_eq!(resources["portRange"][0], daemon.range.0);
    let (code, body) = daemon.get("/api/debug/state/nope").await;
    assert_eq!(code, 404);
    assert_eq!(body["error"], "unknown component");
    assert_eq!(body["components"], serde_json::json!(["workspace", "connections", "resources", "errors"]));
    let (code, all) = daemon.get("/api/debug/state").await;
    assert_eq!(code, 200);
    for key in ["workspace", "connections", "resources", "errors"] {
        assert!(all.get(key).is_some(), "{key} missing");
    }
    assert!(!all.to_string().contains(&std::env::var("PATH").unwrap()), "debug output never shows env values");
    // Resources are sampled off the request path.
    let sampled = daemon.wait_for("dbg", UP, |s| s["resources"]["rssBytes"].as_u64().is_some_and(|b| b > 0)).await;
    assert!(sampled["uptimeMs"].as_u64().is_some());
    daemon.stop().await;
}

/// A tmpfs mounted on a folder for one test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr));
        SmallDisk(at.to_path_buf())
    }

    /// Fills the disk with one file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// docs/reference.md §4: a state file whose write failed (a full disk) is
/// written again once the write can succeed, without any other change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_catch_up_after_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let disk = SmallDisk::mount(&root.join("state"), "2m");
    std::fs::create_dir_all(root.join("workspaces")).unwrap();
    write_file(&root.join("workspaces/a.json"), &demo());
    let daemon = Daemon::start_at(root, port_range()).await;
    daemon.wait_status("a", "running", UP).await;

    let filler = disk.fill();
    daemon.write("b", &demo());
    let b = daemon.wait_status("b", "running", UP).await;
    let ports = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(root.join("state/ports.json")).unwrap()).unwrap()
    };
    assert!(ports()["allocations"].get("b").is_none(), "the full disk kept b out of ports.json: {}", ports());

    std::fs::remove_file(filler).unwrap();
    eventually("ports.json and runtime.json catch up", UP, || async {
        let runtime: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("state/runtime.json")).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        match (ports()["allocations"]["b"] == b["port"], runtime["workspaces"]["b"]["pid"] == b["pid"]) {
            (true, true) => Ok(()),
            other => Err(format!("ports, runtime current: {other:?}")),
        }
    })
    .await;
    daemon.stop().await;
    drop(disk);
}
