//! An admin's part in sign-in: a user's sessions listed and ended, MFA
//! reset, a user disabled or enabled, and the org's sign-in policy.

use super::*;

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
        // Set apart (`PUT /org/recording-retention`); this upsert keeps it.
        recording_retention_days: 0,
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
