//! API tokens and enrollment tokens. Only hashes of the secrets are stored; the
//! lookup is by the public id half and the comparison happens in constant time in
//! the caller (`crate::secrets`).

use sqlx::Row;

use super::{Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRow {
    pub id: String,
    pub user_id: String,
    pub secret_hash: String,
    pub name: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentTokenRow {
    pub id: String,
    pub edge_id: String,
    pub secret_hash: String,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_uses: i64,
    pub uses: i64,
    pub auto_approve: bool,
    pub revoked_at: Option<i64>,
}

fn api_token(r: sqlx::any::AnyRow) -> Result<ApiTokenRow> {
    Ok(ApiTokenRow {
        id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        secret_hash: r.try_get(2)?,
        name: r.try_get(3)?,
        created_at: r.try_get(4)?,
        expires_at: r.try_get(5)?,
        revoked_at: r.try_get(6)?,
    })
}

// Dynamic SQL here is assembled only from this constant; hence `AssertSqlSafe`.
const API_TOKEN_COLS: &str = "id, user_id, secret_hash, name, created_at, expires_at, revoked_at";

impl Store {
    pub async fn insert_api_token(&self, row: &ApiTokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, secret_hash, name, created_at, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(&row.id)
        .bind(&row.user_id)
        .bind(&row.secret_hash)
        .bind(&row.name)
        .bind(row.created_at)
        .bind(row.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::conflict_or(e, "token"))?;
        Ok(())
    }

    pub async fn api_token(&self, id: &str) -> Result<Option<ApiTokenRow>> {
        let q = format!("SELECT {API_TOKEN_COLS} FROM api_tokens WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(api_token)
            .transpose()
    }

    pub async fn list_api_tokens(&self, user_id: &str) -> Result<Vec<ApiTokenRow>> {
        let q = format!(
            "SELECT {API_TOKEN_COLS} FROM api_tokens WHERE user_id = $1 ORDER BY created_at, id"
        );
        sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(api_token)
            .collect()
    }

    /// Revokes a token; revoking twice is not an error, revoking an unknown one is.
    pub async fn revoke_api_token(&self, id: &str, now: i64) -> Result<()> {
        let res = sqlx::query(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("token {id:?}")));
        }
        Ok(())
    }

    pub async fn insert_enrollment_token(&self, row: &EnrollmentTokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO enrollment_tokens
               (id, edge_id, secret_hash, created_by, created_at, expires_at, max_uses, uses, auto_approve, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, NULL)",
        )
        .bind(&row.id)
        .bind(&row.edge_id)
        .bind(&row.secret_hash)
        .bind(&row.created_by)
        .bind(row.created_at)
        .bind(row.expires_at)
        .bind(row.max_uses)
        .bind(i64::from(row.auto_approve))
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::conflict_or(e, "enrollment token"))?;
        Ok(())
    }

    pub async fn enrollment_token(&self, id: &str) -> Result<Option<EnrollmentTokenRow>> {
        let row = sqlx::query(
            "SELECT id, edge_id, secret_hash, created_by, created_at, expires_at, max_uses, uses, auto_approve, revoked_at
             FROM enrollment_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let auto: i64 = r.try_get(8)?;
            Ok(EnrollmentTokenRow {
                id: r.try_get(0)?,
                edge_id: r.try_get(1)?,
                secret_hash: r.try_get(2)?,
                created_by: r.try_get(3)?,
                created_at: r.try_get(4)?,
                expires_at: r.try_get(5)?,
                max_uses: r.try_get(6)?,
                uses: r.try_get(7)?,
                auto_approve: auto != 0,
                revoked_at: r.try_get(9)?,
            })
        })
        .transpose()
    }

    pub async fn revoke_enrollment_token(&self, id: &str, now: i64) -> Result<()> {
        let res = sqlx::query(
            "UPDATE enrollment_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("enrollment token {id:?}")));
        }
        Ok(())
    }
}
