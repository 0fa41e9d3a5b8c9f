//! One node's part of an execution: send the command once, follow it across
//! channel drops and restarts, store the result, then let the agent forget it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use postern_api::cmdexec::{AgentExec, AgentExecResult, ContentType, NodeExecStatus};

use super::Engine;
use crate::agents::AgentConn;
use crate::agents::client::{CallError, call_json};
use crate::clock::now_ms;
use crate::state::Shared;
use crate::store::{ExecutionRow, ResultRow, ResultUpdate};

pub(super) fn spawn(
    shared: &Arc<Shared>,
    engine: &Engine,
    exec: Arc<ExecutionRow>,
    node_id: String,
    hostname: String,
    sent: bool,
) {
    let shared2 = shared.clone();
    let engine = engine.clone();
    shared.tasks.spawn(async move {
        tokio::select! {
            // On shutdown the row stays pending/running; the next start resumes it.
            _ = shared2.shutdown.cancelled() => {}
            _ = run(&shared2, &engine, &exec, &node_id, &hostname, sent) => {}
        }
    });
}

/// Waits for the node's channel, up to `grace`.
async fn channel(shared: &Shared, node_id: &str, grace: Duration) -> Option<Arc<AgentConn>> {
    let until = Instant::now() + grace;
    loop {
        if let Some(c) = shared.registry.get(node_id) {
            return Some(c);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn settled(
    exec: &ExecutionRow,
    node_id: &str,
    hostname: &str,
    status: NodeExecStatus,
    error: String,
) -> ResultRow {
    let mut r = ResultRow::new(&exec.id, node_id, hostname, status);
    r.error = Some(error);
    r.finished_at = Some(now_ms());
    r
}

fn from_agent(exec: &ExecutionRow, node_id: &str, hostname: &str, a: AgentExecResult) -> ResultRow {
    let len = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    ResultRow {
        exec_id: exec.id.clone(),
        node_id: node_id.into(),
        hostname: hostname.into(),
        status: a.status,
        exit_code: a.exit_code.map(i64::from),
        error: a.error,
        stdout_truncated: a.stdout.truncated,
        stdout_bytes: len(a.stdout.total_bytes),
        stdout_sha256: (!a.stdout.sha256.is_empty()).then_some(a.stdout.sha256),
        stdout: a.stdout.data,
        stderr_truncated: a.stderr.truncated,
        stderr_bytes: len(a.stderr.total_bytes),
        stderr_sha256: (!a.stderr.sha256.is_empty()).then_some(a.stderr.sha256),
        stderr: a.stderr.data,
        started_at: Some(a.started_at_ms),
        finished_at: a.finished_at_ms.or(Some(now_ms())),
    }
}

async fn run(
    shared: &Arc<Shared>,
    engine: &Engine,
    exec: &ExecutionRow,
    node_id: &str,
    hostname: &str,
    mut sent: bool,
) {
    let grace = shared.settings.exec_lost_grace;
    let timeout = Duration::from_secs(u64::try_from(exec.timeout_secs).unwrap_or(60));
    let deadline_ms = exec.created_at + exec.timeout_secs * 1000;
    let request = AgentExec {
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
    let result = loop {
        let Some(conn) = channel(shared, node_id, grace).await else {
            break settled(
                exec,
                node_id,
                hostname,
                NodeExecStatus::Lost,
                format!(
                    "the agent disconnected and did not come back within {}s",
                    grace.as_secs()
                ),
            );
        };
        let call = if sent {
            let wait = timeout.as_secs().clamp(1, 300);
            let path = format!("/v1/exec/{}?wait={wait}", exec.id);
            call_json::<(), AgentExecResult>(
                &conn,
                Method::GET,
                &path,
                None,
                Duration::from_secs(wait + 15),
            )
            .await
        } else {
            if now_ms() > deadline_ms {
                // Never started, and its time is over: running it now would surprise.
                break settled(
                    exec,
                    node_id,
                    hostname,
                    NodeExecStatus::Lost,
                    "the command could not be sent before its timeout passed".into(),
                );
            }
            engine
                .write(
                    ResultUpdate::Started {
                        exec_id: exec.id.clone(),
                        node_id: node_id.into(),
                        at: now_ms(),
                    },
                    false,
                )
                .await;
            // Counted as sent before the call: it may reach the agent even if the
            // answer does not reach us.
            sent = true;
            call_json(
                &conn,
                Method::POST,
                "/v1/exec",
                Some(&request),
                timeout + Duration::from_secs(30),
            )
            .await
        };
        match call {
            Ok(r) if r.status.is_final() => break from_agent(exec, node_id, hostname, r),
            Ok(_) => continue,
            Err(CallError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                sent = false
            }
            Err(CallError::Status { status, body }) => {
                break settled(
                    exec,
                    node_id,
                    hostname,
                    NodeExecStatus::Failed,
                    format!("the agent refused the command ({status}): {body}"),
                );
            }
            Err(e) => {
                tracing::debug!(exec_id = %exec.id, node = %hostname, error = %e, "exec call interrupted; will resume");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    if engine
        .write(ResultUpdate::Finished(Box::new(result)), true)
        .await
    {
        // Stored: the agent may drop its spooled copy now.
        if let Some(conn) = shared.registry.get(node_id) {
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
}
