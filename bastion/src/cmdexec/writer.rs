//! The batch writer: result changes arrive on a channel and are written in one
//! transaction per batch, so 10,000 nodes answering at once cost a few commits,
//! not 10,000. A caller that needs to know its result is durable (before telling
//! the agent to drop its spool) waits for the batch's acknowledgement.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::{ResultUpdate, Store};

const MAX_BATCH: usize = 512;

#[derive(Debug)]
pub(super) struct Op {
    pub update: ResultUpdate,
    pub ack: Option<oneshot::Sender<bool>>,
}

pub(super) async fn run(store: Store, mut rx: mpsc::Receiver<Op>, shutdown: CancellationToken) {
    let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
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
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let updates: Vec<ResultUpdate> = batch.iter().map(|o| o.update.clone()).collect();
        let mut ok = store.apply_result_updates(&updates).await;
        if let Err(e) = &ok {
            tracing::warn!(error = %e, n = updates.len(), "writing results failed; retrying once");
            tokio::time::sleep(Duration::from_millis(200)).await;
            ok = store.apply_result_updates(&updates).await;
        }
        if let Err(e) = &ok {
            tracing::error!(error = %e, n = updates.len(), "cannot write results; agents keep them spooled");
        }
        for op in batch.drain(..) {
            if let Some(ack) = op.ack {
                let _ = ack.send(ok.is_ok());
            }
        }
    }
}
