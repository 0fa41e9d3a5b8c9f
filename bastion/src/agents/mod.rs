//! The agent port: one TLS 1.3 listener for both enrollment (server-authenticated
//! HTTP/1.1) and the agents' mutually authenticated channels (reversed HTTP/2).
//!
//! The accept loop only accepts: every handshake runs in its own task under a
//! deadline, so a peer that stalls mid-handshake delays nobody else.
//!
//! Enrollment has its own small pool of connections (`max_enrollments`): once a
//! handshake says "enrollment", the connection leaves the agents' pool for that
//! one, so a flood of enrollments cannot shut out a fleet reconnecting. The
//! install script and agent packages are served on those same connections
//! (see `downloads` for how they share the pool).

mod channel;
pub mod client;
mod downloads;
mod enroll;
pub mod fleet;
pub mod kube_keys;
pub mod packages;
mod registry;
mod rotate;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postern_api::agent::{ALPN_CHANNEL, ALPN_ENROLL};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

pub use enroll::{EnrollError, TOKEN_PREFIX as ENROLL_TOKEN_PREFIX, enroll};
pub use fleet::{Fleet, NodeLink};
pub use registry::{AgentBody, AgentConn, BoxError, stream_body};
pub use rotate::{rotate_node, run_rotation};
pub use tls::server_config;

use crate::metrics::inc;
use crate::state::Shared;

/// Enrollments at once from one source address, so one client (even without a
/// token) cannot hold the whole enrollment pool.
const ENROLLMENTS_PER_SOURCE: usize = 8;

/// What connections without a client certificate (enrollments, downloads)
/// draw from: one pool and a per-source limit, apart from the agents' channels,
/// and package downloads' share of that pool.
struct Unauthenticated {
    enrollments: Arc<Semaphore>,
    sources: crate::limits::PerSource,
    downloads: Arc<downloads::Places>,
}

/// Accepts on the agent port until shutdown.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, shared: Arc<Shared>) {
    let acceptor = TlsAcceptor::from(tls);
    let limit = Arc::new(Semaphore::new(shared.settings.max_agent_connections));
    let pools = Arc::new(Unauthenticated {
        enrollments: Arc::new(Semaphore::new(shared.settings.max_enrollments)),
        sources: crate::limits::PerSource::new(ENROLLMENTS_PER_SOURCE),
        downloads: Arc::new(downloads::Places::new(shared.settings.max_enrollments)),
    });
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    inc(&shared.metrics.connections_rejected_full);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let task = handle(
                    tcp,
                    peer,
                    acceptor.clone(),
                    shared.clone(),
                    permit,
                    pools.clone(),
                );
                // Every idle agent holds one of these: its size is memory per node.
                static SIZE: std::sync::Once = std::sync::Once::new();
                SIZE.call_once(|| {
                    tracing::debug!(
                        bytes = std::mem::size_of_val(&task),
                        "size of an agent connection's task"
                    )
                });
                shared.tasks.spawn(task);
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "agent port accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
    pools: Arc<Unauthenticated>,
) {
    // Boxed, as every step that runs once: this task lives as long as the
    // channel, and its size is the largest of what it awaits.
    let handshake = Box::pin(tokio::time::timeout(
        shared.settings.handshake_timeout,
        acceptor.accept(tcp),
    ));
    let tls = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        r = handshake => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                inc(&shared.metrics.handshake_failures);
                tracing::debug!(%peer, error = %e, "agent port TLS handshake failed");
                return;
            }
            Err(_) => {
                inc(&shared.metrics.handshake_failures);
                tracing::debug!(%peer, "agent port TLS handshake timed out");
                return;
            }
        },
    };
    let (_, conn) = tls.get_ref();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let client_cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    match (alpn.as_deref(), client_cert) {
        (Some(ALPN_CHANNEL), Some(cert)) => channel::run(tls, peer, cert, shared).await,
        (Some(ALPN_ENROLL), None) => {
            let Some(_source) = pools.sources.admit(peer.ip()) else {
                inc(&shared.metrics.enrollments_rejected_full);
                tracing::warn!(%peer, "too many enrollments at once from one address; refusing this one");
                Box::pin(enroll::serve_busy(tls)).await;
                return;
            };
            let Ok(enroll_permit) = pools.enrollments.clone().try_acquire_owned() else {
                inc(&shared.metrics.enrollments_rejected_full);
                tracing::warn!(%peer, "too many enrollments at once; refusing this one");
                Box::pin(enroll::serve_busy(tls)).await;
                return;
            };
            // From here the connection counts against enrollment's pool only.
            drop(permit);
            Box::pin(enroll::serve(tls, peer, shared, pools.downloads.clone())).await;
            drop(enroll_permit);
        }
        _ => {
            inc(&shared.metrics.agents_refused);
            tracing::debug!(%peer, "agent port: wrong protocol for the credentials presented; closing");
        }
    }
}
