//! The keys a node's agent learned from its Kubernetes Node object, as the bastion
//! last heard them: one JSON column on the node, replaced only when it differs, so
//! the caller audits real changes and nothing else (a bastion restart, or a channel
//! moving to another replica, re-reads the same set and changes nothing).

use sqlx::Row;

use super::{Backend, Result, Store, StoreError};

/// What [`Store::set_node_kube_keys`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeKeysChange {
    /// The stored set was the same; nothing was written.
    Unchanged,
    /// Replaced; the previous JSON (`None` when the node had never reported).
    Changed { previous: Option<String> },
}

impl Store {
    /// Stores `json` as the node's keys from Kubernetes unless it is what is stored
    /// (`None`: the agent no longer reads Kubernetes; the column is cleared).
    /// Read and write are one transaction (the node's row locked on PostgreSQL), so
    /// two replicas reporting at once cannot both see the old set and audit twice.
    pub async fn set_node_kube_keys(
        &self,
        node_id: &str,
        json: Option<&str>,
        now: i64,
    ) -> Result<KubeKeysChange> {
        let mut tx = self.write_tx().await?;
        let select = match self.backend {
            Backend::Postgres => "SELECT kube_keys FROM nodes WHERE id = $1 FOR UPDATE",
            Backend::Sqlite => "SELECT kube_keys FROM nodes WHERE id = $1",
        };
        let row = sqlx::query(select)
            .bind(node_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("node {node_id:?}")))?;
        let previous: Option<String> = row.try_get(0)?;
        if previous.as_deref() == json {
            tx.rollback().await?;
            return Ok(KubeKeysChange::Unchanged);
        }
        sqlx::query("UPDATE nodes SET kube_keys = $2, kube_keys_at = $3 WHERE id = $1")
            .bind(node_id)
            .bind(json)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(KubeKeysChange::Changed { previous })
    }
}
