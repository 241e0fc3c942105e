//! The first request of a connection, read before hyper sees it, so that
//! an event stream can be served without hyper's per-connection buffers.
//!
//! hyper's HTTP/1 connection keeps an 8 KiB read buffer and an 8 KiB
//! header write buffer for as long as it lives, and its builder cannot
//! shrink them: 16 KiB for every open SSE subscriber. A subscriber's
//! connection needs neither once its request is read: it only writes frames
//! that are already encoded. So each connection's first request head is
//! read here, into a small buffer; a plain `GET` of an event stream
//! (`/api/events`, `/api/workspaces/{name}/events`) goes through the router
//! as usual, and its response is written here, chunked, with
//! `Connection: close`, while the socket is watched only for the client
//! closing it. Frames that are already waiting when one is written (a
//! `stopping` and its `stopped`, reached late by a busy daemon) go out in
//! the same write. Every other request, and anything this reader does not fully
//! understand, is handed to hyper with the bytes already read in front
//! (see `server.rs`'s `Watched`), exactly as if it had read them itself.

use std::io::{IoSlice, Write};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, Version};
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes read while looking for the end of the first request head;
/// past it, hyper takes over (and answers 431 where that is due).
const PEEK_LIMIT: usize = 16 << 10;
/// Most headers the first request may have here; more go to hyper.
const MAX_HEADERS: usize = 64;
/// Most frames of a stream written together.
const MAX_BATCH: usize = 16;
/// Room for a chunk's size line: 16 hex digits and CRLF.
const CHUNK_HEAD: usize = 18;

/// What reading the first request gave.
pub enum First {
    /// An event-stream request, parsed; serve it with [`serve_stream`].
    Stream(Box<Request<Body>>),
    /// Anything else: hyper serves the connection, these bytes first.
    Other(BytesMut),
    /// The client closed the connection, or was idle or slow past its
    /// timeout: nothing to serve.
    Gone,
}

/// Reads the first request head of `stream`: waiting at most `idle` for
/// its first byte, then at most `head_timeout` for the rest.
pub async fn read(stream: &mut TcpStream, idle: Duration, head_timeout: Duration) -> First {
    let mut buf = BytesMut::with_capacity(1024);
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        if buf.len() >= PEEK_LIMIT {
            return First::Other(buf);
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len());
        }
        let started = !buf.is_empty();
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) if started => return First::Other(buf),
            // Closed, failed, idle too long, or too slow to send its head.
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return First::Gone,
            Ok(Ok(_)) => {}
        }
        if !started {
            // The first bytes arrived: the rest of the head has `head_timeout`.
            deadline = tokio::time::Instant::now() + head_timeout;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(len)) if len == buf.len() => {
                return match stream_request(&parsed) {
                    Some(request) => First::Stream(Box::new(request)),
                    None => First::Other(buf),
                };
            }
            // Bytes past the head (a body, a pipelined request), or a head
            // hyper should judge: hyper's.
            Ok(httparse::Status::Complete(_)) | Err(_) => return First::Other(buf),
        }
    }
}

/// The request, if it is a body-less HTTP/1.1 `GET` of an event stream.
fn stream_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let path = parsed.path?;
    let route = path.split('?').next().unwrap_or(path);
    let is_stream = route == "/api/events"
        || route
            .strip_prefix("/api/workspaces/")
            .and_then(|r| r.strip_suffix("/events"))
            .is_some_and(|name| !name.is_empty() && !name.contains('/'));
    if !is_stream {
        return None;
    }
    let mut request = Request::builder().method(Method::GET).uri(path).version(Version::HTTP_11);
    for h in parsed.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        // A body, or a switch of protocol, is hyper's to handle.
        if matches!(name.as_str(), "content-length" | "transfer-encoding" | "upgrade" | "expect") {
            return None;
        }
        request = request.header(h.name, HeaderValue::from_bytes(h.value).ok()?);
    }
    request.body(Body::empty()).ok()
}

/// Writes `response` to `stream`: the head, then the body chunked (or with
/// its exact length), then closes. Ends early when the client closes.
pub async fn serve_stream(mut stream: TcpStream, response: Response<Body>) {
    let (parts, mut body) = response.into_parts();
    let exact = http_body::Body::size_hint(&body).exact();
    let mut head = format!("HTTP/1.1 {}\r\n", parts.status).into_bytes();
    for (name, value) in &parts.headers {
        if matches!(*name, header::CONNECTION | header::CONTENT_LENGTH | header::TRANSFER_ENCODING) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match exact {
        Some(len) => head.extend_from_slice(format!("content-length: {len}\r\n").as_bytes()),
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    let (mut reader, mut writer) = stream.split();
    if writer.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    let mut probe = [0u8; 64];
    let mut frames: Vec<Bytes> = Vec::new();
    let mut ended = false;
    while !ended {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // Whatever the client sends now is not read: only its close matters.
            read = reader.read(&mut probe) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        ended = take_data(frame, &mut frames);
        // Frames already waiting (a `stopping` then `stopped` that a busy
        // daemon reaches late) go out in the same write: one system call,
        // one TCP segment, one wake-up of the reader.
        while !ended && frames.len() < MAX_BATCH {
            let Some(frame) = body.frame().now_or_never() else { break };
            ended = take_data(frame, &mut frames);
        }
        if frames.is_empty() {
            continue;
        }
        if write_frames(&mut writer, &frames, exact.is_none()).await.is_err() {
            return;
        }
        frames.clear();
    }
    if exact.is_none() {
        let _ = writer.write_all(b"0\r\n\r\n").await;
    }
    let _ = writer.shutdown().await;
}

/// Adds the data of `frame` (a body's next frame) to `frames`; whether the
/// body has ended (or failed).
fn take_data(frame: Option<Result<Frame<Bytes>, axum::Error>>, frames: &mut Vec<Bytes>) -> bool {
    match frame {
        Some(Ok(frame)) => {
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    frames.push(data);
                }
            }
            false
        }
        None | Some(Err(_)) => true,
    }
}

/// Writes `frames` in one write where the socket takes it: each as a chunk
/// of a chunked body, or as is.
///
/// The size lines and slices are on the heap: held across the write, arrays
/// would grow every open stream's task by their size for its whole life.
async fn write_frames(writer: &mut (impl AsyncWrite + Unpin), frames: &[Bytes], chunked: bool) -> std::io::Result<()> {
    let mut heads = Vec::with_capacity(if chunked { frames.len() * CHUNK_HEAD } else { 0 });
    if chunked {
        for frame in frames {
            write!(heads, "{:x}\r\n", frame.len())?;
        }
    }
    let mut slices = Vec::with_capacity(frames.len() * 3);
    let mut rest_of_heads = &heads[..];
    for frame in frames {
        if chunked {
            let line = rest_of_heads.iter().position(|b| *b == b'\n').map_or(rest_of_heads.len(), |i| i + 1);
            let (head, rest) = rest_of_heads.split_at(line);
            rest_of_heads = rest;
            slices.extend([IoSlice::new(head), IoSlice::new(frame), IoSlice::new(b"\r\n")]);
        } else {
            slices.push(IoSlice::new(frame));
        }
    }
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let written = writer.write_vectored(&slices).await?;
    if written == total {
        return Ok(());
    }
    // A short write: the rest, byte-exact, the slow way.
    let mut rest = Vec::with_capacity(total);
    for slice in &slices {
        rest.extend_from_slice(slice);
    }
    writer.write_all(&rest[written..]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Option<Request<Body>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(head.as_bytes()).unwrap().is_complete());
        stream_request(&parsed)
    }

    #[test]
    fn only_bodyless_gets_of_event_streams_are_taken() {
        assert!(parse("GET /api/events?workspace=a HTTP/1.1\r\nHost: x\r\n\r\n").is_some());
        assert!(parse("GET /api/workspaces/dev/events HTTP/1.1\r\nHost: x\r\n\r\n").is_some());
        assert!(parse("GET /api/workspaces HTTP/1.1\r\nHost: x\r\n\r\n").is_none());
        assert!(parse("GET /api/workspaces/a/b/events HTTP/1.1\r\n\r\n").is_none());
        assert!(parse("POST /api/events HTTP/1.1\r\n\r\n").is_none());
        assert!(parse("GET /api/events HTTP/1.0\r\n\r\n").is_none());
        assert!(parse("GET /api/events HTTP/1.1\r\nContent-Length: 3\r\n\r\n").is_none());
        assert!(parse("GET /api/events HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").is_none());
        let request = parse("GET /api/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\n").unwrap();
        assert_eq!(request.headers()["last-event-id"], "7");
    }

    /// Records each write it is given, and takes at most `limit` bytes of each.
    struct Recorder {
        writes: Vec<Vec<u8>>,
        limit: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.limit);
            this.writes.push(buf[..n].to_vec());
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.poll_write(cx, &joined)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn frames() -> Vec<Bytes> {
        vec![Bytes::from_static(b"id: 1\ndata: a\n\n"), Bytes::from_static(b"id: 2\ndata: bc\n\n")]
    }

    #[tokio::test]
    async fn waiting_frames_go_out_in_one_write_as_chunks() {
        let mut recorder = Recorder { writes: vec![], limit: usize::MAX };
        write_frames(&mut recorder, &frames(), true).await.unwrap();
        assert_eq!(recorder.writes, [b"f\r\nid: 1\ndata: a\n\n\r\n10\r\nid: 2\ndata: bc\n\n\r\n".to_vec()]);
        let mut recorder = Recorder { writes: vec![], limit: usize::MAX };
        write_frames(&mut recorder, &frames(), false).await.unwrap();
        assert_eq!(recorder.writes, [b"id: 1\ndata: a\n\nid: 2\ndata: bc\n\n".to_vec()]);
    }

    #[tokio::test]
    async fn a_short_write_is_finished_byte_exact() {
        let mut recorder = Recorder { writes: vec![], limit: 7 };
        write_frames(&mut recorder, &frames(), true).await.unwrap();
        assert_eq!(recorder.writes.concat(), b"f\r\nid: 1\ndata: a\n\n\r\n10\r\nid: 2\ndata: bc\n\n\r\n");
    }

    /// Frames ready at once, then a stream that stays open: the client reads
    /// the head and every frame as chunks, in order.
    #[tokio::test]
    async fn a_stream_is_written_chunked_frame_by_frame() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let ready = futures::stream::iter(frames().into_iter().map(Ok::<_, std::convert::Infallible>));
        let body = Body::from_stream(futures::StreamExt::chain(ready, futures::stream::pending()));
        let serving = tokio::spawn(serve_stream(server, Response::new(body)));
        let want = "transfer-encoding: chunked\r\nconnection: close\r\n\r\nf\r\nid: 1\ndata: a\n\n\r\n10\r\nid: 2\ndata: bc\n\n\r\n";
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).ends_with(want) {
            let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
        // The client's close ends the stream.
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), serving).await.unwrap().unwrap();
    }
}
