//! Sampled resource use of every child's process tree (DESIGN §6 `resources`).
//!
//! A task samples `/proc` through sysinfo every few seconds, off the request
//! path, and publishes an immutable sample; requests only read the last one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio_util::sync::CancellationToken;

use crate::process::runtime::ProcessId;
use crate::process::tree::ProcTable;
use crate::state::{ResourceHistory, Resources, Timestamp};
use crate::supervisor::actor::Command;
use crate::supervisor::{Registry, SupervisorContext};

/// Totals over every child tree.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub processes: usize,
    pub rss_bytes: u64,
    pub cpu_percent: f32,
}

/// One sample of every workspace's tree.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub children: BTreeMap<String, Resources>,
    pub totals: Totals,
    pub sampled_at: Option<Timestamp>,
}

/// The latest [`Sample`].
#[derive(Debug, Default)]
pub struct ResourceView {
    current: ArcSwap<Sample>,
    /// The last minutes of samples per workspace, for the dashboard.
    pub history: ResourceHistory,
}

impl ResourceView {
    pub fn load(&self) -> Arc<Sample> {
        self.current.load_full()
    }

    pub fn get(&self, workspace: &str) -> Option<Resources> {
        self.current.load().children.get(workspace).copied()
    }
}

/// Samples every `every` until `cancel` fires. Each sample also records
/// the trees in `state/runtime.json` and tells an actor whose tree passed
/// `limits.memoryMb`.
pub async fn run_sampler(
    ctx: Arc<SupervisorContext>,
    registry: Arc<Registry>,
    view: Arc<ResourceView>,
    every: Duration,
    cancel: CancellationToken,
) {
    let bus = ctx.bus.clone();
    let mut system = System::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let roots: Vec<Root> = bus
            .view()
            .load()
            .workspaces
            .values()
            .filter_map(|r| {
                Some(Root { workspace: r.status.workspace.clone(), pgid: r.pgid?, memory_mb: r.limits.memory_mb })
            })
            .collect();
        // sysinfo and /proc are read synchronously; keep that off the async workers.
        let (returned, sample, trees) = tokio::task::spawn_blocking(move || {
            system.refresh_processes_specifics(
                ProcessesToUpdate::All,
                true,
                ProcessRefreshKind::nothing().with_memory().with_cpu(),
            );
            let table = ProcTable::scan();
            let trees: Vec<(Root, Vec<i32>)> = roots
                .into_iter()
                .map(|root| {
                    let tree = table.tree(root.pgid, &root.workspace);
                    (root, tree)
                })
                .collect();
            let sample = sample(&system, &trees);
            (system, sample, trees)
        })
        .await
        .expect("sampler does not panic");
        system = returned;
        for (root, tree) in &trees {
            let members = tree.iter().filter(|pid| **pid != root.pgid).filter_map(|pid| ProcessId::of(*pid)).collect();
            ctx.runtime.set_tree(&root.workspace, members);
            let rss = sample.children.get(&root.workspace).map_or(0, |r| r.rss_bytes);
            if root.memory_mb.is_some_and(|mb| rss > mb << 20) {
                if let Some(entry) = registry.get(&root.workspace) {
                    let _ = entry.handle.send(Command::OverMemory { rss_bytes: rss });
                }
            }
        }
        view.history.record(sample.sampled_at.unwrap_or_else(Timestamp::now), &sample.children);
        view.current.store(Arc::new(sample));
    }
}

/// A workspace whose tree is sampled.
struct Root {
    workspace: String,
    pgid: i32,
    memory_mb: Option<u64>,
}

fn sample(system: &System, trees: &[(Root, Vec<i32>)]) -> Sample {
    let mut out = Sample { sampled_at: Some(Timestamp::now()), ..Sample::default() };
    for (root, tree) in trees {
        let name = &root.workspace;
        let mut usage = Resources { rss_bytes: 0, cpu_percent: 0.0 };
        for pid in tree {
            if let Some(process) = system.process(Pid::from_u32(*pid as u32)) {
                usage.rss_bytes += process.memory();
                usage.cpu_percent += process.cpu_usage();
                out.totals.processes += 1;
            }
        }
        out.totals.rss_bytes += usage.rss_bytes;
        out.totals.cpu_percent += usage.cpu_percent;
        out.children.insert(name.clone(), usage);
    }
    out
}
