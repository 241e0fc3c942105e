//! Server-sent event streams of `workspace/statusChanged` (docs/reference.md §7).
//!
//! One event per notification: `id: <seq>` and `data: <JSON>`, no `event:`
//! line, so a browser `EventSource.onmessage` receives it. A keep-alive
//! comment goes out every 15 s.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::http::{header, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::error::Query;
use super::{ApiError, AppState};
use crate::state::{Subscription, Timestamp};

/// Idle streams get a comment line this often.
pub const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(15);

/// One open SSE stream, as `/api/debug/state/connections` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberInfo {
    pub id: u64,
    /// The followed workspaces, or `*`.
    pub workspace: String,
    pub peer: Option<String>,
    pub connected_at: Timestamp,
    /// Milliseconds since the Unix epoch of the last event sent.
    #[serde(serialize_with = "ser_ms")]
    pub last_activity: AtomicU64,
    #[serde(serialize_with = "ser_u64")]
    pub events_sent: AtomicU64,
}

fn ser_u64<S: serde::Serializer>(v: &AtomicU64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.load(Ordering::Relaxed))
}

fn ser_ms<S: serde::Serializer>(v: &AtomicU64, s: S) -> Result<S::Ok, S::Error> {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(v.load(Ordering::Relaxed));
    s.collect_str(&Timestamp(at))
}

/// The open SSE streams; entries leave when their stream is dropped.
#[derive(Debug, Default)]
pub struct Subscribers {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<SubscriberInfo>>>,
}

impl Subscribers {
    pub fn list(&self) -> Vec<Arc<SubscriberInfo>> {
        self.open.lock().unwrap().values().cloned().collect()
    }

    fn add(self: &Arc<Self>, workspace: String, peer: Option<String>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(SubscriberInfo {
            id,
            workspace,
            peer,
            connected_at: Timestamp::now(),
            last_activity: AtomicU64::new(now_ms()),
            events_sent: AtomicU64::new(0),
        });
        self.open.lock().unwrap().insert(id, info.clone());
        Registration { subscribers: self.clone(), info }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Removes its subscriber from the list when the stream is dropped.
struct Registration {
    subscribers: Arc<Subscribers>,
    info: Arc<SubscriberInfo>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.subscribers.open.lock().unwrap().remove(&self.info.id);
    }
}

fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers.get("last-event-id")?.to_str().ok()?.trim().parse().ok()
}

/// An SSE response over `subscription`: each event's shared frame as is.
fn stream(state: &AppState, subscription: Subscription, registration: Registration) -> Response {
    let events = futures::stream::unfold((subscription, registration), |(mut subscription, registration)| async move {
        let event = subscription.next().await?;
        registration.info.events_sent.fetch_add(1, Ordering::Relaxed);
        registration.info.last_activity.store(now_ms(), Ordering::Relaxed);
        Some((event.frame.clone(), (subscription, registration)))
    });
    response(events, state.shutdown.clone())
}

/// An SSE response of `frames` (each one or more encoded events), with a
/// comment line every [`KEEP_ALIVE_EVERY`], ended at `shutdown`. The
/// keep-alive is one fixed interval per stream, so an event costs no timer
/// work.
pub(crate) fn response(
    frames: impl Stream<Item = Bytes> + Send + 'static,
    shutdown: tokio_util::sync::CancellationToken,
) -> Response {
    let start = tokio::time::Instant::now() + KEEP_ALIVE_EVERY;
    let keep_alive = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval_at(start, KEEP_ALIVE_EVERY))
        .map(|_| crate::sse::KEEP_ALIVE);
    let frames =
        futures::stream::select(frames, keep_alive).take_until(shutdown.cancelled_owned()).map(Ok::<_, Infallible>);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

fn peer(connect: Option<Extension<ConnectInfo<SocketAddr>>>) -> Option<String> {
    connect.map(|Extension(ConnectInfo(addr))| addr.to_string())
}

/// `GET /api/workspaces/{name}/events`; 404 for a workspace that does not exist.
pub async fn workspace_events(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.ctx.bus.view().get(&name).is_none() {
        return Err(ApiError::unknown_workspace(&name));
    }
    let subscription = state.ctx.bus.subscribe(Some(BTreeSet::from([name.clone()])), last_event_id(&headers));
    let registration = state.subscribers.add(name, peer(connect));
    Ok(stream(&state, subscription, registration))
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    workspace: Option<String>,
}

/// `GET /api/events[?workspace=a,b]`: every workspace, or the listed ones,
/// including workspaces that appear later.
pub async fn all_events(
    State(state): State<Arc<AppState>>,
    Query(query): Query<EventsQuery>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let filter: Option<BTreeSet<String>> = query
        .workspace
        .filter(|w| !w.is_empty())
        .map(|w| w.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
    let label = filter.as_ref().map_or_else(|| "*".to_string(), |f| f.iter().cloned().collect::<Vec<_>>().join(","));
    let subscription = state.ctx.bus.subscribe(filter, last_event_id(&headers));
    let registration = state.subscribers.add(label, peer(connect));
    stream(&state, subscription, registration)
}
