//! A Kubernetes answer on its way back to the client: streamed frame by frame
//! (a watch or a long list is never held whole), counted, ended at once when the
//! caller's access is taken away, their token expires or the serving node loses
//! its gateway role, ended when its client stops taking bytes for long or holds
//! more of the gateway's connection than its share (`flow`), and audited exactly
//! once when it ends, however it ends (done, cut, the client gone, the gateway
//! gone). An answer cut short ends in an error, never as if it were whole.

use std::sync::Arc;

use crate::link::AgentIncoming;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body as _, Frame};
use serde_json::json;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::Door;
use super::KubeBody;
use super::flow;
use super::live::OwnedRegistration;
use super::proxy::Authorized;
use crate::agents::{BoxError, NodeLink};

/// The audit entry of one request, written when it ends.
pub struct Finish {
    shared: Arc<Door>,
    auth: Option<Authorized>,
    status: StatusCode,
    agent_error: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// A recorded exec or attach: its id and chain head, for the final entry.
    pub recording: Option<crate::recording::Ended>,
}

impl Finish {
    pub(super) fn new(
        shared: Arc<Door>,
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
            recording: None,
        }
    }

    /// Whose answer this is (empty once recorded).
    pub(super) fn user_id(&self) -> &str {
        self.auth
            .as_ref()
            .map_or("", |a| a.principal.user_id.as_str())
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
                "recording": self.recording.take(),
            }),
        );
        self.shared
            .audit
            .batched_soon(ev, &auth.principal.user_id, &self.shared.tasks);
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
/// An answer whose client takes nothing for this long while data waits loses
/// it: meanwhile the gateway's bytes pile up unread on a connection every
/// stream of the node shares. A client that reads at all takes a frame (16 to
/// 32 KiB) far sooner; one whose HTTP/2 window stays shut never does.
pub const NO_PROGRESS: std::time::Duration = std::time::Duration::from_secs(2);
/// The same for an upgraded stream (`exec`, `attach`, `port-forward`), where a
/// person may pause a terminal: longer, and still within the user's share of
/// the connection (`flow`).
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
/// `link`: where the answer comes from, whose connection it is charged to
/// while its client takes nothing.
pub fn relay(
    shared: &Door,
    mut upstream: AgentIncoming,
    ends: Ends,
    mut finish: Finish,
    registration: OwnedRegistration,
    link: &NodeLink,
) -> KubeBody {
    let tab = shared
        .live
        .flow
        .open(&flow::connection_of(link), finish.user_id());
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(RELAY_FRAMES);
    // How the relay ended, for the body once it has handed over every frame.
    let (ended_tx, ended_rx) = oneshot::channel::<&'static str>();
    shared.tasks.spawn(async move {
        let _registration = registration;
        let end = loop {
            let frame = tokio::select! {
                biased;
                why = ends.reached() => break why,
                () = tab.cut_off() => break "over_budget",
                () = tx.closed() => break "client_gone",
                f = upstream.frame() => f,
            };
            let frame = match frame {
                None => break "complete",
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "Kubernetes answer: the gateway's stream failed");
                    break "gateway_error";
                }
                Some(Ok(frame)) => frame,
            };
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            let frame = match tx.try_send(Ok(frame)) {
                Ok(()) => {
                    finish.bytes_out += n;
                    continue;
                }
                Err(TrySendError::Closed(_)) => break "client_gone",
                Err(TrySendError::Full(frame)) => frame,
            };
            // The client takes nothing for now. Until it does, what the gateway
            // still sends waits unread on the connection: charged to this user
            // there, within budgets that cut the longest-waiting answer rather
            // than let the connection stall (`flow`).
            if !tab.waiting(flow::charge(upstream.size_hint().exact())) {
                break "over_budget";
            }
            let sent = tokio::select! {
                biased;
                why = ends.reached() => break why,
                () = tab.cut_off() => break "over_budget",
                sent = tokio::time::timeout(NO_PROGRESS, tx.send(frame)) => sent,
            };
            tab.flowing();
            match sent {
                Ok(Ok(())) => finish.bytes_out += n,
                Ok(Err(_)) => break "client_gone",
                Err(_) => break "client_stalled",
            }
        };
        // Resets the stream at once: h2 hands what it held back to the
        // connection.
        drop(upstream);
        drop(tab);
        let _ = ended_tx.send(end);
        drop(tx);
        finish.done(end);
    });
    let stream = futures_util::stream::unfold((rx, Some(ended_rx)), |(mut rx, ended)| async move {
        if let Some(frame) = rx.recv().await {
            return Some((frame, (rx, ended)));
        }
        // Every frame handed over. Only a complete answer ends cleanly: one cut
        // short ends in an error (the stream is reset), so no client takes a
        // truncated list for a whole one.
        let end = ended?.await.unwrap_or("bastion_stopping");
        (end != "complete").then(|| {
            let e = BoxError::from(format!("stream ended: {end}"));
            (Err(e), (rx, None))
        })
    });
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
