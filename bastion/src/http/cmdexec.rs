//! The cmdexec REST API: execute, execution status, history. Paths are fixed by
//! the product and accepted with and without the trailing slash.

use std::collections::HashSet;

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use http::StatusCode;
use postern_api::admin::PageQuery;
use postern_api::cmdexec::{
    self as dto, ContentType, ExecuteRequest, ExecuteResponse, History, MAX_COMMAND_BYTES,
    MAX_TARGETS, TIMEOUT_DEFAULT_SECS, TIMEOUT_MAX_SECS, TIMEOUT_MIN_SECS, TargetType,
};
use postern_api::{ErrorBody, validate};

use axum::response::Response;

use super::admin::{resolve_edge, resolve_project};
use super::big_answers::json_with_permit;
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::{ApiError, AppState};
use crate::authz::Action;
use crate::clock::rfc3339;
use crate::cmdexec::{Submission, SubmitError};
use crate::store::{ExecutionPage, ExecutionRow, HistoryRow, ResultRow};

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
    ),
    request_body = ExecuteRequest,
    responses(
        (status = 202, description = "Accepted: the exec ID and what was decided at submit", body = ExecuteResponse),
        (status = 400, description = "Invalid request (unknown node, bad base64, out-of-range timeout, ...)", body = ErrorBody),
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
    ApiJson(req): ApiJson<ExecuteRequest>,
) -> Result<(StatusCode, Json<ExecuteResponse>), ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::Execute).await?;
    let e = resolve_edge(&state, &p, &edge).await?;
    let timeout = validate::range(
        "timeout",
        req.timeout.unwrap_or(TIMEOUT_DEFAULT_SECS),
        TIMEOUT_MIN_SECS,
        TIMEOUT_MAX_SECS,
    )?;
    check_command(&req)?;
    let all = state.store.list_nodes(&e.id).await?;
    let nodes = match (req.target_type, &req.target) {
        (TargetType::Cluster, None) => all,
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
            let mut seen = HashSet::new();
            let mut unknown = Vec::new();
            let mut picked = Vec::new();
            for h in t {
                validate::hostname(h)?;
                if !seen.insert(h.as_str()) {
                    continue;
                }
                match all.iter().find(|n| &n.hostname == h) {
                    Some(n) => picked.push(n.clone()),
                    None => unknown.push(h.clone()),
                }
            }
            if !unknown.is_empty() {
                let shown: Vec<_> = unknown.iter().take(10).collect();
                return Err(ApiError::BadRequest(format!(
                    "unknown node(s) in edge {:?}: {shown:?}{}; nothing was run",
                    e.name,
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
    };
    let resp = state
        .cmdexec
        .submit(&state, submission)
        .await
        .map_err(|e| match e {
            SubmitError::Store(e) => ApiError::from(e),
            SubmitError::Audit(e) => ApiError::audit_refused(e),
        })?;
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
    Ok((StatusCode::ACCEPTED, Json(resp)))
}

fn content_type(e: &ExecutionRow) -> ContentType {
    if e.content_type == "base64" {
        ContentType::Base64
    } else {
        ContentType::String
    }
}

fn target_type(e: &ExecutionRow) -> TargetType {
    if e.target_type == "cluster" {
        TargetType::Cluster
    } else {
        TargetType::Node
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
    let not_found = || {
        ApiError::NotFound(format!(
            "execution {exec_id:?} not found in edge {:?}",
            e.name
        ))
    };
    if exec_id.len() > 64
        || !exec_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
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
