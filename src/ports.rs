//! Stable port allocation, persisted in `state/ports.json` (docs/reference.md §4).
//!
//! A workspace keeps its port across child and daemon restarts. A port that
//! another process holds is skipped when allocating and re-allocated when
//! the owner's child is about to start on it. Writes are atomic; a write
//! that fails (a full disk) does not fail the allocation and is retried.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::Notify;

use crate::fsutil::StateFile;

/// A port allocation failure.
#[derive(Debug, Error)]
pub enum PortError {
    #[error("no free port left in {lo}-{hi}")]
    Exhausted { lo: u16, hi: u16 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PortsFile {
    version: u32,
    range: [u16; 2],
    allocations: BTreeMap<String, u16>,
}

/// Hands out ports from a range, one per workspace, and remembers them.
#[derive(Debug)]
pub struct PortAllocator {
    file: StateFile,
    range: RangeInclusive<u16>,
    allocations: Mutex<BTreeMap<String, u16>>,
}

impl PortAllocator {
    /// Loads `ports.json` from `state_dir`, keeping allocations that fall in
    /// `range`. A missing or unreadable file starts empty. A failed write
    /// wakes `retry` (see [`PortAllocator::flush`]).
    pub fn load(state_dir: &Path, range: RangeInclusive<u16>, retry: Arc<Notify>) -> PortAllocator {
        let path = state_dir.join("ports.json");
        let allocations = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<PortsFile>(&bytes).ok())
            .map(|file| file.allocations)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, port)| range.contains(port))
            .collect();
        PortAllocator { file: StateFile::new(path, retry), range, allocations: Mutex::new(allocations) }
    }

    pub fn range(&self) -> (u16, u16) {
        (*self.range.start(), *self.range.end())
    }

    /// All allocations, by workspace name.
    pub fn allocations(&self) -> BTreeMap<String, u16> {
        self.allocations.lock().unwrap().clone()
    }

    /// Drops the allocations of workspaces not in `keep` (at daemon start).
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        let mut allocations = self.allocations.lock().unwrap();
        allocations.retain(|name, _| keep(name));
        self.persist(&allocations);
    }

    /// The workspace's port: its sticky one when free, else a new free one.
    ///
    /// Call it right before a child starts: a port that a foreign process now
    /// holds is replaced, so the child never fails on a taken port.
    ///
    /// # Errors
    /// Every port of the range is taken.
    pub fn acquire(&self, name: &str) -> Result<u16, PortError> {
        let mut allocations = self.allocations.lock().unwrap();
        if let Some(&port) = allocations.get(name) {
            if is_free(port) {
                return Ok(port);
            }
            let holder = holder(port).unwrap_or_else(|| "unknown".into());
            tracing::warn!(workspace = name, port, holder, "allocated port is held by another process; re-allocating");
        }
        let taken: Vec<u16> = allocations.iter().filter(|(n, _)| n.as_str() != name).map(|(_, &p)| p).collect();
        let port = self
            .range
            .clone()
            .find(|p| !taken.contains(p) && is_free(*p))
            .ok_or(PortError::Exhausted { lo: *self.range.start(), hi: *self.range.end() })?;
        allocations.insert(name.to_string(), port);
        self.persist(&allocations);
        Ok(port)
    }

    /// [`PortAllocator::acquire`], but a held sticky port gets up to `grace`
    /// to free first (checked every 50 ms) before the workspace moves.
    ///
    /// A stable port is worth a short wait: what holds it right after a
    /// crash is most often on its way out (a process of a tree still being
    /// swept, a leftover of an earlier run), and a moved workspace breaks
    /// every client that saved its address.
    ///
    /// # Errors
    /// Every port of the range is taken.
    pub async fn acquire_within(&self, name: &str, grace: Duration) -> Result<u16, PortError> {
        if let Some(port) = self.get(name) {
            let deadline = Instant::now() + grace;
            while !is_free(port) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.acquire(name)
    }

    /// The allocated port without checking it, if any.
    pub fn get(&self, name: &str) -> Option<u16> {
        self.allocations.lock().unwrap().get(name).copied()
    }

    /// Releases the workspace's port; call only once its process tree is gone.
    pub fn release(&self, name: &str) {
        let mut allocations = self.allocations.lock().unwrap();
        if allocations.remove(name).is_some() {
            self.persist(&allocations);
        }
    }

    /// Writes `ports.json` again when its last write failed; true when the
    /// file is current.
    pub fn flush(&self) -> bool {
        if !self.file.is_stale() {
            return true;
        }
        self.persist(&self.allocations.lock().unwrap())
    }

    fn persist(&self, allocations: &BTreeMap<String, u16>) -> bool {
        let file =
            PortsFile { version: 1, range: [*self.range.start(), *self.range.end()], allocations: allocations.clone() };
        self.file.write(&serde_json::to_vec_pretty(&file).expect("ports serialize"))
    }
}

/// Whether nothing listens on `port` on the loopback interface.
fn is_free(port: u16) -> bool {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok()
        && TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

/// Who holds `port` (for the log): `pid 4242 (python3)` for a process
/// listening on it, else the TCP state of whatever socket is bound to it.
/// None when `/proc` shows nothing.
fn holder(port: u16) -> Option<String> {
    use procfs::net::TcpState;
    use procfs::process::FDTarget;
    let sockets: Vec<_> = [procfs::net::tcp(), procfs::net::tcp6()]
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.local_address.port() == port)
        .collect();
    let listening: Vec<u64> =
        sockets.iter().filter(|entry| entry.state == TcpState::Listen).map(|entry| entry.inode).collect();
    for process in procfs::process::all_processes().ok()?.flatten() {
        let Ok(fds) = process.fd() else { continue };
        if fds.flatten().any(|fd| matches!(fd.target, FDTarget::Socket(inode) if listening.contains(&inode))) {
            let comm = process.stat().map(|stat| stat.comm).unwrap_or_default();
            return Some(format!("pid {} ({comm})", process.pid));
        }
    }
    sockets.first().map(|entry| format!("a socket in state {:?}", entry.state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_across_reload_and_skips_held_ports() {
        let dir = tempfile::tempdir().unwrap();
        let lo = portpicker::pick_unused_port().unwrap().max(20000);
        let range = lo..=lo + 50;
        let held = TcpListener::bind(("127.0.0.1", lo)).unwrap();
        let ports = PortAllocator::load(dir.path(), range.clone(), Default::default());
        let a = ports.acquire("a").unwrap();
        let b = ports.acquire("b").unwrap();
        assert_ne!(a, lo, "a held port is skipped");
        assert_ne!(a, b);
        drop(held);
        let again = PortAllocator::load(dir.path(), range, Default::default());
        assert_eq!(again.acquire("a").unwrap(), a);
        assert_eq!(again.acquire("b").unwrap(), b);
        again.retain(&|n| n == "a");
        assert_eq!(again.allocations().len(), 1);
    }

    #[test]
    fn the_holder_of_a_port_is_named() {
        let held = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let holder = holder(port).expect("a holder");
        assert!(holder.starts_with(&format!("pid {} (", std::process::id())), "{holder}");
    }

    #[tokio::test]
    async fn a_sticky_port_freed_within_the_grace_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        // An ephemeral port, so that no range of another test overlaps.
        let lo = TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port().min(65000);
        let ports = PortAllocator::load(dir.path(), lo..=lo + 20, Default::default());
        let port = ports.acquire("a").unwrap();
        let held = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        assert_eq!(ports.acquire_within("a", Duration::from_secs(2)).await.unwrap(), port);
        release.join().unwrap();
        let _held = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let moved = ports.acquire_within("a", Duration::from_millis(100)).await.unwrap();
        assert_ne!(moved, port, "past the grace the workspace moves");
    }
}
