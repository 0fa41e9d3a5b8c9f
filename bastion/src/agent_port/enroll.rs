//! Enrollment: `POST /agent/v1/enroll` over server-authenticated TLS on the agent
//! port. A valid token and a CSR get a node record and a short-lived client
//! certificate; every refusal leaves no node record and is audited. The same
//! connections also serve the install script and agent packages (`downloads`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use postern_api::agent::{
    ENROLL_MAX_BODY, ENROLL_PATH, EnrollRequest, EnrollResponse, INSTALL_SCRIPT_PATH, PACKAGES_PATH,
};
use postern_api::{ErrorBody, PROTOCOL_VERSION, validate};
use serde_json::json;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::downloads;

use crate::audit::Event;
use crate::clock::now_ms;
use crate::metrics::inc;
use crate::secrets::{parse_token, secret_matches};
use crate::state::Shared;
use crate::store::{EnrollOutcome, NewNode, StoreError};

/// Enrollment tokens look like `pet_<id>_<secret>`.
pub use postern_api::agent::ENROLL_TOKEN_PREFIX as TOKEN_PREFIX;

#[derive(Debug, Error)]
pub enum EnrollError {
    #[error("{0}")]
    BadRequest(String),
    #[error("enrollment token refused: {0}")]
    Token(&'static str),
    #[error(
        "a node named {hostname:?} already exists in edge {edge:?}: delete it first or join with another --hostname"
    )]
    HostnameTaken { hostname: String, edge: String },
    #[error("internal error; see the bastion's log")]
    Internal(String),
}

impl EnrollError {
    fn status(&self) -> StatusCode {
        match self {
            EnrollError::BadRequest(_) => StatusCode::BAD_REQUEST,
            EnrollError::Token(_) => StatusCode::UNAUTHORIZED,
            EnrollError::HostnameTaken { .. } => StatusCode::CONFLICT,
            EnrollError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            EnrollError::BadRequest(_) => "bad_request",
            EnrollError::Token(_) => "unauthorized",
            EnrollError::HostnameTaken { .. } => "conflict",
            EnrollError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for EnrollError {
    fn from(e: StoreError) -> Self {
        EnrollError::Internal(e.to_string())
    }
}

/// How long an enrollment connection may take in all: a real enrollment is a
/// few KiB sent at once; a trickle holds a place in the pool for at most this.
const ENROLL_DEADLINE: Duration = Duration::from_secs(10);

/// Serves one unauthenticated HTTP/1.1 connection: one request (an enrollment,
/// or a download of the install script or an agent package), strict deadlines.
pub(super) async fn serve(
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    downloads: Arc<downloads::Places>,
) {
    let conn_state = Arc::new(downloads::Conn::new(Instant::now() + ENROLL_DEADLINE));
    let svc = hyper::service::service_fn({
        let shared = shared.clone();
        let conn_state = conn_state.clone();
        move |req| {
            let shared = shared.clone();
            let downloads = downloads.clone();
            let conn_state = conn_state.clone();
            async move { Ok::<_, Infallible>(handle(req, peer, &shared, &downloads, &conn_state).await) }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(false)
        .max_buf_size(64 * 1024)
        .serve_connection(
            TokioIo::new(downloads::counted(tls, conn_state.clone())),
            svc,
        );
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    // A package download moves the deadline while the connection runs, and
    // is dropped when it stops making progress.
    loop {
        let until = conn_state.deadline();
        tokio::select! {
            _ = &mut conn => return,
            _ = tokio::time::sleep_until(until) => {
                if conn_state.expired(Instant::now()) {
                    tracing::debug!(%peer, "unauthenticated connection ended: past its deadline, or a download that stopped moving");
                    return;
                }
            }
            _ = shared.shutdown.cancelled(), if !draining => {
                draining = true;
                conn_state.cut_at(Instant::now() + ENROLL_DEADLINE);
            }
        }
    }
}

/// Answers 503 to an enrollment that found the enrollment pool full, so the
/// joining agent says why and retries instead of seeing a dropped connection.
pub(super) async fn serve_busy(tls: TlsStream<TcpStream>) {
    let svc = hyper::service::service_fn(|_req| async {
        let body = ErrorBody::new(
            "unavailable",
            "too many enrollments at once on this bastion; retry in a few seconds",
        );
        let mut r = reply(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::to_vec(&body).unwrap_or_default(),
        );
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("5"),
        );
        Ok::<_, Infallible>(r)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .keep_alive(false)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tls), svc);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
    downloads: &downloads::Places,
    conn: &downloads::Conn,
) -> Response<Full<Bytes>> {
    if downloads::is_download(req.uri().path()) {
        return downloads::respond(
            req.method(),
            req.uri().path(),
            peer,
            shared,
            downloads,
            conn,
        );
    }
    if req.method() != Method::POST || req.uri().path() != ENROLL_PATH {
        let body = ErrorBody::new(
            "not_found",
            format!(
                "only POST {ENROLL_PATH}, GET {INSTALL_SCRIPT_PATH} and GET {PACKAGES_PATH}<file> \
                 are served here without a client certificate"
            ),
        );
        return reply(
            StatusCode::NOT_FOUND,
            serde_json::to_vec(&body).unwrap_or_default(),
        );
    }
    let bytes = match Limited::new(req.into_body(), ENROLL_MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let body = ErrorBody::new(
                "payload_too_large",
                format!("enrollment request larger than {ENROLL_MAX_BODY} bytes"),
            );
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::to_vec(&body).unwrap_or_default(),
            );
        }
    };
    let result = match serde_json::from_slice::<EnrollRequest>(&bytes) {
        Ok(r) => enroll(shared, &r, Some(peer.ip().to_string())).await,
        Err(e) => Err(EnrollError::BadRequest(format!(
            "malformed enrollment request: {e}"
        ))),
    };
    match result {
        Ok(resp) => reply(
            StatusCode::OK,
            serde_json::to_vec(&resp).unwrap_or_default(),
        ),
        Err(e) => {
            inc(&shared.metrics.enrollment_failures);
            if let EnrollError::Internal(detail) = &e {
                tracing::error!(%peer, error = %detail, "enrollment failed");
            }
            let body = ErrorBody::new(e.code(), e.to_string());
            reply(e.status(), serde_json::to_vec(&body).unwrap_or_default())
        }
    }
}

/// Checks the token, signs the CSR and records the node. Public so tests and the
/// `dev` command can enroll in process.
pub async fn enroll(
    shared: &Shared,
    req: &EnrollRequest,
    source_ip: Option<String>,
) -> Result<EnrollResponse, EnrollError> {
    let deny = |reason: &'static str, org: Option<String>| {
        let mut ev = Event::new("node.enroll", "denied")
            .source(source_ip.clone())
            .target(req.hostname.chars().take(253).collect::<String>())
            .detail(json!({ "reason": reason }));
        ev.org_id = org;
        ev
    };
    if req.protocol != PROTOCOL_VERSION {
        return Err(EnrollError::BadRequest(format!(
            "agent speaks protocol {}, this bastion speaks {PROTOCOL_VERSION}: install the matching postern-agent",
            req.protocol
        )));
    }
    validate::node_hostname(&req.hostname).map_err(|e| EnrollError::BadRequest(e.to_string()))?;
    let Some((token_id, secret)) = parse_token(TOKEN_PREFIX, &req.token) else {
        shared.audit.batched(deny("malformed token", None)).await;
        return Err(EnrollError::Token(
            "it is not a Postern enrollment token (expected pet_…)",
        ));
    };
    let now = now_ms();
    let token = shared.store.enrollment_token(token_id).await?;
    let Some(token) = token.filter(|t| secret_matches(secret, &t.secret_hash)) else {
        shared.audit.batched(deny("unknown token", None)).await;
        return Err(EnrollError::Token(
            "unknown or wrong token; create a new one with the admin API",
        ));
    };
    let edge = shared
        .store
        .edge_by_id(&token.edge_id)
        .await?
        .ok_or_else(|| EnrollError::Internal("token of a missing edge".into()))?;
    let project = shared
        .store
        .project_by_id(&edge.project_id)
        .await?
        .ok_or_else(|| EnrollError::Internal("edge of a missing project".into()))?;
    let org = Some(project.org_id.clone());
    let why = if token.revoked_at.is_some() {
        Some(("revoked", "the token was revoked"))
    } else if token.expires_at <= now {
        Some(("expired", "the token has expired; create a new one"))
    } else if token.uses >= token.max_uses {
        Some((
            "used up",
            "the token has been used as many times as allowed; create a new one",
        ))
    } else {
        None
    };
    if let Some((reason, msg)) = why {
        shared
            .audit
            .batched(deny(reason, org).project(&project.name))
            .await;
        return Err(EnrollError::Token(msg));
    }

    let node_id = crate::store::new_id();
    let issued = shared
        .pki
        .sign_node_csr(&req.csr_pem, &node_id)
        .map_err(|e| EnrollError::BadRequest(e.to_string()))?;
    let outcome = shared
        .store
        .enroll_node(
            &NewNode {
                id: &node_id,
                token_id: &token.id,
                edge_id: &edge.id,
                hostname: &req.hostname,
                agent_version: &postern_api::validate::peer_line(&req.agent_version, 64),
                auto_approve: token.auto_approve,
                cert_serial: &issued.serial,
                cert_expires_at: issued.not_after_ms,
            },
            now,
        )
        .await?;
    let node = match outcome {
        EnrollOutcome::Enrolled(n) => n,
        EnrollOutcome::TokenExhausted => {
            shared
                .audit
                .batched(deny("used up", org).project(&project.name))
                .await;
            return Err(EnrollError::Token(
                "the token has expired or been used up; create a new one",
            ));
        }
        EnrollOutcome::HostnameTaken => {
            shared
                .audit
                .batched(deny("hostname taken", org).project(&project.name))
                .await;
            return Err(EnrollError::HostnameTaken {
                hostname: req.hostname.clone(),
                edge: edge.name,
            });
        }
    };
    inc(&shared.metrics.enrollments);
    shared
        .audit
        .batched(
            Event::new("node.enroll", "ok")
                .org(&project.org_id)
                .source(source_ip.clone())
                .project(&project.name)
                .target(&node.hostname)
                .detail(json!({
                    "node_id": node.id, "edge": edge.name, "state": node.state.as_str(),
                    "token_id": token.id, "auto_approved": token.auto_approve,
                })),
        )
        .await;
    shared.audit.batched(
            Event::new("cert.issue", "ok")
                .org(&project.org_id)
                .source(source_ip)
                .project(&project.name)
                .target(&node.hostname)
                .detail(json!({ "node_id": node.id, "serial": issued.serial, "not_after_ms": issued.not_after_ms })),
        )
        .await;
    Ok(EnrollResponse {
        node_id: node.id,
        state: node.state,
        cert_pem: issued.cert_pem,
        ca_pem: shared.pki.ca_pem().to_string(),
    })
}
