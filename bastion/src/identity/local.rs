//! Signing in with a name and a password, plus a TOTP code (or a recovery
//! code) when the user enrolled one or their org requires it. Guessing is
//! bounded before any hashing: per source and per name in memory
//! (`attempts`), and per user in the store for every replica, where each
//! attempt is reserved before it is checked (five, then a five-minute lock),
//! so parallel requests get no more. A wrong name, a wrong password and a
//! missing password read the same, and so do the limits.

use std::net::IpAddr;

use super::attempts::Attempts;
use super::{IdentityError, password, recovery, totp};
use crate::clock::now_ms;
use crate::pki::Pki;
use crate::store::{Store, UserRow};

/// Failures before a user is locked.
pub const USER_FAILURES: i64 = 5;
/// How long a lock lasts, ms.
pub const USER_LOCK_MS: i64 = 5 * 60_000;

/// What a person typed.
#[derive(Debug)]
pub struct Typed<'a> {
    pub name: &'a str,
    pub password: &'a str,
    /// A TOTP code or a recovery code.
    pub code: Option<&'a str>,
}

/// Who signed in and how.
#[derive(Debug)]
pub struct SignedIn {
    pub user: UserRow,
    /// `password`, `password+totp` or `password+recovery_code`.
    pub method: &'static str,
    pub mfa: bool,
    /// Recovery codes left, when one was used.
    pub recovery_left: Option<i64>,
}

fn wrong() -> IdentityError {
    IdentityError::Refused("wrong name or password".into())
}

/// The second factor is missing: the client asks for it and tries again.
pub use postern_api::identity::NEED_CODE;

/// Too many attempts, for a name or a source: the same words either way, so
/// they tell nobody whether the user exists.
fn too_many() -> IdentityError {
    IdentityError::TooMany(
        "too many failed sign-ins: wait a few minutes and try again, or ask an org admin".into(),
    )
}

pub async fn sign_in(
    store: &Store,
    pki: &Pki,
    attempts: &Attempts,
    typed: Typed<'_>,
    source: IpAddr,
) -> Result<SignedIn, IdentityError> {
    let now = now_ms();
    // Counted before anything costly, refunded on success.
    let attempt = attempts
        .begin(source, Some(typed.name), now)
        .ok_or_else(too_many)?;
    let user = store.user_by_name(typed.name).await?;
    let creds = match &user {
        Some(u) => store.local_credentials(&u.id).await?,
        None => None,
    };
    let (Some(user), Some(creds), Some(hash)) = (
        user,
        creds.clone(),
        creds.as_ref().and_then(|c| c.password_hash.clone()),
    ) else {
        // The same work as a real check, so timing tells no names.
        let _ = password::verify(typed.password, &password::decoy().await).await;
        return Err(wrong());
    };
    // Reserved in the store for every replica before the hash: parallel
    // attempts get at most USER_FAILURES tries per lock.
    if !store
        .reserve_sign_in(&user.id, USER_FAILURES, now + USER_LOCK_MS, now)
        .await?
    {
        return Err(too_many());
    }
    let _ = creds.locked_until;
    if !password::verify(typed.password, &hash).await? {
        return Err(wrong());
    }
    if user.disabled_at.is_some() {
        return Err(IdentityError::Refused(
            "this user is disabled: ask an org admin".into(),
        ));
    }
    if user.is_bot() {
        return Err(IdentityError::Refused(
            "a bot does not sign in: use its API token".into(),
        ));
    }
    let policy = store.org_policy(&user.org_id).await?;
    let Some(sealed) = creds.totp_sealed.as_deref() else {
        if policy.require_mfa {
            return Err(IdentityError::Refused(
                "your org requires MFA and you have no authenticator enrolled: ask an org admin for a new invitation, which enrols one"
                    .into(),
            ));
        }
        store.sign_in_succeeded(&user.id).await?;
        attempt.succeeded();
        return Ok(SignedIn {
            user,
            method: "password",
            mfa: false,
            recovery_left: None,
        });
    };
    let Some(code) = typed.code.map(str::trim).filter(|c| !c.is_empty()) else {
        // The password was right: this was no guess, and the sign-in goes on
        // with the code.
        store.refund_sign_in(&user.id).await?;
        attempt.succeeded();
        return Err(IdentityError::Refused(NEED_CODE.into()));
    };
    let refused = |why: &str| IdentityError::Refused(why.to_string());
    if recovery::looks_like(code) {
        if store
            .use_recovery_code(&user.id, &recovery::hash(code), now)
            .await?
        {
            store.sign_in_succeeded(&user.id).await?;
            attempt.succeeded();
            let left = store.recovery_codes_left(&user.id).await?;
            return Ok(SignedIn {
                user,
                method: "password+recovery_code",
                mfa: true,
                recovery_left: Some(left),
            });
        }
        return Err(refused("that recovery code is wrong or was used already"));
    }
    let secret = pki.open(sealed)?;
    let step = totp::check(&secret, code, (now / 1000).max(0) as u64)?;
    let claimed = match step {
        Some(step) => store.claim_totp_step(&user.id, step as i64).await?,
        None => false,
    };
    if !claimed {
        return Err(refused(if step.is_some() {
            "that TOTP code was used already: wait for the next one"
        } else {
            "wrong TOTP code: check your authenticator app and this machine's clock"
        }));
    }
    store.sign_in_succeeded(&user.id).await?;
    attempt.succeeded();
    Ok(SignedIn {
        user,
        method: "password+totp",
        mfa: true,
        recovery_left: None,
    })
}
