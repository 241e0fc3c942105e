//! A response body that holds something until it is done: a listing in the
//! debug view, a request counted as in flight.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};

/// `body`, passed through frame by frame, holding `held` until the body is
/// dropped (once sent, or abandoned by the client).
pub struct Holding<B, H> {
    body: B,
    _held: H,
}

impl<B, H> Holding<B, H> {
    pub fn new(body: B, held: H) -> Holding<B, H> {
        Holding { body, _held: held }
    }
}

impl<B: HttpBody + Unpin, H: Unpin> HttpBody for Holding<B, H> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
