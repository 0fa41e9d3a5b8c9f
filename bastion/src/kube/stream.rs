//! A Kubernetes answer on its way back to the client: streamed frame by frame
//! (a watch or a long list is never held whole), counted, ended at once when the
//! caller's access is taken away, their token expires or the serving node loses
//! its gateway role, and audited exactly once when it ends, however it ends
//! (done, cut, the client gone, the gateway gone).

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::KubeBody;
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
        self.shared.audit_batch.record_soon(ev, &self.shared.tasks);
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // The client went away before the end (or the connection broke).
        self.done("client_gone");
    }
}

/// Frames of an answer in flight to a client at most: a client that stops
/// reading holds this much here, and its upstream stream stops beside it.
const RELAY_FRAMES: usize = 8;
/// A client that takes no frame for this long loses its stream.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(15);

/// How a relayed answer may be ended before it is done.
pub struct Ends {
    /// The caller's access was taken away.
    pub cut: CancellationToken,
    /// The node serving it lost its Kubernetes gateway role.
    pub gateway_cut: CancellationToken,
    /// When the caller's API token expires.
    pub expires: Option<tokio::time::Instant>,
    pub shutdown: CancellationToken,
}

impl Ends {
    pub async fn reached(&self) -> &'static str {
        let expiry = async {
            match self.expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.cut.cancelled() => "access_revoked",
            _ = self.gateway_cut.cancelled() => "gateway_revoked",
            _ = expiry => "token_expired",
            _ = self.shutdown.cancelled() => "bastion_stopping",
        }
    }
}

/// Relays the gateway's answer to the client through a bounded queue, from a
/// task of its own: an access change, the token's expiry or the bastion's stop
/// ends it at once, whether or not the client is reading, and its upstream
/// stream (and the gateway's connection to the API server) is let go with it.
pub fn relay(
    shared: &Shared,
    mut upstream: Incoming,
    ends: Ends,
    mut finish: Finish,
    registration: OwnedRegistration,
) -> KubeBody {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(RELAY_FRAMES);
    shared.tasks.spawn(async move {
        let _registration = registration;
        let end = loop {
            let frame = tokio::select! {
                biased;
                why = ends.reached() => break why,
                _ = tx.closed() => break "client_gone",
                f = upstream.frame() => f,
            };
            match frame {
                None => break "complete",
                Some(Err(e)) => {
                    let _ = tx.try_send(Err(Box::new(e)));
                    break "gateway_error";
                }
                Some(Ok(frame)) => {
                    let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                    tokio::select! {
                        biased;
                        why = ends.reached() => break why,
                                                sent = tokio::time::timeout(STALL, tx.send(Ok(frame))) => match sent {
                            Ok(Ok(())) => finish.bytes_out += n,
                            Ok(Err(_)) => break "client_gone",
                            // Every stalled stream pins its window on the agent
                            // channel, and enough of them stop the node's other
                            // streams: a client that reads nothing for this long
                            // loses the stream, not the node.
                            Err(_) => break "client_stalled",
                        },
                    }
                }
            }
        };
        if matches!(
            end,
            "access_revoked" | "gateway_revoked" | "token_expired" | "bastion_stopping"
        ) {
            // The client is told the stream failed (if it still reads).
            let _ = tx.try_send(Err(format!("stream ended: {end}").into()));
        }
        finish.done(end);
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    BodyExt::boxed(StreamBody::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_a_token_holds_open_ends_when_it_expires() {
        let ends = Ends {
            cut: CancellationToken::new(),
            gateway_cut: CancellationToken::new(),
            expires: Some(tokio::time::Instant::now() + std::time::Duration::from_millis(50)),
            shutdown: CancellationToken::new(),
        };
        let t0 = tokio::time::Instant::now();
        assert_eq!(ends.reached().await, "token_expired");
        assert!(t0.elapsed() >= std::time::Duration::from_millis(50));
        let cut = Ends {
            expires: None,
            ..ends
        };
        cut.cut.cancel();
        assert_eq!(cut.reached().await, "access_revoked");
        let revoked = Ends {
            cut: CancellationToken::new(),
            gateway_cut: CancellationToken::new(),
            expires: None,
            shutdown: CancellationToken::new(),
        };
        revoked.gateway_cut.cancel();
        assert_eq!(revoked.reached().await, "gateway_revoked");
    }
}
