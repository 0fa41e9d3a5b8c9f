//! Joining a bastion: make a key on the node, send a CSR with the enrollment token
//! over TLS that is pinned to the CA hash from the join command, and keep the
//! certificate. Each failure says what went wrong and what to do.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use postern_api::agent::{ENROLL_PATH, EnrollRequest, EnrollResponse, parse_ca_hash};
use postern_api::{ErrorBody, PROTOCOL_VERSION, validate};
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::identity::{Credentials, Identity, IdentityError, Meta, make_csr};
use crate::tls::{cert_der, enroll_config, sha256};

#[derive(Debug, Error)]
pub enum EnrollError {
    #[error("{0}")]
    BadArgument(String),
    #[error(
        "cannot reach the bastion at {url}: {detail} (is it running, and is --controller right?)"
    )]
    Unreachable { url: String, detail: String },
    #[error(
        "the bastion at {0} presented a CA that does not match --ca-hash: refusing to trust it (check the join command, or someone is in the middle)"
    )]
    CaMismatch(String),
    #[error("TLS with the bastion at {url} failed: {detail}")]
    Tls { url: String, detail: String },
    #[error("the bastion refused the enrollment ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("the bastion's answer was not understood: {0}")]
    Protocol(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Where the bastion's agent port is, parsed from `https://host[:port]`.
#[derive(Debug, Clone)]
pub struct Controller {
    pub url: String,
    pub host: String,
    pub port: u16,
}

impl Controller {
    pub fn parse(url: &str) -> Result<Controller, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("controller URL {url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("controller URL {url:?} must start with https://"));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("controller URL {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Controller {
            url: url.trim_end_matches('/').to_string(),
            host,
            port: uri.port_u16().unwrap_or(443),
        })
    }

    pub fn server_name(&self) -> Result<ServerName<'static>, String> {
        ServerName::try_from(self.host.clone())
            .map_err(|e| format!("bad controller host {:?}: {e}", self.host))
    }

    /// TCP connect with a deadline.
    pub async fn connect_tcp(&self, timeout: Duration) -> Result<TcpStream, String> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub controller: String,
    pub token: String,
    pub ca_hash: String,
    pub hostname: String,
    /// Where to keep the identity; `None` keeps it in memory only (the swarm).
    pub data_dir: Option<PathBuf>,
}

const TIMEOUT: Duration = Duration::from_secs(20);
/// Retries of an enrollment the bastion answered 503 (busy): about two minutes.
const BUSY_RETRIES: u32 = 10;

/// Enrolls and returns the new identity (saved to `data_dir` when given).
pub async fn join(req: &JoinRequest) -> Result<Arc<Identity>, EnrollError> {
    let pin = parse_ca_hash(&req.ca_hash).map_err(EnrollError::BadArgument)?;
    validate::hostname(&req.hostname).map_err(|e| EnrollError::BadArgument(e.to_string()))?;
    let controller = Controller::parse(&req.controller).map_err(EnrollError::BadArgument)?;
    if let Some(dir) = &req.data_dir
        && Identity::is_enrolled(dir)
    {
        let existing = Identity::load(dir)?;
        return Err(IdentityError::AlreadyEnrolled(
            dir.display().to_string(),
            existing.meta.node_id.clone(),
        )
        .into());
    }

    let (key_pem, csr_pem) = make_csr(&req.hostname)?;
    let body = serde_json::to_vec(&EnrollRequest {
        protocol: PROTOCOL_VERSION,
        token: req.token.clone(),
        hostname: req.hostname.clone(),
        csr_pem,
        agent_version: postern_api::VERSION.to_string(),
    })
    .map_err(|e| EnrollError::Protocol(e.to_string()))?;

    // A bastion whose enrollment pool is full (or whose database is busy) says
    // 503: nothing was used up, so the same request is sent again, with backoff
    // and jitter, for up to about two minutes.
    let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
    let mut attempt = 0u32;
    let (status, answer) = loop {
        let (status, answer) = tokio::time::timeout(TIMEOUT, post(&controller, pin, body.clone()))
            .await
            .map_err(|_| EnrollError::Unreachable {
                url: controller.url.clone(),
                detail: format!("no answer within {TIMEOUT:?}"),
            })??;
        if status != StatusCode::SERVICE_UNAVAILABLE || attempt >= BUSY_RETRIES {
            break (status, answer);
        }
        attempt += 1;
        // At least a second: the pool frees as others finish, not at once.
        let wait = backoff.next_delay().max(Duration::from_secs(1));
        tracing::info!(
            attempt,
            ?wait,
            "the bastion is busy enrolling others; retrying"
        );
        tokio::time::sleep(wait).await;
    };
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&answer)
            .map(|e| e.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&answer).chars().take(300).collect());
        return Err(EnrollError::Refused { status, message });
    }
    let resp: EnrollResponse =
        serde_json::from_slice(&answer).map_err(|e| EnrollError::Protocol(e.to_string()))?;
    // The CA we keep must be the one we pinned, not merely one the server sent.
    if sha256(&cert_der(&resp.ca_pem)?) != pin {
        return Err(EnrollError::CaMismatch(controller.url.clone()));
    }
    crate::tls::check_cert_matches(&resp.cert_pem, &key_pem, &resp.ca_pem)?;
    let identity = Identity::new(
        Meta {
            node_id: resp.node_id,
            hostname: req.hostname.clone(),
            controller: controller.url.clone(),
            ca_hash: req.ca_hash.clone(),
        },
        resp.ca_pem,
        Credentials {
            key_pem,
            cert_pem: resp.cert_pem,
        },
        req.data_dir.clone(),
    );
    identity.save()?;
    Ok(identity)
}

async fn post(
    controller: &Controller,
    pin: [u8; 32],
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), EnrollError> {
    let unreachable = |detail: String| EnrollError::Unreachable {
        url: controller.url.clone(),
        detail,
    };
    let (cfg, verifier) = enroll_config(pin)?;
    let tcp = controller
        .connect_tcp(Duration::from_secs(10))
        .await
        .map_err(unreachable)?;
    let name = controller.server_name().map_err(EnrollError::BadArgument)?;
    let tls: TlsStream<TcpStream> = match TlsConnector::from(cfg).connect(name, tcp).await {
        Ok(t) => t,
        Err(_) if verifier.mismatch.load(Ordering::Relaxed) => {
            return Err(EnrollError::CaMismatch(controller.url.clone()));
        }
        Err(e) => {
            return Err(EnrollError::Tls {
                url: controller.url.clone(),
                detail: e.to_string(),
            });
        }
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let request = Request::post(ENROLL_PATH)
        .header(http::header::HOST, controller.host.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| EnrollError::Protocol(e.to_string()))?;
    let resp = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| EnrollError::Protocol(e.to_string()))?
        .to_bytes();
    driver.abort();
    Ok((status, bytes))
}
