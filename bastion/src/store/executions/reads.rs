//! Reading executions back: pages of one execution's nodes, summaries,
//! history, and what is still unfinished after a restart or a takeover.

use futures_util::TryStreamExt;
use postern_api::cmdexec::NodeCounts;
use sqlx::Row;

use super::super::{Result, Store, StoreError};
use super::*;

impl Store {
    /// One page of an execution: its nodes from `offset` by hostname, at most
    /// `limit` of them and, past the first, no more than `output_budget` bytes of
    /// output and errors in all, counted as the API encodes them. Rows are read one at a time, so memory follows the page, not
    /// the execution, whatever its fan-out.
    pub async fn execution_page(
        &self,
        exec_id: &str,
        limit: i64,
        offset: i64,
        output_budget: usize,
    ) -> Result<Option<ExecutionPage>> {
        let Some(execution) = self.execution_row(exec_id).await? else {
            return Ok(None);
        };
        let counts = self
            .node_counts(std::slice::from_ref(&execution.id))
            .await?
            .pop()
            .map(|(_, c)| c)
            .unwrap_or_default();
        // One row more than asked tells whether a next page exists.
        let q = format!(
            "SELECT {RESULT_COLS} FROM exec_results WHERE exec_id = $1 ORDER BY hostname, node_id LIMIT $2 OFFSET $3"
        );
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(&execution.id)
            .bind(limit.saturating_add(1))
            .bind(offset)
            .fetch(&self.pool);
        let mut results = Vec::new();
        let mut used = 0usize;
        let mut next_offset = None;
        while let Some(row) = rows.try_next().await? {
            let r = result_row(row)?;
            // What the answer will carry, escaped: up to six bytes a byte.
            let size = postern_api::cmdexec::encoded_len(&r.stdout)
                + postern_api::cmdexec::encoded_len(&r.stderr)
                + r.error
                    .as_deref()
                    .map_or(0, postern_api::cmdexec::json_string_len);
            let full = results.len() as i64 >= limit
                || (!results.is_empty() && used.saturating_add(size) > output_budget);
            if full {
                next_offset = Some(offset + results.len() as i64);
                break;
            }
            used += size;
            results.push(r);
        }
        Ok(Some(ExecutionPage {
            execution,
            counts,
            results,
            next_offset,
        }))
    }

    /// Nodes per state for each of these executions.
    pub(super) async fn node_counts(
        &self,
        exec_ids: &[String],
    ) -> Result<Vec<(String, NodeCounts)>> {
        let mut out: Vec<(String, NodeCounts)> = exec_ids
            .iter()
            .map(|id| (id.clone(), NodeCounts::default()))
            .collect();
        for chunk in exec_ids.chunks(100) {
            let q = format!(
                "SELECT exec_id, status, COUNT(*) FROM exec_results WHERE exec_id IN ({}) GROUP BY exec_id, status",
                crate::store::placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str()));
            for id in chunk {
                query = query.bind(id);
            }
            for r in query.fetch_all(&self.pool).await? {
                let id: String = r.try_get(0)?;
                let status: String = r.try_get(1)?;
                let n: i64 = r.try_get(2)?;
                let status = NodeExecStatus::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("exec status {status:?}")))?;
                if let Some((_, c)) = out.iter_mut().find(|(e, _)| *e == id) {
                    c.add(status, n);
                }
            }
        }
        Ok(out)
    }

    /// The execution and its results without their output text.
    pub async fn execution_summary(
        &self,
        exec_id: &str,
    ) -> Result<Option<(ExecutionRow, Vec<ResultRow>)>> {
        let Some(e) = self.execution_row(exec_id).await? else {
            return Ok(None);
        };
        let results = self
            .results_of(std::slice::from_ref(&e.id), SUMMARY_COLS)
            .await?;
        Ok(Some((e, results)))
    }

    /// The execution without its results.
    pub async fn execution(&self, exec_id: &str) -> Result<Option<ExecutionRow>> {
        self.execution_row(exec_id).await
    }

    pub(super) async fn execution_row(&self, exec_id: &str) -> Result<Option<ExecutionRow>> {
        let q = format!("SELECT {EXEC_COLS} FROM executions WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(exec_id)
            .fetch_optional(&self.pool)
            .await?
            .map(exec_row)
            .transpose()
    }

    pub(super) async fn results_of(
        &self,
        exec_ids: &[String],
        cols: &str,
    ) -> Result<Vec<ResultRow>> {
        let mut out = Vec::new();
        for chunk in exec_ids.chunks(100) {
            let q = format!(
                "SELECT {cols} FROM exec_results WHERE exec_id IN ({}) ORDER BY hostname",
                crate::store::placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str()));
            for id in chunk {
                query = query.bind(id);
            }
            for r in query.fetch_all(&self.pool).await? {
                out.push(result_row(r)?);
            }
        }
        Ok(out)
    }

    /// Executions of a project, newest first, each with its nodes counted by
    /// state. No node's output is read: a page of history costs the same memory
    /// whatever the executions' fan-out.
    pub async fn history(
        &self,
        project_id: &str,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<HistoryRow>)> {
        let total: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM executions WHERE project_id = $1")
            .bind(project_id)
            .fetch_one(&self.pool)
            .await?;
        // The columns of EXEC_COLS, the command cut short in the database, and
        // whether it was (substr and length count characters on both backends).
        let n = postern_api::cmdexec::HISTORY_COMMAND_CHARS;
        let cols = EXEC_COLS.replace("command,", &format!("substr(command, 1, {n}) AS command,"));
        let q = format!(
            "SELECT {cols}, CAST(CASE WHEN length(command) > {n} THEN 1 ELSE 0 END AS BIGINT) \
             FROM executions WHERE project_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(project_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let mut execs = Vec::with_capacity(rows.len());
        for r in rows {
            let truncated: i64 = r.try_get(EXEC_NCOLS)?;
            execs.push((exec_row(r)?, truncated != 0));
        }
        let ids: Vec<String> = execs.iter().map(|(e, _)| e.id.clone()).collect();
        let counts = self.node_counts(&ids).await?;
        let out = execs
            .into_iter()
            .zip(counts)
            .map(|((execution, command_truncated), (_, counts))| HistoryRow {
                execution,
                command_truncated,
                counts,
            })
            .collect();
        Ok((total.0, out))
    }

    /// Of these exec IDs, those whose result for `node_id` is stored and final.
    pub async fn stored_final(&self, node_id: &str, exec_ids: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in exec_ids.chunks(100) {
            let q = format!(
                "SELECT exec_id FROM exec_results WHERE node_id = $1 AND exec_id IN ({}) AND status NOT IN ('pending', 'running')",
                crate::store::placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str())).bind(node_id);
            for id in chunk {
                query = query.bind(id);
            }
            for r in query.fetch_all(&self.pool).await? {
                out.push(r.try_get(0)?);
            }
        }
        Ok(out)
    }

    /// Results not yet final, with their executions: what a restarted bastion resumes.
    /// Found through the open executions (a result is open only while its
    /// execution is): the status has no index, so a status change rewrites
    /// only its row.
    pub async fn unfinished_results(&self) -> Result<Vec<(ExecutionRow, ResultRow)>> {
        let q = format!(
            "SELECT {SUMMARY_COLS} FROM exec_results
             WHERE exec_id IN (SELECT id FROM executions WHERE finished_at IS NULL)
               AND status IN ('pending', 'running')"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .fetch_all(&self.pool)
            .await?;
        self.with_executions(rows).await
    }

    /// Unfinished executions with no open result: every node settled, but the
    /// bastion stopped before it marked the execution finished.
    pub async fn settled_unfinished_executions(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM executions e WHERE finished_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM exec_results r
                               WHERE r.exec_id = e.id AND r.status IN ('pending', 'running'))
             ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The unfinished results of these executions (a replica taking them over).
    pub async fn unfinished_results_of(
        &self,
        exec_ids: &[String],
    ) -> Result<Vec<(ExecutionRow, ResultRow)>> {
        let mut rows = Vec::new();
        for chunk in exec_ids.chunks(500) {
            let list = (0..chunk.len())
                .map(|i| format!("${}", i + 1))
                .collect::<Vec<_>>()
                .join(",");
            let q = format!(
                "SELECT {SUMMARY_COLS} FROM exec_results WHERE status IN ('pending', 'running') AND exec_id IN ({list})"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str()));
            for id in chunk {
                query = query.bind(id);
            }
            rows.extend(query.fetch_all(&self.pool).await?);
        }
        self.with_executions(rows).await
    }

    pub(super) async fn with_executions(
        &self,
        rows: Vec<sqlx::any::AnyRow>,
    ) -> Result<Vec<(ExecutionRow, ResultRow)>> {
        let mut out = Vec::new();
        let mut cache: std::collections::HashMap<String, ExecutionRow> =
            std::collections::HashMap::new();
        for r in rows {
            let r = result_row(r)?;
            if !cache.contains_key(&r.exec_id)
                && let Some(e) = self.execution_row(&r.exec_id).await?
            {
                cache.insert(e.id.clone(), e);
            }
            if let Some(e) = cache.get(&r.exec_id) {
                out.push((e.clone(), r));
            }
        }
        Ok(out)
    }
}
