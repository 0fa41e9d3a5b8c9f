//! Audit entries written through one appender, in batches: one owned writer
//! takes whatever has queued and appends it in one transaction, so a burst
//! costs one commit, not one per entry. Three kinds of entry share it:
//!
//! - records of what happened (the Kubernetes door: one per API call,
//!   thousands a second). Nothing is dropped while the bastion runs: the queue
//!   is bounded, a full queue makes `record` wait, and an entry from code that
//!   cannot wait (`record_soon`, from a drop) waits for room in a task of its
//!   own;
//! - entries someone waits to see committed (`record_written`): an admin's
//!   change is answered only once its outcome is in the log, so the admin who
//!   reads the log next finds it;
//! - fail-closed entries (`record_before`): the caller acts only once its entry
//!   is committed. They share commits with the rest, so a flood of changes
//!   cannot take the writing connection commit after commit and leave the
//!   others' entries waiting.
//!
//! An entry someone waits for is never held for the spacing. A batch the
//! database cannot take now (unreachable, busy) is tried again whole, with
//! backoff, until shutdown; its fail-closed entries are refused at once
//! instead (their actions do not happen), and so is every fail-closed entry
//! that comes while the appender waits for the database. A batch that fails
//! otherwise is written again entry by entry, so one bad entry never loses the
//! others; what still fails is logged and counted. Under load, commits are
//! spaced so that each carries more entries (`store::pacing`); the entries go
//! in a few multi-row statements (`Audit::record_many`).
//!
//! Memory: the tasks of `record_soon` are counted. Past `SPILL_LIMIT` of them
//! (a long outage, with requests still ending) the appender says it is behind
//! ([`AuditBatch::behind`]), and the doors that create such entries refuse new
//! requests until it catches up: entries are never dropped, and what waits is
//! bounded by the limit and the requests already open.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Audit, AuditError, Event};
use crate::metrics::{Metrics, add, inc};
use crate::store::pacing;

/// Entries waiting at most.
pub const CAPACITY: usize = 4096;
/// Tasks of `record_soon` waiting for room at most before the appender says
/// it is behind (about 1 KiB each with their entry).
const SPILL_LIMIT: usize = 16_384;
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
/// How long a fail-closed entry waits for its commit before its action is
/// refused (about what one write on its own could wait for SQLite's lock).
const BEFORE_WAIT: Duration = Duration::from_secs(10);

/// Who waits for an entry, and for what.
#[derive(Debug)]
enum Reply {
    /// Nobody: a record of what happened.
    None,
    /// The caller waits until its entry is committed (or failed, which is
    /// logged and counted).
    Committed(oneshot::Sender<()>),
    /// Fail closed: the caller acts only on `Ok`.
    Closed(oneshot::Sender<Result<(), AuditError>>),
}

impl Reply {
    fn waited(&self) -> bool {
        !matches!(self, Reply::None)
    }

    /// A fail-closed entry whose caller gave up: not written, since its
    /// action does not happen.
    fn abandoned(&self) -> bool {
        matches!(self, Reply::Closed(tx) if tx.is_closed())
    }
}

type Queued = (Event, Reply);

/// What the appender and its callers share.
#[derive(Debug)]
struct State {
    /// The appender is waiting for the database: fail-closed entries are
    /// refused at once, queued ones too.
    unavailable: watch::Sender<bool>,
}

#[derive(Debug, Clone)]
pub struct AuditBatch {
    tx: mpsc::Sender<Queued>,
    metrics: Arc<Metrics>,
    state: Arc<State>,
    spill_limit: usize,
}

impl AuditBatch {
    pub fn start(
        audit: Audit,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> AuditBatch {
        AuditBatch::start_sized(audit, metrics, tasks, shutdown, CAPACITY, SPILL_LIMIT)
    }

    fn start_sized(
        audit: Audit,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
        capacity: usize,
        spill_limit: usize,
    ) -> AuditBatch {
        let (tx, rx) = mpsc::channel(capacity);
        let state = Arc::new(State {
            unavailable: watch::Sender::new(false),
        });
        tasks.spawn(write(audit, metrics.clone(), state.clone(), rx, shutdown));
        AuditBatch {
            tx,
            metrics,
            state,
            spill_limit,
        }
    }

    /// An entry that came after the appender stopped: logged and counted.
    fn gone(&self, ev: &Event) {
        inc(&self.metrics.audit_failures);
        tracing::error!(action = %ev.action, "audit writer stopped (the bastion is stopping); entry not written");
    }

    /// Queues an entry; waits while the queue is full.
    pub async fn record(&self, ev: Event) {
        if let Err(e) = self.tx.send((ev, Reply::None)).await {
            self.gone(&e.0.0);
        }
    }

    /// Queues an entry and waits until the batch holding it is committed (or
    /// failed, which is logged and counted), at most [`WRITTEN_WAIT`].
    pub async fn record_written(&self, ev: Event) {
        let (done, written) = oneshot::channel();
        if let Err(e) = self.tx.send((ev, Reply::Committed(done))).await {
            self.gone(&e.0.0);
            return;
        }
        if tokio::time::timeout(WRITTEN_WAIT, written).await.is_err() {
            tracing::warn!("audit entry not committed within {WRITTEN_WAIT:?}; answering anyway");
        }
    }

    /// Fail closed: `Ok` once the entry is committed. Refused at once while
    /// the appender waits for the database, and after [`BEFORE_WAIT`]; a
    /// refused entry is not written later (unless its batch was already
    /// being committed when the caller gave up).
    pub async fn record_before(&self, ev: Event) -> Result<(), AuditError> {
        let away = || AuditError::Unwritten("the database is unreachable or busy".into());
        let mut unavailable = self.state.unavailable.subscribe();
        if *unavailable.borrow_and_update() {
            return Err(away());
        }
        let (tx, rx) = oneshot::channel();
        let written = tokio::time::timeout(BEFORE_WAIT, async {
            self.tx
                .send((ev, Reply::Closed(tx)))
                .await
                .map_err(|_| AuditError::Unwritten("the bastion is stopping".into()))?;
            // Queued behind a batch that waits for the database: refused as
            // soon as the appender knows (this entry is then skipped).
            tokio::select! {
                written = rx => written.unwrap_or_else(|_| {
                    Err(AuditError::Unwritten(
                        "the appender stopped before its commit".into(),
                    ))
                }),
                _ = unavailable.wait_for(|away| *away) => Err(away()),
            }
        })
        .await;
        written.unwrap_or_else(|_| {
            Err(AuditError::Unwritten(format!(
                "not committed within {BEFORE_WAIT:?}"
            )))
        })
    }

    /// Queues an entry from code that cannot wait (a drop): at once when there
    /// is room, else from a task of its own (counted: see [`Self::behind`]).
    pub fn record_soon(&self, ev: Event, tasks: &TaskTracker) {
        match self.tx.try_send((ev, Reply::None)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full((ev, _))) => {
                let me = self.clone();
                self.metrics.audit_waiting.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    me.record(ev).await;
                    me.metrics.audit_waiting.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(mpsc::error::TrySendError::Closed((ev, _))) => self.gone(&ev),
        }
    }

    /// So many entries of `record_soon` wait for room that a door creating
    /// them should take no new request until the appender catches up.
    pub fn behind(&self) -> bool {
        self.metrics.audit_waiting.load(Ordering::Relaxed) >= self.spill_limit as u64
    }
}

async fn write(
    audit: Audit,
    metrics: Arc<Metrics>,
    state: Arc<State>,
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
        // An entry someone waits for is not held for the spacing; a shutdown
        // does not wait either.
        let due = next_due.filter(|_| !shutdown.is_cancelled());
        pacing::gather(&mut rx, &mut batch, BATCH, due, |(_, r)| r.waited()).await;
        let started = tokio::time::Instant::now();
        next_due = pacing::spacing(batch.len()).map(|d| started + d);
        flush(
            &audit,
            &metrics,
            &state,
            std::mem::take(&mut batch),
            &shutdown,
        )
        .await;
    }
    // Stopping: what was queued is still written, within a bound; what is
    // left then is counted.
    rx.close();
    let drained = tokio::time::timeout(DRAIN, async {
        while let Some(ev) = rx.recv().await {
            batch.push(ev);
            if batch.len() >= BATCH {
                flush(
                    &audit,
                    &metrics,
                    &state,
                    std::mem::take(&mut batch),
                    &shutdown,
                )
                .await;
            }
        }
        flush(
            &audit,
            &metrics,
            &state,
            std::mem::take(&mut batch),
            &shutdown,
        )
        .await;
    })
    .await;
    if drained.is_err() {
        // A batch cut in its write is not counted: it may have committed.
        // Fail-closed entries are not lost entries: their actions were
        // refused when their senders were dropped.
        let left = batch
            .iter()
            .filter(|(_, r)| !matches!(r, Reply::Closed(_)))
            .count()
            + std::iter::from_fn(|| rx.try_recv().ok())
                .filter(|(_, r)| !matches!(r, Reply::Closed(_)))
                .count();
        add(&metrics.audit_failures, left);
        tracing::error!(
            entries = left,
            "audit entries not written within {DRAIN:?} of the stop"
        );
    }
}

/// Answers whoever waits for the entry.
fn answer(reply: Reply, result: Result<(), AuditError>) {
    match reply {
        Reply::None => {}
        Reply::Committed(tx) => {
            let _ = tx.send(());
        }
        Reply::Closed(tx) => {
            let _ = tx.send(result);
        }
    }
}

/// Refuses the batch's fail-closed entries (`why`) and keeps the rest.
fn refuse_closed(batch: &mut Vec<Queued>, why: &AuditError) {
    for (_, reply) in batch.extract_if(.., |(_, r)| matches!(r, Reply::Closed(_))) {
        answer(reply, Err(AuditError::Unwritten(why.to_string())));
    }
}

/// Writes the batch. While the database is unreachable or busy, the whole
/// batch is tried again with backoff (until shutdown) rather than entry by
/// entry: each of those would wait out the same outage, one after the other.
/// Its fail-closed entries are refused at once. Any other failure is written
/// again entry by entry, so one bad entry never loses the others.
async fn flush(
    audit: &Audit,
    metrics: &Metrics,
    state: &State,
    mut batch: Vec<Queued>,
    shutdown: &CancellationToken,
) {
    let mut wait = RETRY_FIRST;
    let failed = loop {
        batch.retain(|(_, r)| !r.abandoned());
        if batch.is_empty() {
            return;
        }
        let evs: Vec<Event> = batch.iter().map(|(ev, _)| ev.clone()).collect();
        match audit.record_many(evs).await {
            Ok(_) => {
                inc(&metrics.audit_commits);
                add(&metrics.audit_appended, batch.len());
                state
                    .unavailable
                    .send_if_modified(|away| std::mem::replace(away, false));
                break None;
            }
            Err(e) if e.is_unavailable() && !shutdown.is_cancelled() => {
                state
                    .unavailable
                    .send_if_modified(|away| !std::mem::replace(away, true));
                refuse_closed(&mut batch, &e);
                tracing::warn!(error = %e, entries = batch.len(), "audit log unwritable; trying the batch again in {wait:?}");
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
        None => {
            for (_, reply) in batch.drain(..) {
                answer(reply, Ok(()));
            }
        }
        Some(e) if e.is_unavailable() => {
            // Stopping, with the database still away.
            refuse_closed(&mut batch, &e);
            add(&metrics.audit_failures, batch.len());
            tracing::error!(error = %e, entries = batch.len(), "audit log unwritable at shutdown; entries not written");
            // Those waiting for a commit are let go (the loss is counted).
            batch.clear();
        }
        Some(e) => {
            tracing::warn!(error = %e, entries = batch.len(), "audit batch failed; writing its entries one by one");
            for (ev, reply) in batch.drain(..) {
                if reply.abandoned() {
                    continue;
                }
                let written = audit.record(ev).await.map(|_| ());
                if written.is_ok() {
                    inc(&metrics.audit_commits);
                    inc(&metrics.audit_appended);
                }
                if let Err(e) = &written {
                    if !matches!(reply, Reply::Closed(_)) {
                        inc(&metrics.audit_failures);
                    }
                    tracing::error!(error = %e, "could not write audit entry");
                }
                answer(reply, written);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::Store;
    use sqlx::Connection;

    struct Fixture {
        _dir: tempfile::TempDir,
        url: String,
        audit: Audit,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        batch: AuditBatch,
    }

    async fn fixture(capacity: usize, spill_limit: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        let audit = Audit::new(store);
        let metrics = Arc::new(Metrics::default());
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let batch = AuditBatch::start_sized(
            audit.clone(),
            metrics.clone(),
            &tasks,
            shutdown.clone(),
            capacity,
            spill_limit,
        );
        let url = format!("sqlite://{}", dir.path().join("postern.db").display());
        Fixture {
            _dir: dir,
            url,
            audit,
            metrics,
            tasks,
            shutdown,
            batch,
        }
    }

    /// Another connection holding the file's write lock, as a second writer
    /// or a stuck one would.
    async fn lock(url: &str) -> sqlx::sqlite::SqliteConnection {
        let mut other = sqlx::sqlite::SqliteConnection::connect(url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        other
    }

    async fn actors(audit: &Audit) -> Vec<String> {
        let (_, page) = audit.page(None, 100, 0).await.unwrap();
        page.iter().filter_map(|e| e.actor.clone()).collect()
    }

    fn load(n: &std::sync::atomic::AtomicU64) -> u64 {
        n.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn entries_wait_out_an_unwritable_log_and_none_is_lost() {
        let f = fixture(CAPACITY, SPILL_LIMIT).await;
        let batch = &f.batch;
        // Another writer holds the file's write lock for two of SQLite's busy
        // timeouts (5 s each): written entry by entry, the first entry would
        // have waited out one on its own and been lost.
        let mut other = lock(&f.url).await;
        for i in 0..3 {
            batch
                .record(Event::new("test", "ok").actor(format!("a{i}")))
                .await;
        }
        // A fail-closed entry queued behind the stuck batch is refused as
        // soon as the appender finds the log unwritable (after one busy
        // timeout), not after its own ten seconds, and is never written.
        let queued = tokio::spawn({
            let batch = batch.clone();
            async move {
                batch
                    .record_before(Event::new("test", "requested").actor("b0"))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(queued.is_finished(), "refused while the log is away");
        let refused = queued.await.unwrap().unwrap_err().to_string();
        assert!(refused.contains("unreachable or busy"), "{refused}");
        // One that comes now is refused at once.
        let refused = batch
            .record_before(Event::new("test", "requested").actor("b1"))
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("unreachable or busy"), "{refused}");
        tokio::time::sleep(Duration::from_secs(4)).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        batch
            .record_written(Event::new("test", "ok").actor("a3"))
            .await;
        // The log is back: fail-closed entries go in again.
        batch
            .record_before(Event::new("test", "requested").actor("b2"))
            .await
            .unwrap();
        assert_eq!(f.audit.verify().await.unwrap().unwrap(), 5);
        assert_eq!(actors(&f.audit).await, ["b2", "a3", "a2", "a1", "a0"]);
        assert_eq!(load(&f.metrics.audit_failures), 0);
        f.shutdown.cancel();
        f.tasks.close();
        tokio::time::timeout(Duration::from_secs(5), f.tasks.wait())
            .await
            .unwrap();
        // After the stop, an entry is counted as not written, however it
        // comes; a fail-closed one is refused (its action does not happen).
        batch.record(Event::new("test", "late")).await;
        batch.record_soon(Event::new("test", "late"), &f.tasks);
        batch.record_written(Event::new("test", "late")).await;
        assert!(
            batch
                .record_before(Event::new("test", "late"))
                .await
                .is_err()
        );
        assert_eq!(load(&f.metrics.audit_failures), 3);
    }

    #[tokio::test]
    async fn a_flood_of_fail_closed_entries_shares_commits_with_the_rest() {
        let f = fixture(CAPACITY, SPILL_LIMIT).await;
        // Held for less than a busy timeout: the appender waits for the lock
        // while the flood and the ended requests' entries queue.
        let mut other = lock(&f.url).await;
        f.batch
            .record(Event::new("test", "ok").actor("first"))
            .await;
        let mut flood = tokio::task::JoinSet::new();
        for i in 0..200 {
            let batch = f.batch.clone();
            flood.spawn(async move {
                batch
                    .record_before(Event::new("test", "requested").actor(format!("b{i}")))
                    .await
            });
            f.batch
                .record_soon(Event::new("test", "ok").actor(format!("r{i}")), &f.tasks);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        while let Some(written) = flood.join_next().await {
            written.unwrap().unwrap();
        }
        f.batch
            .record_written(Event::new("test", "ok").actor("last"))
            .await;
        assert_eq!(f.audit.verify().await.unwrap().unwrap(), 402);
        // Every entry, the flood's included, went through the appender.
        assert_eq!(load(&f.metrics.audit_appended), 402);
        let commits = load(&f.metrics.audit_commits);
        // One commit each would be 200 for the flood alone.
        assert!(commits <= 10, "{commits} commits for 402 entries");
        assert_eq!(load(&f.metrics.audit_failures), 0);
    }

    #[tokio::test]
    async fn entries_that_wait_for_room_are_bounded_by_refusing_new_requests() {
        // A queue of 2 and room for 3 waiting: what a long outage with
        // requests still ending looks like, in small.
        let f = fixture(2, 3).await;
        let mut other = lock(&f.url).await;
        assert!(!f.batch.behind());
        for i in 0..8 {
            f.batch
                .record_soon(Event::new("test", "ok").actor(format!("r{i}")), &f.tasks);
        }
        assert!(
            f.batch.behind(),
            "8 entries: one in the batch, 2 queued, the rest waiting"
        );
        assert!(load(&f.metrics.audit_waiting) >= 5);
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        // Caught up: nothing was dropped.
        f.batch
            .record_written(Event::new("test", "ok").actor("last"))
            .await;
        tokio::time::timeout(Duration::from_secs(10), async {
            while f.batch.behind() || f.audit.verify().await.unwrap().unwrap() < 9 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(load(&f.metrics.audit_waiting), 0);
        let mut got = actors(&f.audit).await;
        got.sort();
        assert_eq!(
            got,
            ["last", "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"]
        );
        assert_eq!(load(&f.metrics.audit_failures), 0);
    }
}
