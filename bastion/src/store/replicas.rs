//! What replicas sharing one database record about each other: a heartbeat per
//! replica, which replica holds each node's channel, leases on executions, and
//! keys every replica must share (sealed with the master key).
//!
//! Times that decide whether a replica is alive or a lease ran out are read from
//! the database's clock, never a replica's own, so replicas with skewed clocks
//! agree on who is dead.

use sqlx::Row;

use super::{Backend, Result, Store, StoreError, placeholders};

/// The database's clock in unix milliseconds, as SQL.
pub(crate) fn db_now(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
        Backend::Sqlite => "(CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub name: String,
    pub peer_addr: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
}

/// Where a node's channel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRow {
    pub node_id: String,
    pub replica: String,
    pub conn_id: i64,
}

impl Store {
    /// Now, on the database's clock (ms).
    pub async fn db_now_ms(&self) -> Result<i64> {
        let q = format!("SELECT {}", db_now(self.backend));
        let (now,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .fetch_one(&self.pool)
            .await?;
        Ok(now)
    }

    /// Enters `name` in the table of replicas. Refused with `Conflict` while a live
    /// replica (heartbeat within `lease_ms`) holds the name: two processes under
    /// one name would take each other's nodes and leases. One statement decides,
    /// so of two processes starting under one name at once, one is refused.
    /// Presence rows left by a previous life of this replica are dropped: it
    /// holds no channel yet. Answers this life's start time, which its
    /// heartbeats name.
    pub async fn join_replicas(&self, name: &str, peer_addr: &str, lease_ms: i64) -> Result<i64> {
        let now = db_now(self.backend);
        let mut tx = self.write_tx().await?;
        let q = format!(
            "INSERT INTO replicas (name, peer_addr, started_at, heartbeat_at) VALUES ($1, $2, {now}, {now}) \
             ON CONFLICT (name) DO UPDATE SET peer_addr = excluded.peer_addr, started_at = excluded.started_at, \
             heartbeat_at = excluded.heartbeat_at WHERE replicas.heartbeat_at < {now} - $3 RETURNING started_at"
        );
        let joined: Option<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(name)
            .bind(peer_addr)
            .bind(lease_ms)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((started_at,)) = joined else {
            return Err(StoreError::Conflict(format!(
                "replica name {name:?} (a live replica beats its heartbeat under it; give each replica its own --replica-name, \
                 or wait a few seconds after stopping the old one)"
            )));
        };
        sqlx::query("DELETE FROM node_presence WHERE replica = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(started_at)
    }

    /// Beats the heartbeat; `false` when the row is gone (deleted by an operator,
    /// or taken by a namesake), and the caller should stop counting as a replica.
    pub async fn heartbeat(&self, name: &str, started_at: i64) -> Result<bool> {
        let q = format!(
            "UPDATE replicas SET heartbeat_at = {} WHERE name = $1 AND started_at = $2",
            db_now(self.backend)
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(name)
            .bind(started_at)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn replica(&self, name: &str) -> Result<Option<ReplicaRow>> {
        let row = sqlx::query(
            "SELECT name, peer_addr, started_at, heartbeat_at FROM replicas WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(replica_row).transpose()
    }

    /// Every replica on record, with the database's clock at the time of reading.
    pub async fn replicas(&self) -> Result<(i64, Vec<ReplicaRow>)> {
        let now = self.db_now_ms().await?;
        let rows = sqlx::query(
            "SELECT name, peer_addr, started_at, heartbeat_at FROM replicas ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        let rows = rows
            .into_iter()
            .map(replica_row)
            .collect::<Result<Vec<_>>>()?;
        Ok((now, rows))
    }

    /// A clean stop: this replica holds no channel and no longer beats. Its
    /// executions' leases are let go, so another replica takes them at once.
    /// Only this life's (`started_at`): a namesake that took the name since
    /// keeps its rows.
    pub async fn leave_replicas(&self, name: &str, started_at: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let gone = sqlx::query("DELETE FROM replicas WHERE name = $1 AND started_at = $2")
            .bind(name)
            .bind(started_at)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() == 0 {
            return Ok(());
        }
        sqlx::query("DELETE FROM node_presence WHERE replica = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE executions SET lease_until = 0 WHERE owner = $1 AND finished_at IS NULL",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records channels that came up here. The row is overwritten: the newest
    /// channel of a node wins.
    pub async fn presence_up(&self, replica: &str, up: &[(String, u64)]) -> Result<()> {
        self.presence_apply(replica, up, &[], None).await
    }

    /// Forgets channels that went down here, unless a newer channel (here or on
    /// another replica) already took the node's row.
    pub async fn presence_down(&self, replica: &str, down: &[(String, u64)]) -> Result<()> {
        self.presence_apply(replica, &[], down, None).await
    }

    /// Both at once, in one transaction, with the notifications that announce
    /// them (`channel`, `payloads`) sent by the same transaction: they are then
    /// delivered in commit order, so every replica sees two replicas' claims on
    /// one node in the order the rows were written.
    pub async fn presence_apply(
        &self,
        replica: &str,
        up: &[(String, u64)],
        down: &[(String, u64)],
        notify: Option<(&str, &[String])>,
    ) -> Result<()> {
        if up.is_empty() && down.is_empty() {
            return Ok(());
        }
        let now = db_now(self.backend);
        let conn = |c: &u64| i64::try_from(*c).unwrap_or(i64::MAX);
        let mut tx = self.write_tx().await?;
        self.bound_tx(&mut tx).await?;
        for chunk in up.chunks(200) {
            let mut q = String::from(
                "INSERT INTO node_presence (node_id, replica, conn_id, since) VALUES ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    q.push(',');
                }
                q.push_str(&format!("(${}, $1, ${}, {now})", i * 2 + 2, i * 2 + 3));
            }
            q.push_str(
                " ON CONFLICT (node_id) DO UPDATE SET replica = excluded.replica, \
                 conn_id = excluded.conn_id, since = excluded.since",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str())).bind(replica);
            for (node, c) in chunk {
                query = query.bind(node).bind(conn(c));
            }
            query.execute(&mut *tx).await?;
        }
        for chunk in down.chunks(200) {
            let mut q = String::from("DELETE FROM node_presence WHERE replica = $1 AND (");
            for i in 0..chunk.len() {
                if i > 0 {
                    q.push_str(" OR ");
                }
                q.push_str(&format!(
                    "(node_id = ${} AND conn_id = ${})",
                    i * 2 + 2,
                    i * 2 + 3
                ));
            }
            q.push(')');
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str())).bind(replica);
            for (node, c) in chunk {
                query = query.bind(node).bind(conn(c));
            }
            query.execute(&mut *tx).await?;
        }
        if let Some((channel, payloads)) = notify {
            for p in payloads {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(channel)
                    .bind(p)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every node's presence.
    pub async fn presence_all(&self) -> Result<Vec<PresenceRow>> {
        let rows = sqlx::query("SELECT node_id, replica, conn_id FROM node_presence")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(presence_row).collect()
    }

    /// These nodes' presence.
    pub async fn presence_of(&self, node_ids: &[String]) -> Result<Vec<PresenceRow>> {
        let mut out = Vec::new();
        for chunk in node_ids.chunks(500) {
            let q = format!(
                "SELECT node_id, replica, conn_id FROM node_presence WHERE node_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str()));
            for id in chunk {
                query = query.bind(id);
            }
            for r in query.fetch_all(&self.pool).await? {
                out.push(presence_row(r)?);
            }
        }
        Ok(out)
    }

    /// Renews this replica's leases on `exec_ids`; answers the ones it still holds
    /// (another replica may have taken one whose lease ran out meanwhile).
    pub async fn renew_leases(
        &self,
        owner: &str,
        exec_ids: &[String],
        lease_ms: i64,
    ) -> Result<Vec<String>> {
        let mut held = Vec::new();
        for chunk in exec_ids.chunks(500) {
            let q = format!(
                "UPDATE executions SET lease_until = {} + $2 WHERE owner = $1 AND id IN ({}) RETURNING id",
                db_now(self.backend),
                placeholders(3, chunk.len())
            );
            let mut query = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(q.as_str()))
                .bind(owner)
                .bind(lease_ms);
            for id in chunk {
                query = query.bind(id);
            }
            held.extend(query.fetch_all(&self.pool).await?.into_iter().map(|r| r.0));
        }
        Ok(held)
    }

    /// Takes up to `limit` unfinished executions whose lease ran out (or that never
    /// had one: made before replicas, or by a single bastion), and with `own`
    /// those still leased to this replica's name (a restart of this replica).
    /// Rows another replica is taking at the same moment are skipped, not waited on.
    pub async fn take_expired_executions(
        &self,
        owner: &str,
        lease_ms: i64,
        own: bool,
        limit: i64,
    ) -> Result<Vec<String>> {
        let now = db_now(self.backend);
        let lock = if self.backend == Backend::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let own = if own { " OR owner = $1" } else { "" };
        let q = format!(
            "UPDATE executions SET owner = $1, lease_until = {now} + $2 WHERE id IN (\
             SELECT id FROM executions WHERE finished_at IS NULL \
             AND (lease_until IS NULL OR lease_until < {now}{own}) ORDER BY id LIMIT $3{lock}) \
             RETURNING id"
        );
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(owner)
            .bind(lease_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    pub async fn sealed_key(&self, id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT key_sealed FROM sealed_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Stores a sealed key unless one exists under `id`; answers the stored one, so
    /// replicas starting together agree on one key.
    pub async fn insert_sealed_key(&self, id: &str, sealed: &str, now: i64) -> Result<String> {
        sqlx::query(
            "INSERT INTO sealed_keys (id, key_sealed, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(sealed)
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.sealed_key(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("sealed key {id} vanished after insert")))
    }
}

/// How long a replica transaction may idle or wait on a lock before the server
/// ends it (PostgreSQL).
pub const TX_BOUND: &str = "10s";

impl Store {
    async fn bound_tx(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query(
                "SELECT set_config('idle_in_transaction_session_timeout', $1, true), \
                 set_config('lock_timeout', $1, true), set_config('statement_timeout', $1, true)",
            )
            .bind(TX_BOUND)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

/// An event every replica applies (see `replicas::events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaEvent {
    pub seq: i64,
    pub origin: String,
    pub kind: String,
    pub payload: String,
    pub created_at: i64,
}

impl Store {
    /// Records an event for every replica and wakes them (`channel`), in one
    /// transaction: the wake-up is sent only once the event is there to read.
    pub async fn insert_event(
        &self,
        origin: &str,
        kind: &str,
        payload: &str,
        channel: Option<&str>,
    ) -> Result<i64> {
        let mut tx = self.write_tx().await?;
        // Readers look back a fixed window for late commits; a transaction
        // stalled between its insert and its commit (a partition) is ended by
        // the server within this, so it can never commit later than the window.
        self.bound_tx(&mut tx).await?;
        let q = format!(
            "INSERT INTO replica_events (origin, kind, payload, created_at) VALUES ($1, $2, $3, {}) RETURNING seq",
            db_now(self.backend)
        );
        let (seq,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(origin)
            .bind(kind)
            .bind(payload)
            .fetch_one(&mut *tx)
            .await?;
        if let Some(channel) = channel {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(seq.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(seq)
    }

    /// Events recorded after `after_ms` (database clock), oldest first, at most
    /// `limit`; with the database's clock now.
    pub async fn events_since(
        &self,
        after_ms: i64,
        limit: i64,
    ) -> Result<(i64, Vec<ReplicaEvent>)> {
        let now = self.db_now_ms().await?;
        let rows = sqlx::query(
            "SELECT seq, origin, kind, payload, created_at FROM replica_events \
             WHERE created_at > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let events = rows
            .into_iter()
            .map(|r| {
                Ok(ReplicaEvent {
                    seq: r.try_get(0)?,
                    origin: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    payload: r.try_get(3)?,
                    created_at: r.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((now, events))
    }

    /// Forgets events older than `before_ms` (database clock).
    pub async fn prune_events(&self, before_ms: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM replica_events WHERE created_at < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

fn replica_row(r: sqlx::any::AnyRow) -> Result<ReplicaRow> {
    Ok(ReplicaRow {
        name: r.try_get(0)?,
        peer_addr: r.try_get(1)?,
        started_at: r.try_get(2)?,
        heartbeat_at: r.try_get(3)?,
    })
}

fn presence_row(r: sqlx::any::AnyRow) -> Result<PresenceRow> {
    Ok(PresenceRow {
        node_id: r.try_get(0)?,
        replica: r.try_get(1)?,
        conn_id: r.try_get(2)?,
    })
}
