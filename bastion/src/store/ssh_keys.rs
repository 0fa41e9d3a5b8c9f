//! Users' SSH public keys, and the lookups the SSH front door needs: a key by its
//! fingerprint, and the nodes of an org that carry a hostname.

use postern_api::admin::NodeState;
use sqlx::Row;

use super::{Backend, Result, Store, StoreError, new_id};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SshKeyRow {
    pub id: String,
    pub user_id: String,
    pub fingerprint: String,
    pub algorithm: String,
    /// `<algorithm> <base64>`, without the comment.
    pub public_key: String,
    pub comment: String,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewSshKey<'a> {
    pub user_id: &'a str,
    pub fingerprint: &'a str,
    pub algorithm: &'a str,
    pub public_key: &'a str,
    pub comment: &'a str,
}

/// A node as the SSH front door sees it: where it lives, by name and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlace {
    pub node_id: String,
    pub hostname: String,
    pub state: NodeState,
    pub edge_id: String,
    pub edge_name: String,
    pub project_id: String,
    pub project_name: String,
}

const KEY_COLS: &str = "id, user_id, fingerprint, algorithm, public_key, comment, created_at";

impl Store {
    /// Adds a key unless the user already has `max` keys; the same key twice for
    /// one user is a conflict. Another user may register the same key: a key is
    /// only ever looked up for the user named at login ([`Store::user_ssh_key`]).
    pub async fn add_ssh_key(&self, k: &NewSshKey<'_>, max: usize, now: i64) -> Result<SshKeyRow> {
        let mut tx = self.write_tx().await?;
        if self.backend == Backend::Postgres {
            // Under READ COMMITTED two adds could both count below the limit; the
            // user's row lock makes them take turns. (SQLite's IMMEDIATE already does.)
            sqlx::query("SELECT id FROM users WHERE id = $1 FOR UPDATE")
                .bind(k.user_id)
                .execute(&mut *tx)
                .await?;
        }
        let count: i64 = sqlx::query("SELECT COUNT(*) FROM ssh_keys WHERE user_id = $1")
            .bind(k.user_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if count >= max as i64 {
            return Err(StoreError::Conflict(format!(
                "a {max}th key for this user (the limit)"
            )));
        }
        let row = SshKeyRow {
            id: new_id(),
            user_id: k.user_id.to_string(),
            fingerprint: k.fingerprint.to_string(),
            algorithm: k.algorithm.to_string(),
            public_key: k.public_key.to_string(),
            comment: k.comment.to_string(),
            created_at: now,
        };
        sqlx::query(
            "INSERT INTO ssh_keys (id, user_id, fingerprint, algorithm, public_key, comment, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&row.id)
        .bind(&row.user_id)
        .bind(&row.fingerprint)
        .bind(&row.algorithm)
        .bind(&row.public_key)
        .bind(&row.comment)
        .bind(row.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::conflict_or(e, format!("SSH key {}", k.fingerprint)))?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn list_ssh_keys(&self, user_id: &str) -> Result<Vec<SshKeyRow>> {
        let q =
            format!("SELECT {KEY_COLS} FROM ssh_keys WHERE user_id = $1 ORDER BY created_at, id");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Deletes one of the user's keys; returns its fingerprint, or `None` when the
    /// user has no such key.
    pub async fn delete_ssh_key(&self, user_id: &str, key_id: &str) -> Result<Option<String>> {
        let fp: Option<(String,)> = sqlx::query_as(
            "DELETE FROM ssh_keys WHERE user_id = $1 AND id = $2 RETURNING fingerprint",
        )
        .bind(user_id)
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(fp.map(|(f,)| f))
    }

    /// The user's key with this fingerprint. The only lookup by key there is: a key
    /// shared by two users authenticates each of them only as themselves.
    pub async fn user_ssh_key(
        &self,
        user_id: &str,
        fingerprint: &str,
    ) -> Result<Option<SshKeyRow>> {
        let q = format!("SELECT {KEY_COLS} FROM ssh_keys WHERE user_id = $1 AND fingerprint = $2");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(user_id)
            .bind(fingerprint)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The users who registered this key (at most `max`): the terminating
    /// mode's login names a node, not a user, so the key must name its owner;
    /// a key two users registered names neither.
    pub async fn ssh_key_owners(&self, fingerprint: &str, max: i64) -> Result<Vec<SshKeyRow>> {
        let q = format!("SELECT {KEY_COLS} FROM ssh_keys WHERE fingerprint = $1 LIMIT $2");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(q.as_str()))
            .bind(fingerprint)
            .bind(max)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Every node of the org with this hostname (one per edge at most).
    pub async fn nodes_named(&self, org_id: &str, hostname: &str) -> Result<Vec<NodePlace>> {
        let rows = sqlx::query(
            "SELECT n.id, n.hostname, n.state, e.id, e.name, p.id, p.name
             FROM nodes n JOIN edges e ON e.id = n.edge_id JOIN projects p ON p.id = e.project_id
             WHERE p.org_id = $1 AND n.hostname = $2
             ORDER BY p.name, e.name",
        )
        .bind(org_id)
        .bind(hostname)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let state: String = r.try_get(2)?;
                Ok(NodePlace {
                    node_id: r.try_get(0)?,
                    hostname: r.try_get(1)?,
                    state: state.parse().map_err(StoreError::Corrupt)?,
                    edge_id: r.try_get(3)?,
                    edge_name: r.try_get(4)?,
                    project_id: r.try_get(5)?,
                    project_name: r.try_get(6)?,
                })
            })
            .collect()
    }
}
