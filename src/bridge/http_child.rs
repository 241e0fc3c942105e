//! Upstreams on HTTP children, for clients of the other transport: a
//! legacy (2024-11-05 HTTP+SSE) client of a Streamable HTTP child, and a
//! Streamable HTTP client of a legacy child. Each client session is one
//! session on the child, so nothing is rewritten: mcpvisor is the child's
//! client and relays messages one by one (docs/reference.md §9). Clients
//! and children of the same transport never come here: they stay a
//! byte-for-byte pass-through.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::channel::{pair, Budget, Outbox, Sink};
use super::hub::BridgeError;
use super::message::{self, Kind};
use super::upstream::Upstream;

/// How long a legacy child may take to announce its endpoint.
const ENDPOINT_WAIT: Duration = Duration::from_secs(10);

/// Routes one child session's messages to the client's channels: an answer
/// to the channel its request came with, anything else to the request's
/// channel when the child sent it there, else the session's stream, else a
/// request's channel still open, else a backlog.
#[derive(Debug, Default)]
struct Replies {
    budget: Arc<Budget>,
    routes: Mutex<Routes>,
    closed: CancellationToken,
    reason: OnceLock<String>,
}

#[derive(Debug, Default)]
struct Routes {
    /// Requests awaiting an answer: their id and channel.
    pending: Vec<(Value, Sink)>,
    standby: Option<Sink>,
    backlog: VecDeque<Bytes>,
}

impl Replies {
    fn expect(&self, id: Value, reply: &Sink) {
        self.routes.lock().unwrap().pending.push((id, reply.clone()));
    }

    /// Delivers one message of the child, `via` the channel of the request
    /// whose answer carried it, if any.
    fn deliver(&self, bytes: Bytes, via: Option<&Sink>) {
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        let mut routes = self.routes.lock().unwrap();
        let answer_to = match parsed.as_ref().filter(|m| message::kind(m) == Some(Kind::Response)) {
            Some(answer) => routes.pending.iter().position(|(id, _)| Some(id) == answer.get("id")),
            None => None,
        };
        let sink = match answer_to {
            Some(at) => Some(routes.pending.remove(at).1),
            None => via
                .filter(|s| !s.is_closed())
                .cloned()
                .or_else(|| routes.standby.clone().filter(|s| !s.is_closed()))
                .or_else(|| routes.pending.iter().rev().map(|(_, s)| s).find(|s| !s.is_closed()).cloned()),
        };
        let over = match sink {
            Some(sink) => sink.send(bytes),
            None => {
                let over = self.budget.add(bytes.len());
                routes.backlog.push_back(bytes);
                over
            }
        };
        drop(routes);
        if over {
            self.close(&format!("closed: the client left {} MiB of messages unread", super::SESSION_BUFFER >> 20));
        }
    }

    fn standby(&self, sink: &Sink) {
        let mut routes = self.routes.lock().unwrap();
        for bytes in routes.backlog.drain(..) {
            self.budget.release(bytes.len());
            sink.send(bytes);
        }
        routes.standby = Some(sink.clone());
    }

    fn close(&self, reason: &str) {
        let _ = self.reason.set(reason.to_string());
        self.closed.cancel();
        let mut routes = self.routes.lock().unwrap();
        routes.pending.clear();
        routes.standby = None;
    }
}

/// The parts every HTTP child upstream shares.
#[derive(Debug)]
struct Relay {
    replies: Arc<Replies>,
    work: mpsc::UnboundedSender<(Value, Sink)>,
    /// Fires when the child's run ends (the proxy's run token): the session
    /// can then be carried over to the next child (docs/reference.md §11).
    run_ended: CancellationToken,
}

impl Relay {
    fn send(&self, message: Value, reply: &Sink) -> Result<(), BridgeError> {
        if self.replies.closed.is_cancelled() {
            return Err(BridgeError::SessionClosed(self.replies.reason.get().cloned().unwrap_or_default()));
        }
        if message::kind(&message) == Some(Kind::Request) {
            self.replies.expect(message["id"].clone(), reply);
        }
        self.work
            .send((message, reply.clone()))
            .map_err(|_| BridgeError::SessionClosed("the child session ended".to_string()))
    }
}

macro_rules! relay_upstream {
    ($ty:ty) => {
        impl Upstream for $ty {
            fn channel(&self) -> (Sink, Outbox) {
                pair(&self.relay.replies.budget)
            }

            fn send(&self, message: Value, reply: &Sink) -> Result<(), BridgeError> {
                self.relay.send(message, reply)
            }

            fn standby(&self, sink: &Sink) {
                self.relay.replies.standby(sink)
            }

            fn redeliver(&self, bytes: Bytes) {
                self.relay.replies.deliver(bytes, None)
            }

            fn closed(&self) -> BoxFuture<'_, ()> {
                Box::pin(self.relay.replies.closed.cancelled())
            }

            fn is_closed(&self) -> bool {
                self.relay.replies.closed.is_cancelled()
            }

            fn child_gone(&self) -> bool {
                self.relay.run_ended.is_cancelled()
            }

            fn close_reason(&self) -> Option<String> {
                self.relay.replies.reason.get().cloned()
            }
        }

        impl Drop for $ty {
            fn drop(&mut self) {
                self.relay.replies.close("ended");
            }
        }
    };
}

/// A session on a Streamable HTTP child, for a legacy client.
#[derive(Debug)]
pub struct StreamableChild {
    relay: Relay,
}

relay_upstream!(StreamableChild);

impl StreamableChild {
    /// A session on the child at `url`; nothing is sent until the client's
    /// first message (its `initialize`).
    pub fn open(client: reqwest::Client, url: String, run_ended: CancellationToken) -> StreamableChild {
        let replies = Arc::new(Replies::default());
        let (work, queue) = mpsc::unbounded_channel();
        tokio::spawn(post_to_streamable(client, url, replies.clone(), queue));
        StreamableChild { relay: Relay { replies, work, run_ended } }
    }
}

/// POSTs the client's messages in order, each once the child took the one
/// before (so `initialize` issues the session before anything else is
/// sent); reads each answer on a task of its own.
async fn post_to_streamable(
    client: reqwest::Client,
    url: String,
    replies: Arc<Replies>,
    mut queue: mpsc::UnboundedReceiver<(Value, Sink)>,
) {
    let mut session: Option<String> = None;
    let mut listening = false;
    loop {
        let next = tokio::select! {
            _ = replies.closed.cancelled() => break,
            next = queue.recv() => next,
        };
        let Some((message, reply)) = next else { break };
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(message.to_string());
        if let Some(session) = &session {
            request = request.header("mcp-session-id", session);
        }
        let response = tokio::select! {
            _ = replies.closed.cancelled() => break,
            response = request.send() => response,
        };
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                replies.close(&format!("the child broke off: {e}"));
                break;
            }
        };
        if let Some(issued) = response.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()) {
            session = Some(issued.to_string());
        }
        tokio::spawn(read_answer(response, replies.clone(), reply));
        if !listening && message::method(&message) == "notifications/initialized" {
            listening = true;
            tokio::spawn(listen_streamable(client.clone(), url.clone(), session.clone(), replies.clone()));
        }
    }
    if let Some(session) = session {
        let _ = client.delete(&url).header("mcp-session-id", session).send().await;
    }
}

/// Delivers the messages of one answer: a JSON body or an event stream.
async fn read_answer(response: reqwest::Response, replies: Arc<Replies>, reply: Sink) {
    let is_sse = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_sse {
        return relay_events(response, &replies, Some(&reply)).await;
    }
    let Ok(body) = response.bytes().await else { return };
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(batch)) => batch.iter().for_each(|m| replies.deliver(message::bytes(m), Some(&reply))),
        Ok(_) => replies.deliver(body, Some(&reply)),
        Err(_) => {}
    }
}

/// The session's GET stream, for messages not tied to a request; a child
/// that offers none (405) is fine.
async fn listen_streamable(client: reqwest::Client, url: String, session: Option<String>, replies: Arc<Replies>) {
    let mut request = client.get(&url).header("accept", "text/event-stream");
    if let Some(session) = &session {
        request = request.header("mcp-session-id", session);
    }
    let Ok(response) = request.send().await else { return };
    if !response.status().is_success() {
        return;
    }
    relay_events(response, &replies, None).await
}

/// Delivers each event of an event stream of the child, `via` a request's
/// channel when the stream answers one.
async fn relay_events(response: reqwest::Response, replies: &Replies, via: Option<&Sink>) {
    let mut events = response.bytes_stream().eventsource();
    loop {
        let event = tokio::select! {
            _ = replies.closed.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            Some(Ok(event)) if !event.data.is_empty() => replies.deliver(Bytes::from(event.data), via),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

/// A session on a legacy (HTTP+SSE) child, for a Streamable HTTP client.
#[derive(Debug)]
pub struct SseChild {
    relay: Relay,
}

relay_upstream!(SseChild);

impl SseChild {
    /// Opens the child's event stream at `url` and waits for its endpoint.
    ///
    /// # Errors
    /// The child did not answer or announced no endpoint within 10 s.
    pub async fn open(
        client: reqwest::Client,
        url: String,
        run_ended: CancellationToken,
    ) -> Result<SseChild, BridgeError> {
        let broke = |e: String| BridgeError::SessionClosed(format!("opening the child's event stream: {e}"));
        let opening = async {
            let response = client.get(&url).header("accept", "text/event-stream").send().await;
            let response = response.map_err(|e| broke(e.to_string()))?;
            if !response.status().is_success() {
                return Err(broke(format!("HTTP {}", response.status())));
            }
            let mut events = response.bytes_stream().eventsource();
            while let Some(event) = events.next().await {
                let event = event.map_err(|e| broke(e.to_string()))?;
                if event.event == "endpoint" {
                    let base = reqwest::Url::parse(&url).map_err(|e| broke(e.to_string()))?;
                    let endpoint = base.join(event.data.trim()).map_err(|e| broke(e.to_string()))?;
                    return Ok((endpoint, events));
                }
            }
            Err(broke("no endpoint event".to_string()))
        };
        let (endpoint, mut events) = tokio::time::timeout(ENDPOINT_WAIT, opening)
            .await
            .map_err(|_| broke(format!("no endpoint within {ENDPOINT_WAIT:?}")))??;
        let replies = Arc::new(Replies::default());
        let reader = replies.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = reader.closed.cancelled() => return,
                    event = events.next() => event,
                };
                match event {
                    Some(Ok(event)) if event.event == "message" || event.event.is_empty() => {
                        reader.deliver(Bytes::from(event.data), None)
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return reader.close("the child's event stream ended"),
                }
            }
        });
        let (work, mut queue) = mpsc::unbounded_channel::<(Value, Sink)>();
        let poster = replies.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = poster.closed.cancelled() => return,
                    next = queue.recv() => next,
                };
                let Some((message, _)) = next else { return };
                let sent = client
                    .post(endpoint.clone())
                    .header("content-type", "application/json")
                    .body(message.to_string())
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => {}
                    Ok(response) => {
                        return poster.close(&format!("the child refused a message: HTTP {}", response.status()))
                    }
                    Err(e) => return poster.close(&format!("the child broke off: {e}")),
                }
            }
        });
        Ok(SseChild { relay: Relay { replies, work, run_ended } })
    }
}
