//! Which node serves an edge's Kubernetes API. The gateway role is a project
//! admin's grant to a named node (`PUT …/nodes/{node}/kube-gateway`, audited);
//! an agent started with `--kube-apiserver` is only capable of it, and any
//! agent can say that. A request goes to a node that is granted, capable and
//! connected (here or through a peer replica), the first of them in a fixed
//! order, so several granted nodes fail over to one another. Taking the role
//! back stops new requests at once and ends what the node serves, on every
//! replica.

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::agents::NodeLink;
use crate::audit::Event;
use crate::replicas::events::KIND_KUBE_GATEWAY;
use crate::state::Shared;
use crate::store::{EdgeRow, KubeGatewayRow};

/// The node a request was sent to, named in its audit entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy {
    pub node_id: String,
    pub hostname: String,
}

/// The gateway chosen for one request.
#[derive(Debug)]
pub(super) struct Picked {
    pub link: NodeLink,
    pub served_by: ServedBy,
    /// Where grants stood when the list it was chosen from was read.
    epoch: u64,
}

/// A node's gateway role granted or taken back, as every replica applies it.
/// Read tolerantly: unknown fields from a newer replica are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayChange {
    pub org_id: String,
    pub edge_id: String,
    pub node_id: String,
    pub granted: bool,
}

type Refusal = (StatusCode, String);

async fn read(shared: &Shared, edge: &EdgeRow) -> Result<Vec<KubeGatewayRow>, Refusal> {
    shared.store.kube_gateways(&edge.id).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot read the edge's Kubernetes gateways");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the bastion's database is busy or unreachable; retry in a few seconds".to_string(),
        )
    })
}

/// A granted, capable and connected gateway of the edge; otherwise a 503 that
/// says which of the three is missing.
pub(super) async fn pick(shared: &Shared, edge: &EdgeRow) -> Result<Picked, Refusal> {
    let epoch = shared.kube_live.gateway_epoch();
    let granted = match shared.kube_live.gateways_of(&edge.id) {
        Some(g) => g,
        None => {
            let g = read(shared, edge).await?;
            shared
                .kube_live
                .remember_gateways(&edge.id, g.clone(), epoch);
            g
        }
    };
    if granted.is_empty() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "edge {:?} has no Kubernetes gateway: a project admin grants the role to one of its nodes \
                 (postern nodes kube-gateway NODE) whose agent runs with --kube-apiserver URL --kube-credentials FILE",
                edge.name
            ),
        ));
    }
    let capable: Vec<&KubeGatewayRow> = granted.iter().filter(|g| g.capable).collect();
    if capable.is_empty() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "none of the {} Kubernetes gateway nodes of edge {:?} runs its agent with --kube-apiserver",
                granted.len(),
                edge.name
            ),
        ));
    }
    capable
        .iter()
        .find_map(|g| {
            shared.fleet.link(&g.id).map(|link| Picked {
                link,
                served_by: ServedBy {
                    node_id: g.id.clone(),
                    hostname: g.hostname.clone(),
                },
                epoch,
            })
        })
        .ok_or_else(|| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "none of the {} Kubernetes gateway agents of edge {:?} is connected to the bastion; try again when one is back",
                    capable.len(),
                    edge.name
                ),
            )
        })
}

/// Whether `picked` may still serve, asked once its request is registered (so
/// any cut from now on reaches it). A grant taken back between the choice and
/// the registration found nothing to cut, and would otherwise leave the
/// request, perhaps a watch of hours, on a node that lost the role. Costs a
/// read only when some grant changed meanwhile.
pub(super) async fn still_granted(
    shared: &Shared,
    edge: &EdgeRow,
    picked: &Picked,
) -> Result<bool, Refusal> {
    if shared.kube_live.gateway_epoch() == picked.epoch {
        return Ok(true);
    }
    let now = read(shared, edge).await?;
    Ok(now
        .iter()
        .any(|g| g.id == picked.served_by.node_id && g.capable))
}

/// What a change does on this replica: the edge's list is read again, and
/// what the node serves ends when it lost the role. Answers how many requests
/// it ended.
fn apply(shared: &Shared, change: &GatewayChange) -> usize {
    // First the epoch (inside forget), then the cut: a request registered
    // after the cut sees the new epoch and checks its node again.
    shared.kube_live.forget_gateways(&change.edge_id);
    if change.granted {
        0
    } else {
        shared.kube_live.cut_gateway(&change.node_id)
    }
}

/// A committed change of a node's gateway role: applied here now and recorded
/// for the other replicas. Answers how many open requests it ended here.
pub async fn changed(shared: &Shared, change: &GatewayChange) -> usize {
    let cut = apply(shared, change);
    if cut > 0 {
        tracing::info!(node = %change.node_id, cut, "ended Kubernetes requests of a node whose gateway role was taken back");
    }
    if let Some(r) = shared.fleet.replicas() {
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
pub(crate) async fn apply_published(shared: &Shared, origin: &str, payload: &str) {
    let change: GatewayChange = match serde_json::from_str(payload) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable Kubernetes gateway change from another replica; ignored");
            return;
        }
    };
    let cut = apply(shared, &change);
    if cut == 0 {
        return;
    }
    tracing::info!(node = %change.node_id, cut, by = %origin, "ended Kubernetes requests of a node whose gateway role another replica took back");
    let me = shared
        .fleet
        .replicas()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    let ev = Event::new("kube.gateway_applied", "ok")
        .org(&change.org_id)
        .actor(format!("replica:{me}"))
        .detail(json!({
            "published_by": origin,
            "node_id": change.node_id,
            "granted": change.granted,
            "kube_requests_cut": cut,
        }));
    shared.audit.batched(ev).await;
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
