//! Access changes as events. A REST handler that takes access away (a user, a key
//! or a role deleted or narrowed) publishes the change after its transaction has
//! committed; every door that holds live access (the SSH front door today; the
//! Kubernetes door and others as they come) subscribes and cuts what the change
//! no longer allows. With replicas, the change is also sent to every other
//! replica (NOTIFY, after commit), whose doors cut their own sessions in turn.
//!
//! A handler never calls a door: it publishes, and doors register themselves.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::audit::Event;
use crate::state::Shared;

/// What was taken away from `user_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessChange {
    /// The org of the user, under which the other replicas record what they cut.
    pub org_id: String,
    pub user_id: String,
    pub what: Change,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// The user is gone: everything they hold ends.
    UserDeleted,
    /// One key is gone: what was opened with it ends.
    KeyDeleted { fingerprint: String },
    /// A role on this project (`None`: the org-wide role) was removed or
    /// changed: what the user holds into that project ends, and is authorized
    /// afresh against the new role on the next attempt.
    RoleChanged { project_id: Option<String> },
}

pub type DoorFuture<'a> = Pin<Box<dyn Future<Output = Value> + Send + 'a>>;

/// A door that holds live access and must cut it on a change.
pub trait Door: Send + Sync + std::fmt::Debug {
    /// The door's name in reports (`ssh`).
    fn name(&self) -> &'static str;
    /// Cuts what `change` no longer allows on this replica; answers a report
    /// (what was cut) for the audit log.
    fn apply<'a>(&'a self, shared: &'a Shared, change: &'a AccessChange) -> DoorFuture<'a>;
}

/// The doors subscribed on this replica.
#[derive(Debug, Default)]
pub struct AccessBus {
    doors: RwLock<Vec<Arc<dyn Door>>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Notice {
    origin: String,
    change: AccessChange,
}

impl AccessBus {
    pub fn subscribe(&self, door: Arc<dyn Door>) {
        self.doors
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(door);
    }

    fn doors(&self) -> Vec<Arc<dyn Door>> {
        self.doors.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn apply_here(&self, shared: &Shared, change: &AccessChange) -> Map<String, Value> {
        let mut reports = Map::new();
        for door in self.doors() {
            reports.insert(door.name().to_string(), door.apply(shared, change).await);
        }
        reports
    }
}

/// Publishes a committed access change: applies it on this replica's doors now
/// and sends it to the other replicas. Answers this replica's door reports,
/// by door name, for the audit entry of the call that made the change.
pub async fn publish(shared: &Shared, change: AccessChange) -> Map<String, Value> {
    let reports = shared.access.apply_here(shared, &change).await;
    if let Some(r) = shared.fleet.replicas() {
        let notice = Notice {
            origin: r.name.clone(),
            change,
        };
        match serde_json::to_string(&notice) {
            Ok(payload) => {
                crate::replicas::notify(&shared.store, &r.channels.access, &payload).await
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an access change for the other replicas")
            }
        }
    }
    reports
}

/// A change another replica published: applied to this replica's doors, and
/// recorded when it cut anything here.
pub(crate) async fn on_notification(shared: &Shared, payload: &str) {
    let notice: Notice = match serde_json::from_str(payload) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable access change from another replica; ignored");
            return;
        }
    };
    if shared
        .fleet
        .replicas()
        .is_some_and(|r| r.name == notice.origin)
    {
        return;
    }
    let reports = shared.access.apply_here(shared, &notice.change).await;
    let me = shared
        .fleet
        .replicas()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    let ev = Event::new("access.applied", "ok")
        .org(&notice.change.org_id)
        .actor(format!("replica:{me}"))
        .detail(json!({
            "published_by": notice.origin,
            "change": notice.change,
            "doors": reports,
        }));
    shared.audit(ev).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn changes_travel_as_small_json_and_refuse_unknown_fields() {
        let c = AccessChange {
            org_id: "o1".into(),
            user_id: "u1".into(),
            what: Change::KeyDeleted {
                fingerprint: "SHA256:abc".into(),
            },
        };
        let n = Notice {
            origin: "r1".into(),
            change: c.clone(),
        };
        let s = serde_json::to_string(&n).unwrap();
        assert!(s.len() < 8000);
        let back: Notice = serde_json::from_str(&s).unwrap();
        assert_eq!(back.change, c);
        assert!(serde_json::from_str::<Notice>(r#"{"origin":"r","change":{"org_id":"o","user_id":"u","what":{"kind":"user_deleted"}},"x":1}"#).is_err());
        assert!(
            serde_json::from_str::<Notice>(
                r#"{"origin":"r","change":{"org_id":"o","user_id":"u","what":{"kind":"nope"}}}"#
            )
            .is_err()
        );
    }
}
