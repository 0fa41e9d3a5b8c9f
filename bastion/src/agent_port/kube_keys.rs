//! Keys a node's agent learned from its Kubernetes Node object (`--kube-node-keys`):
//! the bastion long-polls them over the node's channel, stores the set on the node,
//! audits `node.kube_keys` when (and only when) it changed, and shows it in the
//! node view. Access that does not go through the bastion stays visible here.
//!
//! The poll is part of the channel's own future (see `channel.rs`), so it runs on
//! the replica holding the channel and stops with it; every call has a timeout.

use std::time::Duration;

use http::Method;
use postern_api::kube_keys::{
    KubeKeysReport, KubeNodeKey, MAX_KEYS, MAX_LOGINS, MAX_REJECTED, MAX_WAIT_SECS, NodeKubeKeys,
    ROUTE, RejectedLine,
};
use postern_api::validate::peer_line;
use serde_json::json;

use crate::agents::NodeLink;
use crate::agents::client;
use crate::audit::Event;
use crate::clock::now_ms;
use crate::state::Shared;
use crate::store::KubeKeysChange;

/// Pause after a failed poll or store write before trying again.
const RETRY: Duration = Duration::from_secs(2);

/// Follows the agent's keys until the caller drops this future (the channel ended).
pub(super) async fn follow(shared: &Shared, link: &NodeLink, node_id: &str) {
    let mut after = 0u64;
    // The call may wait MAX_WAIT_SECS at the agent; the timeout leaves room for that.
    let timeout = Duration::from_secs(MAX_WAIT_SECS) + shared.settings.agent_call_timeout;
    loop {
        let path = format!("{ROUTE}?after={after}&wait={MAX_WAIT_SECS}");
        match client::call_json::<(), KubeKeysReport>(link, Method::GET, &path, None, timeout).await
        {
            Ok(report) if report.version == after => {}
            Ok(report) => match record(
                shared,
                node_id,
                Some(sanitize(report.keys, report.rejected)),
            )
            .await
            {
                Ok(()) => after = report.version,
                Err(e) => {
                    tracing::warn!(node = %node_id, error = %e, "cannot store the node's keys from Kubernetes; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            },
            Err(e) => {
                tracing::debug!(node = %node_id, error = %e, "kube keys poll failed; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// The agent's word, bounded and checked before it is stored or shown: at most
/// [`MAX_KEYS`] keys with well-formed fingerprints and logins, printable text.
pub fn sanitize(keys: Vec<KubeNodeKey>, rejected: Vec<RejectedLine>) -> NodeKubeKeys {
    let mut keys: Vec<KubeNodeKey> = keys
        .into_iter()
        .filter(|k| {
            postern_api::ssh::check_fingerprint(&k.fingerprint)
                && k.logins.len() <= MAX_LOGINS
                && k.logins
                    .iter()
                    .all(|l| postern_api::validate::login(l).is_ok())
                && k.expires_at
                    .as_deref()
                    .is_none_or(|t| postern_api::kube_keys::parse_utc(t).is_ok())
        })
        .take(MAX_KEYS)
        .map(|k| KubeNodeKey {
            algorithm: peer_line(&k.algorithm, 64),
            comment: peer_line(&k.comment, 200),
            ..k
        })
        .collect();
    keys.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    keys.dedup_by(|a, b| a.fingerprint == b.fingerprint);
    let mut rejected: Vec<RejectedLine> = rejected
        .into_iter()
        .take(MAX_REJECTED)
        .map(|r| RejectedLine {
            line: r.line.min(postern_api::kube_keys::MAX_LINES),
            reason: peer_line(&r.reason, 300),
        })
        .collect();
    rejected.sort_by_key(|r| r.line);
    NodeKubeKeys {
        keys,
        rejected,
        updated_at: None,
    }
}

/// An agent that connects without `--kube-node-keys` (any more): the keys it once
/// reported no longer let anyone in (it deleted its cache), so the node shows none.
pub(super) async fn forget(shared: &Shared, node_id: &str) {
    if let Err(e) = record(shared, node_id, None).await {
        tracing::warn!(node = %node_id, error = %e, "cannot clear the node's keys from Kubernetes");
    }
}

/// Stores the set (`None`: no longer read) and audits the change with the
/// fingerprints added, removed and changed.
async fn record(
    shared: &Shared,
    node_id: &str,
    set: Option<NodeKubeKeys>,
) -> Result<(), crate::store::StoreError> {
    let text = set
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| crate::store::StoreError::Corrupt(e.to_string()))?;
    let set = set.unwrap_or_default();
    let previous = match shared
        .store
        .set_node_kube_keys(node_id, text.as_deref(), now_ms())
        .await?
    {
        KubeKeysChange::Unchanged => return Ok(()),
        KubeKeysChange::Changed { previous } => previous
            .and_then(|p| serde_json::from_str::<NodeKubeKeys>(&p).ok())
            .unwrap_or_default(),
    };
    let fps = |s: &NodeKubeKeys| -> Vec<String> {
        s.keys.iter().map(|k| k.fingerprint.clone()).collect()
    };
    let (old, new) = (fps(&previous), fps(&set));
    let added: Vec<&String> = new.iter().filter(|f| !old.contains(f)).collect();
    let removed: Vec<&String> = old.iter().filter(|f| !new.contains(f)).collect();
    let changed: Vec<&String> = set
        .keys
        .iter()
        .filter(|k| {
            previous
                .keys
                .iter()
                .any(|p| p.fingerprint == k.fingerprint && p != *k)
        })
        .map(|k| &k.fingerprint)
        .collect();
    if added.is_empty()
        && removed.is_empty()
        && changed.is_empty()
        && set.rejected == previous.rejected
    {
        // A first report of nothing: stored (the view says the node reads
        // Kubernetes), but no access changed, so nothing to audit.
        return Ok(());
    }
    let mut ev = Event::new("node.kube_keys", "ok").detail(json!({
        "node_id": node_id,
        "added": added,
        "removed": removed,
        "changed": changed,
        "keys": set.keys.len(),
        "rejected": set.rejected,
    }));
    // Place the entry in its org and project, as every node event is.
    if let Ok(Some(node)) = shared.store.node(node_id).await {
        ev = ev.target(&node.hostname);
        if let Ok(Some(edge)) = shared.store.edge_by_id(&node.edge_id).await
            && let Ok(Some(project)) = shared.store.project_by_id(&edge.project_id).await
        {
            ev = ev.org(&project.org_id).project(&project.name);
        }
    }
    tracing::info!(node = %node_id, added = added.len(), removed = removed.len(), rejected = set.rejected.len(), "the node's keys from Kubernetes changed");
    shared.audit.batched(ev).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::kube_keys::view;

    fn key(fp: &str) -> KubeNodeKey {
        KubeNodeKey {
            fingerprint: fp.into(),
            algorithm: "ssh-ed25519".into(),
            logins: vec!["root".into()],
            expires_at: None,
            comment: "c".into(),
        }
    }

    #[test]
    fn a_peers_report_is_bounded_sorted_and_checked() {
        let mut bad_login = key("SHA256:bbb");
        bad_login.logins = vec!["Ro ot".into()];
        let mut bad_time = key("SHA256:ccc");
        bad_time.expires_at = Some("tomorrow".into());
        let mut loud = key("SHA256:aaa");
        loud.comment = "x\ny".repeat(500);
        let set = sanitize(
            vec![
                key("SHA256:zzz"),
                bad_login,
                bad_time,
                loud,
                key("not-a-fingerprint"),
                key("SHA256:zzz"),
            ],
            vec![
                RejectedLine {
                    line: 9,
                    reason: "r\n".repeat(1000),
                },
                RejectedLine {
                    line: 2,
                    reason: "x".into(),
                },
            ],
        );
        let fps: Vec<&str> = set.keys.iter().map(|k| k.fingerprint.as_str()).collect();
        assert_eq!(fps, ["SHA256:aaa", "SHA256:zzz"]);
        assert!(set.keys[0].comment.len() <= 200 && !set.keys[0].comment.contains('\n'));
        assert_eq!(set.rejected[0].line, 2);
        assert!(set.rejected[1].reason.len() <= 300);
        let many: Vec<KubeNodeKey> = (0..MAX_KEYS + 10)
            .map(|i| key(&format!("SHA256:k{i}")))
            .collect();
        assert_eq!(sanitize(many, vec![]).keys.len(), MAX_KEYS);
    }

    #[test]
    fn the_view_adds_when_it_changed() {
        let text =
            serde_json::to_string(&sanitize(vec![key("SHA256:a")], vec![])).unwrap_or_default();
        let v = view(Some(&text), Some(0)).expect("a view");
        assert_eq!(v.keys.len(), 1);
        assert_eq!(v.updated_at.as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert!(view(None, None).is_none());
    }
}
