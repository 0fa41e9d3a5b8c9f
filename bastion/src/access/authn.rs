//! Who is calling: a bearer credential (REST and Kubernetes doors) or a user row
//! found by its SSH key or certificate (SSH door) becomes a `Principal` with the
//! user's role bindings, read fresh on every request so a change applies at once.
//!
//! Two bearer credentials exist: a login session (`pss_<id>_<secret>`, from
//! `postern login`: hours, ended by logout, an admin or a lost role) and an API
//! token (`pst_<id>_<secret>`: a bot's, with a mandatory expiry and optional
//! source networks; people's tokens made before sessions keep working until
//! they expire). A disabled user's credentials all stop working.

use std::net::IpAddr;

use super::Denied;
use crate::authz::Principal;
use crate::clock::{now_ms, rfc3339};
use crate::secrets::{parse_token, secret_matches};
use crate::store::{Store, UserRow};

/// API tokens look like `pst_<id>_<secret>`.
pub const TOKEN_PREFIX: &str = "pst";
/// Login sessions look like `pss_<id>_<secret>`.
pub const SESSION_PREFIX: &str = "pss";

/// What a bearer credential was, for what a door holds open on it (a watch,
/// a stream) and cuts when the credential ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The token's or the session's id (the public half).
    pub id: String,
    pub kind: CredentialKind,
    /// Unix ms.
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    ApiToken,
    Session,
}

fn missing() -> Denied {
    Denied::Unauthenticated(
        "missing or invalid credential: log in with `postern login URL` (or send `Authorization: Bearer …` with a session from it, or a bot's API token)"
            .into(),
    )
}

/// The principal of an `Authorization` header's value (`Bearer pss_…` or
/// `Bearer pst_…`) from `source`, and the credential it holds.
pub async fn bearer(
    store: &Store,
    header: Option<&str>,
    source: Option<IpAddr>,
) -> Result<(Principal, Credential), Denied> {
    let header = header.ok_or_else(missing)?;
    let token = header.strip_prefix("Bearer ").ok_or_else(missing)?.trim();
    if token.starts_with(SESSION_PREFIX) {
        session_principal(store, token).await
    } else {
        token_principal(store, token, source).await
    }
}

/// The principal of a login session's token.
pub async fn session_principal(
    store: &Store,
    token: &str,
) -> Result<(Principal, Credential), Denied> {
    let (id, secret) = parse_token(SESSION_PREFIX, token).ok_or_else(missing)?;
    let row = store.session(id).await?.ok_or_else(missing)?;
    if !secret_matches(secret, &row.secret_hash) {
        return Err(missing());
    }
    if row.ended_at.is_some() {
        return Err(Denied::Unauthenticated(format!(
            "your session ended ({}): log in again with postern login",
            row.end_reason.as_deref().unwrap_or("ended")
        )));
    }
    if row.expires_at <= now_ms() {
        return Err(Denied::Unauthenticated(format!(
            "your session expired at {}: log in again with postern login",
            rfc3339(row.expires_at)
        )));
    }
    let user = live_user(store, &row.user_id).await?;
    let credential = Credential {
        id: row.id,
        kind: CredentialKind::Session,
        expires_at: row.expires_at,
    };
    Ok((principal(store, user).await?, credential))
}

/// The principal of a login session named by a client certificate the
/// bastion signed for it (the Kubernetes door's mutual TLS: possession of the
/// key is proven by the handshake, so no secret is compared here).
pub async fn certified_session(
    store: &Store,
    session_id: &str,
) -> Result<(Principal, Credential), Denied> {
    let row = store.session(session_id).await?.ok_or_else(|| {
        Denied::Unauthenticated(
            "your Postern session is unknown: log in again with postern login".into(),
        )
    })?;
    if row.ended_at.is_some() || row.expires_at <= now_ms() {
        return Err(Denied::Unauthenticated(format!(
            "your Postern session {}: log in again with postern login",
            match &row.end_reason {
                Some(r) => format!("ended ({r})"),
                None => "is over".to_string(),
            }
        )));
    }
    let user = live_user(store, &row.user_id).await?;
    let credential = Credential {
        id: row.id,
        kind: CredentialKind::Session,
        expires_at: row.expires_at,
    };
    Ok((principal(store, user).await?, credential))
}

/// The principal of an API token, from `source` (a bot's token may be bound
/// to networks).
pub async fn token_principal(
    store: &Store,
    token: &str,
    source: Option<IpAddr>,
) -> Result<(Principal, Credential), Denied> {
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
    let user = live_user(store, &row.user_id).await?;
    if user.is_bot()
        && let Some(cidrs) = store.bot_source_cidrs(&user.id).await?
        && !source.is_some_and(|ip| cidrs.iter().any(|c| in_cidr(ip, c)))
    {
        return Err(Denied::Unauthenticated(
            "this bot's tokens work only from its source networks; ask a project admin to add this one"
                .into(),
        ));
    }
    let credential = Credential {
        id: row.id,
        kind: CredentialKind::ApiToken,
        expires_at: row.expires_at,
    };
    Ok((principal(store, user).await?, credential))
}

/// The user, unless gone or disabled.
async fn live_user(store: &Store, id: &str) -> Result<UserRow, Denied> {
    let user = store.user_by_id(id).await?.ok_or_else(missing)?;
    if user.disabled_at.is_some() {
        return Err(Denied::Unauthenticated(
            "this user is disabled: ask an org admin".into(),
        ));
    }
    Ok(user)
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

/// `ip` is in `cidr` (`10.0.0.0/8`, `2001:db8::/32`, or one address).
pub fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (net, len) = match cidr.split_once('/') {
        Some((n, l)) => (n, l.parse::<u32>().ok()),
        None => (cidr, None),
    };
    let Ok(net) = net.parse::<IpAddr>() else {
        return false;
    };
    let ip = match (ip, net) {
        (IpAddr::V6(v6), IpAddr::V4(_)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        _ => ip,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = len.unwrap_or(32);
            if len > 32 {
                return false;
            }
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = len.unwrap_or(128);
            if len > 128 {
                return false;
            }
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::in_cidr;

    #[test]
    fn cidrs_match_what_they_cover_and_nothing_else() {
        let ip = |s: &str| s.parse().unwrap();
        assert!(in_cidr(ip("10.1.2.3"), "10.0.0.0/8"));
        assert!(!in_cidr(ip("11.1.2.3"), "10.0.0.0/8"));
        assert!(in_cidr(ip("192.0.2.7"), "192.0.2.7"));
        assert!(!in_cidr(ip("192.0.2.8"), "192.0.2.7"));
        assert!(in_cidr(ip("::ffff:10.0.0.1"), "10.0.0.0/8"));
        assert!(in_cidr(ip("2001:db8::1"), "2001:db8::/32"));
        assert!(!in_cidr(ip("2001:db9::1"), "2001:db8::/32"));
        assert!(in_cidr(ip("8.8.8.8"), "0.0.0.0/0"));
        assert!(!in_cidr(ip("10.0.0.1"), "10.0.0.0/33"));
        assert!(!in_cidr(ip("10.0.0.1"), "garbage"));
    }
}
