//! The cmdexec engine: turns a validated request into an execution (one row per
//! target node, unreachable and unapproved nodes settled at once), fans it out on
//! the live agent channels, collects results through the batch writer, and resumes
//! unfinished work after a restart.
//!
//! Execution is at most once per (exec ID, node): the agent refuses to run an ID
//! twice. Delivery is at least once: the agent spools the result until the bastion
//! has stored it and says so (`DELETE /v1/exec/{id}`); storing is idempotent.
//!
//! With replicas, the replica an execution was posted to runs it under a lease in
//! the store, renewed every few seconds; when a replica dies, another takes its
//! unfinished executions once their leases run out and follows each node's part
//! from where the store says it was. The agent's exec-ID ledger makes a second
//! dispatch harmless: it answers with the run it already has.

mod dispatch;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_api::admin::NodeState;
use postern_api::cmdexec::{ContentType, ExecuteResponse, NodeExecStatus, TargetType};
use serde_json::json;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Event;
use crate::clock::{now_ms, rfc3339};
use crate::store::{
    EdgeRow, ExecutionRow, NodeRow, ProjectRow, ResultRow, ResultUpdate, Store, StoreError,
};

/// What the engine needs to start an execution (validated by the HTTP layer).
#[derive(Debug, Clone)]
pub struct Submission {
    pub org_id: String,
    pub project: ProjectRow,
    pub edge: EdgeRow,
    pub username: String,
    pub source_ip: Option<String>,
    pub command: String,
    pub content_type: ContentType,
    pub target_type: TargetType,
    pub target: Option<Vec<String>>,
    pub timeout_secs: i64,
    pub nodes: Vec<NodeRow>,
    /// The selector as understood, for `target_type: selector`.
    pub selector: Option<String>,
    pub max_concurrency: Option<postern_api::cmdexec::Rate>,
    pub max_errors: Option<postern_api::cmdexec::Rate>,
    /// The exec ID to use (claimed with an Idempotency-Key), or a new one.
    pub exec_id: Option<String>,
    /// The Idempotency-Key `exec_id` was claimed with (the caller's, in
    /// `org_id`): the execution is stored only while the claim is still its own.
    pub idempotency_key: Option<String>,
}

/// Why an execution was not started; in each case nothing was stored or run.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the audit log cannot be written: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// The submit took so long that its Idempotency-Key's claim ran out and
    /// another request with that key took it over: that one runs, this not.
    #[error("the Idempotency-Key was taken over by another request while this one was submitted")]
    ClaimLost,
}

/// Wakes this replica's live streams: events were committed.
pub(crate) fn events_committed(events: &tokio::sync::watch::Sender<u64>) {
    events.send_modify(|g| *g = g.wrapping_add(1));
}

/// How long an execution's lease lasts without renewal: a dead replica's
/// executions are taken over after this.
pub const EXEC_LEASE: Duration = Duration::from_secs(15);
/// How often leases are renewed and expired ones looked for.
const LEASE_TICK: Duration = Duration::from_secs(3);
/// Executions taken over per statement.
const TAKE_BATCH: i64 = 100;

/// An execution this replica runs: its nodes not yet settled, what stops its
/// dispatches (another replica took it over; a user cancelled it; too many
/// nodes failed), and its rate control.
#[derive(Debug)]
pub(crate) struct Running {
    remaining: AtomicUsize,
    taken_over: CancellationToken,
    cancelled: CancellationToken,
    /// `max_errors` was exceeded: nodes not yet started are skipped.
    stop: CancellationToken,
    /// `max_concurrency`, when it is less than the nodes to run.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    errors: AtomicU64,
    max_errors: Option<u64>,
    /// The agent's request, serialized once for all nodes.
    request: std::sync::OnceLock<bytes::Bytes>,
}

impl Running {
    fn new(exec: &ExecutionRow, nodes: usize, errors_so_far: u64) -> Running {
        let slots = exec
            .max_concurrency
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n < nodes)
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
        let r = Running {
            remaining: AtomicUsize::new(nodes),
            taken_over: CancellationToken::new(),
            cancelled: CancellationToken::new(),
            stop: CancellationToken::new(),
            slots,
            errors: AtomicU64::new(errors_so_far),
            max_errors: exec.max_errors.and_then(|n| u64::try_from(n).ok()),
            request: std::sync::OnceLock::new(),
        };
        if exec.cancel_requested_at.is_some() {
            r.cancelled.cancel();
        }
        if r.max_errors.is_some_and(|m| errors_so_far > m) {
            r.stop.cancel();
        }
        r
    }

    /// Counts a failed node; past `max_errors`, stops the rollout.
    fn count_error(&self) {
        let n = self.errors.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max_errors.is_some_and(|m| n > m) {
            self.stop.cancel();
        }
    }
}

/// The engine's handle: cheap to clone, owned by the bastion's shared state.
#[derive(Clone)]
pub struct Engine {
    /// What the engine works with, from the core.
    deps: Arc<Deps>,
    writer: mpsc::Sender<writer::Op>,
    running: Arc<Mutex<HashMap<String, Arc<Running>>>>,
    /// This replica's name when executions are leased (replicas on PostgreSQL).
    owner: Option<String>,
    takeover: Arc<Notify>,
    /// Bumped whenever execution events were committed here: live streams
    /// wake and read the store (another replica's are found by polling).
    events: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine")
    }
}

/// What the engine works with, from the core: handles, cheap to clone. The
/// engine takes these, not the whole core, so it knows nothing else of it.
#[derive(Debug)]
pub struct Deps {
    pub store: Store,
    pub audit: crate::audit::Auditor,
    pub fleet: Arc<crate::agents::Fleet>,
    pub settings: ExecSettings,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

/// The settings the engine reads (see `state::Settings`).
#[derive(Debug, Clone)]
pub struct ExecSettings {
    pub exec_lost_grace: Duration,
    pub exec_keep_bytes: usize,
}

impl Engine {
    /// Starts the batch writer on `deps.tasks`; it drains and stops on
    /// `deps.shutdown`.
    pub fn new(deps: Deps, owner: Option<String>) -> Engine {
        let events = tokio::sync::watch::channel(0u64).0;
        let (tx, rx) = mpsc::channel(16_384);
        deps.tasks.spawn(writer::run(
            deps.store.clone(),
            rx,
            deps.shutdown.clone(),
            events.clone(),
        ));
        Engine {
            deps: Arc::new(deps),
            writer: tx,
            running: Arc::new(Mutex::new(HashMap::new())),
            owner,
            takeover: Arc::new(Notify::new()),
            events,
        }
    }

    /// Wakes when execution events were committed here (the value only counts).
    pub fn watch_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events.subscribe()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Running>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks for executions to take over now (a replica let its own go).
    pub fn wake_takeover(&self) {
        self.takeover.notify_one();
    }

    /// Queues a change; with `durable`, waits until it is committed (or refused).
    async fn write(&self, update: ResultUpdate, durable: bool) -> Result<(), writer::WriteFailed> {
        let stopped = || writer::WriteFailed {
            unavailable: true,
            message: "the result writer has stopped".into(),
        };
        let (ack, rx) = if durable {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        if self.writer.send(writer::Op { update, ack }).await.is_err() {
            return Err(stopped());
        }
        match rx {
            Some(rx) => rx.await.unwrap_or_else(|_| Err(stopped())),
            None => Ok(()),
        }
    }

    fn counter(&self, exec_id: &str) -> Option<Arc<Running>> {
        self.running().get(exec_id).cloned()
    }

    /// Registers an execution as running here; `None` if it already is.
    fn start_running(
        &self,
        exec: &ExecutionRow,
        nodes: usize,
        errors_so_far: u64,
    ) -> Option<Arc<Running>> {
        let mut running = self.running();
        if running.contains_key(&exec.id) {
            return None;
        }
        let r = Arc::new(Running::new(exec, nodes, errors_so_far));
        running.insert(exec.id.clone(), r.clone());
        Some(r)
    }

    /// Acts on a cancel recorded in the store, if the execution runs here:
    /// nodes not started never start, running ones are told to stop. Answers
    /// whether it ran here.
    pub fn cancel_local(&self, exec_id: &str) -> bool {
        match self.counter(exec_id) {
            Some(r) => {
                r.cancelled.cancel();
                true
            }
            None => false,
        }
    }

    /// Creates the execution, audits it, and starts the fan-out. Returns at once.
    pub async fn submit(&self, s: Submission) -> Result<ExecuteResponse, SubmitError> {
        let shared = &self.deps;
        let now = now_ms();
        let exec_id = s.exec_id.clone().unwrap_or_else(crate::store::new_id);
        let (mut target_nodes, mut unreachable, mut unapproved) = (vec![], vec![], vec![]);
        let mut results = Vec::with_capacity(s.nodes.len());
        let mut runnable = Vec::new();
        for n in &s.nodes {
            let mut r = ResultRow::new(&exec_id, &n.id, &n.hostname, NodeExecStatus::Pending);
            match n.state {
                NodeState::Pending | NodeState::Disabled => {
                    r.status = NodeExecStatus::NotApproved;
                    r.error = Some(format!("node is {}; approve it first", n.state.as_str()));
                    r.finished_at = Some(now);
                    unapproved.push(n.hostname.clone());
                }
                NodeState::Approved | NodeState::Provisioned
                    if shared.fleet.is_reachable(&n.id) =>
                {
                    target_nodes.push(n.hostname.clone());
                    runnable.push((n.id.clone(), n.hostname.clone()));
                }
                NodeState::Approved | NodeState::Provisioned => {
                    r.status = NodeExecStatus::Unreachable;
                    r.error = Some("the node's agent is not connected".into());
                    r.finished_at = Some(now);
                    unreachable.push(n.hostname.clone());
                }
            }
            results.push(r);
        }
        let exec = ExecutionRow {
            id: exec_id.clone(),
            org_id: s.org_id.clone(),
            project_id: s.project.id.clone(),
            project_name: s.project.name.clone(),
            edge_id: s.edge.id.clone(),
            edge_name: s.edge.name.clone(),
            username: s.username.clone(),
            source_ip: s.source_ip.clone(),
            command: s.command.clone(),
            content_type: s.content_type.as_str().into(),
            target_type: match s.target_type {
                TargetType::Node => "node".into(),
                TargetType::Cluster => "cluster".into(),
                TargetType::Selector => "selector".into(),
            },
            target: s.target.clone(),
            timeout_secs: s.timeout_secs,
            created_at: now,
            finished_at: runnable.is_empty().then_some(now),
            // Percentages are of the nodes that will run; counts as given.
            max_concurrency: s.max_concurrency.map(|r| {
                i64::try_from(r.of(runnable.len() as u64, true).max(1)).unwrap_or(i64::MAX)
            }),
            max_errors: s
                .max_errors
                .map(|r| i64::try_from(r.of(runnable.len() as u64, false)).unwrap_or(i64::MAX)),
            selector: s.selector.clone(),
            cancel_requested_at: None,
        };
        let command_sha = crate::secrets::sha256_hex(s.command.as_bytes());
        let mut ev = Event::new("cmdexec.execute", "ok")
            .org(&s.org_id)
            .actor(&s.username)
            .source(s.source_ip.clone())
            .project(&s.project.name)
            .detail(json!({
                "edge": s.edge.name,
                // Commands can be megabytes of script: the audit keeps the start
                // and the hash; the execution record keeps all of it.
                "command": s.command.chars().take(4096).collect::<String>(),
                "command_sha256": command_sha,
                "content_type": s.content_type.as_str(),
                "timeout": s.timeout_secs,
                "unreachable_nodes": unreachable,
                "unapproved_nodes": unapproved,
                "selector": s.selector,
                "max_concurrency": exec.max_concurrency,
                "max_errors": exec.max_errors,
            }));
        ev.targets = s.nodes.iter().map(|n| n.hostname.clone()).collect();
        ev.exec_id = Some(exec_id.clone());
        // Fail closed: a command nobody could later find in the audit log does
        // not run. Written first, so nothing is stored or sent when it fails.
        shared.audit.before(ev).await?;
        let lease = EXEC_LEASE.as_millis() as i64;
        let owner = self.owner.as_deref().map(|o| (o, lease));
        let claim = s
            .idempotency_key
            .as_deref()
            .map(|key| crate::store::IdempotencyKey {
                org_id: &s.org_id,
                username: &s.username,
                key,
            });
        let stored = shared
            .store
            .insert_execution_owned(&exec, &results, owner, claim.as_ref())
            .await?;
        if !stored {
            // Audited as submitted above: say it did not happen after all.
            let mut ev = Event::new("cmdexec.execute", "abandoned")
                .org(&s.org_id)
                .actor(&s.username)
                .source(s.source_ip.clone())
                .project(&s.project.name)
                .detail(json!({
                    "edge": s.edge.name,
                    "reason": "its Idempotency-Key was taken over by a later request with the same key while this one waited; nothing was run",
                }));
            ev.exec_id = Some(exec_id.clone());
            // In the log before the caller hears of it (as every outcome an
            // answer reports): whoever reads the log after the answer finds it.
            shared.audit.batched_written(ev).await;
            tracing::warn!(exec_id = %exec_id, user = %s.username, "a submit lost its Idempotency-Key to a later request; not running it");
            return Err(SubmitError::ClaimLost);
        }

        events_committed(&self.events);
        let (max_concurrency, max_errors) = (exec.max_concurrency, exec.max_errors);
        if runnable.is_empty() {
            self.audit_results(shared, &exec_id).await;
        } else if let Some(running) = self.start_running(&exec, runnable.len(), 0) {
            let exec = Arc::new(exec);
            for (node_id, hostname) in runnable {
                dispatch::spawn(
                    shared,
                    self,
                    exec.clone(),
                    running.clone(),
                    node_id,
                    hostname,
                    dispatch::Start::New,
                );
            }
        }
        Ok(ExecuteResponse {
            exec_id,
            submitted_at: rfc3339(now),
            username: s.username,
            project_id: s.project.name,
            edge_id: s.edge.name,
            timeout: s.timeout_secs,
            target_nodes,
            unreachable_nodes: unreachable,
            unapproved_nodes: unapproved,
            selector: s.selector,
            max_concurrency,
            max_errors,
        })
    }

    /// Resumes unfinished executions at start: all of them for a single
    /// bastion; for a replica, those whose lease ran out and its own from before
    /// a restart (a live replica's are left to it).
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let shared = &self.deps;
        let Some(owner) = self.owner.clone() else {
            // Every node settled, but the bastion stopped (or could not write)
            // before it marked the execution finished. Found before anything
            // resumes: a resumed node's task may finish its execution too.
            let settled = shared.store.settled_unfinished_executions().await?;
            let open = shared.store.unfinished_results().await?;
            self.finish_settled(shared, &settled).await;
            return Ok(self.resume(shared, open).await);
        };
        // This replica's own leases from before a restart count only on the first
        // pass: once taken, they are live and its own again.
        let mut n = 0;
        let mut own = true;
        loop {
            let taken = self.take_expired(shared, &owner, own).await?;
            n += taken;
            if taken < TAKE_BATCH as usize {
                return Ok(n);
            }
            own = false;
        }
    }

    /// Takes a batch of unfinished executions whose lease ran out and runs them
    /// here; answers how many executions were taken.
    async fn take_expired(
        &self,
        shared: &Arc<Deps>,
        owner: &str,
        own: bool,
    ) -> Result<usize, StoreError> {
        let lease = EXEC_LEASE.as_millis() as i64;
        let ids = shared
            .store
            .take_expired_executions(owner, lease, own, TAKE_BATCH)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        tracing::info!(
            executions = ids.len(),
            "taking over executions whose lease ran out"
        );
        let open = shared.store.unfinished_results_of(&ids).await?;
        let with_nodes: std::collections::HashSet<String> =
            open.iter().map(|(e, _)| e.id.clone()).collect();
        self.resume(shared, open).await;
        // Every node settled but the execution not marked finished (its replica
        // died in between): finish it here.
        let settled: Vec<String> = ids
            .iter()
            .filter(|id| !with_nodes.contains(*id))
            .cloned()
            .collect();
        self.finish_settled(shared, &settled).await;
        Ok(ids.len())
    }

    /// Finishes executions whose nodes are all settled, with their audit entry.
    async fn finish_settled(&self, shared: &Arc<Deps>, ids: &[String]) {
        for id in ids {
            if let Err(e) = self.finish(shared, id).await {
                tracing::warn!(exec_id = %id, error = %e, "cannot mark execution finished");
            }
        }
    }

    /// Marks the execution finished; whoever finished it (not another task or
    /// replica that got there first) wakes its readers and audits it, once.
    async fn finish(&self, shared: &Arc<Deps>, exec_id: &str) -> Result<(), StoreError> {
        if shared.store.finish_execution(exec_id, now_ms()).await? {
            events_committed(&self.events);
            self.audit_results(shared, exec_id).await;
        }
        Ok(())
    }

    /// Follows each given unfinished (execution, node) from where the store has
    /// it, with its rate control: nodes already running hold their slots, and
    /// failures already stored count against `max_errors`.
    async fn resume(&self, shared: &Arc<Deps>, open: Vec<(ExecutionRow, ResultRow)>) -> usize {
        let n = open.len();
        let mut per_exec: HashMap<String, (Arc<ExecutionRow>, Vec<ResultRow>)> = HashMap::new();
        for (e, r) in open {
            per_exec
                .entry(e.id.clone())
                .or_insert_with(|| (Arc::new(e), Vec::new()))
                .1
                .push(r);
        }
        for (exec_id, (exec, mut rows)) in per_exec {
            let errors = match exec.max_errors {
                Some(_) => shared.store.error_count(&exec_id).await.unwrap_or(0),
                None => 0,
            };
            let errors = u64::try_from(errors).unwrap_or(0);
            let Some(running) = self.start_running(&exec, rows.len(), errors) else {
                continue;
            };
            // Running nodes take back the slots they held before any pending
            // node is spawned: which task first reaches a semaphore is not
            // the order they were spawned in.
            rows.sort_by_key(|r| r.status != NodeExecStatus::Running);
            for r in rows {
                let start = if r.status == NodeExecStatus::Running {
                    dispatch::Start::ResumedRunning(
                        running
                            .slots
                            .as_ref()
                            .and_then(|s| s.clone().try_acquire_owned().ok()),
                    )
                } else {
                    dispatch::Start::ResumedPending
                };
                dispatch::spawn(
                    shared,
                    self,
                    exec.clone(),
                    running.clone(),
                    r.node_id,
                    r.hostname,
                    start,
                );
            }
        }
        if n > 0 {
            tracing::info!(results = n, "resuming unfinished executions");
        }
        n
    }

    /// For a replica: renews the leases of the executions running here, stops
    /// the ones another replica took, and takes over expired ones. Runs until
    /// shutdown.
    pub async fn run_leases(self) {
        let shared = self.deps.clone();
        let Some(owner) = self.owner.clone() else {
            return;
        };
        let lease = EXEC_LEASE.as_millis() as i64;
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tokio::time::sleep(LEASE_TICK) => {}
                _ = self.takeover.notified() => {}
            }
            let ids: Vec<String> = self.running().keys().cloned().collect();
            if !ids.is_empty() {
                match shared.store.renew_leases(&owner, &ids, lease).await {
                    Ok(held) => {
                        let held: std::collections::HashSet<String> = held.into_iter().collect();
                        for id in ids.iter().filter(|id| !held.contains(*id)) {
                            if let Some(r) = self.running().remove(id) {
                                tracing::warn!(exec_id = %id, "another replica took this execution over (our lease ran out); stopping here");
                                r.taken_over.cancel();
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew execution leases"),
                }
                // A cancel another replica took: act on it here, where they run.
                match shared.store.cancel_requested(&ids).await {
                    Ok(cancelled) => {
                        for id in cancelled {
                            self.cancel_local(&id);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot look for cancelled executions"),
                }
            }
            loop {
                match self.take_expired(&shared, &owner, false).await {
                    Ok(n) if n >= TAKE_BATCH as usize => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot look for executions to take over");
                        break;
                    }
                }
            }
        }
    }

    /// Called once a node's final result is durable.
    async fn node_done(&self, shared: &Arc<Deps>, exec_id: &str) {
        let Some(counter) = self.counter(exec_id) else {
            return;
        };
        if counter.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.running().remove(exec_id);
            // Until it is written (the node's task ends at shutdown, and the
            // next start, or another replica, finishes it then).
            let mut attempt = 0u32;
            while let Err(e) = self.finish(shared, exec_id).await {
                tracing::warn!(exec_id, error = %e, "cannot mark execution finished; will try again");
                attempt += 1;
                tokio::time::sleep(dispatch::backoff(attempt, Duration::from_secs(60))).await;
            }
        }
    }

    /// The audit entry with every node's response (status, exit code, output size and hash).
    async fn audit_results(&self, shared: &Arc<Deps>, exec_id: &str) {
        let Ok(Some((e, results))) = shared.store.execution_summary(exec_id).await else {
            return;
        };
        let responses: Vec<_> = results
            .iter()
            .map(|r| {
                json!({
                    "hostname": r.hostname, "status": r.status.as_str(), "exit_code": r.exit_code,
                    "stdout_bytes": r.stdout_bytes, "stdout_sha256": r.stdout_sha256,
                    "stderr_bytes": r.stderr_bytes, "stderr_sha256": r.stderr_sha256, "error": r.error,
                })
            })
            .collect();
        let all_ok = results
            .iter()
            .all(|r| r.status == NodeExecStatus::Succeeded);
        let mut ev = Event::new("cmdexec.result", if all_ok { "ok" } else { "failed" })
            .org(&e.org_id)
            .actor(&e.username)
            .source(e.source_ip.clone())
            .project(&e.project_name)
            .detail(json!({ "edge": e.edge_name, "responses": responses }));
        ev.targets = results.iter().map(|r| r.hostname.clone()).collect();
        ev.exec_id = Some(e.id.clone());
        shared.audit.batched(ev).await;
    }
}
