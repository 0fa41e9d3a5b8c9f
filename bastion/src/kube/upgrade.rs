//! `kubectl exec`, `attach` and `port-forward`: the client asks to switch
//! protocols (SPDY/3.1 or WebSocket) over HTTP/1.1. HTTP/2 has no upgrades, so the
//! gateway agent makes the upgrade towards the API server itself and the bytes
//! after the switch travel over the agent channel as one stream's request and
//! response bodies, as SSH bytes do. The bastion answers the client's upgrade
//! only once the API server has agreed to it, and relays with bounded buffers.
//! While the client takes nothing, what the gateway sends waits on the channel
//! and is charged to the user there, as answers are (`flow`); so is what the
//! client sends while the gateway takes nothing (stdin nobody reads), which
//! waits in the agent's side of the channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use postern_api::kube as contract;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use super::Door;
use super::flow::{self, Tab};
use super::proxy::{Authorized, Registration, agent_request};
use super::stream::Finish;
use super::{KubeBody, record, status};
use crate::agents::NodeLink;

/// Chunks from the client in flight towards the gateway.
const UPSTREAM_QUEUE: usize = 64;
const READ_CHUNK: usize = 32 * 1024;
/// How long the API server may take to agree to the upgrade: longer than the
/// agent waits for it (55 s), so the bastion never gives up on an upgrade the
/// agent may still complete.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) async fn relay(
    shared: Arc<Door>,
    auth: Authorized,
    live: Registration,
    link: NodeLink,
    mut req: Request<Incoming>,
    rest: String,
) -> Response<KubeBody> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (tx, body) = crate::agents::stream_body(UPSTREAM_QUEUE);
    let rest = rest.as_str();
    let upgrade_to = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("SPDY/3.1"));
    let query = req.uri().query().map(str::to_string);
    // What the recording policy asks is known before anything is sent on: a
    // strict session that cannot be recorded never reaches the pod.
    let offered: Vec<String> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .take(16)
        .collect();
    let plan = record::plan(
        &shared,
        &auth,
        upgrade_to.to_str().unwrap_or_default(),
        &offered,
    )
    .await;
    if let record::Plan::Refuse(msg) = &plan {
        return auth
            .refused(&shared, "denied", StatusCode::SERVICE_UNAVAILABLE, msg)
            .await;
    }
    let mut areq = match agent_request(
        &auth,
        req.method(),
        rest,
        req.uri().query(),
        req.headers(),
        body,
    ) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot build a Kubernetes upgrade for the gateway");
            return status::response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; the bastion's log has the details",
            );
        }
    };
    // The subprotocols go on exactly as the recorder read them: one line, no
    // empty entries (the kubelet reads only the first line, and an empty entry
    // as the binary protocol), so the one it picks is one the reader knows.
    areq.headers_mut().remove(header::SEC_WEBSOCKET_PROTOCOL);
    if !offered.is_empty()
        && let Ok(v) = HeaderValue::from_str(&offered.join(", "))
    {
        areq.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    // The recording starts before the upgrade is sent on: a strict session
    // whose recording cannot be stored never reaches the pod.
    let recording_failed = CancellationToken::new();
    let mut session = match record::begin(
        &shared,
        &auth,
        &plan,
        query.as_deref(),
        recording_failed.clone(),
    )
    .await
    {
        Ok(s) => s,
        Err(()) => {
            let msg = "this project records every session and the recording cannot be stored right now; retry shortly";
            return auth
                .refused(&shared, "error", StatusCode::SERVICE_UNAVAILABLE, msg)
                .await;
        }
    };
    areq.headers_mut().insert(contract::HDR_UPGRADE, upgrade_to);
    // The client's (zero) length was for its upgrade request; over the channel
    // the body is the byte stream after the switch, of no known length.
    areq.headers_mut().remove(header::CONTENT_LENGTH);
    let resp = match tokio::time::timeout(SWITCH_TIMEOUT, link.send(areq)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            // Whether the pod started is unknown: what was recorded is kept.
            if let Some(rec) = session.take() {
                rec.tape.finish().await;
            }
            // Replica names, addresses and TLS details stay in the log.
            tracing::warn!(node = %link.node_id(), error = %e, "Kubernetes upgrade: the gateway agent could not be reached");
            return auth
                .refused(
                    &shared,
                    "error",
                    StatusCode::SERVICE_UNAVAILABLE,
                    status::GATEWAY_UNREACHABLE,
                )
                .await;
        }
        Err(_) => {
            if let Some(rec) = session.take() {
                rec.tape.finish().await;
            }
            let msg = format!(
                "the edge's Kubernetes API server did not switch protocols within {SWITCH_TIMEOUT:?}"
            );
            return auth
                .refused(&shared, "error", StatusCode::GATEWAY_TIMEOUT, &msg)
                .await;
        }
    };
    let Some(switched) = resp.headers().get(contract::HDR_SWITCHED).cloned() else {
        // The API server refused the upgrade (no such pod, RBAC, …): its answer
        // goes back as it is, counted and audited like any other.
        let (mut parts, body) = resp.into_parts();
        let agent_error = parts.headers.remove(contract::HDR_AGENT_ERROR).is_some();
        if let Some(rec) = session.take() {
            if agent_error {
                // The agent's own failure, perhaps after the switch: kept.
                rec.tape.finish().await;
            } else {
                // A clean refusal: nothing ran, the empty recording goes (the
                // audit log has the refusal).
                shared.recorder.discard(rec.tape).await;
            }
        }
        parts.headers.remove(contract::HDR_SWITCHED);
        let code = parts.status;
        let (reg, cuts) = live;
        let ends = super::proxy::ends(&shared, &auth, cuts);
        let finish = Finish::new(shared.clone(), auth, code, agent_error);
        let body = super::stream::relay(&shared, body, ends, finish, reg, &link);
        let mut out = Response::from_parts(parts, body);
        out.headers_mut().remove(header::CONNECTION);
        return out;
    };
    let (parts, from_gateway) = resp.into_parts();
    let wire = record::Wire::of(
        switched.to_str().unwrap_or_default(),
        parts
            .headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok()),
    );
    if let Some(rec) = session.as_mut()
        && !rec.switched(wire).await
    {
        if let Some(rec) = session.take() {
            rec.tape.finish().await;
        }
        let msg = "this project records every session, and the API server answered in a protocol that cannot be recorded; the session is ended";
        return auth
            .refused(&shared, "error", StatusCode::SERVICE_UNAVAILABLE, msg)
            .await;
    }
    let mut out = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if n.starts_with("postern-") || n == "content-length" || n == "content-type" {
            continue;
        }
        out.headers_mut().append(name.clone(), value.clone());
    }
    out.headers_mut().insert(header::UPGRADE, switched);
    out.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let (reg, cuts) = live;
    let ends = super::proxy::ends(&shared, &auth, cuts);
    let connection = flow::connection_of(&link);
    let tab = shared.live.flow.open(&connection, &auth.principal.user_id);
    // The other way round, the agent's receive window of the same connection.
    let tab_up = shared
        .live
        .flow
        .open(&format!("{connection}>agent"), &auth.principal.user_id);
    let mut finish = Finish::new(shared.clone(), auth, StatusCode::SWITCHING_PROTOCOLS, false);
    // Counted as they pass, so an end from outside still records them.
    let (sent_up, sent_down) = (AtomicU64::new(0), AtomicU64::new(0));
    shared.tasks.spawn(async move {
        let _reg = reg;
        let upgraded = match tokio::time::timeout(Duration::from_secs(10), on_upgrade).await {
            Ok(Ok(u)) => u,
            _ => {
                // The pod's side has switched; what it sent is recorded.
                if let Some(s) = session {
                    finish.recording = s.tape.finish().await;
                }
                finish.done("client_gone");
                return;
            }
        };
        let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
        let mut from_gateway = from_gateway;
        let (tape, mut from_pod, mut to_pod, input) = match session {
            Some(s) => (Some(s.tape), s.down, s.up, s.input),
            None => (None, None, None, false),
        };
        let end = {
            let up = async {
                let mut buf = vec![0u8; READ_CHUNK];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            sent_up.fetch_add(k as u64, Ordering::Relaxed);
                            if let (Some(t), Some(r)) = (&tape, to_pod.as_mut()) {
                                record::from_client(t, r, input, &buf[..k]).await;
                            }
                            let chunk = match tx.try_send(Bytes::copy_from_slice(&buf[..k])) {
                                Ok(()) => continue,
                                Err(TrySendError::Closed(_)) => break,
                                Err(TrySendError::Full(chunk)) => chunk,
                            };
                            // The gateway takes nothing for now: what it was sent
                            // waits on its side of the channel, charged meanwhile.
                            if !tab_up.waiting(flow::charge(None)) {
                                break;
                            }
                            let sent = tx.send(chunk).await;
                            tab_up.flowing();
                            if sent.is_err() {
                                break;
                            }
                        }
                    }
                }
                drop(tx);
            };
            let down = async {
                while let Some(frame) = from_gateway.frame().await {
                    let Ok(frame) = frame else { break };
                    if let Ok(data) = frame.into_data() {
                        sent_down.fetch_add(data.len() as u64, Ordering::Relaxed);
                        if let (Some(t), Some(r)) = (&tape, from_pod.as_mut()) {
                            record::from_server(t, r, &data).await;
                        }
                        if !write_to_client(&mut wr, &data, &tab).await {
                            break;
                        }
                    }
                }
                let _ = wr.shutdown().await;
            };
            let mut up = std::pin::pin!(up);
            let mut down = std::pin::pin!(down);
            tokio::select! {
                // An end from outside, or a cut, is what the audit entry says, even
                // when a direction stopped because of it.
                biased;
                why = ends.reached() => why,
                () = recording_failed.cancelled() => "recording_failed",
                () = tab.cut_off() => "over_budget",
                () = tab_up.cut_off() => "over_budget",
                _ = &mut down => {
                    // The server ended: give the client's last bytes a moment, then stop.
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut up).await;
                    "complete"
                }
                _ = &mut up => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), &mut down).await;
                    "complete"
                }
            }
        };
        if let Some(t) = tape {
            finish.recording = t.finish().await;
        }
        finish.bytes_in = sent_up.load(Ordering::Relaxed);
        finish.bytes_out = sent_down.load(Ordering::Relaxed);
        finish.done(end);
    });
    out
}

/// Writes `data` to the client. While the client takes nothing, what the
/// gateway still sends waits on the channel: charged to the user there
/// (`flow`), and the stream lost if that takes the user or the door past
/// their budget, or lasts [`super::stream::STALL`]. Answers whether all of
/// `data` was written.
async fn write_to_client<W: AsyncWrite + Unpin>(wr: &mut W, mut data: &[u8], tab: &Tab) -> bool {
    while !data.is_empty() {
        // A write that can go at once is not waiting (`write` takes nothing
        // when it is not ready, so trying costs nothing).
        let now = tokio::select! {
            biased;
            r = wr.write(data) => Some(r),
            () = std::future::ready(()) => None,
        };
        let written = match now {
            Some(r) => r,
            None => {
                if !tab.waiting(flow::charge(None)) {
                    return false;
                }
                let r = tokio::time::timeout(super::stream::STALL, wr.write(data)).await;
                tab.flowing();
                match r {
                    Ok(r) => r,
                    Err(_) => return false,
                }
            }
        };
        match written {
            Ok(0) | Err(_) => return false,
            Ok(n) => data = &data[n..],
        }
    }
    true
}
