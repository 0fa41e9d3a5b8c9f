//! Per-org retention: recordings (and relayed sessions' rows) are deleted when
//! they are older than their org's `recording_retention_days`, each deletion
//! in the audit log with what was deleted and the chain's head it had.
//!
//! Every replica sweeps; a recording is deleted by one statement, and only the
//! replica whose statement deleted it writes the entry, so several replicas
//! neither fail nor audit a deletion twice. A sweep takes a bounded batch at a
//! time, so a first retention over years of recordings does not hold the store.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::audit::{Auditor, Event};
use crate::clock::{now_ms, rfc3339};
use crate::store::Store;

/// How often a replica looks for expired recordings.
pub const EVERY: Duration = Duration::from_secs(600);
/// Recordings deleted per statement batch.
const BATCH: i64 = 200;
const DAY_MS: i64 = 86_400_000;
/// Batches per org and sweep: the rest waits for the next one.
const BATCHES: usize = 50;

/// Sweeps now and then every [`EVERY`] until shutdown.
pub async fn run(store: Store, audit: Auditor, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sweep(&store, &audit, now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "recordings past their org's retention deleted"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot apply recording retention; trying again later")
            }
        }
    }
}

/// Deletes what has expired at `now`; answers how many this replica deleted.
pub async fn sweep(
    store: &Store,
    audit: &Auditor,
    now: i64,
) -> Result<usize, crate::store::StoreError> {
    let mut deleted = 0;
    for (org, days) in store.retention_orgs().await? {
        let before = now.saturating_sub(days.saturating_mul(DAY_MS));
        for _ in 0..BATCHES {
            let rows = store.recordings_ended_before(&org, before, BATCH).await?;
            let full = rows.len() as i64 == BATCH;
            for r in rows {
                // One that another replica deleted first is its to audit.
                if !store.delete_recording(&r.id).await? {
                    continue;
                }
                deleted += 1;
                // Written before the next deletion: the log never lags the
                // store by more than one recording.
                audit
                    .batched_written(
                        Event::new("recording.expired", "ok")
                            .org(r.org_id.clone())
                            .actor("postern (the org's recording retention)")
                            .project(r.project_id.clone())
                            .target(format!("recording:{}", r.id))
                            .target(format!("node:{}", r.hostname))
                            .detail(json!({
                                "recording": r.id, "user": r.user_name, "node": r.hostname,
                                "kind": r.kind, "started_at": rfc3339(r.started_at),
                                "ended_at": r.ended_at.map(rfc3339), "last_hash": r.last_hash,
                                "retention_days": days,
                            })),
                    )
                    .await;
            }
            if !full {
                break;
            }
        }
    }
    Ok(deleted)
}
