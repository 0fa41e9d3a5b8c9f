//! Single sign-on: an org's OpenID providers (client secrets sealed by the
//! caller), which provider subject is which user, the group → role mappings,
//! the role bindings a sign-in grants (recomputed at every sign-in, never
//! touching what an admin granted by hand), and sign-ins under way (an SSO
//! round trip, a headless device code), each finished once.

use postern_api::admin::Role;
use sqlx::Row;

use super::{BindingRow, Result, Store, StoreError, new_id};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProviderRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret_sealed: String,
    pub redirect_url: String,
    pub scopes: Vec<String>,
    pub groups_claim: String,
    pub allowed_domains: Vec<String>,
    pub created_at: i64,
}

const PROVIDER_COLS: &str = "id, org_id, name, issuer, client_id, client_secret_sealed, scopes, groups_claim, allowed_domains, created_at, redirect_url";

fn json_list(s: &str) -> Result<Vec<String>> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn provider(r: sqlx::any::AnyRow) -> Result<OidcProviderRow> {
    Ok(OidcProviderRow {
        id: r.try_get(0)?,
        org_id: r.try_get(1)?,
        name: r.try_get(2)?,
        issuer: r.try_get(3)?,
        client_id: r.try_get(4)?,
        client_secret_sealed: r.try_get(5)?,
        scopes: json_list(&r.try_get::<String, _>(6)?)?,
        groups_claim: r.try_get(7)?,
        allowed_domains: json_list(&r.try_get::<String, _>(8)?)?,
        created_at: r.try_get(9)?,
        redirect_url: r.try_get(10)?,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMappingRow {
    pub id: String,
    pub org_id: String,
    pub group: String,
    pub binding: BindingRow,
}

/// A sign-in under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    pub id: String,
    /// `sso` (a browser round trip) or `device` (a headless code).
    pub kind: String,
    pub org_id: Option<String>,
    pub provider_id: Option<String>,
    /// What the bastion keeps for the round trip, sealed (nonce, PKCE verifier,
    /// where to send the CLI back).
    pub sealed: String,
    pub expires_at: i64,
    pub finished_at: Option<i64>,
    /// The session it made, sealed, for a device code's poller to collect.
    pub session_sealed: Option<String>,
    /// The hash of the secret that collects it.
    pub poll_hash: Option<String>,
}

const PENDING_COLS: &str =
    "id, kind, org_id, provider_id, sealed, expires_at, finished_at, session_sealed, poll_hash";

fn pending(r: sqlx::any::AnyRow) -> Result<PendingLogin> {
    Ok(PendingLogin {
        id: r.try_get(0)?,
        kind: r.try_get(1)?,
        org_id: r.try_get(2)?,
        provider_id: r.try_get(3)?,
        sealed: r.try_get(4)?,
        expires_at: r.try_get(5)?,
        finished_at: r.try_get(6)?,
        session_sealed: r.try_get(7)?,
        poll_hash: r.try_get(8)?,
    })
}

impl Store {
    // --- providers -------------------------------------------------------

    pub async fn put_oidc_provider(&self, p: &OidcProviderRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO oidc_providers (id, org_id, name, issuer, client_id, client_secret_sealed, scopes, groups_claim, allowed_domains, created_at, redirect_url)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (org_id, name) DO UPDATE SET issuer = excluded.issuer, client_id = excluded.client_id,
               client_secret_sealed = excluded.client_secret_sealed, scopes = excluded.scopes,
               redirect_url = excluded.redirect_url,
               groups_claim = excluded.groups_claim, allowed_domains = excluded.allowed_domains",
        )
        .bind(&p.id)
        .bind(&p.org_id)
        .bind(&p.name)
        .bind(&p.issuer)
        .bind(&p.client_id)
        .bind(&p.client_secret_sealed)
        .bind(serde_json::to_string(&p.scopes).unwrap_or_default())
        .bind(&p.groups_claim)
        .bind(serde_json::to_string(&p.allowed_domains).unwrap_or_default())
        .bind(p.created_at)
        .bind(&p.redirect_url)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn oidc_provider(&self, org_id: &str, name: &str) -> Result<Option<OidcProviderRow>> {
        let q =
            format!("SELECT {PROVIDER_COLS} FROM oidc_providers WHERE org_id = $1 AND name = $2");
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(org_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(provider)
            .transpose()
    }

    pub async fn oidc_provider_by_id(&self, id: &str) -> Result<Option<OidcProviderRow>> {
        let q = format!("SELECT {PROVIDER_COLS} FROM oidc_providers WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(provider)
            .transpose()
    }

    pub async fn list_oidc_providers(&self, org_id: &str) -> Result<Vec<OidcProviderRow>> {
        let q =
            format!("SELECT {PROVIDER_COLS} FROM oidc_providers WHERE org_id = $1 ORDER BY name");
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(org_id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(provider)
            .collect()
    }

    pub async fn delete_oidc_provider(&self, org_id: &str, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM oidc_providers WHERE org_id = $1 AND name = $2")
            .bind(org_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    // --- subjects ----------------------------------------------------------

    pub async fn sso_user(&self, provider_id: &str, subject: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT user_id FROM sso_identities WHERE provider_id = $1 AND subject = $2",
        )
        .bind(provider_id)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.0))
    }

    pub async fn link_sso_user(
        &self,
        provider_id: &str,
        subject: &str,
        user_id: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO sso_identities (provider_id, subject, user_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(provider_id)
        .bind(subject)
        .bind(user_id)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::conflict_or(e, "SSO identity"))?;
        Ok(())
    }

    // --- group mappings ------------------------------------------------------

    pub async fn put_group_mapping(
        &self,
        org_id: &str,
        provider_id: &str,
        group: &str,
        b: &BindingRow,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO group_mappings (id, org_id, group_name, scope, role, logins, kube_groups, created_at, provider_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (provider_id, group_name, scope) DO UPDATE SET role = excluded.role,
               logins = excluded.logins, kube_groups = excluded.kube_groups",
        )
        .bind(new_id())
        .bind(org_id)
        .bind(group)
        .bind(b.project_id.as_deref().unwrap_or(""))
        .bind(b.role.as_str())
        .bind(serde_json::to_string(&b.logins).unwrap_or_default())
        .bind(b.kube_groups.as_ref().map(|g| serde_json::to_string(g).unwrap_or_default()))
        .bind(now)
        .bind(provider_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_group_mapping(
        &self,
        org_id: &str,
        group: &str,
        scope: Option<&str>,
    ) -> Result<bool> {
        let r = sqlx::query(
            "DELETE FROM group_mappings WHERE org_id = $1 AND group_name = $2 AND scope = $3",
        )
        .bind(org_id)
        .bind(group)
        .bind(scope.unwrap_or(""))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// One provider's group mappings.
    pub async fn group_mappings(&self, provider_id: &str) -> Result<Vec<GroupMappingRow>> {
        let rows = sqlx::query(
            "SELECT id, org_id, group_name, scope, role, logins, kube_groups FROM group_mappings
             WHERE provider_id = $1 ORDER BY group_name, scope",
        )
        .bind(provider_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let scope: String = r.try_get(3)?;
                let role: String = r.try_get(4)?;
                let kube: Option<String> = r.try_get(6)?;
                Ok(GroupMappingRow {
                    id: r.try_get(0)?,
                    org_id: r.try_get(1)?,
                    group: r.try_get(2)?,
                    binding: BindingRow {
                        project_id: (!scope.is_empty()).then_some(scope),
                        role: role.parse().map_err(StoreError::Corrupt)?,
                        logins: json_list(&r.try_get::<String, _>(5)?)?,
                        forward_to: Vec::new(),
                        kube_groups: kube.map(|k| json_list(&k)).transpose()?,
                    },
                })
            })
            .collect()
    }

    /// Replaces the bindings a sign-in granted `user_id` with `granted` (one
    /// per scope), leaving every scope an admin granted by hand as it is.
    /// Answers the scopes whose SSO binding was removed or changed (`None`:
    /// org-wide), whose live access must be cut.
    pub async fn replace_sso_bindings(
        &self,
        user_id: &str,
        granted: &[BindingRow],
        now: i64,
    ) -> Result<Vec<Option<String>>> {
        let before: Vec<BindingRow> = self.bindings_from(user_id, "sso").await?;
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM role_bindings WHERE user_id = $1 AND source = 'sso'")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for b in granted {
            // A scope an admin granted by hand stays theirs.
            sqlx::query(
                "INSERT INTO role_bindings (user_id, scope, role, logins, forward_to, kube_groups, created_at, source)
                 VALUES ($1, $2, $3, $4, '[]', $5, $6, 'sso')
                 ON CONFLICT (user_id, scope) DO NOTHING",
            )
            .bind(user_id)
            .bind(b.project_id.as_deref().unwrap_or(""))
            .bind(b.role.as_str())
            .bind(serde_json::to_string(&b.logins).unwrap_or_default())
            .bind(b.kube_groups.as_ref().map(|g| serde_json::to_string(g).unwrap_or_default()))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let changed = before
            .into_iter()
            .filter(|old| !granted.contains(old))
            .map(|old| old.project_id)
            .collect();
        Ok(changed)
    }

    /// A user's bindings from one source (`manual` or `sso`).
    pub async fn bindings_from(&self, user_id: &str, source: &str) -> Result<Vec<BindingRow>> {
        let all = self.bindings(user_id).await?;
        let scopes: Vec<(String,)> =
            sqlx::query_as("SELECT scope FROM role_bindings WHERE user_id = $1 AND source = $2")
                .bind(user_id)
                .bind(source)
                .fetch_all(&self.pool)
                .await?;
        Ok(all
            .into_iter()
            .filter(|b| {
                let scope = b.project_id.as_deref().unwrap_or("");
                scopes.iter().any(|(s,)| s == scope)
            })
            .collect())
    }

    // --- sign-ins under way ------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    pub async fn insert_pending_login(
        &self,
        kind: &str,
        org_id: Option<&str>,
        provider_id: Option<&str>,
        state_hash: Option<&str>,
        user_code: Option<&str>,
        poll_hash: Option<&str>,
        sealed: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<String> {
        let id = new_id();
        sqlx::query(
            "INSERT INTO pending_logins (id, kind, org_id, provider_id, state_hash, user_code, poll_hash, sealed, created_at, expires_at, finished_at, session_sealed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL)",
        )
        .bind(&id)
        .bind(kind)
        .bind(org_id)
        .bind(provider_id)
        .bind(state_hash)
        .bind(user_code)
        .bind(poll_hash)
        .bind(sealed)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::conflict_or(e, "sign-in"))?;
        // Old rows go as new ones come: the table holds minutes of sign-ins.
        sqlx::query("DELETE FROM pending_logins WHERE expires_at < $1")
            .bind(now - 3_600_000)
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    /// Sign-ins under way for a provider (or, with `None`, anonymous ones in
    /// all), for a cap on what strangers can make the store hold.
    pub async fn pending_logins_open(&self, provider_id: &str, now: i64) -> Result<i64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) FROM pending_logins WHERE provider_id = $1 AND finished_at IS NULL AND expires_at > $2",
        )
        .bind(provider_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?)
    }

    /// Whether the user came from single sign-on (linked to a provider).
    pub async fn is_sso_user(&self, user_id: &str) -> Result<bool> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT provider_id FROM sso_identities WHERE user_id = $1 LIMIT 1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    /// Claims the SSO round trip of a `state` once, while it is valid.
    pub async fn claim_pending_by_state(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<PendingLogin>> {
        let r = sqlx::query(
            "UPDATE pending_logins SET finished_at = $2
             WHERE state_hash = $1 AND finished_at IS NULL AND expires_at > $2",
        )
        .bind(state_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        let q = format!("SELECT {PENDING_COLS} FROM pending_logins WHERE state_hash = $1");
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(state_hash)
            .fetch_optional(&self.pool)
            .await?
            .map(pending)
            .transpose()
    }

    pub async fn pending_by_user_code(&self, user_code: &str) -> Result<Option<PendingLogin>> {
        let q = format!("SELECT {PENDING_COLS} FROM pending_logins WHERE user_code = $1");
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(user_code)
            .fetch_optional(&self.pool)
            .await?
            .map(pending)
            .transpose()
    }

    pub async fn pending_by_id(&self, id: &str) -> Result<Option<PendingLogin>> {
        let q = format!("SELECT {PENDING_COLS} FROM pending_logins WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(pending)
            .transpose()
    }

    /// A device code's sign-in finished: the session waits, sealed, for its
    /// poller. Once only, while the code is valid.
    pub async fn finish_device_login(
        &self,
        id: &str,
        session_sealed: &str,
        now: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE pending_logins SET finished_at = $2, session_sealed = $3
             WHERE id = $1 AND kind = 'device' AND finished_at IS NULL AND expires_at > $2",
        )
        .bind(id)
        .bind(now)
        .bind(session_sealed)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// An SSO round trip for the CLI finished: its session waits, sealed, for
    /// the CLI to collect with the one-time secret whose hash is `poll_hash`.
    pub async fn finish_sso_login(
        &self,
        id: &str,
        poll_hash: &str,
        session_sealed: &str,
        now: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE pending_logins SET poll_hash = $2, session_sealed = $3, expires_at = $4
             WHERE id = $1 AND kind = 'sso' AND session_sealed IS NULL",
        )
        .bind(id)
        .bind(poll_hash)
        .bind(session_sealed)
        .bind(now + 120_000)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The poller collects a device code's session once: the row keeps no
    /// session after this.
    pub async fn collect_device_login(&self, id: &str) -> Result<Option<String>> {
        let Some(p) = self.pending_by_id(id).await? else {
            return Ok(None);
        };
        let Some(sealed) = p.session_sealed else {
            return Ok(None);
        };
        if p.expires_at <= crate::clock::now_ms() {
            return Ok(None);
        }
        let r = sqlx::query(
            "UPDATE pending_logins SET session_sealed = NULL, expires_at = 0 WHERE id = $1 AND session_sealed IS NOT NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok((r.rows_affected() == 1).then_some(sealed))
    }
}

/// The strongest of two roles (org admin first).
pub fn stronger(a: Role, b: Role) -> Role {
    let rank = |r: Role| Role::ALL.iter().position(|x| *x == r).unwrap_or(usize::MAX);
    if rank(a) <= rank(b) { a } else { b }
}
