//! Bots: a project's service accounts, for automation (Ansible in CI, cron
//! jobs). A bot is a user of kind `bot` with one role in one project; it never
//! signs in, and holds API tokens that must expire (at most the org's
//! `bot_token_max_seconds`) and may be bound to source networks. Project
//! admins make and delete their project's bots; every change is audited.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use postern_api::admin::{Role, RoleBinding};
use postern_api::identity::{Bot, CreateBot};
use postern_api::{ErrorBody, validate};
use serde_json::json;

use super::admin::resolve_project;
use super::extract::{ApiJson, ApiPath, Caller};
use super::users::{binding_of, token_view};
use super::{ApiError, AppState};
use crate::access::{AccessChange, Change};
use crate::authz::Action;
use crate::clock::now_ms;
use crate::store::UserRow;

/// Networks a bot's tokens may be bound to, at most.
const MAX_CIDRS: usize = 32;

fn cidr_ok(c: &str) -> bool {
    let (net, len) = match c.split_once('/') {
        Some((n, l)) => (n, Some(l)),
        None => (c, None),
    };
    let Ok(ip) = net.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    len.is_none_or(|l| l.parse::<u32>().is_ok_and(|l| l <= max))
}

async fn bot_view(state: &AppState, project: &str, bot: &UserRow) -> Result<Bot, ApiError> {
    let binding = state.store.bindings(&bot.id).await?.into_iter().next();
    let tokens = state.store.list_api_tokens(&bot.id).await?;
    Ok(Bot {
        name: bot.name.clone(),
        project: project.to_string(),
        role: binding.as_ref().map(|b| b.role).unwrap_or(Role::ReadOnly),
        logins: binding.map(|b| b.logins).unwrap_or_default(),
        source_cidrs: state.store.bot_source_cidrs(&bot.id).await?,
        tokens: tokens.iter().map(|t| token_view(bot, t)).collect(),
    })
}

/// Makes a bot in the project, with its role there.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{project}/bots",
    tag = "users",
    params(("project" = String, Path, description = "Project name")),
    request_body = CreateBot,
    responses(
        (status = 201, description = "Made; give it a token with POST /api/v1/users/{bot}/tokens", body = Bot),
        (status = 400, description = "Malformed JSON, an unknown field, org_admin, or a bad login or network", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 403, description = "Only a project_admin of the project (or an org_admin)", body = ErrorBody),
        (status = 404, description = "No such project", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn create_bot(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiJson(body): ApiJson<CreateBot>,
) -> Result<(StatusCode, Json<Bot>), ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    validate::name("bot", &body.name)?;
    if body.role == Role::OrgAdmin {
        return Err(ApiError::BadRequest(
            "a bot holds a role in its project, never org_admin".into(),
        ));
    }
    if let Some(c) = &body.source_cidrs
        && (c.len() > MAX_CIDRS || !c.iter().all(|c| cidr_ok(c)))
    {
        return Err(ApiError::BadRequest(format!(
            "source_cidrs: at most {MAX_CIDRS} networks such as 10.0.0.0/8 or 2001:db8::/32"
        )));
    }
    // A project admin gives a bot no more than they hold: logins of their
    // own, and their own Kubernetes groups (an org admin gives any).
    let mut kube_groups = None;
    if !caller.principal.is_org_admin() {
        let mine = caller
            .principal
            .bindings
            .iter()
            .find(|b| b.project_id.as_deref() == Some(p.id.as_str()));
        let my_logins = mine.map(|b| b.logins.clone()).unwrap_or_default();
        if let Some(l) = body.logins.iter().find(|l| !my_logins.contains(l)) {
            return Err(ApiError::Forbidden(format!(
                "you may not give a bot the login {l}: it is not one of yours on {} (an org admin may)",
                p.name
            )));
        }
        kube_groups = mine.and_then(|b| b.kube_groups.clone());
    }
    let binding = binding_of(
        &state,
        &caller,
        &RoleBinding {
            role: body.role,
            project: Some(p.name.clone()),
            logins: body.logins.clone(),
            forward_to: vec![],
            kube_groups,
        },
    )
    .await?;
    let now = now_ms();
    let bot = state
        .store
        .create_user(&caller.principal.org_id, &body.name, now)
        .await?;
    state
        .store
        .make_bot(&bot.id, body.source_cidrs.as_deref())
        .await?;
    state.store.set_binding(&bot.id, &binding, now).await?;
    let bot = state
        .store
        .user_by_id(&bot.id)
        .await?
        .ok_or_else(|| ApiError::Internal("the bot vanished".into()))?;
    caller.audit.with(|a| {
        a.targets.push(format!("bot:{}", bot.name));
        a.detail = Some(
            json!({ "role": body.role, "logins": body.logins, "source_cidrs": body.source_cidrs }),
        );
    });
    Ok((
        StatusCode::CREATED,
        Json(bot_view(&state, &p.name, &bot).await?),
    ))
}

/// The project's bots and their tokens.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{project}/bots",
    tag = "users",
    params(("project" = String, Path, description = "Project name")),
    responses(
        (status = 200, description = "The bots", body = [Bot]),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 403, description = "Only a project_admin of the project (or an org_admin)", body = ErrorBody),
        (status = 404, description = "No such project", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_bots(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
) -> Result<Json<Vec<Bot>>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    let mut out = Vec::new();
    for u in state.store.list_users(&caller.principal.org_id).await? {
        if !u.is_bot() {
            continue;
        }
        let of_project = state
            .store
            .bindings(&u.id)
            .await?
            .iter()
            .any(|b| b.project_id.as_deref() == Some(p.id.as_str()));
        if of_project {
            out.push(bot_view(&state, &p.name, &u).await?);
        }
    }
    Ok(Json(out))
}

/// The bot of `project` called `name`, or 404.
pub(super) async fn project_bot(
    state: &AppState,
    caller: &Caller,
    project_id: &str,
    name: &str,
) -> Result<UserRow, ApiError> {
    let not_found = || ApiError::NotFound(format!("bot {name:?} not found"));
    if validate::name("bot", name).is_err() {
        return Err(not_found());
    }
    let u = state
        .store
        .user_by_name(name)
        .await?
        .filter(|u| u.is_bot() && u.org_id == caller.principal.org_id)
        .ok_or_else(not_found)?;
    let of_project = state
        .store
        .bindings(&u.id)
        .await?
        .iter()
        .any(|b| b.project_id.as_deref() == Some(project_id));
    if !of_project {
        return Err(not_found());
    }
    Ok(u)
}

/// Deletes a bot: its tokens stop working and what they opened ends.
#[utoipa::path(
    delete,
    path = "/api/v1/projects/{project}/bots/{name}",
    tag = "users",
    params(
        ("project" = String, Path, description = "Project name"),
        ("name" = String, Path, description = "The bot's name"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 403, description = "Only a project_admin of the project (or an org_admin)", body = ErrorBody),
        (status = 404, description = "No such project or bot", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn delete_bot(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, name)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    let bot = project_bot(&state, &caller, &p.id, &name).await?;
    state.store.delete_user(&bot.id).await?;
    let cut = state
        .access
        .publish(AccessChange {
            org_id: bot.org_id.clone(),
            user_id: bot.id.clone(),
            what: Change::UserDeleted,
        })
        .await;
    caller.audit.with(|a| {
        a.targets.push(format!("bot:{}", bot.name));
        a.detail = Some(json!({ "cut": cut }));
    });
    Ok(StatusCode::NO_CONTENT)
}
