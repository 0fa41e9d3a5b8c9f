//! cmdexec executions and their per-node results. Results are written in batches
//! (one transaction per batch) by the engine's writer; a final result never
//! overwrites another final result, so a result delivered twice is stored once.

use postern_api::cmdexec::{ExecEvent, NodeCounts, NodeExecStatus};
use sqlx::Row;

use super::many_rows::{statement_chunks, values_list};
use super::{Backend, Result, Store, StoreError};

mod idempotency;
mod reads;

pub use idempotency::{CLAIM_LEASE_MS, IdempotencyClaim, IdempotencyKey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionRow {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    pub project_name: String,
    pub edge_id: String,
    pub edge_name: String,
    pub username: String,
    pub source_ip: Option<String>,
    pub command: String,
    pub content_type: String,
    pub target_type: String,
    pub target: Option<Vec<String>>,
    pub timeout_secs: i64,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// Nodes at once (None: all); failures tolerated (None: no limit).
    pub max_concurrency: Option<i64>,
    pub max_errors: Option<i64>,
    /// The selector as understood, for `target_type: selector`.
    pub selector: Option<String>,
    pub cancel_requested_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRow {
    pub exec_id: String,
    pub node_id: String,
    pub hostname: String,
    pub status: NodeExecStatus,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    /// Output bytes as kept (any bytes: stored as BLOB/BYTEA).
    pub stdout: Vec<u8>,
    pub stdout_truncated: bool,
    pub stdout_bytes: i64,
    pub stdout_sha256: Option<String>,
    pub stderr: Vec<u8>,
    pub stderr_truncated: bool,
    pub stderr_bytes: i64,
    pub stderr_sha256: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl ResultRow {
    pub fn new(exec_id: &str, node_id: &str, hostname: &str, status: NodeExecStatus) -> ResultRow {
        ResultRow {
            exec_id: exec_id.into(),
            node_id: node_id.into(),
            hostname: hostname.into(),
            status,
            exit_code: None,
            error: None,
            stdout: Vec::new(),
            stdout_truncated: false,
            stdout_bytes: 0,
            stdout_sha256: None,
            stderr: Vec::new(),
            stderr_truncated: false,
            stderr_bytes: 0,
            stderr_sha256: None,
            started_at: None,
            finished_at: None,
        }
    }
}

/// A change to one result, applied by the batch writer.
#[derive(Debug, Clone)]
pub enum ResultUpdate {
    Started {
        exec_id: String,
        node_id: String,
        hostname: String,
        at: i64,
    },
    Finished(Box<ResultRow>),
    /// An event of the live stream that is not a change of state (output).
    Event {
        exec_id: String,
        node_id: String,
        event: Box<ExecEvent>,
    },
}

impl ResultUpdate {
    /// `(exec_id, node_id)`, for logs.
    pub fn key(&self) -> (&str, &str) {
        match self {
            ResultUpdate::Started {
                exec_id, node_id, ..
            } => (exec_id, node_id),
            ResultUpdate::Finished(r) => (&r.exec_id, &r.node_id),
            ResultUpdate::Event {
                exec_id, node_id, ..
            } => (exec_id, node_id),
        }
    }
}

/// An execution as history lists it: its command cut to
/// [`postern_api::cmdexec::HISTORY_COMMAND_CHARS`] characters by the database (a
/// page of 100 one-megabyte scripts is never read whole), and its nodes counted.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub execution: ExecutionRow,
    /// The command was longer than what `execution.command` holds.
    pub command_truncated: bool,
    pub counts: NodeCounts,
}

/// One page of an execution's nodes, by hostname, with every node counted.
#[derive(Debug, Clone)]
pub struct ExecutionPage {
    pub execution: ExecutionRow,
    pub counts: NodeCounts,
    pub results: Vec<ResultRow>,
    /// Where the next page starts, when there are nodes after this page.
    pub next_offset: Option<i64>,
}

// Dynamic SQL here is assembled only from these constants and numbered
// placeholders, never from input; hence `AssertSqlSafe`.
const EXEC_COLS: &str = "id, org_id, project_id, project_name, edge_id, edge_name, username, source_ip, command, content_type, target_type, target, timeout_secs, created_at, finished_at, max_concurrency, max_errors, selector, cancel_requested_at";
/// How many columns EXEC_COLS has.
const EXEC_NCOLS: usize = 19;
const RESULT_COLS: &str = "exec_id, node_id, hostname, status, exit_code, error, stdout, stdout_truncated, stdout_bytes, stdout_sha256, stderr, stderr_truncated, stderr_bytes, stderr_sha256, started_at, finished_at";
/// The same columns without the output: for summaries of thousands of nodes.
const SUMMARY_COLS: &str = "exec_id, node_id, hostname, status, exit_code, error, NULL AS stdout, stdout_truncated, stdout_bytes, stdout_sha256, NULL AS stderr, stderr_truncated, stderr_bytes, stderr_sha256, started_at, finished_at";

fn exec_row(r: sqlx::any::AnyRow) -> Result<ExecutionRow> {
    let target: Option<String> = r.try_get(11)?;
    Ok(ExecutionRow {
        id: r.try_get(0)?,
        org_id: r.try_get(1)?,
        project_id: r.try_get(2)?,
        project_name: r.try_get(3)?,
        edge_id: r.try_get(4)?,
        edge_name: r.try_get(5)?,
        username: r.try_get(6)?,
        source_ip: r.try_get(7)?,
        command: r.try_get(8)?,
        content_type: r.try_get(9)?,
        target_type: r.try_get(10)?,
        target: target
            .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?,
        timeout_secs: r.try_get(12)?,
        created_at: r.try_get(13)?,
        finished_at: r.try_get(14)?,
        max_concurrency: r.try_get(15)?,
        max_errors: r.try_get(16)?,
        selector: r.try_get(17)?,
        cancel_requested_at: r.try_get(18)?,
    })
}

/// A stored event's body: the event as the API sends it.
fn event_body(e: &ExecEvent) -> String {
    serde_json::to_string(e).unwrap_or_else(|_| "{}".into())
}

/// The event that says a node's part ended, from its final row.
pub fn node_finished_event(r: &ResultRow) -> ExecEvent {
    ExecEvent::NodeFinished {
        hostname: r.hostname.clone(),
        status: r.status,
        exit_code: r.exit_code.and_then(|c| i32::try_from(c).ok()),
        error: r.error.clone(),
        at: crate::clock::rfc3339(r.finished_at.unwrap_or_else(crate::clock::now_ms)),
    }
}

/// The (exec ID, node ID) pairs an `UPDATE … RETURNING exec_id, node_id` changed.
fn changed_rows(rows: Vec<sqlx::any::AnyRow>) -> std::collections::HashSet<(String, String)> {
    rows.into_iter()
        .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
        .collect()
}

/// Appends events in their order, many to a statement.
async fn insert_events(
    backend: Backend,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    events: &[(String, ExecEvent)],
    now: i64,
) -> Result<()> {
    for chunk in statement_chunks(events, 4) {
        let q = format!(
            "INSERT INTO exec_events (exec_id, kind, body, created_at) VALUES {}",
            values_list(backend, chunk.len(), 4)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str()));
        for (exec_id, e) in chunk {
            query = query
                .bind(exec_id.as_str())
                .bind(e.name())
                .bind(event_body(e))
                .bind(now);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    exec_id: &str,
    e: &ExecEvent,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO exec_events (exec_id, kind, body, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(exec_id)
    .bind(e.name())
    .bind(event_body(e))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One stored event of an execution's stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: i64,
    pub kind: String,
    pub body: String,
}

fn result_row(r: sqlx::any::AnyRow) -> Result<ResultRow> {
    let status: String = r.try_get(3)?;
    let out_t: i64 = r.try_get(7)?;
    let err_t: i64 = r.try_get(11)?;
    Ok(ResultRow {
        exec_id: r.try_get(0)?,
        node_id: r.try_get(1)?,
        hostname: r.try_get(2)?,
        status: NodeExecStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("exec status {status:?}")))?,
        exit_code: r.try_get(4)?,
        error: r.try_get(5)?,
        stdout: r.try_get::<Option<Vec<u8>>, _>(6)?.unwrap_or_default(),
        stdout_truncated: out_t != 0,
        stdout_bytes: r.try_get(8)?,
        stdout_sha256: r.try_get(9)?,
        stderr: r.try_get::<Option<Vec<u8>>, _>(10)?.unwrap_or_default(),
        stderr_truncated: err_t != 0,
        stderr_bytes: r.try_get(12)?,
        stderr_sha256: r.try_get(13)?,
        started_at: r.try_get(14)?,
        finished_at: r.try_get(15)?,
    })
}

fn bind_result<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    r: &'q ResultRow,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    q.bind(&r.exec_id)
        .bind(&r.node_id)
        .bind(&r.hostname)
        .bind(r.status.as_str())
        .bind(r.exit_code)
        .bind(&r.error)
        .bind(&r.stdout)
        .bind(i64::from(r.stdout_truncated))
        .bind(r.stdout_bytes)
        .bind(&r.stdout_sha256)
        .bind(&r.stderr)
        .bind(i64::from(r.stderr_truncated))
        .bind(r.stderr_bytes)
        .bind(&r.stderr_sha256)
        .bind(r.started_at)
        .bind(r.finished_at)
}

impl Store {
    /// Creates the execution and all its result rows in one transaction.
    pub async fn insert_execution(&self, e: &ExecutionRow, results: &[ResultRow]) -> Result<()> {
        self.insert_execution_owned(e, results, None, None)
            .await
            .map(|_| ())
    }

    /// [`Store::insert_execution`], held by `owner` under a lease of `lease_ms`
    /// (on the database's clock) when several replicas share the store.
    ///
    /// With `claim`, the execution is the one of that Idempotency-Key: in the
    /// same transaction the claim is bound to it (it is then held for good, see
    /// [`Store::claim_idempotency_key`]), and when the claim no longer names
    /// this execution (another request took it over after its lease ran out)
    /// nothing is stored and the answer is `false`: the caller must not run it.
    pub async fn insert_execution_owned(
        &self,
        e: &ExecutionRow,
        results: &[ResultRow],
        owner: Option<(&str, i64)>,
        claim: Option<&IdempotencyKey<'_>>,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        if let Some(k) = claim {
            // First, so that the row stays locked (PostgreSQL) until the
            // execution is committed: a takeover waiting on it then finds it
            // bound, not abandoned.
            let bound = sqlx::query(
                "UPDATE idempotency_keys SET lease_until = NULL
                 WHERE org_id = $1 AND username = $2 AND idem_key = $3 AND exec_id = $4",
            )
            .bind(k.org_id)
            .bind(k.username)
            .bind(k.key)
            .bind(&e.id)
            .execute(&mut *tx)
            .await?;
            if bound.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        let target = e
            .target
            .as_ref()
            .map(|t| serde_json::to_string(t).unwrap_or_else(|_| "[]".into()));
        let placeholders: Vec<String> = (1..=EXEC_NCOLS).map(|i| format!("${i}")).collect();
        let q = format!(
            "INSERT INTO executions ({EXEC_COLS}) VALUES ({})",
            placeholders.join(",")
        );
        sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(&e.id)
            .bind(&e.org_id)
            .bind(&e.project_id)
            .bind(&e.project_name)
            .bind(&e.edge_id)
            .bind(&e.edge_name)
            .bind(&e.username)
            .bind(&e.source_ip)
            .bind(&e.command)
            .bind(&e.content_type)
            .bind(&e.target_type)
            .bind(&target)
            .bind(e.timeout_secs)
            .bind(e.created_at)
            .bind(e.finished_at)
            .bind(e.max_concurrency)
            .bind(e.max_errors)
            .bind(&e.selector)
            .bind(e.cancel_requested_at)
            .execute(&mut *tx)
            .await?;
        for chunk in statement_chunks(results, 16) {
            let q = format!(
                "INSERT INTO exec_results ({RESULT_COLS}) VALUES {}",
                values_list(self.backend, chunk.len(), 16)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str()));
            for r in chunk {
                query = bind_result(query, r);
            }
            query.execute(&mut *tx).await?;
        }
        // Nodes settled at submit (unreachable, not approved) are in the stream
        // from the start, as is the end of an execution with nothing to run.
        for r in results.iter().filter(|r| r.status.is_final()) {
            insert_event(&mut tx, &e.id, &node_finished_event(r), e.created_at).await?;
        }
        if let Some(at) = e.finished_at {
            let mut counts = NodeCounts::default();
            for r in results {
                counts.add(r.status, 1);
            }
            let ev = ExecEvent::ExecutionFinished {
                status: counts.overall().to_string(),
                node_counts: counts,
                at: crate::clock::rfc3339(at),
            };
            insert_event(&mut tx, &e.id, &ev, at).await?;
        }
        if let Some((owner, lease_ms)) = owner {
            let q = format!(
                "UPDATE executions SET owner = $2, lease_until = {} + $3 WHERE id = $1",
                super::replicas::db_now(self.backend)
            );
            sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
                .bind(&e.id)
                .bind(owner)
                .bind(lease_ms)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Applies a batch of result changes in one transaction, each change of
    /// state with its event, in a few statements whatever the batch's size
    /// (one statement per change cost the bastion most of its CPU in a
    /// fan-out). A node's changes keep their order: its start, then its output,
    /// then its end. A change that no longer applies (a result delivered twice,
    /// a start after the end) changes nothing and has no event. Answers whether
    /// any event was written.
    pub async fn apply_result_updates(&self, updates: &[ResultUpdate]) -> Result<bool> {
        let mut started: Vec<(&str, &str, &str, i64)> = Vec::new();
        let mut finished: Vec<&ResultRow> = Vec::new();
        let mut outputs: Vec<(&str, &ExecEvent)> = Vec::new();
        let mut seen_start = std::collections::HashSet::new();
        let mut seen_end = std::collections::HashSet::new();
        for u in updates {
            match u {
                ResultUpdate::Started {
                    exec_id,
                    node_id,
                    hostname,
                    at,
                } => {
                    if seen_start.insert((exec_id.as_str(), node_id.as_str())) {
                        started.push((exec_id, node_id, hostname, *at));
                    }
                }
                ResultUpdate::Event { exec_id, event, .. } => outputs.push((exec_id, event)),
                // The first final result stands, as it would one at a time.
                ResultUpdate::Finished(r) => {
                    if seen_end.insert((r.exec_id.as_str(), r.node_id.as_str())) {
                        finished.push(r);
                    }
                }
            }
        }
        let now = crate::clock::now_ms();
        let mut tx = self.write_tx().await?;
        let mut events: Vec<(String, ExecEvent)> = Vec::new();
        for chunk in statement_chunks(&started, 3) {
            let q = format!(
                "UPDATE exec_results SET status = 'running', started_at = v.column3 FROM (VALUES {}) AS v
                 WHERE exec_results.exec_id = v.column1 AND exec_results.node_id = v.column2
                   AND exec_results.status = 'pending'
                 RETURNING exec_results.exec_id, exec_results.node_id",
                values_list(self.backend, chunk.len(), 3)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str()));
            for (exec_id, node_id, _, at) in chunk {
                query = query.bind(*exec_id).bind(*node_id).bind(*at);
            }
            let changed = changed_rows(query.fetch_all(&mut *tx).await?);
            for (exec_id, node_id, hostname, at) in chunk {
                if changed.contains(&(exec_id.to_string(), node_id.to_string())) {
                    let ev = ExecEvent::NodeStarted {
                        hostname: hostname.to_string(),
                        at: crate::clock::rfc3339(*at),
                    };
                    events.push((exec_id.to_string(), ev));
                }
            }
        }
        events.extend(
            outputs
                .into_iter()
                .map(|(e, ev)| (e.to_string(), ev.clone())),
        );
        // 16 values a row, as RESULT_COLS.
        for chunk in statement_chunks(&finished, 16) {
            let q = format!(
                "UPDATE exec_results SET hostname = v.column3, status = v.column4, exit_code = v.column5,
                   error = v.column6, stdout = v.column7, stdout_truncated = v.column8,
                   stdout_bytes = v.column9, stdout_sha256 = v.column10, stderr = v.column11,
                   stderr_truncated = v.column12, stderr_bytes = v.column13, stderr_sha256 = v.column14,
                   started_at = COALESCE(exec_results.started_at, v.column15), finished_at = v.column16
                 FROM (VALUES {}) AS v
                 WHERE exec_results.exec_id = v.column1 AND exec_results.node_id = v.column2
                   AND exec_results.status IN ('pending', 'running')
                 RETURNING exec_results.exec_id, exec_results.node_id",
                values_list(self.backend, chunk.len(), 16)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str()));
            for r in chunk {
                query = bind_result(query, r);
            }
            let changed = changed_rows(query.fetch_all(&mut *tx).await?);
            for r in chunk {
                if changed.contains(&(r.exec_id.clone(), r.node_id.clone())) {
                    events.push((r.exec_id.clone(), node_finished_event(r)));
                }
            }
        }
        insert_events(self.backend, &mut tx, &events, now).await?;
        tx.commit().await?;
        Ok(!events.is_empty())
    }

    /// Marks the execution finished, with the event that ends its stream. Answers
    /// whether this call finished it: not when it was finished already, nor while
    /// any of its results is still open (a finished execution is never resumed,
    /// so its open results would stay open for good).
    pub async fn finish_execution(&self, exec_id: &str, at: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query(
            "UPDATE executions SET finished_at = $2 WHERE id = $1 AND finished_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM exec_results
                               WHERE exec_id = $1 AND status IN ('pending', 'running'))",
        )
        .bind(exec_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        let mut counts = NodeCounts::default();
        let rows = sqlx::query(
            "SELECT status, COUNT(*) FROM exec_results WHERE exec_id = $1 GROUP BY status",
        )
        .bind(exec_id)
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            let status: String = row.try_get(0)?;
            let n: i64 = row.try_get(1)?;
            if let Some(st) = NodeExecStatus::parse(&status) {
                counts.add(st, n);
            }
        }
        let ev = ExecEvent::ExecutionFinished {
            status: counts.overall().to_string(),
            node_counts: counts,
            at: crate::clock::rfc3339(at),
        };
        insert_event(&mut tx, exec_id, &ev, at).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Events of an execution after `after`, in order, at most `limit`.
    pub async fn events_after(
        &self,
        exec_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT id, kind, body FROM exec_events WHERE exec_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(exec_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(StoredEvent {
                    id: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    body: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Records a cancel. `None`: no such execution; `Some(false)`: it had
    /// already finished, and nothing changed.
    pub async fn request_cancel(&self, exec_id: &str, at: i64) -> Result<Option<bool>> {
        let r = sqlx::query(
            "UPDATE executions SET cancel_requested_at = COALESCE(cancel_requested_at, $2)
             WHERE id = $1 AND finished_at IS NULL",
        )
        .bind(exec_id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() > 0 {
            return Ok(Some(true));
        }
        Ok(self.execution_row(exec_id).await?.map(|_| false))
    }

    /// Of these executions, those with a cancel requested.
    pub async fn cancel_requested(&self, exec_ids: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in exec_ids.chunks(100) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let q = format!(
                "SELECT id FROM executions WHERE cancel_requested_at IS NOT NULL AND id IN ({})",
                placeholders.join(",")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str()));
            for id in chunk {
                query = query.bind(id);
            }
            for r in query.fetch_all(&self.pool).await? {
                out.push(r.try_get(0)?);
            }
        }
        Ok(out)
    }

    /// Nodes of the execution whose run went wrong, as `max_errors` counts them.
    pub async fn error_count(&self, exec_id: &str) -> Result<i64> {
        let n: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM exec_results WHERE exec_id = $1 AND status IN ('failed', 'timed_out', 'lost')",
        )
        .bind(exec_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.0)
    }
}
