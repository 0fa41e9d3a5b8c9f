//! Admin endpoints for projects, edges, nodes (with their Kubernetes gateway
//! role), enrollment tokens and the audit log.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use postern_api::admin::{
    self as dto, AuditPage, CreateEdge, CreateEnrollmentToken, CreateProject,
    EnrollmentTokenCreated, NodeState,
};
use postern_api::{ErrorBody, validate};
use serde_json::json;

use super::extract::{ApiJson, ApiPath, ApiQuery, Caller, OptionalApiJson};
use super::{ApiError, AppState};
use crate::authz::{Action, Decision, decide};
use crate::clock::{now_ms, rfc3339};
use crate::secrets::new_token;
use crate::store::{Approval, EdgeRow, EnrollmentTokenRow, NodeRow, ProjectRow};

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

async fn resolve_node(
    state: &AppState,
    caller: &Caller,
    edge: &EdgeRow,
    hostname: &str,
) -> Result<NodeRow, ApiError> {
    let not_found = || {
        ApiError::NotFound(format!(
            "node {hostname:?} not found in edge {:?}",
            edge.name
        ))
    };
    if validate::hostname(hostname).is_err() {
        return Err(not_found());
    }
    let node = state
        .store
        .node_by_hostname(&edge.id, hostname)
        .await?
        .ok_or_else(not_found)?;
    caller.audit.with(|a| a.targets.push(node.hostname.clone()));
    Ok(node)
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

fn node_view(state: &AppState, project: &ProjectRow, edge: &EdgeRow, n: &NodeRow) -> dto::Node {
    let reachable = state.fleet.is_reachable(&n.id);
    dto::Node {
        id: n.id.clone(),
        hostname: n.hostname.clone(),
        edge: edge.name.clone(),
        project: project.name.clone(),
        state: n.state,
        reachable,
        last_seen_at: if reachable {
            Some(rfc3339(now_ms()))
        } else {
            n.last_seen_at.map(rfc3339)
        },
        agent_version: n.agent_version.clone(),
        cert_serial: n.cert_serial.clone(),
        cert_expires_at: n.cert_expires_at.map(rfc3339),
        created_at: rfc3339(n.created_at),
        kube_keys: crate::agents::kube_keys::view(n.kube_keys.as_deref(), n.kube_keys_at),
        labels: n.effective_labels(),
        agent_labels: n.agent_labels.clone(),
        admin_labels: n.labels.clone(),
        agent_labels_pending: n.agent_labels_pending.clone(),
        kube_gateway: dto::NodeKubeGateway {
            granted: n.kube_gateway_granted,
            capable: n.kube_gateway_capable,
        },
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

/// The nodes of an edge, with their state and whether their agent is connected.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{project}/edges/{edge}/nodes",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
        ("edge" = String, Path, description = "Edge name"),
    ),
    responses(
        (status = 200, description = "Nodes, by hostname", body = Vec<dto::Node>),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller, or no such edge in it", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_nodes(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge)): ApiPath<(String, String)>,
) -> Result<Json<Vec<dto::Node>>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ReadProject).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let nodes = state.store.list_nodes(&e.id).await?;
    Ok(Json(
        nodes.iter().map(|n| node_view(&state, &p, &e, n)).collect(),
    ))
}

/// One node of an edge.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{project}/edges/{edge}/nodes/{node}",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
        ("edge" = String, Path, description = "Edge name"),
        ("node" = String, Path, description = "The node's hostname"),
    ),
    responses(
        (status = 200, description = "The node", body = dto::Node),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller, edge, or node", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn get_node(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge, node)): ApiPath<(String, String, String)>,
) -> Result<Json<dto::Node>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ReadProject).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let n = resolve_node(&state, &caller, &e, &node).await?;
    Ok(Json(node_view(&state, &p, &e, &n)))
}

/// Sets a node's labels (replacing those a project admin set before; the
/// agent's own stay, and these win on the same key). Executions select nodes by
/// label with `target_type: selector`.
#[utoipa::path(
    put,
    path = "/api/v1/projects/{project}/edges/{edge}/nodes/{node}/labels",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
        ("edge" = String, Path, description = "Edge name"),
        ("node" = String, Path, description = "The node's hostname"),
    ),
    request_body = dto::SetNodeLabels,
    responses(
        (status = 200, description = "The node as it is now", body = dto::Node),
        (status = 400, description = "A key or value that is not a label, more than 64 labels, malformed JSON or an unknown field", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "The caller's role on the project may not manage it (needs project_admin or org_admin)", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller, edge, or node", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "The database is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn set_node_labels(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge, node)): ApiPath<(String, String, String)>,
    ApiJson(body): ApiJson<dto::SetNodeLabels>,
) -> Result<Json<dto::Node>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let n = resolve_node(&state, &caller, &e, &node).await?;
    postern_api::labels::validate_labels(&body.labels)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    caller.audit.with(|a| {
        a.detail = Some(serde_json::json!({ "node": n.hostname, "labels": body.labels }))
    });
    state.store.set_node_labels(&n.id, &body.labels).await?;
    let n = resolve_node(&state, &caller, &e, &node).await?;
    Ok(Json(node_view(&state, &p, &e, &n)))
}

/// Approves a pending node so it may be used, and the labels its agent
/// reports when they are sent as `labels`: exactly those the approver saw,
/// or nothing changes (409, saying what the agent reports now). Approving an
/// approved node approves the labels it sends, and otherwise changes nothing.
/// The body may be left out (no body and no Content-Type), which is `{}`.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{project}/edges/{edge}/nodes/{node}/approve",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
        ("edge" = String, Path, description = "Edge name"),
        ("node" = String, Path, description = "The node's hostname"),
    ),
    // Optional: without a body, the node is approved and none of its reported labels.
    request_body = Option<dto::ApproveNode>,
    responses(
        (status = 200, description = "The node as it is now", body = dto::Node),
        (status = 400, description = "A key or value that is not a label, malformed JSON or an unknown field", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "The caller's role on the project may not manage it (needs project_admin or org_admin)", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller, edge, or node", body = ErrorBody),
        (status = 409, description = "The node is disabled (enable it instead), changed state meanwhile, or its agent reports other labels than those sent; nothing was changed", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "A body not sent as JSON", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn approve_node(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge, node)): ApiPath<(String, String, String)>,
    OptionalApiJson(body): OptionalApiJson<dto::ApproveNode>,
) -> Result<Json<dto::Node>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let n = resolve_node(&state, &caller, &e, &node).await?;
    if let Some(labels) = &body.labels {
        postern_api::labels::validate_labels(labels)
            .map_err(|e| ApiError::BadRequest(format!("labels: {e}")))?;
    }
    let to = match n.state {
        NodeState::Pending => Some(if state.fleet.is_reachable(&n.id) {
            NodeState::Provisioned
        } else {
            NodeState::Approved
        }),
        NodeState::Disabled => {
            return Err(ApiError::Conflict(format!(
                "node {:?} is disabled; enable it instead of approving it",
                n.hostname
            )));
        }
        NodeState::Approved | NodeState::Provisioned => None,
    };
    caller.audit.with(|a| {
        a.detail =
            Some(json!({ "node": n.hostname, "state": n.state, "agent_labels": body.labels }))
    });
    let outcome = state
        .store
        .approve_node(&n.id, n.state, to, body.labels.as_ref(), now_ms())
        .await?;
    let current = state.store.node(&n.id).await?.ok_or_else(|| {
        ApiError::NotFound(format!("node {:?} was deleted meanwhile", n.hostname))
    })?;
    match outcome {
        Approval::Done => Ok(Json(node_view(&state, &p, &e, &current))),
        Approval::LabelsDiffer => {
            let sent = body.labels.unwrap_or_default();
            let reported = current
                .agent_labels_pending
                .as_ref()
                .unwrap_or(&current.agent_labels);
            Err(ApiError::Conflict(format!(
                "node {:?}'s agent reports the labels {}, not {} as sent: nothing was changed; look at the node again and approve what it reports",
                n.hostname,
                postern_api::labels::joined(reported),
                postern_api::labels::joined(&sent),
            )))
        }
        Approval::Moved => Err(ApiError::Conflict(format!(
            "node {:?} changed meanwhile (it is {} now): nothing was changed; look at it again",
            n.hostname,
            current.state.as_str()
        ))),
    }
}

/// Disables a node: its certificate is refused and its channel is cut until it is enabled.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{project}/edges/{edge}/nodes/{node}/disable",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
        ("edge" = String, Path, description = "Edge name"),
        ("node" = String, Path, description = "The node's hostname"),
    ),
    responses(
        (status = 200, description = "The node as it is now", body = dto::Node),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "The caller's role on the project may not manage it (needs project_admin or org_admin)", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller, edge, or node", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn disable_node(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge, node)): ApiPath<(String, String, String)>,
) -> Result<Json<dto::Node>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let n = resolve_node(&state, &caller, &e, &node).await?;
    state
        .store
        .set_node_state(&n.id, NodeState::Disabled, now_ms())
        .await?;
    // A disabled node loses the Kubernetes gateway role with everything else:
    // enabling it again must not quietly make it a gateway (review 4). A
    // project admin grants it again, audited, if it should serve.
    let gateway_revoked =
        n.kube_gateway_granted && state.store.set_kube_gateway_granted(&n.id, false).await?;
    if gateway_revoked {
        crate::access::gateway_changed(
            &state,
            &crate::access::GatewayChange {
                org_id: p.org_id.clone(),
                edge_id: e.id.clone(),
                node_id: n.id.clone(),
                granted: false,
            },
        )
        .await;
    }
    let cut = state.fleet.disconnect(&n.id).await;
    caller.audit.with(|a| {
        a.detail = Some(json!({ "channel_closed": cut, "kube_gateway_revoked": gateway_revoked }))
    });
    let n = state
        .store
        .node(&n.id)
        .await?
        .ok_or_else(|| ApiError::NotFound("node vanished".into()))?;
    Ok(Json(node_view(&state, &p, &e, &n)))
}

/// Enables a disabled node again (as approved); any other node is left as it
/// is. Its agent's labels stay as approved: whatever it reports once back
/// waits for a project admin, as ever.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{project}/edges/{edge}/nodes/{node}/enable",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
        ("edge" = String, Path, description = "Edge name"),
        ("node" = String, Path, description = "The node's hostname"),
    ),
    responses(
        (status = 200, description = "The node as it is now", body = dto::Node),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "The caller's role on the project may not manage it (needs project_admin or org_admin)", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller, edge, or node", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn enable_node(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge, node)): ApiPath<(String, String, String)>,
) -> Result<Json<dto::Node>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let n = resolve_node(&state, &caller, &e, &node).await?;
    if n.state == NodeState::Disabled {
        state
            .store
            .set_node_state(&n.id, NodeState::Approved, now_ms())
            .await?;
    }
    let n = state
        .store
        .node(&n.id)
        .await?
        .ok_or_else(|| ApiError::NotFound("node vanished".into()))?;
    Ok(Json(node_view(&state, &p, &e, &n)))
}

/// Deletes a node and cuts its channel; it must enroll again to come back.
#[utoipa::path(
    delete,
    path = "/api/v1/projects/{project}/edges/{edge}/nodes/{node}",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
        ("edge" = String, Path, description = "Edge name"),
        ("node" = String, Path, description = "The node's hostname"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "The caller's role on the project may not manage it (needs project_admin or org_admin)", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller, edge, or node", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn delete_node(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge, node)): ApiPath<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let n = resolve_node(&state, &caller, &e, &node).await?;
    // Delete first so a reconnect racing with us is refused at its handshake.
    state.store.delete_node(&n.id).await?;
    let cut = state.fleet.disconnect(&n.id).await;
    caller
        .audit
        .with(|a| a.detail = Some(json!({ "node_id": n.id, "channel_closed": cut })));
    Ok(StatusCode::NO_CONTENT)
}

/// Grants a node its edge's Kubernetes gateway role: kubectl requests to the
/// edge may go to it (when its agent also runs with `--kube-apiserver` and is
/// connected). An agent's own claim never does this. Several nodes may hold
/// the role; each request goes to one of them.
#[utoipa::path(
    put,
    path = "/api/v1/projects/{project}/edges/{edge}/nodes/{node}/kube-gateway",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
        ("edge" = String, Path, description = "Edge name"),
        ("node" = String, Path, description = "The node's hostname"),
    ),
    responses(
        (status = 200, description = "The node as it is now (granting a granted node changes nothing)", body = dto::Node),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "The caller's role on the project may not manage it (needs project_admin or org_admin)", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller, edge, or node", body = ErrorBody),
        (status = 409, description = "The node is pending (approve it first) or disabled (enable it first)", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn grant_kube_gateway(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge, node)): ApiPath<(String, String, String)>,
) -> Result<Json<dto::Node>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let n = resolve_node(&state, &caller, &e, &node).await?;
    // The role carries users' kubectl traffic (Secrets, exec sessions): only a
    // node already let in may hold it. Granting a pending node would also make
    // its approval, perhaps meant for SSH only, silently a gateway's.
    match n.state {
        NodeState::Pending => {
            return Err(ApiError::Conflict(format!(
                "node {:?} is pending; approve it before granting it the Kubernetes gateway role",
                n.hostname
            )));
        }
        NodeState::Disabled => {
            return Err(ApiError::Conflict(format!(
                "node {:?} is disabled; enable it before granting it the Kubernetes gateway role",
                n.hostname
            )));
        }
        NodeState::Approved | NodeState::Provisioned => {}
    }
    let changed = state.store.set_kube_gateway_granted(&n.id, true).await?;
    crate::access::gateway_changed(
        &state,
        &crate::access::GatewayChange {
            org_id: p.org_id.clone(),
            edge_id: e.id.clone(),
            node_id: n.id.clone(),
            granted: true,
        },
    )
    .await;
    caller.audit.with(|a| {
        a.detail = Some(json!({
            "node": n.hostname,
            "node_id": n.id,
            "kube_gateway": "granted",
            "changed": changed,
            "capable": n.kube_gateway_capable,
        }))
    });
    let n = state
        .store
        .node(&n.id)
        .await?
        .ok_or_else(|| ApiError::NotFound("node vanished".into()))?;
    Ok(Json(node_view(&state, &p, &e, &n)))
}

/// Takes a node's Kubernetes gateway role back: no new request goes to it, and
/// what it serves (watches, exec and port-forward streams) ends at once, on
/// every replica. Whatever the node's state; taking back a role the node does
/// not hold changes nothing.
#[utoipa::path(
    delete,
    path = "/api/v1/projects/{project}/edges/{edge}/nodes/{node}/kube-gateway",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
        ("edge" = String, Path, description = "Edge name"),
        ("node" = String, Path, description = "The node's hostname"),
    ),
    responses(
        (status = 200, description = "The node as it is now", body = dto::Node),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "The caller's role on the project may not manage it (needs project_admin or org_admin)", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller, edge, or node", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_kube_gateway(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge, node)): ApiPath<(String, String, String)>,
) -> Result<Json<dto::Node>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let n = resolve_node(&state, &caller, &e, &node).await?;
    let changed = state.store.set_kube_gateway_granted(&n.id, false).await?;
    // Applied even when nothing changed in the store: what this replica still
    // has open on the node ends all the same.
    let cut = crate::access::gateway_changed(
        &state,
        &crate::access::GatewayChange {
            org_id: p.org_id.clone(),
            edge_id: e.id.clone(),
            node_id: n.id.clone(),
            granted: false,
        },
    )
    .await;
    caller.audit.with(|a| {
        a.detail = Some(json!({
            "node": n.hostname,
            "node_id": n.id,
            "kube_gateway": "revoked",
            "changed": changed,
            "kube_requests_cut": cut,
        }))
    });
    let n = state
        .store
        .node(&n.id)
        .await?
        .ok_or_else(|| ApiError::NotFound("node vanished".into()))?;
    Ok(Json(node_view(&state, &p, &e, &n)))
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
    let t = new_token(crate::agents::ENROLL_TOKEN_PREFIX)?;
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
