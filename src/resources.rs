//! The resource sampler: measures every live child's tree every few
//! seconds, off the request path, publishes a [`ResourceSample`] into
//! `state/` and records the trees in `state/runtime.json` for the sweep
//! after a crash (docs/reference.md §4, §6 `resources`).
//!
//! It reads each tree's own processes only (see [`crate::process::tree`]),
//! never the whole host. It tells no one about limits: an actor that must
//! enforce `limits.memoryMb` itself asks its child.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::process::census::Census;
use crate::process::runtime::{ProcessId, RuntimeFile};
use crate::process::tree::{ticks_per_second, ProcInfo};
use crate::state::{Isolation, ResourceSample, ResourceTotals, ResourceView, Resources, Timestamp};

/// How often trees held by process group are recorded in `runtime.json`
/// while no one reads resources (for the sweep after a crash).
pub const SAFETY_SAMPLE_EVERY: Duration = Duration::from_secs(30);

/// Samples every `every` while someone reads resources
/// ([`ResourceView::wanted`]), until `cancel` fires.
///
/// With no reader it only records, every [`SAFETY_SAMPLE_EVERY`], the trees
/// held by process group into `runtime.json` (a cgroup holds its tree by
/// itself), and publishes nothing; the first read wakes it at once.
pub async fn run_sampler(
    census: Arc<Census>,
    runtime: RuntimeFile,
    view: Arc<ResourceView>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut cpu = CpuMeter::default();
    let mut first = true;
    loop {
        let wanted = view.wanted();
        let wait = if first {
            Duration::ZERO
        } else if wanted {
            every
        } else {
            SAFETY_SAMPLE_EVERY.max(every)
        };
        first = false;
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = view.demand_returns(), if !wanted => {}
        }
        let wanted = view.wanted();
        let mut trees = census.trees();
        if !wanted {
            trees.retain(|t| t.isolation() == Isolation::ProcessGroup);
            if trees.is_empty() {
                continue;
            }
        }
        // /proc is read synchronously; keep that off the async workers.
        let (returned, sample, members) = tokio::task::spawn_blocking(move || {
            let measured: Vec<Tree> = trees
                .iter()
                .map(|t| Tree {
                    workspace: t.workspace().to_string(),
                    leader: t.leader(),
                    isolation: t.isolation(),
                    members: t.members(),
                })
                .collect();
            let sample = cpu.sample(&measured, std::time::Instant::now());
            (cpu, sample, measured)
        })
        .await
        .expect("the sampler does not panic");
        cpu = returned;
        for tree in &members {
            let others = tree
                .members
                .iter()
                .filter(|p| p.pid != tree.leader)
                .map(|p| ProcessId { pid: p.pid, start_time: p.start_time })
                .collect();
            runtime.set_tree(&tree.workspace, others);
        }
        if wanted {
            view.publish(sample);
        }
    }
}

/// One tree as measured.
struct Tree {
    workspace: String,
    leader: i32,
    isolation: Isolation,
    members: Vec<ProcInfo>,
}

/// CPU use as the change of each process's CPU time between two samples.
#[derive(Debug, Default)]
struct CpuMeter {
    /// CPU ticks per process (pid, start time) at the last sample.
    last: HashMap<(i32, u64), u64>,
    last_at: Option<std::time::Instant>,
}

impl CpuMeter {
    /// Turns measured trees into a sample. A process seen for the first
    /// time counts from the next sample on.
    fn sample(&mut self, trees: &[Tree], now: std::time::Instant) -> ResourceSample {
        let elapsed = self.last_at.map_or(0.0, |at| now.duration_since(at).as_secs_f64());
        let tick_share = if elapsed > 0.0 { 100.0 / (elapsed * ticks_per_second() as f64) } else { 0.0 };
        let mut next = HashMap::new();
        let mut children = BTreeMap::new();
        let mut totals = ResourceTotals::default();
        for tree in trees {
            let mut usage = Resources { rss_bytes: 0, cpu_percent: 0.0, isolation: tree.isolation };
            for process in &tree.members {
                let key = (process.pid, process.start_time);
                let before = self.last.get(&key).copied().unwrap_or(process.cpu_ticks);
                usage.rss_bytes += process.rss_bytes();
                usage.cpu_percent += (process.cpu_ticks.saturating_sub(before) as f64 * tick_share) as f32;
                next.insert(key, process.cpu_ticks);
            }
            totals.processes += tree.members.len();
            totals.rss_bytes += usage.rss_bytes;
            totals.cpu_percent += usage.cpu_percent;
            children.insert(tree.workspace.clone(), usage);
        }
        self.last = next;
        self.last_at = Some(now);
        ResourceSample { children, totals, sampled_at: Some(Timestamp::now()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resources_are_sampled_only_while_someone_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let view = Arc::new(ResourceView::default());
        let cancel = CancellationToken::new();
        let every = Duration::from_millis(10);
        let runtime = RuntimeFile::new(dir.path(), vec![], Default::default());
        let sampler = tokio::spawn(run_sampler(Arc::default(), runtime, view.clone(), every, cancel.clone()));
        // Twenty sampling periods with no reader publish nothing.
        tokio::time::sleep(every * 20).await;
        assert_eq!(view.peek().sampled_at, None, "sampled with no reader");
        view.want();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while view.peek().sampled_at.is_none() {
            assert!(tokio::time::Instant::now() < deadline, "no sample after a read");
            tokio::time::sleep(every).await;
        }
        cancel.cancel();
        sampler.await.unwrap();
    }

    fn process(pid: i32, cpu_ticks: u64, rss_pages: u64) -> ProcInfo {
        ProcInfo { pid, ppid: 1, pgrp: pid, session: pid, start_time: 7, zombie: false, cpu_ticks, rss_pages }
    }

    #[test]
    fn cpu_counts_the_change_since_the_last_sample() {
        let mut meter = CpuMeter::default();
        let at = std::time::Instant::now();
        let tree = |members| Tree { workspace: "w".into(), leader: 1, isolation: Isolation::Cgroup, members };
        let first = meter.sample(&[tree(vec![process(1, 100, 10)])], at);
        assert_eq!(first.children["w"].cpu_percent, 0.0);
        assert_eq!(first.children["w"].rss_bytes, 10 * crate::process::tree::page_size());
        let ticks = ticks_per_second();
        // One second later the leader used half a second; a new member counts later.
        let second = meter
            .sample(&[tree(vec![process(1, 100 + ticks / 2, 10), process(2, 50, 1)])], at + Duration::from_secs(1));
        assert!((second.children["w"].cpu_percent - 50.0).abs() < 1.0, "{second:?}");
        assert_eq!(second.totals.processes, 2);
    }
}
