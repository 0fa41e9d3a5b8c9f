//! The nodes of an edge through the REST API: list and read them, set their
//! labels, approve, disable, enable and delete them, and grant or take back
//! their Kubernetes gateway role. Projects, edges and enrollment tokens are in
//! `admin`.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use postern_api::admin::{self as dto, NodeState};
use postern_api::{ErrorBody, validate};
use serde_json::json;

use super::admin::{resolve_edge, resolve_project};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller, OptionalApiJson};
use super::{ApiError, AppState};
use crate::authz::Action;
use crate::clock::{now_ms, rfc3339};
use crate::store::{Approval, EdgeRow, NodeRow, ProjectRow};

pub(super) async fn resolve_node(
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

/// The nodes of an edge, with their state and whether their agent is
/// connected; searched, filtered by label and paged when asked (the console
/// pages an edge of 10,000 nodes this way).
#[utoipa::path(
    get,
    path = "/api/v1/projects/{project}/edges/{edge}/nodes",
    tag = "admin",
    params(
        ("project" = String, Path, description = "Project name or id"),
        ("edge" = String, Path, description = "Edge name"),
        ("q" = Option<String>, Query, description = "Only hostnames containing this (case-insensitive)"),
        ("label" = Option<String>, Query, description = "Only nodes with this label: key=value, or key"),
        ("limit" = Option<i64>, Query, description = "Nodes in the page, 1 to 1000; default 100 when any query parameter is given, else every node", minimum = 1, maximum = 1000),
        ("offset" = Option<i64>, Query, description = "Matching nodes to skip", minimum = 0),
    ),
    responses(
        (status = 200, description = "Nodes, by hostname", body = Vec<dto::Node>, headers(("X-Total-Count" = i64, description = "Nodes that match, in all"))),
        (status = 400, description = "A limit, offset, search or label out of range", body = ErrorBody),
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
    ApiQuery(q): ApiQuery<dto::NodeListQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let paged = q.q.is_some() || q.label.is_some() || q.limit.is_some() || q.offset.is_some();
    let limit = validate::range("limit", q.limit.unwrap_or(100), 1, dto::MAX_NODE_PAGE)?;
    let offset = validate::range("offset", q.offset.unwrap_or(0), 0, i64::MAX)?;
    let search = q.q.as_deref().unwrap_or_default().to_ascii_lowercase();
    if search.len() > 253 {
        return Err(ApiError::BadRequest("q is longer than 253 bytes".into()));
    }
    let label = match q.label.as_deref() {
        None | Some("") => None,
        Some(l) if l.len() > 400 => {
            return Err(ApiError::BadRequest(
                "label is longer than 400 bytes".into(),
            ));
        }
        Some(l) => Some(match l.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (l.to_string(), None),
        }),
    };
    let p = resolve_project(&state, &caller, &project, Action::ReadProject).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    if paged && label.is_none() {
        // Searched and paged in the store: a page reads its rows only.
        let (total, rows) = state
            .store
            .page_nodes(&e.id, &search, limit, offset)
            .await?;
        let page: Vec<dto::Node> = rows.iter().map(|n| node_view(&state, &p, &e, n)).collect();
        return Ok(([("x-total-count", total.to_string())], Json(page)).into_response());
    }
    let nodes = state.store.list_nodes(&e.id).await?;
    let views = nodes.iter().map(|n| node_view(&state, &p, &e, n));
    if !paged {
        return Ok(Json(views.collect::<Vec<_>>()).into_response());
    }
    // By label: labels are a node's JSON, matched here.
    let matching: Vec<dto::Node> = views
        .filter(|n| search.is_empty() || n.hostname.to_ascii_lowercase().contains(&search))
        .filter(|n| match &label {
            None => true,
            Some((k, want)) => n
                .labels
                .get(k)
                .is_some_and(|v| want.as_ref().is_none_or(|w| w == v)),
        })
        .collect();
    let total = matching.len();
    let page: Vec<dto::Node> = matching
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(limit as usize)
        .collect();
    Ok(([("x-total-count", total.to_string())], Json(page)).into_response())
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
        gateway_changed(&state, &p, &e, &n, false).await;
    }
    let cut = state.fleet.disconnect(&n.id).await;
    caller.audit.with(|a| {
        a.detail = Some(json!({ "channel_closed": cut, "kube_gateway_revoked": gateway_revoked }))
    });
    current_view(&state, &p, &e, &n.id).await
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
    current_view(&state, &p, &e, &n.id).await
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
    gateway_changed(&state, &p, &e, &n, true).await;
    caller.audit.with(|a| {
        a.detail = Some(json!({
            "node": n.hostname,
            "node_id": n.id,
            "kube_gateway": "granted",
            "changed": changed,
            "capable": n.kube_gateway_capable,
        }))
    });
    current_view(&state, &p, &e, &n.id).await
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
    let cut = gateway_changed(&state, &p, &e, &n, false).await;
    caller.audit.with(|a| {
        a.detail = Some(json!({
            "node": n.hostname,
            "node_id": n.id,
            "kube_gateway": "revoked",
            "changed": changed,
            "kube_requests_cut": cut,
        }))
    });
    current_view(&state, &p, &e, &n.id).await
}

/// The node as it is now in the store, as the API shows it: what a change
/// answers once it is done.
async fn current_view(
    state: &AppState,
    project: &ProjectRow,
    edge: &EdgeRow,
    node_id: &str,
) -> Result<Json<dto::Node>, ApiError> {
    let n = state
        .store
        .node(node_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("node vanished".into()))?;
    Ok(Json(node_view(state, project, edge, &n)))
}

/// Publishes a committed change of `node`'s gateway role on the core's access
/// bus (this replica's doors and the others'); answers how many requests it
/// ended here.
async fn gateway_changed(
    state: &AppState,
    project: &ProjectRow,
    edge: &EdgeRow,
    node: &NodeRow,
    granted: bool,
) -> usize {
    state
        .access
        .gateway_changed(&crate::access::GatewayChange {
            org_id: project.org_id.clone(),
            edge_id: edge.id.clone(),
            node_id: node.id.clone(),
            granted,
        })
        .await
}
