//! The batch writer: result changes arrive on a channel and are written in one
//! transaction per batch, so 10,000 nodes answering at once cost a few commits,
//! not 10,000. A caller that needs to know its result is durable (before telling
//! the agent to drop its spool) waits for the batch's acknowledgement.
//!
//! Under load, commits are spaced so that each carries more rows: a commit
//! rewrites every page its rows touched and syncs the file. The spacing grows
//! with the last batch (`SPACING_PER_CHANGE` a change, up to `MAX_SPACING`),
//! so a steady trickle keeps its changes' latency low and a flood settles at
//! the longest spacing: its batches grow with the spacing, and the spacing
//! with its batches. On a 10,000-node fan-out, 10 ms apart, a commit carried
//! about 4 nodes; 50 ms apart, about 15: a quarter of the syncs, a fifth
//! fewer page writes, and the writer thread's CPU per node 0.55× (measured).
//! A change that comes after a quiet commit (one command to one node, say)
//! commits at once.
//!
//! One bad row must not fail its neighbours: when a batch fails for anything but
//! an unavailable database, each change is written again on its own, and only the
//! ones that fail alone are reported failed. The callers retry those.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::{ResultUpdate, Store, StoreError};

const MAX_BATCH: usize = 512;
/// The longest wait between two commits while changes keep coming.
const MAX_SPACING: Duration = Duration::from_millis(50);
/// The wait after a busy commit, for each change it carried.
const SPACING_PER_CHANGE: Duration = Duration::from_micros(2_500);
/// A batch this large says changes keep coming.
const BUSY_BATCH: usize = 4;

/// How long after a commit of `changes` the next one may start: none after a
/// quiet commit; after a busy one, longer the more it carried (4 changes:
/// 10 ms; 20 or more: `MAX_SPACING`).
fn spacing(changes: usize) -> Option<Duration> {
    (changes >= BUSY_BATCH).then(|| {
        SPACING_PER_CHANGE
            .saturating_mul(u32::try_from(changes).unwrap_or(u32::MAX))
            .min(MAX_SPACING)
    })
}

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
        // Busy: what arrives within the spacing joins this commit (at most a
        // full batch; a shutdown does not wait).
        let due = next_due.filter(|_| !shutdown.is_cancelled());
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
        next_due = spacing(batch.len()).map(|d| started + d);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_grows_with_the_last_batch_up_to_its_longest() {
        assert_eq!(spacing(0), None);
        assert_eq!(
            spacing(BUSY_BATCH - 1),
            None,
            "a quiet commit: the next at once"
        );
        assert_eq!(spacing(BUSY_BATCH), Some(Duration::from_millis(10)));
        assert_eq!(spacing(10), Some(Duration::from_millis(25)));
        assert_eq!(spacing(20), Some(MAX_SPACING));
        assert_eq!(spacing(MAX_BATCH), Some(MAX_SPACING));
        assert_eq!(spacing(usize::MAX), Some(MAX_SPACING));
    }
}
