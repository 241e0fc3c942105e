//! Stable port allocation, persisted in `state/ports.json` (docs/reference.md §4).
//!
//! A workspace keeps its port across child and daemon restarts. A port that
//! another process holds is skipped when allocating and re-allocated when
//! the owner's child is about to start on it. Writes are atomic.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fsutil::write_atomic;

/// A port allocation failure.
#[derive(Debug, Error)]
pub enum PortError {
    #[error("no free port left in {lo}-{hi}")]
    Exhausted { lo: u16, hi: u16 },
    #[error("writing {path}: {source}")]
    Persist { path: PathBuf, source: std::io::Error },
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
    path: PathBuf,
    range: RangeInclusive<u16>,
    allocations: Mutex<BTreeMap<String, u16>>,
}

impl PortAllocator {
    /// Loads `ports.json` from `state_dir`, keeping allocations that fall in
    /// `range`. A missing or unreadable file starts empty.
    pub fn load(state_dir: &Path, range: RangeInclusive<u16>) -> PortAllocator {
        let path = state_dir.join("ports.json");
        let allocations = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<PortsFile>(&bytes).ok())
            .map(|file| file.allocations)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, port)| range.contains(port))
            .collect();
        PortAllocator { path, range, allocations: Mutex::new(allocations) }
    }

    pub fn range(&self) -> (u16, u16) {
        (*self.range.start(), *self.range.end())
    }

    /// All allocations, by workspace name.
    pub fn allocations(&self) -> BTreeMap<String, u16> {
        self.allocations.lock().unwrap().clone()
    }

    /// Drops the allocations of workspaces not in `keep` (at daemon start).
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) -> Result<(), PortError> {
        let mut allocations = self.allocations.lock().unwrap();
        allocations.retain(|name, _| keep(name));
        self.persist(&allocations)
    }

    /// The workspace's port: its sticky one when free, else a new free one.
    ///
    /// Call it right before a child starts: a port that a foreign process now
    /// holds is replaced, so the child never fails on a taken port.
    ///
    /// # Errors
    /// Every port of the range is taken, or `ports.json` cannot be written.
    pub fn acquire(&self, name: &str) -> Result<u16, PortError> {
        let mut allocations = self.allocations.lock().unwrap();
        if let Some(&port) = allocations.get(name) {
            if is_free(port) {
                return Ok(port);
            }
            tracing::warn!(workspace = name, port, "allocated port is held by another process; re-allocating");
        }
        let taken: Vec<u16> = allocations.iter().filter(|(n, _)| n.as_str() != name).map(|(_, &p)| p).collect();
        let port = self
            .range
            .clone()
            .find(|p| !taken.contains(p) && is_free(*p))
            .ok_or(PortError::Exhausted { lo: *self.range.start(), hi: *self.range.end() })?;
        allocations.insert(name.to_string(), port);
        self.persist(&allocations)?;
        Ok(port)
    }

    /// The allocated port without checking it, if any.
    pub fn get(&self, name: &str) -> Option<u16> {
        self.allocations.lock().unwrap().get(name).copied()
    }

    /// Releases the workspace's port; call only once its process tree is gone.
    pub fn release(&self, name: &str) -> Result<(), PortError> {
        let mut allocations = self.allocations.lock().unwrap();
        if allocations.remove(name).is_some() {
            self.persist(&allocations)?;
        }
        Ok(())
    }

    fn persist(&self, allocations: &BTreeMap<String, u16>) -> Result<(), PortError> {
        let file =
            PortsFile { version: 1, range: [*self.range.start(), *self.range.end()], allocations: allocations.clone() };
        let bytes = serde_json::to_vec_pretty(&file).expect("ports serialize");
        write_atomic(&self.path, &bytes).map_err(|source| PortError::Persist { path: self.path.clone(), source })
    }
}

/// Whether nothing listens on `port` on the loopback interface.
fn is_free(port: u16) -> bool {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok()
        && TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).is_ok()
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
        let ports = PortAllocator::load(dir.path(), range.clone());
        let a = ports.acquire("a").unwrap();
        let b = ports.acquire("b").unwrap();
        assert_ne!(a, lo, "a held port is skipped");
        assert_ne!(a, b);
        drop(held);
        let again = PortAllocator::load(dir.path(), range);
        assert_eq!(again.acquire("a").unwrap(), a);
        assert_eq!(again.acquire("b").unwrap(), b);
        again.retain(&|n| n == "a").unwrap();
        assert_eq!(again.allocations().len(), 1);
    }
}
