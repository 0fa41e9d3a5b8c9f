//! The append-only, hash-chained audit log itself: appends and reads. Doors
//! write to it through [`super::Auditor`].
//!
//! Entry `n` stores `hash_n = sha256(canonical(entry_n) ‖ hash_{n-1})` and a dense
//! sequence number, so an edited entry breaks its own hash and a removed one breaks
//! the sequence and the next entry's link. `verify` walks the chain. Appends are
//! serialized in-process, and the primary key on `seq` makes concurrent appenders
//! (several replicas on PostgreSQL) retry instead of forking the chain.

use std::sync::Arc;

use postern_api::admin::{AuditEntry, AuditFilter};
use serde_json::{Value, json};
use sqlx::Row;
use thiserror::Error;
use tokio::sync::Mutex;

use crate::clock::{now_ms, rfc3339};
use crate::secrets::sha256_hex;
use crate::store::many_rows::{statement_chunks, values_list};
use crate::store::{Store, StoreError};

use super::Event;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit entry could not be appended after {0} attempts (concurrent writers)")]
    Contended(u32),
    /// A fail-closed entry the appender could not commit (its action must not
    /// happen).
    #[error("audit entry not written: {0}")]
    Unwritten(String),
}

impl AuditError {
    /// The database is unreachable or busy: the same append may succeed later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuditError::Store(e) if e.is_unavailable())
    }
}

impl From<sqlx::Error> for AuditError {
    fn from(e: sqlx::Error) -> Self {
        AuditError::Store(StoreError::Db(e))
    }
}

/// A problem found by [`Audit::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChainBreak {
    #[error("entry {seq}: its hash does not match its content (the entry was edited)")]
    Edited { seq: i64 },
    #[error(
        "entry {seq}: it does not link to the entry before it (an entry was removed or reordered)"
    )]
    Unlinked { seq: i64 },
    #[error("entries {expected} to {found_minus_one} are missing (removed)", found_minus_one = .found - 1)]
    Gap { expected: i64, found: i64 },
}

#[derive(Clone)]
pub struct Audit {
    store: Store,
    head: Arc<Mutex<Option<(i64, String)>>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Audit")
    }
}

struct Row_ {
    seq: i64,
    id: String,
    at: i64,
    org_id: Option<String>,
    action: String,
    outcome: String,
    actor: Option<String>,
    source_ip: Option<String>,
    project: Option<String>,
    targets: String,
    exec_id: Option<String>,
    detail: String,
    prev_hash: String,
    hash: String,
}

/// The bytes that are hashed: every stored field but the hash, in a fixed order.
fn digest(r: &Row_) -> String {
    let canonical = json!([
        r.seq,
        r.id,
        r.at,
        r.org_id,
        r.action,
        r.outcome,
        r.actor,
        r.source_ip,
        r.project,
        r.targets,
        r.exec_id,
        r.detail,
        r.prev_hash
    ]);
    sha256_hex(canonical.to_string().as_bytes())
}

// Dynamic SQL here is assembled only from this constant; hence `AssertSqlSafe`.
const COLS: &str = "seq, id, at, org_id, action, outcome, actor, source_ip, project, targets, exec_id, detail, prev_hash, hash";

fn read_row(r: sqlx::any::AnyRow) -> Result<Row_, sqlx::Error> {
    Ok(Row_ {
        seq: r.try_get(0)?,
        id: r.try_get(1)?,
        at: r.try_get(2)?,
        org_id: r.try_get(3)?,
        action: r.try_get(4)?,
        outcome: r.try_get(5)?,
        actor: r.try_get(6)?,
        source_ip: r.try_get(7)?,
        project: r.try_get(8)?,
        targets: r.try_get(9)?,
        exec_id: r.try_get(10)?,
        detail: r.try_get(11)?,
        prev_hash: r.try_get(12)?,
        hash: r.try_get(13)?,
    })
}

/// PostgreSQL: takes the chain's lock for this transaction and answers the
/// head under it. Replicas append to one chain: the transaction-scoped advisory
/// lock orders writers across processes. Waits are bounded, so a writer stalled
/// while holding the lock (a partition) cannot hold every replica's audit, and
/// so every change, for as long as the server takes to notice the dead client.
async fn lock_chain(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
) -> Result<(i64, String), AuditError> {
    sqlx::query(
        "SELECT set_config('lock_timeout', '10s', true), \
         set_config('idle_in_transaction_session_timeout', '10s', true)",
    )
    .execute(&mut **tx)
    .await?;
    // One lock per deployment (its schema), not one for every deployment
    // sharing the database.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.postern_audit'))")
        .execute(&mut **tx)
        .await?;
    let prev: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?;
    Ok(prev.unwrap_or((0, GENESIS.to_string())))
}

fn new_row(ev: &Event, prev_seq: i64, prev_hash: String) -> Row_ {
    let mut row = Row_ {
        seq: prev_seq + 1,
        id: crate::store::new_id(),
        at: now_ms(),
        org_id: ev.org_id.clone(),
        action: ev.action.clone(),
        outcome: ev.outcome.clone(),
        actor: ev.actor.clone(),
        source_ip: ev.source_ip.clone(),
        project: ev.project.clone(),
        targets: serde_json::to_string(&ev.targets).unwrap_or_else(|_| "[]".into()),
        exec_id: ev.exec_id.clone(),
        detail: ev.detail.to_string(),
        prev_hash,
        hash: String::new(),
    };
    row.hash = digest(&row);
    row
}

/// Columns of an `audit_log` row, as bound.
const ROW_PARAMS: usize = 14;

fn bind_row<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    row: &'q Row_,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    q.bind(row.seq)
        .bind(&row.id)
        .bind(row.at)
        .bind(&row.org_id)
        .bind(&row.action)
        .bind(&row.outcome)
        .bind(&row.actor)
        .bind(&row.source_ip)
        .bind(&row.project)
        .bind(&row.targets)
        .bind(&row.exec_id)
        .bind(&row.detail)
        .bind(&row.prev_hash)
        .bind(&row.hash)
}

/// Appends `rows`, many to a statement: a batch of a door's entries costs a
/// statement or two, not one round trip to the database each. A clash with
/// another writer fails the statement, and so the transaction, whole.
async fn insert_many(
    backend: crate::store::Backend,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    rows: &[Row_],
) -> Result<(), sqlx::Error> {
    for chunk in statement_chunks(rows, ROW_PARAMS) {
        let q = format!(
            "INSERT INTO audit_log ({COLS}) VALUES {}",
            values_list(backend, chunk.len(), ROW_PARAMS)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str()));
        for row in chunk {
            query = bind_row(query, row);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

impl Audit {
    pub fn new(store: Store) -> Audit {
        Audit {
            store,
            head: Arc::new(Mutex::new(None)),
        }
    }

    /// Appends an event. Audit failures are errors for the caller: an action whose
    /// record cannot be written should not be reported as done. The same
    /// append as a batch's, of one.
    pub async fn record(&self, ev: Event) -> Result<i64, AuditError> {
        self.record_many(vec![ev]).await
    }

    /// Appends several events in one transaction, in order: one commit (and one
    /// sync to disk) for the lot, for doors that record an entry per request.
    /// All or none are written; the caller retries them one by one on failure,
    /// so one bad entry never loses its neighbours.
    pub async fn record_many(&self, evs: Vec<Event>) -> Result<i64, AuditError> {
        let evs: Vec<Event> = evs.into_iter().map(Event::bounded).collect();
        if evs.is_empty() {
            return Ok(0);
        }
        let pg = self.store.backend() == crate::store::Backend::Postgres;
        let mut head = self.head.lock().await;
        for _attempt in 0..5 {
            let mut tx = self.store.write_tx().await?;
            let (mut seq, mut hash) = if pg {
                *head = None;
                lock_chain(&mut tx).await?
            } else {
                match head.as_ref() {
                    Some(h) => h.clone(),
                    None => self.load_head().await?,
                }
            };
            let mut rows = Vec::with_capacity(evs.len());
            for ev in &evs {
                let row = new_row(ev, seq, std::mem::take(&mut hash));
                (seq, hash) = (row.seq, row.hash.clone());
                rows.push(row);
            }
            match insert_many(self.store.backend(), &mut tx, &rows).await {
                Ok(()) => {}
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    // Another writer on the file appended first: reload the head.
                    *head = None;
                    continue;
                }
                Err(e) => {
                    *head = None;
                    return Err(e.into());
                }
            }
            tx.commit().await?;
            if !pg {
                *head = Some((seq, hash));
            }
            return Ok(seq);
        }
        Err(AuditError::Contended(5))
    }

    async fn load_head(&self) -> Result<(i64, String), AuditError> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(self.store.pool())
                .await?;
        Ok(row.unwrap_or((0, GENESIS.to_string())))
    }

    /// Newest first, for one org (`None`: all orgs, for the operator's CLI).
    pub async fn page(
        &self,
        org_id: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<AuditEntry>), AuditError> {
        self.page_filtered(org_id, &AuditFilter::default(), limit, offset)
            .await
    }

    /// A page of the entries that pass `f`, newest first, with how many pass.
    pub async fn page_filtered(
        &self,
        org_id: Option<&str>,
        f: &AuditFilter,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<AuditEntry>), AuditError> {
        enum Bind<'a> {
            Text(&'a str),
            Int(i64),
        }
        // Conditions are fixed fragments with numbered placeholders; every
        // value is bound.
        let mut conds: Vec<String> = Vec::new();
        let mut binds: Vec<Bind<'_>> = Vec::new();
        if let Some(org) = org_id {
            binds.push(Bind::Text(org));
            conds.push(format!("org_id = ${}", binds.len()));
        }
        if let Some(a) = &f.action {
            if f.action_prefix {
                binds.push(Bind::Int(a.chars().count() as i64));
                let len = binds.len();
                binds.push(Bind::Text(a));
                conds.push(format!(
                    "substr(action, 1, CAST(${len} AS INTEGER)) = ${}",
                    binds.len()
                ));
            } else {
                binds.push(Bind::Text(a));
                conds.push(format!("action = ${}", binds.len()));
            }
        }
        for (col, v) in [("actor", &f.actor), ("outcome", &f.outcome)] {
            if let Some(v) = v {
                binds.push(Bind::Text(v));
                conds.push(format!("{col} = ${}", binds.len()));
            }
        }
        for (op, v) in [(">=", f.since_ms), ("<", f.until_ms)] {
            if let Some(t) = v {
                binds.push(Bind::Int(t));
                conds.push(format!("at {op} ${}", binds.len()));
            }
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let bind_all = |q: sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>,
                        binds: &[Bind<'_>]| {
            let mut q = q;
            for b in binds {
                q = match b {
                    Bind::Text(t) => q.bind(t.to_string()),
                    Bind::Int(i) => q.bind(*i),
                };
            }
            q
        };
        let pool = self.store.pool();
        let count = format!("SELECT COUNT(*) FROM audit_log {filter}");
        let total: i64 = bind_all(sqlx::query(sqlx::AssertSqlSafe(count)), &binds)
            .fetch_one(pool)
            .await?
            .try_get(0)?;
        let n = binds.len();
        let q = format!(
            "SELECT {COLS} FROM audit_log {filter} ORDER BY seq DESC LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(q)), &binds)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await?;
        let entries = rows
            .into_iter()
            .map(|r| {
                let r = read_row(r)?;
                Ok(AuditEntry {
                    seq: r.seq,
                    id: r.id,
                    at: rfc3339(r.at),
                    action: r.action,
                    outcome: r.outcome,
                    actor: r.actor,
                    source_ip: r.source_ip,
                    project: r.project,
                    targets: serde_json::from_str(&r.targets).unwrap_or_default(),
                    exec_id: r.exec_id,
                    detail: serde_json::from_str(&r.detail).unwrap_or(Value::Null),
                    hash: r.hash,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((total, entries))
    }

    /// Walks the whole chain oldest first; returns the number of entries checked or
    /// the first break found.
    pub async fn verify(&self) -> Result<Result<i64, ChainBreak>, AuditError> {
        let mut expected_seq = 1;
        let mut prev_hash = GENESIS.to_string();
        let q = format!("SELECT {COLS} FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT 1000");
        loop {
            let rows = sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
                .bind(expected_seq)
                .fetch_all(self.store.pool())
                .await?;
            if rows.is_empty() {
                return Ok(Ok(expected_seq - 1));
            }
            for r in rows {
                let r = read_row(r)?;
                if r.seq != expected_seq {
                    return Ok(Err(ChainBreak::Gap {
                        expected: expected_seq,
                        found: r.seq,
                    }));
                }
                if digest(&r) != r.hash {
                    return Ok(Err(ChainBreak::Edited { seq: r.seq }));
                }
                if r.prev_hash != prev_hash {
                    return Ok(Err(ChainBreak::Unlinked { seq: r.seq }));
                }
                prev_hash = r.hash;
                expected_seq += 1;
            }
        }
    }

    /// Every entry oldest first as JSON lines, for export to a SIEM.
    pub async fn export(&self, out: &mut (dyn std::io::Write + Send)) -> Result<i64, AuditError> {
        let mut n = 0;
        let mut offset_seq = 1;
        let q = format!("SELECT {COLS} FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT 1000");
        loop {
            let rows = sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
                .bind(offset_seq)
                .fetch_all(self.store.pool())
                .await?;
            if rows.is_empty() {
                return Ok(n);
            }
            for r in rows {
                let r = read_row(r)?;
                offset_seq = r.seq + 1;
                let line = json!({
                    "seq": r.seq, "id": r.id, "at": rfc3339(r.at), "org_id": r.org_id, "action": r.action,
                    "outcome": r.outcome, "actor": r.actor, "source_ip": r.source_ip, "project": r.project,
                    "targets": serde_json::from_str::<Value>(&r.targets).unwrap_or(Value::Null),
                    "exec_id": r.exec_id, "detail": serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null),
                    "prev_hash": r.prev_hash, "hash": r.hash,
                });
                let _ = writeln!(out, "{line}");
                n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn events(n: usize, tag: &str) -> Vec<Event> {
        (0..n)
            .map(|i| {
                Event::new("kube.request", "ok")
                    .actor(format!("{tag}-{i}"))
                    .detail(json!({ "i": i }))
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_goes_in_many_rows_a_statement_and_the_chain_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        let audit = Audit::new(store.clone());
        // 300 entries: statements of 256, 32, 8 and 4 rows.
        assert_eq!(audit.record_many(events(300, "a")).await.unwrap(), 300);
        // Another appender on the same file: each one's cached head goes
        // stale in turn, its first statement clashes, the head is read again,
        // and nothing is lost.
        let other = Audit::new(store.clone());
        assert_eq!(other.record_many(events(1, "b")).await.unwrap(), 301);
        assert_eq!(audit.record_many(events(3, "c")).await.unwrap(), 304);
        assert_eq!(other.record_many(events(5, "d")).await.unwrap(), 309);
        assert_eq!(audit.record_many(events(2, "e")).await.unwrap(), 311);
        assert_eq!(audit.verify().await.unwrap().unwrap(), 311);
        let (total, page) = audit.page(None, 3, 0).await.unwrap();
        assert_eq!(total, 311);
        let actors: Vec<_> = page.iter().filter_map(|e| e.actor.as_deref()).collect();
        assert_eq!(actors, ["e-1", "e-0", "d-4"]);
    }
}
