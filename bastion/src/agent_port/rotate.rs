//! Certificate rotation over the live channel: at two thirds of a node
//! certificate's life the bastion asks the agent for a CSR (a new key made on the
//! node), signs it and installs it. The open connection keeps its session; the new
//! certificate is used from the next connection on, so nothing in flight drops.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::Method;
use postern_api::agent::{CsrResponse, InstallCert, routes};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::agents::AgentConn;
use crate::agents::client::{CallError, call_json};
use crate::audit::Event;
use crate::clock::now_ms;
use crate::metrics::inc;
use crate::pki::{node_cert_info, pem_to_der};
use crate::state::Shared;

/// Runs until shutdown, rotating certificates that are due.
pub async fn run_rotation(shared: Arc<Shared>, every: std::time::Duration) {
    let limit = Arc::new(Semaphore::new(32));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        for agent in shared.fleet.local_snapshot() {
            let due = agent
                .cert
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .rotation_due(now);
            if !due || agent.rotating.swap(true, Ordering::AcqRel) {
                continue;
            }
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let shared2 = shared.clone();
            shared.tasks.spawn(async move {
                let _permit = permit;
                if let Err(e) = rotate_node(&shared2, &agent).await {
                    inc(&shared2.metrics.rotation_failures);
                    tracing::warn!(node = %agent.node_id, error = %e, "certificate rotation failed; will retry");
                }
                agent.rotating.store(false, Ordering::Release);
            });
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("node {0} is disabled or deleted; no certificate is issued to it")]
    NotLive(String),
}

/// Rotates one node's certificate now.
pub async fn rotate_node(shared: &Shared, agent: &Arc<AgentConn>) -> Result<(), RotateError> {
    let timeout = shared.settings.agent_call_timeout;
    // Rotation runs on the replica holding the channel: the certificate it
    // tracks belongs to that channel.
    let link = crate::agents::NodeLink::local(agent.clone());
    let csr: CsrResponse =
        call_json::<(), _>(&link, Method::POST, routes::CSR, None, timeout).await?;
    // The node's state now, not when its channel came up: a node disabled or
    // deleted since gets no new certificate (and its channel is being cut).
    match shared.store.node(&agent.node_id).await? {
        Some(n) if n.state != postern_api::admin::NodeState::Disabled => {}
        _ => return Err(RotateError::NotLive(agent.node_id.clone())),
    }
    let issued = shared.pki.sign_node_csr(&csr.csr_pem, &agent.node_id)?;
    let _: serde_json::Value = call_json(
        &link,
        Method::PUT,
        routes::CERT,
        Some(&InstallCert {
            cert_pem: issued.cert_pem.clone(),
        }),
        timeout,
    )
    .await?;
    let info = node_cert_info(&pem_to_der(&issued.cert_pem)?)?;
    *agent.cert.lock().unwrap_or_else(|p| p.into_inner()) = info;
    shared
        .store
        .record_cert(&agent.node_id, &issued.serial, issued.not_after_ms)
        .await?;
    inc(&shared.metrics.rotations);
    let node = shared.store.node(&agent.node_id).await?;
    let mut ev = Event::new("cert.rotate", "ok").detail(json!({
        "node_id": agent.node_id, "serial": issued.serial, "not_after_ms": issued.not_after_ms,
    }));
    if let Some(n) = node {
        ev = ev.target(n.hostname);
        if let Some(edge) = shared.store.edge_by_id(&n.edge_id).await?
            && let Some(p) = shared.store.project_by_id(&edge.project_id).await?
        {
            ev = ev.org(p.org_id).project(p.name);
        }
    }
    shared.audit.batched(ev).await;
    Ok(())
}
