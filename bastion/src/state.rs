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

/// The core's settings. Each door has its own (`ssh::Settings`,
/// `http::Settings`, `agent_port::Settings`), given to it in `app.rs`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The URL agents dial (`https://host:port`), printed in join commands.
    pub agent_public_url: String,
    /// A TLS handshake on the agent port must finish within this.
    pub handshake_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// An agent channel with no call for this long gives up its HTTP/2
    /// connection until the next call (`agent_port::channel`); zero: never.
    pub park_after: Duration,
    /// How often to write last-seen times of connected nodes.
    pub last_seen_flush: Duration,
    /// Timeout of a single call from the bastion to an agent.
    pub agent_call_timeout: Duration,
    /// How long a node running a command may stay disconnected before it is `lost`.
    pub exec_lost_grace: Duration,
    /// Output kept per stream and node (head and tail halves).
    pub exec_keep_bytes: usize,
    /// The agent packages and install script served on the agent port (read
    /// once at start, see `agents::packages`); `None`: none served.
    pub agent_packages: Option<Arc<crate::agents::packages::AgentPackages>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            agent_public_url: "https://127.0.0.1:8443".into(),
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            park_after: Duration::from_secs(60),
            last_seen_flush: Duration::from_secs(30),
            agent_call_timeout: Duration::from_secs(10),
            exec_lost_grace: Duration::from_secs(120),
            exec_keep_bytes: postern_api::cmdexec::DEFAULT_KEEP_BYTES,
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
