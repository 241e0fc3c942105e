//! The event bus: `workspace/statusChanged` notifications with a daemon-wide
//! sequence number, a ring buffer for `Last-Event-ID` replay, and fan-out to
//! subscribers that never blocks the publisher (docs/reference.md §7).

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::broadcast;

use serde::{Deserialize, Serialize};

use super::status::{BreakerState, Health, Status, Timestamp, WorkspaceRecord};
use super::view::StateView;

/// How many past events are kept for replay.
pub const DEFAULT_RING_CAPACITY: usize = 4096;

/// How far one subscriber may fall behind before it is resynced.
const SUBSCRIBER_QUEUE: usize = 1024;

/// One notification, serialized once and shared by every subscriber.
#[derive(Debug)]
pub struct Event {
    /// Daemon-wide sequence number; the SSE `id:`.
    pub seq: u64,
    pub workspace: String,
    /// The whole JSON-RPC notification.
    pub json: String,
    /// The same as one SSE event (`id: <seq>`, `data: <json>`, blank line),
    /// encoded once and shared by every subscriber.
    pub frame: bytes::Bytes,
}

#[derive(Debug)]
struct Ring {
    /// The seq of the last event published; 0 before the first.
    last_seq: u64,
    events: VecDeque<Arc<Event>>,
    capacity: usize,
}

/// Publishes workspace records and their transitions.
///
/// A transition updates the [`StateView`] and appends its event under one
/// short lock (never held across an await), so a subscriber's snapshot and
/// the events after it meet without a gap or an overlap.
#[derive(Debug)]
pub struct EventBus {
    view: Arc<StateView>,
    ring: Mutex<Ring>,
    sender: broadcast::Sender<Arc<Event>>,
    resyncs: AtomicU64,
}

impl EventBus {
    pub fn new(view: Arc<StateView>, ring_capacity: usize) -> Arc<EventBus> {
        let (sender, _) = broadcast::channel(SUBSCRIBER_QUEUE);
        Arc::new(EventBus {
            view,
            ring: Mutex::new(Ring {
                last_seq: 0,
                events: VecDeque::with_capacity(ring_capacity.min(1024)),
                capacity: ring_capacity.max(1),
            }),
            sender,
            resyncs: AtomicU64::new(0),
        })
    }

    pub fn view(&self) -> &StateView {
        &self.view
    }

    /// The seq of the last event published.
    pub fn last_seq(&self) -> u64 {
        self.ring.lock().unwrap().last_seq
    }

    /// How many times a subscriber fell behind and was resynced.
    pub fn resync_count(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }

    /// Replaces a record without a notification (health check times, ...).
    pub fn update(&self, record: WorkspaceRecord) {
        self.view.put(Arc::new(record));
    }

    /// Replaces a record and emits one `workspace/statusChanged`.
    pub fn transition(&self, record: WorkspaceRecord, previous: Option<Status>, reason: &str) {
        let record = Arc::new(record);
        let mut ring = self.ring.lock().unwrap();
        ring.last_seq += 1;
        let event = Arc::new(notification(&record, previous, reason, ring.last_seq));
        self.view.put(record);
        if ring.events.len() == ring.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // No receivers is fine: nobody is listening yet.
        let _ = self.sender.send(event);
    }

    /// Emits a last notification for a workspace and drops it from the view.
    pub fn remove(&self, record: WorkspaceRecord, previous: Option<Status>, reason: &str) {
        let name = record.status.workspace.clone();
        self.transition(record, previous, reason);
        self.view.remove(&name);
    }

    /// Subscribes to the workspaces in `filter` (all when `None`).
    ///
    /// Without `last_event_id` the subscription opens with a `snapshot` event
    /// per workspace. With one, it replays the events after it from the ring,
    /// or opens with a `resync` snapshot when the ring no longer holds them.
    pub fn subscribe(self: &Arc<Self>, filter: Option<BTreeSet<String>>, last_event_id: Option<u64>) -> Subscription {
        let ring = self.ring.lock().unwrap();
        let receiver = self.sender.subscribe();
        let wanted = |e: &Event| filter.as_ref().is_none_or(|f| f.contains(&e.workspace));
        let initial = match last_event_id {
            Some(id) if id <= ring.last_seq && ring.events.front().map_or(id == ring.last_seq, |e| e.seq <= id + 1) => {
                ring.events.iter().filter(|e| e.seq > id && wanted(e)).cloned().collect()
            }
            Some(_) => self.snapshot_events(&filter, ring.last_seq, "resync"),
            None => self.snapshot_events(&filter, ring.last_seq, "snapshot"),
        };
        Subscription { bus: self.clone(), pending: initial.into(), receiver, filter, skip_through: ring.last_seq }
    }

    fn snapshot_events(&self, filter: &Option<BTreeSet<String>>, seq: u64, reason: &str) -> Vec<Arc<Event>> {
        self.view
            .load()
            .workspaces
            .values()
            .filter(|r| filter.as_ref().is_none_or(|f| f.contains(&r.status.workspace)))
            .map(|r| Arc::new(notification(r, None, reason, seq)))
            .collect()
    }
}

/// The params of a `workspace/statusChanged` notification
/// (docs/reference.md §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusChange {
    pub workspace: String,
    pub status: Status,
    pub previous: Option<Status>,
    pub health: Health,
    pub reason: String,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub restart_count: u32,
    pub breaker: BreakerState,
    pub timestamp: Timestamp,
    pub seq: u64,
}

/// The method of every status notification.
pub const STATUS_CHANGED: &str = "workspace/statusChanged";

fn notification(record: &WorkspaceRecord, previous: Option<Status>, reason: &str, seq: u64) -> Event {
    let s = &record.status;
    let change = StatusChange {
        workspace: s.workspace.clone(),
        status: s.status,
        previous,
        health: s.health,
        reason: reason.to_string(),
        pid: s.pid,
        port: s.port,
        restart_count: s.restart_count,
        breaker: s.breaker.state,
        timestamp: Timestamp::now(),
        seq,
    };
    let json = json!({"jsonrpc": "2.0", "method": STATUS_CHANGED, "params": change}).to_string();
    let frame = crate::sse::Frame::new(&json).id(&seq.to_string()).encode();
    Event { seq, workspace: s.workspace.clone(), json, frame }
}

/// One subscriber's stream of events: first its snapshot or replay, then
/// every later event in order.
///
/// Its queue is bounded; a subscriber that falls further behind is sent a
/// `resync` snapshot instead, so it never holds back the publisher or others.
#[derive(Debug)]
pub struct Subscription {
    bus: Arc<EventBus>,
    pending: VecDeque<Arc<Event>>,
    receiver: broadcast::Receiver<Arc<Event>>,
    filter: Option<BTreeSet<String>>,
    /// Events at or before this seq are already covered by a snapshot.
    skip_through: u64,
}

impl Subscription {
    /// The next event; `None` once the bus is gone.
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            match self.receiver.recv().await {
                Ok(event) => {
                    let wanted = self.filter.as_ref().is_none_or(|f| f.contains(&event.workspace));
                    if event.seq > self.skip_through && wanted {
                        return Some(event);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.bus.resyncs.fetch_add(1, Ordering::Relaxed);
                    // Start over at the tail: a fresh receiver taken under the
                    // same lock as the snapshot meets it without gap or overlap.
                    let ring = self.bus.ring.lock().unwrap();
                    self.receiver = self.bus.sender.subscribe();
                    self.skip_through = ring.last_seq;
                    self.pending = self.bus.snapshot_events(&self.filter, ring.last_seq, "resync").into();
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::status::*;

    fn record(name: &str, status: Status) -> WorkspaceRecord {
        WorkspaceRecord {
            status: WorkspaceStatus {
                workspace: name.into(),
                status,
                reason: None,
                health: Health::Unknown,
                enabled: true,
                pid: None,
                port: None,
                transport: "streamable-http",
                isolation: None,
                upstream: None,
                proxy: ProxyPaths { mcp: String::new(), sse: String::new() },
                started_at: None,
                uptime_ms: None,
                last_health_check: None,
                restart_count: 0,
                breaker: BreakerStatus { state: BreakerState::Closed, failure_count: 0, next_retry_at: None },
                last_error: None,
                config_error: None,
                config_version: None,
                resources: None,
                stdio: None,
                client_sessions: Vec::new(),
                applied_version: None,
                file_version: None,
            },
            pgid: None,
            desired_config_version: None,
            desired: "running",
            pending: None,
            errors: vec![],
            limits: Default::default(),
            hold_for: None,
        }
    }

    fn seq_and_reason(event: &Event) -> (u64, String) {
        let v: serde_json::Value = serde_json::from_str(&event.json).unwrap();
        (event.seq, v["params"]["reason"].as_str().unwrap().to_string())
    }

    #[tokio::test]
    async fn a_subscriber_that_stops_reading_is_resynced_and_never_slows_others() {
        let bus = EventBus::new(Arc::new(StateView::new()), 64);
        let mut reader = bus.subscribe(None, None);
        let mut stalled = bus.subscribe(None, None);
        let total = SUBSCRIBER_QUEUE as u64 * 3;
        let mut seen = Vec::new();
        for i in 0..total {
            // The publisher never waits: it is a plain function call.
            bus.transition(record("w", if i % 2 == 0 { Status::Starting } else { Status::Error }), None, "tick");
            seen.push(reader.next().await.unwrap().seq);
        }
        assert_eq!(seen, (1..=total).collect::<Vec<_>>(), "the reading subscriber got every event in order");
        let first = stalled.next().await.unwrap();
        assert_eq!(
            seq_and_reason(&first),
            (total, "resync".to_string()),
            "the stalled one is resynced to the newest state"
        );
        assert_eq!(bus.resync_count(), 1);
        bus.transition(record("w", Status::Running), None, "ready");
        assert_eq!(
            seq_and_reason(&stalled.next().await.unwrap()),
            (total + 1, "ready".to_string()),
            "and then follows live"
        );
    }

    #[tokio::test]
    async fn replay_serves_exactly_the_missed_events_or_a_resync_past_the_ring() {
        let bus = EventBus::new(Arc::new(StateView::new()), 8);
        for _ in 0..20 {
            bus.transition(record("w", Status::Starting), None, "tick");
        }
        let mut replay = bus.subscribe(None, Some(15));
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(replay.next().await.unwrap().seq);
        }
        assert_eq!(got, [16, 17, 18, 19, 20]);
        let mut behind = bus.subscribe(None, Some(3));
        assert_eq!(seq_and_reason(&behind.next().await.unwrap()), (20, "resync".to_string()));
    }
}
