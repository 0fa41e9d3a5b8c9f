//! Users, their roles, and API tokens.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use postern_api::admin::{
    self as dto, CreateToken, CreateUser, Role, RoleBinding, TokenCreated, TokenInfo,
};
use postern_api::{ErrorBody, validate};
use serde_json::{Value, json};

use super::admin::{plain_id, require};
use super::extract::{ApiJson, ApiPath, Caller, TOKEN_PREFIX};
use super::{ApiError, AppState};
use crate::access::{AccessChange, Change};
use crate::authz::Action;
use crate::clock::{now_ms, rfc3339};
use crate::secrets::new_token;
use crate::store::{ApiTokenRow, BindingRow, UserRow};

pub(super) async fn resolve_user(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<UserRow, ApiError> {
    let not_found = || ApiError::NotFound(format!("user {name:?} not found"));
    if validate::name("user", name).is_err() {
        return Err(not_found());
    }
    let user = state
        .store
        .user_by_name(name)
        .await?
        .ok_or_else(not_found)?;
    if user.org_id != caller.principal.org_id {
        return Err(not_found());
    }
    caller
        .audit
        .with(|a| a.targets.push(format!("user:{}", user.name)));
    Ok(user)
}

/// Org admins manage everyone; a user may manage their own tokens.
pub(super) fn may_manage_tokens_of(caller: &Caller, user: &UserRow) -> Result<(), ApiError> {
    if caller.principal.user_id == user.id {
        // A bot's credentials are its admins' to give: a leaked token must
        // not mint itself lasting ones.
        if user.is_bot() {
            return Err(ApiError::Forbidden(
                "a bot does not manage its own tokens or keys: its project's admins do".into(),
            ));
        }
        return Ok(());
    }
    require(caller, Action::ManageOrg)
}

/// [`may_manage_tokens_of`], and a bot's tokens also by a project admin of
/// the bot's project.
async fn may_manage_bot_tokens(
    state: &AppState,
    caller: &Caller,
    user: &UserRow,
) -> Result<(), ApiError> {
    if !user.is_bot()
        || caller.principal.user_id == user.id
        || may_manage_tokens_of(caller, user).is_ok()
    {
        return may_manage_tokens_of(caller, user);
    }
    let admin_of_its_project = state.store.bindings(&user.id).await?.iter().any(|b| {
        b.project_id
            .as_deref()
            .and_then(|p| caller.principal.project_role(p))
            == Some(Role::ProjectAdmin)
    });
    if admin_of_its_project {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only an org_admin or a project_admin of the bot's project manages its tokens".into(),
        ))
    }
}

pub(super) async fn user_view(state: &AppState, user: &UserRow) -> Result<dto::User, ApiError> {
    let org = state.store.org_name(&user.org_id).await?;
    let mut roles = Vec::new();
    for b in state.store.bindings(&user.id).await? {
        let project = match &b.project_id {
            Some(id) => state.store.project_by_id(id).await?.map(|p| p.name),
            None => None,
        };
        roles.push(RoleBinding {
            role: b.role,
            project,
            logins: b.logins,
            forward_to: b.forward_to,
            kube_groups: b.kube_groups,
        });
    }
    Ok(dto::User {
        id: user.id.clone(),
        name: user.name.clone(),
        org,
        roles,
        created_at: rfc3339(user.created_at),
    })
}

/// The caller: their user, org and roles.
#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    tag = "users",
    responses(
        (status = 200, description = "The caller", body = dto::User),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn whoami(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<dto::User>, ApiError> {
    let user = state
        .store
        .user_by_id(&caller.principal.user_id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("user no longer exists".into()))?;
    Ok(Json(user_view(&state, &user).await?))
}

/// The users of the caller's org with their roles (org admins only).
#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    responses(
        (status = 200, description = "Users, by name", body = Vec<dto::User>),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only an org_admin may manage users and roles", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<dto::User>>, ApiError> {
    require(&caller, Action::ManageOrg)?;
    let mut out = Vec::new();
    for u in state.store.list_users(&caller.principal.org_id).await? {
        out.push(user_view(&state, &u).await?);
    }
    Ok(Json(out))
}

/// Creates a user, with no role yet (org admins only).
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = dto::User),
        (status = 400, description = "Malformed JSON, an unknown field, or an invalid value", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only an org_admin may manage users and roles", body = ErrorBody),
        (status = 409, description = "A user of that name already exists", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<dto::User>), ApiError> {
    require(&caller, Action::ManageOrg)?;
    validate::name("user", &body.name)?;
    let user = state
        .store
        .create_user(&caller.principal.org_id, &body.name, now_ms())
        .await?;
    caller
        .audit
        .with(|a| a.targets.push(format!("user:{}", user.name)));
    Ok((StatusCode::CREATED, Json(user_view(&state, &user).await?)))
}

/// One user with their roles (themself, or anyone for org admins).
#[utoipa::path(
    get,
    path = "/api/v1/users/{user}",
    tag = "users",
    params(
        ("user" = String, Path, description = "User name"),
    ),
    responses(
        (status = 200, description = "The user with their roles", body = dto::User),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only the user themself or an org_admin may do this", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<dto::User>, ApiError> {
    let user = resolve_user(&state, &caller, &name).await?;
    may_manage_tokens_of(&caller, &user)?;
    Ok(Json(user_view(&state, &user).await?))
}

/// Deletes a user with their tokens and keys; their SSH access ends at once (org admins only).
#[utoipa::path(
    delete,
    path = "/api/v1/users/{user}",
    tag = "users",
    params(
        ("user" = String, Path, description = "User name"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only an org_admin may manage users and roles", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org", body = ErrorBody),
        (status = 409, description = "Callers cannot delete themselves", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    require(&caller, Action::ManageOrg)?;
    let user = resolve_user(&state, &caller, &name).await?;
    if user.id == caller.principal.user_id {
        return Err(ApiError::Conflict(
            "you cannot delete yourself; ask another org admin".into(),
        ));
    }
    state.store.delete_user(&user.id).await?;
    let applied = state
        .access
        .publish(AccessChange {
            org_id: caller.principal.org_id.clone(),
            user_id: user.id.clone(),
            what: Change::UserDeleted,
        })
        .await;
    caller
        .audit
        .with(|a| a.detail = Some(Value::Object(applied)));
    Ok(StatusCode::NO_CONTENT)
}

/// Sets the user's role on the org (no `project`) or on one project.
#[utoipa::path(
    put,
    path = "/api/v1/users/{user}/roles",
    tag = "users",
    params(
        ("user" = String, Path, description = "User name"),
    ),
    request_body = RoleBinding,
    responses(
        (status = 200, description = "The user with their roles", body = dto::User),
        (status = 400, description = "Malformed JSON, an unknown field, an invalid login, org_admin with a project, or another role without one", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only an org_admin may manage users and roles", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org, or no such project", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn set_role(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<RoleBinding>,
) -> Result<Json<dto::User>, ApiError> {
    require(&caller, Action::ManageOrg)?;
    let user = resolve_user(&state, &caller, &name).await?;
    let binding = binding_of(&state, &caller, &body).await?;
    let before = state.store.bindings(&user.id).await?;
    let replaced = before
        .iter()
        .find(|b| b.project_id == binding.project_id)
        .filter(|b| {
            b.role != binding.role
                || b.logins != binding.logins
                || b.forward_to != binding.forward_to
                || b.kube_groups != binding.kube_groups
        })
        .is_some();
    state
        .store
        .set_binding(&user.id, &binding, now_ms())
        .await?;
    // A new role only adds access; a changed one may take some away, at once.
    let mut detail = json!({ "role": body.role, "logins": body.logins, "forward_to": body.forward_to, "kube_groups": body.kube_groups });
    if replaced {
        let change = AccessChange {
            org_id: caller.principal.org_id.clone(),
            user_id: user.id.clone(),
            what: Change::RoleChanged {
                project_id: binding.project_id.clone(),
            },
        };
        if let Value::Object(d) = &mut detail {
            d.extend(state.access.publish(change).await);
        }
    }
    caller.audit.with(|a| a.detail = Some(detail));
    Ok(Json(user_view(&state, &user).await?))
}

/// Removes the user's role on a project, or on the org when `scope` is `org`.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{user}/roles/{scope}",
    tag = "users",
    params(
        ("user" = String, Path, description = "User name"),
        ("scope" = String, Path, description = "A project name, or `org` for the org-wide role"),
    ),
    responses(
        (status = 204, description = "Removed; SSH access that depended on it ends at once"),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only an org_admin may manage users and roles", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org, no such project, or no role there", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn remove_role(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, scope)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require(&caller, Action::ManageOrg)?;
    let user = resolve_user(&state, &caller, &name).await?;
    let project_id = if scope == "org" {
        None
    } else if validate::name("project", &scope).is_err() {
        return Err(ApiError::NotFound(format!("project {scope:?} not found")));
    } else {
        let p = state
            .store
            .project_by_name(&caller.principal.org_id, &scope)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("project {scope:?} not found")))?;
        Some(p.id)
    };
    if !state
        .store
        .remove_binding(&user.id, project_id.as_deref())
        .await?
    {
        return Err(ApiError::NotFound(format!(
            "user {name:?} has no role on {scope:?}"
        )));
    }
    let change = AccessChange {
        org_id: caller.principal.org_id.clone(),
        user_id: user.id.clone(),
        what: Change::RoleChanged { project_id },
    };
    let applied = state.access.publish(change).await;
    caller
        .audit
        .with(|a| a.detail = Some(Value::Object(applied)));
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn token_view(user: &UserRow, t: &ApiTokenRow) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        user: user.name.clone(),
        name: t.name.clone(),
        created_at: rfc3339(t.created_at),
        expires_at: rfc3339(t.expires_at),
        revoked: t.revoked_at.is_some(),
    }
}

/// The user's API tokens, without their secrets (themself, or anyone for org admins).
#[utoipa::path(
    get,
    path = "/api/v1/users/{user}/tokens",
    tag = "users",
    params(
        ("user" = String, Path, description = "User name"),
    ),
    responses(
        (status = 200, description = "Tokens, oldest first", body = Vec<TokenInfo>),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only the user themself or an org_admin may do this", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let user = resolve_user(&state, &caller, &name).await?;
    may_manage_bot_tokens(&state, &caller, &user).await?;
    let tokens = state.store.list_api_tokens(&user.id).await?;
    Ok(Json(tokens.iter().map(|t| token_view(&user, t)).collect()))
}

/// Makes an API token for the user (themself, or anyone for org admins).
#[utoipa::path(
    post,
    path = "/api/v1/users/{user}/tokens",
    tag = "users",
    params(
        ("user" = String, Path, description = "User name"),
    ),
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created; the secret is shown only now", body = TokenCreated),
        (status = 400, description = "Malformed JSON, an unknown field, or an invalid value", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only the user themself or an org_admin may do this", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let user = resolve_user(&state, &caller, &name).await?;
    may_manage_bot_tokens(&state, &caller, &user).await?;
    // People sign in and hold sessions; long-lived tokens are for automation.
    if !user.is_bot() {
        return Err(ApiError::BadRequest(format!(
            "API tokens are for bots: {} signs in (postern login URL --sso PROVIDER --org ORG, or --user NAME) and gets a session; for automation, make a bot with POST /api/v1/projects/{{project}}/bots",
            user.name
        )));
    }
    let max = state
        .store
        .org_policy(&user.org_id)
        .await?
        .bot_token_max_seconds
        .min(dto::TOKEN_TTL_MAX_SECS);
    let Some(ttl) = body.ttl_seconds else {
        return Err(ApiError::BadRequest(format!(
            "ttl_seconds is required for a bot's token (60 to {max}): a bot's token always expires"
        )));
    };
    let ttl = validate::range("ttl_seconds", ttl, 60, max)?;
    if let Some(n) = &body.name
        && (n.chars().count() > 100 || n.chars().any(char::is_control))
    {
        return Err(ApiError::BadRequest(
            "token name: at most 100 printable characters".into(),
        ));
    }
    let created = issue_api_token(&state.store, &user, body.name.clone(), ttl).await?;
    caller
        .audit
        .with(|a| a.detail = Some(json!({ "token_id": created.id, "ttl_seconds": ttl })));
    Ok((StatusCode::CREATED, Json(created)))
}

/// Makes an API token for a user; the secret is in the answer only.
pub async fn issue_api_token(
    store: &crate::store::Store,
    user: &UserRow,
    name: Option<String>,
    ttl_seconds: i64,
) -> Result<TokenCreated, ApiError> {
    let t = new_token(TOKEN_PREFIX)?;
    let now = now_ms();
    let row = ApiTokenRow {
        id: t.id.clone(),
        user_id: user.id.clone(),
        secret_hash: t.hash,
        name,
        created_at: now,
        expires_at: now + ttl_seconds * 1000,
        revoked_at: None,
    };
    store.insert_api_token(&row).await?;
    Ok(TokenCreated {
        id: t.id,
        token: t.full.expose().to_string(),
        expires_at: rfc3339(row.expires_at),
    })
}

/// Revokes an API token by its id (its owner, or an org admin of the owner's org).
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{token_id}",
    tag = "users",
    params(
        ("token_id" = String, Path, description = "The API token's id (the part after `pst_`, before the secret)"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only the user themself or an org_admin may do this", body = ErrorBody),
        (status = 404, description = "No such token in the caller's org", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(token_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::NotFound(format!("token {token_id:?} not found"));
    if !plain_id(&token_id) {
        return Err(not_found());
    }
    let t = state
        .store
        .api_token(&token_id)
        .await?
        .ok_or_else(not_found)?;
    let owner = state
        .store
        .user_by_id(&t.user_id)
        .await?
        .ok_or_else(not_found)?;
    if owner.org_id != caller.principal.org_id {
        return Err(not_found());
    }
    may_manage_bot_tokens(&state, &caller, &owner).await?;
    state.store.revoke_api_token(&t.id, now_ms()).await?;
    // What the token holds open (kubectl watches, exec streams) ends now.
    let mut detail = json!({ "token_id": t.id });
    let change = AccessChange {
        org_id: owner.org_id.clone(),
        user_id: owner.id.clone(),
        what: Change::TokenRevoked {
            token_id: t.id.clone(),
        },
    };
    if let Value::Object(d) = &mut detail {
        d.extend(state.access.publish(change).await);
    }
    caller.audit.with(|a| {
        a.targets.push(format!("user:{}", owner.name));
        a.detail = Some(detail);
    });
    Ok(StatusCode::NO_CONTENT)
}

/// A role binding as asked for, checked (logins, forwarding targets, groups,
/// the project in the caller's org), as the store keeps it.
pub(super) async fn binding_of(
    state: &AppState,
    caller: &Caller,
    body: &RoleBinding,
) -> Result<BindingRow, ApiError> {
    for l in &body.logins {
        validate::login(l)?;
    }
    if body.logins.len() > 64 {
        return Err(ApiError::BadRequest("at most 64 logins per role".into()));
    }
    for t in &body.forward_to {
        validate::forward_target(t)?;
    }
    if body.forward_to.len() > postern_api::admin::MAX_FORWARD_TO {
        return Err(ApiError::BadRequest(format!(
            "at most {} forward_to destinations per role",
            postern_api::admin::MAX_FORWARD_TO
        )));
    }
    if let Some(groups) = &body.kube_groups {
        if groups.len() > postern_api::kube::MAX_GROUPS {
            return Err(ApiError::BadRequest(format!(
                "at most {} kube_groups per role",
                postern_api::kube::MAX_GROUPS
            )));
        }
        for g in groups {
            postern_api::kube::check_group(g).map_err(ApiError::BadRequest)?;
        }
    }
    if let Some(p) = &body.project {
        validate::name("project", p)?;
    }
    let project_id = match (&body.project, body.role) {
        (None, Role::OrgAdmin) => None,
        (None, r) => {
            return Err(ApiError::BadRequest(format!(
                "role {r} is per project: give \"project\""
            )));
        }
        (Some(_), Role::OrgAdmin) => {
            return Err(ApiError::BadRequest(
                "org_admin is org-wide: leave out \"project\"".into(),
            ));
        }
        (Some(p), _) => {
            let project = state
                .store
                .project_by_name(&caller.principal.org_id, p)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("project {p:?} not found")))?;
            caller
                .audit
                .with(|a| a.project = Some(project.name.clone()));
            Some(project.id)
        }
    };
    Ok(BindingRow {
        project_id,
        role: body.role,
        logins: body.logins.clone(),
        forward_to: body.forward_to.clone(),
        kube_groups: body.kube_groups.clone(),
    })
}
