//! `GET`/`HEAD` of the install script and the agent packages on the agent port,
//! served on the unauthenticated HTTP/1.1 connections that enrollment uses.
//!
//! Downloads share enrollment's pool and its per-source limit (the connection
//! takes its place there at the handshake, before its request says what it
//! wants), and a package download also needs one of a quarter of that pool's
//! places, of which one source address holds at most `PLACES_PER_SOURCE`. A
//! place is held against progress, not for a fixed time: a download that moved
//! less than `MIN_PROGRESS` in a `PROGRESS_WINDOW` is dropped (a client that
//! reads nothing frees its place within two windows, once the socket buffers
//! are full), and every download still ends by its total deadline. So slow
//! downloads can hold at most a quarter of the pool, a few sources cannot hold
//! all of that, and the rest still turns over every few seconds for
//! enrollments. The script is a few KiB and needs no extra place.
//!
//! Downloads are audited per source and window (see `audit::queue`), not one
//! entry per request: they are unauthenticated, and anyone could otherwise grow
//! the audit log at the rate of TLS handshakes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use postern_api::ErrorBody;
use postern_api::agent::{INSTALL_SCRIPT_PATH, PACKAGES_PATH};
use serde_json::json;
use tokio::io::AsyncWrite;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::limits::{PerSource, SourceGuard};
use crate::metrics::inc;
use crate::state::Shared;

/// A package download has this long, plus one second per 64 KiB: a node on a
/// link slower than that retries (curl --retry) rather than hold a place.
const DOWNLOAD_BASE: Duration = Duration::from_secs(60);
const DOWNLOAD_RATE: u64 = 64 * 1024;

/// A package download that moved less than this in the last `PROGRESS_WINDOW`
/// loses its place: a client that stops reading cannot keep it to the end of
/// its deadline (which needs 64 KiB/s on average anyway).
const MIN_PROGRESS: u64 = 64 * 1024;
const PROGRESS_WINDOW: Duration = Duration::from_secs(10);
/// Package downloads at once from one source address (IPv6 by /64): a few
/// addresses cannot hold every place, and a site behind one NAT address still
/// installs two nodes at a time (the others are told to retry in 5 s).
const PLACES_PER_SOURCE: usize = 2;

/// The places package downloads may take, of an enrollment pool of `pool`.
fn pool_size(pool: usize) -> usize {
    (pool / 4).max(1)
}

/// Package downloads' places: a quarter of the enrollment pool, at most
/// `PLACES_PER_SOURCE` of them per source.
#[derive(Debug)]
pub(super) struct Places {
    all: Arc<Semaphore>,
    sources: PerSource,
}

/// One download's place, given back when dropped.
#[derive(Debug)]
struct Place {
    _all: OwnedSemaphorePermit,
    _source: SourceGuard,
}

impl Places {
    /// The places for an enrollment pool of `enrollments`.
    pub(super) fn new(enrollments: usize) -> Places {
        Places {
            all: Arc::new(Semaphore::new(pool_size(enrollments))),
            sources: PerSource::new(PLACES_PER_SOURCE),
        }
    }

    fn take(&self, peer: SocketAddr) -> Option<Place> {
        let source = self.sources.admit(peer.ip())?;
        let all = self.all.clone().try_acquire_owned().ok()?;
        Some(Place {
            _all: all,
            _source: source,
        })
    }
}

/// Whether `path` is one of the download routes (any method).
pub(super) fn is_download(path: &str) -> bool {
    path == INSTALL_SCRIPT_PATH || path.starts_with(PACKAGES_PATH)
}

/// One unauthenticated HTTP/1.1 connection's deadline, which a package download
/// moves, the download's place, kept until the connection ends, that is after
/// the whole body was written (one request per connection), and the bytes
/// written so far, against which the place is held.
#[derive(Debug)]
pub(super) struct Conn {
    deadline: Mutex<Instant>,
    place: Mutex<Option<Place>>,
    /// Bytes of the answer the TLS layer took (see [`counted`]).
    written: AtomicU64,
    /// While a download holds a place: when its progress is looked at next,
    /// and `written` as of the last look.
    progress: Mutex<Option<(Instant, u64)>>,
}

impl Conn {
    pub(super) fn new(deadline: Instant) -> Conn {
        Conn {
            deadline: Mutex::new(deadline),
            place: Mutex::new(None),
            written: AtomicU64::new(0),
            progress: Mutex::new(None),
        }
    }

    /// When to look at the connection next ([`Conn::expired`]): its deadline,
    /// or before it the next look at a download's progress.
    pub(super) fn deadline(&self) -> Instant {
        let deadline = *self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        match *self.progress.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((next, _)) => next.min(deadline),
            None => deadline,
        }
    }

    /// Whether the connection must end now: its deadline passed, or it holds
    /// a download place and moved less than `MIN_PROGRESS` in the window that
    /// ended (then the next window starts).
    pub(super) fn expired(&self, now: Instant) -> bool {
        if *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) <= now {
            return true;
        }
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let Some((next, seen)) = *progress else {
            return false;
        };
        if now < next {
            return false;
        }
        let written = self.written.load(Ordering::Relaxed);
        if written.saturating_sub(seen) < MIN_PROGRESS {
            return true;
        }
        *progress = Some((now + PROGRESS_WINDOW, written));
        false
    }

    /// Brings the deadline forward to `at` at the latest (shutdown).
    pub(super) fn cut_at(&self, at: Instant) {
        let mut d = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        *d = (*d).min(at);
    }

    fn hold(&self, place: Place, deadline: Instant) {
        *self.place.lock().unwrap_or_else(|e| e.into_inner()) = Some(place);
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some((
            Instant::now() + PROGRESS_WINDOW,
            self.written.load(Ordering::Relaxed),
        ));
    }
}

/// The connection's stream, counting the bytes written through it into its
/// [`Conn`]. What is counted is what the TLS layer took, which is at most its
/// buffer (64 KiB) ahead of what the socket took: a client that stops reading
/// stops the count once the socket buffers are full.
pub(super) fn counted<S: AsyncWrite>(
    inner: S,
    conn: Arc<Conn>,
) -> tokio_util::io::InspectWriter<S, impl FnMut(&[u8])> {
    tokio_util::io::InspectWriter::new(inner, move |written: &[u8]| {
        conn.written
            .fetch_add(written.len() as u64, Ordering::Relaxed);
    })
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
    places: &Places,
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
        let Some(place) = places.take(peer) else {
            tracing::warn!(%peer, "too many agent downloads at once (in all, or from this address); refusing this one");
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
        // Unauthenticated: through the bounded queue, and per source and
        // window, as failed SSH logins are.
        shared.audit.download(
            peer.ip(),
            &name,
            json!({ "bytes": body.len(), "sha256": sha256 }),
        );
    }
    // For HEAD, hyper sends the headers (with the length) and no body.
    reply(StatusCode::OK, content_type, body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn from(ip: &str) -> SocketAddr {
        format!("{ip}:4000").parse().unwrap()
    }

    /// The review's finding 5: one source holds at most two places, and a
    /// download that stops moving loses its place at the next look at its
    /// progress, long before its total deadline.
    #[test]
    fn places_are_shared_per_source_and_held_against_progress() {
        let places = Places::new(16);
        let a = [places.take(from("10.0.0.1")), places.take(from("10.0.0.1"))];
        assert!(a.iter().all(Option::is_some));
        assert!(
            places.take(from("10.0.0.1")).is_none(),
            "a third from one source"
        );
        let b = places.take(from("10.0.0.2")).unwrap();
        let last = places.take(from("10.0.0.3")).unwrap();
        assert!(places.take(from("10.0.0.4")).is_none(), "all four taken");

        let start = Instant::now();
        let far = start + Duration::from_secs(3600);
        let conn = Conn::new(far);
        conn.hold(b, far);
        assert!(conn.deadline() <= Instant::now() + PROGRESS_WINDOW);
        assert!(!conn.expired(start + Duration::from_secs(1)));
        // Moving: it keeps its place, and the next window starts.
        conn.written.fetch_add(MIN_PROGRESS, Ordering::Relaxed);
        let t = start + PROGRESS_WINDOW + Duration::from_secs(1);
        assert!(!conn.expired(t));
        assert_eq!(conn.deadline(), t + PROGRESS_WINDOW);
        // Then less than the minimum in a window: it must end.
        conn.written.fetch_add(MIN_PROGRESS - 1, Ordering::Relaxed);
        assert!(conn.expired(t + PROGRESS_WINDOW));
        drop(conn);
        assert!(
            places.take(from("10.0.0.4")).is_some(),
            "its place came back"
        );
        drop((a, last));

        // The install script holds no place: only its deadline counts.
        let conn = Conn::new(start + Duration::from_secs(10));
        assert!(!conn.expired(start + Duration::from_secs(9)));
        assert!(conn.expired(start + Duration::from_secs(10)));
    }
}
