//! A Kubernetes answer on its way back to the client: streamed frame by frame
//! (a watch or a long list is never held whole), counted, ended at once when the
//! caller's access is taken away, and audited exactly once when it ends, however
//! it ends (done, cut, the client gone, the gateway gone).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde_json::json;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::live::OwnedRegistration;
use super::proxy::Authorized;
use crate::agents::BoxError;
use crate::state::Shared;

/// The audit entry of one request, written when it ends.
pub struct Finish {
    shared: Arc<Shared>,
    auth: Option<Authorized>,
    status: StatusCode,
    agent_error: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Finish {
    pub(super) fn new(
        shared: Arc<Shared>,
        auth: Authorized,
        status: StatusCode,
        agent_error: bool,
    ) -> Finish {
        Finish {
            shared,
            auth: Some(auth),
            status,
            agent_error,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Records the entry (once); `end` says how the answer ended.
    pub fn done(&mut self, end: &'static str) {
        let Some(auth) = self.auth.take() else {
            return;
        };
        let code = self.status.as_u16();
        let outcome = match code {
            401 | 403 => "denied",
            _ if self.agent_error || code >= 500 => "error",
            _ if code >= 400 => "failed",
            _ => "ok",
        };
        let ev = auth.event(
            "kube.request",
            outcome,
            json!({
                "status": code,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "duration_ms": u64::try_from(auth.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "end": end,
                "from_gateway": !self.agent_error,
            }),
        );
        let shared = self.shared.clone();
        self.shared
            .tasks
            .spawn(async move { shared.audit(ev).await });
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // The client went away before the end (or the connection broke).
        self.done("client_gone");
    }
}

/// The gateway's answer body, relayed.
pub struct Counted {
    inner: Incoming,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    finish: Finish,
    _registration: OwnedRegistration,
    ended: bool,
}

impl Counted {
    pub(super) fn new(
        inner: Incoming,
        cancel: CancellationToken,
        finish: Finish,
        registration: OwnedRegistration,
    ) -> Counted {
        Counted {
            inner,
            cut: Box::pin(cancel.cancelled_owned()),
            finish,
            _registration: registration,
            ended: false,
        }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this.cut.as_mut().poll(cx).is_ready() {
            this.ended = true;
            this.finish.done("access_revoked");
            return Poll::Ready(Some(Err(
                "access to this cluster was taken away (user, token or role removed)".into(),
            )));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.finish.bytes_out += d.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.ended = true;
                this.finish.done("gateway_error");
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.ended = true;
                this.finish.done("complete");
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
