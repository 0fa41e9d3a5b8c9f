//! The cmdexec REST API: execute, execution status, history. Paths are fixed by
//! the product and accepted with and without the trailing slash.

use std::collections::HashSet;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use base64::Engine as _;
use http::HeaderMap;
use http::StatusCode;
use postern_api::admin::PageQuery;
use postern_api::cmdexec::{
    self as dto, ContentType, ExecuteRequest, ExecuteResponse, History, MAX_COMMAND_BYTES,
    MAX_TARGETS, Rate, RateValue, TIMEOUT_DEFAULT_SECS, TIMEOUT_MAX_SECS, TIMEOUT_MIN_SECS,
    TargetType,
};
use postern_api::labels::Selector;
use postern_api::{ErrorBody, validate};

use axum::response::Response;

use super::admin::{resolve_edge, resolve_project};
use super::big_answers::json_with_permit;
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::{ApiError, AppState};
use crate::authz::Action;
use crate::clock::rfc3339;
use crate::cmdexec::{Submission, SubmitError};
use crate::store::{
    CLAIM_LEASE_MS, ExecutionPage, ExecutionRow, HistoryRow, IdempotencyClaim, IdempotencyKey,
    ResultRow,
};

fn check_command(req: &ExecuteRequest) -> Result<(), ApiError> {
    if req.command.trim().is_empty() {
        return Err(ApiError::BadRequest("command is empty".into()));
    }
    match req.content_type {
        ContentType::String => {
            if req.command.len() > MAX_COMMAND_BYTES {
                return Err(ApiError::PayloadTooLarge(format!(
                    "command is larger than {MAX_COMMAND_BYTES} bytes"
                )));
            }
            if req.command.contains('\0') {
                return Err(ApiError::BadRequest(
                    "command contains a NUL byte; send binary scripts with content_type base64"
                        .into(),
                ));
            }
        }
        ContentType::Base64 => {
            let script = base64::engine::general_purpose::STANDARD
                .decode(req.command.trim())
                .map_err(|e| {
                    ApiError::BadRequest(format!(
                        "command is not valid base64 (standard alphabet, padded): {e}"
                    ))
                })?;
            if script.len() > MAX_COMMAND_BYTES {
                return Err(ApiError::PayloadTooLarge(format!(
                    "decoded script is {} bytes; at most {MAX_COMMAND_BYTES}",
                    script.len()
                )));
            }
        }
    }
    Ok(())
}

/// Run a command or a whole script on some nodes of an edge, or on all of them.
#[utoipa::path(
    post,
    path = "/cmdexec/v1/projects/{project_id}/edges/{edge_id}/execute/",
    tag = "cmdexec",
    params(
        ("project_id" = String, Path, description = "Project name or id"),
        ("edge_id" = String, Path, description = "Edge name or id"),
        ("Idempotency-Key" = Option<String>, Header, description = "A key of your choosing (a UUID): the same request with the same key within 24 hours returns the first execution (header Idempotent-Replayed: true) instead of running again", pattern = "^[!-~]{1,255}$"),
    ),
    request_body = ExecuteRequest,
    responses(
        (status = 202, description = "Accepted: the exec ID and what was decided at submit", body = ExecuteResponse),
        (status = 409, description = "The first request with this Idempotency-Key is still being submitted (retry), or this request took so long that a later one with the same key took its place (it ran nothing; that one is the execution)", body = ErrorBody),
        (status = 422, description = "This Idempotency-Key was used for a different request", body = ErrorBody),
        (status = 400, description = "Invalid request (unknown node, bad base64, out-of-range timeout or rate, a selector that does not parse or matches no node, a bad Idempotency-Key, ...)", body = ErrorBody),
        (status = 401, description = "Missing or invalid API token", body = ErrorBody),
        (status = 403, description = "Only org admins may execute", body = ErrorBody),
        (status = 404, description = "Project or edge not found", body = ErrorBody),
        (status = 413, description = "Command or body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "Database or audit log unavailable: nothing was run; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn execute(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge)): ApiPath<(String, String)>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ExecuteRequest>,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    let p = resolve_project(&state, &caller, &project, Action::Execute).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let timeout = validate::range(
        "timeout",
        req.timeout.unwrap_or(TIMEOUT_DEFAULT_SECS),
        TIMEOUT_MIN_SECS,
        TIMEOUT_MAX_SECS,
    )?;
    check_command(&req)?;
    let rate = |field, v: &Option<RateValue>, min| {
        v.as_ref()
            .map(|v| Rate::parse(field, v, min))
            .transpose()
            .map_err(|e| ApiError::BadRequest(e.to_string()))
    };
    let max_concurrency = rate("max_concurrency", &req.max_concurrency, 1)?;
    let max_errors = rate("max_errors", &req.max_errors, 0)?;
    let selector = match (req.target_type, &req.selector) {
        (TargetType::Selector, Some(text)) => {
            Some(Selector::parse(text).map_err(|e| ApiError::BadRequest(e.to_string()))?)
        }
        (TargetType::Selector, None) => {
            return Err(ApiError::BadRequest(
                "target_type selector needs selector: a label selector such as role=db,zone in (a,b),!canary".into(),
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::BadRequest(
                "selector is only for target_type selector; leave it out for node and cluster"
                    .into(),
            ));
        }
        (_, None) => None,
    };
    let nodes = match (req.target_type, &req.target) {
        (TargetType::Selector, Some(_)) => {
            return Err(ApiError::BadRequest(
                "target must be absent or null when target_type is selector (the selector picks the nodes)".into(),
            ));
        }
        (TargetType::Selector, None) => {
            let sel = selector
                .as_ref()
                .ok_or_else(|| ApiError::Internal("selector missing after validation".into()))?;
            let picked: Vec<_> = state
                .store
                .list_nodes(&e.id)
                .await?
                .into_iter()
                .filter(|n| sel.matches(&n.effective_labels()))
                .collect();
            if picked.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "selector {:?} matches no node of edge {:?}; nothing was run (see each node's labels in the node list)",
                    sel.to_string(),
                    e.name
                )));
            }
            picked
        }
        (TargetType::Cluster, None) => state.store.list_nodes(&e.id).await?,
        (TargetType::Cluster, Some(_)) => {
            return Err(ApiError::BadRequest(
                "target must be absent or null when target_type is cluster (it means every node of the edge)".into(),
            ));
        }
        (TargetType::Node, None) => {
            return Err(ApiError::BadRequest(
                "target_type node needs target: an array of hostnames".into(),
            ));
        }
        (TargetType::Node, Some(t)) if t.is_empty() || t.len() > MAX_TARGETS => {
            return Err(ApiError::BadRequest(format!(
                "target must list 1 to {MAX_TARGETS} hostnames"
            )));
        }
        (TargetType::Node, Some(t)) => {
            let mut named = Vec::with_capacity(t.len());
            let mut seen = HashSet::new();
            for h in t {
                validate::hostname(h)?;
                if seen.insert(h.as_str()) {
                    named.push(h.as_str());
                }
            }
            // Only the named rows are read, whatever the size of the edge.
            let mut found: std::collections::HashMap<String, crate::store::NodeRow> = state
                .store
                .nodes_by_hostnames(&e.id, &named)
                .await?
                .into_iter()
                .map(|n| (n.hostname.clone(), n))
                .collect();
            let mut unknown = Vec::new();
            let mut picked = Vec::with_capacity(named.len());
            for h in named {
                match found.remove(h) {
                    Some(n) => picked.push(n),
                    None => unknown.push(h.to_string()),
                }
            }
            if !unknown.is_empty() {
                let shown: Vec<String> = unknown
                    .iter()
                    .take(10)
                    .map(|h| postern_api::validate::peer_line(h, 64))
                    .collect();
                return Err(ApiError::BadRequest(format!(
                    "unknown node(s) in edge {:?}: {}{}; nothing was run",
                    e.name,
                    shown.join(", "),
                    if unknown.len() > 10 { " and more" } else { "" }
                )));
            }
            picked
        }
    };
    if nodes.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "edge {:?} has no nodes; nothing to run",
            e.name
        )));
    }
    // A repeated key returns the first execution instead of running again.
    let idem = idempotency_key.as_deref().map(|key| IdempotencyKey {
        org_id: &caller.principal.org_id,
        username: &caller.principal.user_name,
        key,
    });
    let mut claimed = None;
    if let Some(idem) = &idem {
        let sha = request_hash(&p.id, &e.id, &req);
        let exec_id = crate::store::new_id();
        let claim = state
            .store
            .claim_idempotency_key(
                idem,
                &sha,
                &exec_id,
                crate::clock::now_ms(),
                IDEMPOTENCY_TTL_MS,
                CLAIM_LEASE_MS,
            )
            .await?;
        match claim {
            IdempotencyClaim::Claimed => claimed = Some(exec_id),
            IdempotencyClaim::Held {
                request_sha256,
                exec_id,
            } => {
                if request_sha256 != sha {
                    return Err(ApiError::Unprocessable(
                        "this Idempotency-Key was used for a different request in the last 24 hours; use a new key for a new request".into(),
                    ));
                }
                return replay(&state, &caller, &exec_id).await;
            }
        }
    }
    let submission = Submission {
        org_id: caller.principal.org_id.clone(),
        project: p,
        edge: e,
        username: caller.principal.user_name.clone(),
        source_ip: caller.source_ip.clone(),
        command: req.command,
        content_type: req.content_type,
        target_type: req.target_type,
        target: req.target,
        timeout_secs: timeout,
        nodes,
        selector: selector.map(|s| s.to_string()),
        max_concurrency,
        max_errors,
        exec_id: claimed.clone(),
        idempotency_key: claimed.as_ref().and(idempotency_key.clone()),
    };
    // While it submits, the request renews its claim: a retry takes the key
    // over only from a request that is gone, however long this one waits.
    let _renewing = match (&idem, &claimed) {
        (Some(idem), Some(exec_id)) => Some(renew_claim(&state, idem, exec_id)),
        _ => None,
    };
    let submitted = state.cmdexec.submit(submission).await;
    let resp = match submitted {
        Ok(r) => r,
        Err(err) => {
            if let (Some(idem), Some(exec_id)) = (&idem, &claimed) {
                // Nothing was stored or run: the key is free for the retry
                // (unless another request holds it now; that one stays).
                let _ = state.store.release_idempotency_key(idem, exec_id).await;
                caller.audit.with(|a| a.exec_id = Some(exec_id.clone()));
            }
            return Err(match err {
                SubmitError::Store(e) => ApiError::from(e),
                SubmitError::Audit(e) => ApiError::audit_refused(e),
                SubmitError::ClaimLost => ApiError::Conflict(
                    "this request waited so long that a later request with the same Idempotency-Key took its place; this one ran nothing (the later request's execution is the one: send the request again with the key to see it)".into(),
                ),
            });
        }
    };
    caller.audit.with(|a| {
        a.exec_id = Some(resp.exec_id.clone());
        a.targets = resp
            .target_nodes
            .iter()
            .chain(&resp.unreachable_nodes)
            .chain(&resp.unapproved_nodes)
            .cloned()
            .collect();
    });
    Ok((StatusCode::ACCEPTED, Json(resp)).into_response())
}

/// Whether `id` could be an exec ID at all: anything else is not looked up.
pub(super) fn plausible_exec_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The 404 of an execution not in this edge (the ID it names, bounded).
pub(super) fn execution_not_found(exec_id: &str, edge: &str) -> ApiError {
    ApiError::NotFound(format!(
        "execution {:?} not found in edge {edge:?}",
        validate::peer_text(exec_id, 80)
    ))
}

/// How long an Idempotency-Key holds.
const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;
/// How often a request renews its claim while it submits: a few times within
/// the claim's lease, so one slow renewal does not lose it.
const CLAIM_RENEW: std::time::Duration = std::time::Duration::from_secs(5);

/// Renews the claim of `exec_id` on `idem` every [`CLAIM_RENEW`] until the
/// returned guard is dropped (the submit ended, or the request was dropped:
/// then the lease runs out and a retry may take the key) or the bastion shuts
/// down. A renewal that fails is only logged: the claim is checked again, in
/// the transaction that stores the execution.
fn renew_claim(
    state: &AppState,
    idem: &IdempotencyKey<'_>,
    exec_id: &str,
) -> tokio_util::sync::DropGuard {
    let stop = tokio_util::sync::CancellationToken::new();
    let (store, shutdown) = (state.store.clone(), state.shutdown.clone());
    let (org_id, username, key) = (
        idem.org_id.to_string(),
        idem.username.to_string(),
        idem.key.to_string(),
    );
    let exec_id = exec_id.to_string();
    let stopped = stop.clone();
    state.tasks.spawn(async move {
        let idem = IdempotencyKey {
            org_id: &org_id,
            username: &username,
            key: &key,
        };
        loop {
            tokio::select! {
                _ = stopped.cancelled() => return,
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CLAIM_RENEW) => {}
            }
            let renewed = tokio::time::timeout(
                CLAIM_RENEW,
                store.renew_idempotency_claim(&idem, &exec_id, CLAIM_LEASE_MS),
            );
            let renewed = tokio::select! {
                _ = stopped.cancelled() => return,
                r = renewed => r,
            };
            match renewed {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    tracing::warn!(exec_id = %exec_id, "an Idempotency-Key claim was taken over while its request waited; that request will run nothing");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(exec_id = %exec_id, error = %e, "cannot renew an Idempotency-Key claim");
                }
                Err(_) => {
                    tracing::warn!(exec_id = %exec_id, "renewing an Idempotency-Key claim timed out");
                }
            }
        }
    });
    stop.drop_guard()
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let ok =
        |s: &str| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| (0x21..=0x7e).contains(&b));
    match v.to_str() {
        Ok(s) if ok(s) => Ok(Some(s.to_string())),
        _ => Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters without spaces (a UUID is a good key)".into(),
        )),
    }
}

/// What makes two requests the same request: where, and the body as parsed.
fn request_hash(project_id: &str, edge_id: &str, req: &ExecuteRequest) -> String {
    let body = serde_json::to_string(req).unwrap_or_default();
    crate::secrets::sha256_hex(format!("{project_id}\n{edge_id}\n{body}").as_bytes())
}

/// The answer of the first request with this Idempotency-Key, rebuilt from the
/// store. A first request still being submitted is waited for, briefly.
async fn replay(state: &AppState, caller: &Caller, exec_id: &str) -> Result<Response, ApiError> {
    let mut found = None;
    for _ in 0..50 {
        if let Some(x) = state.store.execution_summary(exec_id).await? {
            found = Some(x);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let Some((x, results)) = found else {
        return Err(ApiError::Conflict(
            "a request with this Idempotency-Key is still being submitted; retry in a few seconds"
                .into(),
        ));
    };
    let (mut target_nodes, mut unreachable, mut unapproved) = (vec![], vec![], vec![]);
    for r in results {
        match r.status {
            dto::NodeExecStatus::Unreachable => unreachable.push(r.hostname),
            dto::NodeExecStatus::NotApproved => unapproved.push(r.hostname),
            _ => target_nodes.push(r.hostname),
        }
    }
    caller.audit.with(|a| a.exec_id = Some(x.id.clone()));
    let resp = ExecuteResponse {
        exec_id: x.id,
        submitted_at: rfc3339(x.created_at),
        username: x.username,
        project_id: x.project_name,
        edge_id: x.edge_name,
        timeout: x.timeout_secs,
        target_nodes,
        unreachable_nodes: unreachable,
        unapproved_nodes: unapproved,
        selector: x.selector,
        max_concurrency: x.max_concurrency,
        max_errors: x.max_errors,
    };
    let mut out = (StatusCode::ACCEPTED, Json(resp)).into_response();
    out.headers_mut().insert(
        "idempotent-replayed",
        http::HeaderValue::from_static("true"),
    );
    Ok(out)
}

fn content_type(e: &ExecutionRow) -> ContentType {
    if e.content_type == "base64" {
        ContentType::Base64
    } else {
        ContentType::String
    }
}

fn target_type(e: &ExecutionRow) -> TargetType {
    match e.target_type.as_str() {
        "cluster" => TargetType::Cluster,
        "selector" => TargetType::Selector,
        _ => TargetType::Node,
    }
}

fn node_view(r: ResultRow) -> dto::NodeResult {
    let (stdout, stdout_encoding) = dto::encode_output(r.stdout);
    let (stderr, stderr_encoding) = dto::encode_output(r.stderr);
    dto::NodeResult {
        hostname: r.hostname,
        status: r.status,
        exit_code: r.exit_code.and_then(|c| i32::try_from(c).ok()),
        stdout,
        stdout_encoding,
        stderr,
        stderr_encoding,
        stdout_truncated: r.stdout_truncated,
        stderr_truncated: r.stderr_truncated,
        stdout_bytes: u64::try_from(r.stdout_bytes).unwrap_or(0),
        stderr_bytes: u64::try_from(r.stderr_bytes).unwrap_or(0),
        stdout_sha256: r.stdout_sha256,
        stderr_sha256: r.stderr_sha256,
        error: r.error,
        started_at: r.started_at.map(rfc3339),
        finished_at: r.finished_at.map(rfc3339),
    }
}

fn view(page: ExecutionPage, limit: i64, offset: i64) -> dto::Execution {
    let e = page.execution;
    dto::Execution {
        content_type: content_type(&e),
        target_type: target_type(&e),
        exec_id: e.id,
        project_id: e.project_name,
        edge_id: e.edge_name,
        command: e.command,
        target: e.target,
        username: e.username,
        created_at: rfc3339(e.created_at),
        timeout: e.timeout_secs,
        status: page.counts.overall().to_string(),
        nodes_total: page.counts.total(),
        node_counts: page.counts,
        node_offset: offset,
        node_limit: limit,
        next_node_offset: page.next_offset,
        nodes: page.results.into_iter().map(node_view).collect(),
        selector: e.selector,
        max_concurrency: e.max_concurrency,
        max_errors: e.max_errors,
        cancel_requested_at: e.cancel_requested_at.map(rfc3339),
    }
}

fn summary(h: HistoryRow) -> dto::ExecutionSummary {
    let (e, counts) = (h.execution, h.counts);
    dto::ExecutionSummary {
        command_truncated: h.command_truncated,
        content_type: content_type(&e),
        target_type: target_type(&e),
        exec_id: e.id,
        project_id: e.project_name,
        edge_id: e.edge_name,
        command: e.command,
        target: e.target,
        username: e.username,
        created_at: rfc3339(e.created_at),
        finished_at: e.finished_at.map(rfc3339),
        timeout: e.timeout_secs,
        status: counts.overall().to_string(),
        nodes_total: counts.total(),
        node_counts: counts,
        selector: e.selector,
        max_concurrency: e.max_concurrency,
        max_errors: e.max_errors,
        cancel_requested_at: e.cancel_requested_at.map(rfc3339),
    }
}

/// The execution's overall status and each node's result.
#[utoipa::path(
    get,
    path = "/cmdexec/v1/projects/{project_id}/edges/{edge_id}/execution/{exec_id}/",
    tag = "cmdexec",
    params(
        ("project_id" = String, Path, description = "Project name or id"),
        ("edge_id" = String, Path, description = "Edge name or id"),
        ("exec_id" = String, Path, description = "The exec ID returned by execute"),
        ("node_limit" = Option<i64>, Query, description = "Nodes in this page, 1 to 1000, default 100 (a page ends earlier when its output, as sent, passes 8 MiB)", minimum = 1, maximum = 1000),
        ("node_offset" = Option<i64>, Query, description = "First node of the page, by hostname; default 0", minimum = 0),
    ),
    responses(
        (status = 200, description = "The execution: its status, every node counted by state, and one page of nodes with their output", body = dto::Execution),
        (status = 400, description = "Invalid node_limit or node_offset", body = ErrorBody),
        (status = 401, description = "Missing or invalid API token", body = ErrorBody),
        (status = 404, description = "Project, edge or execution not found", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn execution(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge, exec_id)): ApiPath<(String, String, String)>,
    ApiQuery(q): ApiQuery<dto::NodePageQuery>,
) -> Result<Response, ApiError> {
    let (limit, offset) = q.bounds()?;
    let p = resolve_project(&state, &caller, &project, Action::ReadProject).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let not_found = || execution_not_found(&exec_id, &e.name);
    if !plausible_exec_id(&exec_id) {
        return Err(not_found());
    }
    // Held from the read until the answer has been sent.
    let permit = state
        .big_answers
        .acquire(caller.source_ip.as_deref().and_then(|s| s.parse().ok()))?;
    let page = state
        .store
        .execution_page(&exec_id, limit, offset, dto::PAGE_OUTPUT_BUDGET)
        .await?
        .ok_or_else(not_found)?;
    if page.execution.project_id != p.id || page.execution.edge_id != e.id {
        return Err(not_found());
    }
    caller
        .audit
        .with(|a| a.exec_id = Some(page.execution.id.clone()));
    Ok(json_with_permit(&view(page, limit, offset), permit))
}

/// Past executions of a project, newest first, each with its nodes counted by
/// state; each node's output is in the execution.
#[utoipa::path(
    get,
    path = "/cmdexec/v1/projects/{project_id}/history/",
    tag = "cmdexec",
    params(
        ("project_id" = String, Path, description = "Project name or id"),
        ("limit" = Option<i64>, Query, description = "1 to 100, default 10", minimum = 1, maximum = 100),
        ("offset" = Option<i64>, Query, description = "Default 0", minimum = 0),
    ),
    responses(
        (status = 200, description = "A page of executions", body = History),
        (status = 400, description = "Invalid limit or offset", body = ErrorBody),
        (status = 401, description = "Missing or invalid API token", body = ErrorBody),
        (status = 404, description = "Project not found", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<History>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ReadProject).await?;
    let (limit, offset) = q.bounds()?;
    let (total, rows) = state.store.history(&p.id, limit, offset).await?;
    Ok(Json(History {
        total,
        limit,
        offset,
        executions: rows.into_iter().map(summary).collect(),
    }))
}
