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
//! A fail-closed entry goes ahead of the others (a queue of its own), and no
//! entry someone waits for is held for the spacing. A batch the database cannot take now
//! (unreachable, busy) is tried again whole, with backoff, until shutdown; its
//! fail-closed entries, and those that came during the failed attempt, are
//! refused instead (their actions do not happen), and one that comes during
//! the backoff cuts it short: the first change after the database is back
//! goes in at once. A batch that fails otherwise is written again entry by
//! entry, so one bad entry never loses the others; what still fails is logged
//! and counted. Under load, commits are
//! spaced so that each carries more entries (`store::pacing`); the entries go
//! in a few multi-row statements (`Audit::record_many`).
//!
//! Memory: the tasks of `record_soon` are counted, in all and by the user
//! whose request made them. Past `SPILL_LIMIT` of them (a long outage, with
//! requests still ending), or `SPILL_LIMIT_PER_OWNER` of one user's, the
//! appender says it is behind ([`AuditBatch::behind`]), and the doors that
//! create such entries refuse new requests (anyone's, or that user's) until it
//! catches up: entries are never dropped, and what waits is bounded by the
//! limits and the requests already open.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Audit, AuditError, Event};
use crate::metrics::{Metrics, add, inc};
use crate::store::pacing;

/// Entries waiting at most.
pub const CAPACITY: usize = 4096;
/// Fail-closed entries queued at most; they go ahead of the rest.
const WAITED_CAPACITY: usize = 1024;
/// Tasks of `record_soon` waiting for room at most before the appender says
/// it is behind for everyone (about 1 KiB each with their entry), and for the
/// requests of one user.
const SPILL_LIMIT: usize = 16_384;
const SPILL_LIMIT_PER_OWNER: usize = 1024;
/// Entries in one transaction at most.
const BATCH: usize = 512;
/// How long the writer keeps draining at shutdown.
const DRAIN: Duration = Duration::from_secs(10);
/// The first wait before a batch is tried again while the database is
/// unreachable, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// The shortest wait between two attempts, when someone waits for one.
const RETRY_MIN: Duration = Duration::from_millis(100);
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
    /// Tasks of `record_soon` waiting for room, by whose request made them
    /// (the total is `postern_audit_waiting`).
    waiting_by: Mutex<HashMap<String, usize>>,
}

/// The limits on what waits.
#[derive(Debug, Clone, Copy)]
struct Limits {
    capacity: usize,
    waited_capacity: usize,
    spill: usize,
    spill_per_owner: usize,
    before_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct AuditBatch {
    tx: mpsc::Sender<Queued>,
    /// Fail-closed entries: taken ahead of `tx`'s, so that an admin's change
    /// or a session start never waits behind a backlog of records. Only
    /// those: what unauthenticated peers cause (a refused request's outcome)
    /// never competes with them.
    waited_tx: mpsc::Sender<Queued>,
    metrics: Arc<Metrics>,
    state: Arc<State>,
    limits: Limits,
}

/// The appender's two queues, taken in turn while both hold entries (a flood
/// of either leaves the other half of each batch); waiting, the one of
/// fail-closed entries first.
struct Queues {
    waited: mpsc::Receiver<Queued>,
    rest: mpsc::Receiver<Queued>,
    turn: bool,
}

impl pacing::Queue<Queued> for Queues {
    fn try_next(&mut self) -> Option<Queued> {
        self.turn = !self.turn;
        let (a, b) = if self.turn {
            (&mut self.waited, &mut self.rest)
        } else {
            (&mut self.rest, &mut self.waited)
        };
        a.try_recv().or_else(|_| b.try_recv()).ok()
    }

    async fn next(&mut self) -> Option<Queued> {
        tokio::select! {
            biased;
            Some(q) = self.waited.recv() => Some(q),
            Some(q) = self.rest.recv() => Some(q),
            else => None,
        }
    }
}

impl Queues {
    fn close(&mut self) {
        self.waited.close();
        self.rest.close();
    }
}

impl AuditBatch {
    pub fn start(
        audit: Audit,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> AuditBatch {
        let limits = Limits {
            capacity: CAPACITY,
            waited_capacity: WAITED_CAPACITY,
            spill: SPILL_LIMIT,
            spill_per_owner: SPILL_LIMIT_PER_OWNER,
            before_wait: BEFORE_WAIT,
        };
        AuditBatch::start_sized(audit, metrics, tasks, shutdown, limits)
    }

    fn start_sized(
        audit: Audit,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
        limits: Limits,
    ) -> AuditBatch {
        let (tx, rest) = mpsc::channel(limits.capacity);
        let (waited_tx, waited) = mpsc::channel(limits.waited_capacity);
        let state = Arc::new(State {
            waiting_by: Mutex::new(HashMap::new()),
        });
        let queues = Queues {
            waited,
            rest,
            turn: false,
        };
        let writer = Writer {
            audit,
            metrics: metrics.clone(),
            shutdown,
        };
        tasks.spawn(writer.run(queues));
        AuditBatch {
            tx,
            waited_tx,
            metrics,
            state,
            limits,
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

    /// Queues an entry (waiting while the queue is full, as [`Self::record`]:
    /// an outcome is never dropped) and waits until the batch holding it is
    /// committed (or failed, which is logged and counted), at most
    /// [`WRITTEN_WAIT`].
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

    /// Fail closed: `Ok` once the entry is committed. Refused when an
    /// attempt to write it, or any attempt made after it came, finds the
    /// database unreachable or busy (SQLite: after its busy timeout;
    /// PostgreSQL: after the pool's wait for a connection), and after
    /// [`BEFORE_WAIT`]; a refused entry is not written later (unless its
    /// batch was already being committed when the caller gave up).
    pub async fn record_before(&self, ev: Event) -> Result<(), AuditError> {
        let (tx, rx) = oneshot::channel();
        let wait = self.limits.before_wait;
        let written = tokio::time::timeout(wait, async {
            self.waited_tx
                .send((ev, Reply::Closed(tx)))
                .await
                .map_err(|_| AuditError::Unwritten("the bastion is stopping".into()))?;
            rx.await.unwrap_or_else(|_| {
                Err(AuditError::Unwritten(
                    "the appender stopped before its commit".into(),
                ))
            })
        })
        .await;
        let written = written.unwrap_or_else(|_| {
            Err(AuditError::Unwritten(format!(
                "not committed within {wait:?}"
            )))
        });
        // Counted here, whichever door refuses its action: an operator's
        // alert on the failures sees every refused change.
        if written.is_err() {
            inc(&self.metrics.audit_failures);
        }
        written
    }

    /// Queues an entry from code that cannot wait (a drop): at once when there
    /// is room, else from a task of its own, counted for `owner` (whose
    /// request made it; see [`Self::behind`]).
    pub fn record_soon(&self, ev: Event, owner: &str, tasks: &TaskTracker) {
        match self.tx.try_send((ev, Reply::None)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full((ev, _))) => {
                let me = self.clone();
                let owner = owner.to_string();
                me.waiting(&owner, true);
                tasks.spawn(async move {
                    me.record(ev).await;
                    me.waiting(&owner, false);
                });
            }
            Err(mpsc::error::TrySendError::Closed((ev, _))) => self.gone(&ev),
        }
    }

    /// Counts a task of `record_soon` in or out, in all and for its owner.
    fn waiting(&self, owner: &str, more: bool) {
        let mut by = self
            .state
            .waiting_by
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if more {
            *by.entry(owner.to_string()).or_default() += 1;
            self.metrics.audit_waiting.fetch_add(1, Ordering::Relaxed);
        } else {
            if let Some(n) = by.get_mut(owner) {
                *n -= 1;
                if *n == 0 {
                    by.remove(owner);
                }
            }
            self.metrics.audit_waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// So many entries of `record_soon` wait for room, in all or of `owner`'s
    /// requests, that a door creating them should take no new request (of
    /// anyone's, or of `owner`'s) until the appender catches up: one user
    /// cannot use up everyone's room.
    pub fn behind(&self, owner: &str) -> bool {
        let waiting = self.metrics.audit_waiting.load(Ordering::Relaxed);
        if waiting == 0 {
            return false;
        }
        if waiting >= self.limits.spill as u64 {
            return true;
        }
        let by = self
            .state
            .waiting_by
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        by.get(owner)
            .is_some_and(|&n| n >= self.limits.spill_per_owner)
    }
}

/// The appender's task: what it writes to, counts in, and stops on.
struct Writer {
    audit: Audit,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Writer {
    async fn run(self, mut rx: Queues) {
        let mut batch = Vec::with_capacity(BATCH);
        // When the next commit may start, if the last one said the appender is
        // busy (`store::pacing`).
        let mut next_due: Option<tokio::time::Instant> = None;
        loop {
            let first = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                ev = pacing::Queue::next(&mut rx) => ev,
            };
            let Some(first) = first else { return };
            batch.push(first);
            // An entry someone waits for is not held for the spacing; a shutdown
            // does not wait either.
            let due = next_due.filter(|_| !self.shutdown.is_cancelled());
            pacing::gather(&mut rx, &mut batch, BATCH, due, |(_, r)| r.waited()).await;
            let started = tokio::time::Instant::now();
            next_due = pacing::spacing(batch.len()).map(|d| started + d);
            self.flush(&mut rx, std::mem::take(&mut batch)).await;
        }
        // Stopping: what was queued is still written, within a bound; what is
        // left then is counted.
        rx.close();
        let drained = tokio::time::timeout(DRAIN, async {
            while let Some(ev) = pacing::Queue::next(&mut rx).await {
                batch.push(ev);
                if batch.len() >= BATCH {
                    self.flush(&mut rx, std::mem::take(&mut batch)).await;
                }
            }
            self.flush(&mut rx, std::mem::take(&mut batch)).await;
        })
        .await;
        if drained.is_err() {
            // A batch cut in its write is not counted: it may have committed.
            // Fail-closed entries are not lost entries: their actions were
            // refused when their senders were dropped.
            let left = batch
                .into_iter()
                .chain(std::iter::from_fn(|| pacing::Queue::try_next(&mut rx)))
                .filter(|(_, r)| !matches!(r, Reply::Closed(_)))
                .count();
            add(&self.metrics.audit_failures, left);
            tracing::error!(
                entries = left,
                "audit entries not written within {DRAIN:?} of the stop"
            );
        }
    }

    /// Writes the batch. While the database is unreachable or busy, the whole
    /// batch is tried again with backoff (until shutdown) rather than entry by
    /// entry: each of those would wait out the same outage, one after the other.
    /// Fail-closed entries are refused instead, those queued meanwhile too, and
    /// one that comes during the backoff cuts it short, so the first change after
    /// the database is back goes in at once. Any other failure is written again
    /// entry by entry, so one bad entry never loses the others.
    async fn flush(&self, rx: &mut Queues, mut batch: Vec<Queued>) {
        let mut wait = RETRY_FIRST;
        let failed = loop {
            batch.retain(|(_, r)| !r.abandoned());
            if batch.is_empty() {
                return;
            }
            let tried = tokio::time::Instant::now();
            let evs: Vec<Event> = batch.iter().map(|(ev, _)| ev.clone()).collect();
            match self.audit.record_many(evs).await {
                Ok(_) => {
                    inc(&self.metrics.audit_commits);
                    add(&self.metrics.audit_appended, batch.len());
                    break None;
                }
                Err(e) if e.is_unavailable() && !self.shutdown.is_cancelled() => {
                    // Fail-closed entries that came while this attempt failed
                    // are refused with it: the database was away after they came.
                    refuse_closed(&mut batch, &e);
                    while let Ok(q) = rx.waited.try_recv() {
                        answer(q.1, Err(refusal(&e)));
                    }
                    if batch.is_empty() {
                        return;
                    }
                    tracing::warn!(error = %e, entries = batch.len(), "audit log unwritable; trying the batch again in {wait:?}");
                    tokio::select! {
                        biased;
                        // No further attempt: the drain after shutdown has its
                        // own bound, and this one could take a whole timeout.
                        _ = self.shutdown.cancelled() => break Some(e),
                        _ = tokio::time::sleep(wait) => {}
                        Some(q) = rx.waited.recv() => {
                            // A change waits: try now, but not in a tight loop,
                            // and with at most a batch of them.
                            batch.push(q);
                            tokio::time::sleep_until(tried + RETRY_MIN).await;
                            while batch.len() < BATCH
                                && let Ok(q) = rx.waited.try_recv()
                            {
                                batch.push(q);
                            }
                        }
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
                add(&self.metrics.audit_failures, batch.len());
                tracing::error!(error = %e, entries = batch.len(), "audit log unwritable at shutdown; entries not written");
                // Those waiting for a commit are let go (the loss is counted).
                batch.clear();
            }
            Some(e) => {
                tracing::warn!(error = %e, entries = batch.len(), "audit batch failed; writing its entries one by one");
                // Those someone waits for first: each may take a timeout.
                batch.sort_by_key(|(_, r)| !r.waited());
                for (ev, reply) in batch.drain(..) {
                    if reply.abandoned() {
                        continue;
                    }
                    let written = self.audit.record(ev).await.map(|_| ());
                    if written.is_ok() {
                        inc(&self.metrics.audit_commits);
                        inc(&self.metrics.audit_appended);
                    }
                    if let Err(e) = &written {
                        if !matches!(reply, Reply::Closed(_)) {
                            inc(&self.metrics.audit_failures);
                        }
                        tracing::error!(error = %e, "could not write audit entry");
                    }
                    answer(reply, written);
                }
            }
        }
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
        answer(reply, Err(refusal(why)));
    }
}

fn refusal(why: &AuditError) -> AuditError {
    AuditError::Unwritten(format!("the database is unreachable or busy ({why})"))
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

    const LIMITS: Limits = Limits {
        capacity: CAPACITY,
        waited_capacity: WAITED_CAPACITY,
        spill: SPILL_LIMIT,
        spill_per_owner: SPILL_LIMIT_PER_OWNER,
        // Longer than SQLite's busy timeout can take on a loaded machine (it
        // counts the sleeps it asks for, not the time that passes).
        before_wait: Duration::from_secs(60),
    };

    async fn fixture(limits: Limits) -> Fixture {
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
            limits,
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
        let (_, page) = audit.page(None, 1000, 0).await.unwrap();
        page.iter().filter_map(|e| e.actor.clone()).collect()
    }

    fn load(n: &std::sync::atomic::AtomicU64) -> u64 {
        n.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn entries_wait_out_an_unwritable_log_and_none_is_lost() {
        let f = fixture(LIMITS).await;
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
        // timeout), not after its own wait, and is never written.
        let queued = tokio::spawn({
            let batch = batch.clone();
            async move {
                batch
                    .record_before(Event::new("test", "requested").actor("b0"))
                    .await
            }
        });
        let refused = tokio::time::timeout(Duration::from_secs(30), queued)
            .await
            .expect("refused while the log is away")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(refused.contains("unreachable or busy"), "{refused}");
        // One that comes during the backoff is tried at once, and refused
        // by that attempt.
        let refused = tokio::time::timeout(
            Duration::from_secs(30),
            batch.record_before(Event::new("test", "requested").actor("b1")),
        )
        .await
        .expect("refused by the next attempt")
        .unwrap_err()
        .to_string();
        assert!(refused.contains("unreachable or busy"), "{refused}");
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        // The log is back: the first change goes in at once, its backoff cut
        // short, and the stuck batch with it.
        batch
            .record_before(Event::new("test", "requested").actor("b2"))
            .await
            .unwrap();
        batch
            .record_written(Event::new("test", "ok").actor("a3"))
            .await;
        assert_eq!(f.audit.verify().await.unwrap().unwrap(), 5);
        let mut got = actors(&f.audit).await;
        got.sort();
        assert_eq!(got, ["a0", "a1", "a2", "a3", "b2"]);
        assert_eq!(
            load(&f.metrics.audit_failures),
            2,
            "b0 and b1, refused; nothing else lost"
        );
        f.shutdown.cancel();
        f.tasks.close();
        tokio::time::timeout(Duration::from_secs(5), f.tasks.wait())
            .await
            .unwrap();
        // After the stop, an entry is counted as not written, however it
        // comes; a fail-closed one is refused (its action does not happen),
        // and counted too.
        batch.record(Event::new("test", "late")).await;
        batch.record_soon(Event::new("test", "late"), "u", &f.tasks);
        batch.record_written(Event::new("test", "late")).await;
        assert!(
            batch
                .record_before(Event::new("test", "late"))
                .await
                .is_err()
        );
        assert_eq!(load(&f.metrics.audit_failures), 2 + 4);
    }

    #[tokio::test]
    async fn a_flood_of_fail_closed_entries_shares_commits_with_the_rest() {
        let f = fixture(LIMITS).await;
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
            f.batch.record_soon(
                Event::new("test", "ok").actor(format!("r{i}")),
                "u",
                &f.tasks,
            );
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
        // A queue of 2, room for 6 waiting in all and 4 per user: what a long
        // outage with requests still ending looks like, in small.
        let f = fixture(Limits {
            capacity: 2,
            waited_capacity: 2,
            spill: 6,
            spill_per_owner: 4,
            ..LIMITS
        })
        .await;
        // Nothing reaches the appender before the first await: 2 queued,
        // the rest waiting.
        for i in 0..6 {
            f.batch.record_soon(
                Event::new("test", "ok").actor(format!("m{i}")),
                "mallory",
                &f.tasks,
            );
        }
        assert_eq!(load(&f.metrics.audit_waiting), 4);
        assert!(f.batch.behind("mallory"), "mallory used up her share");
        assert!(!f.batch.behind("alice"), "alice still has room");
        for i in 0..2 {
            f.batch.record_soon(
                Event::new("test", "ok").actor(format!("a{i}")),
                "alice",
                &f.tasks,
            );
        }
        assert!(f.batch.behind("alice"), "the room in all is used up");
        // Caught up: nothing was dropped, and the counts are back to zero.
        tokio::time::timeout(Duration::from_secs(10), async {
            while f.batch.behind("alice") || f.audit.verify().await.unwrap().unwrap() < 8 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(load(&f.metrics.audit_waiting), 0);
        assert!(!f.batch.behind("mallory"));
        assert!(f.batch.state.waiting_by.lock().unwrap().is_empty());
        let mut got = actors(&f.audit).await;
        got.sort();
        assert_eq!(got, ["a0", "a1", "m0", "m1", "m2", "m3", "m4", "m5"]);
        assert_eq!(load(&f.metrics.audit_failures), 0);
    }

    #[tokio::test]
    async fn an_entry_someone_waits_for_goes_ahead_of_a_backlog() {
        let f = fixture(Limits {
            capacity: 8,
            ..LIMITS
        })
        .await;
        // The log is slow (locked for a moment): ended requests' entries
        // fill the queue and 200 more wait for room.
        let mut other = lock(&f.url).await;
        for i in 0..208 {
            f.batch.record_soon(
                Event::new("test", "ok").actor(format!("r{i}")),
                "u",
                &f.tasks,
            );
        }
        let change = tokio::spawn({
            let batch = f.batch.clone();
            async move {
                batch
                    .record_before(Event::new("test", "requested").actor("change"))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        change.await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while f.audit.verify().await.unwrap().unwrap() < 209 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        // Oldest first: the change is among the first entries written, not
        // behind the 208 queued before it.
        let mut order = actors(&f.audit).await;
        order.reverse();
        let at = order.iter().position(|a| a == "change").unwrap();
        assert!(at < 20, "the change was entry {at} of 209");
    }

    #[tokio::test]
    async fn the_first_change_after_an_outage_goes_in_at_once() {
        let f = fixture(LIMITS).await;
        let mut other = lock(&f.url).await;
        // Only fail-closed entries: each waits out a busy timeout and is
        // refused; nothing is left to try again.
        for _ in 0..2 {
            assert!(
                f.batch
                    .record_before(Event::new("test", "requested"))
                    .await
                    .is_err()
            );
        }
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        // Not refused for an outage that is over.
        f.batch
            .record_before(Event::new("test", "requested").actor("back"))
            .await
            .unwrap();
        assert_eq!(actors(&f.audit).await, ["back"]);
        assert_eq!(load(&f.metrics.audit_failures), 2, "the two refused");
    }
}
