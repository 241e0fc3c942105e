//! The HTTP server against hostile or careless clients: every error is JSON,
//! forged hosts and origins are refused, idle and slow connections are
//! closed, and connections past the limit get 503.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const UP: Duration = Duration::from_secs(20);

/// The `host:port` of the daemon.
fn addr(daemon: &Daemon) -> &str {
    daemon.url.trim_start_matches("http://")
}

/// One raw HTTP/1.1 exchange on a new connection that closes after it:
/// the status, the head and the body.
async fn raw(daemon: &Daemon, head: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr(daemon)).await.unwrap();
    stream.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(UP, stream.read_to_end(&mut answer)).await.expect("an answer in time").unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Asserts an `{"error", "code"}` JSON body; returns its code.
fn error_code(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    assert!(value["error"].is_string(), "{value}");
    value["code"].as_str().unwrap_or_else(|| panic!("no code: {value}")).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json() {
    let daemon = Daemon::start(&[("demo", demo())]).await;
    let get = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n");
    let cases = [
        (get("/nowhere"), 404, "not_found"),
        (get("/api/workspaces/nope"), 404, "unknown_workspace"),
        (get("/api/workspaces/demo/logs?lines=many"), 400, "bad_query"),
        (get("/api/events?workspace=a&workspace=b"), 400, "bad_query"),
        (get("/api/workspaces/%FF"), 400, "bad_request"),
        ("DELETE /api/workspaces HTTP/1.1\r\nHost: localhost\r\n".to_string(), 405, "method_not_allowed"),
        (get(&format!("/healthz?{}", "q".repeat(9000))), 414, "uri_too_long"),
        (format!("{}X-Big: {}\r\n", get("/healthz"), "b".repeat(70_000)), 431, "headers_too_large"),
        ("GET /healthz HTTP/1.1\r\n".to_string(), 400, "missing_host"),
    ];
    for (head, status, code) in cases {
        let (got, head_out, body) = raw(&daemon, &head).await;
        let shown = &head[..head.len().min(60)];
        assert_eq!(got, status, "{shown}: {body}");
        assert!(head_out.contains("content-type: application/json"), "{shown}: {head_out}");
        assert_eq!(error_code(&body), code, "{shown}");
        if status == 405 {
            assert!(head_out.contains("allow: get"), "405 says what is allowed: {head_out}");
        }
    }

    // The proxy answers in JSON-RPC, as MCP clients expect, and a 413 too.
    let response = daemon
        .http
        .post(format!("{}/workspaces/demo/mcp", daemon.url))
        .header("content-type", "application/json")
        .body(vec![b' '; (4 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32600, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_origins_are_parsed_not_matched_as_text() {
    let daemon = Daemon::start(&[]).await;
    let port = addr(&daemon).rsplit_once(':').unwrap().1.to_string();
    let refused = [
        format!("GET /healthz HTTP/1.1\r\nHost: localhost:{port}@evil\r\n"),
        format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:{port}@evil.com\r\n"),
        "GET http://evil.example/healthz HTTP/1.1\r\nHost: localhost\r\n".to_string(),
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n".to_string(),
        "GET /healthz HTTP/1.1\r\n".to_string(),
    ];
    for head in &refused {
        let (status, _, body) = raw(&daemon, head).await;
        assert!(matches!(status, 400 | 403), "{head:?} got {status}: {body}");
        error_code(&body);
    }
    let allowed = [
        format!("GET /healthz HTTP/1.1\r\nHost: LOCALHOST:{port}\r\n"),
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://LocalHost:{port}\r\n"),
        format!("GET http://localhost:{port}/healthz HTTP/1.1\r\nHost: localhost\r\n"),
        "GET /healthz HTTP/1.0\r\n".to_string(),
    ];
    for head in &allowed {
        let (status, _, body) = raw(&daemon, head).await;
        assert_eq!(status, 200, "{head:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let daemon = Daemon::start_with(&[], |config| config.token = Some("s3cret".into())).await;
    let list = |authorization: &'static str| {
        let request = daemon.http.get(format!("{}/api/workspaces", daemon.url));
        async move { request.header("authorization", authorization).send().await.unwrap() }
    };
    assert_eq!(list("bearer s3cret").await.status(), 200);
    assert_eq!(list("BEARER s3cret").await.status(), 200);
    let wrong = list("Bearer s3cre").await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(error_code(&wrong.text().await.unwrap()), "unauthorized");
    assert_eq!(daemon.get("/healthz").await.0, 200, "health needs no token");
}

/// Waits until the server closes `stream`; panics after `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection is still open after {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_but_streams_are_not() {
    let daemon = Daemon::start_with(&[("w", demo())], |config| {
        config.http.idle_timeout = Duration::from_millis(300);
        config.http.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    daemon.wait_status("w", "running", UP).await;
    // A stream is a request in flight: it outlives both timeouts.
    let events = daemon.http.get(format!("{}/api/events", daemon.url)).send().await.unwrap();
    let mut events = eventsource_stream::Eventsource::eventsource(events.bytes_stream());

    let mut silent = TcpStream::connect(addr(&daemon)).await.unwrap();
    let mut half_sent = TcpStream::connect(addr(&daemon)).await.unwrap();
    half_sent.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc").await.unwrap();
    let mut kept_alive = TcpStream::connect(addr(&daemon)).await.unwrap();
    kept_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 512];
    let n = kept_alive.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..n]));
    for stream in [&mut silent, &mut half_sent, &mut kept_alive] {
        closed_by_server(stream, UP).await;
    }

    use futures::StreamExt;
    let snapshot = tokio::time::timeout(UP, events.next()).await.unwrap().unwrap().unwrap();
    assert!(snapshot.data.contains("\"snapshot\""), "{}", snapshot.data);
    assert_eq!(daemon.post("/api/workspaces/w/restart").await.0, 202);
    let next = tokio::time::timeout(UP, events.next()).await.expect("the stream is still open").unwrap().unwrap();
    let next: Value = serde_json::from_str(&next.data).unwrap();
    assert_eq!(next["params"]["reason"], json!("restart"), "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_get_503() {
    let daemon = Daemon::start_with(&[], |config| config.http.max_connections = 3).await;
    let open = async || {
        let stream = TcpStream::connect(addr(&daemon)).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::get("/healthz").header("host", "localhost").body(Default::default()).unwrap();
        let status = sender.send_request(request).await.map(|r| r.status().as_u16());
        (sender, status)
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        let (sender, status) = open().await;
        assert_eq!(status.unwrap(), 200);
        held.push(sender);
    }
    let (status, head, body) = raw(&daemon, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n").await;
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(error_code(&body), "too_many_connections");

    // A connection that closes makes room.
    drop(held.pop());
    let deadline = Instant::now() + UP;
    loop {
        let (_, status) = open().await;
        if status.as_ref().is_ok_and(|s| *s == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "no room after a connection closed: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
