//! The SSH front door: a russh server that unmodified OpenSSH clients reach nodes
//! through, two ways.
//!
//! - **Relay** (`ssh -J alice@bastion root@node`): a user proves a registered key
//!   or their session's certificate; each direct-tcpip channel to `<node>:22` is
//!   authorized for that node's project, a short-lived grant for the key is pushed
//!   to the node, and the bytes are relayed over the node's agent channel to its
//!   sshd, end-to-end encrypted: the bastion sees who, where, when and how much.
//! - **Terminate** (`ssh root+node@bastion`, see `terminate`): the bastion is the
//!   SSH server, logs in to the node itself with a one-time key, bridges the
//!   channels, and records them as the project's policy says.
//!
//! Remote forwarding, agent and X11 forwarding are refused with a reason and
//! audited either way.
//!
//! Unauthenticated connections are bounded in number and in time: a client must
//! send its identification line within `ssh_banner_timeout` and authenticate
//! within `ssh_auth_timeout`; admission follows sshd's `MaxStartups` (random
//! early drop) and `PerSourceMaxStartups` (see `startups`).

mod grants;
mod handler;
pub mod keys;
mod killable;
pub mod live;
mod relay;
mod startups;
mod target;
mod terminate;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{Algorithm, PrivateKey};
use russh::server::Config;
use russh::{MethodKind, MethodSet, SshId};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub use grants::GrantCache;
pub use live::Live;
pub use startups::{MaxStartups, Refused, Startups};

use crate::metrics::inc;
use crate::state::Shared;

#[derive(Debug, Error)]
pub enum HostKeyError {
    #[error("cannot read the SSH host key {path}: {source}")]
    Read {
        path: String,
        source: russh::keys::ssh_key::Error,
    },
    #[error("cannot create the SSH host key: {0}")]
    Create(String),
    #[error("the stored SSH host key cannot be opened: {0} (is this the deployment's master key?)")]
    Sealed(String),
    #[error("cannot load or store the SSH host key: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The store's id of the SSH host key.
const HOST_KEY_ID: &str = "ssh_host_ed25519";

/// Loads the bastion's ed25519 host key from the store (sealed with the master
/// key, as the CA is), creating it on first start. Every replica of a deployment
/// thus presents the same host key, so a client behind a load balancer never
/// sees it change. A key file left in the data directory by an earlier version
/// is taken into the store, so existing clients' known_hosts stay valid.
pub async fn load_or_create_host_key(
    store: &crate::store::Store,
    master: &crate::secrets::MasterKey,
    data_dir: &Path,
) -> Result<PrivateKey, HostKeyError> {
    let sealed = match store.sealed_key(HOST_KEY_ID).await? {
        Some(s) => s,
        None => {
            let path = data_dir.join("ssh_host_ed25519_key");
            let key = if path.exists() {
                PrivateKey::read_openssh_file(&path).map_err(|source| HostKeyError::Read {
                    path: path.display().to_string(),
                    source,
                })?
            } else {
                PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
                    .map_err(|e| HostKeyError::Create(e.to_string()))?
            };
            let pem = key
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .map_err(|e| HostKeyError::Create(e.to_string()))?;
            let sealed = master
                .seal(pem.as_bytes())
                .map_err(|e| HostKeyError::Create(e.to_string()))?;
            // Two replicas starting at once: the first key stored wins for both.
            store
                .insert_sealed_key(HOST_KEY_ID, &sealed, crate::clock::now_ms())
                .await?
        }
    };
    let pem = master
        .open(&sealed)
        .map_err(|e| HostKeyError::Sealed(e.to_string()))?;
    let pem = String::from_utf8(pem).map_err(|e| HostKeyError::Sealed(e.to_string()))?;
    PrivateKey::from_openssh(&pem).map_err(|e| HostKeyError::Sealed(e.to_string()))
}

/// Ciphers offered by default: AES-GCM only. OpenSSH clients list
/// chacha20-poly1305 first, and picking the client's first match would make the
/// bastion spend a third of its CPU in ring's portable Poly1305 (profiled); AES-GCM
/// runs on AES-NI. Every OpenSSH since 6.2 speaks it. `--ssh-allow-chacha20` adds
/// chacha20-poly1305 for clients that lack AES-GCM.
pub(crate) const CIPHERS: &[russh::cipher::Name] =
    &[russh::cipher::AES_256_GCM, russh::cipher::AES_128_GCM];
const CIPHERS_WITH_CHACHA: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
];

/// The russh configuration: public keys only, strict key exchange (russh's default
/// list carries `kex-strict-s-v00@openssh.com`), AES-GCM, large windows.
pub fn server_config(host_key: PrivateKey, s: &Settings) -> Config {
    let methods = MethodSet::from(&[MethodKind::PublicKey][..]);
    let cipher = if s.ssh_allow_chacha20 {
        CIPHERS_WITH_CHACHA
    } else {
        CIPHERS
    };
    Config {
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(cipher),
            ..russh::Preferred::default()
        },
        server_id: SshId::Standard(format!("SSH-2.0-Postern_{}", postern_api::VERSION).into()),
        methods,
        auth_rejection_time: Duration::from_millis(300),
        // OpenSSH probes with "none" first; answering it at once is not a leak.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        window_size: s.ssh_window,
        maximum_packet_size: s.ssh_max_packet,
        // Enough queued messages for a full window, so a busy channel does not
        // block the connection's loop before the client runs out of window.
        channel_buffer_size: (s.ssh_window / s.ssh_max_packet.max(1024)) as usize + 16,
        max_auth_attempts: 6,
        // Our own deadline covers authentication; idle sessions are kept alive and
        // dead peers found by keepalives instead of an inactivity cut.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        ..Config::default()
    }
}

/// An access change that must take effect on live SSH access at once.
#[derive(Debug, Clone, Copy)]
pub enum AccessChange<'a> {
    /// The user is gone: every connection closes, every grant is taken back.
    UserDeleted,
    /// One key is gone: connections and relays that use it close.
    KeyDeleted(&'a str),
    /// A role on this project (`None`: the org-wide role) was removed or changed:
    /// the user's relays into it close, and its nodes drop the user's grants. The
    /// user's next jump is authorized against the new role.
    RoleChanged(Option<&'a str>),
}

/// What applying an access change did, for the audit entry of the API call.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct AccessApplied {
    pub ssh_cut: usize,
    pub grants_revoked_on_nodes: usize,
    pub grants_unreachable_nodes: usize,
}

/// The SSH front door's own settings (built in `app.rs` from the flags).
#[derive(Debug, Clone)]
pub struct Settings {
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
    /// The most one session recording may hold, in bytes of cast.
    pub recording_max_bytes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ssh_grant_ttl: Duration::from_secs(300),
            ssh_auth_timeout: Duration::from_secs(30),
            ssh_max_startups: crate::limits::MaxStartups::DEFAULT,
            ssh_per_source_max_startups: 32,
            ssh_banner_timeout: Duration::from_secs(10),
            ssh_window: 16 * 1024 * 1024,
            ssh_max_packet: 64 * 1024 - 1024,
            ssh_allow_chacha20: false,
            recording_max_bytes: 512 * 1024 * 1024,
        }
    }
}

/// The SSH front door: the core it serves from, and what only this door
/// keeps (its live connections and relays, and the grants nodes hold). Built by
/// `app.rs`; other doors reach it only through the access bus.
#[derive(Debug)]
pub struct Door {
    core: Arc<Shared>,
    /// Live SSH connections and relays, cut when access is taken away.
    pub live: Arc<Live>,
    /// Which key grants each connected node already holds.
    pub grants: GrantCache,
    /// Records the sessions this door terminates (`LOGIN+NODE`).
    pub recorder: Arc<crate::recording::Recorder>,
    /// This door's settings (read before the core's, which hold none of them).
    pub settings: Settings,
}

impl std::ops::Deref for Door {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.core
    }
}

impl Door {
    /// The door, subscribed to the core's access changes.
    pub fn new(core: Arc<Shared>, settings: Settings) -> Arc<Door> {
        let recorder = crate::recording::Recorder::new(
            core.store.clone(),
            crate::recording::replica_name(&core.fleet),
            core.tasks.clone(),
            settings.recording_max_bytes,
        );
        let door = Arc::new(Door {
            core,
            live: Arc::default(),
            grants: GrantCache::default(),
            recorder,
            settings,
        });
        door.core.access.subscribe(Arc::new(SshAccess {
            door: Arc::downgrade(&door),
        }));
        door
    }
}

/// The SSH front door as a subscriber of access changes (see `crate::access`).
/// Weak: the bus lives in the core, which the door holds.
#[derive(Debug)]
struct SshAccess {
    door: std::sync::Weak<Door>,
}

impl crate::access::Door for SshAccess {
    fn name(&self) -> &'static str {
        "ssh"
    }

    fn apply<'a>(
        &'a self,
        change: &'a crate::access::AccessChange,
    ) -> crate::access::DoorFuture<'a> {
        use crate::access::Change;
        Box::pin(async move {
            let Some(door) = self.door.upgrade() else {
                return serde_json::json!({ "ssh_cut": 0 });
            };
            let shared: &Door = &door;
            let c = match &change.what {
                // Tokens open no SSH session.
                Change::TokenRevoked { .. }
                | Change::SessionEnded {
                    ssh_fingerprint: None,
                    ..
                } => return serde_json::json!({ "ssh_cut": 0 }),
                // The key the session certified: what was opened with it ends,
                // and the grants made for it are taken back.
                Change::SessionEnded {
                    ssh_fingerprint: Some(fingerprint),
                    ..
                } => AccessChange::KeyDeleted(fingerprint),
                Change::UserDeleted | Change::Unknown => AccessChange::UserDeleted,
                Change::KeyDeleted { fingerprint } => AccessChange::KeyDeleted(fingerprint),
                Change::RoleChanged { project_id } => {
                    AccessChange::RoleChanged(project_id.as_deref())
                }
            };
            let applied = apply_access_change(shared, &change.user_id, c).await;
            serde_json::to_value(applied).unwrap_or_default()
        })
    }
}

/// Cuts live SSH access and takes back node grants after `change` to `user_id`
/// (already committed to the store, so nothing reauthorized from now on sees the
/// old access).
async fn apply_access_change(
    shared: &Door,
    user_id: &str,
    change: AccessChange<'_>,
) -> AccessApplied {
    use grants::Which;
    use live::Cut;
    let (cut, which) = match change {
        AccessChange::UserDeleted => (Cut::User, Which::All),
        AccessChange::KeyDeleted(fp) => (Cut::Key(fp), Which::Key(fp)),
        AccessChange::RoleChanged(project) => (Cut::Relays(project), Which::Project(project)),
    };
    let ssh_cut = shared.live.cut(user_id, cut);
    let revoked = grants::revoke(shared, user_id, which).await;
    if ssh_cut > 0 || revoked.nodes + revoked.unreached > 0 {
        tracing::info!(
            user_id,
            ?change,
            ssh_cut,
            nodes = revoked.nodes,
            "SSH access taken back"
        );
    }
    AccessApplied {
        ssh_cut,
        grants_revoked_on_nodes: revoked.nodes,
        grants_unreachable_nodes: revoked.unreached,
    }
}

/// Accepts SSH connections until shutdown.
pub async fn serve(listener: TcpListener, config: Arc<Config>, shared: Arc<Door>) {
    let startups = Startups::new(
        shared.settings.ssh_max_startups,
        shared.settings.ssh_per_source_max_startups,
    );
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "SSH accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match startups.admit(peer.ip(), rand::random_range(0..100)) {
            Ok(p) => p,
            Err(why) => {
                let metric = match why {
                    Refused::PerSource => &shared.metrics.ssh_dropped_per_source,
                    Refused::Full => &shared.metrics.ssh_rejected_full,
                };
                inc(metric);
                tracing::debug!(%peer, ?why, "too many unauthenticated SSH connections; dropping");
                drop(tcp);
                continue;
            }
        };
        shared.tasks.spawn(connection(
            tcp,
            peer,
            config.clone(),
            shared.clone(),
            permit,
        ));
    }
}

/// Resolves when `within` has passed without a whole line from the client (its
/// `SSH-2.0-…` identification, which OpenSSH sends at once): silent or trickling
/// sockets are closed then instead of holding a place for the whole
/// authentication timeout. Our own identification goes out at once, so clients
/// that wait for it first (ssh-keyscan, load balancer checks) are served.
async fn no_identification(heard: Arc<std::sync::atomic::AtomicBool>, within: Duration) {
    tokio::time::sleep(within).await;
    if heard.load(std::sync::atomic::Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    config: Arc<Config>,
    shared: Arc<Door>,
    permit: startups::Admitted,
) {
    let _ = tcp.set_nodelay(true);
    let kill = shared.shutdown.child_token();
    let authenticated = Arc::new(Notify::new());
    let handler = handler::Conn::new(shared.clone(), peer, authenticated.clone(), kill.clone());
    let stream = killable::Killable::new(tcp, kill.clone());
    let banner = no_identification(stream.line_heard(), shared.settings.ssh_banner_timeout);
    tokio::pin!(banner);
    let deadline = tokio::time::sleep(shared.settings.ssh_auth_timeout);
    tokio::pin!(deadline);

    let session = tokio::select! {
        r = russh::server::run_stream(config, stream, handler) => match r {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = ?e, "SSH connection failed before key exchange");
                return;
            }
        },
        _ = &mut banner => {
            tracing::debug!(%peer, "no SSH identification in time; closing");
            kill.cancel();
            return;
        }
        _ = &mut deadline => {
            kill.cancel();
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    tokio::select! {
        _ = &mut session => return,
        _ = &mut banner => {
            tracing::debug!(%peer, "no SSH identification in time; closing");
            kill.cancel();
            return;
        }
        _ = authenticated.notified() => {}
        _ = &mut deadline => {
            tracing::info!(%peer, "SSH client did not authenticate in time; closing");
            kill.cancel();
            return;
        }
    }
    drop(permit);
    tokio::select! {
        r = &mut session => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = ?e, "SSH connection ended with an error");
            }
        }
        _ = shared.shutdown.cancelled() => {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                handle.disconnect(russh::Disconnect::ByApplication, "bastion shutting down".into(), String::new()),
            )
            .await;
            kill.cancel();
        }
    }
    // Relays of this connection stop with it.
    kill.cancel();
}
