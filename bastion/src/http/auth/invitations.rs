//! Invitations: an admin makes one for a local user; the user accepts it,
//! setting their password and (proven by a code) their TOTP secret.

use super::*;

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
    let org = state.store.org_name(&user.org_id).await?;
    anon.audit.with(|a| {
        a.detail = Some(json!({ "invitation_id": inv.id, "totp": totp_secret.is_some() }));
    });
    Ok(Json(InvitationAccepted {
        user: user.name,
        org,
        recovery_codes,
    }))
}
