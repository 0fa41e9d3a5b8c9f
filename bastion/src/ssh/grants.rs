//! Just-in-time key grants: before relaying a user to a node, the bastion makes
//! sure the node holds a live grant for the user's key and logins. A grant already
//! pushed over the same channel with more than half its life left is reused, so a
//! burst of connections (Ansible forks) costs one push, not one each.

use std::collections::HashMap;
use std::sync::Mutex;

use http::Method;
use postern_api::ssh::{GRANTS_ROUTE, Grant, GrantPush, GrantPushed};

use crate::agents::AgentConn;
use crate::agents::client::{CallError, call_json};
use crate::clock::now_ms;
use crate::state::Shared;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    node_id: String,
    conn_id: u64,
    fingerprint: String,
}

#[derive(Debug, Default)]
pub struct GrantCache {
    held: Mutex<HashMap<Key, (Vec<String>, i64)>>,
}

/// What a grant is for.
#[derive(Debug, Clone)]
pub struct GrantFor<'a> {
    pub user: &'a str,
    pub public_key: &'a str,
    pub fingerprint: &'a str,
    /// Empty: any login.
    pub logins: &'a [String],
}

impl GrantCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (Vec<String>, i64)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ensures `agent` holds a live grant; returns the grant's expiry (ms).
    pub async fn ensure(
        &self,
        shared: &Shared,
        agent: &AgentConn,
        g: &GrantFor<'_>,
    ) -> Result<i64, CallError> {
        let ttl_ms = shared.settings.ssh_grant_ttl.as_millis() as i64;
        let now = now_ms();
        let key = Key {
            node_id: agent.node_id.clone(),
            conn_id: agent.conn_id,
            fingerprint: g.fingerprint.to_string(),
        };
        {
            let mut held = self.lock();
            held.retain(|_, (_, exp)| *exp > now);
            if let Some((logins, exp)) = held.get(&key)
                && logins == g.logins
                && *exp - now > ttl_ms / 2
            {
                return Ok(*exp);
            }
        }
        let grant = Grant {
            id: uuid::Uuid::now_v7().to_string(),
            user: g.user.to_string(),
            public_key: g.public_key.to_string(),
            fingerprint: g.fingerprint.to_string(),
            logins: g.logins.to_vec(),
            expires_at_ms: now + ttl_ms,
        };
        let expires = grant.expires_at_ms;
        let push = GrantPush {
            grants: vec![grant],
        };
        let _: GrantPushed = call_json(
            agent,
            Method::PUT,
            GRANTS_ROUTE,
            Some(&push),
            shared.settings.agent_call_timeout,
        )
        .await?;
        self.lock().insert(key, (g.logins.to_vec(), expires));
        Ok(expires)
    }
}
