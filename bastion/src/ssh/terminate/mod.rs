//! The terminating mode: `ssh LOGIN+NODE@bastion` reaches a node with no jump.
//!
//! The bastion authenticates the person (a registered key or their session's
//! certificate), then opens its own SSH connection to the node's sshd over the
//! node's agent channel, logged in with a just-in-time key: made for this
//! connection, held only in this process's memory, granted to the node for one
//! login and a minute at most, and taken back as soon as the login is done. The
//! client's channels are bridged to that connection ([`bridge`]), which is
//! where the bastion can see, and record, what happens.
//!
//! Why trust the node's sshd host key without a known_hosts: the bytes reach
//! it over the node's own mTLS channel, whose certificate names the node, to
//! its loopback sshd; no one else can answer. Its fingerprint is audited.

pub(super) mod bridge;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::link::AgentIncoming as Incoming;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Method;
use postern_api::admin::NodeState;
use postern_api::recordings::RecordingLevel;
use postern_api::ssh::{GRANTS_ROUTE, Grant, GrantPush, GrantPushed, ONCE_GRANT_MAX_MS};
use russh::keys::{Algorithm, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use serde_json::json;
use tokio::sync::mpsc;

use super::handler::SshUser;
use super::keys::{canonical, fingerprint};
use super::target::{self, Refusal, Target};
use crate::agents::NodeLink;
use crate::agents::client::call_json;
use crate::audit::Event;
use crate::authz::Principal;
use crate::clock::now_ms;

/// Where a `LOGIN+NODE[+USER]` user name leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub login: String,
    /// `hostname` or `hostname.edge.project`, as for a jump.
    pub node: String,
    /// The Postern user, when named: a key several users registered names
    /// none of them by itself (registering proves no possession of a key).
    pub user: Option<String>,
}

/// Reads the SSH user name: `None` when it names no destination (a jump
/// login), else the destination or why it cannot be one.
pub fn destination(user: &str) -> Option<Result<Destination, String>> {
    let (login, rest) = user.split_once('+')?;
    let (node, named) = match rest.split_once('+') {
        Some((node, named)) => (node, Some(named)),
        None => (rest, None),
    };
    Some(if postern_api::validate::login(login).is_err() {
        Err(format!(
            "{:?} is not a unix login: connect as LOGIN+NODE (for example root+web-1)",
            postern_api::validate::peer_line(login, 40)
        ))
    } else if node.is_empty() || node.len() > 253 {
        Err("no node named after the '+': connect as LOGIN+NODE".into())
    } else if named.is_some_and(|u| postern_api::validate::name("user", u).is_err()) {
        Err("after a second '+' comes your Postern user name: LOGIN+NODE+USER".into())
    } else {
        Ok(Destination {
            login: login.to_string(),
            node: node.to_string(),
            user: named.map(str::to_string),
        })
    })
}

/// What a connection refused for a key that names no single user hears.
pub const AMBIGUOUS_KEY: &str = "the key you used is registered to more than one Postern user: name yours in the login, as LOGIN+NODE+USER (for example root+web-1+alice), or log in with postern login and use its certificate";

/// The recording level that applies to `principal` on `target`: the project's
/// policy (its default when none was set) for the user's role and the node's
/// labels.
pub async fn level(
    shared: &super::Door,
    principal: &Principal,
    target: &Target,
) -> Result<RecordingLevel, Refusal> {
    Ok(policy(shared, principal, target).await?.0)
}

/// The level, and whether input is recorded too.
async fn policy(
    shared: &super::Door,
    principal: &Principal,
    target: &Target,
) -> Result<(RecordingLevel, bool), Refusal> {
    let policy = shared
        .store
        .recording_policy(&target.project.id)
        .await?
        .unwrap_or_default();
    let role = principal.effective_role(&target.project.id);
    let labels = if policy.labels.is_empty() {
        Default::default()
    } else {
        shared
            .store
            .node(&target.place.node_id)
            .await?
            .map(|n| n.labels)
            .unwrap_or_default()
    };
    Ok((policy.level(role, &labels), policy.input))
}

/// What one terminated channel is allowed: the node, the login, the level.
#[derive(Debug)]
pub struct Authorized {
    pub principal: Principal,
    pub target: Target,
    pub level: RecordingLevel,
    /// Record what the user types too.
    pub input: bool,
}

/// Authorizes `dest` for `user` now (each channel asks again: a connection may
/// outlive the role it was opened with).
pub async fn authorize(
    shared: &super::Door,
    user: &SshUser,
    dest: &Destination,
) -> Result<Authorized, Refusal> {
    let principal = super::relay::current_principal(shared, user).await?;
    let target = target::resolve(&shared.store, &principal, &dest.node).await?;
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
    if let Some(logins) = &target.logins
        && !logins.iter().any(|l| l == &dest.login)
    {
        return Err(named(format!(
            "your role on node {host} does not allow the login {}; it allows: {}",
            dest.login,
            if logins.is_empty() {
                "none".to_string()
            } else {
                logins.join(", ")
            }
        )));
    }
    let (level, input) = policy(shared, &principal, &target).await?;
    Ok(Authorized {
        principal,
        target,
        level,
        input,
    })
}

/// The bastion's SSH connection to a node's sshd, shared by the client's
/// channels to that node.
pub struct NodeSsh {
    pub handle: russh::client::Handle<NodeClient>,
    pub node_id: String,
    pub login: String,
    _agent: NodeLink,
}

impl std::fmt::Debug for NodeSsh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSsh")
            .field("node_id", &self.node_id)
            .field("login", &self.login)
            .finish()
    }
}

/// The client half's handler: notes the node's host key (see the module's
/// note on why it is not checked against a list).
#[derive(Debug, Default, Clone)]
pub struct NodeClient {
    host_key: Arc<Mutex<Option<String>>>,
}

impl russh::client::Handler for NodeClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let fp = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => fingerprint(key),
            PublicKeyOrCertificate::Certificate(c) => {
                fingerprint(&russh::keys::PublicKey::new(c.public_key().clone(), ""))
            }
        };
        *self.host_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(fp);
        Ok(true)
    }
}

/// The connections of one client connection, by node and login: a second
/// channel (sftp beside a shell, Ansible's next task) reuses the first's.
#[derive(Debug, Default)]
pub struct Upstreams {
    open: tokio::sync::Mutex<Vec<Arc<NodeSsh>>>,
}

impl Upstreams {
    /// The connection to `target` as `login`, opened if there is none yet (or
    /// the last one closed).
    pub async fn get(
        &self,
        shared: &super::Door,
        user: &SshUser,
        a: &Authorized,
        login: &str,
    ) -> Result<Arc<NodeSsh>, Refusal> {
        let mut open = self.open.lock().await;
        open.retain(|c| !c.handle.is_closed());
        if let Some(c) = open
            .iter()
            .find(|c| c.node_id == a.target.place.node_id && c.login == login)
        {
            return Ok(c.clone());
        }
        let c = Arc::new(connect(shared, user, a, login).await?);
        open.push(c.clone());
        Ok(c)
    }
}

/// A byte stream over the agent channel, as russh's client wants one.
fn byte_stream(
    from_node: Incoming,
    to_node: mpsc::Sender<Bytes>,
) -> impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {
    let frames = http_body_util::BodyStream::new(from_node).filter_map(|f| async move {
        match f {
            Ok(frame) => frame.into_data().ok().map(Ok),
            Err(e) => Some(Err(std::io::Error::other(e))),
        }
    });
    let reader = tokio_util::io::StreamReader::new(Box::pin(frames));
    let sink = tokio_util::sync::PollSender::new(to_node)
        .sink_map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe));
    let writer = tokio_util::io::SinkWriter::new(tokio_util::io::CopyToBytes::new(sink));
    tokio::io::join(reader, writer)
}

/// The client half's settings: the same large windows as the server half, so
/// bulk copies are not held to russh's defaults on either leg.
fn client_config(s: &super::Settings) -> Arc<russh::client::Config> {
    Arc::new(russh::client::Config {
        // AES-GCM, as on the client's side: russh would otherwise pick
        // chacha20-poly1305, whose portable Poly1305 took a quarter of the
        // bastion's CPU and held sshd at its limit on a bulk copy (profiled).
        // Every sshd since OpenSSH 6.2 offers AES-GCM.
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(super::CIPHERS),
            ..russh::Preferred::default()
        },
        window_size: s.ssh_window,
        maximum_packet_size: s.ssh_max_packet,
        channel_buffer_size: (s.ssh_window / s.ssh_max_packet.max(1024)) as usize + 16,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    })
}

async fn push(
    shared: &super::Door,
    agent: &NodeLink,
    push: &GrantPush,
) -> Result<(), crate::agents::client::CallError> {
    let _: GrantPushed = call_json(
        agent,
        Method::PUT,
        GRANTS_ROUTE,
        Some(push),
        shared.core.settings.agent_call_timeout,
    )
    .await?;
    Ok(())
}

async fn connect(
    shared: &super::Door,
    user: &SshUser,
    a: &Authorized,
    login: &str,
) -> Result<NodeSsh, Refusal> {
    let target = &a.target;
    let host = &target.place.hostname;
    let named = |reason: String| Refusal {
        reason,
        project: Some(target.project.name.clone()),
        node: Some(target.place.node_id.clone()),
    };
    let Some(agent) = shared.fleet.link(&target.place.node_id) else {
        return Err(named(format!(
            "node {host} is not connected to the bastion (agent down or network cut); try again when it is back"
        )));
    };
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(node = %target.place.node_id, error = %e, "{what}");
        named("internal error; the bastion's log has the details".into())
    };
    let key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .map_err(|e| internal("cannot make a one-time key", &e))?;
    let public_key = canonical(key.public_key()).map_err(|e| internal("one-time key", &e))?;
    let fp = fingerprint(key.public_key());
    let grant = Grant {
        id: uuid::Uuid::now_v7().to_string(),
        user: a.principal.user_name.clone(),
        public_key,
        fingerprint: fp.clone(),
        logins: vec![login.to_string()],
        expires_at_ms: now_ms() + ONCE_GRANT_MAX_MS,
        forward_to: target.forward_to.clone(),
        once: true,
    };
    if let Err(e) = push(
        shared,
        &agent,
        &GrantPush {
            grants: vec![grant],
            revoke: Vec::new(),
        },
    )
    .await
    {
        tracing::warn!(node = %target.place.node_id, error = %e, "one-time grant push failed");
        return Err(named(format!(
            "node {host} did not accept the bastion's one-time credential; its agent may be older than this bastion (an operator finds the cause in the bastion's log)"
        )));
    }
    let logged_in = login_to_node(shared, &agent, target, login, key).await;
    // Taken back whatever happened: the key is good for this one login only.
    let taken_back = push(
        shared,
        &agent,
        &GrantPush {
            grants: Vec::new(),
            revoke: vec![fp.clone()],
        },
    )
    .await;
    if let Err(e) = &taken_back {
        // It still expires within the minute, and its private half never
        // left this process.
        tracing::warn!(node = %target.place.node_id, error = %e, "cannot take the one-time grant back");
    }
    let (handle, host_key) = logged_in.map_err(named)?;
    shared.audit.best_effort(
        Event::new("ssh.terminate.login", "ok")
            .org(&a.principal.org_id)
            .actor(&a.principal.user_name)
            .project(&target.project.name)
            .target(format!("node:{}", target.place.node_id))
            .detail(json!({
                "login": login,
                "hostname": host,
                "one_time_key": fp,
                "node_host_key": host_key,
                "key": user.fingerprint,
                "taken_back": taken_back.is_ok(),
            })),
    );
    Ok(NodeSsh {
        handle,
        node_id: target.place.node_id.clone(),
        login: login.to_string(),
        _agent: agent,
    })
}

async fn login_to_node(
    shared: &super::Door,
    agent: &NodeLink,
    target: &Target,
    login: &str,
    key: PrivateKey,
) -> Result<(russh::client::Handle<NodeClient>, String), String> {
    let host = &target.place.hostname;
    let (from_node, to_node) = super::relay::connect_sshd(shared, agent, target)
        .await
        .map_err(|r| r.reason)?;
    let client = NodeClient::default();
    let seen = client.host_key.clone();
    let deadline = shared.core.settings.agent_call_timeout;
    let mut handle = tokio::time::timeout(
        deadline,
        russh::client::connect_stream(
            client_config(&shared.settings),
            byte_stream(from_node, to_node),
            client,
        ),
    )
    .await
    .map_err(|_| format!("node {host}'s sshd did not answer within {deadline:?}"))?
    .map_err(|e| {
        tracing::warn!(node = %target.place.node_id, error = %e, "SSH to the node's sshd failed");
        format!("node {host}'s sshd could not be reached over its channel; try again (an operator finds the cause in the bastion's log)")
    })?;
    let auth = tokio::time::timeout(
        deadline,
        handle.authenticate_publickey(login, PrivateKeyWithHashAlg::new(Arc::new(key), None)),
    )
    .await
    .map_err(|_| format!("node {host}'s sshd did not answer the login within {deadline:?}"))?
    .map_err(|e| {
        tracing::warn!(node = %target.place.node_id, error = %e, "login to the node's sshd failed");
        format!("node {host}'s sshd closed the connection during the login")
    })?;
    if !auth.success() {
        return Err(format!(
            "node {host}'s sshd refused the bastion's one-time credential for {login}: its sshd must ask postern-keys (AuthorizedKeysCommand), and {login} must exist there; an operator runs `postern-agent doctor` on the node"
        ));
    }
    let host_key = seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default();
    Ok((handle, host_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_names_its_node_and_maybe_its_user() {
        assert!(destination("alice").is_none());
        let d = destination("root+web-1").unwrap().unwrap();
        assert_eq!(
            (d.login.as_str(), d.node.as_str(), d.user),
            ("root", "web-1", None)
        );
        let d = destination("root+web-1.eu-1.shop+alice").unwrap().unwrap();
        assert_eq!(d.node, "web-1.eu-1.shop");
        assert_eq!(d.user.as_deref(), Some("alice"));
        for bad in [
            "+web-1",
            "root+",
            "Root Login+web-1",
            "root+web-1+",
            "root+web-1+Al ice",
            "root+web-1+a+b",
        ] {
            assert!(destination(bad).unwrap().is_err(), "{bad}");
        }
    }
}
