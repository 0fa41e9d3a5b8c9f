//! Audit entries that doors write once per request (the Kubernetes door: one
//! per API call, thousands a second), appended in batches: one owned writer
//! takes whatever has queued and appends it in one transaction, so a burst
//! costs one commit, not one per request. Nothing is dropped while the bastion
//! runs: the queue is bounded, a full queue makes `record` wait, and an entry
//! from code that cannot wait (`record_soon`, from a drop) waits for room in a
//! task of its own. A batch the database cannot take now (unreachable, busy)
//! is tried again whole, with backoff, until shutdown; a batch that fails
//! otherwise is written again entry by entry, so one bad entry never loses the
//! others; what still fails is logged and counted. Under load, commits are
//! spaced so that each carries more entries (`store::pacing`); the entries go
//! in a few multi-row statements (`Audit::record_many`).
//!
//! Known limit: during a long outage, or while a flood of fail-closed writes
//! (`Auditor::before`, one commit each) takes the writing connection turn
//! after turn, the tasks of `record_soon` grow with the requests that end.
//! Bounding them would drop entries; writing fail-closed entries through this
//! appender (one commit for many) would remove the flood's advantage.
//!
//! A caller may also wait until its entry is committed (`record_written`): an
//! admin's change is answered only once its outcome is in the log, so the
//! admin who reads the log next finds it, and concurrent changes still share
//! one commit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Audit, Event};
use crate::metrics::{Metrics, add, inc};
use crate::store::pacing;

/// Entries waiting at most.
pub const CAPACITY: usize = 4096;
/// Entries in one transaction at most.
const BATCH: usize = 512;
/// How long the writer keeps draining at shutdown.
const DRAIN: Duration = Duration::from_secs(10);
/// The first wait before a batch is tried again while the database is
/// unreachable, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(2);
/// How long `record_written` waits for its commit before it goes on (the entry
/// stays queued; a log that slow is already logged and counted).
const WRITTEN_WAIT: Duration = Duration::from_secs(10);

/// An entry, and who waits for it to be committed.
type Queued = (Event, Option<oneshot::Sender<()>>);

#[derive(Debug, Clone)]
pub struct AuditBatch {
    tx: mpsc::Sender<Queued>,
    metrics: Arc<Metrics>,
}

impl AuditBatch {
    pub fn start(
        audit: Audit,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> AuditBatch {
        let (tx, rx) = mpsc::channel(CAPACITY);
        tasks.spawn(write(audit, metrics.clone(), rx, shutdown));
        AuditBatch { tx, metrics }
    }

    /// An entry that came after the appender stopped: logged and counted.
    fn gone(&self, ev: &Event) {
        inc(&self.metrics.audit_failures);
        tracing::error!(action = %ev.action, "audit writer stopped (the bastion is stopping); entry not written");
    }

    /// Queues an entry; waits while the queue is full.
    pub async fn record(&self, ev: Event) {
        if let Err(e) = self.tx.send((ev, None)).await {
            self.gone(&e.0.0);
        }
    }

    /// Queues an entry and waits until the batch holding it is committed (or
    /// failed, which is logged and counted), at most [`WRITTEN_WAIT`].
    pub async fn record_written(&self, ev: Event) {
        let (done, written) = oneshot::channel();
        if let Err(e) = self.tx.send((ev, Some(done))).await {
            self.gone(&e.0.0);
            return;
        }
        if tokio::time::timeout(WRITTEN_WAIT, written).await.is_err() {
            tracing::warn!("audit entry not committed within {WRITTEN_WAIT:?}; answering anyway");
        }
    }

    /// Queues an entry from code that cannot wait (a drop): at once when there
    /// is room, else from a task of its own.
    pub fn record_soon(&self, ev: Event, tasks: &TaskTracker) {
        match self.tx.try_send((ev, None)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full((ev, _))) => {
                let me = self.clone();
                tasks.spawn(async move { me.record(ev).await });
            }
            Err(mpsc::error::TrySendError::Closed((ev, _))) => self.gone(&ev),
        }
    }
}

async fn write(
    audit: Audit,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Queued>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    // When the next commit may start, if the last one said the appender is
    // busy (`store::pacing`).
    let mut next_due: Option<tokio::time::Instant> = None;
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            ev = rx.recv() => ev,
        };
        let Some(first) = first else { return };
        batch.push(first);
        // An entry someone waits for (an admin's change is answered once its
        // entry is committed) is not held for the spacing; a shutdown does
        // not wait either.
        let due = next_due.filter(|_| !shutdown.is_cancelled());
        pacing::gather(&mut rx, &mut batch, BATCH, due, |(_, done)| done.is_some()).await;
        let started = tokio::time::Instant::now();
        next_due = pacing::spacing(batch.len()).map(|d| started + d);
        flush(&audit, &metrics, &mut batch, &shutdown).await;
    }
    // Stopping: what was queued is still written, within a bound; what is
    // left then is counted.
    rx.close();
    let drained = tokio::time::timeout(DRAIN, async {
        while let Some(ev) = rx.recv().await {
            batch.push(ev);
            if batch.len() >= BATCH {
                flush(&audit, &metrics, &mut batch, &shutdown).await;
            }
        }
        flush(&audit, &metrics, &mut batch, &shutdown).await;
    })
    .await;
    if drained.is_err() {
        // A batch cut in its write is not counted: it may have committed.
        let left = batch.len() + rx.len();
        add(&metrics.audit_failures, left);
        tracing::error!(
            entries = left,
            "audit entries not written within {DRAIN:?} of the stop"
        );
    }
}

/// Writes the batch. While the database is unreachable or busy, the whole
/// batch is tried again with backoff (until shutdown) rather than entry by
/// entry: each of those would wait out the same outage, one after the other.
/// Any other failure is written again entry by entry, so one bad entry never
/// loses the others.
async fn flush(
    audit: &Audit,
    metrics: &Metrics,
    batch: &mut Vec<Queued>,
    shutdown: &CancellationToken,
) {
    if batch.is_empty() {
        return;
    }
    let (evs, waiting): (Vec<Event>, Vec<_>) = std::mem::take(batch).into_iter().unzip();
    let mut wait = RETRY_FIRST;
    let failed = loop {
        match audit.record_many(evs.clone()).await {
            Ok(_) => break None,
            Err(e) if e.is_unavailable() && !shutdown.is_cancelled() => {
                tracing::warn!(error = %e, entries = evs.len(), "audit log unwritable; trying the batch again in {wait:?}");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // No further attempt: the drain after shutdown has its
                    // own bound, and this one could take a whole timeout.
                    _ = shutdown.cancelled() => break Some(e),
                }
                wait = (wait * 2).min(RETRY_CAP);
            }
            Err(e) => break Some(e),
        }
    };
    match failed {
        None => {}
        Some(e) if e.is_unavailable() => {
            // Stopping, with the database still away.
            add(&metrics.audit_failures, evs.len());
            tracing::error!(error = %e, entries = evs.len(), "audit log unwritable at shutdown; entries not written");
        }
        Some(e) => {
            tracing::warn!(error = %e, entries = evs.len(), "audit batch failed; writing its entries one by one");
            for ev in evs {
                if let Err(e) = audit.record(ev).await {
                    inc(&metrics.audit_failures);
                    tracing::error!(error = %e, "could not write audit entry");
                }
            }
        }
    }
    for done in waiting.into_iter().flatten() {
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::Store;
    use sqlx::Connection;

    #[tokio::test]
    async fn entries_wait_out_an_unwritable_log_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        let audit = Audit::new(store);
        let metrics = Arc::new(Metrics::default());
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let batch = AuditBatch::start(audit.clone(), metrics.clone(), &tasks, shutdown.clone());
        // Another writer holds the file's write lock for two of SQLite's busy
        // timeouts (5 s each): written entry by entry, the first entry would
        // have waited out one on its own and been lost.
        let url = format!("sqlite://{}", dir.path().join("postern.db").display());
        let mut other = sqlx::sqlite::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        for i in 0..3 {
            batch
                .record(Event::new("test", "ok").actor(format!("a{i}")))
                .await;
        }
        tokio::time::sleep(Duration::from_secs(11)).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        batch
            .record_written(Event::new("test", "ok").actor("a3"))
            .await;
        assert_eq!(audit.verify().await.unwrap().unwrap(), 4);
        let (_, page) = audit.page(None, 10, 0).await.unwrap();
        let actors: Vec<_> = page.iter().filter_map(|e| e.actor.as_deref()).collect();
        assert_eq!(actors, ["a3", "a2", "a1", "a0"]);
        assert_eq!(
            metrics
                .audit_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        shutdown.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .unwrap();
        // After the stop, an entry is counted as not written, however it
        // comes.
        batch.record(Event::new("test", "late")).await;
        batch.record_soon(Event::new("test", "late"), &tasks);
        batch.record_written(Event::new("test", "late")).await;
        assert_eq!(
            metrics
                .audit_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }
}
