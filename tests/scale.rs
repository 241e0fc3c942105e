//! Reads that cost nothing per request (shared bytes, ETag, 304, filters,
//! compression) and start storms (`--max-concurrent-starts`), against a
//! real daemon with real children.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const UP: Duration = Duration::from_secs(20);

fn disabled() -> Value {
    let mut file = demo();
    file["enabled"] = json!(false);
    file
}

/// GET `path` with `headers`; the status, the headers and the body bytes.
async fn fetch(daemon: &Daemon, path: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = daemon.http.get(format!("{}{path}", daemon.url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.bytes().await.unwrap().to_vec())
}

fn etag(headers: &reqwest::header::HeaderMap) -> String {
    headers.get("etag").expect("an ETag").to_str().unwrap().to_string()
}

fn names(body: &[u8]) -> Vec<String> {
    let list: Value = serde_json::from_slice(body).unwrap();
    list["workspaces"].as_array().unwrap().iter().map(|w| w["workspace"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_carry_a_strong_etag_and_answer_304_until_something_changes() {
    let daemon = Daemon::start(&[("a", disabled()), ("b", disabled())]).await;
    daemon.wait_status("b", "stopped", UP).await;
    let (code, headers, body) = fetch(&daemon, "/api/workspaces", &[]).await;
    assert_eq!(code, 200);
    assert_eq!(names(&body), ["a", "b"]);
    let tag = etag(&headers);
    assert!(tag.starts_with('"') && tag.ends_with('"'), "a strong tag: {tag}");
    let (_, again, same) = fetch(&daemon, "/api/workspaces", &[]).await;
    assert_eq!((etag(&again), &same), (tag.clone(), &body), "the same bytes under the same tag");

    let (code, headers, body) = fetch(&daemon, "/api/workspaces", &[("if-none-match", &tag)]).await;
    assert_eq!((code, etag(&headers), body.len()), (304, tag.clone(), 0));

    let (code, headers, body) = fetch(&daemon, "/api/workspaces/a", &[]).await;
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["workspace"], "a");
    let one = etag(&headers);
    let (code, _, _) = fetch(&daemon, "/api/workspaces/a", &[("if-none-match", &format!("\"x\", {one}"))]).await;
    assert_eq!(code, 304);

    // A change of one workspace is a new list and a new tag.
    assert_eq!(daemon.post("/api/workspaces/a/start").await.0, 202);
    daemon.wait_status("a", "running", UP).await;
    let (code, headers, _) = fetch(&daemon, "/api/workspaces", &[("if-none-match", &tag)]).await;
    assert_eq!(code, 200);
    assert_ne!(etag(&headers), tag);
    let (code, _, _) = fetch(&daemon, "/api/workspaces/b", &[("if-none-match", &tag)]).await;
    assert_eq!(code, 200, "another resource's tag does not match");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_filters_by_status_and_name_prefix() {
    let daemon = Daemon::start(&[("dev-a", demo()), ("dev-b", disabled()), ("ops", disabled())]).await;
    daemon.wait_status("dev-a", "running", UP).await;
    let list = |query: &'static str| {
        let daemon = &daemon;
        async move {
            let (code, _, body) = fetch(daemon, &format!("/api/workspaces{query}"), &[]).await;
            assert_eq!(code, 200, "{query}: {}", String::from_utf8_lossy(&body));
            names(&body)
        }
    };
    assert_eq!(list("?status=running").await, ["dev-a"]);
    assert_eq!(list("?name=dev*").await, ["dev-a", "dev-b"]);
    assert_eq!(list("?status=stopped&name=dev*").await, ["dev-b"]);
    assert_eq!(list("?status=error,stopped").await, ["dev-b", "ops"]);
    assert_eq!(list("?name=ops,dev-a").await, ["dev-a", "ops"]);
    assert!(list("?name=x*").await.is_empty());
    let (code, body) = daemon.get("/api/workspaces?status=sleeping").await;
    assert_eq!((code, &body["code"]), (400, &json!("bad_query")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_compressed_when_asked_with_the_coding_in_the_etag() {
    let daemon = Daemon::start(&[("a", disabled()), ("b", disabled())]).await;
    daemon.wait_status("b", "stopped", UP).await;
    let (code, plain_headers, plain) = fetch(&daemon, "/api/workspaces", &[]).await;
    assert_eq!(code, 200);
    assert!(plain_headers.get("content-encoding").is_none());
    let (code, headers, gzipped) = fetch(&daemon, "/api/workspaces", &[("accept-encoding", "gzip")]).await;
    assert_eq!(code, 200);
    assert_eq!(headers.get("content-encoding").unwrap(), "gzip");
    assert_eq!(&gzipped[..2], &[0x1f, 0x8b], "a gzip stream");
    assert!(gzipped.len() < plain.len());
    let tag = etag(&headers);
    assert_eq!(tag, format!("\"{}-gzip\"", etag(&plain_headers).trim_matches('"')));
    let (code, _, _) = fetch(&daemon, "/api/workspaces", &[("accept-encoding", "gzip"), ("if-none-match", &tag)]).await;
    assert_eq!(code, 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_beyond_the_limit_wait_queued_then_every_child_runs() {
    let files: Vec<(String, Value)> = (0..4).map(|i| (format!("w{i}"), demo())).collect();
    let files: Vec<(&str, Value)> = files.iter().map(|(n, f)| (n.as_str(), f.clone())).collect();
    let daemon = Daemon::start_with(&files, |config| config.max_concurrent_starts = 1).await;
    // Replay from the first event: every start is in the ring.
    let mut events = Events::open(&daemon.http, &format!("{}/api/events", daemon.url), Some(0)).await;
    let mut queued = std::collections::BTreeSet::new();
    let mut running = std::collections::BTreeSet::new();
    let mut starting_at_once = 0usize;
    let mut max_starting_at_once = 0usize;
    while running.len() < 4 {
        let (_, event) = events.next(UP).await.expect("every workspace reaches running");
        let params = &event["params"];
        let name = params["workspace"].as_str().unwrap().to_string();
        match (params["status"].as_str().unwrap(), params["reason"].as_str().unwrap()) {
            (_, "snapshot" | "resync") => panic!("the replay starts at the first event: {event}"),
            ("starting", "queued") => {
                assert_eq!(params["pid"], Value::Null, "a queued start has no child: {event}");
                queued.insert(name);
            }
            // A spawned child: it holds the one slot until it is ready.
            ("starting", _) => {
                starting_at_once += 1;
                max_starting_at_once = max_starting_at_once.max(starting_at_once);
            }
            ("running", _) => {
                starting_at_once = starting_at_once.saturating_sub(1);
                running.insert(name);
            }
            _ => {}
        }
    }
    assert!(queued.len() >= 3, "with one slot, three of four starts wait: {queued:?}");
    assert_eq!(max_starting_at_once, 1, "one child starting at a time");
}

/// Reads from `stream` until `needle` shows up; everything read so far.
async fn read_until(stream: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = tokio::time::timeout(UP, stream.read(&mut buf)).await.expect("bytes in time").unwrap();
        assert!(n > 0, "closed before {needle:?}: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_its_own_connection_is_served_without_hyper_and_ends_with_its_client() {
    use tokio::io::AsyncWriteExt;
    let daemon = Daemon::start(&[("w", disabled())]).await;
    daemon.wait_status("w", "stopped", UP).await;
    let addr = daemon.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!("GET /api/workspaces/w/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let seen = read_until(&mut stream, "\"reason\":\"snapshot\"").await.to_ascii_lowercase();
    assert!(seen.starts_with("http/1.1 200 ok\r\n"), "{seen}");
    assert!(seen.contains("content-type: text/event-stream\r\n"), "{seen}");
    assert!(seen.contains("transfer-encoding: chunked\r\n") && seen.contains("connection: close\r\n"), "{seen}");
    // The guard still answers on this path.
    let mut evil = tokio::net::TcpStream::connect(&addr).await.unwrap();
    evil.write_all(b"GET /api/events HTTP/1.1\r\nHost: evil.example\r\n\r\n").await.unwrap();
    assert!(read_until(&mut evil, "}").await.starts_with("HTTP/1.1 403"), "DNS rebinding is refused");

    let subscribers = || async {
        let (_, connections) = daemon.get("/api/debug/state/connections").await;
        connections["subscribers"].as_array().map_or(0, |s| s.len())
    };
    assert_eq!(subscribers().await, 1);
    // A change reaches the stream as a chunk.
    assert_eq!(daemon.post("/api/workspaces/w/start").await.0, 202);
    read_until(&mut stream, "\"status\":\"starting\"").await;
    drop(stream);
    eventually("the subscriber gone with its client", UP, || async {
        let n = subscribers().await;
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} subscribers"))
        }
    })
    .await;
}
