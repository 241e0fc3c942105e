//! Response bodies on their way back: passed through frame by frame, never
//! buffered, while the proxy watches for the child going away.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::connections::{Exchange, Registration};
use super::{jsonrpc, Proxy, ProxyError, Run};
use crate::sse::{Event, Parser};

/// Marks the request that `event` answers, if it is an answer.
pub fn note_answer(exchange: &Exchange, event: &Event) {
    if event.event == "message" && !event.data.is_empty() {
        if let Some(id) = jsonrpc::response_id(event.data.as_bytes()) {
            exchange.answered(&id);
        }
    }
}

/// Feeds `chunk` to `parser`, marking the requests it answers; a stream that
/// cannot be parsed is no longer followed (its requests stay pending).
pub fn follow(parser: &mut Option<Parser>, exchange: &Exchange, chunk: &[u8]) {
    let Some(active) = parser else { return };
    if let Err(e) = active.feed(chunk, |event| note_answer(exchange, &event)) {
        tracing::debug!(workspace = %exchange.workspace, "no longer following a child's answers: {e}");
        *parser = None;
    }
}

/// The error events for the requests of `exchange` still waiting; with
/// `mid_event` (the child stopped inside an event), a blank line first.
pub fn error_events(error: &ProxyError, exchange: &Exchange, mid_event: bool) -> Option<BytesMut> {
    let pending = exchange.take_pending();
    if pending.is_empty() {
        return None;
    }
    let mut out = BytesMut::new();
    if mid_event {
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(&error.sse_events(&pending));
    Some(out)
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
    run: Arc<Run>,
    registration: Registration,
    timeout: Option<Duration>,
) -> Body {
    struct State {
        proxy: Arc<Proxy>,
        name: String,
        upstream: Incoming,
        run: Arc<Run>,
        registration: Registration,
        deadline: Option<Instant>,
        parser: Option<Parser>,
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
        parser: Some(Parser::default()),
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
                _ = st.run.ended.cancelled() => Next::Ended,
                _ = sleep_until(st.deadline) => Next::TimedOut,
            };
            let error = match next {
                Next::Frame(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    let exchange = &st.registration.exchange;
                    // Once every request is answered, the rest is only passed on.
                    if exchange.has_pending() {
                        follow(&mut st.parser, exchange, &data);
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
            let mid_event = st.parser.as_ref().is_none_or(Parser::mid_event);
            let events = error_events(&error, &st.registration.exchange, mid_event)?;
            return Some((Ok(events.freeze()), st));
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
