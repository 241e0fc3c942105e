//! Requests that start their workspace, and the activity that keeps it
//! running (docs/reference.md §11).
//!
//! A workspace that starts `on-demand`, or has an `idleStop`, holds a request
//! that finds it not running: the request asks its actor to start the child
//! ([`crate::supervisor::actor::Command::Demand`]) and waits on the event bus
//! until the child is `running`, then goes on as usual. It never awaits the
//! child: the actor answers at once whether the child is coming, and the
//! wait ends at the first of `running`, a failed start (the usual -32000
//! answer, with the status and last error) and the workspace's
//! `startupTimeout`. Concurrent first requests each ask; the actor starts one
//! child and tells the others it is coming.
//!
//! Every proxied request, and every client stream until it closes, is
//! counted in the workspace's [`Activity`], which the actor reads for its
//! idle clock.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use tokio::time::Instant;

use super::error::ProxyError;
use super::runs::Run;
use crate::http::holding::Holding;
use crate::http::AppState;
use crate::state::{Active, Status, WorkspaceRecord};

/// The workspace `name` and its current run, as [`super::Proxy::route`]
/// gives them; a workspace that starts on demand is started first and the
/// request held until it runs.
///
/// # Errors
/// As `Proxy::route`; for a held request, the status the start failed in, or
/// that it did not finish within `startupTimeout`.
pub async fn route(
    state: &AppState,
    name: &str,
    transport: &'static str,
) -> Result<(Arc<WorkspaceRecord>, Arc<Run>), ProxyError> {
    let proxy = &state.proxy;
    let routed = proxy.route(name, transport);
    let bus = &proxy.bus;
    let record = match (&routed, bus.view().get(name)) {
        (Err(_), Some(record)) if holds(&record, transport) => record,
        _ => return routed,
    };
    let (Some(hold_for), Some(entry)) = (record.hold_for, state.registry.get(name)) else { return routed };
    let deadline = Instant::now() + hold_for;
    // Subscribed before asking, so no transition of the start is missed.
    let mut events = bus.subscribe(Some(BTreeSet::from([name.to_string()])), Some(bus.last_seq()));
    if !matches!(tokio::time::timeout_at(deadline, entry.handle.demand()).await, Ok(true)) {
        return proxy.route(name, transport);
    }
    let mut moved = false;
    loop {
        let routed = proxy.route(name, transport);
        let Err(error) = routed else { return routed };
        let Some(record) = bus.view().get(name) else { return Err(error) };
        // Until the start's first transition, the view may still show the
        // workspace as it was before the demand.
        if moved && failed(&record) {
            return Err(error);
        }
        tokio::select! {
            event = events.next() => match event {
                Some(_) => moved = true,
                None => return Err(error),
            },
            () = tokio::time::sleep_until(deadline) => return Err(not_started(name, &record, hold_for)),
        }
    }
}

/// Whether a request that finds the workspace of `record` not running waits
/// for a start: it starts on demand, speaks `transport`, and is not running.
fn holds(record: &WorkspaceRecord, transport: &str) -> bool {
    record.hold_for.is_some() && record.status.transport == transport && record.status.status != Status::Running
}

/// Whether the start a request waits for is over without a running child.
fn failed(record: &WorkspaceRecord) -> bool {
    match record.status.status {
        Status::Error | Status::Unknown => true,
        Status::Stopped | Status::Stopping => record.desired == "stopped",
        Status::Starting | Status::Running => false,
    }
}

fn not_started(name: &str, record: &WorkspaceRecord, after: std::time::Duration) -> ProxyError {
    let mut error = ProxyError::unavailable(name, record);
    let after = humantime::format_duration(after);
    error.error.message =
        format!("workspace {name:?} did not start within {after}; it is {}", record.status.status).into();
    error
}

/// Counts a request to `name` as open in its activity until the returned
/// guard is dropped; `None` for a workspace without an actor.
pub fn begin(state: &AppState, name: &str) -> Option<Active> {
    state.registry.get(name).map(|entry| entry.handle.activity().begin())
}

/// `response`, holding `active` until its body is done: a stream counts as
/// activity while it is open.
pub fn hold(response: Response, active: Option<Active>) -> Response {
    match active {
        Some(active) => response.map(|body| Body::new(Holding::new(body, active))),
        None => response,
    }
}
