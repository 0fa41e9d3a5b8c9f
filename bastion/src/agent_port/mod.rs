//! The agent port: one TLS 1.3 listener for both enrollment (server-authenticated
//! HTTP/1.1) and the agents' mutually authenticated channels (reversed HTTP/2).
//!
//! The accept loop only accepts: every handshake runs in its own task under a
//! deadline, so a peer that stalls mid-handshake delays nobody else.
//!
//! Connections pass a [`crate::limits::Gate`]: at most `max_agent_connections`
//! in all, and at most `agent_handshakes_per_source` from one address (IPv6 by
//! its /64) until the TLS handshake has verified a node certificate. The
//! per-source count is on handshakes only: thousands of agents behind one NAT
//! address hold their channels in the total alone, while one address opening
//! idle connections cannot take the port from the fleet (a failover from a
//! dead replica included). A client must send its ClientHello within a few
//! seconds, so each idle connection holds its place briefly.
//!
//! Enrollment has its own small pool of connections (`max_enrollments`): once a
//! handshake says "enrollment", the connection leaves the agents' pool for that
//! one, so a flood of enrollments cannot shut out a fleet reconnecting. The
//! install script and agent packages are served on those same connections
//! (see `downloads` for how they share the pool).

mod channel;
mod downloads;
mod enroll;
mod kube_keys;
mod rotate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postern_api::agent::{ALPN_CHANNEL, ALPN_ENROLL};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

pub use enroll::{EnrollError, enroll};
pub use rotate::{rotate_node, run_rotation};

use crate::metrics::inc;
use crate::state::Shared;

/// Enrollments at once from one source address, so one client (even without a
/// token) cannot hold the whole enrollment pool.
const ENROLLMENTS_PER_SOURCE: usize = 8;

pub use crate::limits::AGENT_HANDSHAKES_PER_SOURCE;

/// A client must send its ClientHello within this (or the handshake deadline,
/// if shorter): an agent sends it at once, and a connection that says nothing
/// gives its place back soon instead of at the end of the whole deadline.
const CLIENT_HELLO_WITHIN: Duration = Duration::from_secs(3);

/// Why a handshake on the agent port did not complete.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("no ClientHello within {0:?}")]
    NoHello(Duration),
    #[error("the handshake did not finish within {0:?}")]
    TimedOut(Duration),
    #[error(transparent)]
    Tls(#[from] std::io::Error),
}

/// What connections without a client certificate (enrollments, downloads)
/// draw from: one pool and a per-source limit, apart from the agents' channels,
/// and package downloads' share of that pool.
struct Unauthenticated {
    enrollments: Arc<Semaphore>,
    sources: crate::limits::PerSource,
    downloads: Arc<downloads::Places>,
}

/// The agent port's own settings (built in `app.rs` from the flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connections beyond this on the agent port are dropped at once.
    pub max_agent_connections: usize,
    /// Connections on the agent port still in their TLS handshake from one
    /// source address (IPv6 by /64); an agent's channel, once its certificate
    /// is verified, no longer counts against its address.
    pub agent_handshakes_per_source: usize,
    /// Enrollments served at once (their own pool, apart from agent channels).
    pub max_enrollments: usize,
    /// How often to look for certificates due for rotation.
    pub rotation_check: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_agent_connections: 16_000,
            agent_handshakes_per_source: AGENT_HANDSHAKES_PER_SOURCE,
            max_enrollments: 64,
            rotation_check: Duration::from_secs(30),
        }
    }
}

/// Accepts on the agent port until shutdown.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    settings: Settings,
) {
    let gate = crate::limits::Gate::new(
        "agent port",
        settings.max_agent_connections,
        settings.agent_handshakes_per_source,
    );
    let pools = Arc::new(Unauthenticated {
        enrollments: Arc::new(Semaphore::new(settings.max_enrollments)),
        sources: crate::limits::PerSource::new(ENROLLMENTS_PER_SOURCE),
        downloads: Arc::new(downloads::Places::new(settings.max_enrollments)),
    });
    while let Some((tcp, peer, admitted)) = gate
        .accept(
            &listener,
            &shared.shutdown,
            &shared.metrics.connections_rejected_full,
        )
        .await
    {
        let task = handle(
            tcp,
            peer,
            tls.clone(),
            shared.clone(),
            admitted,
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
}

/// The TLS handshake under two deadlines: the ClientHello within
/// [`CLIENT_HELLO_WITHIN`], the whole handshake within `within`.
async fn handshake(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    within: Duration,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let deadline = tokio::time::Instant::now() + within;
    let hello_within = within.min(CLIENT_HELLO_WITHIN);
    let hello = tokio::time::timeout(
        hello_within,
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp),
    )
    .await
    .map_err(|_| HandshakeError::NoHello(hello_within))??;
    tokio::time::timeout_at(deadline, hello.into_stream(tls))
        .await
        .map_err(|_| HandshakeError::TimedOut(within))?
        .map_err(HandshakeError::Tls)
}

async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    mut admitted: crate::limits::Admitted,
    pools: Arc<Unauthenticated>,
) {
    // Boxed, as every step that runs once: this task lives as long as the
    // channel, and its size is the largest of what it awaits.
    let handshake = Box::pin(handshake(tcp, tls, shared.settings.handshake_timeout));
    let tls = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        r = handshake => match r {
            Ok(tls) => tls,
            Err(e) => {
                inc(&shared.metrics.handshake_failures);
                tracing::debug!(%peer, error = %e, "agent port TLS handshake failed");
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
        (Some(alpn @ (ALPN_CHANNEL | postern_channel::ALPN)), Some(cert)) => {
            // The handshake verified a certificate of our CA: from here the
            // channel counts in the port's total only, not against its address
            // (many agents may share one), for as long as it lasts.
            admitted.authenticated();
            let framed = alpn == postern_channel::ALPN;
            channel::run(tls, peer, cert, shared, framed).await;
            drop(admitted);
        }
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
            drop(admitted);
            Box::pin(enroll::serve(tls, peer, shared, pools.downloads.clone())).await;
            drop(enroll_permit);
        }
        _ => {
            inc(&shared.metrics.agents_refused);
            tracing::debug!(%peer, "agent port: wrong protocol for the credentials presented; closing");
        }
    }
}
