//! Signing in and what comes of it, over REST: a local user's sign-in
//! (password, TOTP or recovery code) makes a login session; the session gets
//! an OpenSSH certificate; sign-out, an admin's "end their sessions",
//! disabling a user and resetting their MFA each end sessions on every door.
//! Invitations are how a local user sets their password and enrols TOTP, so
//! no admin ever sees a person's secret. Each step is audited with its
//! method, outcome and reason.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use postern_api::identity::{
    self as dto, AcceptInvitation, CertifyKey, CreateInvitation, INVITATION_PREFIX,
    InvitationAccepted, InvitationCreated, Login, SessionCreated, SessionInfo, SshCertificate,
};
use postern_api::{ErrorBody, validate};
use serde_json::json;

use super::admin::require;
use super::extract::{Anonymous, ApiJson, ApiPath, Caller, OptionalApiJson};
use super::users::{may_manage_tokens_of, resolve_user};
use super::{ApiError, AppState};
use crate::access::authn::CredentialKind;
use crate::access::{AccessChange, Change};
use crate::authz::Action;
use crate::clock::{now_ms, rfc3339};
use crate::identity::{IdentityError, local, password, recovery, sessions, totp};
use crate::secrets::{new_token, parse_token, secret_matches};
use crate::store::{OrgPolicy, SessionRow, UserRow};

fn bounded(what: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.len() > max {
        return Err(ApiError::BadRequest(format!(
            "{what} is longer than {max} bytes"
        )));
    }
    Ok(())
}

/// The public key a client sent, parsed; a clear error otherwise.
fn public_key(text: &str) -> Result<ssh_key::PublicKey, ApiError> {
    bounded("ssh_public_key", text, dto::MAX_PUBLIC_KEY)?;
    ssh_key::PublicKey::from_openssh(text.trim()).map_err(|_| {
        ApiError::BadRequest(
            "ssh_public_key is not an OpenSSH public key (`ssh-ed25519 AAAA…`)".into(),
        )
    })
}

/// Certifies `key` for `session` (until it ends), recording the key on the
/// session: one key per session.
async fn certify(
    state: &AppState,
    user: &UserRow,
    session: &SessionRow,
    key: &ssh_key::PublicKey,
) -> Result<String, ApiError> {
    let fingerprint = key.fingerprint(ssh_key::HashAlg::Sha256).to_string();
    if !state
        .store
        .set_session_ssh_key(&session.id, &fingerprint)
        .await?
    {
        return Err(ApiError::Conflict(
            "this session certified another key already: log in again to certify a new one".into(),
        ));
    }
    let now = (now_ms() / 1000) as u64;
    let cert = state.pki.user_ca().certify(
        key,
        &user.name,
        &session.id,
        now,
        (session.expires_at / 1000) as u64,
    )?;
    cert.to_openssh()
        .map_err(|e| ApiError::Internal(format!("cannot encode the certificate: {e}")))
}

/// Signs a local user in.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body = Login,
    responses(
        (status = 201, description = "Signed in; the session's bearer is shown only now", body = SessionCreated),
        (status = 400, description = "Malformed JSON, an unknown field, or a bad public key", body = ErrorBody),
        (status = 401, description = "Wrong name or password, a wrong or used code, or a code is required", body = ErrorBody),
        (status = 429, description = "Too many failed sign-ins from this source or for this user; wait", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
    ),
)]
pub async fn login(
    State(state): State<AppState>,
    anon: Anonymous,
    ApiJson(body): ApiJson<Login>,
) -> Result<(StatusCode, Json<SessionCreated>), ApiError> {
    anon.audit.with(|a| {
        a.actor = Some(validate::peer_line(&body.name, 64));
    });
    bounded("name", &body.name, 64)?;
    bounded("password", &body.password, dto::MAX_FIELD)?;
    if let Some(c) = &body.code {
        bounded("code", c, 64)?;
    }
    let key = body.ssh_public_key.as_deref().map(public_key).transpose()?;
    let typed = local::Typed {
        name: &body.name,
        password: &body.password,
        code: body.code.as_deref(),
    };
    let signed = match local::sign_in(
        &state.store,
        &state.pki,
        &state.sign_in_attempts,
        typed,
        anon.source_or_local(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            let reason = e.to_string();
            // A refusal for a real user shows in their org's log.
            let org = match state.store.user_by_name(&body.name).await {
                Ok(Some(u)) => Some(u.org_id),
                _ => None,
            };
            anon.audit.with(|a| {
                a.org_id = org;
                a.detail = Some(json!({ "method": "password", "reason": reason }));
            });
            return Err(e.into());
        }
    };
    let user = signed.user;
    let source = anon.source.map(|s| s.to_string());
    let new = sessions::issue(
        &state.store,
        &user,
        signed.method,
        signed.mfa,
        source.as_deref(),
        body.ttl_seconds,
    )
    .await?;
    let ssh_certificate = match &key {
        Some(k) => Some(certify(&state, &user, &new.row, k).await?),
        None => None,
    };
    let org = state
        .store
        .org_by_id(&user.org_id)
        .await?
        .map(|o| o.name)
        .unwrap_or_default();
    anon.audit.with(|a| {
        a.actor = Some(user.name.clone());
        a.org_id = Some(user.org_id.clone());
        a.detail = Some(json!({
            "method": signed.method, "mfa": signed.mfa, "session_id": new.row.id,
            "expires_at": rfc3339(new.row.expires_at),
            "ssh_certificate": key.as_ref().map(|k| k.fingerprint(ssh_key::HashAlg::Sha256).to_string()),
            "recovery_codes_left": signed.recovery_left,
        }));
    });
    Ok((
        StatusCode::CREATED,
        Json(SessionCreated {
            id: new.row.id.clone(),
            token: new.token.expose().to_string(),
            user: user.name,
            org,
            method: signed.method.to_string(),
            mfa: signed.mfa,
            expires_at: rfc3339(new.row.expires_at),
            ssh_certificate,
            recovery_codes_left: signed.recovery_left,
        }),
    ))
}

/// The session of a call, or a clear refusal for an API token.
async fn own_session(state: &AppState, caller: &Caller) -> Result<SessionRow, ApiError> {
    if caller.credential.kind != CredentialKind::Session {
        return Err(ApiError::BadRequest(
            "this call needs a login session (postern login), not an API token".into(),
        ));
    }
    state
        .store
        .session(&caller.credential.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("your session is gone: log in again".into()))
}

/// Ends the caller's session everywhere.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    responses(
        (status = 204, description = "Ended: what it opened (SSH sessions, watches, streams) is cut"),
        (status = 400, description = "Called with an API token, not a session", body = ErrorBody),
        (status = 401, description = "No valid session", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn logout(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    let session = own_session(&state, &caller).await?;
    let cut = sessions::end(&state, &caller.principal.org_id, &session.id, "logout").await?;
    caller
        .audit
        .with(|a| a.detail = Some(json!({ "session_id": session.id, "cut": cut })));
    Ok(StatusCode::NO_CONTENT)
}

/// Certifies an SSH public key for the caller's session.
#[utoipa::path(
    post,
    path = "/api/v1/auth/ssh-certificate",
    tag = "auth",
    request_body = CertifyKey,
    responses(
        (status = 200, description = "An OpenSSH user certificate valid until the session ends", body = SshCertificate),
        (status = 400, description = "Not an OpenSSH public key, or called with an API token", body = ErrorBody),
        (status = 401, description = "No valid session", body = ErrorBody),
        (status = 409, description = "The session certified another key", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn ssh_certificate(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CertifyKey>,
) -> Result<Json<SshCertificate>, ApiError> {
    let key = public_key(&body.public_key)?;
    let session = own_session(&state, &caller).await?;
    let user = state
        .store
        .user_by_id(&caller.principal.user_id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("your user is gone".into()))?;
    let certificate = certify(&state, &user, &session, &key).await?;
    caller.audit.with(|a| {
        a.detail = Some(json!({
            "session_id": session.id,
            "fingerprint": key.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
            "valid_before": rfc3339(session.expires_at),
        }))
    });
    Ok(Json(SshCertificate {
        certificate,
        principal: user.name,
        valid_before: rfc3339(session.expires_at),
    }))
}

/// How long a Kubernetes client certificate lives at most: kubectl asks for
/// a new one (through `postern kube credentials`) when it runs out.
const KUBE_CERT_MS: i64 = 3_600_000;

/// Signs a client certificate for the Kubernetes door, for the caller's
/// session: an hour at most, never past the session's end.
#[utoipa::path(
    post,
    path = "/api/v1/auth/kube-certificate",
    tag = "auth",
    request_body = dto::KubeCsr,
    responses(
        (status = 200, description = "A client certificate naming the session", body = dto::KubeCertificate),
        (status = 400, description = "Malformed JSON, not a CSR, or called with an API token", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn kube_certificate(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<dto::KubeCsr>,
) -> Result<Json<dto::KubeCertificate>, ApiError> {
    bounded("csr", &body.csr, dto::MAX_CSR)?;
    let session = own_session(&state, &caller).await?;
    let not_after = session.expires_at.min(now_ms() + KUBE_CERT_MS);
    let issued = state
        .pki
        .sign_user_csr(&body.csr, &session.id, not_after)
        .map_err(|e| {
            ApiError::BadRequest(format!("{e}: send a PEM certificate signing request"))
        })?;
    caller.audit.with(|a| {
        a.detail = Some(json!({
            "session_id": session.id, "serial": issued.serial, "expires_at": rfc3339(not_after),
        }))
    });
    Ok(Json(dto::KubeCertificate {
        certificate: issued.cert_pem,
        expires_at: rfc3339(not_after),
    }))
}

/// Makes a one-time invitation with which a local user sets their password
/// and enrols TOTP (replacing any open one).
#[utoipa::path(
    post,
    path = "/api/v1/users/{user}/invitation",
    tag = "auth",
    params(("user" = String, Path, description = "User name")),
    request_body = CreateInvitation,
    responses(
        (status = 201, description = "Created; the invitation is shown only now", body = InvitationCreated),
        (status = 400, description = "A bot, or an out-of-range ttl", body = ErrorBody),
        (status = 403, description = "Only an org_admin may invite", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_invitation(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    OptionalApiJson(body): OptionalApiJson<CreateInvitation>,
) -> Result<(StatusCode, Json<InvitationCreated>), ApiError> {
    require(&caller, Action::ManageOrg)?;
    let user = resolve_user(&state, &caller, &name).await?;
    if user.is_bot() {
        return Err(ApiError::BadRequest(
            "a bot does not sign in: give it an API token instead".into(),
        ));
    }
    let ttl = validate::range(
        "ttl_seconds",
        body.ttl_seconds.unwrap_or(86_400),
        300,
        7 * 86_400,
    )?;
    let t = new_token(INVITATION_PREFIX)?;
    let now = now_ms();
    let expires_at = now + ttl * 1000;
    state
        .store
        .insert_invitation(
            &t.id,
            &user.id,
            &t.hash,
            Some(&caller.principal.user_name),
            now,
            expires_at,
        )
        .await?;
    caller
        .audit
        .with(|a| a.detail = Some(json!({ "invitation_id": t.id, "ttl_seconds": ttl })));
    Ok((
        StatusCode::CREATED,
        Json(InvitationCreated {
            accept_command: format!(
                "postern invitation accept BASTION_URL (and paste {})",
                t.full.expose()
            ),
            invitation: t.full.expose().to_string(),
            expires_at: rfc3339(expires_at),
        }),
    ))
}

fn invitation_refused() -> ApiError {
    ApiError::Unauthorized(
        "this invitation is not valid: it was used, replaced or has expired; ask an org admin for a new one"
            .into(),
    )
}

/// Accepts an invitation: sets the password and (with a secret the user's
/// authenticator holds, proven by a code) TOTP; answers recovery codes once.
#[utoipa::path(
    post,
    path = "/api/v1/auth/invitation",
    tag = "auth",
    request_body = AcceptInvitation,
    responses(
        (status = 200, description = "Accepted: sign in with postern login", body = InvitationAccepted),
        (status = 400, description = "A weak password, a bad TOTP secret or code, or MFA required by the org", body = ErrorBody),
        (status = 401, description = "The invitation is not valid", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this source", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
    ),
)]
pub async fn accept_invitation(
    State(state): State<AppState>,
    anon: Anonymous,
    ApiJson(body): ApiJson<AcceptInvitation>,
) -> Result<Json<InvitationAccepted>, ApiError> {
    let now = now_ms();
    let source = anon.source_or_local();
    // Counted now, given back when it succeeds: a guesser gets the share of
    // one source, however many requests it sends at once.
    let attempt = state
        .sign_in_attempts
        .begin(source, None, now)
        .ok_or_else(|| {
            IdentityError::TooMany(
                "too many failed attempts from your address: wait a minute and try again".into(),
            )
        })?;
    bounded("invitation", &body.invitation, 200)?;
    bounded("password", &body.password, dto::MAX_FIELD)?;
    let fail = invitation_refused;
    let (id, secret) = parse_token(INVITATION_PREFIX, body.invitation.trim()).ok_or_else(fail)?;
    let inv = state.store.invitation(id).await?.ok_or_else(fail)?;
    if !secret_matches(secret, &inv.secret_hash) || inv.used_at.is_some() || inv.expires_at <= now {
        return Err(fail());
    }
    let user = state
        .store
        .user_by_id(&inv.user_id)
        .await?
        .ok_or_else(fail)?;
    anon.audit.with(|a| {
        a.actor = Some(user.name.clone());
        a.org_id = Some(user.org_id.clone());
    });
    password::acceptable(&body.password)?;
    let policy = state.store.org_policy(&user.org_id).await?;
    // The TOTP secret is proven before anything is claimed or stored.
    let totp_secret = match (&body.totp_secret, &body.totp_code) {
        (Some(s), Some(code)) => {
            bounded("totp_secret", s, 128)?;
            let raw = totp_rs::Secret::try_from_base32(s.trim())
                .ok()
                .map(|s| s.to_vec())
                .filter(|b| b.len() >= 16 && b.len() <= 64)
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "totp_secret is not a base32 secret of 16 to 64 bytes".into(),
                    )
                })?;
            let step = totp::check(&raw, code, (now / 1000) as u64)?;
            if step.is_none() {
                return Err(ApiError::BadRequest(
                    "the TOTP code does not match the secret: check the authenticator app and this machine's clock"
                        .into(),
                ));
            }
            Some((raw, step))
        }
        (None, None) if policy.require_mfa => {
            return Err(ApiError::BadRequest(
                "your org requires MFA: enrol an authenticator (postern invitation accept does it)"
                    .into(),
            ));
        }
        (None, None) => None,
        _ => {
            return Err(ApiError::BadRequest(
                "send totp_secret and totp_code together".into(),
            ));
        }
    };
    let hash = password::hash(&body.password).await?;
    if !state.store.claim_invitation(&inv.id, now).await? {
        return Err(invitation_refused());
    }
    let sealed = match &totp_secret {
        Some((raw, _)) => Some(state.pki.seal(raw)?),
        None => None,
    };
    state
        .store
        .set_local_credentials(&user.id, Some(&hash), sealed.as_deref(), now)
        .await?;
    // The code that proved enrolment is spent.
    if let Some((_, Some(step))) = &totp_secret {
        state.store.claim_totp_step(&user.id, *step as i64).await?;
    }
    let recovery_codes = if totp_secret.is_some() {
        let (codes, hashes) = recovery::generate()?;
        state
            .store
            .replace_recovery_codes(&user.id, &hashes)
            .await?;
        codes
    } else {
        Vec::new()
    };
    attempt.succeeded();
    // Whatever the user held before (an admin's reset) ends.
    sessions::end_all(&state, &user, "credentials reset").await?;
    let org = state
        .store
        .org_by_id(&user.org_id)
        .await?
        .map(|o| o.name)
        .unwrap_or_default();
    anon.audit.with(|a| {
        a.detail = Some(json!({ "invitation_id": inv.id, "totp": totp_secret.is_some() }));
    });
    Ok(Json(InvitationAccepted {
        user: user.name,
        org,
        recovery_codes,
    }))
}

fn session_view(user: &UserRow, s: &SessionRow) -> SessionInfo {
    SessionInfo {
        id: s.id.clone(),
        user: user.name.clone(),
        method: s.method.clone(),
        mfa: s.mfa,
        source_ip: s.source_ip.clone(),
        created_at: rfc3339(s.created_at),
        expires_at: rfc3339(s.expires_at),
    }
}

/// A user's open sessions (themself, or an org admin).
#[utoipa::path(
    get,
    path = "/api/v1/users/{user}/sessions",
    tag = "auth",
    params(("user" = String, Path, description = "User name")),
    responses(
        (status = 200, description = "Open sessions, newest first", body = [SessionInfo]),
        (status = 403, description = "Only the user themself or an org_admin", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_sessions(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<SessionInfo>>, ApiError> {
    let user = resolve_user(&state, &caller, &name).await?;
    may_manage_tokens_of(&caller, &user)?;
    let open = state.store.open_sessions(&user.id, now_ms()).await?;
    Ok(Json(open.iter().map(|s| session_view(&user, s)).collect()))
}

/// Ends every session of a user, on every door and replica.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{user}/sessions",
    tag = "auth",
    params(("user" = String, Path, description = "User name")),
    responses(
        (status = 200, description = "Ended; `ended` counts them"),
        (status = 403, description = "Only the user themself or an org_admin", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn end_sessions(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = resolve_user(&state, &caller, &name).await?;
    may_manage_tokens_of(&caller, &user)?;
    let reason = if caller.principal.user_id == user.id {
        "ended by the user".to_string()
    } else {
        format!("ended by {}", caller.principal.user_name)
    };
    let n = sessions::end_all(&state, &user, &reason).await?;
    caller
        .audit
        .with(|a| a.detail = Some(json!({ "ended": n })));
    Ok(Json(json!({ "ended": n })))
}

/// Resets a user's MFA (their TOTP and recovery codes): they enrol again
/// through a new invitation. Their sessions end.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{user}/mfa",
    tag = "auth",
    params(("user" = String, Path, description = "User name")),
    responses(
        (status = 200, description = "Reset"),
        (status = 403, description = "Only an org_admin", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn reset_mfa(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require(&caller, Action::ManageOrg)?;
    let user = resolve_user(&state, &caller, &name).await?;
    let had = state.store.clear_totp(&user.id, now_ms()).await?;
    let n = sessions::end_all(&state, &user, "MFA reset by an admin").await?;
    caller
        .audit
        .with(|a| a.detail = Some(json!({ "had_totp": had, "sessions_ended": n })));
    Ok(Json(json!({ "had_totp": had, "sessions_ended": n })))
}

async fn set_disabled(
    state: &AppState,
    caller: &Caller,
    name: &str,
    disable: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    require(caller, Action::ManageOrg)?;
    let user = resolve_user(state, caller, name).await?;
    if disable && user.id == caller.principal.user_id {
        return Err(ApiError::BadRequest(
            "you cannot disable yourself: ask another org admin".into(),
        ));
    }
    state
        .store
        .set_user_disabled(&user.id, disable.then(now_ms))
        .await?;
    let mut detail = json!({ "disabled": disable });
    if disable {
        let n = sessions::end_all(state, &user, "user disabled").await?;
        // Tokens and keys too: everything the user holds ends.
        let cut = state
            .access
            .publish(AccessChange {
                org_id: user.org_id.clone(),
                user_id: user.id.clone(),
                what: Change::UserDeleted,
            })
            .await;
        detail = json!({ "disabled": true, "sessions_ended": n, "cut": cut });
    }
    caller.audit.with(|a| a.detail = Some(detail.clone()));
    Ok(Json(detail))
}

/// Disables a user: their sessions end, their tokens and keys stop working.
#[utoipa::path(
    post,
    path = "/api/v1/users/{user}/disable",
    tag = "auth",
    params(("user" = String, Path, description = "User name")),
    responses(
        (status = 200, description = "Disabled"),
        (status = 400, description = "Yourself", body = ErrorBody),
        (status = 403, description = "Only an org_admin", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn disable_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_disabled(&state, &caller, &name, true).await
}

/// Enables a disabled user (they sign in again).
#[utoipa::path(
    post,
    path = "/api/v1/users/{user}/enable",
    tag = "auth",
    params(("user" = String, Path, description = "User name")),
    responses(
        (status = 200, description = "Enabled"),
        (status = 403, description = "Only an org_admin", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn enable_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_disabled(&state, &caller, &name, false).await
}

fn policy_dto(p: &OrgPolicy) -> dto::OrgPolicy {
    dto::OrgPolicy {
        require_mfa: p.require_mfa,
        session_max_seconds: p.session_max_seconds,
        sso_mfa_values: p.sso_mfa_values.clone(),
        refuse_person_keys: p.refuse_person_keys,
        bot_token_max_seconds: p.bot_token_max_seconds,
    }
}

/// The caller's org's sign-in policy.
#[utoipa::path(
    get,
    path = "/api/v1/org/policy",
    tag = "auth",
    responses(
        (status = 200, description = "The policy", body = dto::OrgPolicy),
        (status = 403, description = "Only an org_admin", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn get_policy(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<dto::OrgPolicy>, ApiError> {
    require(&caller, Action::ManageOrg)?;
    let p = state.store.org_policy(&caller.principal.org_id).await?;
    Ok(Json(policy_dto(&p)))
}

/// Sets the caller's org's sign-in policy.
#[utoipa::path(
    put,
    path = "/api/v1/org/policy",
    tag = "auth",
    request_body = dto::OrgPolicy,
    responses(
        (status = 200, description = "Set", body = dto::OrgPolicy),
        (status = 400, description = "A value out of range", body = ErrorBody),
        (status = 403, description = "Only an org_admin", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<dto::OrgPolicy>,
) -> Result<Json<dto::OrgPolicy>, ApiError> {
    require(&caller, Action::ManageOrg)?;
    let session_max_seconds = validate::range(
        "session_max_seconds",
        body.session_max_seconds,
        60,
        crate::store::MAX_SESSION_SECONDS,
    )?;
    let bot_token_max_seconds = validate::range(
        "bot_token_max_seconds",
        body.bot_token_max_seconds,
        60,
        postern_api::admin::TOKEN_TTL_MAX_SECS,
    )?;
    if body.sso_mfa_values.len() > 16
        || body
            .sso_mfa_values
            .iter()
            .any(|v| v.is_empty() || v.len() > 128 || v.chars().any(char::is_control))
    {
        return Err(ApiError::BadRequest(
            "sso_mfa_values: at most 16 values of 1 to 128 printable characters".into(),
        ));
    }
    let p = OrgPolicy {
        require_mfa: body.require_mfa,
        session_max_seconds,
        sso_mfa_values: body.sso_mfa_values,
        refuse_person_keys: body.refuse_person_keys,
        bot_token_max_seconds,
    };
    state
        .store
        .set_org_policy(&caller.principal.org_id, &p, now_ms())
        .await?;
    let out = policy_dto(&p);
    caller
        .audit
        .with(|a| a.detail = Some(serde_json::to_value(&out).unwrap_or_default()));
    Ok(Json(out))
}
