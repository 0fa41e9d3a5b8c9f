//! The audit log, and the one way doors write to it: [`Auditor`], with three
//! named ways, each saying what it promises.
//!
//! - [`Auditor::before`]: written before the action, or the action does not
//!   happen (fail closed). For what changes something: an admin change, an SSH
//!   session, an execution, a Kubernetes change. Through the batch appender
//!   too, so a flood of them shares commits.
//! - [`Auditor::batched`]: queued for an appender that writes many in one
//!   transaction; waits while the queue is full and never drops. For records of
//!   what happened or was refused, where the caller must not fail because the
//!   log is slow, and a burst must cost one commit.
//! - [`Auditor::best_effort`] (and the per-source aggregates
//!   [`Auditor::failed_login`], [`Auditor::download`]): what unauthenticated
//!   peers cause. Bounded: a flood drops events, and how many is counted and
//!   itself recorded, so nobody outside can make the log, or the bastion,
//!   wait.
//!
//! Underneath is [`Audit`], the hash chain (`chain`): appends, reads, verify.

mod batch;
mod chain;
mod event;
pub mod queue;

use std::net::IpAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use chain::{Audit, AuditError, ChainBreak};
pub use event::Event;

use crate::metrics::Metrics;
use crate::store::Store;

/// The audit log as doors write to it: see the module's three ways.
#[derive(Debug, Clone)]
pub struct Auditor {
    log: Audit,
    batch: batch::AuditBatch,
    queue: queue::AuditQueue,
}

impl Auditor {
    /// Starts the batch appender and the bounded queue on `tasks`; both drain
    /// what they hold when `shutdown` is cancelled.
    pub fn start(
        store: Store,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Auditor {
        let log = Audit::new(store.clone());
        let queue =
            queue::AuditQueue::start(log.clone(), store, metrics.clone(), tasks, shutdown.clone());
        let batch = batch::AuditBatch::start(log.clone(), metrics, tasks, shutdown);
        Auditor { log, batch, queue }
    }

    /// Fail closed: the entry is in the chain when this returns `Ok`; on an
    /// error the caller must not act (and answers 503). Written by the batch
    /// appender, ahead of the other entries, so concurrent changes
    /// share one commit; refused when the database is away, and after ten
    /// seconds without a commit.
    pub async fn before(&self, ev: Event) -> Result<(), AuditError> {
        self.batch.record_before(ev).await
    }

    /// Never dropped: queued for the batch appender, waiting while its queue
    /// is full. A failed batch is written again entry by entry; what still
    /// fails is logged and counted (`postern_audit_failures_total`).
    pub async fn batched(&self, ev: Event) {
        self.batch.record(ev).await;
    }

    /// [`Auditor::batched`] (waiting while the queue is full), and waits until
    /// the entry is committed (at most ten seconds): for the outcome of an
    /// admin's change, so that whoever reads the log after the answer finds
    /// it.
    pub async fn batched_written(&self, ev: Event) {
        self.batch.record_written(ev).await;
    }

    /// [`Auditor::batched`] from code that cannot wait (a drop): queued at
    /// once when there is room, else by a task of its own on `tasks`, counted
    /// for `owner` (the user whose request it records).
    pub fn batched_soon(&self, ev: Event, owner: &str, tasks: &TaskTracker) {
        self.batch.record_soon(ev, owner, tasks);
    }

    /// So many entries of [`Auditor::batched_soon`] wait for room (a long
    /// database outage, a log slower than the requests), in all or of
    /// `owner`'s requests, that a door creating them takes no new request of
    /// anyone's, or of `owner`'s, until the appender catches up: entries are
    /// never dropped, so this bounds what waits.
    pub fn behind(&self, owner: &str) -> bool {
        self.batch.behind(owner)
    }

    /// Bounded, for what unauthenticated peers cause: dropped (and counted)
    /// when the queue is full, never waited for.
    pub fn best_effort(&self, ev: Event) {
        self.queue.push(ev);
    }

    /// A failed SSH login, best effort: the first from a source in a window at
    /// once, the rest of the window as one entry with their count and names.
    pub fn failed_login(&self, source: IpAddr, user: &str, keys_tried: Vec<String>) {
        self.queue.login_failed(source, user, keys_tried);
    }

    /// An unauthenticated download, best effort: the first of each file from
    /// a source in a window at once, repeats as one entry with their count.
    pub fn download(&self, source: IpAddr, file: &str, detail: serde_json::Value) {
        self.queue.download(source, file, detail);
    }

    /// The chain itself, for reads (listing, verify, export).
    pub fn log(&self) -> &Audit {
        &self.log
    }

    /// Events the bounded queue holds now (for tests and metrics).
    pub fn best_effort_pending(&self) -> usize {
        self.queue.pending()
    }
}
