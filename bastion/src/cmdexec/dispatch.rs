//! One node's part of an execution: send the command once, follow it across
//! channel drops and restarts, store the result, then let the agent forget it.
//!
//! Live output is gathered before it is stored: consecutive chunks of a stream
//! become one event (up to `STREAM_CHUNK`, or what arrived within `GATHER`), and
//! a node has at most `MAX_OUTPUT_EVENTS` of them, so an agent (compromised or
//! not) cannot turn each byte it prints into a stored row replayed to every
//! reader.
//!
//! A node resumed as pending (after a restart or a takeover) may have been sent
//! its command just before the previous holder died: its agent is asked before
//! the node is settled as never started, and a cancel is left with the agent
//! so a command still in flight never starts after the record said it did not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use postern_api::cmdexec::{
    AgentExec, AgentExecResult, AgentStreamLine, ContentType, ExecEvent, LIVE_BYTES_MAX,
    MAX_ERROR_TEXT, NodeExecStatus, OutputStream, STREAM_CHUNK, encode_output, max_result_answer,
};
use postern_api::validate;

use super::Deps;
use super::{Engine, Running};
use crate::agents::NodeLink;
use crate::agents::client::{
    CallError, StreamAnswer, call_json, call_json_limited, call_lines, full,
};
use crate::clock::now_ms;
use crate::store::{ExecutionRow, ResultRow, ResultUpdate};

pub(super) fn spawn(
    shared: &Arc<Deps>,
    engine: &Engine,
    exec: Arc<ExecutionRow>,
    running: Arc<Running>,
    node_id: String,
    hostname: String,
    start: Start,
) {
    let shared2 = shared.clone();
    let engine = engine.clone();
    // Each of 10,000 nodes of a fan-out holds its task for the whole command:
    // its future is kept small, and each step's state is allocated (boxed)
    // only while that step runs. Inline, the task was the union of every
    // step's state, 28 KiB a node, copied in at spawn and faulted in fresh
    // (a tenth of the bastion's CPU on a 10,000-node fan-out).
    let fut = async move {
        let taken_over = running.taken_over.clone();
        tokio::select! {
            // On shutdown the row stays pending/running; the next start (or
            // another replica, once the lease runs out) resumes it.
            _ = shared2.shutdown.cancelled() => {}
            // Another replica runs it now.
            _ = taken_over.cancelled() => {}
            _ = Box::pin(node_part(&shared2, &engine, &exec, &running, &node_id, &hostname, start)) => {}
        }
    };
    shared.tasks.spawn(fut);
}

/// Where a node's part starts.
#[derive(Debug)]
pub(super) enum Start {
    /// A new execution: nothing was sent.
    New,
    /// Resumed from the store, pending: it may have been sent just before a
    /// crash (the "started" write is not waited for).
    ResumedPending,
    /// Resumed from the store, running on its node: it holds a slot of its
    /// execution, taken before any pending node could take it.
    ResumedRunning(Option<tokio::sync::OwnedSemaphorePermit>),
}

/// One node's part, in its turn: waits for a slot under `max_concurrency`, is
/// skipped or cancelled if the rollout stopped meanwhile, else runs and counts
/// towards `max_errors` before it gives its slot back.
async fn node_part(
    shared: &Arc<Deps>,
    engine: &Engine,
    exec: &ExecutionRow,
    running: &Running,
    node_id: &str,
    hostname: &str,
    start: Start,
) {
    let (sent, resumed) = match &start {
        Start::New => (false, false),
        Start::ResumedPending => (false, true),
        Start::ResumedRunning(_) => (true, true),
    };
    let permit = match (start, &running.slots) {
        // Running on its node whatever happens here: it never waits.
        (Start::ResumedRunning(held), _) => held,
        (_, Some(slots)) => tokio::select! {
            p = slots.clone().acquire_owned() => p.ok(),
            _ = running.cancelled.cancelled() => None,
            _ = running.stop.cancelled() => None,
        },
        (_, None) => None,
    };
    // The request the result came on, held open to release it (see `run`).
    let mut release = None;
    let result = if !sent && running.cancelled.is_cancelled() {
        if resumed {
            // It may have reached the node before a crash: the agent keeps a
            // cancel for an exec it has not seen, so it never starts there.
            send_cancel(shared, &exec.id, node_id, hostname, None);
        }
        settled(
            exec,
            node_id,
            hostname,
            NodeExecStatus::Cancelled,
            "cancelled before it started".into(),
        )
    } else if !sent && !resumed && running.stop.is_cancelled() {
        settled(
            exec,
            node_id,
            hostname,
            NodeExecStatus::Skipped,
            format!(
                "not started: more nodes failed than max_errors ({}) allows",
                running.max_errors.unwrap_or(0)
            ),
        )
    } else {
        // A resumed pending node goes through `run` even past a stop: it asks
        // the agent first, and settles it "not started" only if the agent
        // never had it (and never will: it leaves a cancel there).
        let sent = match (sent, resumed) {
            (true, _) => Sent::Yes,
            (false, true) => Sent::Maybe,
            (false, false) => Sent::No,
        };
        let r = Box::pin(run(
            shared,
            engine,
            exec,
            running,
            node_id,
            hostname,
            sent,
            &mut release,
        ))
        .await;
        if r.status.is_error() {
            running.count_error();
        }
        r
    };
    // The slot is free only once the node's command ended and its failure, if
    // any, was counted: the next node never starts past a stop.
    drop(permit);
    Box::pin(store_result(shared, engine, exec, node_id, result, release)).await;
}

fn settled(
    exec: &ExecutionRow,
    node_id: &str,
    hostname: &str,
    status: NodeExecStatus,
    error: String,
) -> ResultRow {
    let mut r = ResultRow::new(&exec.id, node_id, hostname, status);
    // Reasons may quote what an agent sent: bounded and printable, like any peer text.
    r.error = Some(validate::peer_text(&error, MAX_ERROR_TEXT));
    r.finished_at = Some(now_ms());
    r
}

/// A result as the agent reported it, made safe to store: times taken from the
/// bastion's clock (an agent's clock may be wrong, or the agent hostile), its
/// error text bounded and free of control bytes.
fn from_agent(exec: &ExecutionRow, node_id: &str, hostname: &str, a: AgentExecResult) -> ResultRow {
    let len = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let now = now_ms();
    let started = a
        .started_at_ms
        .clamp(exec.created_at, now.max(exec.created_at));
    let finished = a
        .finished_at_ms
        .unwrap_or(now)
        .clamp(started, now.max(started));
    let sha = |s: String| (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s);
    ResultRow {
        exec_id: exec.id.clone(),
        node_id: node_id.into(),
        hostname: hostname.into(),
        status: a.status,
        exit_code: a.exit_code.map(i64::from),
        error: a.error.map(|e| validate::peer_text(&e, MAX_ERROR_TEXT)),
        stdout_truncated: a.stdout.truncated,
        stdout_bytes: len(a.stdout.total_bytes),
        stdout_sha256: sha(a.stdout.sha256),
        stdout: a.stdout.data,
        stderr_truncated: a.stderr.truncated,
        stderr_bytes: len(a.stderr.total_bytes),
        stderr_sha256: sha(a.stderr.sha256),
        stderr: a.stderr.data,
        started_at: Some(started),
        finished_at: Some(finished),
    }
}

/// How many answers in a row that cannot be used (unreadable, refused with 404
/// after sending, "still running" at once) before the node's part is settled as
/// failed instead of asked again.
const MAX_UNUSABLE_ANSWERS: u32 = 8;
/// How often a cancel the node has not taken is sent again.
const CANCEL_RESEND: Duration = Duration::from_secs(10);
/// How many failed writes of a result before it is stored without its output.
const WRITE_TRIES_WITH_OUTPUT: u32 = 5;

/// Exponential backoff with full jitter: 200 ms doubling, at most `cap`.
pub(super) fn backoff(attempt: u32, cap: Duration) -> Duration {
    let exp = Duration::from_millis(200).saturating_mul(1u32 << attempt.min(10));
    let max = exp.min(cap);
    max.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// Whether the node's command was sent, as `run` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    No,
    /// Resumed pending: the previous holder may have sent it just before it
    /// died (its "started" write is not waited for). Its agent is asked first.
    Maybe,
    Yes,
}

/// Where this node's live output has got to, per stream (what was queued to
/// the writer; `u64::MAX` once the stream stores no more), and how many output
/// events it stored.
#[derive(Debug, Default)]
struct LiveOffsets {
    stdout: u64,
    stderr: u64,
    events: u32,
}

impl LiveOffsets {
    /// For a node followed after it started elsewhere: no live output.
    fn stopped() -> LiveOffsets {
        LiveOffsets {
            stdout: u64::MAX,
            stderr: u64::MAX,
            events: 0,
        }
    }

    fn of(&mut self, stream: OutputStream) -> &mut u64 {
        match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        }
    }
}

/// Where a result's release goes when the agent takes it on the command's
/// own request: the request's body, held open until the result is stored.
type Release = tokio::sync::oneshot::Sender<bytes::Bytes>;

/// Runs the node's command to its result. When the result came on a request
/// whose body the agent reads to its release, `release` holds that body.
#[allow(clippy::too_many_arguments)]
async fn run(
    shared: &Arc<Deps>,
    engine: &Engine,
    exec: &ExecutionRow,
    running: &Running,
    node_id: &str,
    hostname: &str,
    start: Sent,
    release: &mut Option<Release>,
) -> ResultRow {
    let mut sent = start == Sent::Yes;
    // Until the agent said whether it has the exec: never sent from here yet,
    // maybe by the previous holder.
    let mut unsure = start == Sent::Maybe;
    // The previous holder may have sent it: before settling it as not started,
    // leave a cancel with the agent, so a command still in flight never starts.
    let mut forbid = start == Sent::Maybe;
    // Whether this task sent the command.
    let mut posted = false;
    let grace = shared.settings.exec_lost_grace;
    let timeout = Duration::from_secs(u64::try_from(exec.timeout_secs).unwrap_or(60));
    let deadline_ms = exec.created_at + exec.timeout_secs * 1000;
    // However the agent and the link behave, this node's part ends by then.
    let give_up = Instant::now() + timeout + grace + Duration::from_secs(600);
    let max_answer = max_result_answer(shared.settings.exec_keep_bytes);
    // The same for every node: serialized once per execution, shared (a
    // megabyte script to 10,000 nodes is one megabyte, not ten gigabytes).
    let request = running
        .request
        .get_or_init(|| {
            let r = AgentExec {
                exec_id: exec.id.clone(),
                command: exec.command.clone(),
                content_type: if exec.content_type == "base64" {
                    ContentType::Base64
                } else {
                    ContentType::String
                },
                timeout_secs: timeout.as_secs(),
                keep_bytes: shared.settings.exec_keep_bytes,
            };
            bytes::Bytes::from(serde_json::to_vec(&r).unwrap_or_default())
        })
        .clone();
    let settle = |status, error: String| settled(exec, node_id, hostname, status, error);
    let mut unusable = 0u32;
    let mut interrupted = 0u32;
    // A node resumed after a restart or a takeover streams no more live output:
    // what it printed meanwhile is in its result.
    let mut offsets = if sent {
        LiveOffsets::stopped()
    } else {
        LiveOffsets::default()
    };
    // A cancel is a state, not a message: sent again on every call to the
    // node until the agent has taken it.
    let cancel_taken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        if Instant::now() >= give_up {
            return settle(
                NodeExecStatus::Lost,
                "the agent did not deliver a result in time (the command's timeout plus the lost grace and 10 minutes)".into(),
            );
        }
        let Some(conn) = shared.fleet.wait_link(node_id, grace).await else {
            return settle(
                NodeExecStatus::Lost,
                format!(
                    "the agent disconnected and did not come back within {}s",
                    grace.as_secs()
                ),
            );
        };
        if unsure {
            match Box::pin(known_to_agent(&conn, &exec.id, max_answer)).await {
                Ok(Some(at)) => {
                    // Sent before the takeover: follow it as a running node
                    // (no live output for it, as for any resumed node).
                    unsure = false;
                    forbid = false;
                    sent = true;
                    offsets = LiveOffsets::stopped();
                    let at = at.clamp(exec.created_at, now_ms().max(exec.created_at));
                    let _ = engine
                        .write(
                            ResultUpdate::Started {
                                exec_id: exec.id.clone(),
                                node_id: node_id.into(),
                                hostname: hostname.into(),
                                at,
                            },
                            false,
                        )
                        .await;
                    continue;
                }
                Ok(None) => unsure = false,
                Err(e) => {
                    tracing::debug!(exec_id = %exec.id, node = %hostname, error = %e, "could not ask the agent about a resumed exec; will ask again");
                    interrupted += 1;
                    tokio::time::sleep(backoff(interrupted, Duration::from_secs(10))).await;
                    continue;
                }
            }
        }
        let asked = Instant::now();
        // `held`: the request's body, kept to release the result on it.
        let (method, path, body, mut held) = if sent {
            let path = format!(
                "/v1/exec/{}/stream?stdout={}&stderr={}",
                exec.id, offsets.stdout, offsets.stderr
            );
            (Method::GET, path, full(bytes::Bytes::new()), None)
        } else {
            let late = now_ms() > deadline_ms;
            let stopped = running.stop.is_cancelled();
            if forbid && (late || stopped || running.cancelled.is_cancelled()) {
                match Box::pin(forbid_start(&conn, &exec.id)).await {
                    Ok(None) => forbid = false,
                    Ok(Some(r)) if r.status.is_final() => {
                        // It ran meanwhile after all: its result, as reported.
                        return from_agent(exec, node_id, hostname, r);
                    }
                    Ok(Some(_)) => {
                        // It started between the question and the cancel; the
                        // cancel stops it, and its result says so.
                        forbid = false;
                        sent = true;
                        offsets = LiveOffsets::stopped();
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(exec_id = %exec.id, node = %hostname, error = %e, "could not leave a cancel with the agent; will try again");
                        interrupted += 1;
                        tokio::time::sleep(backoff(interrupted, Duration::from_secs(10))).await;
                        continue;
                    }
                }
            }
            if late {
                // Never started, and its time is over: running it now would surprise.
                return settle(
                    NodeExecStatus::Lost,
                    "the command could not be sent before its timeout passed".into(),
                );
            }
            if running.cancelled.is_cancelled() {
                return settle(
                    NodeExecStatus::Cancelled,
                    "cancelled before it started".into(),
                );
            }
            if stopped && start == Sent::Maybe && !posted {
                // A resumed node its agent never had (and, with the cancel
                // left there, never will): it did not start. (A new node was
                // checked before it got here; one sent from here whose agent
                // then lost it is sent again, as before a stop.)
                return settle(
                    NodeExecStatus::Skipped,
                    format!(
                        "not started: more nodes failed than max_errors ({}) allows",
                        running.max_errors.unwrap_or(0)
                    ),
                );
            }
            let _ = engine
                .write(
                    ResultUpdate::Started {
                        exec_id: exec.id.clone(),
                        node_id: node_id.into(),
                        hostname: hostname.into(),
                        at: now_ms(),
                    },
                    false,
                )
                .await;
            // Counted as sent before the call: it may reach the agent even if the
            // answer does not reach us.
            sent = true;
            posted = true;
            if conn.releases_inline() {
                // One request per node: the command, its stream, and (once
                // the result is stored) its release.
                let (tx, body) =
                    crate::agents::held_body([request.clone(), bytes::Bytes::from_static(b"\n")]);
                (
                    Method::POST,
                    "/v1/exec?stream=1&release=1".to_string(),
                    body,
                    Some(tx),
                )
            } else {
                (
                    Method::POST,
                    "/v1/exec?stream=1".to_string(),
                    full(request.clone()),
                    None,
                )
            }
        };
        let call = Box::pin(call_lines(
            &conn,
            method,
            &path,
            body,
            // An older agent sends its headers only with the result.
            timeout + Duration::from_secs(30),
            timeout + Duration::from_secs(30),
            max_answer,
        ));
        let mut follow = Box::pin(follow(engine, exec, node_id, hostname, call, &mut offsets));

        let mut cancel_sent = cancel_taken.load(std::sync::atomic::Ordering::Acquire);
        // Made only once a cancel is sent: a timer per node of a fan-out
        // otherwise, for the rare command that is cancelled.
        let mut resend: Option<tokio::time::Interval> = None;
        let answer = loop {
            let taken = cancel_taken.load(std::sync::atomic::Ordering::Acquire);
            tokio::select! {
                a = &mut follow => break a,
                // The channel was replaced or ended: follow the node on its new one.
                _ = conn.closed() => break Err(CallError::Moved),
                _ = running.cancelled.cancelled(), if !cancel_sent => {
                    cancel_sent = true;
                    resend = Some(tokio::time::interval_at(
                        tokio::time::Instant::now() + CANCEL_RESEND,
                        CANCEL_RESEND,
                    ));
                    send_cancel(shared, &exec.id, node_id, hostname, Some(cancel_taken.clone()));
                }
                _ = tick(&mut resend), if cancel_sent && !taken => {
                    send_cancel(shared, &exec.id, node_id, hostname, Some(cancel_taken.clone()));
                }
            }
        };
        let why_unusable = match answer {
            Ok(r) if r.status.is_final() && r.exec_id == exec.id => {
                *release = held.take();
                return from_agent(exec, node_id, hostname, r);
            }
            Ok(r) if r.exec_id != exec.id => "the agent answered for another exec ID".to_string(),
            // A wait that ended with the command still running: ask again.
            Ok(_) if asked.elapsed() >= Duration::from_secs(1) => {
                unusable = 0;
                interrupted = 0;
                continue;
            }
            Ok(_) => "the agent said \"still running\" without waiting".to_string(),
            Err(CallError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                // The agent does not know this exec (its spool was lost): send again;
                // its exec-ID ledger still refuses a second run.
                sent = false;
                "the agent does not know this exec ID".to_string()
            }
            Err(CallError::Status { status, body }) => {
                return settle(
                    NodeExecStatus::Failed,
                    format!(
                        "the agent refused the command ({status}): {}",
                        validate::peer_text(&body, 500)
                    ),
                );
            }
            Err(CallError::Body(e)) => format!("the agent's answer could not be read: {e}"),
            Err(e) => {
                // The link dropped or the call timed out: wait for the channel again.
                tracing::debug!(exec_id = %exec.id, node = %hostname, error = %e, "exec call interrupted; will resume");
                interrupted += 1;
                tokio::time::sleep(backoff(interrupted, Duration::from_secs(10))).await;
                continue;
            }
        };
        unusable += 1;
        tracing::warn!(exec_id = %exec.id, node = %hostname, attempt = unusable, reason = %why_unusable, "unusable answer from the agent");
        if unusable >= MAX_UNUSABLE_ANSWERS {
            return settle(
                NodeExecStatus::Failed,
                format!(
                    "gave up after {unusable} unusable answers from the agent; the last: {why_unusable}"
                ),
            );
        }
        tokio::time::sleep(backoff(unusable, Duration::from_secs(30))).await;
    }
}

/// The next tick of `interval`, or never if there is none.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Asks the agent whether it has the exec (`GET /v1/exec/{id}`, not waiting):
/// `Some(when it started)` if it does (or answers anything but "never started
/// here", e.g. "delivered and forgotten": then following it tells), `None` if
/// it never saw it.
async fn known_to_agent(
    conn: &NodeLink,
    exec_id: &str,
    max_answer: usize,
) -> Result<Option<i64>, CallError> {
    let path = format!("/v1/exec/{exec_id}");
    match call_json_limited::<(), AgentExecResult>(
        conn,
        Method::GET,
        &path,
        None,
        Duration::from_secs(10),
        max_answer,
    )
    .await
    {
        Ok(r) => Ok(Some(r.started_at_ms)),
        Err(CallError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
        Err(CallError::Status { .. }) => Ok(Some(now_ms())),
        Err(e) => Err(e),
    }
}

/// Leaves a cancel with the agent for an exec it said it never saw, so that
/// the command, if it is still on its way from a replica that died, never
/// starts (the agent records a cancel for an exec it has not seen). `None`
/// when the agent holds the cancel (or is too old to take one, and so never
/// had the exec either); else the exec's state, if it started after all.
async fn forbid_start(
    conn: &NodeLink,
    exec_id: &str,
) -> Result<Option<AgentExecResult>, CallError> {
    let path = format!("/v1/exec/{exec_id}/cancel");
    match call_json::<(), AgentExecResult>(conn, Method::POST, &path, None, Duration::from_secs(10))
        .await
    {
        // The cancel was recorded before any start (now, or by an earlier
        // try whose answer was lost): nothing ran.
        Ok(r)
            if r.status == NodeExecStatus::Cancelled
                && r.exit_code.is_none()
                && r.stdout.total_bytes == 0
                && r.stderr.total_bytes == 0 =>
        {
            Ok(None)
        }
        Ok(r) => Ok(Some(r)),
        Err(CallError::Status { status, .. })
            if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Asks the node to stop its command, beside the call that follows it (which
/// then ends with the cancelled result); `taken` learns that the agent took
/// it. An agent too old to cancel lets the command run to its end.
fn send_cancel(
    shared: &Arc<Deps>,
    exec_id: &str,
    node_id: &str,
    hostname: &str,
    taken: Option<Arc<std::sync::atomic::AtomicBool>>,
) {
    let (shared2, exec_id, node_id, hostname) = (
        shared.clone(),
        exec_id.to_string(),
        node_id.to_string(),
        hostname.to_string(),
    );
    shared.tasks.spawn(async move {
        let Some(conn) = shared2.fleet.link(&node_id) else {
            return;
        };
        let path = format!("/v1/exec/{exec_id}/cancel");
        match call_json::<(), AgentExecResult>(
            &conn,
            Method::POST,
            &path,
            None,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(_) => {
                if let Some(t) = taken {
                    t.store(true, std::sync::atomic::Ordering::Release);
                }
            }
            Err(CallError::Status { status, .. })
                if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED =>
            {
                tracing::warn!(%exec_id, node = %hostname, "the node's agent is too old to cancel; its command runs to its end");
                if let Some(t) = taken {
                    t.store(true, std::sync::atomic::Ordering::Release);
                }
            }
            Err(e) => {
                tracing::info!(%exec_id, node = %hostname, error = %e, "the cancel did not reach the node; it is sent again with the next call to it");
            }
        }
    });
}

/// Stores the node's final result, then lets the agent drop its spooled copy.
/// Never drops a result on a write error: it retries with backoff for as long as
/// the bastion runs (the agent keeps its copy meanwhile, and a restarted bastion
/// fetches it again from the spool). A result the database refuses for what it
/// holds (not for being unavailable) is stored without its output after a few
/// tries, with the reason, so its execution can still finish.
async fn store_result(
    shared: &Arc<Deps>,
    engine: &Engine,
    exec: &ExecutionRow,
    node_id: &str,
    mut result: ResultRow,
    release: Option<Release>,
) {
    let mut refused = 0u32;
    let mut attempt = 0u32;
    loop {
        match engine
            .write(ResultUpdate::Finished(Box::new(result.clone())), true)
            .await
        {
            Ok(()) => break,
            Err(f) if f.unavailable => {}
            Err(f) => {
                refused += 1;
                if refused == WRITE_TRIES_WITH_OUTPUT {
                    result = without_output(result, &f.message);
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(backoff(attempt, Duration::from_secs(60))).await;
    }
    // On the command's own request when the agent reads it for that; else
    // (or when that request is gone) a DELETE. One lost either way is
    // released when the channel next comes up.
    // The held body still open: the line is handed to h2 (it fails only when
    // the request is gone, and then the DELETE goes instead).
    let released = release.is_some_and(|tx| {
        tx.send(bytes::Bytes::from_static(postern_api::agent::RELEASE_LINE))
            .is_ok()
    });
    if !released && let Some(conn) = shared.fleet.link(node_id) {
        let path = format!("/v1/exec/{}", exec.id);
        let _ = call_json::<(), serde_json::Value>(
            &conn,
            Method::DELETE,
            &path,
            None,
            Duration::from_secs(10),
        )
        .await;
    }
    engine.node_done(shared, &exec.id).await;
}

fn without_output(mut r: ResultRow, why: &str) -> ResultRow {
    r.stdout.clear();
    r.stderr.clear();
    r.stdout_truncated = r.stdout_bytes > 0;
    r.stderr_truncated = r.stderr_bytes > 0;
    let note = format!(
        "the output could not be stored ({}); sizes and SHA-256 are kept",
        validate::peer_text(why, 300)
    );
    let error = match r.error {
        Some(e) => format!("{e}; {note}"),
        None => note,
    };
    r.error = Some(validate::peer_text(&error, MAX_ERROR_TEXT));
    r
}

mod follow;

use follow::follow;

#[cfg(test)]
mod tests;
