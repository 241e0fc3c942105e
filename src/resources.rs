//! Sampled resource use of every child's process tree (DESIGN §6 `resources`).
//!
//! A task samples `/proc` through sysinfo every few seconds, off the request
//! path, and publishes an immutable sample; requests only read the last one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio_util::sync::CancellationToken;

use crate::state::{EventBus, Resources, Timestamp};

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
}

impl ResourceView {
    pub fn load(&self) -> Arc<Sample> {
        self.current.load_full()
    }

    pub fn get(&self, workspace: &str) -> Option<Resources> {
        self.current.load().children.get(workspace).copied()
    }
}

/// Samples every `every` until `cancel` fires.
pub async fn run_sampler(bus: Arc<EventBus>, view: Arc<ResourceView>, every: Duration, cancel: CancellationToken) {
    let mut system = System::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let roots: Vec<(String, u32)> = bus
            .view()
            .load()
            .workspaces
            .values()
            .filter_map(|r| Some((r.status.workspace.clone(), r.status.pid?)))
            .collect();
        // sysinfo reads /proc synchronously; keep it off the async workers.
        let (returned, sample) = tokio::task::spawn_blocking(move || {
            system.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::nothing().with_memory().with_cpu());
            let sample = sample(&system, &roots);
            (system, sample)
        })
        .await
        .expect("sampler does not panic");
        system = returned;
        view.current.store(Arc::new(sample));
    }
}

fn sample(system: &System, roots: &[(String, u32)]) -> Sample {
    let mut children_of: HashMap<Pid, Vec<Pid>> = HashMap::new();
    for (pid, process) in system.processes() {
        if let Some(parent) = process.parent() {
            children_of.entry(parent).or_default().push(*pid);
        }
    }
    let mut out = Sample {
        sampled_at: Some(Timestamp::now()),
        ..Sample::default()
    };
    for (name, root) in roots {
        let mut stack = vec![Pid::from_u32(*root)];
        let mut usage = Resources { rss_bytes: 0, cpu_percent: 0.0 };
        while let Some(pid) = stack.pop() {
            if let Some(process) = system.process(pid) {
                usage.rss_bytes += process.memory();
                usage.cpu_percent += process.cpu_usage();
                out.totals.processes += 1;
            }
            stack.extend(children_of.get(&pid).into_iter().flatten());
        }
        out.totals.rss_bytes += usage.rss_bytes;
        out.totals.cpu_percent += usage.cpu_percent;
        out.children.insert(name.clone(), usage);
    }
    out
}
