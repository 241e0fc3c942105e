//! Hostile `Mcp-Session-Id`s (issue: 12,000 garbage ids once took the
//! daemon from 11 MB to 625 MB): out-of-spec ids get 400, well-formed ones
//! the child never issued are not recorded, and memory stays flat.
//!
//! A test binary of its own: it reads this process's RSS, which other tests
//! running beside it would move.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(20);

/// This process's resident set (the daemon runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A session id of `len` visible ASCII characters, different for each `seed`.
fn garbage_id(seed: usize, len: usize) -> String {
    (0..len).map(|i| char::from(0x21 + ((seed * 7919 + i * 31) % 94) as u8)).collect()
}

async fn post_with_session(daemon: &Daemon, url: &str, session: reqwest::header::HeaderValue) -> (u16, Value) {
    let ping = json!({"jsonrpc": "2.0", "id": 5, "method": "ping"});
    let response = daemon
        .http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", session)
        .body(ping.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_session_ids_are_refused_or_never_recorded_and_cost_no_memory() {
    let daemon = Daemon::start(&[("demo", demo())]).await;
    daemon.wait_status("demo", "running", READY).await;
    let url = format!("{}/workspaces/demo/mcp", daemon.url);
    let sessions = async || daemon.get("/api/debug/state/connections").await.1["total"]["proxySessions"].clone();

    // Out of spec: too long, outside visible ASCII. A JSON-RPC error for the request.
    use reqwest::header::HeaderValue;
    for bad in [
        HeaderValue::from_str(&garbage_id(0, 60_000)).unwrap(),
        HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        HeaderValue::from_static("two words"),
        HeaderValue::from_static("tab\there"),
    ] {
        let (status, body) = post_with_session(&daemon, &url, bad.clone()).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_eq!(body["id"], 5, "{body}");
        assert_eq!(body["error"]["code"], -32600, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().starts_with("mcp-session-id must be"), "{body}");
    }

    // 2,000 garbage ids, half too long, half well-formed but never issued by
    // the child: nothing is kept, and memory stays flat.
    let send = async |i: usize| {
        let len = if i.is_multiple_of(2) { 60_000 } else { 512 };
        let (status, _) = post_with_session(&daemon, &url, HeaderValue::from_str(&garbage_id(i, len)).unwrap()).await;
        assert!(status >= 400, "garbage id {i} was accepted: {status}");
    };
    for i in 0..200 {
        send(i).await; // Warm up: connection pool, buffers, allocator arenas.
    }
    let before = rss_kib();
    for i in 200..2200 {
        send(i).await;
    }
    let grown = rss_kib().saturating_sub(before);
    assert_eq!(sessions().await, 0, "no session recorded");
    assert!(grown < 4 << 10, "RSS grew {grown} KiB over 2,000 garbage session ids");

    // Sessions the child issues are recorded, and listed page by page.
    for _ in 0..3 {
        assert!(mcp_initialize(&daemon.http, &url).await.is_some(), "the demo server is stateful");
    }
    assert_eq!(sessions().await, 3);
    let (code, page) = daemon.get("/api/debug/state/connections?limit=2&offset=0").await;
    assert_eq!(code, 200);
    assert_eq!(page["proxySessions"].as_array().unwrap().len(), 2, "{page}");
    assert_eq!((page["limit"].clone(), page["total"]["proxySessions"].clone()), (json!(2), json!(3)));
    let (code, error) = daemon.get("/api/debug/state/connections?limit=lots").await;
    assert_eq!((code, error["code"].as_str()), (400, Some("bad_query")), "{error}");
}
