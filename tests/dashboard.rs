//! What the dashboard needs from the daemon: the resource history behind
//! its sparklines, and a page shell served without the bearer token while
//! every API route still wants it. The page itself is tested in a real
//! browser (`tests/browser`).

mod common;

use std::time::Duration;

use common::*;

const UP: Duration = Duration::from_secs(20);

#[tokio::test]
async fn resource_history_grows_with_each_sample() {
    let daemon = Daemon::start(&[("demo", demo())]).await;
    daemon.wait_status("demo", "running", UP).await;
    let samples = eventually("three samples of demo", UP, || async {
        let (code, body) = daemon.get("/api/workspaces/demo/resources").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["workspace"], "demo");
        let samples = body["samples"].as_array().unwrap().clone();
        if samples.len() >= 3 {
            Ok(samples)
        } else {
            Err(body.to_string())
        }
    })
    .await;
    let times: Vec<&str> = samples.iter().map(|s| s["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "oldest first: {times:?}");
    for sample in &samples {
        assert!(sample["rssBytes"].as_u64().unwrap() > 0, "{sample}");
        assert!(sample["cpuPercent"].as_f64().unwrap() >= 0.0, "{sample}");
    }
    let (code, body) = daemon.get("/api/workspaces/nobody/resources").await;
    assert_eq!(code, 404);
    assert_eq!(body["code"], "unknown_workspace", "{body}");
}

#[tokio::test]
async fn the_page_shell_needs_no_token_and_the_api_still_does() {
    let daemon = Daemon::spawn_process(&[("demo", demo())], &[("MCPVISOR_TOKEN", "s3cret")]).await;
    let get = |path: &str| daemon.http.get(format!("{}{path}", daemon.url)).send();
    for (path, content_type) in [("/", "text/html; charset=utf-8"), ("/ui/app.js", "text/javascript; charset=utf-8")] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
    }
    for path in ["/api/workspaces", "/api/workspaces/demo/resources", "/api/events", "/metrics"] {
        assert_eq!(get(path).await.unwrap().status(), 401, "{path}");
    }
    let health: serde_json::Value = get("/healthz").await.unwrap().json().await.unwrap();
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
}
