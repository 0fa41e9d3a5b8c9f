//! Nodes: enrollment (consuming a token use and creating the node in one
//! transaction), lifecycle changes and listings, and the labels their agents
//! report, which become a node's only through an approval.

use postern_api::admin::NodeState;
use sqlx::Row;

use postern_api::labels::Labels;

use super::{Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: String,
    pub edge_id: String,
    pub hostname: String,
    pub state: NodeState,
    pub created_at: i64,
    pub approved_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub agent_version: Option<String>,
    pub cert_serial: Option<String>,
    pub cert_expires_at: Option<i64>,
    /// The keys its agent learned from Kubernetes: `NodeKubeKeys` JSON, and when it
    /// last changed (see `store/kube_keys.rs`).
    pub kube_keys: Option<String>,
    pub kube_keys_at: Option<i64>,
    /// Its agent's labels (`--label`) as an approval took them, and those a
    /// project admin set.
    pub agent_labels: Labels,
    pub labels: Labels,
    /// Labels the agent reports that differ from `agent_labels`, waiting for a
    /// project admin's approval.
    pub agent_labels_pending: Option<Labels>,
    /// The node's first label report is still to come, and an auto-approving
    /// token covers it (see `report_agent_labels`).
    pub agent_labels_open: bool,
    /// Its agent says it can forward to a Kubernetes API server: only a claim.
    pub kube_gateway_capable: bool,
    /// A project admin granted it the edge's Kubernetes gateway role.
    pub kube_gateway_granted: bool,
}

/// A node granted its edge's Kubernetes gateway role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeGatewayRow {
    pub id: String,
    pub hostname: String,
    /// Whether its agent said it runs with `--kube-apiserver`.
    pub capable: bool,
}

impl NodeRow {
    /// The labels selectors match: the agent's, with the admin's winning on a key.
    pub fn effective_labels(&self) -> Labels {
        let mut all = self.agent_labels.clone();
        all.extend(self.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    }
}

/// A stored label set; one that cannot be read counts as none (with a warning)
/// rather than failing every listing of its edge.
fn labels_column(node_id: &str, text: &str) -> Labels {
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(node = node_id, error = %e, "unreadable labels in the store; ignoring them");
        Labels::new()
    })
}

fn labels_json(l: &Labels) -> String {
    serde_json::to_string(l).unwrap_or_else(|_| "{}".into())
}

/// What became of the labels a node's agent reported (see
/// [`Store::report_agent_labels`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelReport {
    /// Taken as the node's agent labels: the first report of a node an
    /// auto-approving token let in (the token is that approval).
    Taken,
    /// Other labels than those approved, now held for a project admin's
    /// approval (a change held before is replaced by this one).
    Held,
    /// The labels approved: a change that was held is dropped.
    Withdrawn,
    /// Nothing to record: the approved labels, or the change held already.
    Unchanged,
}

/// What came of a project admin's approval (see [`Store::approve_node`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    Done,
    /// The agent reports other labels than those the approver sent (or the
    /// node is gone): nothing was changed.
    LabelsDiffer,
    /// The node left the state the approval was for (it was approved,
    /// disabled or deleted meanwhile): nothing was changed.
    Moved,
}

#[derive(Debug, Clone)]
pub struct NewNode<'a> {
    pub id: &'a str,
    pub token_id: &'a str,
    pub edge_id: &'a str,
    pub hostname: &'a str,
    pub agent_version: &'a str,
    pub auto_approve: bool,
    pub cert_serial: &'a str,
    pub cert_expires_at: i64,
}

/// Why an enrollment was refused by the store. Every variant leaves no node record
/// and does not consume a token use.
// One per enrollment, never stored or queued: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollOutcome {
    Enrolled(NodeRow),
    /// Expired, revoked or used up between the caller's check and the update.
    TokenExhausted,
    HostnameTaken,
}

// Dynamic SQL in this module is assembled only from these constants and
// numbered placeholders, never from input; hence `AssertSqlSafe`.
const NODE_COLS: &str = "id, edge_id, hostname, state, created_at, approved_at, last_seen_at, agent_version, cert_serial, cert_expires_at,kube_keys, kube_keys_at, agent_labels, labels, agent_labels_pending, kube_gateway, kube_gateway_granted, agent_labels_open";

fn node(r: sqlx::any::AnyRow) -> Result<NodeRow> {
    let state: String = r.try_get(3)?;
    let id: String = r.try_get(0)?;
    let agent_labels: String = r.try_get(12)?;
    let labels: String = r.try_get(13)?;
    let pending: Option<String> = r.try_get(14)?;
    let capable: i64 = r.try_get(15)?;
    let granted: i64 = r.try_get(16)?;
    let open: i64 = r.try_get(17)?;
    Ok(NodeRow {
        agent_labels_open: open != 0,
        kube_gateway_capable: capable != 0,
        kube_gateway_granted: granted != 0,
        agent_labels_pending: pending.map(|p| labels_column(&id, &p)),
        agent_labels: labels_column(&id, &agent_labels),
        labels: labels_column(&id, &labels),
        id,
        edge_id: r.try_get(1)?,
        hostname: r.try_get(2)?,
        state: state.parse().map_err(StoreError::Corrupt)?,
        created_at: r.try_get(4)?,
        approved_at: r.try_get(5)?,
        last_seen_at: r.try_get(6)?,
        agent_version: r.try_get(7)?,
        cert_serial: r.try_get(8)?,
        cert_expires_at: r.try_get(9)?,
        kube_keys: r.try_get(10)?,
        kube_keys_at: r.try_get(11)?,
    })
}

impl Store {
    /// Consumes one use of the token and creates the node, atomically: a refusal
    /// (token exhausted, hostname taken) leaves the store exactly as it was.
    pub async fn enroll_node(&self, n: &NewNode<'_>, now: i64) -> Result<EnrollOutcome> {
        let mut tx = self.write_tx().await?;
        let used = sqlx::query(
            "UPDATE enrollment_tokens SET uses = uses + 1
             WHERE id = $1 AND uses < max_uses AND expires_at > $2 AND revoked_at IS NULL",
        )
        .bind(n.token_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(EnrollOutcome::TokenExhausted);
        }
        let state = if n.auto_approve {
            NodeState::Approved
        } else {
            NodeState::Pending
        };
        let approved_at = n.auto_approve.then_some(now);
        // An auto-approving token approves the node before it has said
        // anything: its first labels report is what the token covers.
        let inserted = sqlx::query(
            "INSERT INTO nodes (id, edge_id, hostname, state, created_at, approved_at, last_seen_at, agent_version, cert_serial, cert_expires_at, agent_labels_open)
             VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8, $9, $10)",
        )
        .bind(n.id)
        .bind(n.edge_id)
        .bind(n.hostname)
        .bind(state.as_str())
        .bind(now)
        .bind(approved_at)
        .bind(n.agent_version)
        .bind(n.cert_serial)
        .bind(n.cert_expires_at)
        .bind(i64::from(n.auto_approve))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) => {
                tx.rollback().await?;
                return match StoreError::conflict_or(e, "node") {
                    StoreError::Conflict(_) => Ok(EnrollOutcome::HostnameTaken),
                    other => Err(other),
                };
            }
        }
        tx.commit().await?;
        Ok(EnrollOutcome::Enrolled(NodeRow {
            agent_labels: Labels::new(),
            labels: Labels::new(),
            agent_labels_pending: None,
            agent_labels_open: n.auto_approve,
            id: n.id.to_string(),
            edge_id: n.edge_id.to_string(),
            hostname: n.hostname.to_string(),
            state,
            created_at: now,
            approved_at,
            last_seen_at: None,
            agent_version: Some(n.agent_version.to_string()),
            cert_serial: Some(n.cert_serial.to_string()),
            cert_expires_at: Some(n.cert_expires_at),
            kube_keys: None,
            kube_keys_at: None,
            kube_gateway_capable: false,
            kube_gateway_granted: false,
        }))
    }

    pub async fn node(&self, id: &str) -> Result<Option<NodeRow>> {
        let q = format!("SELECT {NODE_COLS} FROM nodes WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(node)
            .transpose()
    }

    pub async fn node_by_hostname(&self, edge_id: &str, hostname: &str) -> Result<Option<NodeRow>> {
        let q = format!("SELECT {NODE_COLS} FROM nodes WHERE edge_id = $1 AND hostname = $2");
        sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(edge_id)
            .bind(hostname)
            .fetch_optional(&self.pool)
            .await?
            .map(node)
            .transpose()
    }

    pub async fn list_nodes(&self, edge_id: &str) -> Result<Vec<NodeRow>> {
        let q = format!("SELECT {NODE_COLS} FROM nodes WHERE edge_id = $1 ORDER BY hostname");
        sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(edge_id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(node)
            .collect()
    }

    /// The edge's nodes of these hostnames (those that exist), in no order:
    /// a command to a few named nodes of a 10,000-node edge reads those rows,
    /// not the edge's every row. Asked in chunks, so no statement carries
    /// more parameters than either database takes.
    pub async fn nodes_by_hostnames(
        &self,
        edge_id: &str,
        hostnames: &[&str],
    ) -> Result<Vec<NodeRow>> {
        let mut out = Vec::with_capacity(hostnames.len());
        for chunk in hostnames.chunks(256) {
            let q = format!(
                "SELECT {NODE_COLS} FROM nodes WHERE edge_id = $1 AND hostname IN ({})",
                super::placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str())).bind(edge_id);
            for h in chunk {
                query = query.bind(*h);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push(node(row)?);
            }
        }
        Ok(out)
    }

    /// One page of an edge's nodes by hostname, those whose hostname contains
    /// `search` (ASCII case ignored) when given, and how many match in all:
    /// the console's page of an edge of 10,000 nodes reads 50 rows, not all.
    pub async fn page_nodes(
        &self,
        edge_id: &str,
        search: &str,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<NodeRow>)> {
        // `%`, `_` and `\` in the search are themselves, not wildcards.
        let pattern = format!(
            "%{}%",
            search
                .to_ascii_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let filter = "edge_id = $1 AND LOWER(hostname) LIKE $2 ESCAPE '\\'";
        let (total,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM nodes WHERE {filter}"
        )))
        .bind(edge_id)
        .bind(&pattern)
        .fetch_one(&self.pool)
        .await?;
        let q = format!(
            "SELECT {NODE_COLS} FROM nodes WHERE {filter} ORDER BY hostname LIMIT $3 OFFSET $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(edge_id)
            .bind(&pattern)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(node)
            .collect::<Result<Vec<_>>>()?;
        Ok((total, rows))
    }

    pub async fn set_node_state(&self, id: &str, state: NodeState, now: i64) -> Result<()> {
        let approved_at =
            matches!(state, NodeState::Approved | NodeState::Provisioned).then_some(now);
        let res = sqlx::query(
            "UPDATE nodes SET state = $2, approved_at = COALESCE(approved_at, $3) WHERE id = $1",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(approved_at)
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("node {id:?}")));
        }
        Ok(())
    }

    /// Marks an approved node provisioned once its agent has connected.
    pub async fn mark_provisioned(&self, id: &str) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE nodes SET state = 'provisioned' WHERE id = $1 AND state = 'approved'",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() > 0)
    }

    pub async fn delete_node(&self, id: &str) -> Result<()> {
        let res = sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("node {id:?}")));
        }
        Ok(())
    }

    pub async fn record_cert(&self, id: &str, serial: &str, expires_at: i64) -> Result<()> {
        sqlx::query("UPDATE nodes SET cert_serial = $2, cert_expires_at = $3 WHERE id = $1")
            .bind(id)
            .bind(serial)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records when nodes were last seen, in one statement per batch so that
    /// thousands of connected agents cost a handful of writes per flush.
    pub async fn touch_nodes(&self, ids: &[String], now: i64) -> Result<()> {
        for chunk in ids.chunks(500) {
            let q = format!(
                "UPDATE nodes SET last_seen_at = $1 WHERE id IN ({})",
                super::placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.as_str())).bind(now);
            for id in chunk {
                query = query.bind(id);
            }
            // The writing connection: a write elsewhere would empty its cache.
            query.execute(&self.writes).await?;
        }
        Ok(())
    }

    pub async fn set_agent_version(&self, id: &str, version: &str) -> Result<()> {
        sqlx::query("UPDATE nodes SET agent_version = $2 WHERE id = $1")
            .bind(id)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the labels the node's agent reported. They become the node's
    /// only through an approval: the first report of a node an auto-approving
    /// token let in is taken; any other that differs from the approved labels
    /// is held for a project admin, whatever the node's state (pending,
    /// approved, provisioned, or enabled again). Each step is one statement
    /// that checks what it relies on, so an approval racing with a report
    /// never takes labels nobody saw.
    pub async fn report_agent_labels(&self, id: &str, reported: &Labels) -> Result<LabelReport> {
        let json = labels_json(reported);
        let taken = sqlx::query(
            "UPDATE nodes SET agent_labels = $2, agent_labels_pending = NULL, agent_labels_open = 0
             WHERE id = $1 AND agent_labels_open = 1",
        )
        .bind(id)
        .bind(&json)
        .execute(&self.pool)
        .await?;
        if taken.rows_affected() > 0 {
            return Ok(LabelReport::Taken);
        }
        let withdrawn = sqlx::query(
            "UPDATE nodes SET agent_labels_pending = NULL
             WHERE id = $1 AND agent_labels = $2 AND agent_labels_pending IS NOT NULL",
        )
        .bind(id)
        .bind(&json)
        .execute(&self.pool)
        .await?;
        if withdrawn.rows_affected() > 0 {
            return Ok(LabelReport::Withdrawn);
        }
        let held = sqlx::query(
            "UPDATE nodes SET agent_labels_pending = $2
             WHERE id = $1 AND agent_labels <> $2
               AND (agent_labels_pending IS NULL OR agent_labels_pending <> $2)",
        )
        .bind(id)
        .bind(&json)
        .execute(&self.pool)
        .await?;
        Ok(if held.rows_affected() > 0 {
            LabelReport::Held
        } else {
            LabelReport::Unchanged
        })
    }

    /// A project admin's approval, in one transaction: the node moves from
    /// `from` to `to` (when given), and the agent's labels `seen` (when given)
    /// become its agent labels, but only if they are what the agent reports
    /// now (the change held, or the approved labels when nothing is held).
    /// Labels are compared as stored: the canonical JSON of a sorted map.
    pub async fn approve_node(
        &self,
        id: &str,
        from: NodeState,
        to: Option<NodeState>,
        seen: Option<&Labels>,
        now: i64,
    ) -> Result<Approval> {
        let mut tx = self.write_tx().await?;
        if let Some(to) = to {
            let moved = sqlx::query(
                "UPDATE nodes SET state = $2, approved_at = COALESCE(approved_at, $3)
                 WHERE id = $1 AND state = $4",
            )
            .bind(id)
            .bind(to.as_str())
            .bind(now)
            .bind(from.as_str())
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(Approval::Moved);
            }
        }
        if let Some(seen) = seen {
            let taken = sqlx::query(
                "UPDATE nodes SET agent_labels = $2, agent_labels_pending = NULL, agent_labels_open = 0
                 WHERE id = $1
                   AND (agent_labels_pending = $2 OR (agent_labels_pending IS NULL AND agent_labels = $2))",
            )
            .bind(id)
            .bind(labels_json(seen))
            .execute(&mut *tx)
            .await?;
            if taken.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(Approval::LabelsDiffer);
            }
        }
        tx.commit().await?;
        Ok(Approval::Done)
    }

    /// Replaces the labels a project admin set on the node.
    pub async fn set_node_labels(&self, id: &str, labels: &Labels) -> Result<bool> {
        let r = sqlx::query("UPDATE nodes SET labels = $2 WHERE id = $1")
            .bind(id)
            .bind(labels_json(labels))
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Records whether the node's agent says it can be a Kubernetes gateway
    /// (`--kube-apiserver`); answers whether that changed. Only a claim: see
    /// [`Store::kube_gateways`].
    pub async fn set_kube_gateway_capable(&self, id: &str, capable: bool) -> Result<bool> {
        let r =
            sqlx::query("UPDATE nodes SET kube_gateway = $2 WHERE id = $1 AND kube_gateway <> $2")
                .bind(id)
                .bind(i64::from(capable))
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Grants (or takes back) the node its edge's Kubernetes gateway role: a
    /// project admin's decision, never an agent's. Answers whether it changed.
    pub async fn set_kube_gateway_granted(&self, id: &str, granted: bool) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE nodes SET kube_gateway_granted = $2 WHERE id = $1 AND kube_gateway_granted <> $2",
        )
        .bind(id)
        .bind(i64::from(granted))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// The approved nodes of an edge a project admin granted the Kubernetes
    /// gateway role, each with whether its agent said it can serve, in a fixed
    /// order (by hostname). What an agent says alone never lists a node here.
    pub async fn kube_gateways(&self, edge_id: &str) -> Result<Vec<KubeGatewayRow>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT id, hostname, kube_gateway FROM nodes \
             WHERE edge_id = $1 AND kube_gateway_granted = 1 AND state IN ('approved', 'provisioned') \
             ORDER BY hostname, id LIMIT 64",
        )
        .bind(edge_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, hostname, capable)| KubeGatewayRow {
                id,
                hostname,
                capable: capable != 0,
            })
            .collect())
    }

    pub async fn count_nodes(&self) -> Result<i64> {
        let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM nodes")
            .fetch_one(&self.pool)
            .await?;
        Ok(n.0)
    }
}
