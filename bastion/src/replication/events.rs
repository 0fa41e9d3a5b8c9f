//! Reading and applying what other replicas published (see
//! `replicas::events` for the log and its rules).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::replicas::Replicas;
use crate::replicas::events::{
    BATCH, KEEP, KIND_ACCESS, KIND_CUT, KIND_KUBE_GATEWAY, POLL, REREAD,
};
use crate::state::Shared;
use crate::store::ReplicaEvent;

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
        KIND_ACCESS => shared.access.apply_published(&e.origin, &e.payload).await,
        KIND_CUT => {
            if shared.fleet.cut_local(&e.payload) {
                tracing::info!(node = %e.payload, by = %e.origin, "node cut off by another replica (disabled or deleted)");
            }
        }
        KIND_KUBE_GATEWAY => {
            shared
                .access
                .apply_published_gateway(&e.origin, &e.payload)
                .await
        }
        other => {
            tracing::warn!(kind = %postern_api::validate::peer_line(other, 64), "unknown replica event (a newer replica?); ignored");
        }
    }
}
