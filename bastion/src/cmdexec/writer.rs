//! The batch writer: result changes arrive on a channel and are written in one
//! transaction per batch, so 10,000 nodes answering at once cost a few commits,
//! not 10,000. A caller that needs to know its result is durable (before telling
//! the agent to drop its spool) waits for the batch's acknowledgement.
//!
//! Under load, commits are spaced so that each carries more rows
//! (`store::pacing`): a change that comes after a quiet commit (one command
//! to one node, say) commits at once.
//!
//! One bad row must not fail its neighbours: when a batch fails for anything but
//! an unavailable database, each change is written again on its own, and only the
//! ones that fail alone are reported failed. The callers retry those.

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::{ResultUpdate, Store, StoreError, pacing};

const MAX_BATCH: usize = 512;

/// Why a change was not written.
#[derive(Debug, Clone)]
pub(super) struct WriteFailed {
    /// The database is unreachable or busy: the same write may succeed later.
    pub unavailable: bool,
    pub message: String,
}

impl From<&StoreError> for WriteFailed {
    fn from(e: &StoreError) -> Self {
        WriteFailed {
            unavailable: e.is_unavailable(),
            message: e.to_string(),
        }
    }
}

pub(super) type Ack = oneshot::Sender<Result<(), WriteFailed>>;

#[derive(Debug)]
pub(super) struct Op {
    pub update: ResultUpdate,
    pub ack: Option<Ack>,
}

pub(super) async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Op>,
    shutdown: CancellationToken,
    events: tokio::sync::watch::Sender<u64>,
) {
    let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    // When the next commit may start, if the last one said the writer is busy.
    let mut next_due: Option<tokio::time::Instant> = None;
    loop {
        let first = tokio::select! {
            op = rx.recv() => op,
            _ = shutdown.cancelled() => {
                // Write what is queued, then stop.
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { return };
        batch.push(first);
        // Busy: what arrives within the spacing joins this commit (a
        // shutdown does not wait).
        let due = next_due.filter(|_| !shutdown.is_cancelled());
        // Every result's node waits for its acknowledgement before it drops
        // its spool; that is the flood itself, so none is hurried.
        pacing::gather(&mut rx, &mut batch, MAX_BATCH, due, |_| false).await;
        let started = tokio::time::Instant::now();
        next_due = pacing::spacing(batch.len()).map(|d| started + d);
        if write_batch(&store, &mut batch).await {
            // Readers of live streams look for what was just committed.
            super::events_committed(&events);
        }
    }
}

/// Writes the batch; answers whether any event was written.
async fn write_batch(store: &Store, batch: &mut Vec<Op>) -> bool {
    let updates: Vec<ResultUpdate> = batch.iter().map(|o| o.update.clone()).collect();
    let err = match store.apply_result_updates(&updates).await {
        Ok(events) => {
            for op in batch.drain(..) {
                if let Some(ack) = op.ack {
                    let _ = ack.send(Ok(()));
                }
            }
            return events;
        }
        Err(e) => e,
    };
    if err.is_unavailable() || batch.len() == 1 {
        tracing::warn!(error = %err, n = batch.len(), "writing results failed; their nodes will retry");
        let failed = WriteFailed::from(&err);
        for op in batch.drain(..) {
            if let Some(ack) = op.ack {
                let _ = ack.send(Err(failed.clone()));
            }
        }
        return false;
    }
    tracing::warn!(error = %err, n = batch.len(), "a batch of results failed; writing each alone");
    let mut events = false;
    for op in batch.drain(..) {
        let r = store
            .apply_result_updates(std::slice::from_ref(&op.update))
            .await;
        if let Err(e) = &r {
            tracing::error!(error = %e, update = ?op.update.key(), "a result could not be written");
        }
        events |= matches!(r, Ok(true));
        if let Some(ack) = op.ack {
            let _ = ack.send(r.as_ref().map(|_| ()).map_err(WriteFailed::from));
        }
    }
    events
}
