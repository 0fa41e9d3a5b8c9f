//! Several bastion replicas on one PostgreSQL database, none special.
//!
//! - **Heartbeat**: each replica beats its row in `replicas` every second, on the
//!   database's clock; one silent for [`REPLICA_LEASE`] is dead, and the nodes it
//!   held stop counting as reachable.
//! - **Presence**: which replica holds each node's channel (`node_presence`),
//!   written in batches as channels come and go, and mirrored in memory on every
//!   replica from LISTEN/NOTIFY (re-read whole after the listener reconnects,
//!   since what was sent meanwhile is lost). The newest channel's row wins; a
//!   replica that sees its node taken by another cuts its own, older channel.
//! - **Events** ([`events`]): access changes and nodes to cut are rows every
//!   replica reads and applies, replayed after an outage; NOTIFY only wakes.
//!   Presence notifications carry keys only; the tables stay the truth.
//! - **Peering** ([`peers`]): a replica reaches a node held elsewhere through the
//!   peer that holds it, over mutually authenticated HTTP/2.

pub mod events;
pub mod peers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::mpsc;

use crate::pki::Pki;
use crate::store::{ReplicaRow, Store, StoreError};

/// A replica silent for this long is dead.
pub const REPLICA_LEASE: Duration = Duration::from_secs(5);
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// Presence changes are written together when they arrive within this.
pub(crate) const PRESENCE_BATCH: Duration = Duration::from_millis(20);
/// A NOTIFY payload must stay under 8000 bytes.
pub(crate) const MAX_PAYLOAD: usize = 7000;

/// How this process takes part, from `serve --replica-name … --peer-addr …`.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub name: String,
    pub peer_addr: SocketAddr,
    /// The address peers dial (default: `peer_addr`).
    pub peer_advertise: Option<String>,
}

#[derive(Debug, Error)]
pub enum ReplicaError {
    #[error(
        "replica name {0:?} is not valid: use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
    )]
    BadName(String),
    #[error(
        "replicas need PostgreSQL (--database-url postgres://…): SQLite belongs to one process"
    )]
    NeedsPostgres,
    #[error(
        "replicas {0} are running on this database: a bastion without --replica-name would \
         take over their executions and their nodes. Start it as a replica too (--replica-name \
         NAME --peer-addr ADDR), or stop the replicas first (a stopped replica is forgotten \
         5 s after its last heartbeat)"
    )]
    LiveReplicas(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("peering: {0}")]
    Pki(#[from] crate::pki::PkiError),
}

pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The LISTEN/NOTIFY channels of one deployment. Channels are per database,
/// while deployments may share one in several schemas; and anyone who may
/// connect to the database may NOTIFY. So the names come from a secret every
/// replica derives from the master key: unique per deployment, not guessable.
#[derive(Debug, Clone)]
pub(crate) struct Channels {
    pub presence: String,
    pub events: String,
    pub exec: String,
}

impl Channels {
    fn new(secret: &[u8; 32]) -> Channels {
        let id = hex::encode(&secret[..8]);
        Channels {
            presence: format!("postern_{id}_presence"),
            events: format!("postern_{id}_events"),
            exec: format!("postern_{id}_exec"),
        }
    }
}

#[derive(Debug)]
struct View {
    read_at: Instant,
    db_now: i64,
    replicas: HashMap<String, ReplicaRow>,
}

#[derive(Debug)]
pub(crate) enum PresenceOp {
    Up(String, u64),
    Down(String, u64),
}

/// This replica's view of the others, and its part in presence.
#[derive(Debug)]
pub struct Replicas {
    pub name: String,
    pub(crate) store: Store,
    pub(crate) advertise: String,
    pub(crate) started_at: AtomicI64,
    pub(crate) channels: Channels,
    view: Mutex<View>,
    /// Nodes held by other replicas: node → (replica, connection).
    pub(crate) remote: Mutex<HashMap<String, (String, u64)>>,
    pub(crate) ops: mpsc::Sender<PresenceOp>,
    pub(crate) ops_rx: Mutex<Option<mpsc::Receiver<PresenceOp>>>,
    pub peers: peers::PeerPool,
    pub(crate) db_ok: AtomicBool,
    pub routed_out: AtomicU64,
    pub routed_in: AtomicU64,
    pub(crate) events: events::EventLog,
    /// When the table of replicas was last read on demand (rate limit).
    pub(crate) refreshed: Mutex<Option<Instant>>,
    /// Signs presence notices: a login that can see the channel's name (a
    /// monitoring role reads LISTEN statements in pg_stat_activity) must not be
    /// able to make nodes look moved or gone.
    pub(crate) notice_key: ring::hmac::Key,
    /// Set when another process took this replica's name: on the way out it
    /// must not erase what now belongs to that process.
    pub(crate) superseded: AtomicBool,
}

impl Replicas {
    /// Joins the table of replicas under `cfg.name` (refused while a live replica
    /// holds the name) and prepares peering.
    /// `channel_secret` and `notice_secret`: derived from the master key (see
    /// [`Channels`] and [`Replicas::sign`]).
    pub async fn join(
        store: &Store,
        pki: &Pki,
        cfg: &ReplicaConfig,
        queue: usize,
        channel_secret: &[u8; 32],
        notice_secret: &[u8; 32],
    ) -> Result<Arc<Replicas>, ReplicaError> {
        if !valid_name(&cfg.name) {
            return Err(ReplicaError::BadName(cfg.name.clone()));
        }
        if store.backend() != crate::store::Backend::Postgres {
            return Err(ReplicaError::NeedsPostgres);
        }
        let advertise = cfg
            .peer_advertise
            .clone()
            .unwrap_or_else(|| cfg.peer_addr.to_string());
        let lease = REPLICA_LEASE.as_millis() as i64;
        let started_at = store.join_replicas(&cfg.name, &advertise, lease).await?;
        let (ops, rx) = mpsc::channel(queue.max(1024));
        Ok(Arc::new(Replicas {
            name: cfg.name.clone(),
            store: store.clone(),
            advertise,
            started_at: AtomicI64::new(started_at),
            channels: Channels::new(channel_secret),
            view: Mutex::new(View {
                read_at: Instant::now(),
                db_now: 0,
                replicas: HashMap::new(),
            }),
            remote: Mutex::new(HashMap::new()),
            ops,
            ops_rx: Mutex::new(Some(rx)),
            peers: peers::PeerPool::new(pki, &cfg.name)?,
            db_ok: AtomicBool::new(true),
            routed_out: AtomicU64::new(0),
            routed_in: AtomicU64::new(0),
            events: events::EventLog::starting_at(started_at),
            refreshed: Mutex::new(None),
            notice_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, notice_secret),
            superseded: AtomicBool::new(false),
        }))
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remote(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, u64)>> {
        self.remote.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether replica `name` beat its heartbeat within the lease (as of the last
    /// reading, aged by the time since).
    pub fn alive(&self, name: &str) -> bool {
        let v = self.view();
        let Some(r) = v.replicas.get(name) else {
            return false;
        };
        let age = v.db_now - r.heartbeat_at + v.read_at.elapsed().as_millis() as i64;
        age < REPLICA_LEASE.as_millis() as i64
    }

    /// The live peer replicas with their addresses.
    pub fn live_peers(&self) -> Vec<(String, String)> {
        let names: Vec<(String, String)> = self
            .view()
            .replicas
            .values()
            .filter(|r| r.name != self.name)
            .map(|r| (r.name.clone(), r.peer_addr.clone()))
            .collect();
        names.into_iter().filter(|(n, _)| self.alive(n)).collect()
    }

    pub(crate) fn peer_addr(&self, name: &str) -> Option<String> {
        self.view().replicas.get(name).map(|r| r.peer_addr.clone())
    }

    /// The live replica holding `node_id`'s channel, other than this one.
    pub fn holder(&self, node_id: &str) -> Option<(String, u64)> {
        let held = self.remote().get(node_id).cloned()?;
        self.alive(&held.0).then_some(held)
    }

    /// Whether the database answered the last heartbeat.
    pub fn database_ok(&self) -> bool {
        self.db_ok.load(Ordering::Relaxed)
    }

    pub(crate) async fn local_up(&self, node: String, conn: u64) {
        self.remote().remove(&node);
        let _ = self.ops.send(PresenceOp::Up(node, conn)).await;
    }

    pub(crate) async fn local_down(&self, node: String, conn: u64) {
        let _ = self.ops.send(PresenceOp::Down(node, conn)).await;
    }

    pub(crate) async fn publish_cut(&self, node_id: &str) {
        if let Err(e) = self.publish(events::KIND_CUT, node_id).await {
            tracing::error!(node = %node_id, error = %e, "cannot tell the other replicas to cut the node off; a channel there ends at its next certificate check");
        }
    }

    /// A presence notice: `replica|changes|mac`.
    pub(crate) fn sign(&self, body: &str) -> String {
        sign(&self.notice_key, body)
    }

    /// The body of a presence notice signed by a replica of this deployment.
    pub(crate) fn verified<'a>(&self, notice: &'a str) -> Option<&'a str> {
        verified(&self.notice_key, notice)
    }

    /// A clean stop: this replica's rows go, and its executions are let go to
    /// the others at once (they need not wait for the lease to run out). Not
    /// after another process took the name: its rows are not ours to erase.
    pub async fn leave(&self) {
        if self.superseded.load(Ordering::Relaxed) {
            return;
        }
        let store = &self.store;
        let started_at = self.started_at.load(Ordering::Relaxed);
        match store.leave_replicas(&self.name, started_at).await {
            Ok(()) => {
                let reset = self.sign(&format!("{}|reset", self.name));
                notify(store, &self.channels.presence, &reset).await;
                notify(store, &self.channels.exec, &self.name).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not leave the table of replicas; the others notice within the lease")
            }
        }
    }

    /// Replaces the mirror of other replicas' nodes (after a listener reconnect).
    pub(crate) fn reload(&self, rows: Vec<crate::store::PresenceRow>) {
        let mut remote = self.remote();
        remote.clear();
        for r in rows {
            if r.replica != self.name {
                remote.insert(
                    r.node_id,
                    (r.replica, u64::try_from(r.conn_id).unwrap_or(0)),
                );
            }
        }
    }

    /// Applies a verified presence notice (see [`Replicas::verified`]); answers
    /// the nodes it took that this replica also holds (the caller checks which
    /// channel is newest).
    pub(crate) fn apply_presence(&self, body: &str) -> Vec<String> {
        let Some((replica, changes)) = body.split_once('|') else {
            return Vec::new();
        };
        if replica == self.name {
            return Vec::new();
        }
        let mut remote = self.remote();
        if changes == "reset" {
            remote.retain(|_, (r, _)| r != replica);
            return Vec::new();
        }
        let mut taken = Vec::new();
        for c in changes.split(',') {
            let (up, rest) = match c.split_at_checked(1) {
                Some(("+", rest)) => (true, rest),
                Some(("-", rest)) => (false, rest),
                _ => continue,
            };
            let Some((node, conn)) = rest.rsplit_once(':') else {
                continue;
            };
            let Ok(conn) = conn.parse::<u64>() else {
                continue;
            };
            if up {
                remote.insert(node.to_string(), (replica.to_string(), conn));
                taken.push(node.to_string());
            } else if remote
                .get(node)
                .is_some_and(|(r, c)| r == replica && *c == conn)
            {
                remote.remove(node);
            }
        }
        taken
    }

    /// Whether `name` is in this replica's view (a replica that joined since the
    /// last heartbeat is not yet).
    pub(crate) fn knows(&self, name: &str) -> bool {
        self.view().replicas.contains_key(name)
    }

    /// Reads the table of replicas now, at most once a second (a flood of
    /// notifications naming unknown replicas costs one read a second).
    pub(crate) async fn refresh_limited(&self) -> Result<(), StoreError> {
        {
            let mut last = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        self.refresh().await
    }

    /// Reads the table of replicas now.
    pub(crate) async fn refresh(&self) -> Result<(), StoreError> {
        let (db_now, rows) = self.store.replicas().await?;
        self.set_view(db_now, rows);
        Ok(())
    }

    /// Takes a reading of the table of replicas, made at `db_now`.
    pub(crate) fn set_view(&self, db_now: i64, rows: Vec<ReplicaRow>) {
        let mut v = self.view();
        v.read_at = Instant::now();
        v.db_now = db_now;
        v.replicas = rows
            .into_iter()
            .map(|row| (row.name.clone(), row))
            .collect();
    }

    pub fn remote_count(&self) -> usize {
        self.remote().len()
    }
}

/// `body|mac`: 128 bits of HMAC-SHA256 under the deployment's notice key.
fn sign(key: &ring::hmac::Key, body: &str) -> String {
    let tag = ring::hmac::sign(key, body.as_bytes());
    format!("{body}|{}", hex::encode(&tag.as_ref()[..16]))
}

/// The body of a notice signed under `key`, or `None`.
fn verified<'a>(key: &ring::hmac::Key, notice: &'a str) -> Option<&'a str> {
    let (body, mac) = notice.rsplit_once('|')?;
    let mac = hex::decode(mac).ok()?;
    let tag = ring::hmac::sign(key, body.as_bytes());
    // Constant time, as any comparison against a secret-derived value.
    let ok =
        mac.len() == 16 && bool::from(subtle::ConstantTimeEq::ct_eq(&tag.as_ref()[..16], &mac[..]));
    ok.then_some(body)
}

/// `SELECT pg_notify(…)`; a lost notification costs latency only (tables are
/// re-read), so a failure is logged, not returned.
pub(crate) async fn notify(store: &Store, channel: &str, payload: &str) {
    if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(store.pool())
        .await
    {
        tracing::warn!(channel, error = %e, "could not notify the other replicas");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_names_are_dns_labels() {
        for ok in ["r1", "bastion-a", "0"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "r_1",
            "r.1",
            &"x".repeat(64),
            "r 1",
            "r|1",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn presence_notices_are_signed_and_checked() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7; 32]);
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[8; 32]);
        let n = sign(&key, "r1|+n1:3");
        assert_eq!(verified(&key, &n), Some("r1|+n1:3"));
        assert_eq!(verified(&other, &n), None);
        for forged in [
            "r1|reset",
            "r1|reset|00",
            "r1|reset|zz",
            "",
            "|",
            &n.replace("+n1", "+n2"),
            &format!("{n}|"),
        ] {
            assert_eq!(verified(&key, forged), None, "{forged}");
        }
    }

    #[test]
    fn notification_channels_are_per_deployment_and_safe() {
        let c = Channels::new(&[0xab; 32]);
        assert_eq!(c.presence, "postern_abababababababab_presence");
        let other = Channels::new(&[0xcd; 32]);
        assert_ne!(c.events, other.events);
        // Channel names are identifiers: under 63 bytes, lowercase, no quoting.
        assert!(c.presence.len() < 63 && c.events.len() < 63 && c.exec.len() < 63);
    }
}
