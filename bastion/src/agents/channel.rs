//! One agent's channel after the TLS handshake: check that the certificate still
//! names a live node, open HTTP/2 as the client on the connection the agent
//! dialled, register it, and hold it until it ends, the node is cut off, or the
//! bastion shuts down (then the senders are dropped and h2 sends GOAWAY).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use postern_api::admin::NodeState;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::client;
use super::registry::AgentConn;
use crate::clock::now_ms;
use crate::metrics::inc;
use crate::pki::node_cert_info;
use crate::state::Shared;

pub(super) async fn run(
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    cert: CertificateDer<'static>,
    shared: Arc<Shared>,
) {
    let info = match node_cert_info(&cert) {
        Ok(i) => i,
        Err(e) => {
            inc(&shared.metrics.agents_refused);
            tracing::warn!(%peer, error = %e, "agent certificate unreadable; closing");
            return;
        }
    };
    let node = match shared.store.node(&info.node_id).await {
        Ok(Some(n)) if n.state != NodeState::Disabled => n,
        Ok(Some(_)) => {
            inc(&shared.metrics.agents_refused);
            tracing::info!(%peer, node = %info.node_id, "refusing channel of disabled node");
            return;
        }
        Ok(None) => {
            inc(&shared.metrics.agents_refused);
            tracing::info!(%peer, node = %info.node_id, "refusing channel of deleted or unknown node");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "store unavailable; closing agent channel");
            return;
        }
    };

    let s = &shared.settings;
    let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(s.keepalive_interval)
        .keep_alive_timeout(s.keepalive_timeout)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(postern_agent::channel::STREAM_WINDOW)
        .initial_connection_window_size(postern_agent::channel::CONNECTION_WINDOW)
        .max_frame_size(postern_agent::channel::MAX_FRAME)
        .handshake::<_, super::AgentBody>(TokioIo::new(tls));
    let (sender, conn) = match tokio::time::timeout(s.handshake_timeout, handshake).await {
        Ok(Ok(pair)) => pair,
        _ => {
            inc(&shared.metrics.handshake_failures);
            return;
        }
    };
    let cancel = shared.shutdown.child_token();
    let agent = Arc::new(AgentConn {
        node_id: node.id.clone(),
        conn_id: shared.registry.next_conn_id(),
        peer,
        connected_at_ms: now_ms(),
        sender,
        cancel: cancel.clone(),
        cert: std::sync::Mutex::new(info),
        rotating: AtomicBool::new(false),
    });
    let conn_id = agent.conn_id;
    let node_id = node.id.clone();
    shared.registry.insert(agent.clone());
    // The node may have been disabled or deleted since the check above (the h2
    // handshake took a round trip). Disabling writes the store, then cuts what
    // the registry holds; registering, then reading the store again, means one
    // of the two always sees the other, so no channel of a disabled node stays.
    match shared.store.node(&node_id).await {
        Ok(Some(n)) if n.state != NodeState::Disabled => {}
        other => {
            shared.registry.remove(&node_id, conn_id);
            inc(&shared.metrics.agents_refused);
            if let Err(e) = other {
                tracing::error!(error = %e, "store unavailable; closing agent channel");
            } else {
                tracing::info!(%peer, node = %node_id, "node disabled or deleted while its channel came up; closing");
            }
            return;
        }
    }
    inc(&shared.metrics.handshakes);
    tracing::debug!(%peer, node = %node_id, hostname = %node.hostname, "agent channel up");

    let mut conn = std::pin::pin!(conn);
    // Bookkeeping runs beside the connection so the channel is served meanwhile.
    let bookkeeping = async {
        let now = now_ms();
        if node.state == NodeState::Approved {
            let _ = shared.store.mark_provisioned(&node_id).await;
        }
        let _ = shared
            .store
            .touch_nodes(std::slice::from_ref(&node_id), now)
            .await;
        match client::health(&agent, s.agent_call_timeout).await {
            Ok(h) => {
                // The agent's word: bounded and printable before it is stored.
                let version = postern_api::validate::peer_line(&h.agent_version, 64);
                if node.agent_version.as_deref() != Some(version.as_str()) {
                    let _ = shared.store.set_agent_version(&node_id, &version).await;
                }
            }
            Err(e) => tracing::debug!(node = %node_id, error = %e, "agent health call failed"),
        }
        std::future::pending::<()>().await;
    };
    let ended_by_peer = tokio::select! {
        r = &mut conn => {
            if let Err(e) = r {
                tracing::debug!(node = %node_id, error = %e, "agent channel closed with error");
            }
            true
        }
        _ = cancel.cancelled() => false,
        _ = bookkeeping => false,
    };
    shared.registry.remove(&node_id, conn_id);
    drop(agent);
    if !ended_by_peer && shared.shutdown.is_cancelled() {
        // Graceful: the last sender is gone, so h2 sends GOAWAY; give it a moment
        // to flush before the socket closes.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut conn).await;
    }
    let _ = shared
        .store
        .touch_nodes(std::slice::from_ref(&node_id), now_ms())
        .await;
    tracing::debug!(node = %node_id, "agent channel down");
}
