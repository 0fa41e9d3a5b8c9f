//! One jump: authorize the direct-tcpip channel, push the grant, open a byte stream
//! to the node's sshd over the agent channel (`POST /v1/connect/22`), and only
//! then accept the channel, so every failure reaches the user as a channel-open
//! failure with a reason. Bytes are relayed in both directions with bounded
//! buffers, counted, and the session is audited when it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::link::AgentIncoming as Incoming;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use postern_api::admin::NodeState;
use postern_api::recordings::RecordingLevel;
use russh::server::ChannelOpenHandle;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::grants::GrantFor;
use super::handler::SshUser;
use super::target::{self, Refusal, Target};
use crate::agents::NodeLink;
use crate::audit::Event;
use crate::authz::Principal;
use crate::clock::{now_ms, rfc3339};
use crate::metrics::inc;

/// The only port reachable through the front door: the node's own sshd.
const SSH_PORT: u32 = 22;
/// Client packets in flight towards the node, per channel (OpenSSH sends 32 KiB
/// packets: 2 MiB).
const UPSTREAM_QUEUE: usize = 64;

pub struct Jump {
    pub user: Arc<SshUser>,
    pub host: String,
    pub port: u32,
    pub peer: SocketAddr,
}

pub async fn run(
    shared: Arc<super::Door>,
    jump: Jump,
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    cancel: CancellationToken,
) {
    let started = now_ms();
    // Registered before authorization, so an access change made meanwhile ends it.
    let kill = cancel.child_token();
    let live = shared.live.relay(
        &jump.user.principal.user_id,
        &jump.user.fingerprint,
        kill.clone(),
    );
    let opened = match open(&shared, &jump).await {
        Ok(v) => {
            live.authorized_for(&v.0.project.id);
            if kill.is_cancelled() {
                // The grant may have reached the node after the revocation ran.
                super::grants::revoke(
                    &shared,
                    &jump.user.principal.user_id,
                    super::grants::Which::Key(&jump.user.fingerprint),
                )
                .await;
                Err(Refusal {
                    reason: "your access changed while this connection was opening; connect again"
                        .into(),
                    project: Some(v.0.project.name.clone()),
                    node: Some(v.0.place.node_id.clone()),
                })
            } else {
                Ok(v)
            }
        }
        Err(r) => Err(r),
    };
    let (target, agent, from_node, to_node) = match opened {
        Ok(v) => v,
        Err(r) => {
            inc(&shared.metrics.ssh_denied);
            tracing::info!(user = %jump.user.principal.user_name, host = %jump.host, reason = %r.reason, "SSH jump refused");
            let mut ev = Event::new("ssh.connect", "denied")
                .org(&jump.user.principal.org_id)
                .actor(&jump.user.principal.user_name)
                .source(Some(jump.peer.ip().to_string()))
                .target(format!("host:{}:{}", jump.host, jump.port))
                .detail(json!({ "reason": r.reason, "key": jump.user.fingerprint }));
            if let Some(p) = &r.project {
                ev = ev.project(p);
            }
            if let Some(n) = &r.node {
                ev = ev.target(format!("node:{n}"));
            }
            // In the log before the user reads the refusal (whoever looks finds it).
            shared.audit.batched_written(ev).await;
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 1,
                    reason: r.reason,
                })
                .await;
            return;
        }
    };
    let logins = target.logins.clone();
    let logins_json = logins.as_ref().map_or_else(|| json!("any"), |l| json!(l));
    // Both ends of a session carry the same who, where and which logins.
    let session_event = |action: &str, mut detail: serde_json::Value| {
        let base = json!({
            "hostname": target.place.hostname,
            "edge": target.place.edge_name,
            "logins": logins_json,
            "key": jump.user.fingerprint,
        });
        if let (Some(d), serde_json::Value::Object(b)) = (detail.as_object_mut(), base) {
            d.extend(b);
        }
        Event::new(action, "ok")
            .org(&jump.user.principal.org_id)
            .actor(&jump.user.principal.user_name)
            .source(Some(jump.peer.ip().to_string()))
            .project(&target.project.name)
            .target(format!("node:{}", target.place.node_id))
            .detail(detail)
    };
    // Recorded at the start too: a session may stay open for days (ControlPersist).
    // Fail closed: a session nobody could find in the audit log is not opened.
    if let Err(e) = shared
        .audit
        .before(session_event("ssh.session.start", json!({})))
        .await
    {
        tracing::error!(error = %e, "audit log unwritable; refusing the SSH jump");
        reply
            .reject(ChannelOpenFailure::Other {
                code: 1,
                reason: "the bastion cannot write its audit log, so no session is opened; try again shortly".into(),
            })
            .await;
        return;
    }
    reply.accept().await;
    // Listed beside the recordings, as what it is: not recorded.
    let listed = shared
        .recorder
        .relayed(&crate::recording::Meta {
            org_id: jump.user.principal.org_id.clone(),
            project_id: target.project.id.clone(),
            node_id: target.place.node_id.clone(),
            hostname: target.place.hostname.clone(),
            user_id: jump.user.principal.user_id.clone(),
            user_name: jump.user.principal.user_name.clone(),
            login: String::new(),
            kind: "jump",
            command: String::new(),
            width: 0,
            height: 0,
            term: String::new(),
            pod: None,
        })
        .await;
    inc(&shared.metrics.ssh_sessions);
    tracing::info!(user = %jump.user.principal.user_name, node = %target.place.hostname, "SSH jump relayed");
    let (up, down, how) = pump(channel, from_node, to_node, kill).await;
    drop(agent);
    drop(live);
    if let Some(id) = &listed {
        shared.recorder.relay_ended(id, up + down).await;
    }
    let ended = now_ms();
    let ev = session_event(
        "ssh.session.end",
        json!({
            "started_at": rfc3339(started),
            "ended_at": rfc3339(ended),
            "bytes_to_node": up,
            "bytes_from_node": down,
            "end": how,
        }),
    );
    shared.audit.batched(ev).await;
}

type Opened = (Target, NodeLink, Incoming, mpsc::Sender<Bytes>);

async fn open(shared: &super::Door, jump: &Jump) -> Result<Opened, Refusal> {
    if jump.port != SSH_PORT {
        return Err(Refusal::new(format!(
            "only port 22 (the node's sshd) is reachable through Postern, not {}",
            jump.port
        )));
    }
    // Authorized afresh on every channel: a connection may outlive the key it was
    // opened with, or the role it had then (ControlPersist keeps them for hours).
    let principal = current_principal(shared, &jump.user).await?;
    let target = target::resolve(&shared.store, &principal, &jump.host).await?;
    let named = |reason: String| Refusal {
        reason,
        project: Some(target.project.name.clone()),
        node: Some(target.place.node_id.clone()),
    };
    let host = &target.place.hostname;
    if matches!(target.place.state, NodeState::Pending | NodeState::Disabled) {
        return Err(named(format!(
            "node {host} is {}; an admin must approve or enable it",
            target.place.state.as_str()
        )));
    }
    let Some(agent) = shared.fleet.link(&target.place.node_id) else {
        return Err(named(format!(
            "node {host} is not connected to the bastion (agent down or network cut); try again when it is back"
        )));
    };
    // A session that must be recorded cannot go through a relay the bastion
    // cannot see into; the refusal names the way that can.
    if super::terminate::level(shared, &principal, &target).await? == RecordingLevel::Strict {
        return Err(named(format!(
            "sessions on node {host} must be recorded, which ssh -J cannot be (it is encrypted end to end): connect with ssh LOGIN+{host}@<bastion> instead"
        )));
    }
    let no_logins = Vec::new();
    let grant = GrantFor {
        user_id: &principal.user_id,
        project_id: &target.project.id,
        user: &principal.user_name,
        public_key: &jump.user.public_key,
        fingerprint: &jump.user.fingerprint,
        logins: target.logins.as_ref().unwrap_or(&no_logins),
        forward_to: &target.forward_to,
    };
    // Call errors name peer replicas, their addresses and TLS details, which
    // are the operators' business: they go to the log, the user (and the
    // audit entry) read a fixed reason.
    if let Err(e) = shared.grants.ensure(shared, &agent, &grant).await {
        tracing::warn!(node = %target.place.node_id, error = %e, "grant push failed");
        return Err(named(format!(
            "node {host} did not accept the key grant; try again (an operator finds the cause in the bastion's log)"
        )));
    }
    let (from_node, to_node) = connect_sshd(shared, &agent, &target).await?;
    Ok((target, agent, from_node, to_node))
}

/// A byte stream to the node's own sshd, over its agent channel: what comes
/// from sshd, and a sender for what goes to it.
pub(super) async fn connect_sshd(
    shared: &super::Door,
    agent: &NodeLink,
    target: &Target,
) -> Result<(Incoming, mpsc::Sender<Bytes>), Refusal> {
    let named = |reason: String| Refusal {
        reason,
        project: Some(target.project.name.clone()),
        node: Some(target.place.node_id.clone()),
    };
    let host = &target.place.hostname;
    let (tx, body) = crate::agents::stream_body(UPSTREAM_QUEUE);
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!(
            "http://agent{}",
            postern_api::ssh::CONNECT_ROUTE.replace("{port}", "22")
        ))
        .body(body)
        .map_err(|e| {
            tracing::error!(error = %e, "cannot build the SSH connect request");
            named("internal error; the bastion's log has the details".into())
        })?;
    let timeout = shared.core.settings.agent_call_timeout;
    let resp = tokio::time::timeout(timeout, agent.send(req))
        .await
        .map_err(|_| named(format!("node {host} did not answer within {timeout:?}")))?
        .map_err(|e| {
            tracing::warn!(node = %target.place.node_id, error = %e, "SSH connect: the node's channel failed");
            named(format!(
                "node {host} could not be reached over its channel; try again (an operator finds the cause in the bastion's log)"
            ))
        })?;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let text = match Limited::new(resp.into_body(), 4096).collect().await {
            Ok(b) => {
                let bytes = b.to_bytes();
                serde_json::from_slice::<postern_api::ErrorBody>(&bytes)
                    .map(|e| e.error.message)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned())
            }
            Err(_) => String::new(),
        };
        // The agent's words reach the user's terminal and the audit log.
        let text = postern_api::validate::peer_line(&text, 300);
        return Err(named(format!(
            "node {host} could not reach its sshd ({status}): {text}"
        )));
    }
    Ok((resp.into_body(), tx))
}

/// The user as the store has them now: the key must still be registered to them
/// (or certified by a session of theirs still open), they must not be
/// disabled, and their roles are read anew.
pub(super) async fn current_principal(
    shared: &super::Door,
    user: &SshUser,
) -> Result<Principal, Refusal> {
    let p = &user.principal;
    let registered = shared
        .store
        .user_ssh_key(&p.user_id, &user.fingerprint)
        .await?
        .is_some();
    let key = registered
        || shared
            .store
            .session_by_ssh_key(&p.user_id, &user.fingerprint, crate::clock::now_ms())
            .await?
            .is_some();
    let owner = shared
        .store
        .user_by_id(&p.user_id)
        .await?
        .filter(|u| u.disabled_at.is_none());
    if owner.is_none() || !key {
        return Err(Refusal::new(format!(
            "the key you authenticated with ({}) is no longer registered to {}, or its session ended; log in again (postern login) and connect again",
            user.fingerprint, p.user_name
        )));
    }
    Ok(Principal {
        bindings: shared.store.bindings(&p.user_id).await?,
        ..p.clone()
    })
}

/// Relays until both directions are done (or the connection is cut); returns bytes
/// sent to the node, bytes received from it, and how it ended.
///
/// The channel's halves are used directly rather than as one `AsyncRead +
/// AsyncWrite`: russh hands over each client packet as `Bytes` and sends `Bytes`
/// from the node in packet-sized slices, so no byte is copied on the bastion
/// between the SSH connection and the agent channel, and the two directions
/// share no lock.
async fn pump(
    channel: Channel<Msg>,
    mut from_node: Incoming,
    to_node: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
) -> (u64, u64, &'static str) {
    let (mut rd, wr) = channel.split();
    let mut up_bytes = 0u64;
    let mut down_bytes = 0u64;
    let up = async {
        while let Some(msg) = rd.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    up_bytes += data.len() as u64;
                    if to_node.send(data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => {}
            }
        }
        // Dropping the sender ends the request body: the agent half-closes sshd.
        drop(to_node);
    };
    let down = async {
        while let Some(frame) = from_node.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                down_bytes += data.len() as u64;
                if wr.data_bytes(data).await.is_err() {
                    break;
                }
            }
        }
        let _ = wr.eof().await;
    };
    let how = tokio::select! {
        _ = async {
            tokio::pin!(up);
            tokio::pin!(down);
            tokio::select! {
                _ = &mut down => {
                    // sshd closed: the client normally closes its side at once.
                    let _ = tokio::time::timeout(Duration::from_secs(10), &mut up).await;
                }
                _ = &mut up => down.await,
            }
        } => "closed",
        _ = cancel.cancelled() => "cut",
    };
    // The session loop may already be gone (connection cut); do not wait on it.
    let _ = tokio::time::timeout(Duration::from_secs(2), wr.close()).await;
    (up_bytes, down_bytes, how)
}
