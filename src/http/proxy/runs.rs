//! The runs of children the proxy relays to: one per workspace while it is
//! `running`, with the child's address parsed once and a token that fires
//! as soon as the event bus shows the run ended.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, Weak};

use axum::http::uri::{Authority, InvalidUri, PathAndQuery, Scheme};
use axum::http::{HeaderValue, Uri};
use tokio_util::sync::CancellationToken;

use super::Proxy;
use crate::state::{EventBus, Status, WorkspaceRecord};

/// Where a child listens: its address and its endpoint's path.
#[derive(Debug, Clone)]
pub struct Upstream {
    authority: Authority,
    path: PathAndQuery,
    /// `Host` for requests to the child.
    pub host: HeaderValue,
}

impl Upstream {
    /// The child's address from its status: the `upstream` URL, else
    /// 127.0.0.1 and its port with `default_path`.
    fn of(record: &WorkspaceRecord, default_path: &'static str) -> Option<Upstream> {
        let parsed = record.status.upstream.as_deref().and_then(|u| u.parse::<Uri>().ok());
        let authority = match parsed.as_ref().and_then(Uri::authority) {
            Some(authority) => authority.clone(),
            None => Authority::try_from(format!("127.0.0.1:{}", record.status.port?)).ok()?,
        };
        let path = parsed
            .as_ref()
            .and_then(|u| PathAndQuery::try_from(u.path()).ok())
            .unwrap_or(PathAndQuery::from_static(default_path));
        let host = HeaderValue::from_str(authority.as_str()).ok()?;
        Some(Upstream { authority, path, host })
    }

    /// The child's endpoint with the client's `query`.
    ///
    /// # Errors
    /// `query` does not fit in a URI.
    pub fn endpoint(&self, query: Option<&str>) -> Result<Uri, InvalidUri> {
        let path_and_query = match query {
            Some(query) => PathAndQuery::try_from(format!("{}?{query}", self.path.path()))?,
            None => self.path.clone(),
        };
        Ok(self.at(path_and_query))
    }

    /// `path_and_query` on the child.
    pub fn at(&self, path_and_query: PathAndQuery) -> Uri {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .expect("a scheme, an authority and a path make a URI")
    }
}

/// One run of a child: it ends when the workspace leaves `running` or its
/// pid changes.
#[derive(Debug)]
pub struct Run {
    pid: u32,
    /// A pidfd of the child, to ask the kernel whether it exited before the
    /// actor has said so; `None` when it could not be opened.
    pidfd: Option<OwnedFd>,
    pub ended: CancellationToken,
    pub upstream: Upstream,
}

impl Run {
    fn new(pid: u32, upstream: Upstream) -> Run {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid as nix::libc::pid_t, 0) };
        // SAFETY: a non-negative result is a new fd that nothing else owns.
        let pidfd = (pid > 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        Run { pid, pidfd, ended: CancellationToken::new(), upstream }
    }

    /// The child's pid: a new pid is a new run.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the kernel says the child has exited (its pidfd is readable).
    /// The actor learns it a moment later; a request that finds it so was
    /// never the child's to read. False when unknown.
    pub fn exited(&self) -> bool {
        let Some(pidfd) = &self.pidfd else { return false };
        let mut poll = nix::libc::pollfd { fd: pidfd.as_raw_fd(), events: nix::libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        unsafe { nix::libc::poll(&mut poll, 1, 0) == 1 }
    }
}

/// The current run of each workspace the proxy has relayed to.
#[derive(Debug, Default)]
pub struct Runs {
    table: Mutex<HashMap<String, Arc<Run>>>,
}

impl Runs {
    /// The run that `bus` shows for `name`, if it is running.
    ///
    /// Checked against the view under the table's lock, which [`Runs::check`]
    /// also takes, so a run that ends after this returns always fires its
    /// token.
    pub fn current(&self, bus: &EventBus, name: &str, default_path: &'static str) -> Option<Arc<Run>> {
        let mut table = self.table.lock().unwrap();
        let record = bus.view().get(name)?;
        if record.status.status != Status::Running {
            return None;
        }
        let pid = record.status.pid.unwrap_or(0);
        if let Some(run) = table.get(name) {
            if run.pid == pid {
                return Some(run.clone());
            }
            run.ended.cancel();
        }
        let run = Arc::new(Run::new(pid, Upstream::of(&record, default_path)?));
        table.insert(name.to_string(), run.clone());
        Some(run)
    }

    /// Ends the run of `name` unless `bus` still shows it running; returns
    /// whether it ended.
    fn check(&self, bus: &EventBus, name: &str) -> bool {
        let mut table = self.table.lock().unwrap();
        let Some(run) = table.get(name) else { return false };
        let alive = bus
            .view()
            .get(name)
            .is_some_and(|r| r.status.status == Status::Running && r.status.pid.unwrap_or(0) == run.pid);
        if alive {
            return false;
        }
        if let Some(run) = table.remove(name) {
            run.ended.cancel();
        }
        true
    }

    fn end_all(&self) {
        for (_, run) in self.table.lock().unwrap().drain() {
            run.ended.cancel();
        }
    }
}

/// Fires the token of each run that the bus shows ended, and forgets that
/// run's sessions (all of the workspace's once it is removed); ends every
/// run at `shutdown`.
pub async fn watch(proxy: Weak<Proxy>, bus: Arc<EventBus>, shutdown: CancellationToken) {
    let mut subscription = bus.subscribe(None, Some(bus.last_seq()));
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => None,
            event = subscription.next() => event,
        };
        let Some(proxy) = proxy.upgrade() else { return };
        match event {
            Some(event) => {
                if bus.view().get(&event.workspace).is_none() {
                    proxy.connections.end_workspace(&event.workspace);
                } else if proxy.runs.check(&bus, &event.workspace) {
                    proxy.connections.end_run(&event.workspace);
                }
            }
            None => {
                proxy.runs.end_all();
                return;
            }
        }
    }
}
