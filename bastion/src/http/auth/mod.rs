//! Signing in and what comes of it, over REST: a local user's sign-in
//! (password, TOTP or recovery code) makes a login session; the session gets
//! an OpenSSH certificate; sign-out, an admin's "end their sessions",
//! disabling a user and resetting their MFA each end sessions on every door.
//! Invitations (`invitations`) are how a local user sets their password and
//! enrols TOTP, so no admin ever sees a person's secret; an admin's part
//! (sessions, MFA resets, disabling, the org's policy) is `admin`. Each step
//! is audited with its method, outcome and reason.

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

/// A local user's sign-in with a password (and a code when they enrolled
/// one), for the CLI and the console alike: the fields bounded, attempts
/// counted, and a refusal audited in the user's org (when the name is a
/// user) with `detail` and the reason.
pub(crate) async fn password_sign_in(
    state: &AppState,
    anon: &Anonymous,
    name: &str,
    password: &str,
    code: Option<&str>,
    detail: serde_json::Value,
) -> Result<local::SignedIn, ApiError> {
    bounded("name", name, 64)?;
    bounded("password", password, dto::MAX_FIELD)?;
    if let Some(c) = code {
        bounded("code", c, 64)?;
    }
    let typed = local::Typed {
        name,
        password,
        code,
    };
    match local::sign_in(
        &state.store,
        &state.pki,
        &state.sign_in_attempts,
        typed,
        anon.source_or_local(),
    )
    .await
    {
        Ok(s) => Ok(s),
        Err(e) => {
            let mut detail = detail;
            if let Some(d) = detail.as_object_mut() {
                d.insert("reason".into(), e.to_string().into());
            }
            // A refusal for a real user shows in their org's log.
            let org = match state.store.user_by_name(name).await {
                Ok(Some(u)) => Some(u.org_id),
                _ => None,
            };
            anon.audit.with(|a| {
                a.org_id = org;
                a.detail = Some(detail);
            });
            Err(e.into())
        }
    }
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
    let key = body.ssh_public_key.as_deref().map(public_key).transpose()?;
    let signed = password_sign_in(
        &state,
        &anon,
        &body.name,
        &body.password,
        body.code.as_deref(),
        json!({ "method": "password" }),
    )
    .await?;
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
    let org = state.store.org_name(&user.org_id).await?;
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
pub async fn logout(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let session = own_session(&state, &caller).await?;
    let cut = sessions::end(&state, &caller.principal.org_id, &session.id, "logout").await?;
    caller
        .audit
        .with(|a| a.detail = Some(json!({ "session_id": session.id, "cut": cut })));
    // The console's cookie goes with its session.
    Ok(match caller.console {
        Some(_) => (
            StatusCode::NO_CONTENT,
            crate::http::console::clear_cookies(),
        )
            .into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
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

mod admin;
mod invitations;

pub use admin::*;
pub use invitations::*;
