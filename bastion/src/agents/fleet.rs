//! One way to reach a node: [`Fleet::link`] answers a [`NodeLink`] whether the
//! node's channel is on this replica or on a peer, and every caller (cmdexec, the
//! SSH relay, grant pushes and revocations) sends through it. Nothing outside
//! `agents/` sees the registry of local channels.
//!
//! With replicas, a node held by a peer is reached by an HTTP/2 request to that
//! peer naming the node; the peer forwards it onto the node's channel
//! ([`Fleet::forward_local`]), bodies streamed both ways under h2 flow control.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::watch;

use super::client::CallError;
use super::registry::{AgentBody, AgentConn, BoxError, Registry};
use crate::link::AgentIncoming;
use crate::replicas::Replicas;

pub use crate::link::{NODE_HEADER, PEER_ERROR_HEADER};

/// A route to one node's agent, good for one or many calls.
#[derive(Clone, Debug)]
pub struct NodeLink {
    node_id: String,
    route: Route,
}

#[derive(Clone, Debug)]
enum Route {
    Local(Arc<AgentConn>),
    Peer {
        replicas: Arc<Replicas>,
        replica: String,
        conn_id: u64,
    },
}

impl NodeLink {
    /// A link over a channel this replica holds.
    pub(crate) fn local(agent: Arc<AgentConn>) -> NodeLink {
        NodeLink {
            node_id: agent.node_id.clone(),
            route: Route::Local(agent),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether a command's result is released on its own request (see
    /// `Health::exec_release_inline`). Known for this replica's channels only:
    /// a peer's are sent the DELETE, which every agent takes.
    pub fn releases_inline(&self) -> bool {
        match &self.route {
            Route::Local(c) => c.release_inline.load(std::sync::atomic::Ordering::Relaxed),
            Route::Peer { .. } => false,
        }
    }

    pub(crate) fn set_release_inline(&self, yes: bool) {
        if let Route::Local(c) = &self.route {
            c.release_inline
                .store(yes, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Names the channel behind this link, across replicas: a grant pushed over
    /// one channel is not assumed held after the agent reconnects.
    pub fn channel_key(&self) -> (&str, u64) {
        match &self.route {
            Route::Local(c) => ("", c.conn_id),
            Route::Peer {
                replica, conn_id, ..
            } => (replica.as_str(), *conn_id),
        }
    }

    /// Resolves once this link is known to be gone: a local channel that ended
    /// or was replaced by the agent's newer one (calls on a link that died
    /// without a word would otherwise wait for their own deadlines). A peer's
    /// link ends with the calls the peer relays.
    pub async fn closed(&self) {
        match &self.route {
            Route::Local(agent) => agent.cancel.cancelled().await,
            Route::Peer { .. } => std::future::pending().await,
        }
    }

    /// Whether a peer carries this link (for metrics and logs).
    pub fn is_routed(&self) -> bool {
        matches!(self.route, Route::Peer { .. })
    }

    /// Sends one request to the node's agent (the URI's path and query are used)
    /// and answers its response head; the body streams as it is read.
    pub async fn send(
        &self,
        req: Request<AgentBody>,
    ) -> Result<Response<AgentIncoming>, CallError> {
        match &self.route {
            Route::Local(agent) => super::wire::send(&agent.sender, req).await,
            Route::Peer {
                replicas, replica, ..
            } => {
                let addr = replicas.peer_addr(replica).ok_or_else(|| {
                    CallError::Peer(format!("replica {replica} is not on record"))
                })?;
                replicas
                    .routed_out
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let resp = replicas
                    .peers
                    .send(replica, &addr, &self.node_id, req)
                    .await?;
                if resp.headers().contains_key(PEER_ERROR_HEADER) {
                    if resp.status() == StatusCode::MISDIRECTED_REQUEST {
                        // The peer no longer holds the node: it moved or went down.
                        return Err(CallError::Moved);
                    }
                    return Err(CallError::Peer(format!(
                        "replica {replica} could not reach the node ({})",
                        resp.status()
                    )));
                }
                Ok(resp.map(AgentIncoming::peer))
            }
        }
    }
}

/// Local channels plus, with replicas, where every other node's channel is.
#[derive(Debug)]
pub struct Fleet {
    registry: Registry,
    replicas: Option<Arc<Replicas>>,
    /// Bumped whenever a node may have become reachable, for [`Fleet::wait_link`].
    changed: watch::Sender<u64>,
    /// Channels closed by this bastion's shutdown (sent GOAWAY).
    drained: std::sync::atomic::AtomicUsize,
}

impl Fleet {
    pub fn new(replicas: Option<Arc<Replicas>>) -> Fleet {
        Fleet {
            registry: Registry::default(),
            replicas,
            changed: watch::Sender::new(0),
            drained: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn replicas(&self) -> Option<&Arc<Replicas>> {
        self.replicas.as_ref()
    }

    /// Wakes waiters of [`Fleet::wait_link`] (a channel came up here or elsewhere).
    pub(crate) fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// How to reach `node_id` now, if it is reachable at all.
    pub fn link(&self, node_id: &str) -> Option<NodeLink> {
        if let Some(c) = self.registry.get(node_id) {
            return Some(NodeLink {
                node_id: node_id.to_string(),
                route: Route::Local(c),
            });
        }
        let replicas = self.replicas.as_ref()?;
        let (replica, conn_id) = replicas.holder(node_id)?;
        Some(NodeLink {
            node_id: node_id.to_string(),
            route: Route::Peer {
                replicas: replicas.clone(),
                replica,
                conn_id,
            },
        })
    }

    pub fn is_reachable(&self, node_id: &str) -> bool {
        self.registry.is_reachable(node_id)
            || self
                .replicas
                .as_ref()
                .is_some_and(|r| r.holder(node_id).is_some())
    }

    /// Waits until `node_id` is reachable, up to `timeout`: woken when a channel
    /// comes up (here or on a peer), and every second, since a peer's death is
    /// noticed by the passing of time.
    pub async fn wait_link(&self, node_id: &str, timeout: Duration) -> Option<NodeLink> {
        let until = tokio::time::Instant::now() + timeout;
        let mut rx = self.changed.subscribe();
        loop {
            rx.mark_unchanged();
            if let Some(l) = self.link(node_id) {
                return Some(l);
            }
            let now = tokio::time::Instant::now();
            if now >= until {
                return None;
            }
            let step = (until - now).min(Duration::from_secs(1));
            let _ = tokio::time::timeout(step, rx.changed()).await;
        }
    }

    /// Registers a channel that came up here (see `channel::register_live`).
    pub(crate) async fn register(&self, agent: Arc<AgentConn>) {
        let (node, conn) = (agent.node_id.clone(), agent.conn_id);
        self.registry.insert(agent);
        if let Some(r) = &self.replicas {
            r.local_up(node, conn).await;
        }
        self.bump();
    }

    /// Unregisters a channel if it is still the node's; records it gone.
    pub(crate) async fn unregister(&self, node_id: &str, conn_id: u64) -> bool {
        let removed = self.registry.remove(node_id, conn_id);
        if removed && let Some(r) = &self.replicas {
            r.local_down(node_id.to_string(), conn_id).await;
        }
        removed
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.registry.next_conn_id()
    }

    /// Cuts the node's channel wherever it is (the node was disabled or deleted).
    /// Answers whether it had one; the replica holding it is told to cut it.
    pub async fn disconnect(&self, node_id: &str) -> bool {
        let elsewhere = self
            .replicas
            .as_ref()
            .is_some_and(|r| r.holder(node_id).is_some());
        let here = self.cut_local(node_id);
        if let Some(r) = &self.replicas {
            r.publish_cut(node_id).await;
        }
        here || elsewhere
    }

    /// Cuts the channel this replica holds for `node_id`, if any.
    pub fn cut_local(&self, node_id: &str) -> bool {
        self.registry.disconnect(node_id)
    }

    /// The node's channel here, if this replica holds it.
    pub(crate) fn local(&self, node_id: &str) -> Option<Arc<AgentConn>> {
        self.registry.get(node_id)
    }

    pub fn local_count(&self) -> usize {
        self.registry.len()
    }

    pub fn local_node_ids(&self) -> Vec<String> {
        self.registry.node_ids()
    }

    pub(crate) fn local_snapshot(&self) -> Vec<Arc<AgentConn>> {
        self.registry.snapshot()
    }

    /// Cuts every local channel still registered (shutdown).
    pub fn drain(&self) -> usize {
        self.registry.drain().len()
    }

    /// Counts a channel closed because the bastion is shutting down.
    pub(crate) fn drained_one(&self) {
        self.drained
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many channels the shutdown closed.
    pub fn drained(&self) -> usize {
        self.drained.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Serves a peer's request for a node held here: forwards it onto the node's
    /// channel and answers the agent's response as it streams. 421 when the node
    /// is not held here (it moved): the caller looks it up again.
    pub async fn forward_local(
        &self,
        node_id: &str,
        req: Request<Incoming>,
    ) -> Response<AgentBody> {
        let Some(agent) = self.registry.get(node_id) else {
            return plain(
                StatusCode::MISDIRECTED_REQUEST,
                "the node's channel is not on this replica",
            );
        };
        let req = req.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed());
        match super::wire::send(&agent.sender, req).await {
            Ok(resp) => resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()),
            Err(e) => plain(
                StatusCode::BAD_GATEWAY,
                &format!("the node's channel failed: {e}"),
            ),
        }
    }
}

fn plain(status: StatusCode, text: &str) -> Response<AgentBody> {
    let mut resp = Response::new(super::client::full(Bytes::from(text.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(PEER_ERROR_HEADER, http::HeaderValue::from_static("1"));
    resp
}
