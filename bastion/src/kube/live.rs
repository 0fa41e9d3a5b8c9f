//! Open Kubernetes requests (watches, long lists, exec and port-forward streams),
//! each with the user, the API token and the project it was authorized for, and
//! the gateway node serving it, so an access change ends exactly what it no
//! longer allows: a deleted user or a changed role everything of theirs (in that
//! project), a revoked token what was opened with it, a node's gateway role
//! taken back everything it serves.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::access::{AccessChange, Change, Door, DoorFuture};
use std::sync::Arc;

use crate::store::KubeGatewayRow;

#[derive(Debug)]
struct Open {
    user_id: String,
    token_id: String,
    project_id: String,
    /// The gateway node it was sent to.
    gateway: String,
    /// A watch or an upgraded stream, which may stay open for hours.
    long: bool,
    cuts: Cuts,
}

/// What ends an open request from outside, each for its own reason.
#[derive(Debug, Clone, Default)]
pub struct Cuts {
    /// The caller's access was taken away.
    pub access: CancellationToken,
    /// The node serving it lost its gateway role.
    pub gateway: CancellationToken,
}

/// Requests one user may hold open at once, and of those, watches and streams:
/// past them the door answers 429, so one user cannot take every stream of a
/// gateway's channel.
pub const MAX_OPEN_PER_USER: usize = 256;
pub const MAX_LONG_PER_USER: usize = 32;

#[derive(Debug, Default)]
pub struct Live {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
    /// Who a token is and what it may reach, for a moment: kubectl sends
    /// bursts of requests (discovery alone is dozens), and reading the token,
    /// the user, the roles, the project and the edge for each cost more than
    /// the request. An access change drops the user's entries at once; other
    /// changes (a new role, an edge removed) apply within `CACHE_FOR`.
    cache: Mutex<HashMap<CacheKey, (std::time::Instant, Cached)>>,
    /// Bumped by every access change, so an authorization read from the store
    /// before a change is not remembered after the change cleared the cache.
    epoch: AtomicU64,
    /// The gateway nodes of an edge, as the store listed them a moment ago.
    gateways: Mutex<HashMap<String, (std::time::Instant, Vec<KubeGatewayRow>)>>,
    /// Bumped by every change of a gateway grant, so a list read before the
    /// change is neither remembered nor trusted after it.
    gateway_epoch: AtomicU64,
    /// What open answers hold of the connections they arrive on.
    pub(super) flow: std::sync::Arc<super::flow::Ledger>,
}

/// How long an authorization is reused.
pub const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(2);
/// Authorizations remembered at most.
const CACHE_MAX: usize = 10_000;

/// A token (by its digest, never the secret itself) asking for one edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    token: [u8; 32],
    project: String,
    edge: String,
}

impl CacheKey {
    pub fn new(authorization: &str, project: &str, edge: &str) -> CacheKey {
        let d = ring::digest::digest(&ring::digest::SHA256, authorization.as_bytes());
        let mut token = [0u8; 32];
        token.copy_from_slice(d.as_ref());
        CacheKey {
            token,
            project: project.to_string(),
            edge: edge.to_string(),
        }
    }
}

/// An authorization as the door made it.
#[derive(Debug, Clone)]
pub struct Cached {
    pub principal: crate::authz::Principal,
    pub token_id: String,
    pub project: crate::store::ProjectRow,
    pub edge: crate::store::EdgeRow,
    pub groups: Vec<String>,
    pub expires_at_ms: i64,
}

/// An owned registration, for a response body that outlives its handler.
#[derive(Debug)]
pub struct OwnedRegistration {
    live: std::sync::Arc<Live>,
    id: u64,
}

impl Drop for OwnedRegistration {
    fn drop(&mut self) {
        self.live.lock().remove(&self.id);
    }
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a request sent to the gateway node `gateway`; its [`Cuts`]
    /// fire when access to it, or the node's gateway role, is taken away.
    pub fn register(
        self: &std::sync::Arc<Self>,
        user_id: &str,
        token_id: &str,
        project_id: &str,
        gateway: &str,
        long: bool,
    ) -> Result<(OwnedRegistration, Cuts), String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cuts = Cuts::default();
        let mut open = self.lock();
        let (mut all, mut longs) = (0, 0);
        for o in open.values().filter(|o| o.user_id == user_id) {
            all += 1;
            longs += usize::from(o.long);
        }
        if all >= MAX_OPEN_PER_USER {
            return Err(format!(
                "you have {all} Kubernetes requests open; wait for some to finish"
            ));
        }
        if long && longs >= MAX_LONG_PER_USER {
            return Err(format!(
                "you have {longs} watches and streams open, the most one user may hold; close some"
            ));
        }
        open.insert(
            id,
            Open {
                user_id: user_id.to_string(),
                token_id: token_id.to_string(),
                project_id: project_id.to_string(),
                gateway: gateway.to_string(),
                long,
                cuts: cuts.clone(),
            },
        );
        drop(open);
        Ok((
            OwnedRegistration {
                live: self.clone(),
                id,
            },
            cuts,
        ))
    }

    /// A recent authorization of this token for this edge, if the token has
    /// not expired since.
    pub fn cached(&self, key: &CacheKey) -> Option<Cached> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (at, c) = cache.get(key)?;
        (at.elapsed() < CACHE_FOR && c.expires_at_ms > crate::clock::now_ms()).then(|| c.clone())
    }

    /// Where access changes stand: read before an authorization is read from
    /// the store, handed to [`Live::remember`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Remembers an authorization read at `epoch`, unless an access change came
    /// since (it may have been read before that change was committed).
    pub fn remember(&self, key: CacheKey, c: Cached, epoch: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if self.epoch() != epoch {
            return;
        }
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (std::time::Instant::now(), c));
    }

    pub fn gateways_of(&self, edge_id: &str) -> Option<Vec<KubeGatewayRow>> {
        let g = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        let (at, nodes) = g.get(edge_id)?;
        (at.elapsed() < CACHE_FOR).then(|| nodes.clone())
    }

    /// Where gateway grants stand: read before the gateways are read from the
    /// store, handed to [`Live::remember_gateways`] and compared again once a
    /// request is registered.
    pub fn gateway_epoch(&self) -> u64 {
        self.gateway_epoch.load(Ordering::SeqCst)
    }

    /// Remembers an edge's gateways read at `epoch`, unless a grant changed since.
    pub fn remember_gateways(&self, edge_id: &str, nodes: Vec<KubeGatewayRow>, epoch: u64) {
        let mut g = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        if self.gateway_epoch() != epoch {
            return;
        }
        if g.len() >= CACHE_MAX {
            g.clear();
        }
        g.insert(edge_id.to_string(), (std::time::Instant::now(), nodes));
    }

    /// A gateway grant of the edge changed: its list is read again on the next
    /// request, and requests chosen from an older list check theirs.
    pub fn forget_gateways(&self, edge_id: &str) {
        let mut g = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        self.gateway_epoch.fetch_add(1, Ordering::SeqCst);
        g.remove(edge_id);
    }

    /// Ends every request the node serves (its gateway role was taken back);
    /// answers how many.
    pub fn cut_gateway(&self, node_id: &str) -> usize {
        let open = self.lock();
        let mut n = 0;
        for o in open.values().filter(|o| o.gateway == node_id) {
            if !o.cuts.gateway.is_cancelled() {
                o.cuts.gateway.cancel();
                n += 1;
            }
        }
        n
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Ends what `change` no longer allows; answers how many requests it ended.
    pub fn cut(&self, change: &AccessChange) -> usize {
        if !matches!(change.what, Change::KeyDeleted { .. }) {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            self.epoch.fetch_add(1, Ordering::SeqCst);
            cache.retain(|_, (_, c)| c.principal.user_id != change.user_id);
        }
        let open = self.lock();
        let mut n = 0;
        for o in open.values().filter(|o| o.user_id == change.user_id) {
            let hit = match &change.what {
                Change::UserDeleted | Change::Unknown => true,
                Change::TokenRevoked { token_id } => &o.token_id == token_id,
                Change::SessionEnded { session_id, .. } => &o.token_id == session_id,
                Change::RoleChanged { project_id: None } => true,
                Change::RoleChanged {
                    project_id: Some(p),
                } => &o.project_id == p,
                Change::KeyDeleted { .. } => false,
            };
            if hit && !o.cuts.access.is_cancelled() {
                o.cuts.access.cancel();
                n += 1;
            }
        }
        n
    }
}

/// The Kubernetes door on the access bus: access taken away ends the user's
/// open requests; a gateway role taken back ends what the node serves.
#[derive(Debug)]
pub(super) struct KubeAccess {
    pub(super) live: Arc<Live>,
}

impl Door for KubeAccess {
    fn name(&self) -> &'static str {
        "kube"
    }

    fn apply<'a>(&'a self, change: &'a AccessChange) -> DoorFuture<'a> {
        Box::pin(async move {
            let cut = self.live.cut(change);
            if cut > 0 {
                tracing::info!(user_id = %change.user_id, cut, "ended Kubernetes requests after an access change");
            }
            serde_json::json!({ "kube_requests_cut": cut })
        })
    }

    fn gateway_changed(&self, change: &crate::access::GatewayChange) -> usize {
        super::gateways::apply(&self.live, change)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;

    fn change(user: &str, what: Change) -> AccessChange {
        AccessChange {
            org_id: "o".into(),
            user_id: user.into(),
            what,
        }
    }

    #[test]
    fn a_change_ends_exactly_what_it_no_longer_allows() {
        let live = Arc::new(Live::default());
        let (_a, ca) = live.register("u1", "t1", "p1", "n1", false).unwrap();
        let (_b, cb) = live.register("u1", "t2", "p2", "n1", true).unwrap();
        let (_c, cc) = live.register("u2", "t3", "p1", "n1", false).unwrap();
        let (ca, cb, cc) = (ca.access, cb.access, cc.access);
        let key = Change::KeyDeleted {
            fingerprint: "f".into(),
        };
        assert_eq!(live.cut(&change("u1", key)), 0);
        let token = Change::TokenRevoked {
            token_id: "t2".into(),
        };
        assert_eq!(live.cut(&change("u1", token)), 1);
        assert!(cb.is_cancelled() && !ca.is_cancelled());
        let role = Change::RoleChanged {
            project_id: Some("p1".into()),
        };
        assert_eq!(live.cut(&change("u1", role)), 1);
        assert!(ca.is_cancelled() && !cc.is_cancelled());
        assert_eq!(live.cut(&change("u2", Change::Unknown)), 1);
        assert!(cc.is_cancelled());
        drop((_a, _b, _c));
        assert_eq!(live.count(), 0);
        // A watch held under a login session ends with the session, and only it.
        let (_d, cd) = live.register("u3", "s1", "p1", "n1", true).unwrap();
        let (_e, ce) = live.register("u3", "s2", "p1", "n1", true).unwrap();
        let ended = Change::SessionEnded {
            session_id: "s1".into(),
            ssh_fingerprint: None,
        };
        assert_eq!(live.cut(&change("u3", ended)), 1);
        assert!(cd.access.is_cancelled() && !ce.access.is_cancelled());
    }

    #[test]
    fn an_access_change_forgets_the_users_authorizations_at_once() {
        let live = Live::default();
        let cached = |user: &str| Cached {
            principal: crate::authz::Principal {
                user_id: user.into(),
                user_name: user.into(),
                org_id: "o".into(),
                bindings: vec![],
            },
            token_id: "t".into(),
            project: crate::store::ProjectRow {
                id: "p".into(),
                org_id: "o".into(),
                name: "web".into(),
                created_at: 0,
            },
            edge: crate::store::EdgeRow {
                id: "e".into(),
                project_id: "p".into(),
                name: "eu-1".into(),
                created_at: 0,
            },
            groups: vec![],
            expires_at_ms: i64::MAX,
        };
        let (k1, k2) = (
            CacheKey::new("Bearer a", "web", "eu-1"),
            CacheKey::new("Bearer b", "web", "eu-1"),
        );
        live.remember(k1.clone(), cached("u1"), live.epoch());
        live.remember(k2.clone(), cached("u2"), live.epoch());
        assert!(live.cached(&k1).is_some());
        assert!(
            live.cached(&CacheKey::new("Bearer a", "web", "eu-2"))
                .is_none()
        );
        live.cut(&change(
            "u1",
            Change::TokenRevoked {
                token_id: "t".into(),
            },
        ));
        assert!(live.cached(&k1).is_none());
        assert!(live.cached(&k2).is_some());
        // Read before the change, remembered after it: not kept.
        let before = live.epoch() - 1;
        live.remember(k1.clone(), cached("u1"), before);
        assert!(live.cached(&k1).is_none());
        let mut expired = cached("u3");
        expired.expires_at_ms = 0;
        live.remember(k1.clone(), expired, live.epoch());
        assert!(
            live.cached(&k1).is_none(),
            "an expired token is never reused"
        );
    }

    #[test]
    fn one_user_cannot_hold_every_stream() {
        let live = Arc::new(Live::default());
        let held: Vec<_> = (0..MAX_LONG_PER_USER)
            .map(|_| live.register("u1", "t", "p", "n", true).unwrap())
            .collect();
        assert!(live.register("u1", "t", "p", "n", true).is_err());
        // Short requests and other users still pass.
        assert!(live.register("u1", "t", "p", "n", false).is_ok());
        assert!(live.register("u2", "t", "p", "n", true).is_ok());
        drop(held);
        assert!(live.register("u1", "t", "p", "n", true).is_ok());
    }

    #[test]
    fn a_gateway_taken_back_ends_what_it_serves_and_its_list_is_read_again() {
        let live = Arc::new(Live::default());
        let (_a, on_1) = live.register("u1", "t1", "p", "n1", true).unwrap();
        let (_b, on_2) = live.register("u2", "t2", "p", "n2", false).unwrap();
        assert_eq!(live.cut_gateway("n1"), 1);
        assert!(on_1.gateway.is_cancelled() && !on_1.access.is_cancelled());
        assert!(!on_2.gateway.is_cancelled());
        // Once is enough.
        assert_eq!(live.cut_gateway("n1"), 0);
        // An access change does not count as a gateway cut, nor the other way.
        assert_eq!(live.cut(&change("u2", Change::Unknown)), 1);
        assert!(on_2.access.is_cancelled() && !on_2.gateway.is_cancelled());

        let row = |id: &str| KubeGatewayRow {
            id: id.into(),
            hostname: id.into(),
            capable: true,
        };
        let epoch = live.gateway_epoch();
        live.remember_gateways("e", vec![row("n1")], epoch);
        assert_eq!(live.gateways_of("e"), Some(vec![row("n1")]));
        live.forget_gateways("e");
        assert_eq!(live.gateways_of("e"), None);
        assert_ne!(live.gateway_epoch(), epoch);
        // Read before the change, remembered after it: not kept.
        live.remember_gateways("e", vec![row("n1")], epoch);
        assert_eq!(live.gateways_of("e"), None);
        live.remember_gateways("e", vec![row("n2")], live.gateway_epoch());
        assert_eq!(live.gateways_of("e"), Some(vec![row("n2")]));
    }
}
