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
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::Replicas;
use crate::state::Shared;
use crate::store::{ReplicaEvent, StoreError};

pub const KIND_ACCESS: &str = "access";
pub const KIND_CUT: &str = "cut";
/// A node's Kubernetes gateway role granted or taken back (`kube::GatewayChange`).
pub const KIND_KUBE_GATEWAY: &str = "kube_gateway";

/// How often a replica reads new events without being woken.
const POLL: Duration = Duration::from_secs(2);
/// How far back (ms) each read looks again, for events that committed late: a
/// writer's transaction is ended by the server after 10 s idle
/// (`store::TX_BOUND`), so none commits later than this after its insert.
const REREAD: i64 = 30_000;
/// How long events are kept (ms). A replica whose database was away longer
/// misses what was pruned meanwhile; a day covers any outage an operator lets
/// run with the replica still serving.
const KEEP: i64 = 24 * 3_600_000;
/// Events read at once.
const BATCH: i64 = 5_000;

#[derive(Debug, Default)]
pub(crate) struct EventLog {
    /// Database time up to which events have been read (minus [`REREAD`]).
    watermark: AtomicI64,
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
    fn first_time(&self, e: &ReplicaEvent) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(e.seq, e.created_at)
            .is_none()
    }

    fn advance(&self, to: i64) {
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

/// Reads and applies new events until shutdown; prunes old ones now and then.
pub(super) async fn run(shared: Arc<Shared>, r: Arc<Replicas>) {
    let mut reads = 0u64;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
            _ = r.events.wake.notified() => {}
        }
        read(&shared, &r).await;
        reads += 1;
        if reads.is_multiple_of(300) {
            let before = r.events.watermark.load(Ordering::Relaxed) - KEEP;
            if let Err(e) = shared.store.prune_events(before).await {
                tracing::debug!(error = %e, "cannot prune old replica events");
            }
        }
    }
}

async fn read(shared: &Arc<Shared>, r: &Replicas) {
    let after = r.events.watermark.load(Ordering::Relaxed) - REREAD;
    let (now, events) = match shared.store.events_since(after, BATCH).await {
        Ok(got) => got,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read replica events; will retry");
            return;
        }
    };
    let full = events.len() as i64 >= BATCH;
    let last_at = events.last().map(|e| e.created_at);
    for e in &events {
        if !r.events.first_time(e) || e.origin == r.name {
            continue;
        }
        apply(shared, e).await;
    }
    // A full batch: continue from its last event, not from now.
    let to = if full {
        last_at.unwrap_or(now) - 1 + REREAD
    } else {
        now
    };
    r.events.advance(to);
    if full {
        r.events.wake.notify_one();
    }
}

async fn apply(shared: &Arc<Shared>, e: &ReplicaEvent) {
    match e.kind.as_str() {
        KIND_ACCESS => crate::access::apply_published(shared, &e.origin, &e.payload).await,
        KIND_CUT => {
            if shared.fleet.cut_local(&e.payload) {
                tracing::info!(node = %e.payload, by = %e.origin, "node cut off by another replica (disabled or deleted)");
            }
        }
        KIND_KUBE_GATEWAY => {
            crate::access::apply_published_gateway(shared, &e.origin, &e.payload).await
        }
        other => {
            tracing::warn!(kind = %postern_api::validate::peer_line(other, 64), "unknown replica event (a newer replica?); ignored");
        }
    }
}
