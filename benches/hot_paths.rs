//! Criterion micro-benchmarks of the hot paths: loading a snapshot,
//! rendering statuses (from scratch and shared), fanning one SSE frame out
//! to many subscribers, and peeking at a JSON-RPC request's id.
//!
//! Run: `cargo bench --bench hot_paths` (or `scripts/bench micro`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures::FutureExt;

use mcpvisor::http::listing::Listing;
use mcpvisor::state::{
    BreakerState, BreakerStatus, EventBus, Health, ProxyPaths, ResourceSample, StateView, Status, Timestamp,
    WorkspaceRecord, WorkspaceStatus,
};

fn record(name: &str, status: Status) -> WorkspaceRecord {
    WorkspaceRecord {
        status: WorkspaceStatus {
            workspace: name.into(),
            status,
            health: Health::Healthy,
            enabled: true,
            pid: Some(4242),
            port: Some(41000),
            transport: "streamable-http",
            isolation: None,
            upstream: Some("http://127.0.0.1:41000/mcp".into()),
            proxy: ProxyPaths { mcp: format!("/workspaces/{name}/mcp"), sse: format!("/workspaces/{name}/sse") },
            started_at: Some(Timestamp::now()),
            uptime_ms: None,
            last_health_check: Some(Timestamp::now()),
            restart_count: 3,
            breaker: BreakerStatus { state: BreakerState::Closed, failure_count: 0, next_retry_at: None },
            last_error: None,
            config_error: None,
            config_version: Some("sha256:0123456789abcdef0123456789abcdef".into()),
            resources: None,
            reason: None,
            applied_version: None,
            file_version: None,
            stdio: None,
            client_sessions: Vec::new(),
        },
        pgid: Some(4242),
        desired_config_version: None,
        desired: "running",
        pending: None,
        errors: vec![],
        limits: Default::default(),
        hold_for: None,
    }
}

/// A bus whose view holds `n` workspaces, every other one running.
fn bus_with(n: usize) -> Arc<EventBus> {
    let bus = EventBus::new(Arc::new(StateView::new()), 4096);
    for i in 0..n {
        let status = if i % 2 == 0 { Status::Running } else { Status::Starting };
        bus.update(record(&format!("w{i:04}"), status));
    }
    bus
}

fn snapshot(c: &mut Criterion) {
    let bus = bus_with(1000);
    c.bench_function("snapshot load (1,000 workspaces)", |b| b.iter(|| black_box(bus.view().load_full())));
    c.bench_function("snapshot get one (1,000 workspaces)", |b| b.iter(|| black_box(bus.view().get("w0500"))));
}

fn rendering(c: &mut Criterion) {
    let bus = bus_with(1000);
    let sample = Arc::new(ResourceSample::default());
    let hubs = mcpvisor::bridge::Hubs::default();
    let connections = mcpvisor::http::proxy::Connections::default();
    let snapshot = bus.view().load_full();
    c.bench_function("status list from scratch, serde (1,000 workspaces)", |b| {
        b.iter(|| {
            let now = SystemTime::now();
            let list: Vec<WorkspaceStatus> = snapshot.workspaces.values().map(|r| r.render(now)).collect();
            black_box(serde_json::to_vec(&list).unwrap())
        })
    });
    c.bench_function("status list, new listing (1,000 pieces rendered)", |b| {
        b.iter_batched(
            Listing::default,
            |listing| black_box(listing.get(&snapshot, &sample, &hubs, &connections).full()),
            BatchSize::SmallInput,
        )
    });
    let listing = Listing::default();
    listing.get(&snapshot, &sample, &hubs, &connections).full();
    c.bench_function("status list, shared (same snapshot)", |b| {
        b.iter(|| black_box(listing.get(&snapshot, &sample, &hubs, &connections).full().body.len()))
    });
    c.bench_function("status list after one change (999 pieces kept)", |b| {
        b.iter_batched(
            || {
                bus.update(record("w0001", Status::Error));
                bus.view().load_full()
            },
            |changed| black_box(listing.get(&changed, &sample, &hubs, &connections).full()),
            BatchSize::SmallInput,
        )
    });
}

fn fan_out(c: &mut Criterion) {
    let bus = bus_with(1);
    let mut subscriptions: Vec<_> = (0..1000).map(|_| bus.subscribe(None, Some(0))).collect();
    for s in &mut subscriptions {
        while s.next().now_or_never().flatten().is_some() {}
    }
    c.bench_function("SSE frame fan-out to 1,000 subscribers (publish + every receive)", |b| {
        b.iter(|| {
            bus.transition(record("w0000", Status::Running), Some(Status::Starting), "ready");
            for s in &mut subscriptions {
                black_box(s.next().now_or_never().flatten().map(|e| e.frame.clone()));
            }
        })
    });
}

fn peek(c: &mut Criterion) {
    let call = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello world, a few bytes of arguments"}}}"#;
    c.bench_function("JSON-RPC id peek (tools/call)", |b| {
        b.iter(|| black_box(mcpvisor::http::proxy::peek_jsonrpc(black_box(call)).is_ok()))
    });
}

criterion_group!(hot_paths, snapshot, rendering, fan_out, peek);
criterion_main!(hot_paths);
