//! The Kubernetes listener: TLS with a certificate from the bastion's CA (or one
//! the operator gives), HTTP/2 for ordinary requests and HTTP/1.1 for the
//! upgrades of `exec`, `attach` and `port-forward`. Handshakes run in each
//! connection's own task with a deadline; connections are capped in all and
//! per source address, so one client cannot fill the listener.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::metrics::inc;
use crate::pki::Pki;
use crate::state::Shared;

/// Connections open at once on the listener, and from one source address.
pub const MAX_CONNECTIONS: usize = 4096;
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 256;
/// A client has this long to send a request's headers on HTTP/1.1.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum KubeTlsError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0} holds no PEM certificate")]
    NoCert(String),
    #[error("{0} holds no PEM private key: {1}")]
    NoKey(String, String),
    #[error("the Kubernetes listener's certificate: {0}")]
    Tls(String),
}

/// The listener's TLS: the operator's certificate and key when given, else one
/// from the bastion's CA for `names` (the CA every downloaded kubeconfig carries).
pub fn server_config(
    pki: &Pki,
    names: &[String],
    given: Option<(&Path, &Path)>,
) -> Result<Arc<ServerConfig>, KubeTlsError> {
    let (chain, key) = match given {
        Some((cert, key)) => {
            let read = |p: &Path| {
                std::fs::read(p).map_err(|e| KubeTlsError::Read(p.display().to_string(), e))
            };
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
                .filter_map(Result::ok)
                .collect();
            if chain.is_empty() {
                return Err(KubeTlsError::NoCert(cert.display().to_string()));
            }
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| KubeTlsError::NoKey(key.display().to_string(), e.to_string()))?;
            (chain, key)
        }
        None => pki
            .server_cert(names)
            .map_err(|e| KubeTlsError::Tls(e.to_string()))?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KubeTlsError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| KubeTlsError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, shared: Arc<Shared>) {
    let acceptor = TlsAcceptor::from(tls);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let sources = crate::limits::PerSource::new(MAX_CONNECTIONS_PER_SOURCE);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "Kubernetes listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(source) = sources.admit(peer.ip()) else {
            inc(&shared.metrics.kube_rejected_full);
            tracing::debug!(%peer, "too many Kubernetes connections from one address; dropping");
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            inc(&shared.metrics.kube_rejected_full);
            tracing::warn!(%peer, "Kubernetes listener full; dropping a connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared2 = shared.clone();
        let acceptor = acceptor.clone();
        shared.tasks.spawn(async move {
            let _permit = permit;
            let _source = source;
            connection(tcp, peer, acceptor, shared2).await;
        });
    }
}

async fn connection(tcp: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let handshake = tokio::time::timeout(shared.settings.handshake_timeout, acceptor.accept(tcp));
    let tls = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        h = handshake => match h {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "Kubernetes listener: TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "Kubernetes listener: TLS handshake timed out");
                return;
            }
        },
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let shared2 = shared.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let shared = shared2.clone();
        async move { Ok::<_, std::convert::Infallible>(super::proxy::handle(shared, peer, req).await) }
    });
    let io = TokioIo::new(tls);
    if h2 {
        let served = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(1000)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .serve_connection(io, service);
        let mut served = std::pin::pin!(served);
        tokio::select! {
            r = &mut served => if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "Kubernetes connection ended");
            },
            _ = shared.shutdown.cancelled() => {
                served.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(2), served).await;
            }
        }
    } else {
        let served = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(io, service)
            .with_upgrades();
        let mut served = std::pin::pin!(served);
        tokio::select! {
            r = &mut served => if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "Kubernetes connection ended");
            },
            _ = shared.shutdown.cancelled() => {
                served.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(2), served).await;
            }
        }
    }
}
