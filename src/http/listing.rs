//! `GET /api/workspaces` and `GET /api/workspaces/{name}` as shared bytes
//! (docs/reference.md §6).
//!
//! Each workspace's status is serialized once per record the actor
//! publishes (and per resource sample), and kept as [`Bytes`]. A list is
//! the concatenation of those pieces, built once per snapshot and shared by
//! every request until the next one: a read costs a pointer comparison and
//! a reference count, never a serialization. Filters pick pieces, they do
//! not re-render them.
//!
//! `uptimeMs` is as of the render: a running workspace's piece is rendered
//! again once it is [`UPTIME_FRESH`] old, so the figure is never staler
//! than that.
//!
//! Every answer carries a strong `ETag` derived from the bytes; a request
//! whose `If-None-Match` names it gets 304 with no body. The tag of a
//! compressed answer gets the coding as a suffix (`"…-gzip"`, as Apache
//! does), and `If-None-Match` accepts either form.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::proxy::Connections;
use crate::bridge::Hubs;
use crate::state::{CarriedSession, ResourceSample, Resources, Snapshot, Status, StdioSessions, WorkspaceRecord};

/// How old a running workspace's `uptimeMs` may get before it is rendered again.
pub const UPTIME_FRESH: Duration = Duration::from_secs(1);

/// One workspace's status, serialized.
#[derive(Debug)]
pub struct Piece {
    /// The record it was rendered from: a new record is a new `Arc`.
    record: Arc<WorkspaceRecord>,
    live: Live,
    pub status: Status,
    /// The status JSON, compact, as `GET /api/workspaces/{name}` answers it.
    pub json: Bytes,
    /// A hash of `json`, the strong `ETag`.
    pub hash: u64,
    /// Until when `uptimeMs` counts as fresh; `None` when it is not shown.
    fresh_until: Option<Instant>,
}

/// What a status shows besides its record: measured and proxy state.
#[derive(Debug, Clone, PartialEq)]
struct Live {
    resources: Option<Resources>,
    stdio: Option<StdioSessions>,
    client_sessions: Vec<CarriedSession>,
}

impl Piece {
    fn render(record: &Arc<WorkspaceRecord>, live: Live, now: Instant, wall: SystemTime) -> Piece {
        let mut status = record.render(wall);
        status.resources = live.resources;
        status.stdio = live.stdio.clone();
        status.client_sessions = live.client_sessions.clone();
        let json = Bytes::from(serde_json::to_vec(&status).expect("a status serializes"));
        Piece {
            record: record.clone(),
            live,
            status: status.status,
            hash: hash_bytes(&json),
            fresh_until: status.uptime_ms.map(|_| now + UPTIME_FRESH),
            json,
        }
    }

    fn still_good(&self, record: &Arc<WorkspaceRecord>, live: &Live, now: Instant) -> bool {
        Arc::ptr_eq(&self.record, record) && &self.live == live && self.fresh_until.is_none_or(|until| now < until)
    }

    /// The `ETag` of this piece alone.
    pub fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }
}

/// Every workspace's piece for one snapshot, resource sample and state of
/// the client sessions (the stdio bridge's, those carried over), sorted by
/// name.
#[derive(Debug)]
pub struct Generation {
    snapshot: Arc<Snapshot>,
    sample: Arc<ResourceSample>,
    /// [`crate::bridge::sessions_version`] when it was built.
    sessions: u64,
    /// When the first piece's `uptimeMs` turns stale.
    fresh_until: Option<Instant>,
    pub pieces: BTreeMap<String, Arc<Piece>>,
    /// The unfiltered list, built on first use.
    full: std::sync::OnceLock<Rendered>,
}

/// A body and its strong `ETag`.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub body: Bytes,
    pub etag: String,
}

impl Generation {
    fn current_for(&self, snapshot: &Arc<Snapshot>, sample: &Arc<ResourceSample>, sessions: u64, now: Instant) -> bool {
        Arc::ptr_eq(&self.snapshot, snapshot)
            && Arc::ptr_eq(&self.sample, sample)
            && self.sessions == sessions
            && self.fresh_until.is_none_or(|until| now < until)
    }

    /// The whole list, `{"workspaces":[...]}`, built once.
    pub fn full(&self) -> Rendered {
        self.full.get_or_init(|| list(self.pieces.values().map(|p| &**p))).clone()
    }
}

/// `{"workspaces":[...]}` of `pieces`, in order, with an `ETag` over their hashes.
pub fn list<'a>(pieces: impl Iterator<Item = &'a Piece> + Clone) -> Rendered {
    let size: usize = pieces.clone().map(|p| p.json.len() + 1).sum();
    let mut body = BytesMut::with_capacity(size + 16);
    let mut hasher = DefaultHasher::new();
    body.extend_from_slice(b"{\"workspaces\":[");
    for (i, piece) in pieces.enumerate() {
        if i > 0 {
            body.extend_from_slice(b",");
        }
        body.extend_from_slice(&piece.json);
        piece.hash.hash(&mut hasher);
    }
    body.extend_from_slice(b"]}");
    Rendered { body: body.freeze(), etag: format!("\"l{:016x}\"", hasher.finish()) }
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// The rendered statuses, shared by every reader.
#[derive(Debug, Default)]
pub struct Listing {
    current: ArcSwapOption<Generation>,
    /// Held while a generation is built, so concurrent readers build it once.
    building: Mutex<()>,
}

impl Listing {
    /// The generation for `snapshot`, `sample` and the client sessions of
    /// `hubs` and `connections`: the shared one when it is current, else a
    /// new one that reuses every piece still good.
    pub fn get(
        &self,
        snapshot: &Arc<Snapshot>,
        sample: &Arc<ResourceSample>,
        hubs: &Hubs,
        connections: &Connections,
    ) -> Arc<Generation> {
        let now = Instant::now();
        let sessions = crate::bridge::sessions_version();
        if let Some(generation) = self.current.load_full().filter(|g| g.current_for(snapshot, sample, sessions, now)) {
            return generation;
        }
        let _building = self.building.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        if let Some(generation) = old.as_ref().filter(|g| g.current_for(snapshot, sample, sessions, now)) {
            return generation.clone();
        }
        let wall = SystemTime::now();
        let mut fresh_until: Option<Instant> = None;
        let pieces: BTreeMap<String, Arc<Piece>> = snapshot
            .workspaces
            .iter()
            .map(|(name, record)| {
                let live = Live {
                    resources: sample.children.get(name).copied(),
                    stdio: (record.status.transport == "stdio").then(|| hubs.sessions(name)).flatten(),
                    client_sessions: connections.carried_sessions(name),
                };
                let kept = old.as_ref().and_then(|g| g.pieces.get(name)).filter(|p| p.still_good(record, &live, now));
                let piece = match kept {
                    Some(piece) => piece.clone(),
                    None => Arc::new(Piece::render(record, live, now, wall)),
                };
                fresh_until = [fresh_until, piece.fresh_until].into_iter().flatten().min();
                (name.clone(), piece)
            })
            .collect();
        let generation = Arc::new(Generation {
            snapshot: snapshot.clone(),
            sample: sample.clone(),
            sessions,
            fresh_until,
            pieces,
            full: std::sync::OnceLock::new(),
        });
        self.current.store(Some(generation.clone()));
        generation
    }
}

/// Which workspaces a list shows: `?status=error,starting&name=dev*`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filter {
    /// Any of these statuses; empty: any.
    statuses: Vec<Status>,
    /// Any of these names; a trailing `*` makes a prefix. Empty: any.
    names: Vec<String>,
}

impl Filter {
    /// Reads the `status` and `name` query values (comma lists).
    ///
    /// # Errors
    /// A status that is not one of docs/reference.md §5's, as a message.
    pub fn parse(status: Option<&str>, name: Option<&str>) -> Result<Filter, String> {
        let items = |text: Option<&str>| -> Vec<String> {
            text.into_iter()
                .flat_map(|t| t.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        let statuses = items(status)
            .iter()
            .map(|s| {
                serde_json::from_value::<Status>(serde_json::Value::String(s.clone())).map_err(|_| {
                    format!("unknown status {s:?}; use stopped, starting, running, stopping, error or unknown")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter { statuses, names: items(name) })
    }

    pub fn is_empty(&self) -> bool {
        self.statuses.is_empty() && self.names.is_empty()
    }

    pub fn matches(&self, name: &str, status: Status) -> bool {
        let name_ok = self.names.is_empty()
            || self.names.iter().any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern,
            });
        name_ok && (self.statuses.is_empty() || self.statuses.contains(&status))
    }
}

/// Content codings whose tag suffix `If-None-Match` ignores.
const CODINGS: [&str; 3] = ["gzip", "deflate", "br"];

/// Whether `If-None-Match` in `headers` names `etag` (weak comparison, as
/// RFC 9110 §13.1.2 asks, and ignoring a content-coding suffix).
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    let bare = etag.trim_matches('"');
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |tag| {
            let tag = tag.trim();
            if tag == "*" {
                return true;
            }
            let tag = tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"');
            tag == bare || CODINGS.iter().any(|c| tag.strip_suffix(c).and_then(|t| t.strip_suffix('-')) == Some(bare))
        },
    )
}

/// A 200 with `body`, or a 304 when the client has it already.
pub fn respond(headers: &HeaderMap, rendered: Rendered) -> Response {
    let etag = HeaderValue::from_str(&rendered.etag).expect("an etag is ascii");
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if not_modified(headers, &rendered.etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag), cache]).into_response();
    }
    let json = (header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    ([json, (header::ETAG, etag), cache], rendered.body).into_response()
}

/// Appends the content coding to the `ETag` of a compressed answer, since
/// its bytes differ from the plain one's (RFC 9110 §8.8.3).
pub async fn tag_coding(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let coding = response.headers().get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(String::from);
    let etag = response.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).map(String::from);
    if let (Some(coding), Some(etag)) = (coding, etag) {
        let tagged = format!("\"{}-{coding}\"", etag.trim_matches('"'));
        if let Ok(value) = HeaderValue::from_str(&tagged) {
            response.headers_mut().insert(header::ETAG, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_pick_by_status_and_name_prefix() {
        let filter = Filter::parse(Some("error,starting"), Some("dev*,ops")).unwrap();
        assert!(filter.matches("dev-a", Status::Error));
        assert!(filter.matches("ops", Status::Starting));
        assert!(!filter.matches("ops2", Status::Starting));
        assert!(!filter.matches("dev-a", Status::Running));
        assert!(Filter::parse(None, None).unwrap().is_empty());
        assert!(Filter::parse(Some("sleeping"), None).unwrap_err().contains("unknown status \"sleeping\""));
    }

    #[test]
    fn if_none_match_accepts_weak_coded_and_listed_tags() {
        let headers = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
            h
        };
        assert!(not_modified(&headers("\"abc\""), "\"abc\""));
        assert!(not_modified(&headers("W/\"abc\""), "\"abc\""));
        assert!(not_modified(&headers("\"x\", \"abc-gzip\""), "\"abc\""));
        assert!(not_modified(&headers("*"), "\"abc\""));
        assert!(!not_modified(&headers("\"abcd\""), "\"abc\""));
        assert!(!not_modified(&HeaderMap::new(), "\"abc\""));
    }
}
