//! The agent's side of the channel: dial out, TLS 1.3 with our certificate, then
//! *serve* HTTP/2 on the connection we opened so the bastion can call us. When the
//! connection ends for any reason, come back by ourselves after a fully jittered
//! backoff; never give up. With several bastion replicas, each new attempt goes
//! to the next one in turn, so a dead replica costs one backoff, not an outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use postern_api::agent::ALPN_CHANNEL;
use postern_channel::{Control, Framed, Role};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::enroll::Controller;
use crate::exec::Executor;
use crate::identity::Identity;
use crate::kube_keys::{KubeKeys, KubeNodeKeysConfig};
use crate::service;
use crate::ssh::relay::Ports;
use crate::ssh::{BreakGlass, GrantStore, KeysService};
use crate::tls::channel_config;

pub use postern_api::agent::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A connection that lived this long resets the backoff.
    pub stable_after: Duration,
    /// The local port of the node's sshd, the only port relayed to.
    pub sshd_port: u16,
    /// Keys printed for sshd only while the bastion is unreachable beyond a grace.
    pub break_glass: Option<BreakGlass>,
    /// `--kube-node-keys`: keys from this node's Kubernetes Node object.
    pub kube_node_keys: Option<KubeNodeKeysConfig>,
    /// `--label k=v`: reported to the bastion each time the channel comes up.
    pub labels: std::collections::BTreeMap<String, String>,
    /// How to ask sshd about the keys helper before relaying a session
    /// (`None`: relay without asking).
    pub sshd_check: Option<crate::doctor::DoctorOptions>,
    /// Offer the framed channel, which the bastion parks while idle
    /// (`postern_channel`); `false`: the plain one only.
    pub park: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            stable_after: Duration::from_secs(10),
            sshd_port: 22,
            break_glass: None,
            kube_node_keys: None,
            labels: Default::default(),
            sshd_check: None,
            park: true,
        }
    }
}

/// Live counters, for the process's logs, tests and the swarm.
#[derive(Debug, Default)]
pub struct AgentStatus {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub failures: AtomicU64,
    /// Unix ms when the channel last went down (or the agent started). Only
    /// [`AgentStatus::mark_down`] moves it, and only on a real up-to-down change.
    pub down_since_ms: AtomicI64,
}

impl AgentStatus {
    pub fn mark_up(&self) {
        self.connected.store(true, Ordering::SeqCst);
        self.connects.fetch_add(1, Ordering::Relaxed);
    }

    /// The channel is down from now. The time is set before the flag, so whoever
    /// sees "down" also sees when; if it was already down, the first time stays,
    /// so the break-glass grace counts from the real loss of the bastion.
    pub fn mark_down(&self) {
        if self.connected.load(Ordering::SeqCst) {
            self.down_since_ms.store(now_ms(), Ordering::SeqCst);
            self.connected.store(false, Ordering::SeqCst);
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The bastion replicas an agent dials, and which one is next. After every
/// session, however it ended, the agent moves on in round robin: a replica
/// that closed the channel is likely going away, and the others are as good.
#[derive(Debug, Clone)]
pub struct Controllers {
    list: Vec<Controller>,
    next: usize,
}

impl Controllers {
    /// `None` for an empty list: there would be nothing to dial.
    pub fn new(list: Vec<Controller>) -> Option<Controllers> {
        (!list.is_empty()).then_some(Controllers { list, next: 0 })
    }

    pub fn current(&self) -> &Controller {
        // `next` is always < len, which `new` makes non-zero.
        &self.list[self.next]
    }

    /// Moves to the next replica (wrapping) and returns it.
    pub fn advance(&mut self) -> &Controller {
        self.next = (self.next + 1) % self.list.len();
        self.current()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub identity: Arc<Identity>,
    pub options: AgentOptions,
    pub status: Arc<AgentStatus>,
    pub executor: Executor,
    pub grants: GrantStore,
    /// The cluster's API server, when this agent is a Kubernetes gateway.
    pub kube: Option<Arc<crate::kube::Gateway>>,
    pub kube_keys: KubeKeys,
    /// Shared by every channel, so its cached finding is too.
    sshd_check: Option<Arc<crate::ssh::relay::SshdCheck>>,
}

impl Agent {
    /// An agent whose exec results are spooled under its data directory (or kept
    /// in memory when the identity has none).
    pub fn new(identity: Arc<Identity>, options: AgentOptions) -> Agent {
        let executor = Executor::new(identity.data_dir().map(|d| d.join("spool")));
        Agent::with_executor(identity, options, executor)
    }

    pub fn with_executor(
        identity: Arc<Identity>,
        options: AgentOptions,
        executor: Executor,
    ) -> Agent {
        let status = AgentStatus::default();
        status.down_since_ms.store(now_ms(), Ordering::Relaxed);
        let grants = GrantStore::open(identity.data_dir());
        let kube_keys = match &options.kube_node_keys {
            Some(k) => KubeKeys::open(identity.data_dir(), &k.node_name, &k.signers),
            None => KubeKeys::disabled(identity.data_dir()),
        };
        let sshd_check = options
            .sshd_check
            .clone()
            .map(|o| Arc::new(crate::ssh::relay::SshdCheck::new(o)));
        Agent {
            identity,
            options,
            status: Arc::new(status),
            executor,
            grants,
            kube: None,
            kube_keys,
            sshd_check,
        }
    }

    /// Makes this agent a Kubernetes gateway for its edge.
    pub fn with_kube_gateway(mut self, gateway: crate::kube::Gateway) -> Agent {
        self.kube = Some(Arc::new(gateway));
        self
    }

    /// Keeps the channel up until `shutdown`, and answers the keys helper on the
    /// data directory's socket meanwhile (also while the channel is down).
    pub async fn run(&self, shutdown: CancellationToken) {
        let keys = self.identity.data_dir().map(|dir| KeysService {
            grants: self.grants.clone(),
            status: self.status.clone(),
            break_glass: self.options.break_glass.clone(),
            kube_keys: self.kube_keys.clone(),
            data_dir: dir.to_path_buf(),
        });
        // The Node watch runs beside the channel, whether or not the bastion is there.
        let kube_watch = async {
            if let Some(cfg) = self.options.kube_node_keys.clone() {
                crate::kube_keys::watch(cfg, self.kube_keys.clone(), shutdown.clone()).await;
            }
        };
        let main = async {
            match keys {
                Some(keys) => {
                    let channel = self.keep_channel(&shutdown);
                    let helper = async {
                        if let Err(e) = keys.run(shutdown.clone()).await {
                            tracing::error!(error = %e, "cannot serve the keys helper socket; sshd logins through Postern will fail");
                            shutdown.cancelled().await;
                        }
                    };
                    tokio::join!(channel, helper);
                }
                None => self.keep_channel(&shutdown).await,
            }
        };
        tokio::join!(main, kube_watch);
    }

    async fn keep_channel(&self, shutdown: &CancellationToken) {
        let shutdown = shutdown.clone();
        let list = match self.identity.meta.controllers() {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(error = %e, "stored controller URL is invalid; re-enroll this node");
                return;
            }
        };
        let Some(mut controllers) = Controllers::new(list) else {
            tracing::error!("no controller URL is stored; re-enroll this node");
            return;
        };
        let mut backoff = Backoff::new(self.options.backoff_base, self.options.backoff_cap);
        loop {
            let controller = controllers.current().clone();
            let started = Instant::now();
            match self.session(&controller, &shutdown).await {
                Ok(()) => {
                    tracing::info!(controller = %controller.url, "channel to the bastion closed")
                }
                Err(e) => {
                    self.status.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(controller = %controller.url, error = %e, "channel to the bastion failed");
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            // After a long-lived session the first retry is quick, but still
            // uniform in [0, base]: every agent of a replica that just died
            // lands here at the same instant.
            if started.elapsed() >= self.options.stable_after {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            if controllers.len() > 1 {
                let next = controllers.advance();
                tracing::info!(from = %controller.url, to = %next.url, ?delay, "moving to the next bastion replica");
            } else {
                tracing::debug!(?delay, "reconnecting after backoff");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Serves a framed channel (`postern_channel`): HTTP/2 while it is live;
    /// when the bastion parks it, the connection is dropped (what still runs
    /// of its calls carries on, unanswered, as after a reset) and the channel
    /// is held, pinged both ways, until the bastion wakes it with a new one.
    async fn serve_framed<S>(
        &self,
        tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        http2: &hyper::server::conn::http2::Builder<TokioExecutor>,
        service: S,
        shutdown: &CancellationToken,
    ) -> Result<(), String>
    where
        S: hyper::service::HttpService<hyper::body::Incoming> + Clone,
        S::Future: Send + 'static,
        S::ResBody: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let opts = &self.options;
        let framed = Framed::new(tls, Role::Agent);
        loop {
            // The bastion's preface comes first, at once; a bastion gone
            // before it is not waited for (hyper's keep-alive starts later).
            // The first preface also waits for the bastion's store lookup.
            let within = opts.keepalive_timeout.max(opts.connect_timeout);
            tokio::select! {
                r = tokio::time::timeout(within, framed.data_ahead()) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("the bastion's HTTP/2 did not begin: {e}")),
                    Err(_) => return Err("the bastion's HTTP/2 did not begin in time".into()),
                },
                _ = shutdown.cancelled() => return Ok(()),
            }
            {
                let conn = http2.serve_connection(TokioIo::new(framed.io()), service.clone());
                let park = std::future::poll_fn(|cx| framed.poll_park(cx));
                tokio::select! {
                    r = serve_until_shutdown(conn, shutdown) => return r,
                    () = park => {}
                }
            }
            tracing::debug!("channel to the bastion parked");
            tokio::time::timeout(opts.keepalive_timeout, framed.send(Control::Parked))
                .await
                .map_err(|_| "the bastion did not take the channel's park in time".to_string())?
                .map_err(|e| format!("parking the channel failed: {e}"))?;
            let woken = tokio::select! {
                r = framed.parked(opts.keepalive_interval, opts.keepalive_timeout) => r,
                _ = shutdown.cancelled() => return Ok(()),
            };
            match woken {
                Ok(Some(Control::Wake)) => {
                    framed.rearm();
                    tracing::debug!("channel to the bastion woken");
                }
                Ok(Some(other)) => {
                    return Err(format!("the bastion sent {other:?} on a parked channel"));
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("parked channel failed: {e}")),
            }
        }
    }

    /// One connection, from dial to close.
    async fn session(
        &self,
        controller: &Controller,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        // Built per attempt so a rotated certificate is used from the next connection.
        let mut cfg = channel_config(&self.identity.ca_pem, &self.identity.credentials())
            .map_err(|e| e.to_string())?;
        if !self.options.park {
            let mut plain = (*cfg).clone();
            plain.alpn_protocols = vec![ALPN_CHANNEL.to_vec()];
            cfg = Arc::new(plain);
        }
        let name = controller.server_name()?;
        let opts = &self.options;
        let tcp = controller.connect_tcp(opts.connect_timeout).await?;
        let tls = tokio::time::timeout(
            opts.connect_timeout,
            TlsConnector::from(cfg).connect(name, tcp),
        )
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
        let framed = match tls.get_ref().1.alpn_protocol() {
            Some(postern_channel::ALPN) => true,
            Some(ALPN_CHANNEL) => false,
            _ => {
                return Err(
                    "the bastion did not agree to the agent protocol (version mismatch?)".into(),
                );
            }
        };
        self.status.mark_up();
        tracing::info!(controller = %controller.url, "channel to the bastion up");

        let channel_ended = CancellationToken::new();
        let _end_relays = channel_ended.clone().drop_guard();
        let router = service::router(service::Ctx {
            identity: self.identity.clone(),
            executor: self.executor.clone(),
            grants: self.grants.clone(),
            kube_keys: self.kube_keys.clone(),
            ports: Ports {
                sshd: opts.sshd_port,
                sshd_check: self.sshd_check.clone(),
            },
            kube: self.kube.clone(),
            labels: Arc::new(opts.labels.clone()),
            channel_ended,
        });
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(postern_api::agent::MAX_CHANNEL_STREAMS)
            .keep_alive_interval(opts.keepalive_interval)
            .keep_alive_timeout(opts.keepalive_timeout);
        let service = TowerToHyperService::new(router);
        let result = if framed {
            self.serve_framed(tls, &http2, service, shutdown).await
        } else {
            let conn = http2.serve_connection(TokioIo::new(tls), service);
            serve_until_shutdown(conn, shutdown).await
        };
        self.status.mark_down();
        result
    }
}

/// hyper's server connection over a channel, until it ends or the agent shuts
/// down (then gracefully, for up to 5 s). `Err` says why it failed.
async fn serve_until_shutdown<I, S>(
    conn: hyper::server::conn::http2::Connection<TokioIo<I>, S, TokioExecutor>,
    shutdown: &CancellationToken,
) -> Result<(), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Future: Send + 'static,
    S::ResBody: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = &mut conn => r.map_err(|e| e.to_string()),
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut conn).await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn controllers(urls: &str) -> Controllers {
        Controllers::new(Controller::parse_list(urls).unwrap()).unwrap()
    }

    #[test]
    fn replicas_are_tried_in_round_robin_from_the_first() {
        let mut c = controllers("https://a:1,https://b:2,https://c:3");
        let mut order = vec![c.current().host.clone()];
        for _ in 0..6 {
            order.push(c.advance().host.clone());
        }
        assert_eq!(order, ["a", "b", "c", "a", "b", "c", "a"]);
        assert_eq!(c.current().host, "a", "advance returns the new current");
    }

    #[test]
    fn one_replica_is_always_the_current_one() {
        let mut c = controllers("https://only:8443");
        assert_eq!(c.len(), 1);
        assert_eq!(c.advance().host, "only");
        assert_eq!(c.advance().host, "only");
        assert_eq!(c.current().port, 8443);
    }

    #[test]
    fn an_empty_list_has_nothing_to_dial() {
        assert!(Controllers::new(Vec::new()).is_none());
    }
}
