//! Session recordings: projects' recording policies, a recording's metadata and
//! its segments (compressed asciicast lines, chained by SHA-256).
//!
//! A segment is written with its recording's counters in one transaction, so
//! the metadata never claims a segment the store does not hold. Reading a
//! segment never fails its neighbours: a segment that cannot be read is the
//! caller's to mark, and the rest of the recording is still served.

use postern_api::recordings::RecordingPolicy;
use sqlx::Row;

use super::{Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingRow {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    pub node_id: String,
    pub hostname: String,
    pub user_id: String,
    pub user_name: String,
    pub login: String,
    pub kind: String,
    pub command: String,
    pub policy: String,
    pub replica: String,
    pub width: i64,
    pub height: i64,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub status: String,
    pub chunks: i64,
    pub cast_bytes: i64,
    pub stored_bytes: i64,
    pub gaps: i64,
    pub last_hash: String,
    /// kubectl exec and attach: `NAMESPACE/POD`.
    pub pod: Option<String>,
}

/// A stored segment, without or with its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRow {
    pub seq: i64,
    pub offset: i64,
    pub raw_len: i64,
    pub at_ms: i64,
    pub sha256: String,
    pub data: Option<Vec<u8>>,
}

/// Which recordings a listing may show, and the caller's filters.
#[derive(Debug, Clone, Default)]
pub struct RecordingFilter {
    pub org_id: String,
    /// `None`: every project of the org (org admins); else every recording
    /// of these projects (their project admins)...
    pub projects: Option<Vec<String>>,
    /// ...and in these, only `own_user_id`'s own (members, read_only).
    pub own_projects: Vec<String>,
    pub own_user_id: String,
    pub user: Option<String>,
    pub hostname: Option<String>,
    /// `Some(true)`: relayed (`ssh -J`) sessions only; `Some(false)`: recorded ones.
    pub relay: Option<bool>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

const COLS: &str = "id, org_id, project_id, node_id, hostname, user_id, user_name, login, kind, \
    command, policy, replica, width, height, started_at, ended_at, status, chunks, cast_bytes, \
    stored_bytes, gaps, last_hash, pod";

fn read(r: sqlx::any::AnyRow) -> Result<RecordingRow> {
    Ok(RecordingRow {
        id: r.try_get(0)?,
        org_id: r.try_get(1)?,
        project_id: r.try_get(2)?,
        node_id: r.try_get(3)?,
        hostname: r.try_get(4)?,
        user_id: r.try_get(5)?,
        user_name: r.try_get(6)?,
        login: r.try_get(7)?,
        kind: r.try_get(8)?,
        command: r.try_get(9)?,
        policy: r.try_get(10)?,
        replica: r.try_get(11)?,
        width: r.try_get(12)?,
        height: r.try_get(13)?,
        started_at: r.try_get(14)?,
        ended_at: r.try_get(15)?,
        status: r.try_get(16)?,
        chunks: r.try_get(17)?,
        cast_bytes: r.try_get(18)?,
        stored_bytes: r.try_get(19)?,
        gaps: r.try_get(20)?,
        last_hash: r.try_get(21)?,
        pod: r.try_get(22)?,
    })
}

impl Store {
    /// The project's policy; `None` when none was set (the default applies).
    pub async fn recording_policy(&self, project_id: &str) -> Result<Option<RecordingPolicy>> {
        let row = sqlx::query("SELECT policy FROM recording_policies WHERE project_id = $1")
            .bind(project_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some(r) => {
                let text: String = r.try_get(0)?;
                serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt(format!("recording policy: {e}")))
            }
        }
    }

    pub async fn set_recording_policy(
        &self,
        project_id: &str,
        policy: &RecordingPolicy,
        now: i64,
    ) -> Result<()> {
        let text = serde_json::to_string(policy).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM recording_policies WHERE project_id = $1")
            .bind(project_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO recording_policies (project_id, policy, updated_at) VALUES ($1, $2, $3)",
        )
        .bind(project_id)
        .bind(&text)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn create_recording(&self, r: &RecordingRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO recordings (id, org_id, project_id, node_id, hostname, user_id, user_name, \
             login, kind, command, policy, replica, width, height, started_at, ended_at, status, \
             chunks, cast_bytes, stored_bytes, gaps, last_hash, pod) VALUES ($1, $2, $3, $4, $5, $6, \
             $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)",
        )
        .bind(&r.id)
        .bind(&r.org_id)
        .bind(&r.project_id)
        .bind(&r.node_id)
        .bind(&r.hostname)
        .bind(&r.user_id)
        .bind(&r.user_name)
        .bind(&r.login)
        .bind(&r.kind)
        .bind(&r.command)
        .bind(&r.policy)
        .bind(&r.replica)
        .bind(r.width)
        .bind(r.height)
        .bind(r.started_at)
        .bind(r.ended_at)
        .bind(&r.status)
        .bind(r.chunks)
        .bind(r.cast_bytes)
        .bind(r.stored_bytes)
        .bind(r.gaps)
        .bind(&r.last_hash)
        .bind(&r.pod)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::conflict_or(e, format!("recording {}", r.id)))?;
        Ok(())
    }

    /// Stores segment `seq` and moves the recording's counters and head with it.
    pub async fn append_chunk(&self, recording_id: &str, c: &ChunkRow, gaps: i64) -> Result<()> {
        let data = c.data.as_deref().unwrap_or_default();
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO recording_chunks (recording_id, seq, at_offset, raw_len, at_ms, data, sha256) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(recording_id)
        .bind(c.seq)
        .bind(c.offset)
        .bind(c.raw_len)
        .bind(c.at_ms)
        .bind(data)
        .bind(&c.sha256)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE recordings SET chunks = $2, cast_bytes = $3, stored_bytes = stored_bytes + $4, \
             gaps = $5, last_hash = $6 WHERE id = $1",
        )
        .bind(recording_id)
        .bind(c.seq + 1)
        .bind(c.offset + c.raw_len)
        .bind(data.len() as i64)
        .bind(gaps)
        .bind(&c.sha256)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends a recording (or a relayed session's row); `cast_bytes` is the bytes
    /// a relay moved, since it has no cast.
    pub async fn finish_recording(
        &self,
        id: &str,
        ended_at: i64,
        status: &str,
        relay_bytes: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE recordings SET ended_at = $2, status = $3, \
             cast_bytes = COALESCE($4, cast_bytes) WHERE id = $1",
        )
        .bind(id)
        .bind(ended_at)
        .bind(status)
        .bind(relay_bytes)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Recordings a replica left live when it stopped (killed, or its host
    /// lost) are interrupted: what reached the store is all there is.
    pub async fn interrupt_recordings(&self, replica: &str, now: i64) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE recordings SET status = 'interrupted', ended_at = $2 \
             WHERE replica = $1 AND status = 'live'",
        )
        .bind(replica)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub async fn recording(&self, id: &str) -> Result<Option<RecordingRow>> {
        let q = format!("SELECT {COLS} FROM recordings WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(read)
            .transpose()
    }

    /// A page of recordings, newest first, and how many match in all.
    pub async fn list_recordings(
        &self,
        f: &RecordingFilter,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<RecordingRow>)> {
        enum Bind<'a> {
            Text(&'a str),
            Int(i64),
        }
        let mut conds = vec!["org_id = $1".to_string()];
        let mut binds = vec![Bind::Text(&f.org_id)];
        if let Some(ps) = &f.projects {
            if ps.is_empty() && f.own_projects.is_empty() {
                return Ok((0, Vec::new()));
            }
            let mut either = Vec::new();
            if !ps.is_empty() {
                let mut marks = Vec::new();
                for p in ps {
                    binds.push(Bind::Text(p));
                    marks.push(format!("${}", binds.len()));
                }
                either.push(format!("project_id IN ({})", marks.join(", ")));
            }
            if !f.own_projects.is_empty() {
                let mut marks = Vec::new();
                for p in &f.own_projects {
                    binds.push(Bind::Text(p));
                    marks.push(format!("${}", binds.len()));
                }
                binds.push(Bind::Text(&f.own_user_id));
                either.push(format!(
                    "(project_id IN ({}) AND user_id = ${})",
                    marks.join(", "),
                    binds.len()
                ));
            }
            conds.push(format!("({})", either.join(" OR ")));
        }
        for (col, v) in [("user_name", &f.user), ("hostname", &f.hostname)] {
            if let Some(v) = v {
                binds.push(Bind::Text(v));
                conds.push(format!("{col} = ${}", binds.len()));
            }
        }
        match f.relay {
            Some(true) => conds.push("kind = 'jump'".into()),
            Some(false) => conds.push("kind <> 'jump'".into()),
            None => {}
        }
        for (op, v) in [(">=", f.since_ms), ("<", f.until_ms)] {
            if let Some(t) = v {
                binds.push(Bind::Int(t));
                conds.push(format!("started_at {op} ${}", binds.len()));
            }
        }
        let filter = conds.join(" AND ");
        let bind_all = |mut q: sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>| {
            for b in &binds {
                q = match b {
                    Bind::Text(t) => q.bind(t.to_string()),
                    Bind::Int(i) => q.bind(*i),
                };
            }
            q
        };
        let count = format!("SELECT COUNT(*) FROM recordings WHERE {filter}");
        let total: i64 = bind_all(sqlx::query(sqlx::AssertSqlSafe(count)))
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let n = binds.len();
        let q = format!(
            "SELECT {COLS} FROM recordings WHERE {filter} ORDER BY started_at DESC, id DESC LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(q)))
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let rows = rows.into_iter().map(read).collect::<Result<Vec<_>>>()?;
        Ok((total, rows))
    }

    /// The segments of a recording, in order; with their data when `with_data`,
    /// from segment `from` on, at most `max` of them.
    pub async fn recording_chunks(
        &self,
        recording_id: &str,
        from: i64,
        max: i64,
        with_data: bool,
    ) -> Result<Vec<ChunkRow>> {
        let q = if with_data {
            "SELECT seq, at_offset, raw_len, at_ms, sha256, data FROM recording_chunks \
             WHERE recording_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3"
        } else {
            "SELECT seq, at_offset, raw_len, at_ms, sha256 FROM recording_chunks \
             WHERE recording_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3"
        };
        let rows = sqlx::query(q)
            .bind(recording_id)
            .bind(from)
            .bind(max)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ChunkRow {
                    seq: r.try_get(0)?,
                    offset: r.try_get(1)?,
                    raw_len: r.try_get(2)?,
                    at_ms: r.try_get(3)?,
                    sha256: r.try_get(4)?,
                    data: if with_data { Some(r.try_get(5)?) } else { None },
                })
            })
            .collect()
    }

    /// The segment holding cast byte `offset`.
    pub async fn chunk_at_offset(&self, recording_id: &str, offset: i64) -> Result<Option<i64>> {
        Ok(sqlx::query(
            "SELECT seq FROM recording_chunks WHERE recording_id = $1 AND at_offset <= $2 \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(recording_id)
        .bind(offset)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
    }

    /// The orgs that delete recordings, with their retention in days.
    pub async fn retention_orgs(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT org_id, recording_retention_days FROM org_policies \
             WHERE recording_retention_days > 0",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// `org_id`'s recordings that ended before `before`, oldest first, at most
    /// `max` (by the index on (org_id, ended_at): what an org keeps is never
    /// read for another's retention).
    pub async fn recordings_ended_before(
        &self,
        org_id: &str,
        before: i64,
        max: i64,
    ) -> Result<Vec<RecordingRow>> {
        let q = format!(
            "SELECT {COLS} FROM recordings WHERE org_id = $1 AND ended_at IS NOT NULL \
             AND ended_at < $2 ORDER BY ended_at LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(org_id)
            .bind(before)
            .bind(max)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(read).collect()
    }

    pub async fn delete_recording(&self, id: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM recording_chunks WHERE recording_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM recordings WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// For tests of tamper evidence and of damaged rows: one segment's stored
    /// bytes or length changed, as someone with write access to the database
    /// (or a bad disk) could change them.
    pub async fn overwrite_chunk(
        &self,
        recording_id: &str,
        seq: i64,
        data: Option<&[u8]>,
        raw_len: Option<i64>,
    ) -> Result<()> {
        if let Some(d) = data {
            sqlx::query(
                "UPDATE recording_chunks SET data = $3 WHERE recording_id = $1 AND seq = $2",
            )
            .bind(recording_id)
            .bind(seq)
            .bind(d)
            .execute(&self.pool)
            .await?;
        }
        if let Some(n) = raw_len {
            sqlx::query(
                "UPDATE recording_chunks SET raw_len = $3 WHERE recording_id = $1 AND seq = $2",
            )
            .bind(recording_id)
            .bind(seq)
            .bind(n)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}
