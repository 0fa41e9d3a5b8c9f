//! The peer port: the door other replicas of the deployment come in by. A
//! peer sends an agent request for a node whose channel this replica holds,
//! with the node named in a header; it is checked and forwarded onto the
//! node's channel here (`Fleet::forward_local`). Mutual TLS with the
//! deployment's CA: only a certificate naming a replica comes in (a node's is
//! refused). The dialling side is `replicas::peers`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use postern_api::agent::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::link::{AgentBody, NODE_HEADER, PEER_ERROR_HEADER, full};
use crate::metrics::inc;
use crate::pki::replica_name_of;
use crate::replicas::peers::{
    ALPN_PEER, MAX_PEER_CONNECTIONS, PEER_CONNECTIONS_PER_SOURCE, PEER_HANDSHAKE,
};
use crate::state::Shared;

/// Accepts peer connections until shutdown. Each handshake runs in its own task
/// under the handshake deadline, so a stalled peer delays no one.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let Some(r) = shared.fleet.replicas().cloned() else {
        return;
    };
    let acceptor = TlsAcceptor::from(r.peers.server_config());
    let gate = crate::limits::Gate::new(
        "peer port",
        MAX_PEER_CONNECTIONS,
        PEER_CONNECTIONS_PER_SOURCE,
    );
    while let Some((tcp, peer, admitted)) = gate
        .accept(&listener, &shared.shutdown, &shared.metrics.peer_refused)
        .await
    {
        let shared2 = shared.clone();
        let acceptor = acceptor.clone();
        shared.tasks.spawn(async move {
            let _admitted = admitted;
            handle(tcp, peer, acceptor, shared2).await;
        });
    }
}

async fn handle(tcp: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let Some(r) = shared.fleet.replicas().cloned() else {
        return;
    };
    let within = shared.settings.handshake_timeout.min(PEER_HANDSHAKE);
    let handshake = tokio::time::timeout(within, acceptor.accept(tcp));
    let tls = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        h = handshake => match h {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                inc(&shared.metrics.peer_refused);
                tracing::debug!(%peer, error = %e, "peer TLS handshake failed");
                return;
            }
            Err(_) => {
                inc(&shared.metrics.peer_refused);
                tracing::debug!(%peer, "peer TLS handshake timed out");
                return;
            }
        },
    };
    let (_, conn) = tls.get_ref();
    let name = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| replica_name_of(c));
    let name = match (conn.alpn_protocol(), name) {
        (Some(ALPN_PEER), Some(Ok(name))) => name,
        (_, Some(Err(e))) => {
            inc(&shared.metrics.peer_refused);
            tracing::warn!(%peer, error = %e, "peer port: refusing a certificate that is not a replica's");
            return;
        }
        _ => {
            inc(&shared.metrics.peer_refused);
            tracing::debug!(%peer, "peer port: wrong protocol; closing");
            return;
        }
    };
    tracing::debug!(%peer, replica = %name, "peer connection accepted");
    r.peers.connections_in.fetch_add(1, Ordering::Relaxed);
    let shared2 = shared.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared2.clone();
        async move { Ok::<_, std::convert::Infallible>(route(&shared, req).await) }
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(100_000)
        .keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .serve_connection(TokioIo::new(tls), service);
    let mut served = std::pin::pin!(served);
    tokio::select! {
        r = &mut served => if let Err(e) = r {
            tracing::debug!(%peer, error = %e, "peer connection ended");
        },
        _ = shared.shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), served).await;
        }
    }
    r.peers.connections_in.fetch_sub(1, Ordering::Relaxed);
}

/// One routed request: checked, then forwarded to the node's channel here.
async fn route(shared: &Shared, mut req: Request<Incoming>) -> Response<AgentBody> {
    let bad = |text: &str| {
        let mut resp = Response::new(full(text.to_string()));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        resp.headers_mut()
            .insert(PEER_ERROR_HEADER, HeaderValue::from_static("1"));
        resp
    };
    let node = match req.headers_mut().remove(NODE_HEADER) {
        Some(v) if v.len() <= 128 => match v.to_str() {
            Ok(s) => s.to_string(),
            Err(_) => return bad("the node header is not text"),
        },
        _ => return bad("a routed request names its node in the postern-node header"),
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if !path.starts_with("/v1/") {
        return bad("only agent routes (/v1/…) are routed");
    }
    match format!("http://agent{path}").parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return bad("bad path"),
    }
    if let Some(r) = shared.fleet.replicas() {
        inc(&r.routed_in);
    }
    shared.fleet.forward_local(&node, req).await
}
