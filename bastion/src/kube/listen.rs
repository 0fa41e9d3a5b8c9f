//! The Kubernetes listener: TLS with a certificate from the bastion's CA (or one
//! the operator gives), HTTP/2 for ordinary requests and HTTP/1.1 for the
//! upgrades of `exec`, `attach` and `port-forward`.
//!
//! Which edge a request is for travels in the TLS server name
//! (`<edge>.<project>.kube.postern`, the kubeconfig's `tls-server-name`), for
//! which the bastion issues a certificate from its CA on the first handshake,
//! because kubectl drops a server URL's path on `get --raw`. With an operator's
//! certificate, the kubeconfig names the edge in the path (`/k8s/<project>/<edge>`). Handshakes run in each
//! connection's own task with a deadline; connections are capped in all and
//! per source address, so one client cannot fill the listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::Door;
use crate::pki::Pki;

/// Connections open at once on the listener, and from one source address.
pub const MAX_CONNECTIONS: usize = 4096;
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 64;
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
    pki: &Arc<Pki>,
    names: &[String],
    given: Option<(&Path, &Path)>,
) -> Result<Arc<ServerConfig>, KubeTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // A client certificate is asked for, never required: people's come from
    // `postern kube credentials` (signed for their session, see
    // `Pki::sign_user_csr`); bots send a bearer token instead.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pki.ca_der().clone())
        .map_err(|e| KubeTlsError::Tls(e.to_string()))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| KubeTlsError::Tls(e.to_string()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| KubeTlsError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier);
    let mut cfg = match given {
        Some(_) => {
            let (chain, key) = given_cert(given)?;
            builder
                .with_single_cert(chain, key)
                .map_err(|e| KubeTlsError::Tls(e.to_string()))?
        }
        None => {
            let (chain, key) = pki
                .server_cert(names)
                .map_err(|e| KubeTlsError::Tls(e.to_string()))?;
            let default = certified(&provider, chain, key)?;
            builder.with_cert_resolver(Arc::new(EdgeCerts {
                pki: pki.clone(),
                provider,
                default,
                issued: Mutex::new(HashMap::new()),
            }))
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub use postern_api::kube::{edge_of_server_name, server_name_of};

/// Edge certificates kept at once; beyond, the oldest is issued again when asked.
const MAX_ISSUED: usize = 4096;
/// An issued certificate is replaced after this long (it is valid for 90 days).
const REISSUE_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

fn certified(
    provider: &rustls::crypto::CryptoProvider,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, KubeTlsError> {
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| KubeTlsError::Tls(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

/// Certificates for edge server names, issued from the bastion's CA on demand.
struct EdgeCerts {
    pki: Arc<Pki>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    default: Arc<CertifiedKey>,
    issued: Mutex<HashMap<String, (Instant, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for EdgeCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCerts").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for EdgeCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        if edge_of_server_name(name).is_none() {
            return Some(self.default.clone());
        }
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, c)) = issued.get(name)
            && at.elapsed() < REISSUE_AFTER
        {
            return Some(c.clone());
        }
        let made = self
            .pki
            .server_cert(&[name.to_string()])
            .map_err(|e| KubeTlsError::Tls(e.to_string()))
            .and_then(|(chain, key)| certified(&self.provider, chain, key));
        match made {
            Ok(c) => {
                if issued.len() >= MAX_ISSUED {
                    issued.clear();
                }
                issued.insert(name.to_string(), (Instant::now(), c.clone()));
                Some(c)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot issue a certificate for an edge's server name");
                Some(self.default.clone())
            }
        }
    }
}

fn given_cert(
    given: Option<(&Path, &Path)>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KubeTlsError> {
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
        None => return Err(KubeTlsError::Tls("no certificate given".into())),
    };
    Ok((chain, key))
}

pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, shared: Arc<Door>) {
    let acceptor = TlsAcceptor::from(tls);
    let gate = crate::limits::Gate::new(
        "Kubernetes listener",
        MAX_CONNECTIONS,
        MAX_CONNECTIONS_PER_SOURCE,
    );
    while let Some((tcp, peer, admitted)) = gate
        .accept(
            &listener,
            &shared.shutdown,
            &shared.metrics.kube_rejected_full,
        )
        .await
    {
        let shared2 = shared.clone();
        let acceptor = acceptor.clone();
        shared.tasks.spawn(async move {
            let _admitted = admitted;
            connection(tcp, peer, acceptor, shared2).await;
        });
    }
}

async fn connection(tcp: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, shared: Arc<Door>) {
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
    // A person's certificate names their session; a node's or a replica's
    // (the same CA) names none and is ignored here.
    let session: Option<Arc<String>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::pki::user_cert_session(c).ok())
        .map(Arc::new);
    let edge: Option<Arc<(String, String)>> = tls
        .get_ref()
        .1
        .server_name()
        .and_then(edge_of_server_name)
        .map(Arc::new);
    let shared2 = shared.clone();
    let activity = Arc::new(Activity::default());
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let shared = shared2.clone();
        let edge = edge.clone();
        let session = session.clone();
        let busy = seen.start();
        async move {
            let resp = super::proxy::handle(shared, peer, edge, session, req).await;
            Ok::<_, std::convert::Infallible>(resp.map(|b| {
                http_body_util::BodyExt::boxed(Busy {
                    inner: b,
                    _busy: busy,
                })
            }))
        }
    });
    if h2 {
        // hyper waits for the HTTP/2 preface without a deadline: read it here,
        // within the handshake's bound, so a connection that sends nothing
        // after TLS does not hold a slot for ever.
        let mut tls = tls;
        let mut preface = [0u8; PREFACE.len()];
        match tokio::time::timeout(
            shared.settings.handshake_timeout,
            tls.read_exact(&mut preface),
        )
        .await
        {
            Ok(Ok(_)) if &preface[..] == PREFACE => {}
            _ => {
                tracing::debug!(%peer, "Kubernetes listener: no HTTP/2 preface in time; closing");
                return;
            }
        }
        let io = TokioIo::new(Replay {
            head: Some(bytes::Bytes::from_static(PREFACE)),
            io: tls,
        });
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
            _ = activity.idle() => {
                tracing::debug!(%peer, "Kubernetes connection idle; closing");
                served.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(2), served).await;
            }
            _ = shared.shutdown.cancelled() => {
                served.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(2), served).await;
            }
        }
    } else {
        let io = TokioIo::new(tls);
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

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream whose first bytes, already read, are given again before the rest.
struct Replay<T> {
    head: Option<bytes::Bytes>,
    io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Replay<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(head) = self.head.as_mut() {
            let n = head.len().min(buf.remaining());
            buf.put_slice(&head.split_to(n));
            if head.is_empty() {
                self.head = None;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Replay<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A connection with nothing in flight for this long is closed (GOAWAY):
/// clients open a new one when they need it, and a client that only answers
/// pings does not hold a slot for ever.
const IDLE: Duration = Duration::from_secs(120);

/// Requests in flight on one connection, and when the last one started.
#[derive(Debug, Default)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last: Mutex<Option<Instant>>,
}

/// One request in flight: it ends when its answer's body is dropped.
struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

impl Activity {
    fn start(self: &Arc<Self>) -> BusyGuard {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        BusyGuard(self.clone())
    }

    /// Resolves once nothing has been in flight for [`IDLE`].
    async fn idle(&self) {
        let since_start = Instant::now();
        loop {
            tokio::time::sleep(IDLE / 4).await;
            let last = self
                .last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or(since_start);
            if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0
                && last.elapsed() >= IDLE
            {
                return;
            }
        }
    }
}

/// An answer's body that keeps its request counted as in flight.
struct Busy {
    inner: super::KubeBody,
    _busy: BusyGuard,
}

impl hyper::body::Body for Busy {
    type Data = bytes::Bytes;
    type Error = crate::agents::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
