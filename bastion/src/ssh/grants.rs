//! Just-in-time key grants: before relaying a user to a node, the bastion makes
//! sure the node holds a live grant for the user's key and logins. A grant already
//! pushed over the same channel with more than half its life left is reused, so a
//! burst of connections (Ansible forks) costs one push, not one each.
//!
//! The cache also remembers which nodes hold whose grants, so that an access
//! change can take them back at once ([`revoke`]) instead of waiting for expiry.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use futures_util::StreamExt;
use http::Method;
use postern_api::ssh::{GRANTS_ROUTE, Grant, GrantPush, GrantPushed};

use crate::agents::NodeLink;
use crate::agents::client::{CallError, call_json};
use crate::clock::now_ms;

/// Revocation pushes in flight at once.
const REVOKE_CONCURRENCY: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    node_id: String,
    /// The channel the grant went over (replica, connection): after the agent
    /// reconnects, anywhere, the grant is pushed again.
    channel: (String, u64),
    fingerprint: String,
}

#[derive(Debug, Clone)]
struct Held {
    user_id: String,
    project_id: String,
    logins: Vec<String>,
    forward_to: Vec<String>,
    expires_at_ms: i64,
}

#[derive(Debug, Default)]
pub struct GrantCache {
    held: Mutex<HashMap<Key, Held>>,
}

/// What a grant is for.
#[derive(Debug, Clone)]
pub struct GrantFor<'a> {
    pub user_id: &'a str,
    pub user: &'a str,
    pub project_id: &'a str,
    pub public_key: &'a str,
    pub fingerprint: &'a str,
    /// Empty: any login.
    pub logins: &'a [String],
    /// Destinations for `ssh -L`; empty: no forwarding.
    pub forward_to: &'a [String],
}

/// Which of a user's grants to take back.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    All,
    Key(&'a str),
    /// Grants on nodes of this project (`None`: of any project).
    Project(Option<&'a str>),
}

impl GrantCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ensures `agent` holds a live grant; returns the grant's expiry (ms).
    pub async fn ensure(
        &self,
        shared: &super::Door,
        agent: &NodeLink,
        g: &GrantFor<'_>,
    ) -> Result<i64, CallError> {
        let ttl_ms = shared.settings.ssh_grant_ttl.as_millis() as i64;
        let now = now_ms();
        let (replica, conn) = agent.channel_key();
        let key = Key {
            node_id: agent.node_id().to_string(),
            channel: (replica.to_string(), conn),
            fingerprint: g.fingerprint.to_string(),
        };
        {
            let mut held = self.lock();
            held.retain(|_, h| h.expires_at_ms > now);
            if let Some(h) = held.get(&key)
                && h.logins == g.logins
                && h.forward_to == g.forward_to
                && h.expires_at_ms - now > ttl_ms / 2
            {
                return Ok(h.expires_at_ms);
            }
        }
        let grant = Grant {
            id: uuid::Uuid::now_v7().to_string(),
            user: g.user.to_string(),
            public_key: g.public_key.to_string(),
            fingerprint: g.fingerprint.to_string(),
            logins: g.logins.to_vec(),
            expires_at_ms: now + ttl_ms,
            forward_to: g.forward_to.to_vec(),
            once: false,
        };
        let expires = grant.expires_at_ms;
        let push = GrantPush {
            grants: vec![grant],
            revoke: Vec::new(),
        };
        let _: GrantPushed = call_json(
            agent,
            Method::PUT,
            GRANTS_ROUTE,
            Some(&push),
            shared.core.settings.agent_call_timeout,
        )
        .await?;
        let mut held = self.lock();
        // The node applies a grant's logins and forwarding to all of the user's
        // grants there.
        for (k, h) in held.iter_mut() {
            if k.node_id == key.node_id && h.user_id == g.user_id {
                h.logins = g.logins.to_vec();
                h.forward_to = g.forward_to.to_vec();
            }
        }
        held.insert(
            key,
            Held {
                user_id: g.user_id.to_string(),
                project_id: g.project_id.to_string(),
                logins: g.logins.to_vec(),
                forward_to: g.forward_to.to_vec(),
                expires_at_ms: expires,
            },
        );
        Ok(expires)
    }

    /// Forgets the user's grants that `which` names; returns them as
    /// node → fingerprints.
    fn take(&self, user_id: &str, which: Which<'_>) -> HashMap<String, BTreeSet<String>> {
        let now = now_ms();
        let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
        self.lock().retain(|k, h| {
            if h.expires_at_ms <= now {
                return false;
            }
            let hit = h.user_id == user_id
                && match which {
                    Which::All => true,
                    Which::Key(fp) => k.fingerprint == fp,
                    Which::Project(None) => true,
                    Which::Project(Some(p)) => h.project_id == p,
                };
            if hit {
                out.entry(k.node_id.clone())
                    .or_default()
                    .insert(k.fingerprint.clone());
            }
            !hit
        });
        out
    }
}

/// What a revocation reached.
#[derive(Debug, Default, Clone, Copy)]
pub struct Revoked {
    /// Nodes that dropped the grants.
    pub nodes: usize,
    /// Nodes that could not be told (not connected, or the call failed); their
    /// grants expire on their own, and no relay reaches them without a fresh
    /// authorization.
    pub unreached: usize,
}

/// Takes the user's grants that `which` names back from the nodes holding them.
/// A grant pushed before this bastion started is not known here and runs out at
/// its expiry; it is useless without a relay, which is authorized afresh.
pub async fn revoke(shared: &super::Door, user_id: &str, which: Which<'_>) -> Revoked {
    let held = shared.grants.take(user_id, which);
    let timeout = shared.core.settings.agent_call_timeout;
    let results: Vec<bool> = futures_util::stream::iter(held)
        .map(|(node_id, fps)| async move {
            let Some(agent) = shared.fleet.link(&node_id) else {
                return false;
            };
            let push = GrantPush {
                grants: Vec::new(),
                revoke: fps.into_iter().collect(),
            };
            match call_json::<_, GrantPushed>(
                &agent,
                Method::PUT,
                GRANTS_ROUTE,
                Some(&push),
                timeout,
            )
            .await
            {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(node = %node_id, error = %e, "could not revoke SSH grants");
                    false
                }
            }
        })
        .buffer_unordered(REVOKE_CONCURRENCY)
        .collect()
        .await;
    let nodes = results.iter().filter(|ok| **ok).count();
    Revoked {
        nodes,
        unreached: results.len() - nodes,
    }
}
