//! Response bodies on their way back: passed through frame by frame, never
//! buffered, while the proxy watches for the child going away.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connections::{Exchange, Registration};
use super::{jsonrpc, Proxy};

/// A body that keeps its exchange listed until it is done or dropped.
pub struct Tracked<B> {
    inner: B,
    _registration: Registration,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, registration: Registration) -> Tracked<B> {
        Tracked { inner, _registration: registration }
    }
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Splits an SSE byte stream into events, keeping the `data` of each.
#[derive(Debug, Default)]
pub struct SseScanner {
    line: Vec<u8>,
    data: Vec<u8>,
    event: Option<String>,
    /// Bytes of the current event so far (for rewriting whole events).
    raw: Vec<u8>,
}

/// One complete SSE event.
#[derive(Debug)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: Vec<u8>,
    /// The event exactly as received, blank line included.
    pub raw: Vec<u8>,
}

impl SseScanner {
    /// Feeds `chunk`, calling `on_event` for each event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent)) {
        for &byte in chunk {
            self.raw.push(byte);
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            if self.line.is_empty() {
                if !self.data.is_empty() || self.event.is_some() {
                    if self.data.last() == Some(&b'\n') {
                        self.data.pop();
                    }
                    on_event(SseEvent {
                        event: self.event.take(),
                        data: std::mem::take(&mut self.data),
                        raw: std::mem::take(&mut self.raw),
                    });
                } else {
                    // A blank line or a comment-only block: nothing to dispatch.
                    on_event(SseEvent { event: None, data: vec![], raw: std::mem::take(&mut self.raw) });
                }
            } else {
                let (field, value) = match self.line.iter().position(|&b| b == b':') {
                    Some(i) => (&self.line[..i], &self.line[i + 1..]),
                    None => (&self.line[..], &[][..]),
                };
                let value = value.strip_prefix(b" ").unwrap_or(value);
                match field {
                    b"data" => {
                        self.data.extend_from_slice(value);
                        self.data.push(b'\n');
                    }
                    b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
                    _ => {}
                }
            }
            self.line.clear();
        }
    }

    /// Whether the stream stopped in the middle of an event.
    pub fn mid_event(&self) -> bool {
        !self.raw.is_empty()
    }
}

/// Marks the requests `event` answers.
pub fn note_answers(exchange: &Exchange, event: &SseEvent) {
    if matches!(event.event.as_deref(), None | Some("message")) && !event.data.is_empty() {
        if let Some(id) = jsonrpc::response_id(&event.data) {
            exchange.answered(&id);
        }
    }
}

/// An SSE response of the child, relayed event by event.
///
/// When the child goes away (its run ends or the connection breaks) every
/// request of the exchange still waiting gets a JSON-RPC error event, then
/// the stream ends. A request still waiting at `deadline` gets a timeout
/// error the same way. A clean end of the child's stream is passed on as is:
/// a server may close a stream early and let the client resume it.
pub fn sse_body(
    proxy: Arc<Proxy>,
    name: String,
    upstream: Incoming,
    run: CancellationToken,
    registration: Registration,
    timeout: Option<Duration>,
) -> Body {
    struct State {
        proxy: Arc<Proxy>,
        name: String,
        upstream: Incoming,
        run: CancellationToken,
        registration: Registration,
        deadline: Option<Instant>,
        scanner: SseScanner,
        finished: bool,
    }
    enum Next {
        Frame(Option<Result<Frame<Bytes>, hyper::Error>>),
        Ended,
        TimedOut,
    }
    let state = State {
        proxy,
        name,
        upstream,
        run,
        registration,
        deadline: timeout.map(|t| Instant::now() + t),
        scanner: SseScanner::default(),
        finished: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        loop {
            let next = tokio::select! {
                biased;
                frame = st.upstream.frame() => Next::Frame(frame),
                _ = st.run.cancelled() => Next::Ended,
                _ = sleep_until(st.deadline) => Next::TimedOut,
            };
            let error = match next {
                Next::Frame(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    let exchange = &st.registration.exchange;
                    if exchange.has_pending() {
                        st.scanner.feed(&data, |event| note_answers(exchange, &event));
                    }
                    return Some((Ok::<Bytes, Infallible>(data), st));
                }
                Next::Frame(None) => return None,
                Next::Frame(Some(Err(e))) => st.proxy.broken(&st.name, &st.run, &e.to_string()).await,
                Next::Ended => st.proxy.broken(&st.name, &st.run, "the child exited").await,
                Next::TimedOut if !st.registration.exchange.has_pending() => {
                    st.deadline = None;
                    continue;
                }
                Next::TimedOut => st.proxy.timed_out(&st.name),
            };
            st.finished = true;
            let pending = st.registration.exchange.take_pending();
            if pending.is_empty() {
                return None;
            }
            let mut out = Vec::new();
            if st.scanner.mid_event() {
                out.extend_from_slice(b"\n\n");
            }
            out.extend_from_slice(&error.sse_events(&pending));
            return Some((Ok(Bytes::from(out)), st));
        }
    });
    Body::from_stream(stream)
}

pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_events_across_chunks() {
        let mut scanner = SseScanner::default();
        let mut events = vec![];
        scanner
            .feed(b"event: endpoint\r\ndata: /messages/?session_id=1\r\n\r\n: ping\n\nid: 4\nda", |e| events.push(e));
        assert!(scanner.mid_event());
        scanner.feed(b"ta: {\"a\":1}\ndata: x\n\n", |e| events.push(e));
        assert!(!scanner.mid_event());
        let real: Vec<&SseEvent> = events.iter().filter(|e| !e.data.is_empty()).collect();
        assert_eq!(real.len(), 2);
        assert_eq!(real[0].event.as_deref(), Some("endpoint"));
        assert_eq!(real[0].data, b"/messages/?session_id=1");
        assert_eq!(real[1].data, b"{\"a\":1}\nx");
        assert_eq!(real[1].raw, b"id: 4\ndata: {\"a\":1}\ndata: x\n\n");
    }
}
