//! Audit entries that doors write once per request (the Kubernetes door: one
//! per API call, thousands a second), appended in batches: one owned writer
//! takes whatever has queued and appends it in one transaction, so a burst
//! costs one commit, not one per request. Nothing is dropped: the queue is
//! bounded and a full queue makes the request that ends wait. A batch that
//! fails is written again entry by entry, so one bad entry never loses the
//! others; what still fails is logged and counted. Under load, commits are
//! spaced so that each carries more entries (`store::pacing`); the entries go
//! in a few multi-row statements (`Audit::record_many`).
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
use crate::metrics::{Metrics, inc};
use crate::store::pacing;

/// Entries waiting at most.
pub const CAPACITY: usize = 4096;
/// Entries in one transaction at most.
const BATCH: usize = 512;
/// How long the writer keeps draining at shutdown.
const DRAIN: Duration = Duration::from_secs(10);
/// How long `record_written` waits for its commit before it goes on (the entry
/// stays queued; a log that slow is already logged and counted).
const WRITTEN_WAIT: Duration = Duration::from_secs(10);

/// An entry, and who waits for it to be committed.
type Queued = (Event, Option<oneshot::Sender<()>>);

#[derive(Debug, Clone)]
pub struct AuditBatch {
    tx: mpsc::Sender<Queued>,
}

impl AuditBatch {
    pub fn start(
        audit: Audit,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> AuditBatch {
        let (tx, rx) = mpsc::channel(CAPACITY);
        tasks.spawn(write(audit, metrics, rx, shutdown));
        AuditBatch { tx }
    }

    /// Queues an entry; waits while the queue is full.
    pub async fn record(&self, ev: Event) {
        if let Err(e) = self.tx.send((ev, None)).await {
            tracing::error!(action = %e.0.0.action, "audit writer gone; entry not written");
        }
    }

    /// Queues an entry and waits until the batch holding it is committed (or
    /// failed, which is logged and counted), at most [`WRITTEN_WAIT`].
    pub async fn record_written(&self, ev: Event) {
        let (done, written) = oneshot::channel();
        if let Err(e) = self.tx.send((ev, Some(done))).await {
            tracing::error!(action = %e.0.0.action, "audit writer gone; entry not written");
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
            Err(mpsc::error::TrySendError::Closed((ev, _))) => {
                tracing::error!(action = %ev.action, "audit writer gone; entry not written");
            }
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
            ev = rx.recv() => ev,
            _ = shutdown.cancelled() => break,
        };
        let Some(first) = first else { return };
        batch.push(first);
        pacing::gather(&mut rx, &mut batch, BATCH, next_due).await;
        let started = tokio::time::Instant::now();
        next_due = pacing::spacing(batch.len()).map(|d| started + d);
        flush(&audit, &metrics, &mut batch).await;
    }
    // Stopping: what was queued is still written, within a bound.
    let _ = tokio::time::timeout(DRAIN, async {
        rx.close();
        while let Some(ev) = rx.recv().await {
            batch.push(ev);
            if batch.len() >= BATCH {
                flush(&audit, &metrics, &mut batch).await;
            }
        }
        flush(&audit, &metrics, &mut batch).await;
    })
    .await;
}

async fn flush(audit: &Audit, metrics: &Metrics, batch: &mut Vec<Queued>) {
    if batch.is_empty() {
        return;
    }
    let (evs, waiting): (Vec<Event>, Vec<_>) = std::mem::take(batch).into_iter().unzip();
    if let Err(e) = audit.record_many(evs.clone()).await {
        tracing::warn!(error = %e, entries = evs.len(), "audit batch failed; writing its entries one by one");
        for ev in evs {
            if let Err(e) = audit.record(ev).await {
                inc(&metrics.audit_failures);
                tracing::error!(error = %e, "could not write audit entry");
            }
        }
    }
    for done in waiting.into_iter().flatten() {
        let _ = done.send(());
    }
}
