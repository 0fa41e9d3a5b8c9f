//! A TCP stream that can be cut from outside. russh runs a session in its own task
//! and owns the socket; dropping our handle does not end it. Wrapping the socket
//! lets the auth deadline and shutdown close a connection whose peer stalls, so it
//! holds no memory or descriptor beyond the deadline.
//!
//! It also notes when the first line has arrived from the client (its SSH
//! identification), for the banner deadline.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub struct Killable {
    inner: TcpStream,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    line_heard: Arc<AtomicBool>,
}

impl Killable {
    pub fn new(inner: TcpStream, token: CancellationToken) -> Killable {
        Killable {
            inner,
            killed: Box::pin(token.cancelled_owned()),
            line_heard: Arc::default(),
        }
    }

    /// Set once a newline has been read from the client.
    pub fn line_heard(&self) -> Arc<AtomicBool> {
        self.line_heard.clone()
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed by the bastion",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for Killable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.line_heard.load(Ordering::Relaxed) && buf.filled()[before..].contains(&b'\n') {
            self.line_heard.store(true, Ordering::Relaxed);
        }
        res
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
