//! Live executions: the server-sent event stream of an execution (replayed
//! from the store, then followed as the store grows) and its cancel.
//!
//! A stream reads the store a page at a time and only as its client takes the
//! previous events (a few queued ahead), so a slow or paused reader costs the
//! bastion one page of memory and never holds up the nodes, the writer or
//! other readers. A
//! reader more than a page behind is told it `lagged` and catches up from the
//! store; nothing is dropped. The store is the one source for every replica:
//! this replica's commits wake its readers at once, another's are found within
//! a second.
//!
//! Each stream is fed by its own task through a small bounded queue, so what
//! ends a stream does not wait for its client to read: the reader's access is
//! checked again on a timer, and a client that takes no event for
//! `exec_stream_stall` (it stopped reading; its events wait in the queue) is
//! dropped, and gives its place back. It resumes with `Last-Event-ID`.
//!
//! Places are bounded three ways: per user, per org (its share, so one tenant
//! creating users cannot take every stream from the others) and in all.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use postern_api::ErrorBody;
use postern_api::cmdexec::{CancelResponse, ExecEvent, ExecEventFrame};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::admin::{resolve_edge, resolve_project};
use super::extract::{ApiPath, Caller};
use super::{ApiError, AppState};
use crate::audit::Event;
use crate::authz::Action;
use crate::clock::now_ms;
use crate::limits::{KeyGuard, PerKey};
use crate::store::{ExecutionRow, StoredEvent};

/// Live streams open at once: for the bastion, for one user, and by default
/// for one org (its share of the bastion's: a quarter, so a tenant filling its
/// share leaves the rest to the others).
pub const STREAMS_GLOBAL: usize = crate::limits::EXEC_STREAMS_GLOBAL;
pub const STREAMS_PER_USER: usize = 8;
pub const STREAMS_PER_ORG: usize = crate::limits::EXEC_STREAMS_PER_ORG;
/// By default, a stream whose client takes no event for this long is ended.
pub const STALL: Duration = crate::limits::EXEC_STREAM_STALL;
/// Events read from the store at a time: a reader holds at most this many.
const PAGE: i64 = 32;
/// Events queued between a stream's task and its response body.
const QUEUE: usize = 8;
/// How often a stream looks for events another replica committed.
const POLL: Duration = Duration::from_secs(1);
/// How long the check of a reader's access may take; beyond it the stream
/// ends (the client resumes once the store answers again).
const RECHECK_WITHIN: Duration = Duration::from_secs(10);

/// Permits for live streams: a global limit, one per org and one per user, so
/// that neither one user nor one tenant can take every stream from the rest.
#[derive(Debug)]
pub struct StreamPermits {
    global: Arc<Semaphore>,
    per_org: PerKey<String>,
    per_org_max: usize,
    /// By (org, user name): names are unique within an org only.
    per_user: PerKey<(String, String)>,
    /// The streams open, by whom and under which credential, so that taking
    /// access away (`crate::access`) cuts them at once, not at the next
    /// recheck.
    open: Arc<std::sync::Mutex<HashMap<u64, Holder>>>,
    next: std::sync::atomic::AtomicU64,
}

/// Who holds an open stream, and how to cut it.
#[derive(Debug)]
pub(crate) struct Holder {
    pub user_id: String,
    pub credential_id: String,
    pub project_id: String,
    pub cut: CancellationToken,
}

/// Takes a stream off [`StreamPermits::open`] when it ends.
#[derive(Debug)]
struct Registered {
    id: u64,
    open: Arc<std::sync::Mutex<HashMap<u64, Holder>>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Default for StreamPermits {
    fn default() -> Self {
        StreamPermits::new(STREAMS_PER_ORG)
    }
}

/// Held for as long as one stream is open.
#[derive(Debug)]
pub struct StreamPermit {
    _registered: Option<Registered>,
    _user: KeyGuard<(String, String)>,
    _org: KeyGuard<String>,
    _global: OwnedSemaphorePermit,
}

impl StreamPermit {
    /// Registers the stream this permit holds, so an access change cuts it
    /// (see [`StreamPermits::cut`]).
    pub(crate) fn register(&mut self, permits: &StreamPermits, holder: Holder) {
        self._registered = Some(permits.register(holder));
    }
}

impl StreamPermits {
    /// `per_org`: the streams one org may hold at once (at most all of them).
    pub fn new(per_org: usize) -> StreamPermits {
        let per_org_max = per_org.clamp(1, STREAMS_GLOBAL);
        StreamPermits {
            global: Arc::new(Semaphore::new(STREAMS_GLOBAL)),
            per_org: PerKey::new(per_org_max),
            per_org_max,
            per_user: PerKey::new(STREAMS_PER_USER),
            open: Arc::default(),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Cuts the open streams that `change` no longer allows: those held
    /// under a revoked token or an ended session, all of a deleted or
    /// disabled user's, and those into a project whose role changed (the
    /// client resumes, and is authorized afresh). Answers how many.
    pub fn cut(&self, change: &crate::access::AccessChange) -> usize {
        use crate::access::Change;
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for h in open.values().filter(|h| h.user_id == change.user_id) {
            let hit = match &change.what {
                Change::UserDeleted | Change::Unknown => true,
                Change::TokenRevoked { token_id } => &h.credential_id == token_id,
                Change::SessionEnded { session_id, .. } => &h.credential_id == session_id,
                Change::RoleChanged { project_id: None } => true,
                Change::RoleChanged {
                    project_id: Some(p),
                } => &h.project_id == p,
                Change::KeyDeleted { .. } => false,
            };
            if hit && !h.cut.is_cancelled() {
                h.cut.cancel();
                n += 1;
            }
        }
        n
    }

    /// Registers an open stream (see [`StreamPermits::cut`]).
    fn register(&self, holder: Holder) -> Registered {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, holder);
        Registered {
            id,
            open: self.open.clone(),
        }
    }

    pub fn acquire(&self, org_id: &str, user: &str) -> Result<StreamPermit, ApiError> {
        let user = self
            .per_user
            .admit((org_id.to_string(), user.to_string()))
            .ok_or_else(|| {
                ApiError::TooManyRequests(format!(
                    "you have {STREAMS_PER_USER} live streams (execution events, session watches) open already; close one first"
                ))
            })?;
        let org = self.per_org.admit(org_id.to_string()).ok_or_else(|| {
            ApiError::TooManyRequests(format!(
                "your organization has {} live streams (execution events, session watches) open on this bastion, its share; close one, or retry in a few seconds",
                self.per_org_max
            ))
        })?;
        let global = self.global.clone().try_acquire_owned().map_err(|_| {
            ApiError::TooManyRequests(format!(
                "the bastion has {STREAMS_GLOBAL} live streams open; retry in a few seconds"
            ))
        })?;
        Ok(StreamPermit {
            _registered: None,
            _user: user,
            _org: org,
            _global: global,
        })
    }
}

/// The execution named in the path, if it is in this project and edge.
async fn execution_in(
    state: &AppState,
    caller: &Caller,
    project: &str,
    edge: &str,
    exec_id: &str,
    action: Action,
) -> Result<ExecutionRow, ApiError> {
    let p = resolve_project(state, caller, project, action).await?;
    let e = resolve_edge(state, &p, edge).await?;
    let not_found = || super::cmdexec::execution_not_found(exec_id, &e.name);
    if !super::cmdexec::plausible_exec_id(exec_id) {
        return Err(not_found());
    }
    let x = state
        .store
        .execution(exec_id)
        .await?
        .ok_or_else(not_found)?;
    if x.project_id != p.id || x.edge_id != e.id {
        return Err(not_found());
    }
    Ok(x)
}

/// `Last-Event-ID`: the id of the last event the client has.
fn last_event_id(headers: &HeaderMap) -> Result<i64, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(0);
    };
    let bad = || {
        ApiError::BadRequest(
            "Last-Event-ID must be the id of an event of this stream (a whole number); leave it out to start from the beginning".into(),
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    if s.is_empty() {
        return Ok(0);
    }
    if s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    s.parse().map_err(|_| bad())
}

/// The execution's events as server-sent events: each node's start, its output
/// as it comes, its end, and the execution's end, which closes the stream.
#[utoipa::path(
    get,
    path = "/cmdexec/v1/projects/{project_id}/edges/{edge_id}/execution/{exec_id}/events",
    tag = "cmdexec",
    params(
        ("project_id" = String, Path, description = "Project name or id"),
        ("edge_id" = String, Path, description = "Edge name or id"),
        ("exec_id" = String, Path, description = "The exec ID returned by execute"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (its `id:`); absent: from the first event", pattern = "^[0-9]{0,18}$"),
    ),
    responses(
        (status = 200, description = "A text/event-stream: `event:` is the event's name, `data:` the event as JSON (see ExecEvent),`id:` what to send as Last-Event-ID to resume. Events so far are replayed, then new ones follow; the stream ends after `execution_finished`. A client that takes no event for 30 s (`--exec-stream-stall`) is disconnected; resume with Last-Event-ID. A `lagged` event (no id) says the reader is more than a page behind and catching up; nothing is lost.", body = ExecEventFrame, content_type = "text/event-stream"),
        (status = 204, description = "The execution has finished and the reader has every event (Last-Event-ID is its last): nothing more will come"),
        (status = 400, description = "Last-Event-ID is not an event id", body = ErrorBody),
        (status = 401, description = "Missing or invalid API token", body = ErrorBody),
        (status = 404, description = "Project, edge or execution not found", body = ErrorBody),
        (status = 429, description = "Too many live streams open: by you, by your organization (its share of the bastion's) or on the bastion", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge, exec_id)): ApiPath<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = last_event_id(&headers)?;
    let x = execution_in(
        &state,
        &caller,
        &project,
        &edge,
        &exec_id,
        Action::ReadProject,
    )
    .await?;
    caller.audit.with(|a| a.exec_id = Some(x.id.clone()));
    // A reader that has everything of a finished execution (EventSource
    // reconnects after the stream ends) is told there is no more: 204 stops it.
    if x.finished_at.is_some() && state.store.events_after(&x.id, after, 1).await?.is_empty() {
        return Ok(http::StatusCode::NO_CONTENT.into_response());
    }
    let mut permit = state
        .exec_streams
        .acquire(&caller.principal.org_id, &caller.principal.user_name)?;
    let authorization = credential_of(&caller, &headers);
    let (tx, rx) = mpsc::channel(QUEUE);
    // Cancelled when the stream ends for cause (access gone, shutdown): the
    // body then stops at once, even with events still queued.
    let cut = CancellationToken::new();
    permit._registered = Some(state.exec_streams.register(Holder {
        user_id: caller.principal.user_id.clone(),
        credential_id: caller.credential.id.clone(),
        project_id: x.project_id.clone(),
        cut: cut.clone(),
    }));
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reader = Reader {
        state: state.clone(),
        exec_id: x.id,
        after,
        buf: VecDeque::new(),
        wake: state.cmdexec.watch_events(),
        done: false,
        lagging: false,
        read_after_finish: false,
        authorization,
        source: caller.source_ip.as_deref().and_then(|s| s.parse().ok()),
        project_id: x.project_id,
        recheck,
        tx,
        cut: cut.clone(),
        stall: state.settings.exec_stream_stall,
        _permit: permit,
    };
    state.tasks.spawn(reader.run());
    let stream = futures_util::stream::unfold((rx, cut), |(mut rx, cut)| async move {
        let ev = tokio::select! {
            biased;
            _ = cut.cancelled() => None,
            ev = rx.recv() => ev,
        }?;
        Some((Ok::<_, Infallible>(ev), (rx, cut)))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One stream's task: reads the execution's events from the store and queues
/// them for the response body, until the execution's end, the client's going,
/// a stall, the reader's loss of access, or shutdown. It holds the stream's
/// place, so the place is given back when it ends, read or not.
struct Reader {
    state: AppState,
    exec_id: String,
    after: i64,
    buf: VecDeque<StoredEvent>,
    wake: tokio::sync::watch::Receiver<u64>,
    done: bool,
    lagging: bool,
    /// The execution was seen finished and the events read once more since.
    read_after_finish: bool,
    /// The reader's credential and project, checked again every [`RECHECK`]:
    /// a revoked token, a deleted user or a removed role ends the stream.
    authorization: Option<String>,
    /// Where the reader connected from (a bot's token may be bound to networks).
    source: Option<std::net::IpAddr>,
    project_id: String,
    recheck: tokio::time::Interval,
    tx: mpsc::Sender<SseEvent>,
    cut: CancellationToken,
    stall: Duration,
    _permit: StreamPermit,
}

/// How often an open stream checks that its reader may still read it.
const RECHECK: Duration = Duration::from_secs(5);

/// The credential a long-lived stream re-checks: the one the caller came
/// with (the console's cookie, read as the same bearer, or the
/// `Authorization` header).
pub(super) fn credential_of(caller: &Caller, headers: &http::HeaderMap) -> Option<String> {
    match &caller.console {
        Some(c) => Some(format!("Bearer {}", c.token)),
        None => headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// Whether the holder of `authorization` may still read `project_id`; a store
/// that does not answer in time counts as no.
async fn still_allowed(
    state: &AppState,
    authorization: Option<&str>,
    source: Option<std::net::IpAddr>,
    project_id: &str,
) -> bool {
    still_holds(state, authorization, source, |p| async move {
        crate::access::resolve::project(&state.store, &p, project_id, Action::ReadProject)
            .await
            .is_ok()
    })
    .await
}

/// Whether the credential in `authorization` (from `source`) still signs
/// someone in, and `check` still passes for them, within [`RECHECK_WITHIN`]:
/// how a long-lived stream learns that its reader's access is gone. A store
/// that does not answer in time counts as no.
pub(super) async fn still_holds<F, Fut>(
    state: &AppState,
    authorization: Option<&str>,
    source: Option<std::net::IpAddr>,
    check: F,
) -> bool
where
    F: FnOnce(crate::authz::Principal) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let run = async {
        let Ok((p, _)) = crate::access::authn::bearer(&state.store, authorization, source).await
        else {
            return false;
        };
        check(p).await
    };
    tokio::time::timeout(RECHECK_WITHIN, run)
        .await
        .unwrap_or(false)
}

impl Reader {
    async fn run(mut self) {
        while let Some(ev) = self.next().await {
            if !self.deliver(ev).await {
                break;
            }
        }
        // Dropping the sender ends the body after what is queued (the
        // execution's end, normally); `cut` has ended it already otherwise.
    }

    /// The access check that came due, on the timer whether or not the client
    /// reads. `false`: the reader lost access, and the body is cut off at once.
    async fn recheck_due(&self) -> bool {
        if still_allowed(
            &self.state,
            self.authorization.as_deref(),
            self.source,
            &self.project_id,
        )
        .await
        {
            return true;
        }
        tracing::info!(exec_id = %self.exec_id, "ending a live stream whose reader may no longer read it");
        self.cut.cancel();
        false
    }

    /// Queues `ev` for the body; `false` when the stream must end instead:
    /// the client went, or took nothing for the stall deadline (its queue
    /// stayed full), or lost access, or the bastion is shutting down.
    async fn deliver(&mut self, ev: SseEvent) -> bool {
        let stalled = tokio::time::sleep(self.stall);
        tokio::pin!(stalled);
        loop {
            tokio::select! {
                room = self.tx.reserve() => {
                    return match room {
                        Ok(room) => {
                            room.send(ev);
                            true
                        }
                        // The body was dropped: the client went.
                        Err(_) => false,
                    };
                }
                _ = &mut stalled => {
                    tracing::info!(exec_id = %self.exec_id, stall = ?self.stall, "ending a live stream whose client takes no events; it may resume with Last-Event-ID");
                    return false;
                }
                _ = self.recheck.tick() => {
                    if !self.recheck_due().await {
                        return false;
                    }
                }
                _ = self.state.shutdown.cancelled() => {
                    self.cut.cancel();
                    return false;
                }
                // Cut from outside (access taken away, see StreamPermits::cut).
                _ = self.cut.cancelled() => return false,
            }
        }
    }

    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                if e.kind == "execution_finished" {
                    self.done = true;
                }
                return Some(
                    SseEvent::default()
                        .id(e.id.to_string())
                        .event(e.kind)
                        .data(e.body),
                );
            }
            if self.done
                || self.state.shutdown.is_cancelled()
                || self.tx.is_closed()
                || self.cut.is_cancelled()
            {
                return None;
            }
            // Marked seen before the read: a commit during it wakes the next wait.
            self.wake.borrow_and_update();
            let rows = match self
                .state
                .store
                .events_after(&self.exec_id, self.after, PAGE)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    // The client resumes with Last-Event-ID once the store is back.
                    tracing::warn!(exec_id = %self.exec_id, error = %e, "cannot read execution events; ending the stream");
                    return None;
                }
            };
            if let Some(last) = rows.last() {
                self.after = last.id;
                let full = rows.len() as i64 == PAGE;
                self.buf.extend(rows);
                if full && !self.lagging {
                    self.lagging = true;
                    let lagged = ExecEvent::Lagged {
                        message: "this reader is more than a page of events behind; catching up from the store, nothing is lost".into(),
                    };
                    return Some(
                        SseEvent::default()
                            .event(lagged.name())
                            .data(serde_json::to_string(&lagged).unwrap_or_default()),
                    );
                }
                if !full {
                    self.lagging = false;
                }
                continue;
            }
            // Nothing new: the end if the execution is finished (a reader that
            // resumed after its last event) or gone (its project was deleted).
            match self.state.store.execution(&self.exec_id).await {
                Ok(Some(x)) if x.finished_at.is_none() => {}
                // Its last events commit with its end, possibly between the
                // read above and this one: read once more before ending, so
                // `execution_finished` is never missed.
                Ok(Some(_)) if !self.read_after_finish => {
                    self.read_after_finish = true;
                    continue;
                }
                Ok(_) => return None,
                Err(_) => {}
            }
            tokio::select! {
                _ = self.wake.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = self.recheck.tick() => {
                    if !self.recheck_due().await {
                        return None;
                    }
                }
                // The client went: its place is given back now, not at the
                // next event.
                _ = self.tx.closed() => return None,
                _ = self.cut.cancelled() => return None,
                _ = self.state.shutdown.cancelled() => {
                    self.cut.cancel();
                    return None;
                }
            }
        }
    }
}

/// Stops an execution: nodes not yet started never start (`cancelled`), running
/// ones have their command's process group stopped (SIGTERM, then SIGKILL after
/// 5 s; `cancelled`). A node that finished first keeps its result.
#[utoipa::path(
    post,
    path = "/cmdexec/v1/projects/{project_id}/edges/{edge_id}/execution/{exec_id}/cancel",
    tag = "cmdexec",
    params(
        ("project_id" = String, Path, description = "Project name or id"),
        ("edge_id" = String, Path, description = "Edge name or id"),
        ("exec_id" = String, Path, description = "The exec ID returned by execute"),
    ),
    responses(
        (status = 200, description = "`cancelling`: the execution is being stopped (follow it with the execution or its events); `finished`: it had already ended and nothing changed", body = CancelResponse),
        (status = 401, description = "Missing or invalid API token", body = ErrorBody),
        (status = 403, description = "Only those who may execute may cancel", body = ErrorBody),
        (status = 404, description = "Project, edge or execution not found", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, edge, exec_id)): ApiPath<(String, String, String)>,
) -> Result<Json<CancelResponse>, ApiError> {
    let x = execution_in(&state, &caller, &project, &edge, &exec_id, Action::Execute).await?;
    caller.audit.with(|a| a.exec_id = Some(x.id.clone()));
    if x.finished_at.is_some() {
        return Ok(Json(CancelResponse {
            exec_id: x.id,
            state: "finished".into(),
        }));
    }
    // Audited before it acts, like execute: a cancel nobody can find later does
    // not happen.
    let mut ev = Event::new("cmdexec.cancel", "ok")
        .org(&caller.principal.org_id)
        .actor(&caller.principal.user_name)
        .source(caller.source_ip.clone())
        .project(&x.project_name)
        .detail(json!({ "edge": x.edge_name }));
    ev.exec_id = Some(x.id.clone());
    state
        .audit
        .before(ev)
        .await
        .map_err(ApiError::audit_refused)?;
    let st = match state.store.request_cancel(&x.id, now_ms()).await? {
        Some(true) => {
            // Here if it runs here; else its replica finds the request within
            // a lease tick.
            state.cmdexec.cancel_local(&x.id);
            "cancelling"
        }
        _ => "finished",
    };
    Ok(Json(CancelResponse {
        exec_id: x.id,
        state: st.into(),
    }))
}
