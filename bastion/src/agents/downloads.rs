//! `GET`/`HEAD` of the install script and the agent packages on the agent port,
//! served on the unauthenticated HTTP/1.1 connections that enrollment uses.
//!
//! Downloads share enrollment's pool and its per-source limit (the connection
//! takes its place there at the handshake, before its request says what it
//! wants), and a package download also needs one of a quarter of that pool's
//! places, held until its body is written: slow downloads can hold at most a
//! quarter of the pool for long, and the rest still turns over every few
//! seconds for enrollments. The script is a few KiB and needs no extra place.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use postern_api::ErrorBody;
use postern_api::agent::{INSTALL_SCRIPT_PATH, PACKAGES_PATH};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::audit::Event;
use crate::metrics::inc;
use crate::state::Shared;

/// A package download has this long, plus one second per 64 KiB: a node on a
/// link slower than that retries (curl --retry) rather than hold a place.
const DOWNLOAD_BASE: Duration = Duration::from_secs(60);
const DOWNLOAD_RATE: u64 = 64 * 1024;

/// The places package downloads may take, of an enrollment pool of `pool`.
pub(super) fn pool_size(pool: usize) -> usize {
    (pool / 4).max(1)
}

/// Whether `path` is one of the download routes (any method).
pub(super) fn is_download(path: &str) -> bool {
    path == INSTALL_SCRIPT_PATH || path.starts_with(PACKAGES_PATH)
}

/// One unauthenticated HTTP/1.1 connection's deadline, which a package download
/// moves, and the download's place, kept until the connection ends, that is
/// after the whole body was written (one request per connection).
#[derive(Debug)]
pub(super) struct Conn {
    deadline: Mutex<Instant>,
    place: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Conn {
    pub(super) fn new(deadline: Instant) -> Conn {
        Conn {
            deadline: Mutex::new(deadline),
            place: Mutex::new(None),
        }
    }

    pub(super) fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the deadline forward to `at` at the latest (shutdown).
    pub(super) fn cut_at(&self, at: Instant) {
        let mut d = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        *d = (*d).min(at);
    }

    fn hold(&self, place: OwnedSemaphorePermit, deadline: Instant) {
        *self.place.lock().unwrap_or_else(|e| e.into_inner()) = Some(place);
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn error(status: StatusCode, code: &str, message: String) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&ErrorBody::new(code, message)).unwrap_or_default();
    reply(status, "application/json", Bytes::from(body))
}

/// Answers a request on a download route.
pub(super) fn respond(
    method: &Method,
    path: &str,
    peer: SocketAddr,
    shared: &Shared,
    pool: &Arc<Semaphore>,
    conn: &Conn,
) -> Response<Full<Bytes>> {
    let refused = |r: Response<Full<Bytes>>| {
        inc(&shared.metrics.agent_downloads_refused);
        r
    };
    if method != Method::GET && method != Method::HEAD {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} is read with GET (or HEAD) only"),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return refused(r);
    }
    let Some(packages) = shared.settings.agent_packages.as_deref() else {
        return refused(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this bastion serves no agent package (see its --agent-package): install postern-agent \
             by hand and run the join command"
                .into(),
        ));
    };
    let (name, body, content_type, sha256) = if path == INSTALL_SCRIPT_PATH {
        (
            "install.sh".to_string(),
            packages.script().clone(),
            "text/x-shellscript; charset=utf-8",
            None,
        )
    } else {
        let name = path.strip_prefix(PACKAGES_PATH).unwrap_or_default();
        let Some(p) = packages.by_name(name) else {
            return refused(error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no agent package {:?} here; {INSTALL_SCRIPT_PATH} names the ones served",
                    postern_api::validate::peer_line(name, 100)
                ),
            ));
        };
        let busy = || {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "too many agent downloads at once on this bastion; retry in a few seconds".into(),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            refused(r)
        };
        if shared.shutdown.is_cancelled() {
            return busy();
        }
        let Ok(place) = pool.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many agent downloads at once; refusing this one");
            return busy();
        };
        let secs = p.bytes.len() as u64 / DOWNLOAD_RATE;
        conn.hold(
            place,
            Instant::now() + DOWNLOAD_BASE + Duration::from_secs(secs),
        );
        (
            p.file_name.clone(),
            p.bytes.clone(),
            "application/vnd.debian.binary-package",
            Some(p.sha256.clone()),
        )
    };
    inc(&shared.metrics.agent_downloads);
    if method == Method::GET {
        // Unauthenticated: through the bounded queue, as SSH refusals are.
        shared.audit_queue.push(
            Event::new("agent.download", "ok")
                .source(Some(peer.ip().to_string()))
                .target(name)
                .detail(json!({ "bytes": body.len(), "sha256": sha256 })),
        );
    }
    // For HEAD, hyper sends the headers (with the length) and no body.
    reply(StatusCode::OK, content_type, body)
}
