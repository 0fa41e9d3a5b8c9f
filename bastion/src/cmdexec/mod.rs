//! The cmdexec engine: turns a validated request into an execution (one row per
//! target node, unreachable and unapproved nodes settled at once), fans it out on
//! the live agent channels, collects results through the batch writer, and resumes
//! unfinished work after a restart.
//!
//! Execution is at most once per (exec ID, node): the agent refuses to run an ID
//! twice. Delivery is at least once: the agent spools the result until the bastion
//! has stored it and says so (`DELETE /v1/exec/{id}`); storing is idempotent.

mod dispatch;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use postern_api::admin::NodeState;
use postern_api::cmdexec::{ContentType, ExecuteResponse, NodeExecStatus, TargetType};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Event;
use crate::clock::{now_ms, rfc3339};
use crate::state::Shared;
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
}

/// Why an execution was not started; in either case nothing was stored or run.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the audit log cannot be written: {0}")]
    Audit(#[from] crate::audit::AuditError),
}

/// The engine's handle: cheap to clone, owned by the bastion's shared state.
#[derive(Clone)]
pub struct Engine {
    writer: mpsc::Sender<writer::Op>,
    remaining: Arc<Mutex<HashMap<String, Arc<AtomicUsize>>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine")
    }
}

impl Engine {
    /// Starts the batch writer on `tasks`; it drains and stops on `shutdown`.
    pub fn new(store: Store, tasks: &TaskTracker, shutdown: CancellationToken) -> Engine {
        let (tx, rx) = mpsc::channel(16_384);
        tasks.spawn(writer::run(store, rx, shutdown));
        Engine {
            writer: tx,
            remaining: Arc::new(Mutex::new(HashMap::new())),
        }
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

    fn counter(&self, exec_id: &str) -> Option<Arc<AtomicUsize>> {
        self.remaining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
    }

    /// Creates the execution, audits it, and starts the fan-out. Returns at once.
    pub async fn submit(
        &self,
        shared: &Arc<Shared>,
        s: Submission,
    ) -> Result<ExecuteResponse, SubmitError> {
        let now = now_ms();
        let exec_id = crate::store::new_id();
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
                    if shared.registry.is_reachable(&n.id) =>
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
            },
            target: s.target.clone(),
            timeout_secs: s.timeout_secs,
            created_at: now,
            finished_at: runnable.is_empty().then_some(now),
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
            }));
        ev.targets = s.nodes.iter().map(|n| n.hostname.clone()).collect();
        ev.exec_id = Some(exec_id.clone());
        // Fail closed: a command nobody could later find in the audit log does
        // not run. Written first, so nothing is stored or sent when it fails.
        shared.audit.record(ev).await?;
        shared.store.insert_execution(&exec, &results).await?;

        if runnable.is_empty() {
            self.audit_results(shared, &exec_id).await;
        } else {
            let counter = Arc::new(AtomicUsize::new(runnable.len()));
            self.remaining
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(exec_id.clone(), counter);
            let exec = Arc::new(exec);
            for (node_id, hostname) in runnable {
                dispatch::spawn(shared, self, exec.clone(), node_id, hostname, false);
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
        })
    }

    /// Resumes every unfinished (execution, node) after a restart.
    pub async fn recover(&self, shared: &Arc<Shared>) -> Result<usize, StoreError> {
        let open = shared.store.unfinished_results().await?;
        let n = open.len();
        let mut per_exec: HashMap<String, (Arc<ExecutionRow>, Vec<ResultRow>)> = HashMap::new();
        for (e, r) in open {
            per_exec
                .entry(e.id.clone())
                .or_insert_with(|| (Arc::new(e), Vec::new()))
                .1
                .push(r);
        }
        for (exec_id, (exec, rows)) in per_exec {
            self.remaining
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(exec_id, Arc::new(AtomicUsize::new(rows.len())));
            for r in rows {
                let sent = r.status == NodeExecStatus::Running;
                dispatch::spawn(shared, self, exec.clone(), r.node_id, r.hostname, sent);
            }
        }
        if n > 0 {
            tracing::info!(results = n, "resuming unfinished executions");
        }
        Ok(n)
    }

    /// Called once a node's final result is durable.
    async fn node_done(&self, shared: &Arc<Shared>, exec_id: &str) {
        let Some(counter) = self.counter(exec_id) else {
            return;
        };
        if counter.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.remaining
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(exec_id);
            if let Err(e) = shared.store.finish_execution(exec_id, now_ms()).await {
                tracing::warn!(exec_id, error = %e, "cannot mark execution finished");
            }
            self.audit_results(shared, exec_id).await;
        }
    }

    /// The audit entry with every node's response (status, exit code, output size and hash).
    async fn audit_results(&self, shared: &Arc<Shared>, exec_id: &str) {
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
        shared.audit(ev).await;
    }
}
