//! The Kubernetes door: kubectl, helm and anything else that reads a kubeconfig
//! reach an edge's cluster through the bastion. The bastion authenticates the
//! caller's API token, authorizes their role in the edge's project, audits every
//! request, and forwards it over the agent channel of one of the edge's gateway
//! agents, which calls the API server with its own credential and impersonates
//! the Postern user with the Kubernetes groups of their role. The cluster's RBAC
//! keeps the final word on what those groups may do. A gateway is a node a
//! project admin granted the role (`gateways`), never one that only says it is.

mod flow;
mod gateways;
mod listen;
mod live;
mod proxy;
mod record;
mod status;
mod stream;
mod upgrade;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

pub use listen::{
    KubeTlsError, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE, edge_of_server_name, serve,
    server_config, server_name_of,
};
pub use live::Live;

use std::sync::Arc;

use crate::state::Shared;

/// What the Kubernetes listener answers with.
pub type KubeBody = BoxBody<Bytes, crate::agents::BoxError>;

/// The Kubernetes door: the core it serves from, and what only this door keeps
/// (its open requests, the gateways it picked, the bytes answers hold). Built
/// by `app.rs`; other doors reach it only through the access bus.
#[derive(Debug)]
pub struct Door {
    core: Arc<Shared>,
    /// Open Kubernetes requests, ended when access is taken away.
    pub live: Arc<Live>,
    /// Records `kubectl exec` and `attach` as the project's policy asks.
    pub recorder: Arc<crate::recording::Recorder>,
}

impl std::ops::Deref for Door {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.core
    }
}

impl Door {
    /// The door, subscribed to the core's access and gateway changes.
    /// `recording_max_bytes`: the most one recording may hold.
    pub fn new(core: Arc<Shared>, recording_max_bytes: u64) -> Arc<Door> {
        let live: Arc<Live> = Arc::default();
        core.access
            .subscribe(Arc::new(live::KubeAccess { live: live.clone() }));
        let recorder = crate::recording::Recorder::new(
            core.store.clone(),
            crate::recording::replica_name(&core.fleet),
            core.tasks.clone(),
            recording_max_bytes,
        );
        Arc::new(Door {
            core,
            live,
            recorder,
        })
    }
}
