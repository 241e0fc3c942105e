//! What the proxy sees of one workspace's clients: when a proxied request
//! last came or went, and how many requests and client streams are open
//! (docs/reference.md §11).
//!
//! The proxy writes it for every request it relays; the workspace's actor
//! reads it only when its idle deadline comes. Two atomics: no lock, and
//! neither side ever waits on the other.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// The client activity of one workspace.
#[derive(Debug)]
pub struct Activity {
    /// The instant `last_ms` counts from.
    epoch: Instant,
    /// Milliseconds after `epoch`, plus one, of the last request that began
    /// or ended; 0 before the first.
    last_ms: AtomicU64,
    /// Requests in flight and client streams open, each until its response
    /// body is dropped.
    open: AtomicU32,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity { epoch: Instant::now(), last_ms: AtomicU64::new(0), open: AtomicU32::new(0) }
    }
}

impl Activity {
    /// Counts a request as open until the returned guard is dropped (hold it
    /// in the response body, so a stream counts until it closes).
    pub fn begin(self: &Arc<Self>) -> Active {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Active(self.clone())
    }

    /// When the last request began or ended; `None` before the first.
    pub fn last(&self) -> Option<Instant> {
        match self.last_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.epoch + Duration::from_millis(ms - 1)),
        }
    }

    /// How many requests and client streams are open now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        let ms = Instant::now().saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

/// One open request or stream; dropping it closes it.
#[derive(Debug)]
pub struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_counts_while_open_and_marks_when_it_ends() {
        let activity = Arc::new(Activity::default());
        assert_eq!((activity.last(), activity.open()), (None, 0));
        let began = Instant::now();
        let active = activity.begin();
        assert_eq!(activity.open(), 1);
        assert_eq!(activity.last(), Some(began));
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(active);
        assert_eq!(activity.open(), 0);
        assert_eq!(activity.last(), Some(began + Duration::from_secs(3)), "the end of a stream is activity too");
    }
}
