//! Prometheus metrics, all prefixed `mcpvisor_` (docs/reference.md §6 `/metrics`).
//!
//! Counters and histograms are updated where things happen (actors, the
//! manager, the proxy). The gauges that describe the current state (status,
//! health, breaker, subscribers, resources) and the event counters are not
//! stored at all: a [`Collector`] reads them from the latest snapshots at
//! each scrape, so they never drift from what the API shows, and two
//! concurrent scrapes never see each other's half-filled families.
//!
//! This module reads `state/` only.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::state::{EventBus, ResourceView, Status};

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

/// Where the state gauges are read at scrape time.
#[derive(Clone)]
pub struct StateSources {
    /// Workspace records (status, health, breaker) and the event counters.
    pub bus: Arc<EventBus>,
    pub resources: Arc<ResourceView>,
    /// The followed workspace of each open SSE stream (`*` for all).
    pub subscribers: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
}

impl fmt::Debug for StateSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateSources").finish_non_exhaustive()
    }
}

fn seconds_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric mcpvisor exports.
pub struct Metrics {
    registry: Registry,
    pub transitions: Family<TransitionLabel, Counter>,
    pub restarts: Family<ReasonLabel, Counter>,
    pub failures: Family<ReasonLabel, Counter>,
    pub spawn_ready_seconds: HistogramFamily<WorkspaceLabel>,
    pub probe_seconds: HistogramFamily<WorkspaceLabel>,
    pub reconciles: Counter,
    pub reconcile_seconds: Histogram,
    pub invalid_file_warnings: Counter,
    pub workspace_read_errors: Counter,
    pub proxy_requests: Family<CodeLabel, Counter>,
    pub proxy_seconds: HistogramFamily<WorkspaceLabel>,
}

impl Metrics {
    /// The metrics, with the state gauges read from `sources` at each scrape.
    pub fn new(sources: StateSources) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("mcpvisor");
        let histograms = || HistogramFamily::new_with_constructor(seconds_histogram as fn() -> Histogram);
        let metrics = Metrics {
            transitions: Family::default(),
            restarts: Family::default(),
            failures: Family::default(),
            spawn_ready_seconds: histograms(),
            probe_seconds: histograms(),
            reconciles: Counter::default(),
            reconcile_seconds: seconds_histogram(),
            invalid_file_warnings: Counter::default(),
            workspace_read_errors: Counter::default(),
            proxy_requests: Family::default(),
            proxy_seconds: histograms(),
            registry: Registry::default(),
        };
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
        registry.register("proxy_requests", "Proxied MCP requests by HTTP status", metrics.proxy_requests.clone());
        registry.register(
            "proxy_request_duration_seconds",
            "Duration of proxied MCP requests",
            metrics.proxy_seconds.clone(),
        );
        registry.register_collector(Box::new(StateCollector { sources }));
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

    pub fn proxy_request(&self, workspace: &str, code: u16, took: std::time::Duration) {
        self.proxy_requests.get_or_create(&CodeLabel { workspace: workspace.into(), code: code.to_string() }).inc();
        self.proxy_seconds.get_or_create(&WorkspaceLabel { workspace: workspace.into() }).observe(took.as_secs_f64());
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Reads the state gauges and event counters from the snapshots at scrape time.
#[derive(Debug)]
struct StateCollector {
    sources: StateSources,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let bus = &self.sources.bus;
        let snapshot = bus.view().load();
        let states = |pick: fn(&crate::state::WorkspaceStatus) -> String| {
            snapshot
                .workspaces
                .values()
                .map(move |r| (StateLabel { workspace: r.status.workspace.clone(), state: pick(&r.status) }, 1i64))
        };
        let help = "1 for the workspace's current status";
        gauge_family(&mut encoder, "workspace_status", help, states(|s| s.status.as_str().into()))?;
        let help = "1 for the workspace's current health";
        gauge_family(&mut encoder, "workspace_health", help, states(|s| json_name(&s.health)))?;
        let help = "1 for the circuit breaker's current state";
        gauge_family(&mut encoder, "breaker_state", help, states(|s| json_name(&s.breaker.state)))?;

        let mut followed = std::collections::BTreeMap::<String, i64>::new();
        for workspace in (self.sources.subscribers)() {
            *followed.entry(workspace).or_default() += 1;
        }
        let help = "Open SSE status streams by followed workspace (`*` for all)";
        let rows = followed.into_iter().map(|(workspace, n)| (WorkspaceLabel { workspace }, n));
        gauge_family(&mut encoder, "sse_subscribers", help, rows)?;

        let published = ConstCounter::new(bus.last_seq());
        let help = "workspace/statusChanged notifications published";
        published.encode(encoder.encode_descriptor("events_published", help, None, published.metric_type())?)?;
        let resynced = ConstCounter::new(bus.resync_count());
        let help = "Times a subscriber fell behind and was resynced";
        resynced.encode(encoder.encode_descriptor("events_resynced", help, None, resynced.metric_type())?)?;

        let sample = self.sources.resources.load();
        let label = |workspace: &String| WorkspaceLabel { workspace: workspace.clone() };
        let help = "Resident memory of the workspace's process tree";
        let rows = sample.children.iter().map(|(w, usage)| (label(w), usage.rss_bytes as i64));
        gauge_family(&mut encoder, "child_rss_bytes", help, rows)?;
        let help = "CPU use of the workspace's process tree, percent of one core";
        let rows = sample.children.iter().map(|(w, usage)| (label(w), usage.cpu_percent as f64));
        gauge_family(&mut encoder, "child_cpu_percent", help, rows)
    }
}

/// Encodes one gauge family from its rows.
fn gauge_family<L: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, V)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        metric.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

fn json_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}
