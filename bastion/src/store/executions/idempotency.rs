//! Idempotency-Key claims: a key is held per user of an org, under a lease the
//! submitting request renews, and bound to its execution in the execution's
//! own transaction, so a retry never runs a command twice.

use sqlx::Row;

use super::super::{Result, Store};

/// How long an Idempotency-Key claim holds without renewal (on the database's
/// clock): the request that made it renews it while it submits, so only a
/// claim whose request is gone (the client went, the replica died) runs out.
pub const CLAIM_LEASE_MS: i64 = 30_000;

/// An Idempotency-Key as it is held: per user of an org.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKey<'a> {
    pub org_id: &'a str,
    pub username: &'a str,
    pub key: &'a str,
}

/// What claiming an Idempotency-Key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is this request's now.
    Claimed,
    /// An earlier request holds it: its hash and its execution.
    Held {
        request_sha256: String,
        exec_id: String,
    },
}

impl Store {
    /// Claims `key` for this user's request (hash `sha`) and execution, unless
    /// another request holds it: one whose execution exists (for `ttl_ms` from
    /// its claim), or one still being submitted, whose lease (`lease_ms` on the
    /// database's clock, renewed by [`Store::renew_idempotency_claim`]) has not
    /// run out, however old it is. A claim whose lease ran out without an
    /// execution is taken over; its request then finds, when it inserts its
    /// execution, that the claim is no longer its own, and runs nothing.
    pub async fn claim_idempotency_key(
        &self,
        k: &IdempotencyKey<'_>,
        sha: &str,
        exec_id: &str,
        now: i64,
        ttl_ms: i64,
        lease_ms: i64,
    ) -> Result<IdempotencyClaim> {
        let (org_id, username, key) = (k.org_id, k.username, k.key);
        let db_now = crate::store::replicas::db_now(self.backend);
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(now - ttl_ms)
            .execute(&mut *tx)
            .await?;
        // A claim whose request is gone (the submit failed and could not give
        // the key back, or its replica died) is taken over once its lease has
        // run out. The lease is the row's own column, not the age of the
        // claim: a request that waits (for the audit chain, say) keeps its
        // claim, and a bound claim (lease NULL) is never taken. On PostgreSQL
        // a binding in progress holds the row, and this statement, after
        // waiting for it, checks the bound row again and leaves it.
        let q = format!(
            "DELETE FROM idempotency_keys WHERE org_id = $1 AND username = $2 AND idem_key = $3
               AND lease_until IS NOT NULL AND lease_until < {db_now}
               AND NOT EXISTS (SELECT 1 FROM executions WHERE executions.id = idempotency_keys.exec_id)"
        );
        sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(org_id)
            .bind(username)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        let q = format!(
            "INSERT INTO idempotency_keys (org_id, username, idem_key, request_sha256, exec_id, created_at, lease_until)
             VALUES ($1, $2, $3, $4, $5, $6, {db_now} + $7) ON CONFLICT DO NOTHING"
        );
        let r = sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(org_id)
            .bind(username)
            .bind(key)
            .bind(sha)
            .bind(exec_id)
            .bind(now)
            .bind(lease_ms)
            .execute(&mut *tx)
            .await?;
        let claim = if r.rows_affected() > 0 {
            IdempotencyClaim::Claimed
        } else {
            let row = sqlx::query(
                "SELECT request_sha256, exec_id FROM idempotency_keys WHERE org_id = $1 AND username = $2 AND idem_key = $3",
            )
            .bind(org_id)
            .bind(username)
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
            IdempotencyClaim::Held {
                request_sha256: row.try_get(0)?,
                exec_id: row.try_get(1)?,
            }
        };
        tx.commit().await?;
        Ok(claim)
    }

    /// Renews the lease of this request's claim for `lease_ms` from now (on the
    /// database's clock). Answers whether the claim is still this request's
    /// (bound to its execution or not); `false`: another request took it over.
    pub async fn renew_idempotency_claim(
        &self,
        k: &IdempotencyKey<'_>,
        exec_id: &str,
        lease_ms: i64,
    ) -> Result<bool> {
        // A bound claim keeps its NULL: it is held for good already.
        let q = format!(
            "UPDATE idempotency_keys
                SET lease_until = CASE WHEN lease_until IS NULL THEN NULL ELSE {} + $5 END
              WHERE org_id = $1 AND username = $2 AND idem_key = $3 AND exec_id = $4",
            crate::store::replicas::db_now(self.backend)
        );
        let r = sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(k.org_id)
            .bind(k.username)
            .bind(k.key)
            .bind(exec_id)
            .bind(lease_ms)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Gives up a claim whose execution was never created (the submit failed);
    /// a claim bound to its execution stays.
    pub async fn release_idempotency_key(
        &self,
        k: &IdempotencyKey<'_>,
        exec_id: &str,
    ) -> Result<()> {
        let (org_id, username, key) = (k.org_id, k.username, k.key);
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE org_id = $1 AND username = $2 AND idem_key = $3 AND exec_id = $4
               AND lease_until IS NOT NULL",
        )
        .bind(org_id)
        .bind(username)
        .bind(key)
        .bind(exec_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
