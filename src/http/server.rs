//! The HTTP/1 server under the router: accepts connections, bounds them,
//! closes the idle and the slow, and drains at shutdown.
//!
//! Served with hyper's connection builder rather than `axum::serve`, which
//! has no timeouts and no connection limit. Each connection gets:
//! - TCP_NODELAY: small writes (SSE events, proxied answers) go out at once
//!   instead of waiting for the client's delayed ACK (~40 ms);
//! - a header read timeout, from the first byte of a request's head to its
//!   end, and an idle timeout between requests (a new connection starts
//!   idle). A connection that overstays either is closed; one with a
//!   request in flight never is;
//! - a place among at most `max_connections`: past it, a connection is
//!   answered 503 (JSON) and closed.
//!
//! A connection whose first request is an event stream is served without
//! hyper, by [`first_request`], which keeps no buffers for it.
//!
//! At shutdown the listener closes, every connection finishes the request
//! it is serving and closes, and those still open after [`DRAIN_TIME`] are
//! dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::first_request::{self, First};
use super::holding::Holding;
use super::ApiError;

/// How long connections may take to finish after shutdown.
const DRAIN_TIME: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers) hyper buffers, bytes.
/// The router refuses smaller ones past its own limits with JSON answers
/// (see `guard.rs`); a head past this one gets hyper's bare 431.
const MAX_BUFFER: usize = 256 << 10;
/// Connections past the limit being answered 503 at once; more are dropped.
const MAX_REJECTING: usize = 64;

/// Limits of the HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Longest time from the first byte of a request's head to its end
    /// (default 10 s).
    pub header_read_timeout: Duration,
    /// Longest time a connection may stay open with no request in flight
    /// (default 60 s).
    pub idle_timeout: Duration,
    /// Most connections open at once (default 1024).
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then drains.
pub async fn serve(listener: TcpListener, router: Router, limits: ServerLimits, shutdown: CancellationToken) {
    let limits = Arc::new(limits);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    let mut connections = JoinSet::new();
    // Each kind of trouble is logged once per streak, not once per connection.
    let (mut refusing, mut failing) = (false, false);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!("accepting connections: {e}; retrying every 100 ms");
                    }
                    // Out of file descriptors, most likely: wait for some to close.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        failing = false;
        let _ = stream.set_nodelay(true);
        if let Ok(permit) = open.clone().try_acquire_owned() {
            refusing = false;
            let connection = Connection { router: router.clone(), limits: limits.clone(), peer };
            connections.spawn(connection.run(stream, permit, shutdown.clone()));
            continue;
        }
        if !std::mem::replace(&mut refusing, true) {
            tracing::warn!(limit = limits.max_connections, "too many connections: refusing new ones until some close");
        }
        match rejecting.clone().try_acquire_owned() {
            Ok(permit) => drop(connections.spawn(reject(stream, limits.header_read_timeout, permit))),
            Err(_) => tracing::debug!(%peer, "too many connections: dropping one unanswered"),
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIME, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(open = connections.len(), "connections still open after {DRAIN_TIME:?}: dropping them");
        connections.abort_all();
    }
}

/// Answers one request on a connection past the limit with 503, then closes it.
async fn reject(stream: TcpStream, within: Duration, _permit: OwnedSemaphorePermit) {
    let service = hyper::service::service_fn(|_: Request<Incoming>| async {
        let mut response =
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_connections", "too many connections")
                .into_response();
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, Infallible>(response)
    });
    let connection = http1::Builder::new().keep_alive(false).serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(within, connection).await;
}

/// One accepted connection within the limit.
struct Connection {
    router: Router,
    limits: Arc<ServerLimits>,
    peer: SocketAddr,
}

impl Connection {
    async fn run(self, mut stream: TcpStream, _permit: OwnedSemaphorePermit, shutdown: CancellationToken) {
        let (idle, head) = (self.limits.idle_timeout, self.limits.header_read_timeout);
        let first = tokio::select! {
            first = first_request::read(&mut stream, idle, head) => first,
            _ = shutdown.cancelled() => return,
        };
        let prefix = match first {
            First::Gone => return,
            First::Stream(mut request) => {
                request.extensions_mut().insert(ConnectInfo(self.peer));
                let response = self.router.oneshot(*request).await.unwrap_or_else(|never| match never {});
                first_request::serve_stream(stream, response).await;
                return;
            }
            First::Other(prefix) => prefix,
        };
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched { prefix, inner: stream, activity: activity.clone() });
        let (router, peer, requests) = (self.router, self.peer, activity.clone());
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let in_flight = InFlight::start(&requests);
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = router.clone().oneshot(request.map(Body::new));
            async move {
                let response = response.await.unwrap_or_else(|never| match never {});
                Ok::<_, Infallible>(response.map(|body| Holding::new(body, in_flight)))
            }
        });
        let connection = http1::Builder::new().max_buf_size(MAX_BUFFER).serve_connection(io, service);
        tokio::pin!(connection);
        let mut draining = false;
        loop {
            let deadline = activity.deadline(&self.limits);
            let changed = activity.changed.notified();
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                    return;
                }
                _ = shutdown.cancelled(), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = changed => {}
                _ = sleep_until(deadline) => {
                    if activity.deadline(&self.limits).is_some_and(|d| d <= Instant::now()) {
                        tracing::debug!(%peer, "closing a connection that was idle or slow to send its request");
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, for its timeouts.
#[derive(Debug)]
struct Activity {
    /// Requests handed to the router whose responses are not sent yet.
    in_flight: AtomicUsize,
    /// With no request in flight: whether bytes of the next one arrived.
    head_started: AtomicBool,
    /// With no request in flight: since when the connection has been idle,
    /// or since the first byte of the next request's head.
    since: Mutex<Instant>,
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            head_started: AtomicBool::new(false),
            since: Mutex::new(Instant::now()),
            changed: Notify::new(),
        }
    }

    /// When the connection is to be closed, if nothing happens before.
    fn deadline(&self, limits: &ServerLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = *self.since.lock().unwrap();
        let allowed =
            if self.head_started.load(Ordering::Acquire) { limits.header_read_timeout } else { limits.idle_timeout };
        Some(since + allowed)
    }

    /// Bytes arrived: with no request in flight, they start the next head.
    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && !self.head_started.swap(true, Ordering::AcqRel) {
            *self.since.lock().unwrap() = Instant::now();
            self.changed.notify_one();
        }
    }
}

/// A request in flight; dropped with its response body once sent (or
/// abandoned), which makes the connection idle again.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_started.store(false, Ordering::Release);
        activity.changed.notify_one();
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let mut since = activity.since.lock().unwrap();
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
            activity.head_started.store(false, Ordering::Release);
        }
        drop(since);
        activity.changed.notify_one();
    }
}

/// The connection's socket, noting when bytes arrive, with the bytes
/// [`first_request::read`] took from it in front.
struct Watched {
    prefix: bytes::BytesMut,
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            if self.prefix.is_empty() {
                // Give the buffer back.
                self.prefix = bytes::BytesMut::new();
            }
            self.activity.read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
