//! Watching a session live, read-only: the cast so far, then each segment as
//! the recorder stores it (at most a second behind the session), until the
//! session ends. For org admins and the project's admins only: a project
//! member may play their own recordings, not look over a colleague's shoulder.
//!
//! The watch reads the store, not the recorder, so it works from any replica,
//! whichever one terminates the session. It holds one of the bastion's live
//! stream places (per user, per org and in all, shared with execution event
//! streams), is cut when the watcher's access goes, and a watcher that takes
//! nothing for the stall deadline loses its watch, never the session.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::header;
use postern_api::ErrorBody;
use postern_api::admin::Role;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::super::exec_events::Holder;
use super::super::extract::{ApiPath, Caller};
use super::super::{ApiError, AppState};
use super::cast::{in_order, segment_bytes};
use super::{SEGMENTS_PER_READ, find};

/// How often the watch looks for segments (the recorder stores one at least
/// every second while there is output).
const POLL: Duration = Duration::from_millis(250);
/// Segments queued between the watch's task and its response body.
const QUEUE: usize = 4;
/// A store that does not answer within this ends the watch (the watcher
/// starts again), rather than holding its place.
const READ_WITHIN: Duration = Duration::from_secs(10);

/// How often an open watch checks that its watcher may still watch.
const RECHECK: Duration = Duration::from_secs(5);

/// Whether `p` may watch a session of `project_id` live: an org admin, or an
/// admin of that project.
fn may_watch(p: &crate::authz::Principal, project_id: &str) -> bool {
    p.is_org_admin()
        || p.bindings
            .iter()
            .any(|b| b.role == Role::ProjectAdmin && b.project_id.as_deref() == Some(project_id))
}

/// A session as it happens: the cast so far, then what the session shows
/// as it is stored, ending with the session.
#[utoipa::path(
    get,
    path = "/api/v1/recordings/{id}/live",
    tag = "recordings",
    params(("id" = String, Path, description = "The recording's id")),
    responses(
        (status = 200, description = "The cast (asciicast v2) so far, then each stored segment as it comes, at most a second or so behind the session; the answer ends when the session does. A watcher that takes nothing for 30 s (`--exec-stream-stall`) is disconnected.", content_type = "application/x-asciicast"),
        (status = 401, description = "Missing, invalid, expired or revoked credential", body = ErrorBody),
        (status = 403, description = "Only org admins and the project's admins may watch a session live", body = ErrorBody),
        (status = 404, description = "No such recording visible to the caller, or a session through ssh -J (not recorded)", body = ErrorBody),
        (status = 429, description = "Too many live streams open: by you, by your organization (its share of the bastion's) or on the bastion", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn live(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: http::HeaderMap,
) -> Result<Response, ApiError> {
    let r = find(&state, &caller, &id).await?;
    if r.kind == "jump" {
        return Err(ApiError::NotFound(format!(
            "session {id} went through ssh -J and was not recorded (it is encrypted end to end)"
        )));
    }
    if !may_watch(&caller.principal, &r.project_id) {
        return Err(ApiError::Forbidden(
            "only org admins and the project's admins may watch a session live; play the recording when the session has ended (postern play ID)".into(),
        ));
    }
    let mut permit = state
        .exec_streams
        .acquire(&caller.principal.org_id, &caller.principal.user_name)?;
    let cut = CancellationToken::new();
    permit.register(
        &state.exec_streams,
        Holder {
            user_id: caller.principal.user_id.clone(),
            credential_id: caller.credential.id.clone(),
            project_id: r.project_id.clone(),
            cut: cut.clone(),
        },
    );
    caller.audit.with(|a| {
        a.detail = Some(serde_json::json!({
            "recording": r.id, "user": r.user_name, "node": r.hostname, "live": r.status == "live",
        }))
    });
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(QUEUE);
    let watch = Watch {
        state: state.clone(),
        id: r.id,
        project_id: r.project_id,
        authorization: super::super::exec_events::credential_of(&caller, &headers),
        source: caller.source_ip.as_deref().and_then(|s| s.parse().ok()),
        next: 0,
        tx,
        cut: cut.clone(),
        stall: state.settings.exec_stream_stall,
    };
    let shutdown = state.shutdown.clone();
    state.tasks.spawn(async move {
        let _permit = permit;
        tokio::select! {
            _ = watch.run() => {}
            _ = shutdown.cancelled() => {}
        }
    });
    // A cut (access gone, a stalled watcher, shutdown) breaks the answer with
    // an error rather than ending it, so a player never takes it for the
    // session's end; the session's end is the task's sender going away.
    let stream = futures_util::stream::unfold(Some((rx, cut)), |state| async move {
        let (mut rx, cut) = state?;
        tokio::select! {
            biased;
            _ = cut.cancelled() => Some((
                Err(std::io::Error::other("the live watch was ended (access, a stall or shutdown); watch again")),
                None,
            )),
            seg = rx.recv() => seg.map(|seg| (seg, Some((rx, cut)))),
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-asciicast")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// One watch's task: reads the recording's segments from the store as they
/// are written and queues them for the body.
struct Watch {
    state: AppState,
    id: String,
    project_id: String,
    /// The watcher's credential and address, checked again every [`RECHECK`].
    authorization: Option<String>,
    source: Option<std::net::IpAddr>,
    /// The next segment to send.
    next: i64,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    cut: CancellationToken,
    stall: Duration,
}

impl Watch {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cut.cancelled() => return,
                // The watcher went away: its place is given back now, not at
                // the next segment (an idle session may have none for hours).
                _ = self.tx.closed() => return,
                _ = recheck.tick() => {
                    if !self.still_allowed().await {
                        tracing::info!(recording = %self.id, "ending a live watch whose watcher may no longer watch it");
                        self.cut.cancel();
                        return;
                    }
                    continue;
                }
                _ = tick.tick() => {}
            }
            match self.poll().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(why) => {
                    // Not the session's end: the watcher's answer breaks, so a
                    // player does not take it for one.
                    let _ = tokio::time::timeout(
                        self.stall,
                        self.tx.send(Err(std::io::Error::other(why))),
                    )
                    .await;
                    return;
                }
            }
        }
    }

    /// Whether the watcher's credential still holds and still makes them an
    /// admin of the session's project (a store that does not answer: no).
    async fn still_allowed(&self) -> bool {
        super::super::exec_events::still_holds(
            &self.state,
            self.authorization.as_deref(),
            self.source,
            |p| std::future::ready(may_watch(&p, &self.project_id)),
        )
        .await
    }

    /// Sends what was stored since the last poll. `Ok(false)`: the session
    /// has ended and all of it was sent (or the watcher stopped taking it).
    async fn poll(&mut self) -> Result<bool, &'static str> {
        // Whether the session had ended before this read: then what the read
        // finds is all there will be.
        let ended =
            match tokio::time::timeout(READ_WITHIN, self.state.store.recording(&self.id)).await {
                Ok(Ok(Some(r))) => r.status != "live",
                Ok(Ok(None)) => return Err("the recording was deleted"),
                _ => return Err("the store did not answer; watch again"),
            };
        loop {
            let rows = match tokio::time::timeout(
                READ_WITHIN,
                self.state
                    .store
                    .recording_chunks(&self.id, self.next, SEGMENTS_PER_READ, true),
            )
            .await
            {
                Ok(Ok(rows)) => rows,
                _ => return Err("the store did not answer; watch again"),
            };
            let full = rows.len() as i64 == SEGMENTS_PER_READ;
            for c in &rows {
                if !in_order(c, self.next) {
                    tracing::error!(recording = %self.id, seq = c.seq, "a recording segment's metadata is corrupt; the live watch ends before it");
                    return Err("a segment of the recording is damaged");
                }
                self.next = c.seq + 1;
                let seg = segment_bytes(&self.id, c);
                // A watcher that takes nothing loses its watch after the
                // stall deadline; the session goes on regardless.
                match tokio::time::timeout(self.stall, self.tx.send(Ok(seg))).await {
                    Ok(Ok(())) => {}
                    _ => {
                        self.cut.cancel();
                        return Ok(false);
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(!ended)
    }
}
