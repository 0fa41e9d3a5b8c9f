//! Composition: open the store, load the CA, bind the listeners (failing before
//! anything is served if the configuration is bad), run everything under one
//! shutdown token, and drain with a deadline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::agents;
use crate::pki::{Pki, PkiError};
use crate::secrets::{MasterKey, SecretError};
use crate::state::{Settings, Shared};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub api_addr: SocketAddr,
    pub agent_addr: SocketAddr,
    /// The SSH front door; `None` serves no SSH.
    pub ssh_addr: Option<SocketAddr>,
    /// Master key file sealing the CA key; `dev` makes one in the data directory.
    pub master_key_file: PathBuf,
    pub create_master_key: bool,
    /// Extra DNS names / IPs for the agent port's certificate.
    pub tls_names: Vec<String>,
    pub node_cert_ttl: Duration,
    /// The core's settings.
    pub settings: Settings,
    /// Each door's own settings.
    pub doors: DoorSettings,
    /// One replica of several on PostgreSQL (`--replica-name`, `--peer-addr`).
    pub replica: Option<crate::replicas::ReplicaConfig>,
    /// The Kubernetes listener (`--kube-addr`), when kubectl should reach edges.
    pub kube: Option<KubeConfig>,
    /// Agent packages to serve on the agent port (`--agent-package`): files, or
    /// directories holding `postern-agent_*.deb`. Empty: none.
    pub agent_packages: Vec<PathBuf>,
}

/// Each door's own settings, as the flags give them; the composition adds
/// what it learns as it binds the listeners (the REST door's view of the
/// Kubernetes and SSH doors' public addresses).
#[derive(Debug, Clone, Default)]
pub struct DoorSettings {
    pub ssh: crate::ssh::Settings,
    pub rest: crate::http::Settings,
    pub agent_port: crate::agent_port::Settings,
    /// `--ssh-public-addr`: where users dial the SSH front door (`host:port`),
    /// when that is not its listen address.
    pub ssh_public_addr: Option<String>,
}

/// Where the Kubernetes door listens and with which certificate.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    pub addr: SocketAddr,
    /// The operator's certificate chain and key (PEM files); `None`: a
    /// certificate from the bastion's CA for the bastion's TLS names.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The URL downloaded kubeconfigs name as their server (without the
    /// `/k8s/…` path); default `https://<kube-addr>`.
    pub public_url: Option<String>,
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot create data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("PKI: {0}")]
    Pki(#[from] PkiError),
    #[error(transparent)]
    HostKey(#[from] crate::ssh::HostKeyError),
    #[error(transparent)]
    Replica(#[from] crate::replicas::ReplicaError),
    #[error(transparent)]
    KubeTls(#[from] crate::kube::KubeTlsError),
    #[error(transparent)]
    Packages(#[from] crate::agents::packages::PackageError),
    #[error(
        "another bastion is running on the data directory {0}: SQLite belongs to one process; \
         for several replicas use PostgreSQL (--database-url postgres://… with --replica-name and --peer-addr)"
    )]
    DataDirInUse(String),
    #[error("cannot listen on {addr} ({what}): {source} (is another process using the port?)")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bastion that has bound its ports and is ready to run.
pub struct Bastion {
    shared: Arc<Shared>,
    api: TcpListener,
    agent: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ssh: Option<(TcpListener, Arc<russh::server::Config>)>,
    peer: Option<TcpListener>,
    kube: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    doors: DoorSettings,
    /// Held while running on SQLite: one process per data directory.
    _lock: Option<std::fs::File>,
}

impl std::fmt::Debug for Bastion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bastion").finish_non_exhaustive()
    }
}

impl Bastion {
    pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<Bastion, StartError> {
        if !cfg.api_addr.ip().is_loopback() {
            return Err(StartError::Config(format!(
                "--api-addr {} is not loopback: a non-loopback REST listener needs TLS, which this build does not terminate; \
                 listen on 127.0.0.1 and put a TLS reverse proxy in front",
                cfg.api_addr
            )));
        }
        crate::fsutil::private_dir(&cfg.data_dir)
            .map_err(|e| StartError::DataDir(cfg.data_dir.display().to_string(), e))?;
        let master = if cfg.create_master_key {
            MasterKey::load_or_create(&cfg.master_key_file)?
        } else {
            MasterKey::load(&cfg.master_key_file)?
        };
        let (store, lock) = match &cfg.database_url {
            Some(url) if url.starts_with("sqlite:") => {
                if cfg.replica.is_some() {
                    return Err(crate::replicas::ReplicaError::NeedsPostgres.into());
                }
                let lock = match sqlite_file(url) {
                    Some(file) => Some(lock_beside(&file)?),
                    None => None,
                };
                (Store::open(url).await?, lock)
            }
            Some(url) => (Store::open(url).await?, None),
            None => {
                if cfg.replica.is_some() {
                    return Err(crate::replicas::ReplicaError::NeedsPostgres.into());
                }
                let lock = lock_data_dir(&cfg.data_dir)?;
                (Store::open_sqlite(&cfg.data_dir).await?, Some(lock))
            }
        };
        if cfg.replica.is_none() && cfg.database_url.is_some() {
            refuse_beside_live_replicas(&store).await?;
        }
        let pki = Pki::load_or_create(&store, &master, cfg.node_cert_ttl).await?;

        let api = TcpListener::bind(cfg.api_addr)
            .await
            .map_err(|source| StartError::Bind {
                what: "REST API",
                addr: cfg.api_addr,
                source,
            })?;
        let agent = TcpListener::bind(cfg.agent_addr)
            .await
            .map_err(|source| StartError::Bind {
                what: "agent port",
                addr: cfg.agent_addr,
                source,
            })?;
        let ssh = match cfg.ssh_addr {
            Some(addr) => {
                let host_key =
                    crate::ssh::load_or_create_host_key(&store, &master, &cfg.data_dir).await?;
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            what: "SSH front door",
                            addr,
                            source,
                        })?;
                Some((
                    listener,
                    Arc::new(crate::ssh::server_config(host_key, &cfg.doors.ssh)),
                ))
            }
            None => None,
        };
        let agent_local = agent.local_addr().map_err(|source| StartError::Bind {
            what: "agent port",
            addr: cfg.agent_addr,
            source,
        })?;
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        if !agent_local.ip().is_unspecified() {
            names.push(agent_local.ip().to_string());
        }
        names.extend(cfg.tls_names.iter().cloned());
        let mut settings = cfg.settings.clone();
        let mut doors = cfg.doors.clone();
        if settings.agent_public_url.is_empty() {
            settings.agent_public_url = format!("https://{agent_local}");
        }
        if let Ok(c) = postern_api::agent::ControllerUrl::parse(&settings.agent_public_url)
            && !names.contains(&c.host)
        {
            names.push(c.host);
        }
        names.dedup();
        let tls = agents::server_config(&pki, &names)?;
        settings.agent_packages =
            load_packages(cfg.agent_packages.clone(), &settings.agent_public_url, &pki).await?;
        let (replicas, peer) = match &cfg.replica {
            Some(rc) => {
                let peer =
                    TcpListener::bind(rc.peer_addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            what: "peer port",
                            addr: rc.peer_addr,
                            source,
                        })?;
                let queue = doors.agent_port.max_agent_connections.saturating_mul(2);
                let channels = master.derive("postern replica notification channels");
                let notices = master.derive("postern replica presence notices");
                let r =
                    crate::replicas::Replicas::join(&store, &pki, rc, queue, &channels, &notices)
                        .await?;
                (Some(r), Some(peer))
            }
            None => (None, None),
        };
        let kube = match &cfg.kube {
            Some(k) => {
                let listener =
                    TcpListener::bind(k.addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            what: "Kubernetes listener",
                            addr: k.addr,
                            source,
                        })?;
                let local = listener.local_addr().map_err(|source| StartError::Bind {
                    what: "Kubernetes listener",
                    addr: k.addr,
                    source,
                })?;
                let mut kube_names = names.clone();
                if !local.ip().is_unspecified() {
                    kube_names.push(local.ip().to_string());
                }
                let public = match &k.public_url {
                    Some(u) => u.trim_end_matches('/').to_string(),
                    None if local.ip().is_unspecified() => {
                        let host =
                            postern_api::agent::ControllerUrl::parse(&settings.agent_public_url)
                                .map(|c| c.host)
                                .unwrap_or_else(|_| "localhost".into());
                        format!("https://{host}:{}", local.port())
                    }
                    None => format!("https://{local}"),
                };
                if let Ok(c) = postern_api::agent::ControllerUrl::parse(&public) {
                    kube_names.push(c.host);
                }
                kube_names.dedup();
                doors.rest.kube_public_url = Some(public);
                doors.rest.kube_by_server_name = k.tls.is_none();
                let tls = crate::kube::server_config(
                    &pki,
                    &kube_names,
                    k.tls.as_ref().map(|(c, key)| (c.as_path(), key.as_path())),
                )?;
                Some((listener, tls))
            }
            None => None,
        };
        if let (Some((listener, server)), Some(addr)) = (&ssh, cfg.ssh_addr) {
            let local = listener.local_addr().map_err(|source| StartError::Bind {
                what: "SSH front door",
                addr,
                source,
            })?;
            let address = match &doors.ssh_public_addr {
                Some(a) => a.clone(),
                None if local.ip().is_unspecified() => {
                    let host = postern_api::agent::ControllerUrl::parse(&settings.agent_public_url)
                        .map(|c| c.host)
                        .unwrap_or_else(|_| "localhost".into());
                    match host.contains(':') {
                        true => format!("[{host}]:{}", local.port()),
                        false => format!("{host}:{}", local.port()),
                    }
                }
                None => local.to_string(),
            };
            let key = server
                .keys
                .first()
                .and_then(|k| k.public_key().to_openssh().ok());
            let reach = match local.ip() {
                ip if ip.is_unspecified() && ip.is_ipv6() => {
                    SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), local.port())
                }
                ip if ip.is_unspecified() => {
                    SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), local.port())
                }
                _ => local,
            };
            doors.rest.ssh_local = key.clone().map(|k| (reach, k));
            doors.rest.ssh_endpoint = key.map(|k| (address, k));
        }
        let shared = Shared::with_replicas(store, pki, settings, shutdown, replicas);
        Ok(Bastion {
            shared,
            api,
            agent,
            tls,
            ssh,
            peer,
            kube,
            doors,
            _lock: lock,
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The SSH front door's host key in OpenSSH's one-line form (for a
    /// known_hosts file), when it listens.
    pub fn ssh_host_key(&self) -> Option<String> {
        let (_, cfg) = self.ssh.as_ref()?;
        cfg.keys.first()?.public_key().to_openssh().ok()
    }

    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.local_addr().ok()
    }

    pub fn agent_addr(&self) -> Option<SocketAddr> {
        self.agent.local_addr().ok()
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn kube_addr(&self) -> Option<SocketAddr> {
        self.kube.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn ssh_addr(&self) -> Option<SocketAddr> {
        self.ssh.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until the shutdown token is cancelled, then drains.
    pub async fn run(self) -> std::io::Result<()> {
        let Bastion {
            shared,
            api,
            agent,
            tls,
            ssh,
            peer,
            kube,
            doors,
            _lock,
        } = self;
        // Recordings are the core's, whichever doors make them: what this
        // replica left live is closed before any door opens (a new session's
        // recording is never taken for a lost one), and every replica
        // applies retention.
        let replica = crate::recording::replica_name(&shared.fleet);
        crate::recording::recover_interrupted(&shared.store, &replica).await;
        shared.tasks.spawn(crate::recording::retention::run(
            shared.store.clone(),
            shared.audit.clone(),
            shared.shutdown.clone(),
        ));
        if let Some((listener, tls)) = kube {
            shared.tasks.spawn(crate::kube::serve(
                listener,
                tls,
                crate::kube::Door::new(shared.clone(), doors.ssh.recording_max_bytes),
            ));
        }
        if let Some(peer) = peer {
            shared
                .tasks
                .spawn(crate::peer_port::serve(peer, shared.clone()));
        }
        crate::replication::start(&shared);
        shared.tasks.spawn(shared.cmdexec.clone().run_leases());
        if let Some((listener, config)) = ssh {
            shared.tasks.spawn(crate::ssh::serve(
                listener,
                config,
                crate::ssh::Door::new(shared.clone(), doors.ssh.clone()),
            ));
        }
        shared.tasks.spawn(crate::agent_port::serve(
            agent,
            tls,
            shared.clone(),
            doors.agent_port.clone(),
        ));
        shared.tasks.spawn(crate::agent_port::run_rotation(
            shared.clone(),
            doors.agent_port.rotation_check,
        ));
        shared.tasks.spawn(flush_last_seen(shared.clone()));
        if let Err(e) = shared.cmdexec.recover().await {
            tracing::error!(error = %e, "cannot resume unfinished executions");
        }

        let app = crate::http::router(shared.clone(), doors.rest.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let shutdown = shared.shutdown.clone();
        let served =
            axum::serve(api, app).with_graceful_shutdown(async move { shutdown.cancelled().await });
        let result = tokio::select! {
            r = served => r,
            // Shutdown can stall on a client that never finishes its request.
            _ = async {
                shared.shutdown.cancelled().await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            } => Ok(()),
        };
        shared.shutdown.cancel();
        // Channels end on the shutdown token themselves; this cuts any that
        // registered in between.
        shared.fleet.drain();
        shared.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 10s");
        }
        // Counted by the channels as they closed: a count taken after the
        // token was cancelled would find them already gone (it said 0).
        tracing::info!(
            agents = shared.fleet.drained(),
            "agent channels drained (GOAWAY sent)"
        );
        if let Some(r) = shared.fleet.replicas() {
            // After the tasks: nothing of ours runs any more when the others
            // take our executions.
            r.peers.close();
            r.leave().await;
        }
        shared.store.close().await;
        result
    }
}

/// Reads the agent packages to serve, off the runtime (they may be MiBs).
async fn load_packages(
    paths: Vec<PathBuf>,
    controllers: &str,
    pki: &Pki,
) -> Result<Option<Arc<agents::packages::AgentPackages>>, StartError> {
    let controllers = controllers.to_string();
    let ca_pem = pki.ca_pem().to_string();
    let loaded = tokio::task::spawn_blocking(move || {
        agents::packages::AgentPackages::load(&paths, &controllers, &ca_pem)
    })
    .await
    .map_err(|e| StartError::Config(format!("reading the agent packages: {e}")))??;
    if let Some(p) = &loaded {
        for pkg in p.packages() {
            if pkg.version != env!("CARGO_PKG_VERSION") {
                tracing::warn!(
                    file = %pkg.file_name,
                    bastion = env!("CARGO_PKG_VERSION"),
                    "serving an agent package of another version than this bastion's"
                );
            }
            tracing::info!(file = %pkg.file_name, sha256 = %pkg.sha256, bytes = pkg.bytes.len(), "serving agent package");
        }
    }
    Ok(loaded.map(Arc::new))
}

/// Writes last-seen times of connected nodes now and then, in batches.
async fn flush_last_seen(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.settings.last_seen_flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ids = shared.fleet.local_node_ids();
        if let Err(e) = shared.store.touch_nodes(&ids, crate::clock::now_ms()).await {
            tracing::warn!(error = %e, "could not record last-seen times");
        }
    }
}

/// The file a `sqlite:` URL names (`None` for an in-memory database).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Takes the lock file beside a SQLite database file.
fn lock_beside(file: &std::path::Path) -> Result<std::fs::File, StartError> {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    lock_file(&dir.join(name), dir)
}

/// Takes the data directory's lock file: two bastions on one SQLite file would
/// each believe they hold every channel and lease.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    lock_file(&dir.join("postern.db.lock"), dir)
}

fn lock_file(path: &std::path::Path, dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    let path = path.to_path_buf();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StartError::DataDir(path.display().to_string(), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(StartError::DataDirInUse(dir.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StartError::DataDir(path.display().to_string(), e))
        }
    }
}

/// A single bastion (no `--replica-name`) believes it is alone: at start it
/// resumes every unfinished execution and takes every node. On a database that
/// live replicas use, it would run their work a second time; refuse it.
async fn refuse_beside_live_replicas(store: &Store) -> Result<(), StartError> {
    let (now, rows) = store.replicas().await?;
    let lease = crate::replicas::REPLICA_LEASE.as_millis() as i64;
    let live: Vec<String> = rows
        .into_iter()
        .filter(|r| now - r.heartbeat_at < lease)
        .map(|r| format!("{:?}", r.name))
        .collect();
    if live.is_empty() {
        return Ok(());
    }
    Err(crate::replicas::ReplicaError::LiveReplicas(live.join(", ")).into())
}
