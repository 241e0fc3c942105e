//! Prometheus metrics, all prefixed `mcpvisor_` (issue: observability).
//!
//! Counters and histograms are updated where things happen (actors, the
//! manager, the proxy). Gauges that describe the current state (status,
//! health, breaker, subscribers, resources) are filled from the snapshots at
//! scrape time, so they can never drift from what the API shows.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::state::{Snapshot, Status};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkspaceLabel {
    pub workspace: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub workspace: String,
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabel {
    pub workspace: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub workspace: String,
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub workspace: String,
    pub code: String,
}

fn seconds_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric mcpvisor exports.
pub struct Metrics {
    registry: Registry,
    pub status: Family<StateLabel, Gauge>,
    pub health: Family<StateLabel, Gauge>,
    pub breaker: Family<StateLabel, Gauge>,
    pub transitions: Family<TransitionLabel, Counter>,
    pub restarts: Family<ReasonLabel, Counter>,
    pub failures: Family<ReasonLabel, Counter>,
    pub spawn_ready_seconds: HistogramFamily<WorkspaceLabel>,
    pub probe_seconds: HistogramFamily<WorkspaceLabel>,
    pub reconciles: Counter,
    pub reconcile_seconds: Histogram,
    pub invalid_file_warnings: Counter,
    pub workspace_read_errors: Counter,
    pub subscribers: Family<WorkspaceLabel, Gauge>,
    pub events_published: Counter,
    pub events_resynced: Counter,
    pub rss_bytes: Family<WorkspaceLabel, Gauge>,
    pub cpu_percent: Family<WorkspaceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub proxy_requests: Family<CodeLabel, Counter>,
    pub proxy_seconds: HistogramFamily<WorkspaceLabel>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("mcpvisor");
        let histograms = || HistogramFamily::new_with_constructor(seconds_histogram as fn() -> Histogram);
        let metrics = Metrics {
            status: Family::default(),
            health: Family::default(),
            breaker: Family::default(),
            transitions: Family::default(),
            restarts: Family::default(),
            failures: Family::default(),
            spawn_ready_seconds: histograms(),
            probe_seconds: histograms(),
            reconciles: Counter::default(),
            reconcile_seconds: seconds_histogram(),
            invalid_file_warnings: Counter::default(),
            workspace_read_errors: Counter::default(),
            subscribers: Family::default(),
            events_published: Counter::default(),
            events_resynced: Counter::default(),
            rss_bytes: Family::default(),
            cpu_percent: Family::default(),
            proxy_requests: Family::default(),
            proxy_seconds: histograms(),
            registry: Registry::default(),
        };
        registry.register("workspace_status", "1 for the workspace's current status", metrics.status.clone());
        registry.register("workspace_health", "1 for the workspace's current health", metrics.health.clone());
        registry.register("breaker_state", "1 for the circuit breaker's current state", metrics.breaker.clone());
        registry.register("state_transitions", "Status transitions", metrics.transitions.clone());
        registry.register("restarts", "Child starts after the first, by reason", metrics.restarts.clone());
        registry.register(
            "failures",
            "Child failures (exit, failed start, unhealthy, memory limit), by reason",
            metrics.failures.clone(),
        );
        registry.register(
            "spawn_to_ready_seconds",
            "Time from spawn to the first answered MCP initialize",
            metrics.spawn_ready_seconds.clone(),
        );
        registry.register("probe_duration_seconds", "Duration of liveness probes", metrics.probe_seconds.clone());
        registry.register("reconciles", "Reconciles of the workspaces folder", metrics.reconciles.clone());
        registry.register("reconcile_duration_seconds", "Duration of a reconcile", metrics.reconcile_seconds.clone());
        registry.register(
            "invalid_file_warnings",
            "Warnings about .json files whose name is not a workspace name, one per change of such a file",
            metrics.invalid_file_warnings.clone(),
        );
        registry.register(
            "workspace_read_errors",
            "Failed reads of the workspaces folder or a workspace file, each retried on the next scan",
            metrics.workspace_read_errors.clone(),
        );
        registry.register(
            "sse_subscribers",
            "Open SSE status streams by followed workspace (`*` for all)",
            metrics.subscribers.clone(),
        );
        registry.register(
            "events_published",
            "workspace/statusChanged notifications published",
            metrics.events_published.clone(),
        );
        registry.register(
            "events_resynced",
            "Times a subscriber fell behind and was resynced",
            metrics.events_resynced.clone(),
        );
        registry.register(
            "child_rss_bytes",
            "Resident memory of the workspace's process tree",
            metrics.rss_bytes.clone(),
        );
        registry.register(
            "child_cpu_percent",
            "CPU use of the workspace's process tree, percent of one core",
            metrics.cpu_percent.clone(),
        );
        registry.register("proxy_requests", "Proxied MCP requests by HTTP status", metrics.proxy_requests.clone());
        registry.register(
            "proxy_request_duration_seconds",
            "Duration of proxied MCP requests",
            metrics.proxy_seconds.clone(),
        );
        Arc::new(Metrics { registry, ..metrics })
    }

    pub fn transition(&self, workspace: &str, from: Status, to: Status) {
        if from != to {
            let label =
                TransitionLabel { workspace: workspace.into(), from: from.as_str().into(), to: to.as_str().into() };
            self.transitions.get_or_create(&label).inc();
        }
    }

    pub fn restart(&self, workspace: &str, reason: &str) {
        self.restarts.get_or_create(&ReasonLabel { workspace: workspace.into(), reason: reason.into() }).inc();
    }

    pub fn failure(&self, workspace: &str, reason: &str) {
        self.failures.get_or_create(&ReasonLabel { workspace: workspace.into(), reason: reason.into() }).inc();
    }

    /// Fills the state gauges from snapshots and renders the text format.
    pub fn proxy_request(&self, workspace: &str, code: u16, took: std::time::Duration) {
        self.proxy_requests.get_or_create(&CodeLabel { workspace: workspace.into(), code: code.to_string() }).inc();
        self.proxy_seconds.get_or_create(&WorkspaceLabel { workspace: workspace.into() }).observe(took.as_secs_f64());
    }

    /// `subscribers` are the followed workspaces of each open stream.
    pub fn render(
        &self,
        snapshot: &Snapshot,
        resources: &crate::resources::Sample,
        subscribers: &[String],
        published: u64,
        resynced: u64,
    ) -> String {
        for family in [&self.status, &self.health, &self.breaker] {
            family.clear();
        }
        self.rss_bytes.clear();
        self.cpu_percent.clear();
        for record in snapshot.workspaces.values() {
            let s = &record.status;
            let label = |state: &str| StateLabel { workspace: s.workspace.clone(), state: state.into() };
            self.status.get_or_create(&label(s.status.as_str())).set(1);
            self.health.get_or_create(&label(&json_name(&s.health))).set(1);
            self.breaker.get_or_create(&label(&json_name(&s.breaker.state))).set(1);
        }
        for (workspace, usage) in &resources.children {
            let label = WorkspaceLabel { workspace: workspace.clone() };
            self.rss_bytes.get_or_create(&label).set(usage.rss_bytes as i64);
            self.cpu_percent.get_or_create(&label).set(usage.cpu_percent as f64);
        }
        self.subscribers.clear();
        for followed in subscribers {
            self.subscribers.get_or_create(&WorkspaceLabel { workspace: followed.clone() }).inc();
        }
        // Counters owned elsewhere are mirrored: they only grow.
        let mirror = |counter: &Counter, value: u64| {
            let current = counter.get();
            if value > current {
                counter.inc_by(value - current);
            }
        };
        mirror(&self.events_published, published);
        mirror(&self.events_resynced, resynced);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

fn json_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}
