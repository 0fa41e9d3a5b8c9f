//! The batch writer: result changes arrive on a channel and are written in one
//! transaction per batch, so 10,000 nodes answering at once cost a few commits,
//! not 10,000. A caller that needs to know its result is durable (before telling
//! the agent to drop its spool) waits for the batch's acknowledgement.
//!
//! Under load (the last batch held several changes), commits are at least
//! `COMMIT_SPACING` apart, so each carries more rows: a commit rewrites every
//! page its rows touched and syncs the file. On a 10,000-node fan-out, 10 ms
//! apart, a commit carried about 4 nodes; 50 ms apart, about 15: a quarter
//! of the syncs, a fifth fewer page writes, and the writer thread's CPU per
//! node 0.55× (measured). A result is then durable, and seen by live
//! readers, up to 50 ms later while the writer is busy. A change that comes
//! after a quiet commit (one command to one node, say) commits at once.
//!
//! One bad row must not fail its neighbours: when a batch fails for anything but
//! an unavailable database, each change is written again on its own, and only the
//! ones that fail alone are reported failed. The callers retry those.

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::{ResultUpdate, Store, StoreError};

const MAX_BATCH: usize = 512;
/// The least time between two commits while changes keep coming.
const COMMIT_SPACING: std::time::Duration = std::time::Duration::from_millis(50);
/// A batch this large says changes keep coming.
const BUSY_BATCH: usize = 4;

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
    // When the last commit started, if its batch said the writer is busy.
    let mut busy_since: Option<tokio::time::Instant> = None;
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
        // Busy: what arrives within the spacing joins this commit (at most a
        // full batch; a shutdown does not wait).
        let due = busy_since
            .map(|t| t + COMMIT_SPACING)
            .filter(|_| !shutdown.is_cancelled());
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => {
                    let Some(due) = due else { break };
                    match tokio::time::timeout_at(due, rx.recv()).await {
                        Ok(Some(op)) => batch.push(op),
                        _ => break,
                    }
                }
            }
        }
        let started = tokio::time::Instant::now();
        busy_since = (batch.len() >= BUSY_BATCH).then_some(started);
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
