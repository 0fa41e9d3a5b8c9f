//! Login sessions: made at sign-in, hours long (the org sets the maximum, at
//! most a week), held by the CLI as a bearer (`pss_…`), and the root of every
//! short-lived credential. Ending one (logout, an admin, the user disabled, a
//! lost SSO role) is published on the access bus, so every door on every
//! replica cuts what was opened with it.

use serde_json::{Value, json};

use super::IdentityError;
use crate::access::authn::SESSION_PREFIX;
use crate::access::{AccessChange, Change};
use crate::clock::now_ms;
use crate::secrets::{Secret, new_token};
use crate::state::Shared;
use crate::store::{MAX_SESSION_SECONDS, SessionRow, Store, UserRow};

/// A session just made: the bearer is shown once, to the person.
#[derive(Debug)]
pub struct NewSession {
    pub row: SessionRow,
    pub token: Secret,
}

/// Makes a session for `user`, `ttl_seconds` long at most (the org's maximum
/// otherwise, and never more).
pub async fn issue(
    store: &Store,
    user: &UserRow,
    method: &str,
    mfa: bool,
    source: Option<&str>,
    ttl_seconds: Option<i64>,
) -> Result<NewSession, IdentityError> {
    let policy = store.org_policy(&user.org_id).await?;
    let max = policy.session_max_seconds.clamp(60, MAX_SESSION_SECONDS);
    let ttl = ttl_seconds.unwrap_or(max).clamp(60, max);
    let t = new_token(SESSION_PREFIX)?;
    let now = now_ms();
    let row = store
        .insert_session(
            &t.id,
            &user.id,
            &t.hash,
            method,
            mfa,
            source,
            now,
            now + ttl * 1000,
        )
        .await?;
    Ok(NewSession { row, token: t.full })
}

/// Ends a session (once) and cuts what was opened with it, here and on every
/// replica. Answers the doors' reports, or `None` when it had ended already.
pub async fn end(
    shared: &Shared,
    org_id: &str,
    id: &str,
    reason: &str,
) -> Result<Option<Value>, IdentityError> {
    let Some(row) = shared.store.end_session(id, reason, now_ms()).await? else {
        return Ok(None);
    };
    Ok(Some(publish_end(shared, org_id, &row).await))
}

/// Ends every open session of a user; answers how many.
pub async fn end_all(
    shared: &Shared,
    user: &UserRow,
    reason: &str,
) -> Result<usize, IdentityError> {
    let ended = shared
        .store
        .end_user_sessions(&user.id, reason, now_ms())
        .await?;
    for row in &ended {
        publish_end(shared, &user.org_id, row).await;
    }
    Ok(ended.len())
}

async fn publish_end(shared: &Shared, org_id: &str, row: &SessionRow) -> Value {
    let reports = shared
        .access
        .publish(AccessChange {
            org_id: org_id.to_string(),
            user_id: row.user_id.clone(),
            what: Change::SessionEnded {
                session_id: row.id.clone(),
                ssh_fingerprint: row.ssh_fingerprint.clone(),
            },
        })
        .await;
    json!({ "session_id": row.id, "cut": reports })
}
