//! Admin endpoints for projects, edges, enrollment tokens and the audit log;
//! the nodes of an edge are in `nodes`.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use postern_api::admin::{
    self as dto, AuditPage, CreateEdge, CreateEnrollmentToken, CreateProject,
    EnrollmentTokenCreated,
};
use postern_api::{ErrorBody, validate};
use serde_json::json;

use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::{ApiError, AppState};
use crate::authz::{Action, Decision, decide};
use crate::clock::{now_ms, rfc3339};
use crate::secrets::new_token;
use crate::store::{EdgeRow, EnrollmentTokenRow, ProjectRow};

/// Resolves a project by name in the caller's org and checks `action` on it.
pub(super) async fn resolve_project(
    state: &AppState,
    caller: &Caller,
    name: &str,
    action: Action,
) -> Result<ProjectRow, ApiError> {
    match crate::access::resolve::project(&state.store, &caller.principal, name, action).await {
        Ok(project) => {
            caller
                .audit
                .with(|a| a.project = Some(project.name.clone()));
            Ok(project)
        }
        Err(denied) => {
            if let crate::access::Denied::Forbidden {
                project: Some(p), ..
            } = &denied
            {
                caller.audit.with(|a| a.project = Some(p.clone()));
            }
            Err(denied.into())
        }
    }
}

/// Whether `id` has the shape of the ids the bastion makes (hex, UUIDs, ULIDs):
/// anything else cannot name a row, and is not sent to the database (PostgreSQL
/// refuses a NUL in text with an error, which would be a 500).
pub(super) fn plain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub(super) fn require(caller: &Caller, action: Action) -> Result<(), ApiError> {
    match decide(&caller.principal, action, None) {
        Decision::Allow => Ok(()),
        Decision::NotVisible => Err(ApiError::NotFound("not found".into())),
        Decision::Forbidden(why) => Err(ApiError::Forbidden(why)),
    }
}

pub(super) async fn resolve_edge(
    state: &AppState,
    project: &ProjectRow,
    name: &str,
) -> Result<EdgeRow, ApiError> {
    Ok(crate::access::resolve::edge(&state.store, project, name).await?)
}

fn project_view(p: &ProjectRow) -> dto::Project {
    dto::Project {
        id: p.id.clone(),
        name: p.name.clone(),
        created_at: rfc3339(p.created_at),
    }
}

fn edge_view(project: &ProjectRow, e: &EdgeRow) -> dto::Edge {
    dto::Edge {
        id: e.id.clone(),
        name: e.name.clone(),
        project: project.name.clone(),
        created_at: rfc3339(e.created_at),
    }
}

/// The projects of the caller's org that the caller may read.
#[utoipa::path(
    get,
    path = "/api/v1/projects",
    tag = "admin",
    responses(
        (status = 200, description = "Projects, by name", body = Vec<dto::Project>),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_projects(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<dto::Project>>, ApiError> {
    let all = state.store.list_projects(&caller.principal.org_id).await?;
    let visible = all
        .iter()
        .filter(|p| decide(&caller.principal, Action::ReadProject, Some(p)) == Decision::Allow)
        .map(project_view)
        .collect();
    Ok(Json(visible))
}

/// Creates a project in the caller's org (org admins only).
#[utoipa::path(
    post,
    path = "/api/v1/projects",
    tag = "admin",
    request_body = CreateProject,
    responses(
        (status = 201, description = "Created", body = dto::Project),
        (status = 400, description = "Malformed JSON, an unknown field, or an invalid value", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only an org_admin may create projects", body = ErrorBody),
        (status = 409, description = "A project of that name already exists in the org", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn create_project(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateProject>,
) -> Result<(StatusCode, Json<dto::Project>), ApiError> {
    require(&caller, Action::ManageOrg)?;
    validate::name("project", &body.name)?;
    let p = state
        .store
        .create_project(&caller.principal.org_id, &body.name, now_ms())
        .await?;
    caller.audit.with(|a| a.project = Some(p.name.clone()));
    Ok((StatusCode::CREATED, Json(project_view(&p))))
}

/// One project, by name or id.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{project}",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
    ),
    responses(
        (status = 200, description = "The project", body = dto::Project),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn get_project(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
) -> Result<Json<dto::Project>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ReadProject).await?;
    Ok(Json(project_view(&p)))
}

/// The edges of a project.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{project}/edges",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
    ),
    responses(
        (status = 200, description = "Edges, by name", body = Vec<dto::Edge>),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_edges(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
) -> Result<Json<Vec<dto::Edge>>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ReadProject).await?;
    let edges = state.store.list_edges(&p.id).await?;
    Ok(Json(edges.iter().map(|e| edge_view(&p, e)).collect()))
}

/// Creates an edge (a group of nodes, such as a site or a cluster) in a project.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{project}/edges",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
    ),
    request_body = CreateEdge,
    responses(
        (status = 201, description = "Created", body = dto::Edge),
        (status = 400, description = "Malformed JSON, an unknown field, or an invalid value", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "The caller's role on the project may not manage it (needs project_admin or org_admin)", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller", body = ErrorBody),
        (status = 409, description = "An edge of that name already exists in the project", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn create_edge(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiJson(body): ApiJson<CreateEdge>,
) -> Result<(StatusCode, Json<dto::Edge>), ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    validate::name("edge", &body.name)?;
    let e = state.store.create_edge(&p.id, &body.name, now_ms()).await?;
    caller.audit.with(|a| a.targets.push(e.name.clone()));
    Ok((StatusCode::CREATED, Json(edge_view(&p, &e))))
}

/// Makes an enrollment token for an edge and the `postern-agent join` command that carries it.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{project}/edges/{edge}/enrollment-tokens",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
        ("edge" = String, Path, description = "Edge name"),
    ),
    request_body = CreateEnrollmentToken,
    responses(
        (status = 201, description = "Created; the token is shown only now", body = EnrollmentTokenCreated),
        (status = 400, description = "Malformed JSON, an unknown field, or an invalid value", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "The caller's role on the project may not manage it (needs project_admin or org_admin)", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller, or no such edge in it", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn create_enrollment_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<CreateEnrollmentToken>,
) -> Result<(StatusCode, Json<EnrollmentTokenCreated>), ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let ttl = validate::range(
        "ttl_seconds",
        body.ttl_seconds.unwrap_or(dto::ENROLL_TTL_DEFAULT_SECS),
        1,
        dto::ENROLL_TTL_MAX_SECS,
    )?;
    let max_uses = validate::range(
        "max_uses",
        body.max_uses.unwrap_or(1),
        1,
        dto::ENROLL_USES_MAX,
    )?;
    let created = issue_enrollment_token(
        &state,
        &e,
        Some(&caller.principal.user_name),
        ttl,
        max_uses,
        body.auto_approve,
    )
    .await?;
    caller.audit.with(|a| {
        a.targets.push(e.name.clone());
        a.detail = Some(json!({
            "token_id": created.id, "max_uses": max_uses, "ttl_seconds": ttl, "auto_approve": body.auto_approve,
        }));
    });
    Ok((StatusCode::CREATED, Json(created)))
}

/// Makes an enrollment token for an edge and the join command that carries it.
pub async fn issue_enrollment_token(
    state: &crate::state::Shared,
    edge: &EdgeRow,
    created_by: Option<&str>,
    ttl_seconds: i64,
    max_uses: i64,
    auto_approve: bool,
) -> Result<EnrollmentTokenCreated, ApiError> {
    let t = new_token(postern_api::agent::ENROLL_TOKEN_PREFIX)?;
    let now = now_ms();
    let row = EnrollmentTokenRow {
        id: t.id.clone(),
        edge_id: edge.id.clone(),
        secret_hash: t.hash,
        created_by: created_by.map(String::from),
        created_at: now,
        expires_at: now + ttl_seconds * 1000,
        max_uses,
        uses: 0,
        auto_approve,
        revoked_at: None,
    };
    state.store.insert_enrollment_token(&row).await?;
    let ca_hash = state.pki.ca_hash().to_string();
    let join_command = format!(
        "postern-agent join --controller {} --token {} --ca-hash {}",
        state.settings.agent_public_url,
        t.full.expose(),
        ca_hash
    );
    let install_command = state.settings.agent_packages.as_ref().map(|_| {
        crate::agents::packages::install_command(
            state.pki.ca_pem(),
            &state.settings.agent_public_url,
            t.full.expose(),
            &ca_hash,
        )
    });
    Ok(EnrollmentTokenCreated {
        id: t.id,
        token: t.full.expose().to_string(),
        expires_at: rfc3339(row.expires_at),
        max_uses,
        auto_approve,
        ca_hash,
        join_command,
        install_command,
    })
}

/// Revokes an enrollment token, so no more nodes can join with it.
#[utoipa::path(
    delete,
    path = "/api/v1/projects/{project}/edges/{edge}/enrollment-tokens/{token_id}",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
        ("edge" = String, Path, description = "Edge name"),
        ("token_id" = String, Path, description = "The enrollment token's id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "The caller's role on the project may not manage it (needs project_admin or org_admin)", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller, edge, or enrollment token of that edge", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_enrollment_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge, token_id)): ApiPath<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let not_found = || ApiError::NotFound(format!("enrollment token {token_id:?} not found"));
    if !plain_id(&token_id) {
        return Err(not_found());
    }
    let t = state
        .store
        .enrollment_token(&token_id)
        .await?
        .ok_or_else(not_found)?;
    if t.edge_id != e.id {
        return Err(not_found());
    }
    state.store.revoke_enrollment_token(&t.id, now_ms()).await?;
    caller
        .audit
        .with(|a| a.detail = Some(json!({ "token_id": t.id })));
    Ok(StatusCode::NO_CONTENT)
}

/// The audit log of the caller's org, newest first (org admins only).
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(
        ("limit" = Option<i64>, Query, description = "Entries in the page, 1 to 100; default 10", minimum = 1, maximum = 100),
        ("offset" = Option<i64>, Query, description = "Entries to skip; default 0", minimum = 0),
        ("action" = Option<String>, Query, description = "Only this action (`cmdexec.execute`), or actions starting with a prefix ending in `*` (`cmdexec.*`)", max_length = 200),
        ("actor" = Option<String>, Query, description = "Only what this user did", max_length = 200),
        ("outcome" = Option<String>, Query, description = "Only this outcome (`ok`, `denied`, `failed`, `rejected`, `not_found`, `error`, …)", max_length = 200),
        ("since" = Option<String>, Query, description = "Only entries at or after this time (RFC 3339, e.g. 2026-11-30T12:00:00Z)"),
        ("until" = Option<String>, Query, description = "Only entries before this time (RFC 3339)"),
    ),
    responses(
        (status = 200, description = "A page of the entries that pass every filter given; `total` counts them all", body = AuditPage),
        (status = 400, description = "limit or offset out of range, a filter that is empty, too long or not a time, since not before until, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only an org_admin may read the audit log", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn audit_page(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<dto::AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    require(&caller, Action::ReadAudit)?;
    let (limit, offset) = q.bounds()?;
    let filter = q.filter().map_err(ApiError::BadRequest)?;
    let (total, entries) = state
        .audit
        .log()
        .page_filtered(Some(&caller.principal.org_id), &filter, limit, offset)
        .await?;
    Ok(Json(AuditPage {
        total,
        limit,
        offset,
        entries,
    }))
}

/// One walk of the audit chain at a time on a bastion: each reads the whole log.
static VERIFYING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Walks the audit log's hash chain: whether any entry was edited, removed
/// or reordered.
#[utoipa::path(
    get,
    path = "/api/v1/audit/verify",
    tag = "audit",
    responses(
        (status = 200, description = "Whether the chain holds, and where it breaks", body = dto::AuditVerified),
        (status = 401, description = "Missing, invalid, expired or revoked credential", body = ErrorBody),
        (status = 403, description = "Only an org_admin may verify the audit log", body = ErrorBody),
        (status = 429, description = "A verification is running on this bastion; retry in a minute", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn audit_verify(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<dto::AuditVerified>, ApiError> {
    require(&caller, Action::ReadAudit)?;
    let _one = VERIFYING.try_acquire().map_err(|_| {
        ApiError::TooManyRequests(
            "a verification of the audit log is running on this bastion: retry in a minute".into(),
        )
    })?;
    let walked = state.audit.log().verify().await?;
    let out = match walked {
        Ok(checked) => dto::AuditVerified {
            ok: true,
            checked,
            message: None,
        },
        Err(b) => dto::AuditVerified {
            ok: false,
            checked: 0,
            message: Some(b.to_string()),
        },
    };
    caller.audit.with(|a| {
        a.detail = Some(json!({ "ok": out.ok, "checked": out.checked, "message": out.message }))
    });
    Ok(Json(out))
}
