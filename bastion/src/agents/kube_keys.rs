//! A node's Kubernetes-learned keys as the node view shows them (the agent
//! port keeps them: `agent_port::kube_keys`).

use postern_api::kube_keys::NodeKubeKeys;

use crate::clock::rfc3339;

/// The node view's `kube_keys`, from the stored column.
pub fn view(stored: Option<&str>, at: Option<i64>) -> Option<NodeKubeKeys> {
    let mut set: NodeKubeKeys = serde_json::from_str(stored?).ok()?;
    set.updated_at = at.map(rfc3339);
    Some(set)
}
