//! The channels that carry a client session's messages from an upstream
//! (a hub, an HTTP child) to the client's streams, with one byte budget
//! per session: the producer never waits, and a session past
//! [`SESSION_BUFFER`] is closed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Bytes queued for one client session before it is closed (8 MiB).
pub const SESSION_BUFFER: usize = 8 << 20;

/// Bytes queued for one session, across all its channels.
#[derive(Debug, Default)]
pub struct Budget {
    queued: AtomicUsize,
}

/// A channel end the hub delivers a session's messages to (JSON, one
/// message per item).
#[derive(Debug, Clone)]
pub struct Sink {
    pub(super) tx: mpsc::UnboundedSender<Bytes>,
    pub(super) budget: Arc<Budget>,
}

/// The receiving end of a [`Sink`].
#[derive(Debug)]
pub struct Outbox {
    rx: mpsc::UnboundedReceiver<Bytes>,
    budget: Arc<Budget>,
}

impl Outbox {
    /// The next message; `None` once every sink is gone.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let bytes = self.rx.recv().await?;
        self.budget.release(bytes.len());
        Some(bytes)
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        let bytes = self.rx.try_recv().ok()?;
        self.budget.release(bytes.len());
        Some(bytes)
    }
}

impl Budget {
    /// Counts `n` more queued bytes; true when past [`SESSION_BUFFER`].
    pub fn add(&self, n: usize) -> bool {
        self.queued.fetch_add(n, Ordering::Relaxed) + n > SESSION_BUFFER
    }

    pub fn release(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Sink {
    /// Queues `bytes`; true when the session's budget is exceeded.
    pub fn send(&self, bytes: Bytes) -> bool {
        deliver(&self.tx, &self.budget, bytes)
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A new channel counted against `budget`.
pub fn pair(budget: &Arc<Budget>) -> (Sink, Outbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Sink { tx, budget: budget.clone() }, Outbox { rx, budget: budget.clone() })
}

/// Queues `bytes` on `tx`; true when the session's budget is exceeded.
pub(super) fn deliver(tx: &mpsc::UnboundedSender<Bytes>, budget: &Budget, bytes: Bytes) -> bool {
    let len = bytes.len();
    if tx.send(bytes).is_err() {
        return false;
    }
    budget.add(len)
}
