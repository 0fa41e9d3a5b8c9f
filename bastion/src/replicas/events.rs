//! Events every replica must apply: an access change to cut, a node to cut off,
//! a Kubernetes gateway grant changed.
//!
//! They are rows in `replica_events`, written by the replica where the change
//! was made; NOTIFY (sent in the same transaction) only wakes the others. Each
//! replica reads what is new on a wake-up, every [`POLL`] and after its
//! listener reconnects, so one whose listener was away (a database outage, a
//! dead connection) applies what it missed instead of keeping sessions the
//! change should have cut. Each read looks [`REREAD`] back again for events that
//! committed late; sequence numbers already applied are skipped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::Replicas;
use crate::store::{ReplicaEvent, StoreError};

pub const KIND_ACCESS: &str = "access";
pub const KIND_CUT: &str = "cut";
/// A node's Kubernetes gateway role granted or taken back (`kube::GatewayChange`).
pub const KIND_KUBE_GATEWAY: &str = "kube_gateway";

/// How often a replica reads new events without being woken.
pub(crate) const POLL: Duration = Duration::from_secs(2);
/// How far back (ms) each read looks again, for events that committed late: a
/// writer's transaction is ended by the server after 10 s idle
/// (`store::TX_BOUND`), so none commits later than this after its insert.
pub(crate) const REREAD: i64 = 30_000;
/// How long events are kept (ms). A replica whose database was away longer
/// misses what was pruned meanwhile; a day covers any outage an operator lets
/// run with the replica still serving.
pub(crate) const KEEP: i64 = 24 * 3_600_000;
/// Events read at once.
pub(crate) const BATCH: i64 = 5_000;

#[derive(Debug, Default)]
pub(crate) struct EventLog {
    /// Database time up to which events have been read (minus [`REREAD`]).
    pub(crate) watermark: AtomicI64,
    /// Applied sequence numbers with their times, pruned behind the watermark.
    seen: Mutex<HashMap<i64, i64>>,
    pub(crate) wake: Notify,
}

impl EventLog {
    pub(crate) fn starting_at(db_ms: i64) -> EventLog {
        EventLog {
            watermark: AtomicI64::new(db_ms),
            ..EventLog::default()
        }
    }

    /// Marks `e` applied; `false` if it already was.
    pub(crate) fn first_time(&self, e: &ReplicaEvent) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(e.seq, e.created_at)
            .is_none()
    }

    pub(crate) fn advance(&self, to: i64) {
        let wm = self.watermark.fetch_max(to, Ordering::Relaxed).max(to);
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, at| *at >= wm - 2 * REREAD);
    }
}

impl Replicas {
    /// Records an event for every replica (this one has applied it already).
    /// Retried for a few seconds: an access change that does not reach the
    /// other replicas leaves sessions there that it should have cut.
    pub(crate) async fn publish(&self, kind: &str, payload: &str) -> Result<(), StoreError> {
        let mut attempt = 0u32;
        loop {
            match self
                .store
                .insert_event(&self.name, kind, payload, Some(&self.channels.events))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "cannot record an event for the other replicas; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
