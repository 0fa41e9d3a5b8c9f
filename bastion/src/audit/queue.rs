//! The bounded queue of audit events that peers can cause without authenticating
//! (SSH refusals, failed logins): one owned writer drains it, so a flood costs
//! at most `CAPACITY` pending events and one task, never a task per connection.
//! When it is full, events are counted and dropped, and the count itself is
//! audited once there is room again. Failed logins and downloads from the
//! agent port (the install script, agent packages: anyone may fetch them) are
//! aggregated per source first: the first from a source in a window is
//! recorded at once, the rest of the window as one entry with their count and
//! the names tried (or files fetched).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Audit, Event};
use crate::metrics::{Metrics, inc};
use crate::store::Store;

/// Pending events at most.
pub const CAPACITY: usize = 1024;
/// Failed logins (or downloads) from one source within this window become one
/// entry.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked at once; beyond, failures are still counted in the metrics,
/// and audited only as part of the dropped count.
const MAX_SOURCES: usize = 10_000;
/// Distinct user names (or files) kept per source and window.
const MAX_NAMES: usize = 8;

struct Pending {
    event: Event,
    /// Attribute the event to the org of the user it names, if one exists.
    resolve_org: bool,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    /// Events after the first, in this window.
    more: u64,
    names: BTreeSet<String>,
}

/// Open windows per source, for one kind of event.
type Windows = Arc<Mutex<HashMap<IpAddr, Window>>>;

/// The queue's handle: cheap to clone.
#[derive(Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<Pending>,
    dropped: Arc<AtomicU64>,
    failures: Windows,
    downloads: Windows,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AuditQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditQueue")
    }
}

impl AuditQueue {
    /// Starts the writer on `tasks`; it writes what is queued and stops on `shutdown`.
    pub fn start(
        audit: Audit,
        store: Store,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> AuditQueue {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let q = AuditQueue {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            failures: Windows::default(),
            downloads: Windows::default(),
            metrics,
        };
        tasks.spawn(q.clone().run(audit, store, rx, shutdown));
        q
    }

    /// Queues an event without waiting; counts it as dropped when the queue is full.
    pub fn push(&self, event: Event) {
        self.push_pending(Pending {
            event,
            resolve_org: false,
        });
    }

    fn push_pending(&self, p: Pending) {
        if self.tx.try_send(p).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            inc(&self.metrics.audit_dropped);
        }
    }

    /// Counts an event from `source` into its window in `windows`: true if it
    /// is to be recorded at once, else it is counted into the window's summary
    /// (or, with too many sources tracked, as dropped). What is recorded at
    /// once: the window's first event; with `first_per_name`, also the first
    /// of each name (downloads: the script and the package of one install are
    /// two entries, with what was sent).
    fn count_in(
        &self,
        windows: &Windows,
        source: IpAddr,
        name: &str,
        first_per_name: bool,
    ) -> bool {
        let mut map = windows.lock().unwrap_or_else(|p| p.into_inner());
        let full = map.len() >= MAX_SOURCES;
        match map.get_mut(&source) {
            Some(w) if first_per_name && !w.names.contains(name) && w.names.len() < MAX_NAMES => {
                w.names.insert(name.to_string());
                true
            }
            Some(w) => {
                w.more += 1;
                if w.names.len() < MAX_NAMES {
                    w.names.insert(name.to_string());
                }
                false
            }
            None if full => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                inc(&self.metrics.audit_dropped);
                false
            }
            None => {
                // A summary lists the names of what it counts; per name, the
                // first is among them, recorded at once.
                let names = if first_per_name {
                    BTreeSet::from([name.to_string()])
                } else {
                    BTreeSet::new()
                };
                map.insert(
                    source,
                    Window {
                        started: Instant::now(),
                        more: 0,
                        names,
                    },
                );
                true
            }
        }
    }

    /// A failed SSH login: recorded at once if it is the first from `source` in
    /// the window, else counted into the window's summary entry.
    pub fn login_failed(&self, source: IpAddr, user: &str, keys_tried: Vec<String>) {
        if self.count_in(&self.failures, source, user, false) {
            self.push_pending(Pending {
                event: Event::new("ssh.auth", "denied")
                    .actor(user)
                    .source(Some(source.to_string()))
                    .detail(json!({
                        "keys_tried": keys_tried,
                        "reason": "no registered key of this user was proven",
                    })),
                resolve_org: true,
            });
        }
    }

    /// A download of `file` from the agent port, without authentication:
    /// recorded at once (with `detail`) if it is the first from its source in
    /// the window, else counted into the window's summary entry. Sources are
    /// counted as the per-source limits count them (IPv6 by /64), so a client
    /// cannot open a window per address of its prefix.
    pub fn download(&self, source: IpAddr, file: &str, detail: serde_json::Value) {
        let source = crate::limits::source_key(source);
        if self.count_in(&self.downloads, source, file, true) {
            self.push(
                Event::new("agent.download", "ok")
                    .source(Some(source.to_string()))
                    .target(file)
                    .detail(detail),
            );
        }
    }

    /// The windows of `windows` that have ended (all of them when `all`),
    /// removed; only those with events after their first need a summary.
    fn ended(windows: &Windows, all: bool) -> Vec<(IpAddr, Window)> {
        let now = Instant::now();
        let mut map = windows.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<IpAddr> = map
            .iter()
            .filter(|(_, w)| all || now.duration_since(w.started) >= FAILURE_WINDOW)
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| map.remove(&k).map(|w| (k, w)))
            .filter(|(_, w)| w.more > 0)
            .collect()
    }

    /// Summary entries of the windows that have ended (all of them when `all`).
    fn close_windows(&self, all: bool) {
        for (source, w) in Self::ended(&self.failures, all) {
            self.push(
                Event::new("ssh.auth", "denied")
                    .source(Some(source.to_string()))
                    .detail(json!({
                        "reason": "repeated failed logins from one source",
                        "more_attempts": w.more,
                        "window_secs": FAILURE_WINDOW.as_secs(),
                        "names_tried": w.names,
                    })),
            );
        }
        for (source, w) in Self::ended(&self.downloads, all) {
            self.push(
                Event::new("agent.download", "ok")
                    .source(Some(source.to_string()))
                    .detail(json!({
                        "reason": "repeated downloads from one source",
                        "more_downloads": w.more,
                        "window_secs": FAILURE_WINDOW.as_secs(),
                        "files": w.names,
                    })),
            );
        }
    }

    async fn run(
        self,
        audit: Audit,
        store: Store,
        mut rx: mpsc::Receiver<Pending>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let p = tokio::select! {
                p = rx.recv() => p,
                _ = tick.tick() => {
                    self.close_windows(false);
                    continue;
                }
                _ = shutdown.cancelled() => {
                    self.close_windows(true);
                    rx.close();
                    while let Ok(p) = rx.try_recv() {
                        self.write(&audit, &store, p).await;
                    }
                    self.write_dropped(&audit).await;
                    return;
                }
            };
            let Some(p) = p else { return };
            self.write(&audit, &store, p).await;
            if rx.is_empty() {
                self.write_dropped(&audit).await;
            }
        }
    }

    async fn write(&self, audit: &Audit, store: &Store, mut p: Pending) {
        if p.resolve_org
            && let Some(name) = p.event.actor.as_deref()
            && postern_api::validate::name("user", name).is_ok()
            && let Ok(Some(u)) = store.user_by_name(name).await
        {
            p.event.org_id = Some(u.org_id);
        }
        if let Err(e) = audit.record(p.event).await {
            inc(&self.metrics.audit_failures);
            tracing::error!(error = %e, "could not write audit entry");
        }
    }

    async fn write_dropped(&self, audit: &Audit) {
        let n = self.dropped.swap(0, Ordering::Relaxed);
        if n == 0 {
            return;
        }
        tracing::warn!(dropped = n, "audit queue was full; events were dropped");
        let ev = Event::new("audit.dropped", "error").detail(json!({
            "events": n,
            "reason": "the queue of unauthenticated peers' events was full (a flood)",
        }));
        if audit.record(ev).await.is_err() {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Events waiting to be written, for tests and metrics.
    pub fn pending(&self) -> usize {
        CAPACITY - self.tx.capacity()
    }
}
