//! The proxy's connections to children: hyper-util's `HttpConnector`, with
//! one question to the kernel before each write (docs/reference.md §11).
//!
//! A pooled keep-alive connection can outlive its child: the kernel closes
//! the dead child's end at once (a FIN), but the pool learns it only when
//! the connection's task next runs. A request written in between is lost
//! to a child that never read it, and its failure looks like that of a
//! request the child read and died on (an incomplete message), which may
//! have had effects. So before writing, the connection peeks at its socket
//! (`recv` with `MSG_PEEK | MSG_DONTWAIT`): when the child has closed its
//! end, the write fails with `ConnectionReset` and nothing is sent, which
//! the proxy knows to be safe to send to the next run.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use nix::sys::socket::{recv, MsgFlags};
use tokio::net::TcpStream;

/// Connects like [`HttpConnector`]; its connections check before each write.
#[derive(Debug, Clone)]
pub struct Connector(pub HttpConnector);

impl tower::Service<Uri> for Connector {
    type Response = Checked;
    type Error = <HttpConnector as tower::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Checked, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { connecting.await.map(Checked) })
    }
}

/// A connection to a child that refuses to write once the child has closed
/// its end.
#[derive(Debug)]
pub struct Checked(TokioIo<TcpStream>);

impl Checked {
    /// `ConnectionReset` when the peer has closed the connection: a peek
    /// sees its end of stream. Data waiting, or none, is fine.
    fn closed_by_peer(&self) -> io::Result<()> {
        let mut byte = [0u8; 1];
        match recv(self.0.inner().as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Ok(0) => Err(io::Error::new(io::ErrorKind::ConnectionReset, "the child closed the connection")),
            _ => Ok(()),
        }
    }
}

impl hyper::rt::Read for Checked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Checked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.closed_by_peer()?;
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.closed_by_peer()?;
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for Checked {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}
