//! One shape for every upstream a client session can have: a session on a
//! stdio child's hub, or a session on an HTTP child of the other transport
//! (`http_child`). Each client transport is written once against it, and
//! each child transport once behind it: N + M pieces, not N x M.

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::Value;

use super::channel::{Outbox, Sink};
use super::hub::{BridgeError, HubSession};

/// A client session's way to its child.
pub trait Upstream: Send + Sync + std::fmt::Debug {
    /// A channel for this session's messages, counted against its budget.
    fn channel(&self) -> (Sink, Outbox);
    /// Sends one client message; a request's answer and the messages about
    /// it go to `reply`.
    ///
    /// # Errors
    /// The child or the session is gone.
    fn send(&self, message: Value, reply: &Sink) -> Result<(), BridgeError>;
    /// Makes `sink` the stream for messages not tied to a request.
    fn standby(&self, sink: &Sink);
    /// Passes a message a channel cannot carry on to the session's stream.
    fn redeliver(&self, bytes: Bytes);
    /// Resolves once the session is closed (or its child is gone).
    fn closed(&self) -> BoxFuture<'_, ()>;
    fn is_closed(&self) -> bool;
    /// Whether the child itself is gone (not only this session).
    fn child_gone(&self) -> bool;
    /// Why the session closed, once it did.
    fn close_reason(&self) -> Option<String>;
}

impl Upstream for HubSession {
    fn channel(&self) -> (Sink, Outbox) {
        HubSession::channel(self)
    }

    fn send(&self, message: Value, reply: &Sink) -> Result<(), BridgeError> {
        HubSession::send(self, message, reply)
    }

    fn standby(&self, sink: &Sink) {
        HubSession::standby(self, sink)
    }

    fn redeliver(&self, bytes: Bytes) {
        HubSession::redeliver(self, bytes)
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(HubSession::closed(self))
    }

    fn is_closed(&self) -> bool {
        HubSession::is_closed(self)
    }

    fn child_gone(&self) -> bool {
        self.hub().is_closed()
    }

    fn close_reason(&self) -> Option<String> {
        HubSession::close_reason(self)
    }
}
