//! Orgs, projects, edges, users and their role bindings.

use postern_api::admin::Role;
use sqlx::Row;

use super::{Result, Store, StoreError, new_id};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRow {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ProjectRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EdgeRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub created_at: i64,
    /// `person` or `bot` (see [`UserRow::is_bot`]).
    pub kind: String,
    pub disabled_at: Option<i64>,
    pub email: Option<String>,
}

impl UserRow {
    pub fn is_bot(&self) -> bool {
        self.kind == "bot"
    }
}

const USER_COLS: &str = "id, org_id, name, created_at, kind, disabled_at, email";

/// A role held by a user: org-wide when `project_id` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRow {
    pub project_id: Option<String>,
    pub role: Role,
    pub logins: Vec<String>,
    /// `host:port` destinations for `ssh -L`; empty: no forwarding.
    pub forward_to: Vec<String>,
    /// Kubernetes groups granted on the project's clusters; `None`: the role's
    /// default (`postern:<role>`).
    pub kube_groups: Option<Vec<String>>,
}

impl Store {
    pub async fn create_org(&self, name: &str, now: i64) -> Result<OrgRow> {
        let id = new_id();
        sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::conflict_or(e, format!("org {name:?}")))?;
        Ok(OrgRow {
            id,
            name: name.to_string(),
        })
    }

    pub async fn org_by_name(&self, name: &str) -> Result<Option<OrgRow>> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT id, name FROM orgs WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(id, name)| OrgRow { id, name }))
    }

    pub async fn org_by_id(&self, id: &str) -> Result<Option<OrgRow>> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT id, name FROM orgs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(id, name)| OrgRow { id, name }))
    }

    /// The name of the org `id`, for answers that show it; empty when the
    /// org is gone (a user's org outlives every request that names it).
    pub async fn org_name(&self, id: &str) -> Result<String> {
        Ok(self
            .org_by_id(id)
            .await?
            .map(|o| o.name)
            .unwrap_or_default())
    }

    pub async fn create_project(&self, org_id: &str, name: &str, now: i64) -> Result<ProjectRow> {
        let id = new_id();
        sqlx::query("INSERT INTO projects (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&id)
            .bind(org_id)
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::conflict_or(e, format!("project {name:?}")))?;
        Ok(ProjectRow {
            id,
            org_id: org_id.to_string(),
            name: name.to_string(),
            created_at: now,
        })
    }

    pub async fn project_by_name(&self, org_id: &str, name: &str) -> Result<Option<ProjectRow>> {
        let row: Option<ProjectRow> = sqlx::query_as(
            "SELECT id, org_id, name, created_at FROM projects WHERE org_id = $1 AND name = $2",
        )
        .bind(org_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    pub async fn list_projects(&self, org_id: &str) -> Result<Vec<ProjectRow>> {
        let rows: Vec<ProjectRow> = sqlx::query_as(
            "SELECT id, org_id, name, created_at FROM projects WHERE org_id = $1 ORDER BY name",
        )
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    pub async fn create_edge(&self, project_id: &str, name: &str, now: i64) -> Result<EdgeRow> {
        let id = new_id();
        sqlx::query("INSERT INTO edges (id, project_id, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&id)
            .bind(project_id)
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::conflict_or(e, format!("edge {name:?}")))?;
        Ok(EdgeRow {
            id,
            project_id: project_id.to_string(),
            name: name.to_string(),
            created_at: now,
        })
    }

    pub async fn edge_by_name(&self, project_id: &str, name: &str) -> Result<Option<EdgeRow>> {
        let row: Option<EdgeRow> = sqlx::query_as("SELECT id, project_id, name, created_at FROM edges WHERE project_id = $1 AND name = $2")
        .bind(project_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    pub async fn list_edges(&self, project_id: &str) -> Result<Vec<EdgeRow>> {
        let rows: Vec<EdgeRow> = sqlx::query_as("SELECT id, project_id, name, created_at FROM edges WHERE project_id = $1 ORDER BY name")
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    pub async fn create_user(&self, org_id: &str, name: &str, now: i64) -> Result<UserRow> {
        let id = new_id();
        sqlx::query("INSERT INTO users (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&id)
            .bind(org_id)
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::conflict_or(e, format!("user {name:?}")))?;
        Ok(UserRow {
            id,
            org_id: org_id.to_string(),
            name: name.to_string(),
            created_at: now,
            kind: "person".into(),
            disabled_at: None,
            email: None,
        })
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRow>> {
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>> {
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    pub async fn list_users(&self, org_id: &str) -> Result<Vec<UserRow>> {
        let rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users WHERE org_id = $1 ORDER BY name"
        )))
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Makes a user a bot (a project's service account) with the networks its
    /// tokens work from (`None`: any).
    pub async fn make_bot(&self, user_id: &str, source_cidrs: Option<&[String]>) -> Result<()> {
        sqlx::query("UPDATE users SET kind = 'bot', source_cidrs = $2 WHERE id = $1")
            .bind(user_id)
            .bind(source_cidrs.map(|c| serde_json::to_string(c).unwrap_or_else(|_| "[]".into())))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The networks a bot's tokens work from; `None`: any.
    pub async fn bot_source_cidrs(&self, user_id: &str) -> Result<Option<Vec<String>>> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT source_cidrs FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        match row.and_then(|r| r.0) {
            Some(t) => Ok(Some(
                serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            )),
            None => Ok(None),
        }
    }

    /// Disables (`Some(now)`) or enables (`None`) a user; `false` when none.
    pub async fn set_user_disabled(&self, user_id: &str, at: Option<i64>) -> Result<bool> {
        let r = sqlx::query("UPDATE users SET disabled_at = $2 WHERE id = $1")
            .bind(user_id)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn set_user_email(&self, user_id: &str, email: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE users SET email = $2 WHERE id = $1")
            .bind(user_id)
            .bind(email)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_user(&self, user_id: &str) -> Result<()> {
        let res = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound("user".into()));
        }
        Ok(())
    }

    /// Sets (replaces) the user's role in one scope.
    pub async fn set_binding(&self, user_id: &str, binding: &BindingRow, now: i64) -> Result<()> {
        let scope = binding.project_id.clone().unwrap_or_default();
        let logins = serde_json::to_string(&binding.logins)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let forward_to = serde_json::to_string(&binding.forward_to)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let kube_groups = match &binding.kube_groups {
            Some(g) => {
                Some(serde_json::to_string(g).map_err(|e| StoreError::Corrupt(e.to_string()))?)
            }
            None => None,
        };
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM role_bindings WHERE user_id = $1 AND scope = $2")
            .bind(user_id)
            .bind(&scope)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO role_bindings (user_id, scope, role, logins, created_at, forward_to, kube_groups) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(user_id)
            .bind(&scope)
            .bind(binding.role.as_str())
            .bind(&logins)
            .bind(now)
            .bind(&forward_to)
            .bind(kube_groups)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_binding(&self, user_id: &str, project_id: Option<&str>) -> Result<bool> {
        let res = sqlx::query("DELETE FROM role_bindings WHERE user_id = $1 AND scope = $2")
            .bind(user_id)
            .bind(project_id.unwrap_or(""))
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    pub async fn bindings(&self, user_id: &str) -> Result<Vec<BindingRow>> {
        let rows = sqlx::query(
            "SELECT scope, role, logins, forward_to, kube_groups FROM role_bindings WHERE user_id = $1 ORDER BY scope",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let scope: String = r.try_get(0)?;
                let role: String = r.try_get(1)?;
                let logins: String = r.try_get(2)?;
                let forward_to: String = r.try_get(3)?;
                let kube_groups: Option<String> = r.try_get(4)?;
                Ok(BindingRow {
                    project_id: (!scope.is_empty()).then_some(scope),
                    role: role.parse().map_err(StoreError::Corrupt)?,
                    logins: serde_json::from_str(&logins)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    forward_to: serde_json::from_str(&forward_to)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    kube_groups: match kube_groups {
                        Some(g) => Some(
                            serde_json::from_str(&g)
                                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        ),
                        None => None,
                    },
                })
            })
            .collect()
    }

    /// Project id to name within an org, for rendering role bindings.
    pub async fn project_by_id(&self, id: &str) -> Result<Option<ProjectRow>> {
        let row: Option<ProjectRow> =
            sqlx::query_as("SELECT id, org_id, name, created_at FROM projects WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row)
    }
}

impl Store {
    pub async fn edge_by_id(&self, id: &str) -> Result<Option<EdgeRow>> {
        let row: Option<EdgeRow> =
            sqlx::query_as("SELECT id, project_id, name, created_at FROM edges WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row)
    }
}
