//! Joining a bastion: make a key on the node, send a CSR with the enrollment token
//! over TLS that is pinned to the CA hash from the join command, and keep the
//! certificate. Each failure says what went wrong and what to do.
//!
//! `--controller` may name several bastion replicas (comma-separated): joining
//! tries them in order until one answers, and all of them are kept for the
//! channel to fail over between.

use std::future::Future;
use std::net::SocketAddr;
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
    #[error("cannot reach any of the bastions: {0} (are they running, and is --controller right?)")]
    NoneReachable(String),
    #[error("the bastion refused the enrollment ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("the bastion's answer was not understood: {0}")]
    Protocol(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// The most bastion URLs one `--controller` may list: enough for any sane set of
/// replicas, and small enough that a full failover round stays short.
pub const MAX_CONTROLLERS: usize = 16;

/// Where the bastion's agent port is, parsed from `https://host[:port]`.
#[derive(Debug, Clone)]
pub struct Controller {
    pub url: String,
    pub host: String,
    pub port: u16,
}

impl Controller {
    pub fn parse(url: &str) -> Result<Controller, String> {
        let c = postern_api::agent::ControllerUrl::parse(url)?;
        Ok(Controller {
            url: c.url,
            host: c.host,
            port: c.port,
        })
    }

    /// Parses a comma-separated list of URLs (one URL is a list of one), in the
    /// order given, which is the order they are tried in. Entries that reach the
    /// same host and port are kept once, as first written.
    pub fn parse_list(list: &str) -> Result<Vec<Controller>, String> {
        if list.trim().is_empty() {
            return Err("no controller URL given".into());
        }
        let entries: Vec<&str> = list.split(',').map(str::trim).collect();
        // Counted before parsing so a huge argument is refused without work.
        if entries.len() > MAX_CONTROLLERS {
            return Err(format!(
                "{} controller URLs given; at most {MAX_CONTROLLERS} are allowed",
                entries.len()
            ));
        }
        let mut out: Vec<Controller> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            if entry.is_empty() {
                return Err(format!(
                    "controller list {list:?} has an empty entry (number {}); separate URLs with single commas",
                    i + 1
                ));
            }
            let c = Controller::parse(entry)?;
            // Host names are case-insensitive: `https://A` and `https://a:443` are one bastion.
            if !out
                .iter()
                .any(|o| o.port == c.port && o.host.eq_ignore_ascii_case(&c.host))
            {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The form kept in the identity's `controller` field, read back by
    /// [`Controller::parse_list`].
    pub fn format_list(list: &[Controller]) -> String {
        list.iter()
            .map(|c| c.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn server_name(&self) -> Result<ServerName<'static>, String> {
        ServerName::try_from(self.host.clone())
            .map_err(|e| format!("bad controller host {:?}: {e}", self.host))
    }

    /// TCP connect with a deadline, covering the name lookup too. A name with
    /// several addresses (replicas behind one DNS name) fails over between them.
    pub async fn connect_tcp(&self, timeout: Duration) -> Result<TcpStream, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        // A (host, port) pair: an IPv6 host is kept without its URL brackets, so
        // "host:port" would only work by luck of how it is split.
        let addrs: Vec<SocketAddr> = tokio::time::timeout(
            timeout,
            tokio::net::lookup_host((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| format!("cannot resolve {:?} within {timeout:?}", self.host))?
        .map_err(|e| format!("cannot resolve {:?}: {e}", self.host))?
        .collect();
        connect_any(
            &addrs,
            deadline.saturating_duration_since(tokio::time::Instant::now()),
        )
        .await
    }
}

/// Connects to the first of `addrs` that accepts, in order, within `timeout` in
/// all; the error lists what each address did.
pub async fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, String> {
    if addrs.is_empty() {
        return Err("the name resolved to no address".into());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut failures = Vec::with_capacity(addrs.len());
    for (i, addr) in addrs.iter().enumerate() {
        // An equal share of what is left: an address that drops packets cannot
        // use up the whole budget, and one that refuses at once leaves its share
        // to the rest.
        let left = u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        let share = deadline.saturating_duration_since(tokio::time::Instant::now()) / left;
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Ok(Err(e)) => failures.push(format!("{addr}: {e}")),
            Err(_) => failures.push(format!("{addr}: no answer within {share:?}")),
        }
    }
    Err(failures.join("; "))
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// One bastion URL, or several separated by commas (see [`Controller::parse_list`]).
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
    validate::node_hostname(&req.hostname).map_err(|e| EnrollError::BadArgument(e.to_string()))?;
    let controllers = Controller::parse_list(&req.controller).map_err(EnrollError::BadArgument)?;
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

    let (controller, (status, answer)) = first_answer(&controllers, |c| {
        let body = body.clone();
        async move { post_while_busy(&c, pin, body).await }
    })
    .await?;
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
            controller: Controller::format_list(&controllers),
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

/// Whether another replica may do better: a transport failure at one says
/// nothing about the others. An HTTP answer is the bastions' shared verdict on
/// the token, and a CA that is not the pinned one must be looked at, not
/// routed around.
fn worth_trying_next(e: &EnrollError) -> bool {
    matches!(e, EnrollError::Unreachable { .. } | EnrollError::Tls { .. })
}

/// Runs `attempt` on each controller in order until one gets an answer (or a
/// final error), and returns which controller gave it.
async fn first_answer<T, F, Fut>(
    controllers: &[Controller],
    mut attempt: F,
) -> Result<(Controller, T), EnrollError>
where
    F: FnMut(Controller) -> Fut,
    Fut: Future<Output = Result<T, EnrollError>>,
{
    let mut failures = Vec::new();
    let mut last = None;
    for (i, c) in controllers.iter().enumerate() {
        match attempt(c.clone()).await {
            Ok(answer) => return Ok((c.clone(), answer)),
            Err(e) if worth_trying_next(&e) => {
                if let Some(next) = controllers.get(i + 1) {
                    tracing::warn!(controller = %c.url, next = %next.url, error = %e, "cannot enroll through this bastion; trying the next");
                }
                failures.push(e.to_string());
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    match last {
        // One controller keeps its own error, which says exactly what happened.
        Some(e) if failures.len() == 1 => Err(e),
        Some(_) => Err(EnrollError::NoneReachable(failures.join("; "))),
        None => Err(EnrollError::BadArgument("no controller URL given".into())),
    }
}

/// One bastion's answer to the enrollment. A bastion whose enrollment pool is
/// full (or whose database is busy) says 503: nothing was used up, so the same
/// request is sent again, with backoff and jitter, for up to about two minutes.
async fn post_while_busy(
    controller: &Controller,
    pin: [u8; 32],
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), EnrollError> {
    let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
    let mut attempt = 0u32;
    loop {
        let (status, answer) = tokio::time::timeout(TIMEOUT, post(controller, pin, body.clone()))
            .await
            .map_err(|_| EnrollError::Unreachable {
                url: controller.url.clone(),
                detail: format!("no answer within {TIMEOUT:?}"),
            })??;
        if status != StatusCode::SERVICE_UNAVAILABLE || attempt >= BUSY_RETRIES {
            return Ok((status, answer));
        }
        attempt += 1;
        // At least a second: the pool frees as others finish, not at once.
        let wait = backoff.next_delay().max(Duration::from_secs(1));
        tracing::info!(
            attempt,
            controller = %controller.url,
            ?wait,
            "the bastion is busy enrolling others; retrying"
        );
        tokio::time::sleep(wait).await;
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Mutex;
    use tokio::net::TcpListener;

    fn hosts(list: &[Controller]) -> Vec<(&str, u16)> {
        list.iter().map(|c| (c.host.as_str(), c.port)).collect()
    }

    #[test]
    fn a_list_keeps_its_order_and_a_single_url_is_a_list_of_one() {
        let list =
            Controller::parse_list("https://a.example:8443, https://b.example ,https://[::1]:9/")
                .unwrap();
        assert_eq!(
            hosts(&list),
            [("a.example", 8443), ("b.example", 443), ("::1", 9)]
        );
        assert_eq!(
            Controller::format_list(&list),
            "https://a.example:8443,https://b.example,https://[::1]:9"
        );
        let one = Controller::parse_list("https://bastion:8443").unwrap();
        assert_eq!(hosts(&one), [("bastion", 8443)]);
    }

    #[test]
    fn a_bad_entry_is_named() {
        let e = Controller::parse_list("https://a:8443,http://b:8443").unwrap_err();
        assert!(e.contains("\"http://b:8443\""), "{e}");
        assert!(e.contains("https://"), "{e}");
        let e = Controller::parse_list("https://a:8443,not a url").unwrap_err();
        assert!(e.contains("\"not a url\""), "{e}");
    }

    #[test]
    fn empty_lists_and_empty_entries_are_refused() {
        for bad in ["", "  ", ","] {
            assert!(Controller::parse_list(bad).is_err(), "{bad:?} was accepted");
        }
        for bad in [
            "https://a,,https://b",
            "https://a,",
            ",https://a",
            "https://a, ,https://b",
        ] {
            let e = Controller::parse_list(bad).unwrap_err();
            assert!(e.contains("empty entry"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn at_most_sixteen_urls() {
        let urls = |n: usize| {
            (0..n)
                .map(|i| format!("https://b{i}:8443"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            Controller::parse_list(&urls(MAX_CONTROLLERS))
                .unwrap()
                .len(),
            16
        );
        let e = Controller::parse_list(&urls(MAX_CONTROLLERS + 1)).unwrap_err();
        assert!(e.contains("17") && e.contains("16"), "{e}");
    }

    #[test]
    fn duplicates_are_kept_once_as_first_written() {
        let list = Controller::parse_list(
            "https://a:8443,https://b:8443,https://a:8443/,https://A:8443,https://b:443,https://c,https://c:443",
        )
        .unwrap();
        assert_eq!(
            hosts(&list),
            [("a", 8443), ("b", 8443), ("b", 443), ("c", 443)]
        );
        assert_eq!(list[0].url, "https://a:8443");
        assert_eq!(list[3].url, "https://c");
    }

    /// A port that refuses: bound, then closed again.
    async fn closed_port(ip: &str) -> SocketAddr {
        let l = TcpListener::bind((ip, 0)).await.unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn connect_moves_to_the_next_address_when_one_refuses() {
        let dead = closed_port("127.0.0.2").await;
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let tcp = connect_any(&[dead, live_addr], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(tcp.peer_addr().unwrap(), live_addr);
        let (_accepted, from) = live.accept().await.unwrap();
        assert_eq!(from, tcp.local_addr().unwrap());
    }

    #[tokio::test]
    async fn connect_names_every_address_that_failed() {
        let a = closed_port("127.0.0.2").await;
        let b = closed_port("127.0.0.1").await;
        let e = connect_any(&[a, b], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            e.contains(&a.to_string()) && e.contains(&b.to_string()),
            "{e}"
        );
        assert!(connect_any(&[], Duration::from_secs(1)).await.is_err());
    }

    #[tokio::test]
    async fn connect_tcp_resolves_and_connects() {
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = live.local_addr().unwrap().port();
        let c = Controller::parse(&format!("https://localhost:{port}")).unwrap();
        // `localhost` may resolve to ::1 first, where nothing listens: that is the
        // failover this test is about.
        let tcp = c.connect_tcp(Duration::from_secs(5)).await.unwrap();
        assert_eq!(tcp.peer_addr().unwrap(), live.local_addr().unwrap());
    }

    fn unreachable(c: &Controller) -> EnrollError {
        EnrollError::Unreachable {
            url: c.url.clone(),
            detail: "connection refused".into(),
        }
    }

    /// Runs `first_answer` over a, b, c with `outcome` deciding each; returns
    /// which were tried and the result.
    async fn run(
        outcome: impl Fn(&Controller) -> Result<u32, EnrollError>,
    ) -> (Vec<String>, Result<(Controller, u32), EnrollError>) {
        let list = Controller::parse_list("https://a:1,https://b:2,https://c:3").unwrap();
        let tried = Mutex::new(Vec::new());
        let result = first_answer(&list, |c| {
            tried.lock().unwrap().push(c.host.clone());
            let r = outcome(&c);
            async move { r }
        })
        .await;
        (tried.into_inner().unwrap(), result)
    }

    #[tokio::test]
    async fn enrollment_moves_on_from_an_unreachable_bastion() {
        let (tried, result) = run(|c| match c.host.as_str() {
            "a" => Err(unreachable(c)),
            "b" => Err(EnrollError::Tls {
                url: c.url.clone(),
                detail: "handshake eof".into(),
            }),
            _ => Ok(7),
        })
        .await;
        assert_eq!(tried, ["a", "b", "c"]);
        let (c, answer) = result.unwrap();
        assert_eq!((c.host.as_str(), answer), ("c", 7));
    }

    #[tokio::test]
    async fn a_refusal_is_final() {
        let (tried, result) = run(|c| match c.host.as_str() {
            "a" => Err(unreachable(c)),
            _ => Err(EnrollError::Refused {
                status: StatusCode::UNAUTHORIZED,
                message: "token used up".into(),
            }),
        })
        .await;
        assert_eq!(tried, ["a", "b"]);
        assert!(matches!(result, Err(EnrollError::Refused { .. })));

        let (tried, result) = run(|c| Err(EnrollError::CaMismatch(c.url.clone()))).await;
        assert_eq!(tried, ["a"]);
        assert!(matches!(result, Err(EnrollError::CaMismatch(_))));
    }

    #[tokio::test]
    async fn when_none_answers_every_one_is_named() {
        let (tried, result) = run(|c| Err(unreachable(c))).await;
        assert_eq!(tried, ["a", "b", "c"]);
        let e = result.unwrap_err().to_string();
        for url in ["https://a:1", "https://b:2", "https://c:3"] {
            assert!(e.contains(url), "{e}");
        }
        assert!(e.starts_with("cannot reach any of the bastions"), "{e}");
    }

    #[tokio::test]
    async fn a_single_bastion_keeps_its_own_error() {
        let list = Controller::parse_list("https://a:1").unwrap();
        let result: Result<(Controller, ()), _> =
            first_answer(&list, |c| async move { Err(unreachable(&c)) }).await;
        let e = result.unwrap_err().to_string();
        assert!(
            e.starts_with("cannot reach the bastion at https://a:1"),
            "{e}"
        );
    }
}
