//! What every part of a running bastion shares: store, audit, PKI, the registry of
//! agent channels, metrics, settings and the shutdown token that owns all tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agents::Fleet;
use crate::audit::Auditor;
use crate::metrics::Metrics;
use crate::pki::Pki;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Settings {
    /// The URL agents dial (`https://host:port`), printed in join commands.
    pub agent_public_url: String,
    /// A TLS handshake on the agent port must finish within this.
    pub handshake_timeout: Duration,
    /// Connections beyond this on the agent port are dropped at once.
    pub max_agent_connections: usize,
    /// Connections on the agent port still in their TLS handshake from one
    /// source address (IPv6 by /64); an agent's channel, once its certificate
    /// is verified, no longer counts against its address.
    pub agent_handshakes_per_source: usize,
    /// Enrollments served at once (their own pool, apart from agent channels).
    pub max_enrollments: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// How often to look for certificates due for rotation.
    pub rotation_check: Duration,
    /// How often to write last-seen times of connected nodes.
    pub last_seen_flush: Duration,
    /// Timeout of a single call from the bastion to an agent.
    pub agent_call_timeout: Duration,
    /// How long a node running a command may stay disconnected before it is `lost`.
    pub exec_lost_grace: Duration,
    /// Output kept per stream and node (head and tail halves).
    pub exec_keep_bytes: usize,
    /// Live execution streams one org may hold open on this bastion, its share
    /// of the bastion's (see `http::exec_events`).
    pub exec_streams_per_org: usize,
    /// A live execution stream whose client takes no event for this long is
    /// ended (the client resumes with Last-Event-ID), so a reader that stopped
    /// reading does not keep its place.
    pub exec_stream_stall: Duration,
    /// How long a key grant pushed to a node for an SSH jump stays valid.
    pub ssh_grant_ttl: Duration,
    /// An SSH client must authenticate within this (like sshd's LoginGraceTime).
    pub ssh_auth_timeout: Duration,
    /// Unauthenticated SSH connections: random early drop from `start`, with
    /// probability `rate`% rising to 100% at `full` (sshd's MaxStartups).
    pub ssh_max_startups: crate::limits::MaxStartups,
    /// Unauthenticated SSH connections from one source address at most
    /// (sshd's PerSourceMaxStartups), so one client cannot lock out the rest.
    pub ssh_per_source_max_startups: usize,
    /// A client must send its SSH identification line within this.
    pub ssh_banner_timeout: Duration,
    /// SSH channel window and largest packet (flow control, throughput).
    pub ssh_window: u32,
    pub ssh_max_packet: u32,
    /// Also offer chacha20-poly1305 (slower here; for clients without AES-GCM).
    pub ssh_allow_chacha20: bool,
    /// Where kubectl reaches the Kubernetes door (`https://host:port`), named in
    /// downloaded kubeconfigs; `None` when the door is off.
    pub kube_public_url: Option<String>,
    /// Kubeconfigs name the edge in the TLS server name (the bastion issues the
    /// certificates); `false` with an operator's certificate: in the path.
    pub kube_by_server_name: bool,
    /// `--ssh-public-addr`: where users dial the SSH front door (`host:port`),
    /// when that is not its listen address.
    pub ssh_public_addr: Option<String>,
    /// The SSH front door as users reach it (`host:port`) and its host key in
    /// OpenSSH's one-line form, for `GET /api/v1/ssh`; `None` when SSH is off.
    pub ssh_endpoint: Option<(String, String)>,
    /// The agent packages and install script served on the agent port (read
    /// once at start, see `agents::packages`); `None`: none served.
    pub agent_packages: Option<Arc<crate::agents::packages::AgentPackages>>,
    /// OpenID providers may be on loopback or private networks, over plain
    /// http (a provider beside the bastion, tests). Off: an org admin cannot
    /// make the bastion call into its own network.
    pub sso_private_networks: bool,
    /// The TLS proxies in front of the REST API (CIDRs): from them the
    /// client's address is read from `X-Forwarded-For`, for per-source limits
    /// and the audit log.
    pub trusted_proxies: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            agent_public_url: "https://127.0.0.1:8443".into(),
            handshake_timeout: Duration::from_secs(10),
            max_agent_connections: 16_000,
            agent_handshakes_per_source: crate::limits::AGENT_HANDSHAKES_PER_SOURCE,
            max_enrollments: 64,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            rotation_check: Duration::from_secs(30),
            last_seen_flush: Duration::from_secs(30),
            agent_call_timeout: Duration::from_secs(10),
            exec_lost_grace: Duration::from_secs(120),
            exec_keep_bytes: postern_api::cmdexec::DEFAULT_KEEP_BYTES,
            exec_streams_per_org: crate::limits::EXEC_STREAMS_PER_ORG,
            exec_stream_stall: crate::limits::EXEC_STREAM_STALL,
            ssh_grant_ttl: Duration::from_secs(300),
            ssh_auth_timeout: Duration::from_secs(30),
            ssh_max_startups: crate::limits::MaxStartups::DEFAULT,
            ssh_per_source_max_startups: 32,
            ssh_banner_timeout: Duration::from_secs(10),
            ssh_window: 16 * 1024 * 1024,
            ssh_max_packet: 64 * 1024 - 1024,
            ssh_allow_chacha20: false,
            kube_public_url: None,
            kube_by_server_name: false,
            ssh_public_addr: None,
            sso_private_networks: false,
            trusted_proxies: Vec::new(),
            ssh_endpoint: None,
            agent_packages: None,
        }
    }
}

#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    /// The audit log, written in one of three named ways (see `audit`).
    pub audit: Auditor,
    pub pki: Arc<Pki>,
    /// Every node's channel: here, or on a peer replica.
    pub fleet: Arc<Fleet>,
    /// Doors that cut live access when access is taken away.
    pub access: crate::access::AccessBus,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub cmdexec: crate::cmdexec::Engine,
}

impl Shared {
    /// The one constructor, for the bastion and for tests: starts the engine's
    /// result writer and the audit queue on the returned state's task tracker.
    pub fn new(
        store: Store,
        pki: Arc<Pki>,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Arc<Shared> {
        Shared::with_replicas(store, pki, settings, shutdown, None)
    }

    /// [`Shared::new`] for one replica of several (see `crate::replicas`).
    pub fn with_replicas(
        store: Store,
        pki: Arc<Pki>,
        settings: Settings,
        shutdown: CancellationToken,
        replicas: Option<Arc<crate::replicas::Replicas>>,
    ) -> Arc<Shared> {
        let tasks = TaskTracker::new();
        let metrics = Arc::new(Metrics::default());
        let audit = Auditor::start(store.clone(), metrics.clone(), &tasks, shutdown.clone());
        let owner = replicas.as_ref().map(|r| r.name.clone());
        let access =
            crate::access::AccessBus::new(replicas.clone(), audit.clone(), metrics.clone());
        let fleet = Arc::new(Fleet::new(replicas));
        let cmdexec = crate::cmdexec::Engine::new(
            crate::cmdexec::Deps {
                store: store.clone(),
                audit: audit.clone(),
                fleet: fleet.clone(),
                settings: crate::cmdexec::ExecSettings {
                    exec_lost_grace: settings.exec_lost_grace,
                    exec_keep_bytes: settings.exec_keep_bytes,
                },
                tasks: tasks.clone(),
                shutdown: shutdown.clone(),
            },
            owner,
        );
        Arc::new(Shared {
            cmdexec,
            audit,
            store,
            pki,
            fleet,
            access,
            metrics,
            settings,
            shutdown,
            tasks,
        })
    }
}
