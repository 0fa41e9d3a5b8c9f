//! The registry of live agent channels: one HTTP/2 `SendRequest` per connected node,
//! with its certificate details and a token that cuts the connection.
//!
//! A node is reachable exactly while it has an entry here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::pki::NodeCertInfo;

pub use crate::link::{AgentBody, BoxError};

/// A request body that carries a byte stream to the node (an SSH session, a
/// Kubernetes upgrade), fed through a queue of `queue` chunks at most; the
/// stream ends when the sender is dropped.
pub fn stream_body(queue: usize) -> (tokio::sync::mpsc::Sender<Bytes>, AgentBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(queue);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, BoxError>(hyper::body::Frame::data(b)), rx))
    });
    (
        tx,
        http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(stream)),
    )
}

/// A request body that sends `head` at once and then stays open for one more
/// chunk: the one sent on the returned sender, or none if it is dropped. Much
/// smaller than [`stream_body`]'s queue, for a body held per node of a fan-out.
pub fn held_body(head: [Bytes; 2]) -> (tokio::sync::oneshot::Sender<Bytes>, AgentBody) {
    use futures_util::StreamExt;
    let (tx, rx) = tokio::sync::oneshot::channel::<Bytes>();
    let tail = futures_util::stream::once(rx).filter_map(|r| std::future::ready(r.ok()));
    let stream = futures_util::stream::iter(head)
        .chain(tail)
        .map(|b| Ok::<_, BoxError>(hyper::body::Frame::data(b)));
    (
        tx,
        http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(stream)),
    )
}

/// One live channel.
pub struct AgentConn {
    pub node_id: String,
    pub conn_id: u64,
    pub peer: SocketAddr,
    pub connected_at_ms: i64,
    /// One handle, so that streams open one at a time (`wire::send`); held
    /// by the channel's task while it is parked.
    pub sender: super::wire::ChannelHandle,
    pub cancel: CancellationToken,
    /// The certificate the agent holds now (updated on rotation, while the
    /// connection itself keeps the one it was opened with).
    pub cert: Mutex<NodeCertInfo>,
    pub rotating: AtomicBool,
    /// Its agent takes a result's release on the command's own request
    /// (health's `exec_release_inline`), read once the channel is up.
    pub release_inline: AtomicBool,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn")
            .field("node_id", &self.node_id)
            .field("conn_id", &self.conn_id)
            .field("peer", &self.peer)
            .finish()
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    conns: Mutex<HashMap<String, Arc<AgentConn>>>,
    next_id: AtomicU64,
}

impl Registry {
    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AgentConn>>> {
        // A poisoned lock only means another thread panicked mid-insert; the map
        // itself is still consistent (single operations), so keep serving.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a channel; a previous channel of the same node is cut, since an
    /// agent that reconnects has given up on it.
    pub fn insert(&self, conn: Arc<AgentConn>) {
        let old = self.lock().insert(conn.node_id.clone(), conn);
        if let Some(old) = old {
            old.cancel.cancel();
        }
    }

    /// Removes the entry if it is still this connection's.
    pub fn remove(&self, node_id: &str, conn_id: u64) -> bool {
        let mut map = self.lock();
        if map.get(node_id).is_some_and(|c| c.conn_id == conn_id) {
            map.remove(node_id);
            true
        } else {
            false
        }
    }

    pub fn get(&self, node_id: &str) -> Option<Arc<AgentConn>> {
        self.lock().get(node_id).cloned()
    }

    pub fn is_reachable(&self, node_id: &str) -> bool {
        self.lock().contains_key(node_id)
    }

    /// Cuts the node's channel (deleted or disabled node). Returns whether it had one.
    pub fn disconnect(&self, node_id: &str) -> bool {
        let conn = self.lock().remove(node_id);
        match conn {
            Some(c) => {
                c.cancel.cancel();
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn snapshot(&self) -> Vec<Arc<AgentConn>> {
        self.lock().values().cloned().collect()
    }

    pub fn node_ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Cuts every channel (shutdown). Dropping the senders lets h2 send GOAWAY.
    pub fn drain(&self) -> Vec<Arc<AgentConn>> {
        let all: Vec<_> = self.lock().drain().map(|(_, c)| c).collect();
        for c in &all {
            c.cancel.cancel();
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn chunks(mut body: AgentBody) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("frame").into_data() {
                out.push(data);
            }
        }
        out
    }

    #[tokio::test]
    async fn a_held_body_sends_its_head_then_the_one_chunk_then_ends() {
        let (tx, body) = held_body([Bytes::from_static(b"{}"), Bytes::from_static(b"\n")]);
        let read = tokio::spawn(chunks(body));
        tx.send(Bytes::from_static(b"release\n"))
            .expect("the body is open");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("the body ended")
            .expect("no panic");
        assert_eq!(got, [&b"{}"[..], b"\n", b"release\n"]);
    }

    #[tokio::test]
    async fn a_held_body_ends_after_its_head_when_the_sender_is_dropped() {
        let (tx, body) = held_body([Bytes::from_static(b"{}"), Bytes::from_static(b"\n")]);
        drop(tx);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), chunks(body))
            .await
            .expect("the body ended");
        assert_eq!(got, [&b"{}"[..], b"\n"]);
    }

    #[tokio::test]
    async fn a_held_body_refuses_the_chunk_once_it_is_gone() {
        let (tx, body) = held_body([Bytes::from_static(b"{}"), Bytes::from_static(b"\n")]);
        drop(body);
        assert!(tx.send(Bytes::from_static(b"release\n")).is_err());
    }
}
