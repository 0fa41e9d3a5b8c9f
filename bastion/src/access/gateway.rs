//! A node's Kubernetes gateway role granted or taken back, as an event: the
//! REST door publishes it after its transaction committed; the Kubernetes door
//! (and any door that serves through gateways) applies it on this replica; and
//! it is recorded for the other replicas, whose doors apply it in turn. The
//! REST door never calls the Kubernetes door.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AccessBus;
use crate::audit::Event;
use crate::replicas::events::KIND_KUBE_GATEWAY;

/// A node's gateway role granted or taken back, as every replica applies it.
/// Read tolerantly: unknown fields from a newer replica are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayChange {
    pub org_id: String,
    pub edge_id: String,
    pub node_id: String,
    pub granted: bool,
}

impl AccessBus {
    /// A committed change of a node's gateway role: applied on this
    /// replica's doors now and recorded for the other replicas. Answers how
    /// many open requests it ended here.
    pub async fn gateway_changed(&self, change: &GatewayChange) -> usize {
        gateway_changed(self, change).await
    }

    /// A gateway change another replica published.
    pub async fn apply_published_gateway(&self, origin: &str, payload: &str) {
        apply_published_gateway(self, origin, payload).await;
    }
}

async fn gateway_changed(bus: &AccessBus, change: &GatewayChange) -> usize {
    let cut = bus.gateway_here(change);
    if cut > 0 {
        tracing::info!(node = %change.node_id, cut, "ended Kubernetes requests of a node whose gateway role was taken back");
    }
    if let Some(r) = bus.replicas() {
        match serde_json::to_string(change) {
            Ok(payload) => {
                if let Err(e) = r.publish(KIND_KUBE_GATEWAY, &payload).await {
                    tracing::error!(error = %e, node = %change.node_id, "cannot tell the other replicas that a Kubernetes gateway grant changed: they read their gateways again within seconds, but what they have open on the node stays");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a Kubernetes gateway change for the other replicas")
            }
        }
    }
    cut
}

/// A change another replica published: applied here, and recorded in the
/// audit log when it ended anything here.
async fn apply_published_gateway(bus: &AccessBus, origin: &str, payload: &str) {
    let change: GatewayChange = match serde_json::from_str(payload) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable Kubernetes gateway change from another replica; ignored");
            return;
        }
    };
    let cut = bus.gateway_here(&change);
    if cut == 0 {
        return;
    }
    tracing::info!(node = %change.node_id, cut, by = %origin, "ended Kubernetes requests of a node whose gateway role another replica took back");
    let me = bus.replicas().map(|r| r.name.clone()).unwrap_or_default();
    let ev = Event::new("kube.gateway_applied", "ok")
        .org(&change.org_id)
        .actor(format!("replica:{me}"))
        .detail(json!({
            "published_by": origin,
            "node_id": change.node_id,
            "granted": change.granted,
            "kube_requests_cut": cut,
        }));
    bus.audit().batched(ev).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn changes_travel_as_json_and_newer_fields_are_ignored() {
        let c = GatewayChange {
            org_id: "o".into(),
            edge_id: "e".into(),
            node_id: "n".into(),
            granted: false,
        };
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<GatewayChange>(&s).unwrap(), c);
        let newer: GatewayChange = serde_json::from_str(
            r#"{"org_id":"o","edge_id":"e","node_id":"n","granted":false,"why":"x"}"#,
        )
        .unwrap();
        assert_eq!(newer, c);
    }
}
