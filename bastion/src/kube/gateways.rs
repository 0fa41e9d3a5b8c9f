//! Which node serves an edge's Kubernetes API. The gateway role is a project
//! admin's grant to a named node (`PUT …/nodes/{node}/kube-gateway`, audited);
//! an agent started with `--kube-apiserver` is only capable of it, and any
//! agent can say that. A request goes to a node that is granted, capable and
//! connected (here or through a peer replica), the first of them in a fixed
//! order, so several granted nodes fail over to one another. Taking the role
//! back stops new requests at once and ends what the node serves, on every
//! replica.

use http::StatusCode;

use super::Door;
use crate::access::GatewayChange;
use crate::agents::NodeLink;
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

type Refusal = (StatusCode, String);

async fn read(shared: &Door, edge: &EdgeRow) -> Result<Vec<KubeGatewayRow>, Refusal> {
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
pub(super) async fn pick(shared: &Door, edge: &EdgeRow) -> Result<Picked, Refusal> {
    let epoch = shared.live.gateway_epoch();
    let granted = match shared.live.gateways_of(&edge.id) {
        Some(g) => g,
        None => {
            let g = read(shared, edge).await?;
            shared.live.remember_gateways(&edge.id, g.clone(), epoch);
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
    shared: &Door,
    edge: &EdgeRow,
    picked: &Picked,
) -> Result<bool, Refusal> {
    if shared.live.gateway_epoch() == picked.epoch {
        return Ok(true);
    }
    let now = read(shared, edge).await?;
    Ok(now
        .iter()
        .any(|g| g.id == picked.served_by.node_id && g.capable))
}

/// What a change does on this replica's Kubernetes door: the edge's list is
/// read again, and what the node serves ends when it lost the role. Answers how
/// many requests it ended.
pub(super) fn apply(live: &super::Live, change: &GatewayChange) -> usize {
    // First the epoch (inside forget), then the cut: a request registered
    // after the cut sees the new epoch and checks its node again.
    live.forget_gateways(&change.edge_id);
    if change.granted {
        0
    } else {
        live.cut_gateway(&change.node_id)
    }
}
