//! Recordings through the REST API: a project's recording policy, the list of
//! recorded (and relayed, unrecorded) sessions, one's metadata and segments,
//! its cast (asciicast v2, with HTTP Range), and its deletion (org admins,
//! audited).
//!
//! A caller sees the recordings of the projects they may read, and nothing of
//! the others: another project's recording reads as one that does not exist.
//! The cast is streamed a few segments at a time, so serving a 100 MiB
//! recording holds a few hundred KiB; a segment that cannot be read is served
//! as a marker of the same length, and the rest of the recording still plays.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use postern_api::ErrorBody;
use postern_api::recordings::{
    NOT_RECORDED, RETENTION_DAYS_MAX, RecordingPage, RecordingPolicy, RecordingQuery,
    RecordingRetention, RecordingView, Segment, SegmentList,
};
use serde_json::json;

mod cast;
mod live;

pub use cast::{__path_cast, cast};
pub use live::{__path_live, live};

use super::admin::{plain_id, require, resolve_project};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::{ApiError, AppState};
use crate::authz::Action;
use crate::clock::{now_ms, rfc3339};
use crate::store::{RecordingFilter, RecordingRow};

/// Segments read from the store at once while streaming a cast.
const SEGMENTS_PER_READ: i64 = 8;
/// No segment the bastion writes inflates past this.
const SEGMENT_MAX: usize = 4 * crate::recording::SEGMENT_BYTES;

/// The project's recording policy (its default when none was set).
#[utoipa::path(
    get,
    path = "/api/v1/projects/{project}/recording-policy",
    tag = "recordings",
    params(("project" = String, Path, description = "Project name or id")),
    responses(
        (status = 200, description = "The policy", body = RecordingPolicy),
        (status = 401, description = "Missing, invalid, expired or revoked credential", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
) -> Result<Json<RecordingPolicy>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ReadProject).await?;
    Ok(Json(
        state
            .store
            .recording_policy(&p.id)
            .await?
            .unwrap_or_default(),
    ))
}

/// Sets the project's recording policy (project admins). It applies to
/// sessions opened from now on; a `strict` level also refuses `ssh -J` to the
/// nodes and roles it covers.
#[utoipa::path(
    put,
    path = "/api/v1/projects/{project}/recording-policy",
    tag = "recordings",
    params(("project" = String, Path, description = "Project name or id")),
    request_body = RecordingPolicy,
    responses(
        (status = 200, description = "The policy now in force", body = RecordingPolicy),
        (status = 400, description = "Malformed JSON, an unknown field or level, a selector that does not parse, or too many rules", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked credential", body = ErrorBody),
        (status = 403, description = "Only a project admin may set it", body = ErrorBody),
        (status = 413, description = "The body is larger than the API takes", body = ErrorBody),
        (status = 415, description = "The body is not JSON (Content-Type: application/json)", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiJson(policy): ApiJson<RecordingPolicy>,
) -> Result<Json<RecordingPolicy>, ApiError> {
    let p = resolve_project(&state, &caller, &project, Action::ManageProject).await?;
    policy.validate().map_err(ApiError::BadRequest)?;
    state
        .store
        .set_recording_policy(&p.id, &policy, now_ms())
        .await?;
    caller
        .audit
        .with(|a| a.detail = Some(json!({ "recording_policy": policy })));
    Ok(Json(policy))
}

/// Whose recordings the caller may see: an org admin the org's, a project
/// admin their projects', anyone else only their own (a project role lets one
/// work on its nodes, not watch everyone else's root shells there).
struct Visible {
    /// `None`: the whole org.
    all_of: Option<Vec<String>>,
    own_in: Vec<String>,
}

fn visible(caller: &Caller) -> Visible {
    use postern_api::admin::Role;
    if caller.principal.is_org_admin() {
        return Visible {
            all_of: None,
            own_in: Vec::new(),
        };
    }
    let (mut all_of, mut own_in) = (Vec::new(), Vec::new());
    for b in &caller.principal.bindings {
        if let Some(p) = &b.project_id {
            if b.role == Role::ProjectAdmin {
                all_of.push(p.clone());
            } else {
                own_in.push(p.clone());
            }
        }
    }
    Visible {
        all_of: Some(all_of),
        own_in,
    }
}

impl Visible {
    fn may_see(&self, caller: &Caller, r: &RecordingRow) -> bool {
        match &self.all_of {
            None => true,
            Some(ps) => {
                ps.contains(&r.project_id)
                    || (self.own_in.contains(&r.project_id)
                        && r.user_id == caller.principal.user_id)
            }
        }
    }
}

async fn view(state: &AppState, r: &RecordingRow) -> RecordingView {
    let project = match state.store.project_by_id(&r.project_id).await {
        Ok(Some(p)) => p.name,
        _ => r.project_id.clone(),
    };
    let relay = r.kind == "jump";
    RecordingView {
        id: r.id.clone(),
        project,
        node: r.hostname.clone(),
        node_id: r.node_id.clone(),
        user: r.user_name.clone(),
        login: r.login.clone(),
        mode: if relay { "relay" } else { "terminate" }.into(),
        kind: r.kind.clone(),
        pod: r.pod.clone(),
        command: r.command.clone(),
        policy: if relay {
            NOT_RECORDED.into()
        } else {
            r.policy.clone()
        },
        status: r.status.clone(),
        started_at: rfc3339(r.started_at),
        ended_at: r.ended_at.map(rfc3339),
        width: r.width.clamp(0, u32::MAX as i64) as u32,
        height: r.height.clamp(0, u32::MAX as i64) as u32,
        chunks: r.chunks,
        cast_bytes: r.cast_bytes,
        stored_bytes: r.stored_bytes,
        gaps: r.gaps,
        last_hash: r.last_hash.clone(),
    }
}

/// Recorded and relayed SSH sessions the caller may see, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/recordings",
    tag = "recordings",
    params(
        ("limit" = Option<i64>, Query, description = "Sessions in the page, 1 to 100; default 10", minimum = 1, maximum = 100),
        ("offset" = Option<i64>, Query, description = "Sessions to skip; default 0", minimum = 0),
        ("user" = Option<String>, Query, description = "Only this user's sessions", min_length = 1, max_length = 253),
        ("node" = Option<String>, Query, description = "Only sessions on the node with this hostname", min_length = 1, max_length = 253),
        ("project" = Option<String>, Query, description = "Only sessions in this project", min_length = 1, max_length = 253),
        ("mode" = Option<String>, Query, description = "`terminate` (recorded) or `relay` (metadata only)", pattern = "^(terminate|relay)$"),
        ("since" = Option<String>, Query, description = "Only sessions started at or after this time (RFC 3339, e.g. 2026-11-30T12:00:00Z)"),
        ("until" = Option<String>, Query, description = "Only sessions started before this time (RFC 3339)"),
    ),
    responses(
        (status = 200, description = "A page of sessions", body = RecordingPage),
        (status = 400, description = "limit or offset out of range, a filter that is not valid, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked credential", body = ErrorBody),
        (status = 404, description = "The project filter names no project the caller may read", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RecordingQuery>,
) -> Result<Json<RecordingPage>, ApiError> {
    let (limit, offset) = q.bounds()?;
    let (since_ms, until_ms) = q.times().map_err(ApiError::BadRequest)?;
    let name = |field: &str, v: &Option<String>| -> Result<Option<String>, ApiError> {
        match v {
            Some(s) if s.is_empty() || s.len() > 253 || s.chars().any(char::is_control) => Err(
                ApiError::BadRequest(format!("{field} must be 1 to 253 printable characters")),
            ),
            other => Ok(other.clone()),
        }
    };
    let relay = match q.mode.as_deref() {
        None => None,
        Some("relay") => Some(true),
        Some("terminate") => Some(false),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "mode must be relay or terminate".into(),
            ));
        }
    };
    let mut v = visible(&caller);
    if let Some(p) = name("project", &q.project)? {
        let p = resolve_project(&state, &caller, &p, Action::ReadProject).await?;
        let all = v.all_of.as_ref().is_none_or(|ps| ps.contains(&p.id));
        v = Visible {
            all_of: Some(if all { vec![p.id.clone()] } else { Vec::new() }),
            own_in: if all { Vec::new() } else { vec![p.id] },
        };
    }
    let f = RecordingFilter {
        org_id: caller.principal.org_id.clone(),
        projects: v.all_of,
        own_projects: v.own_in,
        own_user_id: caller.principal.user_id.clone(),
        user: name("user", &q.user)?,
        hostname: name("node", &q.node)?,
        relay,
        since_ms,
        until_ms,
    };
    let (total, rows) = state.store.list_recordings(&f, limit, offset).await?;
    let mut recordings = Vec::with_capacity(rows.len());
    for r in &rows {
        recordings.push(view(&state, r).await);
    }
    Ok(Json(RecordingPage {
        total,
        limit,
        offset,
        recordings,
    }))
}

/// The recording, if the caller may see it; else the same 404 as for none.
async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<RecordingRow, ApiError> {
    let missing = || ApiError::NotFound(format!("recording {id:?} not found"));
    if !plain_id(id) {
        return Err(missing());
    }
    let r = state.store.recording(id).await?.ok_or_else(missing)?;
    let may = r.org_id == caller.principal.org_id && visible(caller).may_see(caller, &r);
    if !may {
        return Err(missing());
    }
    caller
        .audit
        .with(|a| a.targets.push(format!("recording:{id}")));
    Ok(r)
}

/// One recording's metadata.
#[utoipa::path(
    get,
    path = "/api/v1/recordings/{id}",
    tag = "recordings",
    params(("id" = String, Path, description = "The recording's id")),
    responses(
        (status = 200, description = "The recording", body = RecordingView),
        (status = 401, description = "Missing, invalid, expired or revoked credential", body = ErrorBody),
        (status = 404, description = "No such recording visible to the caller", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RecordingView>, ApiError> {
    let r = find(&state, &caller, &id).await?;
    Ok(Json(view(&state, &r).await))
}

/// A recording's segments: where each lies in the cast, and the chained
/// SHA-256 that `postern recording verify` checks against the audit log.
#[utoipa::path(
    get,
    path = "/api/v1/recordings/{id}/segments",
    tag = "recordings",
    params(("id" = String, Path, description = "The recording's id")),
    responses(
        (status = 200, description = "The segments, in order", body = SegmentList),
        (status = 401, description = "Missing, invalid, expired or revoked credential", body = ErrorBody),
        (status = 404, description = "No such recording visible to the caller", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn segments(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SegmentList>, ApiError> {
    let r = find(&state, &caller, &id).await?;
    let rows = state
        .store
        .recording_chunks(&r.id, 0, r.chunks, false)
        .await?;
    Ok(Json(SegmentList {
        recording: r.id,
        segments: rows
            .into_iter()
            .map(|c| Segment {
                seq: c.seq,
                offset: c.offset,
                length: c.raw_len,
                at_ms: c.at_ms,
                sha256: c.sha256,
            })
            .collect(),
    }))
}

/// How long the caller's org keeps recordings (org admins).
#[utoipa::path(
    get,
    path = "/api/v1/org/recording-retention",
    tag = "recordings",
    responses(
        (status = 200, description = "The retention", body = RecordingRetention),
        (status = 401, description = "Missing, invalid, expired or revoked credential", body = ErrorBody),
        (status = 403, description = "Only an org admin", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_retention(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<RecordingRetention>, ApiError> {
    require(&caller, Action::ManageOrg)?;
    let p = state.store.org_policy(&caller.principal.org_id).await?;
    Ok(Json(RecordingRetention {
        days: p.recording_retention_days,
    }))
}

/// Sets how long the caller's org keeps recordings: every replica deletes,
/// and audits, what ended longer ago (org admins).
#[utoipa::path(
    put,
    path = "/api/v1/org/recording-retention",
    tag = "recordings",
    request_body = RecordingRetention,
    responses(
        (status = 200, description = "Set", body = RecordingRetention),
        (status = 400, description = "days outside 0 to 3650, or a field that is not known", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked credential", body = ErrorBody),
        (status = 403, description = "Only an org admin", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_retention(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RecordingRetention>,
) -> Result<Json<RecordingRetention>, ApiError> {
    require(&caller, Action::ManageOrg)?;
    let days = postern_api::validate::range("days", body.days, 0, RETENTION_DAYS_MAX)?;
    state
        .store
        .set_recording_retention(&caller.principal.org_id, days, now_ms())
        .await?;
    caller
        .audit
        .with(|a| a.detail = Some(json!({ "recording_retention_days": days })));
    Ok(Json(RecordingRetention { days }))
}

/// Deletes a recording (org admins; audited with who and which).
#[utoipa::path(
    delete,
    path = "/api/v1/recordings/{id}",
    tag = "recordings",
    params(("id" = String, Path, description = "The recording's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing, invalid, expired or revoked credential", body = ErrorBody),
        (status = 403, description = "Only an org admin may delete recordings", body = ErrorBody),
        (status = 404, description = "No such recording visible to the caller", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let r = find(&state, &caller, &id).await?;
    require(&caller, Action::ManageOrg)?;
    state.store.delete_recording(&r.id).await?;
    caller.audit.with(|a| {
        a.detail = Some(json!({
            "recording": r.id, "user": r.user_name, "node": r.hostname,
            "started_at": rfc3339(r.started_at), "last_hash": r.last_hash,
        }))
    });
    Ok(StatusCode::NO_CONTENT)
}
