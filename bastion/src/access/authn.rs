//! Who is calling: an API token (`pst_<id>_<secret>`, REST and Kubernetes doors)
//! or a user row found by its SSH key (SSH door) becomes a `Principal` with the
//! user's role bindings, read fresh on every request so a change applies at once.

use super::Denied;
use crate::authz::Principal;
use crate::clock::{now_ms, rfc3339};
use crate::secrets::{parse_token, secret_matches};
use crate::store::{Store, UserRow};

/// API tokens look like `pst_<id>_<secret>`.
pub const TOKEN_PREFIX: &str = "pst";

fn missing() -> Denied {
    Denied::Unauthenticated(
        "missing or invalid API token: send `Authorization: Bearer pst_…` with a token from `POST /api/v1/users/{user}/tokens`"
            .into(),
    )
}

/// The principal of an `Authorization` header's value (`Bearer pst_…`), if any.
pub async fn bearer(store: &Store, header: Option<&str>) -> Result<Principal, Denied> {
    bearer_expiring(store, header).await.map(|(p, _)| p)
}

/// [`bearer`], with when the token expires (ms since the epoch), for what a
/// door holds open on it.
pub async fn bearer_expiring(
    store: &Store,
    header: Option<&str>,
) -> Result<(Principal, i64), Denied> {
    let header = header.ok_or_else(missing)?;
    let token = header.strip_prefix("Bearer ").ok_or_else(missing)?.trim();
    token_principal(store, token).await
}

/// The principal of an API token, and when the token expires.
pub async fn token_principal(store: &Store, token: &str) -> Result<(Principal, i64), Denied> {
    let (id, secret) = parse_token(TOKEN_PREFIX, token).ok_or_else(missing)?;
    let row = store.api_token(id).await?.ok_or_else(missing)?;
    if !secret_matches(secret, &row.secret_hash) {
        return Err(missing());
    }
    if row.revoked_at.is_some() {
        return Err(Denied::Unauthenticated(
            "this API token was revoked; create a new one".into(),
        ));
    }
    if row.expires_at <= now_ms() {
        return Err(Denied::Unauthenticated(format!(
            "this API token expired at {}; create a new one",
            rfc3339(row.expires_at)
        )));
    }
    let user = store.user_by_id(&row.user_id).await?.ok_or_else(missing)?;
    Ok((principal(store, user).await?, row.expires_at))
}

/// The principal of a user, with its role bindings as they are now.
pub async fn principal(store: &Store, user: UserRow) -> Result<Principal, Denied> {
    let bindings = store.bindings(&user.id).await?;
    Ok(Principal {
        user_id: user.id,
        user_name: user.name,
        org_id: user.org_id,
        bindings,
    })
}
