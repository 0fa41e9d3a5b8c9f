//! The Kubernetes gateway (`--kube-apiserver`, `--kube-credentials`): the agent
//! forwards the Kubernetes API requests the bastion sends over the channel to its
//! cluster's API server, with the gateway's own credential, impersonating the
//! user and groups the bastion names. Whatever credential or identity the client
//! put in its headers never reaches the API server: the bastion removes them,
//! and so does the gateway, which trusts only the bastion's word, carried over
//! the mutually authenticated channel.
//!
//! Ordinary requests share one HTTP/2 connection to the API server; a watch
//! (as the API server reads one: [`contract::is_watch`]) takes its own. An
//! upgrade (`exec`, `attach`, `port-forward`) takes its own HTTP/1.1
//! connection, and the bytes after the switch travel as the channel stream's
//! bodies.
//!
//! When the API server cannot be reached, the user reads a fixed text: its
//! address, and the connection or TLS error, are for operators and go to this
//! agent's log only.

mod credentials;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use postern_api::kube as contract;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;

pub use credentials::{Credentials, CredentialsError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type UpBody = UnsyncBoxBody<Bytes, BoxError>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the API server may take to answer with headers.
const HEADERS_TIMEOUT: Duration = Duration::from_secs(55);
/// Most groups the gateway passes on (the bastion sends at most a few).
const MAX_GROUPS: usize = 64;

/// One cluster's API server, as this agent reaches it.
pub struct Gateway {
    creds: Credentials,
    /// The shared HTTP/2 connection, made on first use and again after it fails.
    h2: Mutex<Option<http2::SendRequest<UpBody>>>,
    /// Ends the connection tasks when the gateway goes.
    stop: CancellationToken,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("server", &self.creds.server)
            .finish_non_exhaustive()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a user reads when this gateway cannot get an answer from its API server.
const UNREACHABLE: &str = "the edge's Kubernetes gateway could not reach its API server; an operator finds the cause in the gateway agent's log";
/// What a user reads when the API server took too long to answer.
const TIMED_OUT: &str = "the edge's Kubernetes API server did not answer in time; retry";

/// The answer to a request the API server did not answer: the cause in the log,
/// a fixed text for the user.
fn unanswered(
    gw: &Gateway,
    status: StatusCode,
    what: &str,
    cause: &dyn std::fmt::Display,
) -> Response {
    tracing::warn!(server = %gw.server(), error = %cause, "Kubernetes gateway: {what}");
    let text = if status == StatusCode::GATEWAY_TIMEOUT {
        TIMED_OUT
    } else {
        UNREACHABLE
    };
    agent_error(status, text.into())
}

fn agent_error(status: StatusCode, message: String) -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": if status == StatusCode::SERVICE_UNAVAILABLE { "ServiceUnavailable" } else { "InternalError" },
        "code": status.as_u16(),
    });
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        HeaderName::from_static(contract::HDR_AGENT_ERROR),
        HeaderValue::from_static("1"),
    );
    resp
}

impl Gateway {
    pub fn new(creds: Credentials) -> Gateway {
        Gateway {
            creds,
            h2: Mutex::new(None),
            stop: CancellationToken::new(),
        }
    }

    pub fn server(&self) -> String {
        self.creds.server.to_string()
    }

    async fn dial(&self, h2: bool) -> Result<TokioIo<TlsStream<TcpStream>>, String> {
        let c = &self.creds;
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((c.host.as_str(), c.port)),
        )
        .await
        .map_err(|_| format!("no TCP connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(if h2 {
            c.tls_h2.clone()
        } else {
            c.tls_h1.clone()
        });
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(c.server_name.clone(), tcp))
            .await
            .map_err(|_| format!("TLS handshake not done within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("TLS: {e}"))?;
        Ok(TokioIo::new(tls))
    }

    /// A sender on the shared HTTP/2 connection, dialled when there is none.
    async fn sender(&self) -> Result<http2::SendRequest<UpBody>, String> {
        let mut slot = self.h2.lock().await;
        if let Some(s) = slot.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let sender = self.connect_h2().await?;
        *slot = Some(sender.clone());
        Ok(sender)
    }

    /// A new HTTP/2 connection to the API server. Flow control is per stream
    /// and per connection: a watch whose client stops reading fills its
    /// stream's window, and enough of them would stop the whole connection, so
    /// watches each take a connection of their own and the shared one keeps a
    /// connection window many stream windows wide.
    async fn connect_h2(&self) -> Result<http2::SendRequest<UpBody>, String> {
        let io = self.dial(true).await?;
        if io.inner().get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err("the API server does not speak HTTP/2".into());
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .initial_stream_window_size(1024 * 1024)
            .initial_connection_window_size(256 * 1024 * 1024)
            .handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "connection to the Kubernetes API server ended");
                },
                _ = stop.cancelled() => {}
            }
        });
        Ok(sender)
    }

    /// The upstream request's headers: the forwardable ones the bastion sent, the
    /// gateway's credential, and the impersonation the bastion asked for.
    fn headers(&self, from: &HeaderMap) -> Result<HeaderMap, String> {
        let user = from
            .get(contract::HDR_USER)
            .and_then(|v| v.to_str().ok())
            .filter(|u| !u.is_empty() && u.len() <= 253)
            .ok_or("the bastion named no user to impersonate")?
            .to_string();
        let mut h = contract::forwardable_headers(from);
        if let Some(a) = &self.creds.authorization {
            h.insert(header::AUTHORIZATION, a.clone());
        }
        h.insert(
            HeaderName::from_static("impersonate-user"),
            HeaderValue::from_str(&user).map_err(|e| e.to_string())?,
        );
        for g in from.get_all(contract::HDR_GROUP).iter().take(MAX_GROUPS) {
            h.append(HeaderName::from_static("impersonate-group"), g.clone());
        }
        Ok(h)
    }

    fn uri(&self, rest: &str, query: Option<&str>) -> Result<http::Uri, String> {
        let base = self.creds.server.to_string();
        let base = base.trim_end_matches('/');
        let s = match query {
            Some(q) => format!("{base}{rest}?{q}"),
            None => format!("{base}{rest}"),
        };
        s.parse().map_err(|e| format!("{e}"))
    }
}

/// `ANY /v1/kube/…`: one Kubernetes request from the bastion.
pub async fn handle(
    gw: Option<Arc<Gateway>>,
    channel_ended: CancellationToken,
    req: Request,
) -> Response {
    let Some(gw) = gw else {
        return agent_error(
            StatusCode::NOT_FOUND,
            "this agent is not a Kubernetes gateway (start it with --kube-apiserver URL --kube-credentials FILE)".into(),
        );
    };
    let path = req.uri().path();
    let rest = path
        .strip_prefix(contract::AGENT_ROUTE_PREFIX)
        .unwrap_or("/");
    let rest = if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    };
    // The bastion's own reading (it caps and audits watches), so every watch
    // the API server will hold open gets its own connection.
    let watch = contract::is_watch(req.method().as_str(), &rest, req.uri().query());
    let uri = match gw.uri(&rest, req.uri().query()) {
        Ok(u) => u,
        Err(e) => return agent_error(StatusCode::BAD_REQUEST, format!("bad path: {e}")),
    };
    let mut headers = match gw.headers(req.headers()) {
        Ok(h) => h,
        Err(e) => return agent_error(StatusCode::BAD_REQUEST, e),
    };
    if let Some(upgrade) = req.headers().get(contract::HDR_UPGRADE).cloned() {
        return upgrade_request(&gw, channel_ended, req, uri, headers, upgrade).await;
    }
    // HTTP/2 takes the authority from the URI.
    headers.remove(header::HOST);
    let (parts, body) = req.into_parts();
    let built = http::Request::builder()
        .method(parts.method)
        .uri(uri)
        .body(body.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
    let mut up = match built {
        Ok(r) => r,
        Err(e) => return agent_error(StatusCode::BAD_REQUEST, format!("bad request: {e}")),
    };
    *up.headers_mut() = headers;
    let sender = if watch {
        gw.connect_h2().await
    } else {
        gw.sender().await
    };
    let mut sender = match sender {
        Ok(s) => s,
        Err(e) => {
            return unanswered(
                &gw,
                StatusCode::SERVICE_UNAVAILABLE,
                "API server unreachable",
                &e,
            );
        }
    };
    let sent = tokio::time::timeout(HEADERS_TIMEOUT, async {
        sender.ready().await?;
        sender.send_request(up).await
    })
    .await;
    let resp = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            // The connection is likely gone: the next request dials again.
            gw.h2.lock().await.take();
            return unanswered(
                &gw,
                StatusCode::BAD_GATEWAY,
                "the API server failed a request",
                &e,
            );
        }
        Err(_) => {
            return unanswered(
                &gw,
                StatusCode::GATEWAY_TIMEOUT,
                "the API server did not answer in time",
                &format!("no headers within {HEADERS_TIMEOUT:?}"),
            );
        }
    };
    let (mut parts, body) = resp.into_parts();
    contract::retain_forwardable(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

/// An upgrade, made towards the API server on its own HTTP/1.1 connection.
async fn upgrade_request(
    gw: &Gateway,
    channel_ended: CancellationToken,
    req: Request,
    uri: http::Uri,
    mut headers: HeaderMap,
    upgrade: HeaderValue,
) -> Response {
    let io = match gw.dial(false).await {
        Ok(io) => io,
        Err(e) => {
            return unanswered(
                gw,
                StatusCode::SERVICE_UNAVAILABLE,
                "API server unreachable for an upgrade",
                &e,
            );
        }
    };
    let (mut sender, conn) = match http1::handshake::<_, UpBody>(io).await {
        Ok(p) => p,
        Err(e) => {
            return unanswered(
                gw,
                StatusCode::BAD_GATEWAY,
                "HTTP/1.1 handshake with the API server failed",
                &e,
            );
        }
    };
    let stop = gw.stop.clone();
    let ended = channel_ended.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = conn.with_upgrades() => {}
            _ = stop.cancelled() => {}
            _ = ended.cancelled() => {}
        }
    });
    if let Some(a) = uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        headers.insert(header::HOST, v);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, upgrade.clone());
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let (parts, from_bastion) = req.into_parts();
    let built = http::Request::builder()
        .method(parts.method)
        .uri(path_and_query)
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
    let mut up = match built {
        Ok(r) => r,
        Err(e) => return agent_error(StatusCode::BAD_REQUEST, format!("bad request: {e}")),
    };
    *up.headers_mut() = headers;
    let resp = match tokio::time::timeout(HEADERS_TIMEOUT, sender.send_request(up)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return unanswered(
                gw,
                StatusCode::BAD_GATEWAY,
                "the API server failed an upgrade",
                &e,
            );
        }
        Err(_) => {
            return unanswered(
                gw,
                StatusCode::GATEWAY_TIMEOUT,
                "the API server did not answer an upgrade in time",
                &format!("no answer within {HEADERS_TIMEOUT:?}"),
            );
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        contract::retain_forwardable(&mut parts.headers);
        return Response::from_parts(parts, Body::new(body));
    }
    let switched = resp
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or(upgrade);
    let mut head = resp.headers().clone();
    contract::retain_forwardable(&mut head);
    let upgraded = match tokio::time::timeout(CONNECT_TIMEOUT, hyper::upgrade::on(resp)).await {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            return unanswered(
                gw,
                StatusCode::BAD_GATEWAY,
                "the API server's upgraded connection failed",
                &e,
            );
        }
        Err(_) => {
            return unanswered(
                gw,
                StatusCode::BAD_GATEWAY,
                "the API server's upgraded connection failed",
                &format!("not upgraded within {CONNECT_TIMEOUT:?}"),
            );
        }
    };
    let (rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
    // Bastion → API server, until the bastion ends its body or the channel ends.
    tokio::spawn(async move {
        let mut body = from_bastion;
        let pump = async {
            let mut n = 0u64;
            let end = loop {
                match body.frame().await {
                    None => break "the bastion ended the stream".to_string(),
                    Some(Err(e)) => break format!("the bastion's side failed: {e}"),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            n += data.len() as u64;
                            if let Err(e) = wr.write_all(&data).await {
                                break format!("the API server stopped reading: {e}");
                            }
                        }
                    }
                }
            };
            tracing::debug!(bytes = n, %end, "Kubernetes upgrade: bastion to API server ended");
            let _ = wr.shutdown().await;
        };
        tokio::select! {
            _ = pump => {}
            _ = channel_ended.cancelled() => {}
        }
    });
    let mut out = Response::new(Body::from_stream(ReaderStream::with_capacity(
        rd,
        32 * 1024,
    )));
    *out.status_mut() = StatusCode::OK;
    *out.headers_mut() = head;
    out.headers_mut()
        .insert(HeaderName::from_static(contract::HDR_SWITCHED), switched);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_bastion_names_the_identity_and_nothing_the_client_sent_survives() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("kubeconfig");
        let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.cert.pem()).unwrap();
        std::fs::write(
            &cfg,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: ca.crt\ncontexts:\n- name: c\n  context:\n    cluster: k\n    user: gw\nusers:\n- name: gw\n  user:\n    token: s3cret\n",
        )
        .unwrap();
        let gw = Gateway::new(Credentials::load(&cfg, None).unwrap());
        let mut from = HeaderMap::new();
        from.insert("authorization", HeaderValue::from_static("Bearer stolen"));
        from.insert("impersonate-user", HeaderValue::from_static("system:admin"));
        from.append(
            "impersonate-group",
            HeaderValue::from_static("system:masters"),
        );
        from.insert(contract::HDR_USER, HeaderValue::from_static("alice"));
        from.append(
            contract::HDR_GROUP,
            HeaderValue::from_static("postern:read_only"),
        );
        from.insert("accept", HeaderValue::from_static("application/json"));
        let h = gw.headers(&from).unwrap();
        assert_eq!(h.get("authorization").unwrap(), "Bearer s3cret");
        assert_eq!(h.get("impersonate-user").unwrap(), "alice");
        let groups: Vec<_> = h.get_all("impersonate-group").iter().collect();
        assert_eq!(groups, vec!["postern:read_only"]);
        assert!(h.get(contract::HDR_USER).is_none());
        assert_eq!(h.get("accept").unwrap(), "application/json");
        // No user named: refused, never forwarded as the gateway itself.
        from.remove(contract::HDR_USER);
        assert!(gw.headers(&from).is_err());
    }

    #[test]
    fn kubeconfigs_the_gateway_cannot_honour_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("kubeconfig");
        std::fs::write(
            &cfg,
            "clusters:\n- name: k\n  cluster:\n    server: https://h:6443\n    insecure-skip-tls-verify: true\ncontexts:\n- name: c\n  context:\n    cluster: k\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n",
        )
        .unwrap();
        let e = Credentials::load(&cfg, None).unwrap_err().to_string();
        assert!(e.contains("insecure-skip-tls-verify"), "{e}");
        std::fs::write(&cfg, "not: [a kubeconfig").unwrap();
        assert!(Credentials::load(&cfg, None).is_err());
    }
}
