//! Who may sign in and how: an org's sign-in policy, local users' passwords
//! and TOTP secrets (hashed or sealed by the caller, never plain here), their
//! recovery codes, invitations, and the login sessions every short-lived
//! credential hangs from. Every "use once" row is claimed by one conditional
//! UPDATE, so two replicas (or two racing requests) never both succeed.

use sqlx::Row;

use super::{Result, Store, StoreError};

/// An org's sign-in rules; [`OrgPolicy::default`] until an admin sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgPolicy {
    pub require_mfa: bool,
    pub session_max_seconds: i64,
    /// The `amr`/`acr` values an SSO sign-in must carry when MFA is required.
    pub sso_mfa_values: Vec<String>,
    /// People's registered SSH keys are refused (bots keep theirs).
    pub refuse_person_keys: bool,
    pub bot_token_max_seconds: i64,
    /// Recordings are deleted this many days after they ended; 0 keeps them.
    pub recording_retention_days: i64,
}

/// Eight hours: a working day.
pub const DEFAULT_SESSION_SECONDS: i64 = 8 * 3600;
/// A week, the longest any org may allow.
pub const MAX_SESSION_SECONDS: i64 = 7 * 24 * 3600;
/// Bots' tokens live at most this long unless the org says otherwise.
pub const DEFAULT_BOT_TOKEN_SECONDS: i64 = 90 * 24 * 3600;

impl Default for OrgPolicy {
    fn default() -> Self {
        OrgPolicy {
            require_mfa: false,
            session_max_seconds: DEFAULT_SESSION_SECONDS,
            sso_mfa_values: Vec::new(),
            refuse_person_keys: false,
            bot_token_max_seconds: DEFAULT_BOT_TOKEN_SECONDS,
            recording_retention_days: 0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalCredentials {
    pub password_hash: Option<String>,
    pub totp_sealed: Option<String>,
    pub totp_last_step: Option<i64>,
    pub failures: i64,
    pub locked_until: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub secret_hash: String,
    pub method: String,
    pub mfa: bool,
    pub source_ip: Option<String>,
    pub ssh_fingerprint: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
}

const SESSION_COLS: &str = "id, user_id, secret_hash, method, mfa, source_ip, ssh_fingerprint, created_at, expires_at, ended_at, end_reason";

fn session(r: sqlx::any::AnyRow) -> Result<SessionRow> {
    Ok(SessionRow {
        id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        secret_hash: r.try_get(2)?,
        method: r.try_get(3)?,
        mfa: r.try_get::<i64, _>(4)? != 0,
        source_ip: r.try_get(5)?,
        ssh_fingerprint: r.try_get(6)?,
        created_at: r.try_get(7)?,
        expires_at: r.try_get(8)?,
        ended_at: r.try_get(9)?,
        end_reason: r.try_get(10)?,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationRow {
    pub id: String,
    pub user_id: String,
    pub secret_hash: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

impl Store {
    // --- org policy --------------------------------------------------------

    pub async fn org_policy(&self, org_id: &str) -> Result<OrgPolicy> {
        let row = sqlx::query(
            "SELECT require_mfa, session_max_seconds, sso_mfa_values, refuse_person_keys, bot_token_max_seconds,
               recording_retention_days
             FROM org_policies WHERE org_id = $1",
        )
        .bind(org_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(OrgPolicy::default());
        };
        let values: String = r.try_get(2)?;
        Ok(OrgPolicy {
            require_mfa: r.try_get::<i64, _>(0)? != 0,
            session_max_seconds: r.try_get(1)?,
            sso_mfa_values: serde_json::from_str(&values)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            refuse_person_keys: r.try_get::<i64, _>(3)? != 0,
            bot_token_max_seconds: r.try_get(4)?,
            recording_retention_days: r.try_get(5)?,
        })
    }

    /// Sets how long the org keeps recordings, leaving its other rules as
    /// they are (or at their defaults, when none were set).
    pub async fn set_recording_retention(&self, org_id: &str, days: i64, now: i64) -> Result<()> {
        let d = OrgPolicy::default();
        sqlx::query(
            "INSERT INTO org_policies (org_id, require_mfa, session_max_seconds, sso_mfa_values, refuse_person_keys, bot_token_max_seconds, recording_retention_days, updated_at)
             VALUES ($1, $2, $3, '[]', $4, $5, $6, $7)
             ON CONFLICT (org_id) DO UPDATE SET recording_retention_days = excluded.recording_retention_days,
               updated_at = excluded.updated_at",
        )
        .bind(org_id)
        .bind(i64::from(d.require_mfa))
        .bind(d.session_max_seconds)
        .bind(i64::from(d.refuse_person_keys))
        .bind(d.bot_token_max_seconds)
        .bind(days)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_org_policy(&self, org_id: &str, p: &OrgPolicy, now: i64) -> Result<()> {
        let values = serde_json::to_string(&p.sso_mfa_values).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "INSERT INTO org_policies (org_id, require_mfa, session_max_seconds, sso_mfa_values, refuse_person_keys, bot_token_max_seconds, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (org_id) DO UPDATE SET require_mfa = excluded.require_mfa,
               session_max_seconds = excluded.session_max_seconds, sso_mfa_values = excluded.sso_mfa_values,
               refuse_person_keys = excluded.refuse_person_keys,
               bot_token_max_seconds = excluded.bot_token_max_seconds, updated_at = excluded.updated_at",
        )
        .bind(org_id)
        .bind(i64::from(p.require_mfa))
        .bind(p.session_max_seconds)
        .bind(values)
        .bind(i64::from(p.refuse_person_keys))
        .bind(p.bot_token_max_seconds)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // --- local credentials -------------------------------------------------

    pub async fn local_credentials(&self, user_id: &str) -> Result<Option<LocalCredentials>> {
        let row = sqlx::query(
            "SELECT password_hash, totp_sealed, totp_last_step, failures, locked_until
             FROM local_credentials WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(LocalCredentials {
                password_hash: r.try_get(0)?,
                totp_sealed: r.try_get(1)?,
                totp_last_step: r.try_get(2)?,
                failures: r.try_get(3)?,
                locked_until: r.try_get(4)?,
            })
        })
        .transpose()
    }

    /// Sets a password and (when given) a TOTP secret, clearing failures and
    /// the last used step: an invitation accepted, or an admin's reset.
    pub async fn set_local_credentials(
        &self,
        user_id: &str,
        password_hash: Option<&str>,
        totp_sealed: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO local_credentials (user_id, password_hash, totp_sealed, totp_last_step, failures, locked_until, updated_at)
             VALUES ($1, $2, $3, NULL, 0, NULL, $4)
             ON CONFLICT (user_id) DO UPDATE SET password_hash = excluded.password_hash,
               totp_sealed = excluded.totp_sealed, totp_last_step = NULL, failures = 0,
               locked_until = NULL, updated_at = excluded.updated_at",
        )
        .bind(user_id)
        .bind(password_hash)
        .bind(totp_sealed)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a user's TOTP secret (an admin's reset); `false` if none was set.
    pub async fn clear_totp(&self, user_id: &str, now: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE local_credentials SET totp_sealed = NULL, totp_last_step = NULL, updated_at = $2
             WHERE user_id = $1 AND totp_sealed IS NOT NULL",
        )
        .bind(user_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Claims a TOTP time step: `true` only for a step later than every one
    /// accepted before, so a code works once.
    pub async fn claim_totp_step(&self, user_id: &str, step: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE local_credentials SET totp_last_step = $2
             WHERE user_id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
        )
        .bind(user_id)
        .bind(step)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives one reserved attempt back (it proved the password), without
    /// lifting a lock.
    pub async fn refund_sign_in(&self, user_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE local_credentials SET failures = failures - 1 WHERE user_id = $1 AND failures > 0",
        )
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn sign_in_succeeded(&self, user_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE local_credentials SET failures = 0, locked_until = NULL WHERE user_id = $1",
        )
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // --- recovery codes ----------------------------------------------------

    pub async fn replace_recovery_codes(&self, user_id: &str, hashes: &[String]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for h in hashes {
            sqlx::query(
                "INSERT INTO recovery_codes (user_id, code_hash, used_at) VALUES ($1, $2, NULL)",
            )
            .bind(user_id)
            .bind(h)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Uses a recovery code: `true` once, for a code that was never used.
    pub async fn use_recovery_code(&self, user_id: &str, hash: &str, now: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE recovery_codes SET used_at = $3 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
        )
        .bind(user_id)
        .bind(hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn recovery_codes_left(&self, user_id: &str) -> Result<i64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?)
    }

    // --- invitations ---------------------------------------------------------

    pub async fn insert_invitation(
        &self,
        id: &str,
        user_id: &str,
        secret_hash: &str,
        created_by: Option<&str>,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        // A new invitation replaces what was still open for the user.
        sqlx::query("UPDATE invitations SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL")
            .bind(user_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO invitations (id, user_id, secret_hash, created_by, created_at, expires_at, used_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(id)
        .bind(user_id)
        .bind(secret_hash)
        .bind(created_by)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn invitation(&self, id: &str) -> Result<Option<InvitationRow>> {
        let row = sqlx::query(
            "SELECT id, user_id, secret_hash, expires_at, used_at FROM invitations WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(InvitationRow {
                id: r.try_get(0)?,
                user_id: r.try_get(1)?,
                secret_hash: r.try_get(2)?,
                expires_at: r.try_get(3)?,
                used_at: r.try_get(4)?,
            })
        })
        .transpose()
    }

    /// Claims an invitation once, while it is valid.
    pub async fn claim_invitation(&self, id: &str, now: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE invitations SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    // --- login sessions ------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    pub async fn insert_session(
        &self,
        id: &str,
        user_id: &str,
        secret_hash: &str,
        method: &str,
        mfa: bool,
        source_ip: Option<&str>,
        now: i64,
        expires_at: i64,
    ) -> Result<SessionRow> {
        sqlx::query(
            "INSERT INTO login_sessions (id, user_id, secret_hash, method, mfa, source_ip, ssh_fingerprint, created_at, expires_at, ended_at, end_reason)
             VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8, NULL, NULL)",
        )
        .bind(id)
        .bind(user_id)
        .bind(secret_hash)
        .bind(method)
        .bind(i64::from(mfa))
        .bind(source_ip)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(SessionRow {
            id: id.into(),
            user_id: user_id.into(),
            secret_hash: secret_hash.into(),
            method: method.into(),
            mfa,
            source_ip: source_ip.map(str::to_string),
            ssh_fingerprint: None,
            created_at: now,
            expires_at,
            ended_at: None,
            end_reason: None,
        })
    }

    pub async fn session(&self, id: &str) -> Result<Option<SessionRow>> {
        let q = format!("SELECT {SESSION_COLS} FROM login_sessions WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(session)
            .transpose()
    }

    /// A user's sessions that have not ended or expired, newest first.
    pub async fn open_sessions(&self, user_id: &str, now: i64) -> Result<Vec<SessionRow>> {
        let q = format!(
            "SELECT {SESSION_COLS} FROM login_sessions
             WHERE user_id = $1 AND ended_at IS NULL AND expires_at > $2 ORDER BY created_at DESC LIMIT 1000"
        );
        sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
            .bind(user_id)
            .bind(now)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(session)
            .collect()
    }

    /// The open session of `user_id` that certified the SSH key `fingerprint`.
    pub async fn session_by_ssh_key(
        &self,
        user_id: &str,
        fingerprint: &str,
        now: i64,
    ) -> Result<Option<SessionRow>> {
        let q = format!(
            "SELECT {SESSION_COLS} FROM login_sessions
             WHERE user_id = $1 AND ssh_fingerprint = $2 AND ended_at IS NULL AND expires_at > $3 LIMIT 1"
        );
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(user_id)
            .bind(fingerprint)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?
            .map(session)
            .transpose()
    }

    /// The open session that certified this key, whoever's it is.
    pub async fn session_by_fingerprint(
        &self,
        fingerprint: &str,
        now: i64,
    ) -> Result<Option<SessionRow>> {
        let q = format!(
            "SELECT {SESSION_COLS} FROM login_sessions
             WHERE ssh_fingerprint = $1 AND ended_at IS NULL AND expires_at > $2 LIMIT 1"
        );
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(fingerprint)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?
            .map(session)
            .transpose()
    }

    /// Records the SSH key certified for a session (one per session: a second
    /// certificate must be for the same key).
    pub async fn set_session_ssh_key(&self, id: &str, fingerprint: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE login_sessions SET ssh_fingerprint = $2
             WHERE id = $1 AND ended_at IS NULL AND (ssh_fingerprint IS NULL OR ssh_fingerprint = $2)",
        )
        .bind(id)
        .bind(fingerprint)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Ends one session; answers it when this call ended it (not before).
    pub async fn end_session(
        &self,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<SessionRow>> {
        let r = sqlx::query(
            "UPDATE login_sessions SET ended_at = $2, end_reason = $3 WHERE id = $1 AND ended_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        self.session(id).await
    }

    /// Ends every session of a user that has not ended (expired ones too:
    /// a disabled user enabled again must not find one alive); answers those
    /// it ended. Every one, however many: a page at a time until none is left.
    pub async fn end_user_sessions(
        &self,
        user_id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Vec<SessionRow>> {
        let q = format!(
            "SELECT {SESSION_COLS} FROM login_sessions WHERE user_id = $1 AND ended_at IS NULL LIMIT 500"
        );
        let mut ended = Vec::new();
        loop {
            let open: Vec<SessionRow> = sqlx::query(sqlx::AssertSqlSafe(q.as_str()))
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(session)
                .collect::<Result<_>>()?;
            if open.is_empty() {
                return Ok(ended);
            }
            for s in open {
                if let Some(s) = self.end_session(&s.id, reason, now).await? {
                    ended.push(s);
                }
            }
        }
    }

    /// Reserves one sign-in attempt for a user before any hashing: counts it
    /// as a failure now (a success refunds it, [`Store::sign_in_succeeded`]),
    /// and answers `false` while the user is locked. The `threshold`th
    /// reservation locks the user until `lock_until`; a lock that has run out
    /// starts the count again. One statement, so parallel attempts (on any
    /// replica) get at most `threshold` tries per lock.
    pub async fn reserve_sign_in(
        &self,
        user_id: &str,
        threshold: i64,
        lock_until: i64,
        now: i64,
    ) -> Result<bool> {
        sqlx::query(
            "INSERT INTO local_credentials (user_id, failures, updated_at) VALUES ($1, 0, $2)
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let r = sqlx::query(
            "UPDATE local_credentials SET
               failures = CASE WHEN locked_until IS NOT NULL AND locked_until <= $4 THEN 1 ELSE failures + 1 END,
               locked_until = CASE
                 WHEN locked_until IS NOT NULL AND locked_until <= $4 THEN NULL
                 WHEN failures + 1 >= $2 THEN $3
                 ELSE locked_until END
             WHERE user_id = $1 AND (locked_until IS NULL OR locked_until <= $4)",
        )
        .bind(user_id)
        .bind(threshold)
        .bind(lock_until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
