//! Access changes as events. A REST handler that takes access away (a user, a key
//! or a role deleted or narrowed) publishes the change after its transaction has
//! committed; every door that holds live access (the SSH front door today; the
//! Kubernetes door and others as they come) subscribes and cuts what the change
//! no longer allows. With replicas, the change is also recorded for every other
//! replica (`replicas::events`: a row they read and apply, even after an
//! outage), whose doors cut their own sessions in turn.
//!
//! A handler never calls a door: it publishes, and doors register themselves.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::audit::{Auditor, Event};
use crate::metrics::Metrics;
use crate::replicas::Replicas;

/// What was taken away from `user_id`. Read tolerantly (unknown fields are
/// ignored): a replica of an older version must still apply what a newer one
/// publishes during a rolling upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessChange {
    /// The org of the user, under which the other replicas record what they cut.
    pub org_id: String,
    pub user_id: String,
    pub what: Change,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The user is gone: everything they hold ends.
    UserDeleted,
    /// One key is gone: what was opened with it ends.
    KeyDeleted { fingerprint: String },
    /// A role on this project (`None`: the org-wide role) was removed or
    /// changed: what the user holds into that project ends, and is authorized
    /// afresh against the new role on the next attempt.
    RoleChanged { project_id: Option<String> },
    /// One API token was revoked: what was opened with it (kubectl watches and
    /// streams) ends. SSH sessions are opened with keys, not tokens.
    TokenRevoked { token_id: String },
    /// A login session ended (logout, an admin, the user disabled, its SSO
    /// roles gone): what was opened with it ends, on every door: requests and
    /// watches held under it, and SSH sessions opened with the key it
    /// certified.
    SessionEnded {
        session_id: String,
        ssh_fingerprint: Option<String>,
    },
    /// A kind this version does not know (published by a newer replica): read
    /// as the widest cut, everything the user holds, since access was taken
    /// away and not knowing how much must not keep any of it.
    #[serde(other)]
    Unknown,
}

pub type DoorFuture<'a> = Pin<Box<dyn Future<Output = Value> + Send + 'a>>;

/// A door that holds live access and must cut it on a change.
pub trait Door: Send + Sync + std::fmt::Debug {
    /// The door's name in reports (`ssh`).
    fn name(&self) -> &'static str;
    /// Cuts what `change` no longer allows on this replica; answers a report
    /// (what was cut) for the audit log.
    fn apply<'a>(&'a self, change: &'a AccessChange) -> DoorFuture<'a>;
    /// A node's Kubernetes gateway role changed: ends what the node serves
    /// through this door when it lost the role. Answers how many requests
    /// ended; doors that serve nothing through gateways keep the default.
    fn gateway_changed(&self, _change: &super::GatewayChange) -> usize {
        0
    }
}

/// The doors subscribed on this replica, and what publishing needs: the other
/// replicas (changes are recorded for them), the audit log and the metrics.
#[derive(Debug)]
pub struct AccessBus {
    doors: RwLock<Vec<Arc<dyn Door>>>,
    replicas: Option<Arc<Replicas>>,
    audit: Auditor,
    metrics: Arc<Metrics>,
}

impl AccessBus {
    pub fn new(
        replicas: Option<Arc<Replicas>>,
        audit: Auditor,
        metrics: Arc<Metrics>,
    ) -> AccessBus {
        AccessBus {
            doors: RwLock::default(),
            replicas,
            audit,
            metrics,
        }
    }

    /// The other replicas, when there are.
    pub(super) fn replicas(&self) -> Option<&Arc<Replicas>> {
        self.replicas.as_ref()
    }

    /// The audit log, for what other replicas' changes cut here.
    pub(super) fn audit(&self) -> &Auditor {
        &self.audit
    }

    pub fn subscribe(&self, door: Arc<dyn Door>) {
        self.doors
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(door);
    }

    fn doors(&self) -> Vec<Arc<dyn Door>> {
        self.doors.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A gateway change applied on this replica's doors: requests ended.
    pub(super) fn gateway_here(&self, change: &super::GatewayChange) -> usize {
        self.doors().iter().map(|d| d.gateway_changed(change)).sum()
    }

    async fn apply_here(&self, change: &AccessChange) -> Map<String, Value> {
        let mut reports = Map::new();
        for door in self.doors() {
            reports.insert(door.name().to_string(), door.apply(change).await);
        }
        reports
    }

    /// Publishes a committed access change: applies it on this replica's
    /// doors now and records it for the other replicas. Answers this
    /// replica's door reports, by door name, for the audit entry of the call
    /// that made the change.
    pub async fn publish(&self, change: AccessChange) -> Map<String, Value> {
        publish(self, change).await
    }

    /// A change another replica published (see [`apply_published`]).
    pub async fn apply_published(&self, origin: &str, payload: &str) {
        apply_published(self, origin, payload).await;
    }
}

async fn publish(bus: &AccessBus, change: AccessChange) -> Map<String, Value> {
    let reports = bus.apply_here(&change).await;
    if let Some(r) = bus.replicas() {
        match serde_json::to_string(&change) {
            Ok(payload) => {
                if let Err(e) = r
                    .publish(crate::replicas::events::KIND_ACCESS, &payload)
                    .await
                {
                    crate::metrics::inc(&bus.metrics.access_publish_failures);
                    tracing::error!(error = %e, user_id = %change.user_id, "cannot record an access change for the other replicas: their sessions of this user stay until they next authorize");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an access change for the other replicas")
            }
        }
    }
    reports
}

/// Whether a door's report counts anything cut or revoked.
fn cut_anything(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_u64().is_some_and(|n| n > 0),
        Value::Object(m) => m.values().any(cut_anything),
        Value::Array(a) => a.iter().any(cut_anything),
        _ => false,
    }
}

/// A change another replica published: applied to this replica's doors, and
/// recorded in the audit log when it cut anything here.
async fn apply_published(bus: &AccessBus, origin: &str, payload: &str) {
    let change: AccessChange = match serde_json::from_str(payload) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable access change from another replica; ignored");
            return;
        }
    };
    let reports = bus.apply_here(&change).await;
    if !reports.values().any(cut_anything) {
        return;
    }
    let me = bus.replicas().map(|r| r.name.clone()).unwrap_or_default();
    let ev = Event::new("access.applied", "ok")
        .org(&change.org_id)
        .actor(format!("replica:{me}"))
        .detail(json!({
            "published_by": origin,
            "change": change,
            "doors": reports,
        }));
    bus.audit.batched(ev).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn changes_travel_as_small_json_and_newer_ones_are_read_as_the_widest_cut() {
        let c = AccessChange {
            org_id: "o1".into(),
            user_id: "u1".into(),
            what: Change::KeyDeleted {
                fingerprint: "SHA256:abc".into(),
            },
        };
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.len() < 8000);
        assert_eq!(serde_json::from_str::<AccessChange>(&s).unwrap(), c);
        // A field or a kind from a newer replica.
        let newer: AccessChange = serde_json::from_str(
            r#"{"org_id":"o","user_id":"u","what":{"kind":"user_deleted","why":"x"},"extra":1}"#,
        )
        .unwrap();
        assert_eq!(newer.what, Change::UserDeleted);
        let unknown: AccessChange = serde_json::from_str(
            r#"{"org_id":"o","user_id":"u","what":{"kind":"group_removed","group":"g"}}"#,
        )
        .unwrap();
        assert_eq!(unknown.what, Change::Unknown);
        assert!(serde_json::from_str::<AccessChange>(r#"{"user_id":"u"}"#).is_err());
    }

    #[test]
    fn only_reports_that_cut_something_are_recorded() {
        assert!(!cut_anything(
            &json!({"ssh": {"ssh_cut": 0, "grants_revoked_on_nodes": 0}})
        ));
        assert!(cut_anything(&json!({"ssh": {"ssh_cut": 1}})));
    }
}
