//! Replica-to-replica HTTP/2 over mutual TLS, the dialling side: a replica
//! reaches a node held by a peer by sending the agent request to that peer
//! with the node named in a header; the peer forwards it onto the node's
//! channel (its `peer_port`).
//!
//! Certificates come from the deployment's own CA and carry the replica's name
//! with the replica organization: a node certificate is never a peer's (and the
//! agent port refuses a replica certificate). One connection per ordered pair,
//! dialled on first use and again with backoff after it fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use postern_api::agent::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::link::{AgentBody, CallError, NODE_HEADER};
use crate::pki::{Pki, PkiError, replica_dns_name};

pub const ALPN_PEER: &[u8] = b"postern-peer/1";
/// Peer connections served at once; replicas are few, so this only bounds junk.
pub const MAX_PEER_CONNECTIONS: usize = 256;
/// Peer connections from one address at once: a replica needs one, so a flood
/// from one source cannot take the places of the real peers.
pub const PEER_CONNECTIONS_PER_SOURCE: usize = 8;
/// A peer's TLS handshake must be done within this (replicas sit close by).
pub const PEER_HANDSHAKE: Duration = Duration::from_secs(3);
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait before dialling a failed peer again.
const REDIAL_CAP: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Slot {
    sender: Option<SendRequest<AgentBody>>,
    failures: u32,
    retry_at: Option<Instant>,
    failing_since: Option<Instant>,
}

/// Outgoing peer connections, and the TLS both ends use.
pub struct PeerPool {
    me: String,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Ends the connection drivers at shutdown.
    stop: CancellationToken,
    pub connections_out: Arc<AtomicU64>,
    pub connections_in: Arc<AtomicU64>,
}

impl std::fmt::Debug for PeerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerPool").field("me", &self.me).finish()
    }
}

fn tls_error(e: impl std::fmt::Display) -> PkiError {
    PkiError::BadCert(e.to_string())
}

impl PeerPool {
    pub fn new(pki: &Pki, me: &str) -> Result<PeerPool, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca_der().clone()).map_err(tls_error)?;
        let roots = Arc::new(roots);
        let (chain, key) = pki.replica_cert(me)?;

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(tls_error)?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(tls_error)?;
        server.alpn_protocols = vec![ALPN_PEER.to_vec()];
        server.send_tls13_tickets = 0;

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(tls_error)?;
        client.alpn_protocols = vec![ALPN_PEER.to_vec()];
        Ok(PeerPool {
            me: me.to_string(),
            client: Arc::new(client),
            server: Arc::new(server),
            slots: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            connections_out: Arc::default(),
            connections_in: Arc::default(),
        })
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Stops every outgoing connection (shutdown).
    pub fn close(&self) {
        self.stop.cancel();
    }

    fn slot(&self, replica: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(replica.to_string())
            .or_default()
            .clone()
    }

    /// The connection to `replica`, dialled if there is none (one dial at a
    /// time per peer; callers meanwhile wait for it rather than dial twice).
    async fn sender(&self, replica: &str, addr: &str) -> Result<SendRequest<AgentBody>, CallError> {
        let slot = self.slot(replica);
        let mut slot = slot.lock().await;
        if let Some(s) = &slot.sender
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        slot.sender = None;
        if let Some(at) = slot.retry_at
            && Instant::now() < at
        {
            return Err(CallError::Peer(format!(
                "replica {replica} at {addr} is unreachable; retrying shortly"
            )));
        }
        match tokio::time::timeout(DIAL_TIMEOUT, self.dial(replica, addr)).await {
            Ok(Ok(s)) => {
                slot.failures = 0;
                slot.retry_at = None;
                slot.failing_since = None;
                slot.sender = Some(s.clone());
                Ok(s)
            }
            failed => {
                slot.failures += 1;
                slot.failing_since.get_or_insert_with(Instant::now);
                let exp = Duration::from_millis(100).saturating_mul(1 << slot.failures.min(8));
                let delay = exp
                    .min(REDIAL_CAP)
                    .mul_f64(0.5 + rand::random::<f64>() / 2.0);
                slot.retry_at = Some(Instant::now() + delay);
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {DIAL_TIMEOUT:?}"),
                };
                if slot.failures == 1 {
                    tracing::warn!(peer = %replica, %addr, error = %why, "cannot reach peer replica");
                }
                Err(CallError::Peer(format!(
                    "replica {replica} at {addr} is unreachable: {why}"
                )))
            }
        }
    }

    async fn dial(&self, replica: &str, addr: &str) -> Result<SendRequest<AgentBody>, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(replica_dns_name(replica)).map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(self.client.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_PEER) {
            return Err("the peer does not speak the peer protocol".into());
        }
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .handshake::<_, AgentBody>(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
        let stop = self.stop.clone();
        let gauge = self.connections_out.clone();
        let peer = replica.to_string();
        gauge.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "peer connection ended");
                },
                _ = stop.cancelled() => {}
            }
            gauge.fetch_sub(1, Ordering::Relaxed);
        });
        tracing::info!(peer = %replica, %addr, "peer connection up");
        Ok(sender)
    }

    /// The given live peers that this replica has failed to reach for longer
    /// than a replica lease. A peer that died stops beating within the lease and
    /// drops out of the live ones, so what remains is a partition: this replica
    /// cannot route to the nodes those peers hold.
    pub async fn unreachable(&self, peers: &[(String, String)]) -> Vec<String> {
        let mut out = Vec::new();
        for (name, addr) in peers {
            if self.sender(name, addr).await.is_ok() {
                continue;
            }
            let since = self.slot(name).lock().await.failing_since;
            if since.is_some_and(|t| t.elapsed() > super::REPLICA_LEASE) {
                out.push(name.clone());
            }
        }
        out
    }

    /// Sends an agent request for `node_id` to the replica holding it.
    pub async fn send(
        &self,
        replica: &str,
        addr: &str,
        node_id: &str,
        mut req: Request<AgentBody>,
    ) -> Result<Response<Incoming>, CallError> {
        let mut sender = self.sender(replica, addr).await?;
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        *req.uri_mut() = format!("http://peer{path}")
            .parse()
            .map_err(|e| CallError::Body(format!("bad agent path: {e}")))?;
        req.headers_mut().insert(
            NODE_HEADER,
            HeaderValue::from_str(node_id).map_err(|e| CallError::Body(e.to_string()))?,
        );
        sender
            .ready()
            .await
            .map_err(|e| CallError::Peer(format!("replica {replica}: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| CallError::Peer(format!("replica {replica}: {e}")))
    }
}
